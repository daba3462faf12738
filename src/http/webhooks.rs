//! `/v1/webhooks`: endpoints, their deliveries, secret rotation and replay.
//! Service credentials, scoped to their tenant: another tenant's endpoint
//! is 404, exactly like one that does not exist, so ids do not leak.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{json_body, request, ApiError, AppState};
use crate::auth::Role;
use crate::event::TenantId;
use crate::log::{LogQuery, ReadScope};
use crate::webhooks::spec::{self, EndpointPatch, EndpointSpec, SpecError};
use crate::webhooks::store::{self, Endpoint, COLUMNS};
use crate::webhooks::{new_id, sign};

const DELIVERY_PAGE: i64 = 100;
const DELIVERY_PAGE_MAX: i64 = 1000;
/// Most events one `from_seq` replay request re-enqueues.
const MAX_REPLAY: usize = 100_000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/webhooks", post(create).get(list))
        .route("/v1/webhooks/{id}", get(read).patch(update).delete(remove))
        .route("/v1/webhooks/{id}/rotate-secret", post(rotate))
        .route("/v1/webhooks/{id}/deliveries", get(deliveries))
        .route("/v1/webhooks/{id}/replay", post(replay))
}

/// A member that is present (even as `null`) is `Some`.
pub(super) fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    from_seq: Option<i64>,
    event_ids: Option<Vec<Value>>,
    status: Option<String>,
}

fn dberr(e: tokio_postgres::Error) -> ApiError {
    ApiError::unavailable("the state database", &e)
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no webhook endpoint {id:?}"))
}

/// The configuration's declaration of `endpoint`, if it is declared there
/// now (`webhooks::declared`).
fn declaration<'a>(
    state: &'a AppState,
    endpoint: &Endpoint,
) -> Option<&'a crate::config::WebhookEndpointConfig> {
    let name = endpoint.name.as_deref().filter(|_| endpoint.managed)?;
    state
        .config
        .webhooks
        .endpoints
        .iter()
        .find(|e| e.name == name && e.tenant == endpoint.tenant)
}

/// 409 for a change the configuration owns.
fn declared_conflict(endpoint: &Endpoint, what: &str) -> ApiError {
    ApiError {
        status: StatusCode::CONFLICT,
        code: "declared_in_config",
        param: None,
        message: format!(
            "endpoint {} ({:?}) is declared in the configuration (webhooks.endpoints): {what}",
            endpoint.id,
            endpoint.name.as_deref().unwrap_or("")
        ),
        extra: None,
    }
}

fn bad(e: SpecError) -> ApiError {
    ApiError::bad_param(&e.param, e.message)
}

/// What validating a spec needs from the server.
fn context(state: &AppState) -> spec::Context<'_> {
    spec::Context {
        policies: &state.policies,
        default_max_attempts: i32::try_from(state.config.webhooks.max_attempts)
            .unwrap_or(spec::MAX_ATTEMPTS.1),
    }
}

/// A role for an endpoint or a group: anon, service, or a custom role the
/// policies name; never admin.
pub(super) fn check_role(state: &AppState, role: &str) -> Result<(), ApiError> {
    spec::check_role(&state.policies, role).map_err(bad)
}

/// Claims of an endpoint or a group: a JSON object of at most 4 KiB.
pub(super) fn check_claims(claims: &Value) -> Result<(), ApiError> {
    spec::check_claims(claims).map_err(bad)
}

async fn tenant_of(
    state: &AppState,
    headers: &HeaderMap,
    raw: Option<&str>,
    allowed: &[&str],
) -> Result<(super::params::Params, TenantId), ApiError> {
    let (params, _identity, tenant) = request(state, headers, raw, allowed, Role::Service).await?;
    Ok((params, tenant))
}

async fn fetch(
    client: &deadpool_postgres::Object,
    tenant: &TenantId,
    id: &str,
) -> Result<Endpoint, ApiError> {
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM sluice.webhooks WHERE id = $1 AND tenant = $2"),
            &[&id, &tenant.as_str()],
        )
        .await
        .map_err(dberr)?
        .ok_or_else(|| not_found(id))?;
    Ok(Endpoint::from_row(&row))
}

