//! Endpoints in the state database, and the in-memory snapshot of the
//! enabled ones that the appender matches events against (and the
//! dispatcher schedules by).
//!
//! Invariant: the snapshot is refreshed inside each append transaction when
//! `sluice.webhooks_version` moved, so an endpoint whose creation committed
//! before an append gets that append's matching events.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{json, Value};
use tokio_postgres::{GenericClient, Row};

use super::spec::{self, Batch, EndpointSpec, RateLimit};
use super::template::Template;
use crate::event::{Committed, TenantId};
use crate::policy::{Access, EventView, Policies};
use crate::subscription::Selector;

/// The columns `Endpoint::from_row` reads, in order.
pub const COLUMNS: &str = "id, tenant, url, topics, filter, description, enabled, disabled_reason, \
     max_attempts, rate_per_second, rate_burst, ordered, secret, previous_secret, previous_expires, \
     created_at, updated_at, role, claims, headers, timeout_ms, retry_schedule, batch_max_events, \
     batch_max_wait_ms, template, template_content_type, name, managed";

/// One endpoint as stored.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: String,
    pub tenant: String,
    /// Its settings (validated when stored).
    pub spec: EndpointSpec,
    pub disabled_reason: Option<String>,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_expires: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// Its name, when it is declared in the configuration.
    pub name: Option<String>,
    /// Declared in the configuration (`webhooks::declared`), not the API's.
    pub managed: bool,
}

impl Endpoint {
    pub fn from_row(r: &Row) -> Endpoint {
        let rate = match (r.get::<_, Option<f64>>(9), r.get::<_, Option<i32>>(10)) {
            (Some(per_second), Some(burst)) => Some(RateLimit { per_second, burst }),
            _ => None,
        };
        let batch = match (r.get::<_, Option<i32>>(22), r.get::<_, Option<i32>>(23)) {
            (Some(max_events), Some(max_wait_ms)) => Some(Batch {
                max_events,
                max_wait_ms,
            }),
            _ => None,
        };
        let headers: Value = r.get(19);
        let headers: BTreeMap<String, String> = serde_json::from_value(headers).unwrap_or_default();
        Endpoint {
            id: r.get(0),
            tenant: r.get(1),
            spec: EndpointSpec {
                url: r.get(2),
                topics: r.get(3),
                filter: r.get(4),
                description: r.get(5),
                enabled: r.get(6),
                max_attempts: Some(r.get(8)),
                rate_limit: rate,
                ordered: r.get(11),
                role: r.get(17),
                claims: r.get(18),
                headers,
                timeout_ms: r.get(20),
                retry_schedule: r.get(21),
                batch,
                template: r.get(24),
                template_content_type: r.get(25),
            },
            disabled_reason: r.get(7),
            secret: r.get(12),
            previous_secret: r.get(13),
            previous_expires: r.get(14),
            created_at: r.get(15),
            updated_at: r.get(16),
            name: r.get(26),
            managed: r.get(27),
        }
    }

    /// The API's view: everything but the secrets (header values masked).
    pub fn to_json(&self) -> Value {
        let mut out = json!({ "id": self.id });
        if let (Value::Object(out), Value::Object(spec)) = (&mut out, self.spec.to_json()) {
            out.extend(spec);
        }
        out["disabled_reason"] = json!(self.disabled_reason);
        out["previous_secret_expires_at"] = json!(self.previous_expires.map(|t| t.to_rfc3339()));
        out["name"] = json!(self.name);
        out["managed_by"] = json!(if self.managed { "config" } else { "api" });
        out["created_at"] = json!(self.created_at.to_rfc3339());
        out["updated_at"] = json!(self.updated_at.to_rfc3339());
        out
    }

    /// The selector its topics and filter describe (both were validated
    /// when stored; an entry that no longer parses matches nothing).
    pub fn selector(&self) -> Option<Selector> {
        Selector::from_stored(&self.spec.topics, self.spec.filter.as_ref())
    }

    /// What the endpoint receives: its role's policy (with its claims),
    /// then its topics and filter.
    pub fn access(&self, policies: &Policies) -> Option<Access> {
        let tenant = TenantId::new(&self.tenant).ok()?;
        Some(Access {
            viewer: policies.viewer_as(&tenant, self.spec.role.as_deref(), &self.spec.claims)?,
            selector: self.selector()?,
            membership: false,
        })
    }
}

/// The members of a spec as the columns `insert` and `update` write
/// (`$3` onwards, in this order).
const SPEC_COLUMNS: &str = "url, topics, filter, description, enabled, max_attempts, \
     rate_per_second, rate_burst, ordered, role, claims, headers, timeout_ms, retry_schedule, \
     batch_max_events, batch_max_wait_ms, template, template_content_type";

