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
use crate::subscription::{Filter, TopicGlob};
use crate::webhooks::store::{Endpoint, COLUMNS};
use crate::webhooks::{new_id, sign, ssrf};

const MAX_DESCRIPTION_BYTES: usize = 1024;
const MAX_TOPICS: usize = 32;
const MAX_ATTEMPTS_LIMIT: i32 = 100;
const MAX_RATE: f64 = 100_000.0;
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimit {
    per_second: f64,
    burst: i32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    url: String,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    filter: Option<Value>,
    #[serde(default)]
    description: String,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    max_attempts: Option<i32>,
    #[serde(default)]
    rate_limit: Option<RateLimit>,
    #[serde(default)]
    ordered: bool,
    /// The role of the access policies the endpoint receives events as.
    #[serde(default)]
    role: Option<String>,
    /// The claims that role's row predicates compare with.
    #[serde(default)]
    claims: Option<Value>,
}

fn yes() -> bool {
    true
}

/// PATCH: every member optional; `filter` and `rate_limit` may be `null`
/// to clear them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    url: Option<String>,
    topics: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    filter: Option<Value>,
    description: Option<String>,
    enabled: Option<bool>,
    max_attempts: Option<i32>,
    #[serde(default, deserialize_with = "present")]
    rate_limit: Option<Value>,
    ordered: Option<bool>,
    /// `null` puts the endpoint back to service.
    #[serde(default, deserialize_with = "present")]
    role: Option<Value>,
    claims: Option<Value>,
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

async fn check_url(state: &AppState, raw: &str) -> Result<String, ApiError> {
    let url = ssrf::parse_url(raw).map_err(|e| ApiError::bad_param("url", e.to_string()))?;
    ssrf::check_destination(&url, state.config.webhooks.allow_private_addresses)
        .await
        .map_err(|e| ApiError::bad_param("url", e.to_string()))?;
    Ok(url.to_string())
}

pub(super) fn check_topics(topics: &[String]) -> Result<(), ApiError> {
    if topics.len() > MAX_TOPICS {
        return Err(ApiError::bad_param(
            "topics",
            format!("at most {MAX_TOPICS} topic globs, got {}", topics.len()),
        ));
    }
    for (i, t) in topics.iter().enumerate() {
        TopicGlob::parse(t)
            .map_err(|e| ApiError::bad_param(&format!("topics[{i}]"), e.to_string()))?;
    }
    Ok(())
}

pub(super) fn check_filter(filter: &Option<Value>) -> Result<(), ApiError> {
    match filter {
        None | Some(Value::Null) => Ok(()),
        Some(f) => Filter::parse(f)
            .map(|_| ())
            .map_err(|e| ApiError::bad_param("filter", e.to_string())),
    }
}

/// A role for an endpoint: anon, service, or a custom role the policies
/// name; never admin.
pub(super) fn check_role(state: &AppState, role: &str) -> Result<(), ApiError> {
    match crate::auth::Role::parse(role) {
        Some(crate::auth::Role::Admin) => Err(ApiError::bad_param(
            "role",
            "an endpoint acts for its tenant: anon, service or a custom role, never admin",
        )),
        Some(_) => Ok(()),
        None if state.policies.custom_roles().iter().any(|r| r == role) => Ok(()),
        None => Err(ApiError::bad_param(
            "role",
            format!(
                "{role:?} is not a role: expected anon, service or a custom role of the access policies ({})",
                match state.policies.custom_roles() {
                    r if r.is_empty() => "none configured".to_owned(),
                    r => r.join(", "),
                }
            ),
        )),
    }
}

/// An endpoint's claims: a JSON object of at most 4 KiB.
pub(super) fn check_claims(claims: &Value) -> Result<(), ApiError> {
    if !claims.is_object() {
        return Err(ApiError::bad_param(
            "claims",
            format!(
                "expected an object of claims, got {}",
                crate::event::json::kind_of(claims)
            ),
        ));
    }
    if claims.to_string().len() > 4096 {
        return Err(ApiError::bad_param("claims", "at most 4096 bytes of JSON"));
    }
    Ok(())
}

fn check_description(d: &str) -> Result<(), ApiError> {
    if d.len() > MAX_DESCRIPTION_BYTES {
        return Err(ApiError::bad_param(
            "description",
            format!("at most {MAX_DESCRIPTION_BYTES} bytes, got {}", d.len()),
        ));
    }
    Ok(())
}

fn check_attempts(n: i32) -> Result<(), ApiError> {
    if !(1..=MAX_ATTEMPTS_LIMIT).contains(&n) {
        return Err(ApiError::bad_param(
            "max_attempts",
            format!("expected 1 to {MAX_ATTEMPTS_LIMIT}, got {n}"),
        ));
    }
    Ok(())
}

