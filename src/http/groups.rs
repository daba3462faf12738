//! Consumer groups over HTTP (service keys, or admin with `tenant=`):
//! `POST/GET /v1/groups`, `GET/PATCH/DELETE /v1/groups/{name}`, and per
//! group `receive` (long poll), `ack`, `nack`, `extend`, `seek`, `dead`,
//! `dead/requeue`, `stats`. The work is `groups`'; this parses, checks and
//! answers.

use std::time::Duration;

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
use crate::groups::{
    spec, Delivery, Group, GroupError, GroupSpec, OrderBy, Seek, Settled, SpecError, Start,
    MAX_RECEIVE, MAX_WAIT_MS,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/groups", post(create).get(list))
        .route("/v1/groups/{name}", get(read).patch(update).delete(remove))
        .route("/v1/groups/{name}/receive", post(receive))
        .route("/v1/groups/{name}/ack", post(ack))
        .route("/v1/groups/{name}/nack", post(nack))
        .route("/v1/groups/{name}/extend", post(extend))
        .route("/v1/groups/{name}/seek", post(seek))
        .route("/v1/groups/{name}/dead", get(dead))
        .route("/v1/groups/{name}/dead/requeue", post(requeue))
        .route("/v1/groups/{name}/stats", get(stats))
}

/// Longest nack delay: 12 hours.
const MAX_DELAY_MS: i64 = 12 * 3600 * 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    filter: Option<Value>,
    #[serde(default)]
    start: Option<Value>,
    #[serde(default)]
    ack_wait_ms: Option<i32>,
    #[serde(default)]
    max_deliveries: Option<i32>,
    #[serde(default)]
    max_in_flight: Option<i32>,
    #[serde(default)]
    ordering: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    claims: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    topics: Option<Vec<String>>,
    #[serde(default, deserialize_with = "super::webhooks::present")]
    filter: Option<Value>,
    ack_wait_ms: Option<i32>,
    max_deliveries: Option<i32>,
    max_in_flight: Option<i32>,
    ordering: Option<String>,
    #[serde(default, deserialize_with = "super::webhooks::present")]
    role: Option<Value>,
    claims: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiveBody {
    #[serde(default)]
    max_messages: Option<i64>,
    #[serde(default)]
    wait_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensBody {
    deliveries: Vec<String>,
    #[serde(default)]
    delay_ms: Option<i64>,
    #[serde(default)]
    ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeekBody {
    #[serde(default)]
    seq: Option<i64>,
    #[serde(default)]
    time: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequeueBody {
    #[serde(default)]
    seqs: Option<Vec<i64>>,
}

fn api_error(e: GroupError) -> ApiError {
    match e {
        GroupError::Unknown(_) => ApiError {
            status: StatusCode::NOT_FOUND,
            code: "unknown_group",
            param: None,
            message: e.to_string(),
            extra: None,
        },
        GroupError::Exists(_) => ApiError {
            status: StatusCode::CONFLICT,
            code: "exists",
            param: Some("name".to_owned()),
            message: e.to_string(),
            extra: None,
        },
        GroupError::Invalid(s) => ApiError::bad_param(&s.param, s.message),
        GroupError::Gap { requested, oldest } => ApiError::gap(requested, oldest),
        GroupError::Db(e) => ApiError::unavailable("the state database", &e),
        GroupError::Pool(m) => {
            ApiError::unavailable("the state database", &std::io::Error::other(m))
        }
    }
}

/// A connection of the asynchronous-commit pool (receives and settling).
async fn groups_db(state: &AppState) -> Result<deadpool_postgres::Object, ApiError> {
    state
        .groups_pool
        .get()
        .await
        .map_err(|e| ApiError::unavailable("the state database", &e))
}

fn bad(e: SpecError) -> ApiError {
    ApiError::bad_param(&e.param, e.message)
}

async fn tenant_of(
    state: &AppState,
    headers: &HeaderMap,
    raw: Option<&str>,
) -> Result<TenantId, ApiError> {
    let (_, _identity, tenant) = request(state, headers, raw, &[], Role::Service).await?;
    Ok(tenant)
}

fn ordering(s: Option<&str>) -> Result<OrderBy, ApiError> {
    match s {
        None => Ok(OrderBy::None),
        Some(o) => OrderBy::parse(o).ok_or_else(|| {
            ApiError::bad_param(
                "ordering",
                format!("expected \"none\" or \"subject\", got {o:?}"),
            )
        }),
    }
}

/// The API's view of a group.
fn group_json(g: &Group) -> Value {
    json!({
        "name": g.spec.name,
        "topics": g.spec.topics,
        "filter": g.spec.filter,
        "role": g.spec.role.as_deref().unwrap_or("service"),
        "claims": g.spec.claims,
        "ack_wait_ms": g.spec.ack_wait_ms,
        "max_deliveries": g.spec.max_deliveries,
        "max_in_flight": g.spec.max_in_flight,
        "ordering": g.spec.ordering.as_str(),
        "cursor": g.cursor,
        "created_at": g.created_at.to_rfc3339(),
        "updated_at": g.updated_at.to_rfc3339(),
    })
}

/// `{"messages":[{"delivery","attempt","seq","event"}…]}`, the envelopes
/// spliced in as they are.
pub fn messages_json(deliveries: &[Delivery]) -> Vec<u8> {
    let mut out = b"{\"messages\":[".to_vec();
    for (i, d) in deliveries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(
            format!(
                "{{\"delivery\":\"{}\",\"attempt\":{},\"seq\":{},\"event\":",
                d.token, d.attempt, d.seq
            )
            .as_bytes(),
        );
        out.extend_from_slice(&d.event);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

fn check_role(state: &AppState, role: &Option<String>) -> Result<(), ApiError> {
    match role {
        Some(r) => super::webhooks::check_role(state, r),
        None => Ok(()),
    }
}

async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&state, &headers, raw.as_deref()).await?;
    let b: CreateBody = json_body(&bytes)?;
    let spec = GroupSpec {
        name: b.name,
        topics: b.topics,
        filter: b.filter.filter(|f| !f.is_null()),
        role: b.role,
        claims: b.claims.unwrap_or_else(|| json!({})),
        ack_wait_ms: b.ack_wait_ms.unwrap_or(30_000),
        max_deliveries: b.max_deliveries.unwrap_or(5),
        max_in_flight: b.max_in_flight.unwrap_or(1000),
        ordering: ordering(b.ordering.as_deref())?,
    };
    spec.validate().map_err(bad)?;
    check_role(&state, &spec.role)?;
    super::webhooks::check_claims(&spec.claims)?;
    let start = Start::parse(b.start.as_ref()).map_err(bad)?;
    let client = state.state_db().await?;
    let g = state
        .groups
        .create(&**client, &tenant, &spec, &start)
        .await
        .map_err(api_error)?;
    Ok((StatusCode::CREATED, Json(group_json(&g))).into_response())
}

async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_of(&state, &headers, raw.as_deref()).await?;
    let client = state.state_db().await?;
    let groups = state
        .groups
        .list(&**client, &tenant)
        .await
        .map_err(api_error)?;
    Ok(Json(
        json!({"groups": groups.iter().map(group_json).collect::<Vec<_>>()}),
    ))
}

async fn read(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_of(&state, &headers, raw.as_deref()).await?;
    let client = state.state_db().await?;
    let g = state
        .groups
        .get(&**client, &tenant, &name)
        .await
        .map_err(api_error)?;
    Ok(Json(group_json(&g)))
}

async fn update(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_of(&state, &headers, raw.as_deref()).await?;
    let b: PatchBody = json_body(&bytes)?;
    let client = state.state_db().await?;
    let mut spec = state
        .groups
        .get(&**client, &tenant, &name)
        .await
        .map_err(api_error)?
        .spec;
    if let Some(t) = b.topics {
        spec.topics = t;
    }
    if let Some(f) = b.filter {
        spec.filter = Some(f).filter(|f| !f.is_null());
    }
    if let Some(n) = b.ack_wait_ms {
        spec.ack_wait_ms = n;
    }
    if let Some(n) = b.max_deliveries {
        spec.max_deliveries = n;
    }
    if let Some(n) = b.max_in_flight {
        spec.max_in_flight = n;
    }
    if let Some(o) = b.ordering {
        spec.ordering = ordering(Some(&o))?;
    }
    match b.role {
        None => {}
        Some(Value::Null) => spec.role = None,
        Some(Value::String(r)) => spec.role = Some(r),
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
    if let Some(c) = b.claims {
        spec.claims = c;
    }
    spec.validate().map_err(bad)?;
    check_role(&state, &spec.role)?;
    super::webhooks::check_claims(&spec.claims)?;
    let g = state
        .groups
        .update(&**client, &tenant, &spec)
        .await
        .map_err(api_error)?;
    Ok(Json(group_json(&g)))
}

async fn remove(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tenant = tenant_of(&state, &headers, raw.as_deref()).await?;
    let client = state.state_db().await?;
    state
        .groups
        .delete(&**client, &tenant, &name)
        .await
        .map_err(api_error)?;
    Ok(StatusCode::NO_CONTENT)
}

fn bounded(param: &str, v: Option<i64>, default: i64, lo: i64, hi: i64) -> Result<i64, ApiError> {
    let v = v.unwrap_or(default);
    if v < lo || v > hi {
        return Err(ApiError::bad_param(
            param,
            format!("expected {lo} to {hi}, got {v}"),
        ));
    }
    Ok(v)
}

async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&state, &headers, raw.as_deref()).await?;
    let b: ReceiveBody = if bytes.is_empty() {
        ReceiveBody {
            max_messages: None,
            wait_ms: None,
        }
    } else {
        json_body(&bytes)?
    };
    let max = bounded("max_messages", b.max_messages, 100, 1, MAX_RECEIVE)?;
    let wait = bounded("wait_ms", b.wait_ms, 20_000, 0, MAX_WAIT_MS)?;
    spec::check_name(&name).map_err(bad)?;
    let mut durable = state.durable.clone();
    let wait = Duration::from_millis(u64::try_from(wait).unwrap_or(0));
    let got = tokio::select! {
        got = state.groups.receive(&state.groups_pool, &tenant, &name, max, wait, &mut durable) => got,
        // Shutdown: answer what there is (nothing), the worker asks again.
        _ = state.shutdown.cancelled() => Ok(Vec::new()),
    }
    .map_err(api_error)?;
    let mut resp = axum::body::Body::from(messages_json(&got)).into_response();
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// 200 when every token matched; otherwise 404 `unknown_delivery` naming
/// the tokens that did not (unknown, expired or not this group's: alike),
/// after settling the others.
fn settled_response(verb: &str, s: Settled) -> Result<Json<Value>, ApiError> {
    if s.unknown.is_empty() {
        return Ok(Json(json!({ verb: s.done.len(), "dead": s.dead })));
    }
    Err(ApiError {
        status: StatusCode::NOT_FOUND,
        code: "unknown_delivery",
        param: Some("deliveries".to_owned()),
        message: format!(
            "{} of {} delivery tokens are unknown or expired (redelivered, acknowledged, or not this group's); the others were {verb}",
            s.unknown.len(),
            s.unknown.len() + s.done.len()
        ),
        extra: Some(Box::new(json!({ verb: s.done.len(), "unknown": s.unknown }))),
    })
}

/// What `ack`, `nack` and `extend` do with their tokens.
#[derive(Clone, Copy)]
enum Settle {
    Ack,
    Nack,
    Extend,
}

async fn ack(
    state: State<AppState>,
    headers: HeaderMap,
    raw: RawQuery,
    name: Path<String>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    settle(state, headers, raw, name, bytes, Settle::Ack).await
}

async fn nack(
    state: State<AppState>,
    headers: HeaderMap,
    raw: RawQuery,
    name: Path<String>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    settle(state, headers, raw, name, bytes, Settle::Nack).await
}

async fn extend(
    state: State<AppState>,
    headers: HeaderMap,
    raw: RawQuery,
    name: Path<String>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    settle(state, headers, raw, name, bytes, Settle::Extend).await
}

async fn settle(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Path(name): Path<String>,
    bytes: Bytes,
    how: Settle,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_of(&state, &headers, raw.as_deref()).await?;
    let b: TokensBody = json_body(&bytes)?;
    let client = groups_db(&state).await?;
    let g = &state.groups;
    let (verb, done) = match how {
        Settle::Ack => ("acked", g.ack(&client, &tenant, &name, &b.deliveries).await),
        Settle::Nack => {
            let delay = bounded("delay_ms", b.delay_ms, 0, 0, MAX_DELAY_MS)?;
            let done = g.nack(&client, &tenant, &name, &b.deliveries, delay).await;
            ("nacked", done)
        }
        Settle::Extend => {
            let ms = match b.ms {
                None => None,
                Some(ms) => Some(bounded("ms", Some(ms), 0, 100, MAX_DELAY_MS)?),
            };
            let done = g.extend(&client, &tenant, &name, &b.deliveries, ms).await;
            ("extended", done)
        }
    };
    settled_response(verb, done.map_err(api_error)?)
}

async fn seek(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_of(&state, &headers, raw.as_deref()).await?;
    let b: SeekBody = json_body(&bytes)?;
    let target = match (b.seq, b.time) {
        (Some(seq), None) if seq >= 1 => Seek::Seq(seq),
        (Some(_), None) => return Err(ApiError::bad_param("seq", "expected a seq >= 1")),
        (None, Some(t)) => Seek::Time(
            chrono::DateTime::parse_from_rfc3339(&t)
                .map_err(|e| {
                    ApiError::bad_param("time", format!("expected an RFC 3339 time: {e}"))
                })?
                .with_timezone(&chrono::Utc),
        ),
        _ => return Err(ApiError::bad_param("body", "give one of seq or time")),
    };
    // On a task of its own, so a client that goes away cannot leave the
    // transaction open on a pooled connection.
    let (groups, pool) = (state.groups.clone(), state.pool.clone());
    let cursor = tokio::spawn(async move {
        let mut client = pool
            .get()
            .await
            .map_err(|e| GroupError::Pool(e.to_string()))?;
        groups.seek(&mut client, &tenant, &name, &target).await
    })
    .await
    .map_err(|e| {
        ApiError::unavailable("the state database", &std::io::Error::other(e.to_string()))
    })?
    .map_err(api_error)?;
    Ok(Json(json!({ "cursor": cursor })))
}

async fn dead(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let (p, _identity, tenant) = request(
        &state,
        &headers,
        raw.as_deref(),
        &["from", "limit"],
        Role::Service,
    )
    .await?;
    let from = p.from("from")?.unwrap_or(1);
    let limit = match p.one("limit")? {
        None => 100,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_param(
                    "limit",
                    format!("expected 1 to 1000, got {v:?}"),
                ))
            }
        },
    };
    let client = state.state_db().await?;
    let letters = state
        .groups
        .dead(&**client, &tenant, &name, from, limit)
        .await
        .map_err(api_error)?;
    let items: Vec<Value> = letters
        .iter()
        .map(|d| {
            json!({
                "seq": d.seq,
                "attempts": d.attempts,
                "dead_at": d.dead_at.map(|t| t.to_rfc3339()),
                "event": d.event.as_ref().and_then(|b| serde_json::from_slice::<Value>(b).ok()),
            })
        })
        .collect();
    Ok(Json(json!({ "dead": items })).into_response())
}

async fn requeue(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_of(&state, &headers, raw.as_deref()).await?;
    let b: RequeueBody = if bytes.is_empty() {
        RequeueBody { seqs: None }
    } else {
        json_body(&bytes)?
    };
    let client = state.state_db().await?;
    let n = state
        .groups
        .requeue(&**client, &tenant, &name, b.seqs.as_deref())
        .await
        .map_err(api_error)?;
    Ok(Json(json!({ "requeued": n })))
}

async fn stats(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_of(&state, &headers, raw.as_deref()).await?;
    let client = state.state_db().await?;
    let s = state
        .groups
        .stats(&**client, &tenant, &name)
        .await
        .map_err(api_error)?;
    Ok(Json(s))
}
