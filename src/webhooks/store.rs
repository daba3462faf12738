//! Endpoints in the state database, and the in-memory snapshot of the
//! enabled ones that the appender matches events against (and the
//! dispatcher schedules by).
//!
//! Invariant: the snapshot is refreshed inside each append transaction when
//! `sluice.webhooks_version` moved, so an endpoint whose creation committed
//! before an append gets that append's matching events.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::{json, Value};
use tokio_postgres::{GenericClient, Row};

use crate::event::{Committed, TenantId};
use crate::policy::{Access, EventView, Policies};
use crate::subscription::Selector;

/// The columns `Endpoint::from_row` reads, in order.
pub const COLUMNS: &str = "id, tenant, url, topics, filter, description, enabled, disabled_reason, \
     max_attempts, rate_per_second, rate_burst, ordered, secret, previous_secret, previous_expires, \
     created_at, updated_at, role, claims";

/// One endpoint as stored.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: String,
    pub tenant: String,
    pub url: String,
    pub topics: Vec<String>,
    pub filter: Option<Value>,
    pub description: String,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub max_attempts: i32,
    pub rate_per_second: Option<f64>,
    pub rate_burst: Option<i32>,
    pub ordered: bool,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_expires: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// The role of the access policies it receives events as (None:
    /// service).
    pub role: Option<String>,
    /// The claims that role's row predicates compare with (an object).
    pub claims: Value,
}

impl Endpoint {
    pub fn from_row(r: &Row) -> Endpoint {
        Endpoint {
            id: r.get(0),
            tenant: r.get(1),
            url: r.get(2),
            topics: r.get(3),
            filter: r.get(4),
            description: r.get(5),
            enabled: r.get(6),
            disabled_reason: r.get(7),
            max_attempts: r.get(8),
            rate_per_second: r.get(9),
            rate_burst: r.get(10),
            ordered: r.get(11),
            secret: r.get(12),
            previous_secret: r.get(13),
            previous_expires: r.get(14),
            created_at: r.get(15),
            updated_at: r.get(16),
            role: r.get(17),
            claims: r.get(18),
        }
    }

    /// The API's view: everything but the secrets.
    pub fn to_json(&self) -> Value {
        let rate = match (self.rate_per_second, self.rate_burst) {
            (Some(per_second), Some(burst)) => json!({"per_second": per_second, "burst": burst}),
            _ => Value::Null,
        };
        json!({
            "id": self.id,
            "url": self.url,
            "topics": self.topics,
            "filter": self.filter,
            "description": self.description,
            "enabled": self.enabled,
            "disabled_reason": self.disabled_reason,
            "max_attempts": self.max_attempts,
            "rate_limit": rate,
            "ordered": self.ordered,
            "role": self.role.as_deref().unwrap_or("service"),
            "claims": self.claims,
            "previous_secret_expires_at": self.previous_expires.map(|t| t.to_rfc3339()),
            "created_at": self.created_at.to_rfc3339(),
            "updated_at": self.updated_at.to_rfc3339(),
        })
    }

    /// The selector its topics and filter describe (both were validated
    /// when stored; an entry that no longer parses matches nothing).
    pub fn selector(&self) -> Option<Selector> {
        Selector::from_stored(&self.topics, self.filter.as_ref())
    }

    /// What the endpoint receives: its role's policy (with its claims),
    /// then its topics and filter.
    pub fn access(&self, policies: &Policies) -> Option<Access> {
        let tenant = TenantId::new(&self.tenant).ok()?;
        Some(Access {
            viewer: policies.viewer_as(&tenant, self.role.as_deref(), &self.claims)?,
            selector: self.selector()?,
        })
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
            let rate = match (e.rate_per_second, e.rate_burst) {
                (Some(r), Some(b)) => Some((r, u32::try_from(b).unwrap_or(1).max(1))),
                _ => None,
            };
            by_tenant
                .entry(tenant)
                .or_default()
                .push(Arc::new(Compiled {
                    id: e.id.into(),
                    access,
                    ordered: e.ordered,
                    max_attempts: e.max_attempts,
                    rate,
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
