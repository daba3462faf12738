//! Endpoints as code: webhook endpoints declared in the configuration
//! (`[[webhooks.endpoints]]`), checked as the API checks a new endpoint
//! ([`compile`], at load) and reconciled with the stored ones at start
//! ([`reconcile`]).
//!
//! A declared endpoint is known by (tenant, name). Reconciling creates the
//! ones that are missing, updates in place (same id, deliveries kept) the
//! ones whose declaration changed, and disables, never deletes, the stored
//! ones no longer declared, with the reason "removed from the
//! configuration"; one declared again is enabled again. A declaration that
//! did not change leaves its endpoint as it is, so pausing one through the
//! API (`PATCH {"enabled": false}`, the only change the API accepts for a
//! declared endpoint) lasts across restarts until its declaration changes.
//! Endpoints created through the API are never touched.
//!
//! Invariant: reconciliation runs in one transaction under an advisory
//! lock, so processes starting together apply it once.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::spec::{Context, EndpointSpec};
use super::store::{self, Endpoint, COLUMNS};
use crate::config::WebhookEndpointConfig;
use crate::event::TenantId;
use crate::policy::Policies;

/// Why a declared endpoint that is gone from the configuration is disabled.
pub const REMOVED: &str = "removed from the configuration";
/// Longest endpoint name.
pub const MAX_NAME: usize = 64;

const RECONCILE_LOCK_KEY: i64 = 0x51_75_1C_E0_00_0A;

/// One declared endpoint, checked.
#[derive(Debug, Clone)]
pub struct Declared {
    pub tenant: TenantId,
    pub name: String,
    pub spec: EndpointSpec,
    /// From `secret_env`; none: generated when the endpoint is created.
    pub secret: Option<String>,
    /// What the declaration says, as a digest: a stored endpoint whose
    /// digest differs is updated.
    pub digest: Vec<u8>,
}

/// What reconciling did, each endpoint as `tenant/name (id)`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: usize,
    /// No longer declared: disabled now.
    pub disabled: Vec<String>,
}