async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let (_, tenant) = tenant_of(&state, &headers, raw.as_deref(), &[]).await?;
    let mut spec: EndpointSpec = json_body(&bytes)?;
    spec.validate(&context(&state)).map_err(bad)?;
    spec::check_destination(&spec.url, state.config.webhooks.allow_private_addresses)
        .await
        .map_err(bad)?;
    let secret = sign::generate_secret();
    let client = state.state_db().await?;
    let endpoint = store::insert(&**client, &tenant, &new_id("wh_"), &secret, &spec)
        .await
        .map_err(dberr)?;
    let mut out = endpoint.to_json();
    out["secret"] = json!(secret);
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (_, tenant) = tenant_of(&state, &headers, raw.as_deref(), &[]).await?;
    let client = state.state_db().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM sluice.webhooks WHERE tenant = $1 ORDER BY created_at, id"
            ),
            &[&tenant.as_str()],
        )
        .await
        .map_err(dberr)?;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| Endpoint::from_row(r).to_json())
        .collect();
    Ok(Json(json!({ "webhooks": items })))
}

async fn read(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (_, tenant) = tenant_of(&state, &headers, raw.as_deref(), &[]).await?;
    let client = state.state_db().await?;
    Ok(Json(fetch(&client, &tenant, &id).await?.to_json()))
}

async fn update(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (_, tenant) = tenant_of(&state, &headers, raw.as_deref(), &[]).await?;
    let patch: EndpointPatch = json_body(&bytes)?;
    let client = state.state_db().await?;
    let stored = fetch(&client, &tenant, &id).await?;
    let new_url = patch.url.is_some();
    let mut spec = patch.apply(stored.spec.clone());
    if declaration(&state, &stored).is_some() {
        let mut probe = spec.clone();
        probe.enabled = stored.spec.enabled;
        if probe != stored.spec {
            return Err(declared_conflict(
                &stored,
                "change it there; through the API only enabled may change",
            ));
        }
    }
    spec.validate(&context(&state)).map_err(bad)?;
    if new_url {
        spec::check_destination(&spec.url, state.config.webhooks.allow_private_addresses)
            .await
            .map_err(bad)?;
    }
    let disabled_reason = match (stored.spec.enabled, spec.enabled) {
        (_, true) => None,
        (true, false) => Some("disabled through the API"),
        (false, false) => stored
            .disabled_reason
            .as_deref()
            .or(Some("disabled through the API")),
    };
    let endpoint = store::update(&**client, &tenant, &id, &spec, disabled_reason)
        .await
        .map_err(dberr)?
        .ok_or_else(|| not_found(&id))?;
    if endpoint.spec.enabled {
        state.outbox.notify.notify_one();
    }
    Ok(Json(endpoint.to_json()))
}