/// Stores a new endpoint of `tenant` with a validated `spec`.
pub async fn insert(
    client: &impl GenericClient,
    tenant: &TenantId,
    id: &str,
    secret: &str,
    spec: &EndpointSpec,
) -> Result<Endpoint, tokio_postgres::Error> {
    let row = client
        .query_one(
            &format!(
                "INSERT INTO sluice.webhooks (id, tenant, {SPEC_COLUMNS}, secret)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                         $17, $18, $19, $20, $21)
                 RETURNING {COLUMNS}"
            ),
            &SpecValues::of(spec).params(&[&id, &tenant.as_str()], &[&secret]),
        )
        .await?;
    Ok(Endpoint::from_row(&row))
}

/// Replaces the settings of endpoint `id` of `tenant` with a validated
/// `spec`; `None` when there is no such endpoint. Changing `batch` (or
/// turning it off) lets unfinished deliveries regroup: they leave the
/// batch they were retried in and join the next one.
pub async fn update(
    client: &impl GenericClient,
    tenant: &TenantId,
    id: &str,
    spec: &EndpointSpec,
    disabled_reason: Option<&str>,
) -> Result<Option<Endpoint>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            &format!(
                "WITH before AS (
                     SELECT batch_max_events, batch_max_wait_ms FROM sluice.webhooks
                     WHERE id = $1 AND tenant = $2
                 ), changed AS (
                     UPDATE sluice.webhooks SET ({SPEC_COLUMNS}, disabled_reason, updated_at) =
                         ($3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
                          $19, $20, $21, now())
                     WHERE id = $1 AND tenant = $2
                     RETURNING {COLUMNS}
                 ), regrouped AS (
                     UPDATE sluice.webhook_deliveries d SET request = NULL
                     FROM before
                     WHERE d.webhook_id = $1 AND d.request IS NOT NULL
                       AND d.status IN ('pending', 'failed')
                       AND (before.batch_max_events, before.batch_max_wait_ms)
                           IS DISTINCT FROM ($17::int, $18::int)
                 )
                 SELECT * FROM changed"
            ),
            &SpecValues::of(spec).params(&[&id, &tenant.as_str()], &[&disabled_reason]),
        )
        .await?;
    Ok(row.as_ref().map(Endpoint::from_row))
}

/// A spec's values in [`SPEC_COLUMNS`] order, some derived from it.
struct SpecValues<'a> {
    spec: &'a EndpointSpec,
    headers: Value,
    attempts: i32,
    per_second: Option<f64>,
    burst: Option<i32>,
    max_events: Option<i32>,
    max_wait_ms: Option<i32>,
}

type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);

impl<'a> SpecValues<'a> {
    fn of(spec: &'a EndpointSpec) -> SpecValues<'a> {
        let rate: Option<RateLimit> = spec.rate_limit;
        let batch: Option<Batch> = spec.batch;
        SpecValues {
            spec,
            headers: serde_json::to_value(&spec.headers).unwrap_or_else(|_| json!({})),
            attempts: spec.attempts(),
            per_second: rate.map(|r| r.per_second),
            burst: rate.map(|r| r.burst),
            max_events: batch.map(|b| b.max_events),
            max_wait_ms: batch.map(|b| b.max_wait_ms),
        }
    }

    /// `before`, the spec's values, then `after`: a statement's parameters.
    fn params<'b>(&'b self, before: &[Param<'b>], after: &[Param<'b>]) -> Vec<Param<'b>> {
        let s = self.spec;
        let mut out: Vec<Param<'b>> = before.to_vec();
        out.extend_from_slice(&[
            &s.url,
            &s.topics,
            &s.filter,
            &s.description,
            &s.enabled,
            &self.attempts,
            &self.per_second,
            &self.burst,
            &s.ordered,
            &s.role,
            &s.claims,
            &self.headers,
            &s.timeout_ms,
            &s.retry_schedule,
            &self.max_events,
            &self.max_wait_ms,
            &s.template,
            &s.template_content_type,
        ]);
        out.extend_from_slice(after);
        out
    }
}

/// An enabled endpoint as the appender and dispatcher need it.
#[derive(Debug)]
pub struct Compiled {
    pub id: Arc<str>,
    /// Its role's policy, then its topics and filter.
    pub access: Access,
    pub ordered: bool,
    pub max_attempts: i32,
    /// (per second, burst)
    pub rate: Option<(f64, u32)>,
    /// None: `webhooks.timeout_ms`.
    pub timeout: Option<Duration>,
    /// None: `webhooks.retry_schedule`.
    pub schedule: Option<Vec<Duration>>,
    pub batch: Option<Batch>,
    /// The body to send instead of the envelope.
    pub template: Option<Arc<BodyTemplate>>,
}

/// An endpoint's template, parsed, with the content type it is sent as.
#[derive(Debug)]
pub struct BodyTemplate {
    pub template: Template,
    pub content_type: String,
}