/// Checks every entry: its name, tenant, uniqueness, and its settings as
/// `POST /v1/webhooks` checks them. An error is (key, message), the key
/// `webhooks.endpoints[i]` and the member at fault.
pub fn compile(
    entries: &[WebhookEndpointConfig],
    policies: &Policies,
    default_max_attempts: i32,
) -> Result<Vec<Declared>, (String, String)> {
    let ctx = Context {
        policies,
        default_max_attempts,
    };
    let mut out: Vec<Declared> = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let at = |member: &str| format!("webhooks.endpoints[{i}].{member}");
        if !valid_name(&e.name) {
            return Err((
                at("name"),
                format!(
                    "expected 1 to {MAX_NAME} characters of A-Z a-z 0-9 _ . -, got {:?}",
                    e.name
                ),
            ));
        }
        let tenant = TenantId::new(&e.tenant).map_err(|err| (at("tenant"), err.to_string()))?;
        if out.iter().any(|d| d.tenant == tenant && d.name == e.name) {
            return Err((
                at("name"),
                format!(
                    "endpoint {:?} of tenant {:?} is declared twice",
                    e.name, e.tenant
                ),
            ));
        }
        let settings = Value::Object(e.settings.clone());
        let mut spec: EndpointSpec =
            serde_path_to_error::deserialize(&settings).map_err(|err| {
                let path = err.path().to_string();
                let member = if path == "." { String::new() } else { path };
                (
                    at(&member).trim_end_matches('.').to_owned(),
                    err.inner().to_string(),
                )
            })?;
        spec.validate(&ctx)
            .map_err(|err| (at(&err.param), err.message))?;
        let secret = e.secret.as_ref().map(|s| s.0.clone());
        let digest = digest(&spec, secret.as_deref());
        out.push(Declared {
            tenant,
            name: e.name.clone(),
            spec,
            secret,
            digest,
        });
    }
    Ok(out)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The digest of a checked declaration: every setting (header values
/// whole) and the secret, if declared.
fn digest(spec: &EndpointSpec, secret: Option<&str>) -> Vec<u8> {
    let mut view = spec.to_json();
    view["headers"] = json!(spec.headers);
    view["secret"] = json!(secret);
    Sha256::digest(view.to_string().as_bytes()).to_vec()
}

/// Applies `declared` to the stored endpoints (see the module doc).
pub async fn reconcile(
    client: &mut Client,
    declared: &[Declared],
    secret_overlap_secs: f64,
) -> Result<Report, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&RECONCILE_LOCK_KEY])
        .await?;
    let mut report = Report::default();
    for d in declared {
        let label = |id: &str| format!("{}/{} ({id})", d.tenant.as_str(), d.name);
        let row = tx
            .query_opt(
                &format!(
                    "SELECT {COLUMNS}, declared_digest FROM sluice.webhooks
                     WHERE managed AND tenant = $1 AND name = $2"
                ),
                &[&d.tenant.as_str(), &d.name],
            )
            .await?;
        let Some(row) = row else {
            let id = super::new_id("wh_");
            let secret = d
                .secret
                .clone()
                .unwrap_or_else(super::sign::generate_secret);
            store::insert(&tx, &d.tenant, &id, &secret, &d.spec).await?;
            mark_declared(&tx, &id, d).await?;
            report.created.push(label(&id));
            continue;
        };
        let stored = Endpoint::from_row(&row);
        let stored_digest: Option<Vec<u8>> = row.get(COLUMN_COUNT);
        if stored_digest.as_deref() == Some(d.digest.as_slice()) {
            if stored.disabled_reason.as_deref() == Some(REMOVED) {
                // Declared again, unchanged: as it was declared.
                tx.execute(
                    "UPDATE sluice.webhooks SET enabled = $2, disabled_reason = NULL, updated_at = now()
                     WHERE id = $1",
                    &[&stored.id, &d.spec.enabled],
                )
                .await?;
                report.updated.push(label(&stored.id));
            } else {
                report.unchanged += 1;
            }
            continue;
        }
        let reason = (!d.spec.enabled).then_some("disabled in the configuration");
        store::update(&tx, &d.tenant, &stored.id, &d.spec, reason).await?;
        if let Some(secret) = d.secret.as_ref().filter(|s| **s != stored.secret) {
            // A new secret: the old one keeps signing for the overlap, as
            // with rotate-secret.
            tx.execute(
                "UPDATE sluice.webhooks
                 SET previous_secret = secret, secret = $2,
                     previous_expires = now() + make_interval(secs => $3)
                 WHERE id = $1",
                &[&stored.id, secret, &secret_overlap_secs],
            )
            .await?;
        }
        mark_declared(&tx, &stored.id, d).await?;
        report.updated.push(label(&stored.id));
    }
    // Declared before, not now: disabled, never deleted.
    let tenants: Vec<&str> = declared.iter().map(|d| d.tenant.as_str()).collect();
    let names: Vec<&str> = declared.iter().map(|d| d.name.as_str()).collect();
    let gone = tx
        .query(
            "UPDATE sluice.webhooks w
             SET enabled = false, disabled_reason = $3, updated_at = now()
             WHERE w.managed AND w.enabled
               AND (w.tenant, w.name) NOT IN (SELECT * FROM unnest($1::text[], $2::text[]))
             RETURNING w.tenant, w.name, w.id",
            &[&tenants, &names, &REMOVED],
        )
        .await?;
    for r in &gone {
        let (tenant, name, id): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        report.disabled.push(format!("{tenant}/{name} ({id})"));
    }
    tx.commit().await?;
    Ok(report)
}

/// How many columns [`COLUMNS`] names (the digest follows them).
const COLUMN_COUNT: usize = 28;