async fn remove(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (_, tenant) = tenant_of(&state, &headers, raw.as_deref(), &[]).await?;
    let client = state.state_db().await?;
    let stored = fetch(&client, &tenant, &id).await?;
    if declaration(&state, &stored).is_some() {
        return Err(declared_conflict(
            &stored,
            "remove it there (it is then disabled at the next start, and can be deleted)",
        ));
    }
    let n = client
        .execute(
            "DELETE FROM sluice.webhooks WHERE id = $1 AND tenant = $2",
            &[&id, &tenant.as_str()],
        )
        .await
        .map_err(dberr)?;
    if n == 0 {
        return Err(not_found(&id));
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn rotate(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (_, tenant) = tenant_of(&state, &headers, raw.as_deref(), &[]).await?;
    let secret = sign::generate_secret();
    let overlap = state.config.webhooks.secret_overlap_secs as f64;
    let client = state.state_db().await?;
    let stored = fetch(&client, &tenant, &id).await?;
    if let Some(var) = declaration(&state, &stored).and_then(|d| d.secret_env.as_deref()) {
        return Err(declared_conflict(
            &stored,
            &format!("its secret comes from {var}: change that variable and restart"),
        ));
    }
    let row = client
        .query_opt(
            "UPDATE sluice.webhooks
             SET previous_secret = secret, secret = $3,
                 previous_expires = now() + make_interval(secs => $4), updated_at = now()
             WHERE id = $1 AND tenant = $2
             RETURNING previous_expires",
            &[&id, &tenant.as_str(), &secret, &overlap],
        )
        .await
        .map_err(dberr)?
        .ok_or_else(|| not_found(&id))?;
    let expires: chrono::DateTime<chrono::Utc> = row.get(0);
    Ok(Json(json!({
        "id": id,
        "secret": secret,
        "previous_secret_expires_at": expires.to_rfc3339(),
    })))
}

const STATUSES: &[&str] = &["pending", "failed", "delivered", "dead"];

async fn deliveries(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (params, tenant) = tenant_of(
        &state,
        &headers,
        raw.as_deref(),
        &["status", "limit", "before", "request"],
    )
    .await?;
    let request = params.one("request")?.map(str::to_owned);
    let status = params.one("status")?.map(str::to_owned);
    if let Some(s) = &status {
        if !STATUSES.contains(&s.as_str()) {
            return Err(ApiError::bad_param(
                "status",
                format!("expected one of {}, got {s:?}", STATUSES.join(", ")),
            ));
        }
    }
    let limit = params
        .seq("limit")?
        .unwrap_or(DELIVERY_PAGE)
        .clamp(1, DELIVERY_PAGE_MAX);
    let before = params.seq("before")?.unwrap_or(i64::MAX);
    let client = state.state_db().await?;
    fetch(&client, &tenant, &id).await?;
    let rows = client
        .query(
            "SELECT id, seq, status, attempts, next_attempt_at, created_at, updated_at, request
             FROM sluice.webhook_deliveries
             WHERE webhook_id = $1 AND ($2::text IS NULL OR status = $2) AND id < $3
               AND ($5::text IS NULL OR request = $5)
             ORDER BY id DESC LIMIT $4",
            &[&id, &status, &before, &limit, &request],
        )
        .await
        .map_err(dberr)?;
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let attempt_rows = client
        .query(
            "SELECT delivery_id, attempt, at, http_status, latency_ms, error, request
             FROM sluice.webhook_attempts WHERE delivery_id = ANY($1) ORDER BY id",
            &[&ids],
        )
        .await
        .map_err(dberr)?;
    let mut attempts: BTreeMap<i64, Vec<Value>> = BTreeMap::new();
    for a in &attempt_rows {
        let at: chrono::DateTime<chrono::Utc> = a.get(2);
        attempts.entry(a.get(0)).or_default().push(json!({
            "attempt": a.get::<_, i32>(1),
            "at": at.to_rfc3339(),
            "http_status": a.get::<_, Option<i32>>(3),
            "latency_ms": a.get::<_, i32>(4),
            "error": a.get::<_, Option<String>>(5),
            "request": a.get::<_, Option<String>>(6),
        }));
    }
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            let id: i64 = r.get(0);
            let seq: i64 = r.get(1);
            let status: String = r.get(2);
            let next: chrono::DateTime<chrono::Utc> = r.get(4);
            let created: chrono::DateTime<chrono::Utc> = r.get(5);
            let updated: chrono::DateTime<chrono::Utc> = r.get(6);
            let waiting = status == "pending" || status == "failed";
            let request: Option<String> = r.get(7);
            json!({
                "id": id,
                "seq": seq,
                "webhook_id": request.clone().unwrap_or_else(|| format!("msg_{seq}")),
                "request": request,
                "status": status,
                "attempts": r.get::<_, i32>(3),
                "next_attempt_at": waiting.then(|| next.to_rfc3339()),
                "created_at": created.to_rfc3339(),
                "updated_at": updated.to_rfc3339(),
                "attempt_log": attempts.remove(&id).unwrap_or_default(),
            })
        })
        .collect();
    let next_before = (items.len() as i64 == limit)
        .then(|| ids.last().copied())
        .flatten();
    Ok(Json(
        json!({ "deliveries": items, "next_before": next_before }),
    ))
}