fn check_rate(r: &RateLimit) -> Result<(f64, i32), ApiError> {
    if !(r.per_second.is_finite() && r.per_second > 0.0 && r.per_second <= MAX_RATE) {
        return Err(ApiError::bad_param(
            "rate_limit.per_second",
            format!("expected a number above 0 and at most {MAX_RATE}"),
        ));
    }
    if !(1..=100_000).contains(&r.burst) {
        return Err(ApiError::bad_param(
            "rate_limit.burst",
            "expected a whole number from 1 to 100000",
        ));
    }
    Ok((r.per_second, r.burst))
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
    let b: CreateBody = json_body(&bytes)?;
    let url = check_url(&state, &b.url).await?;
    check_topics(&b.topics)?;
    check_filter(&b.filter)?;
    check_description(&b.description)?;
    if let Some(r) = &b.role {
        check_role(&state, r)?;
    }
    let claims = b.claims.clone().unwrap_or_else(|| json!({}));
    check_claims(&claims)?;
    let max_attempts = match b.max_attempts {
        Some(n) => n,
        None => i32::try_from(state.config.webhooks.max_attempts).unwrap_or(MAX_ATTEMPTS_LIMIT),
    };
    check_attempts(max_attempts)?;
    let rate = b.rate_limit.as_ref().map(check_rate).transpose()?;
    let filter = b.filter.filter(|f| !f.is_null());
    let id = new_id("wh_");
    let secret = sign::generate_secret();
    let client = state.state_db().await?;
    let row = client
        .query_one(
            &format!(
                "INSERT INTO sluice.webhooks (id, tenant, url, topics, filter, description, enabled,
                     max_attempts, rate_per_second, rate_burst, ordered, secret, role, claims)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                 RETURNING {COLUMNS}"
            ),
            &[
                &id,
                &tenant.as_str(),
                &url,
                &b.topics,
                &filter,
                &b.description,
                &b.enabled,
                &max_attempts,
                &rate.map(|r| r.0),
                &rate.map(|r| r.1),
                &b.ordered,
                &secret,
                &b.role,
                &claims,
            ],
        )
        .await
        .map_err(dberr)?;
    let mut out = Endpoint::from_row(&row).to_json();
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
    let b: PatchBody = json_body(&bytes)?;
    let client = state.state_db().await?;
    let mut e = fetch(&client, &tenant, &id).await?;
    if let Some(url) = &b.url {
        e.url = check_url(&state, url).await?;
    }
    if let Some(topics) = b.topics {
        check_topics(&topics)?;
        e.topics = topics;
    }
    if let Some(filter) = b.filter {
        let filter = Some(filter).filter(|f| !f.is_null());
        check_filter(&filter)?;
        e.filter = filter;
    }
    if let Some(d) = b.description {
        check_description(&d)?;
        e.description = d;
    }
    if let Some(enabled) = b.enabled {
        if enabled && !e.enabled {
            e.disabled_reason = None;
        }
        e.enabled = enabled;
        if !enabled && e.disabled_reason.is_none() {
            e.disabled_reason = Some("disabled through the API".to_owned());
        }
    }
    if let Some(n) = b.max_attempts {
        check_attempts(n)?;
        e.max_attempts = n;
    }
    if let Some(rate) = b.rate_limit {
        if rate.is_null() {
            e.rate_per_second = None;
            e.rate_burst = None;
        } else {
            let r: RateLimit = serde_json::from_value(rate)
                .map_err(|err| ApiError::bad_param("rate_limit", err.to_string()))?;
            let (per_second, burst) = check_rate(&r)?;
            e.rate_per_second = Some(per_second);
            e.rate_burst = Some(burst);
        }
    }
    if let Some(ordered) = b.ordered {
        e.ordered = ordered;
    }
    match b.role {
        None => {}
        Some(Value::Null) => e.role = None,
        Some(Value::String(r)) => {
            check_role(&state, &r)?;
            e.role = Some(r);
        }
        Some(other) => {
            return Err(ApiError::bad_param(
                "role",
                format!(
                    "expected a role name or null, got {}",
                    crate::event::json::kind_of(&other)
                ),
            ))
        }
    }
    if let Some(claims) = b.claims {
        check_claims(&claims)?;
        e.claims = claims;
    }
    let row = client
        .query_opt(
            &format!(
                "UPDATE sluice.webhooks SET url = $3, topics = $4, filter = $5, description = $6,
                     enabled = $7, disabled_reason = $8, max_attempts = $9, rate_per_second = $10,
                     rate_burst = $11, ordered = $12, role = $13, claims = $14, updated_at = now()
                 WHERE id = $1 AND tenant = $2
                 RETURNING {COLUMNS}"
            ),
            &[
                &id,
                &tenant.as_str(),
                &e.url,
                &e.topics,
                &e.filter,
                &e.description,
                &e.enabled,
                &e.disabled_reason,
                &e.max_attempts,
                &e.rate_per_second,
                &e.rate_burst,
                &e.ordered,
                &e.role,
                &e.claims,
            ],
        )
        .await
        .map_err(dberr)?
        .ok_or_else(|| not_found(&id))?;
    if e.enabled {
        state.outbox.notify.notify_one();
    }
    Ok(Json(Endpoint::from_row(&row).to_json()))
}

async fn remove(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (_, tenant) = tenant_of(&state, &headers, raw.as_deref(), &[]).await?;
    let client = state.state_db().await?;
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
        &["status", "limit", "before"],
    )
    .await?;
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
            "SELECT id, seq, status, attempts, next_attempt_at, created_at, updated_at
             FROM sluice.webhook_deliveries
             WHERE webhook_id = $1 AND ($2::text IS NULL OR status = $2) AND id < $3
             ORDER BY id DESC LIMIT $4",
            &[&id, &status, &before, &limit],
        )
        .await
        .map_err(dberr)?;
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let attempt_rows = client
        .query(
            "SELECT delivery_id, attempt, at, http_status, latency_ms, error
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
            json!({
                "id": id,
                "seq": seq,
                "webhook_id": format!("msg_{seq}"),
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
                 SET status = 'pending', attempts = 0, next_attempt_at = now(), updated_at = now()
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
             SET status = 'pending', attempts = 0, next_attempt_at = now(), updated_at = now()",
            &[&endpoint, &seqs],
        )
        .await
        .map_err(dberr)?;
    Ok(n as usize)
}