async fn mark_declared(
    tx: &tokio_postgres::Transaction<'_>,
    id: &str,
    d: &Declared,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "UPDATE sluice.webhooks SET managed = true, name = $2, declared_digest = $3 WHERE id = $1",
        &[&id, &d.name, &d.digest],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Redacted;

    fn entry(name: &str, tenant: &str, settings: Value) -> WebhookEndpointConfig {
        WebhookEndpointConfig {
            name: name.to_owned(),
            tenant: tenant.to_owned(),
            secret_env: None,
            secret: None,
            settings: settings.as_object().cloned().unwrap_or_default(),
        }
    }

    fn compile_one(e: WebhookEndpointConfig) -> Result<Vec<Declared>, (String, String)> {
        compile(&[e], &Policies::default(), 5)
    }

    #[test]
    fn declarations_are_checked_as_the_api_checks_them() {
        let ok = compile_one(entry(
            "billing",
            "acme",
            json!({"url": "https://example.com/h", "topics": ["tables/public.orders/*"], "batch": {"max_events": 10}}),
        ))
        .expect("valid");
        assert_eq!(
            ok[0].spec.max_attempts,
            Some(5),
            "the global default applies"
        );
        let cases = [
            (
                entry("bad name", "acme", json!({"url": "https://e.com"})),
                "webhooks.endpoints[0].name",
            ),
            (
                entry("b", "", json!({"url": "https://e.com"})),
                "webhooks.endpoints[0].tenant",
            ),
            (entry("b", "acme", json!({})), "webhooks.endpoints[0]"),
            (
                entry("b", "acme", json!({"url": "https://e.com", "colour": 1})),
                "webhooks.endpoints[0].colour",
            ),
            (
                entry(
                    "b",
                    "acme",
                    json!({"url": "https://e.com", "topics": ["tables/**/x/"]}),
                ),
                "webhooks.endpoints[0].topics[0]",
            ),
            (
                entry(
                    "b",
                    "acme",
                    json!({"url": "https://e.com", "headers": {"Host": "x"}}),
                ),
                "webhooks.endpoints[0].headers.Host",
            ),
            (
                entry(
                    "b",
                    "acme",
                    json!({"url": "https://e.com", "timeout_ms": 5}),
                ),
                "webhooks.endpoints[0].timeout_ms",
            ),
            (
                entry("b", "acme", json!({"url": "ftp://e.com"})),
                "webhooks.endpoints[0].url",
            ),
        ];
        for (e, key) in cases {
            let (k, m) = compile_one(e.clone()).expect_err("invalid");
            assert_eq!(k, key, "{e:?}: {m}");
        }
        let twice = [
            entry("b", "acme", json!({"url": "https://e.com"})),
            entry("b", "acme", json!({"url": "https://f.com"})),
        ];
        let (k, m) = compile(&twice, &Policies::default(), 5).expect_err("twice");
        assert_eq!(k, "webhooks.endpoints[1].name");
        assert!(m.contains("declared twice"), "{m}");
        // The same name in two tenants is two endpoints.
        let two = [
            entry("b", "acme", json!({"url": "https://e.com"})),
            entry("b", "globex", json!({"url": "https://e.com"})),
        ];
        assert_eq!(
            compile(&two, &Policies::default(), 5).expect("valid").len(),
            2
        );
    }

    #[test]
    fn the_digest_changes_with_any_setting_or_the_secret_only() {
        let d = |settings: Value, secret: Option<&str>| {
            let mut e = entry("b", "acme", settings);
            e.secret = secret.map(|s| Redacted(s.to_owned()));
            compile_one(e).expect("valid").remove(0).digest
        };
        let base = d(
            json!({"url": "https://e.com", "headers": {"X-K": "secret-1"}}),
            None,
        );
        assert_eq!(
            base,
            d(
                json!({"url": "https://e.com", "headers": {"X-K": "secret-1"}}),
                None
            )
        );
        // Masked on read, but a header value change is a change.
        assert_ne!(
            base,
            d(
                json!({"url": "https://e.com", "headers": {"X-K": "secret-2"}}),
                None
            )
        );
        assert_ne!(
            base,
            d(
                json!({"url": "https://e.com/x", "headers": {"X-K": "secret-1"}}),
                None
            )
        );
        assert_ne!(
            base,
            d(
                json!({"url": "https://e.com", "headers": {"X-K": "secret-1"}}),
                Some("whsec_AAAA")
            )
        );
    }
}