async fn replay(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let (_, tenant) = tenant_of(&state, &headers, raw.as_deref(), &[]).await?;
    let b: ReplayBody = json_body(&bytes)?;
    let chosen = [
        b.from_seq.is_some(),
        b.event_ids.is_some(),
        b.status.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if chosen != 1 {
        return Err(ApiError::bad_param(
            "body",
            "give exactly one of from_seq, event_ids or status",
        ));
    }
    let client = state.state_db().await?;
    let endpoint = fetch(&client, &tenant, &id).await?;
    let mut more_from: Option<i64> = None;
    let enqueued = if let Some(status) = &b.status {
        if status != "dead" {
            return Err(ApiError::bad_param(
                "status",
                format!("only dead deliveries are replayed by status, got {status:?}"),
            ));
        }
        client
            .execute(
                "UPDATE sluice.webhook_deliveries
                 SET status = 'pending', attempts = 0, next_attempt_at = now(), request = NULL,
                     updated_at = now()
                 WHERE webhook_id = $1 AND status = 'dead'",
                &[&id],
            )
            .await
            .map_err(dberr)? as usize
    } else if let Some(ids) = &b.event_ids {
        let seqs = event_seqs(ids)?;
        let found = crate::log::tenant_seqs_present(&**client, &tenant, &seqs)
            .await
            .map_err(dberr)?;
        let missing: Vec<String> = seqs
            .iter()
            .filter(|s| !found.contains(s))
            .map(|s| s.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(ApiError::not_found(format!(
                "no such events in this tenant's log: {}",
                missing.join(", ")
            )));
        }
        enqueue(&client, &id, &found).await?
    } else {
        let from = crate::log::position::from_number(b.from_seq.unwrap_or(1))
            .map_err(|e| ApiError::bad_param("from_seq", e.to_string()))?;
        if let Some(g) = crate::log::gap_at(&**client, from).await.map_err(dberr)? {
            let mut e = ApiError::gap(g.requested, g.oldest);
            e.param = Some("from_seq".to_owned());
            return Err(e);
        }
        let access = endpoint.access(&state.policies).ok_or_else(|| {
            ApiError::bad_param("filter", "the endpoint's filter no longer parses")
        })?;
        let scope = ReadScope::Tenant(tenant.clone());
        let mut next = from;
        let mut total = 0;
        loop {
            let page = crate::log::query_events(
                &**client,
                &scope,
                &LogQuery {
                    from: next,
                    limit: 1000,
                    ..LogQuery::default()
                },
            )
            .await
            .map_err(dberr)?;
            let Some(last) = page.last() else { break };
            next = last.seq + 1;
            let seqs: Vec<i64> = page
                .iter()
                .filter(|e| {
                    access
                        .admit_one(&std::sync::Arc::new((*e).clone()))
                        .is_some()
                })
                .map(|e| e.seq)
                .collect();
            total += enqueue(&client, &id, &seqs).await?;
            if page.len() < 1000 {
                break;
            }
            if total >= MAX_REPLAY {
                more_from = Some(next);
                break;
            }
        }
        total
    };
    state.outbox.notify.notify_one();
    let mut out = json!({ "enqueued": enqueued });
    if let Some(n) = more_from {
        out["next_from_seq"] = json!(n);
    }
    Ok((StatusCode::ACCEPTED, Json(out)).into_response())
}

/// Event ids as given (the envelope's `id` string or the seq number).
fn event_seqs(ids: &[Value]) -> Result<Vec<i64>, ApiError> {
    if ids.is_empty() || ids.len() > 1000 {
        return Err(ApiError::bad_param("event_ids", "give 1 to 1000 event ids"));
    }
    ids.iter()
        .enumerate()
        .map(|(i, v)| {
            let seq = match v {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.parse().ok(),
                _ => None,
            };
            seq.filter(|s| *s > 0).ok_or_else(|| {
                ApiError::bad_param(
                    &format!("event_ids[{i}]"),
                    format!("expected an event id (its seq), got {v}"),
                )
            })
        })
        .collect()
}

/// Puts these events (back) in the endpoint's outbox as fresh deliveries.
async fn enqueue(
    client: &deadpool_postgres::Object,
    endpoint: &str,
    seqs: &[i64],
) -> Result<usize, ApiError> {
    if seqs.is_empty() {
        return Ok(0);
    }
    let n = client
        .execute(
            "INSERT INTO sluice.webhook_deliveries (webhook_id, seq)
             SELECT $1, s FROM unnest($2::bigint[]) AS s
             ON CONFLICT (webhook_id, seq) DO UPDATE
             SET status = 'pending', attempts = 0, next_attempt_at = now(), request = NULL,
                 updated_at = now()",
            &[&endpoint, &seqs],
        )
        .await
        .map_err(dberr)?;
    Ok(n as usize)
}