/// The enabled endpoints at one version of the table.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: i64,
    pub by_tenant: HashMap<TenantId, Vec<Arc<Compiled>>>,
}

impl Snapshot {
    /// Every enabled endpoint.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Compiled>> {
        self.by_tenant.values().flatten()
    }

    /// The endpoints of `tenant` that want an event of `topic` (its `data`
    /// parsed only if a filter asks; the committed event built only if an
    /// endpoint's policy must look at it).
    pub fn matching<'a>(
        &'a self,
        tenant: &TenantId,
        topic: &str,
        data: impl Fn() -> Option<Value>,
        committed: impl Fn() -> Arc<Committed>,
    ) -> Vec<&'a Arc<Compiled>> {
        let Some(list) = self.by_tenant.get(tenant) else {
            return Vec::new();
        };
        let mut parsed: Option<Option<Value>> = None;
        let mut built: Option<Arc<Committed>> = None;
        let mut out = Vec::new();
        for e in list {
            let wanted = if e.access.viewer.is_open() {
                e.access
                    .selector
                    .matches(topic, || parsed.get_or_insert_with(&data).clone())
            } else {
                let event = built.get_or_insert_with(&committed);
                e.access.admit(&mut EventView::new(event)).is_some()
            };
            if wanted {
                out.push(e);
            }
        }
        out
    }

    /// The endpoint `id`, if enabled.
    pub fn get(&self, id: &str) -> Option<&Arc<Compiled>> {
        self.all().find(|e| *e.id == *id)
    }
}

/// The shared, refreshable snapshot.
#[derive(Debug, Default)]
pub struct Endpoints {
    current: RwLock<Arc<Snapshot>>,
    /// The access policies endpoints with a role are held to.
    policies: Arc<Policies>,
}

impl Endpoints {
    pub fn new(policies: Arc<Policies>) -> Arc<Endpoints> {
        Arc::new(Endpoints {
            current: RwLock::new(Arc::new(Snapshot {
                version: -1,
                by_tenant: HashMap::new(),
            })),
            policies,
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .expect("endpoints lock is never poisoned: no code panics holding it")
            .clone()
    }

    /// Reloads the enabled endpoints when the table's version moved.
    pub async fn refresh(
        &self,
        client: &impl GenericClient,
    ) -> Result<Arc<Snapshot>, tokio_postgres::Error> {
        let version: i64 = client
            .query_one("SELECT version FROM sluice.webhooks_version", &[])
            .await?
            .get(0);
        let current = self.snapshot();
        if current.version == version {
            return Ok(current);
        }
        let rows = client
            .query(
                &format!("SELECT {COLUMNS} FROM sluice.webhooks WHERE enabled ORDER BY id"),
                &[],
            )
            .await?;
        let mut by_tenant: HashMap<TenantId, Vec<Arc<Compiled>>> = HashMap::new();
        for row in &rows {
            let e = Endpoint::from_row(row);
            let (Ok(tenant), Some(access)) = (TenantId::new(&e.tenant), e.access(&self.policies))
            else {
                tracing::warn!(endpoint = %e.id, "webhook endpoint no longer parses; skipping it");
                continue;
            };
            let rate = e
                .spec
                .rate_limit
                .map(|r| (r.per_second, u32::try_from(r.burst).unwrap_or(1).max(1)));
            let schedule = match e.spec.retry_schedule.as_deref().map(spec::check_schedule) {
                None => None,
                Some(Ok(s)) => Some(s),
                Some(Err(error)) => {
                    tracing::warn!(endpoint = %e.id, %error, "webhook retry schedule no longer parses; skipping the endpoint");
                    continue;
                }
            };
            let template = match &e.spec.template {
                None => None,
                Some(source) => match e.spec.parse_template(source) {
                    Ok(template) => Some(Arc::new(BodyTemplate {
                        template,
                        content_type: e.spec.content_type().to_owned(),
                    })),
                    Err(error) => {
                        tracing::warn!(endpoint = %e.id, %error, "webhook template no longer parses; skipping the endpoint");
                        continue;
                    }
                },
            };
            by_tenant
                .entry(tenant)
                .or_default()
                .push(Arc::new(Compiled {
                    id: e.id.into(),
                    access,
                    ordered: e.spec.ordered,
                    max_attempts: e.spec.attempts(),
                    rate,
                    timeout: e
                        .spec
                        .timeout_ms
                        .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
                    schedule,
                    batch: e.spec.batch,
                    template,
                }));
        }
        let snapshot = Arc::new(Snapshot { version, by_tenant });
        *self
            .current
            .write()
            .expect("endpoints lock is never poisoned: no code panics holding it") =
            snapshot.clone();
        Ok(snapshot)
    }
}
