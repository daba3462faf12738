//! The tenant's log over HTTP: `GET /v1/events` as JSON pages or NDJSON
//! (export a range, or `follow=true` to tail), `GET /v1/events/{seq}`, and
//! `GET /v1/stats`.
//!
//! Every form takes the selector SSE takes (`topic`/`topics` globs,
//! `table`, `collection`, `filter`) besides `types`, `since` and `until`.
//! A JSON page reads at most `http.page_limit` log rows, and its
//! `next_from` is past every row it read, matched or not: a client paging
//! through a selective filter never reads a row twice or skips one.
//!
//! NDJSON: one envelope per line. A tail writes `{"heartbeat":true,
//! "next_from":N}` after `http.heartbeat_secs` of silence (no envelope has a
//! `heartbeat` member, so readers tell them apart) and, when the server
//! stops, `{"shutdown":true,"next_from":N}`. A tail or export whose
//! credential is revoked or expires ends with
//! `{"error":{"code":"revoked"|"expired",…},"next_from":N}`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::stream;

use super::follow::{FollowError, Follower, Start};
use crate::auth::{CredentialEnd, CredentialWatch, Role};
use crate::event::TenantId;
use crate::http::{request, ApiError, AppState};
use crate::log::{self, LogQuery, ReadScope, StoredEvent};
use crate::subscription::Selector;

const LIST_PARAMS: &[&str] = &[
    "from",
    "to",
    "limit",
    "types",
    "topics",
    "topic",
    "table",
    "collection",
    "filter",
    "since",
    "until",
    "format",
    "follow",
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/events", get(list))
        .route("/v1/events/{seq}", get(one))
        .route("/v1/stats", get(stats))
}

struct ListRequest {
    tenant: TenantId,
    from: i64,
    to: Option<i64>,
    limit: Option<i64>,
    types: Option<Vec<String>>,
    selector: Selector,
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
}

impl ListRequest {
    fn keeps(&self, e: &StoredEvent) -> bool {
        self.selector.matches(&e.topic, || e.data())
    }
}

async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (p, identity, tenant) =
        request(&state, &headers, raw.as_deref(), LIST_PARAMS, Role::Anon).await?;
    let accept_ndjson = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/x-ndjson"));
    let ndjson = match p.one("format")? {
        None => accept_ndjson,
        Some("ndjson") => true,
        Some("json") => false,
        Some(f) => {
            return Err(ApiError::bad_param(
                "format",
                format!("expected json or ndjson, got {f:?}"),
            ))
        }
    };
    let follow = p.bool("follow")?;
    if follow && !ndjson {
        return Err(ApiError::bad_param(
            "follow",
            "follow=true streams NDJSON: add format=ndjson",
        ));
    }
    let limit = match p.one("limit")? {
        None => None,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                return Err(ApiError::bad_param(
                    "limit",
                    format!("expected a whole number >= 1, got {v:?}"),
                ))
            }
        },
    };
    if !ndjson && limit.is_some_and(|l| l > state.config.http.page_limit) {
        return Err(ApiError::bad_param(
            "limit",
            format!(
                "at most {} events per page; use format=ndjson to export more",
                state.config.http.page_limit
            ),
        ));
    }
    let types = p.list("types");
    let mut selector = p.selector(&state.captured_tables())?;
    for t in p.list("topics") {
        selector.topics.push(
            crate::subscription::TopicGlob::parse(&t)
                .map_err(|e| ApiError::bad_param("topics", e.to_string()))?,
        );
    }
    let req = ListRequest {
        tenant,
        from: p.from("from")?.unwrap_or(1),
        to: p.seq("to")?,
        limit,
        types: (!types.is_empty()).then_some(types),
        selector,
        since: p.time("since")?,
        until: p.time("until")?,
    };
    if follow && (req.to.is_some() || req.until.is_some()) {
        return Err(ApiError::bad_param(
            "follow",
            "a tail has no end: drop to/until, or follow",
        ));
    }
    let client = state
        .pool
        .get()
        .await
        .map_err(|e| ApiError::unavailable("the log", &e))?;
    let gap = log::gap_at(&**client, req.from)
        .await
        .map_err(|e| ApiError::unavailable("the log", &e))?;
    if let Some(g) = gap {
        return Err(ApiError::gap(g.requested, g.oldest));
    }
    drop(client);
    if !ndjson {
        return page(&state, &req).await;
    }
    let credential = state.auth.watch(
        &identity,
        Duration::from_secs(state.config.auth.revocation_check_secs),
    );
    let body = if follow {
        Body::from_stream(tail(state, req, credential))
    } else {
        Body::from_stream(export(state, req, credential))
    };
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}

fn query(req: &ListRequest, from: i64, limit: i64) -> LogQuery {
    LogQuery {
        from,
        to: req.to,
        limit,
        types: req.types.clone(),
        since: req.since,
        until: req.until,
    }
}

/// One JSON page: `{"events": [...], "next_from": N}`. Reads `limit` rows,
/// then twice as many as read so far (a selective filter costs a few
/// queries, not one per `limit` rows), until `limit` events matched, the
/// range ended, or `http.page_limit` rows were read. `next_from` is the seq
/// after the last row read (an unmatched row is read too), so pages never
/// overlap or miss.
async fn page(state: &AppState, req: &ListRequest) -> Result<Response, ApiError> {
    let page_limit = state.config.http.page_limit;
    let limit = req.limit.unwrap_or(100).min(page_limit);
    let client = state
        .pool
        .get()
        .await
        .map_err(|e| ApiError::unavailable("the log", &e))?;
    let scope = ReadScope::Tenant(req.tenant.clone());
    let mut next_from = req.from;
    let mut scanned = 0i64;
    let mut events = 0i64;
    let mut body = String::from("{\"events\":[");
    'pages: while events < limit && scanned < page_limit {
        let want = limit.max(scanned).min(page_limit - scanned);
        let rows = log::query_events(&**client, &scope, &query(req, next_from, want))
            .await
            .map_err(|e| ApiError::unavailable("the log", &e))?;
        let exhausted = (rows.len() as i64) < want;
        scanned += rows.len() as i64;
        for r in &rows {
            if req.keeps(r) {
                if events == limit {
                    // Full: this row starts the next page.
                    break 'pages;
                }
                if events > 0 {
                    body.push(',');
                }
                events += 1;
                body.push_str(&r.body);
            }
            next_from = r.seq + 1;
        }
        if exhausted {
            break;
        }
    }
    body.push_str(&format!("],\"next_from\":{next_from}}}"));
    let mut resp = Body::from(body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// NDJSON of a range, read page by page until the range (or `limit`) ends.
fn export(
    state: AppState,
    req: ListRequest,
    credential: CredentialWatch,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    let remaining = req.limit;
    stream::unfold(
        (state, req, remaining, false, credential),
        |(state, mut req, remaining, done, mut credential)| async move {
            if done || remaining == Some(0) {
                return None;
            }
            // Checked between pages: an export is as long-lived as the
            // range is large.
            if let Some(end) = credential.ended_now() {
                return Some((
                    Ok(credential_line(end, req.from)),
                    (state, req, remaining, true, credential),
                ));
            }
            let page = state.config.http.page_limit;
            let client = match state.pool.get().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "ndjson export cannot reach the log");
                    return Some((
                        Ok(error_line("unavailable", req.from)),
                        (state, req, remaining, true, credential),
                    ));
                }
            };
            let rows = match log::query_events(
                &**client,
                &ReadScope::Tenant(req.tenant.clone()),
                &query(&req, req.from, page),
            )
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "ndjson export read failed");
                    return Some((
                        Ok(error_line("unavailable", req.from)),
                        (state, req, remaining, true, credential),
                    ));
                }
            };
            drop(client);
            let exhausted = (rows.len() as i64) < page;
            let mut out = Vec::new();
            let mut remaining = remaining;
            for r in &rows {
                if remaining == Some(0) {
                    break;
                }
                req.from = r.seq + 1;
                if req.keeps(r) {
                    out.extend_from_slice(r.body.as_bytes());
                    out.push(b'\n');
                    remaining = remaining.map(|n| n - 1);
                }
            }
            Some((
                Ok(Bytes::from(out)),
                (state, req, remaining, exhausted, credential),
            ))
        },
    )
}

fn error_line(code: &str, next_from: i64) -> Bytes {
    Bytes::from(format!(
        "{{\"error\":{{\"code\":\"{code}\"}},\"next_from\":{next_from}}}\n"
    ))
}

fn credential_line(end: CredentialEnd, next_from: i64) -> Bytes {
    let line = serde_json::json!({
        "error": {"code": end.code(), "message": end.message()},
        "next_from": next_from,
    });
    Bytes::from(format!("{line}\n"))
}

/// NDJSON tail: everything from `from`, then live.
fn tail(
    state: AppState,
    req: ListRequest,
    credential: CredentialWatch,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    let follower = Follower::new(
        state.hub.clone(),
        state.pool.clone(),
        state.durable.clone(),
        req.tenant.clone(),
        Arc::new(req.selector),
        Start::At(req.from),
        state.config.http.page_limit,
    );
    let heartbeat = Duration::from_secs(state.config.http.heartbeat_secs.max(1));
    let now = tokio::time::Instant::now();
    let tail = Tail {
        _open: Tailing::new(state.metrics.clone()),
        state,
        follower,
        types: req.types,
        credential,
        heartbeat,
        last_sent: now,
        idle: Box::pin(tokio::time::sleep_until(now + heartbeat)),
        done: false,
    };
    stream::unfold(tail, |mut t| async move {
        let line = t.next_line().await?;
        Some((Ok(line), t))
    })
}

/// One open tail.
struct Tail {
    state: AppState,
    follower: Follower,
    types: Option<Vec<String>>,
    credential: CredentialWatch,
    heartbeat: Duration,
    /// A heartbeat follows `heartbeat` after the last line written.
    last_sent: tokio::time::Instant,
    idle: Pin<Box<tokio::time::Sleep>>,
    done: bool,
    _open: Tailing,
}

impl Tail {
    fn wants(&self, event_type: &str) -> bool {
        self.types
            .as_ref()
            .is_none_or(|t| t.iter().any(|t| t == event_type))
    }

    /// The next line to write; `None` once the tail is over.
    async fn next_line(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let shutdown = self.state.shutdown.clone();
        let line = loop {
            tokio::select! {
                next = self.follower.next() => match next {
                    Ok(e) if !self.wants(&e.event_type) => continue,
                    Ok(e) => {
                        let mut l = Vec::with_capacity(e.body.len() + 1);
                        l.extend_from_slice(&e.body);
                        l.push(b'\n');
                        break Bytes::from(l);
                    }
                    Err(FollowError::Gap { oldest, .. }) => {
                        self.done = true;
                        break Bytes::from(format!("{{\"error\":{{\"code\":\"gap\",\"oldest\":{oldest}}},\"next_from\":{}}}\n", self.follower.position()));
                    }
                    Err(FollowError::Db(e)) => {
                        tracing::warn!(error = %e, "ndjson tail cannot read the log");
                        self.done = true;
                        break error_line("unavailable", self.follower.position());
                    }
                },
                () = self.idle.as_mut() => {
                    let due = self.last_sent + self.heartbeat;
                    if due > tokio::time::Instant::now() {
                        self.idle.as_mut().reset(due);
                        continue;
                    }
                    break Bytes::from(format!("{{\"heartbeat\":true,\"next_from\":{}}}\n", self.follower.position()));
                }
                end = self.credential.ended() => {
                    self.done = true;
                    break credential_line(end, self.follower.position());
                }
                () = shutdown.cancelled() => {
                    self.done = true;
                    break Bytes::from(format!("{{\"shutdown\":true,\"next_from\":{}}}\n", self.follower.position()));
                }
            }
        };
        // The idle timer is not reset here (a timer-wheel update per frame):
        // when it fires it re-arms itself for `heartbeat` after this.
        self.last_sent = tokio::time::Instant::now();
        Some(line)
    }
}

/// Counts an open NDJSON tail in `sluice_subscribers{transport="ndjson"}`.
struct Tailing(Arc<crate::metrics::HttpMetrics>);

impl Tailing {
    fn new(m: Arc<crate::metrics::HttpMetrics>) -> Tailing {
        m.ndjson_subscribers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Tailing(m)
    }
}

impl Drop for Tailing {
    fn drop(&mut self) {
        self.0
            .ndjson_subscribers
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn one(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(seq): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (_p, _identity, tenant) =
        request(&state, &headers, raw.as_deref(), &[], Role::Anon).await?;
    let seq: i64 = match seq.parse() {
        Ok(n) if n >= 1 => n,
        _ => {
            return Err(ApiError::bad_param(
                "seq",
                format!("expected a seq (a whole number >= 1), got {seq:?}"),
            ))
        }
    };
    let client = state
        .pool
        .get()
        .await
        .map_err(|e| ApiError::unavailable("the log", &e))?;
    let q = LogQuery {
        from: seq,
        to: Some(seq),
        limit: 1,
        ..LogQuery::default()
    };
    let rows = log::query_events(&**client, &ReadScope::Tenant(tenant), &q)
        .await
        .map_err(|e| ApiError::unavailable("the log", &e))?;
    // Another tenant's event is "not found", not "forbidden": its existence is not ours to tell.
    let Some(row) = rows.into_iter().next() else {
        return Err(ApiError::not_found(format!(
            "no event {seq} for this tenant"
        )));
    };
    let mut resp = Body::from(row.body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Parses `30s`, `15m`, `24h`, `7d`.
fn window(s: &str) -> Option<i64> {
    let (n, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: i64 = n.parse().ok().filter(|n| *n > 0)?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(mult).filter(|s| *s <= 366 * 86_400)
}

async fn stats(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (p, _identity, tenant) =
        request(&state, &headers, raw.as_deref(), &["window"], Role::Anon).await?;
    let secs = match p.one("window")? {
        None => 86_400,
        Some(w) => window(w).ok_or_else(|| {
            ApiError::bad_param(
                "window",
                format!("expected a duration like 30s, 15m, 24h or 7d (at most 366d), got {w:?}"),
            )
        })?,
    };
    let client = state
        .pool
        .get()
        .await
        .map_err(|e| ApiError::unavailable("the log", &e))?;
    let rows = log::counts_by_type_topic(&**client, &tenant, secs as f64)
        .await
        .map_err(|e| ApiError::unavailable("the log", &e))?;
    let mut by_type = serde_json::Map::new();
    let mut by_topic = serde_json::Map::new();
    let mut total = 0i64;
    for (t, topic, n) in rows {
        total += n;
        let bump = |m: &mut serde_json::Map<String, serde_json::Value>, k: String| {
            let v = m.get(&k).and_then(|v| v.as_i64()).unwrap_or(0) + n;
            m.insert(k, v.into());
        };
        bump(&mut by_type, t);
        bump(&mut by_topic, topic);
    }
    Ok(axum::Json(serde_json::json!({
        "tenant": tenant.as_str(),
        "window_seconds": secs,
        "total": total,
        "by_type": by_type,
        "by_topic": by_topic,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::window;

    #[test]
    fn windows_parse_with_units_and_bounds() {
        assert_eq!(window("30s"), Some(30));
        assert_eq!(window("15m"), Some(900));
        assert_eq!(window("24h"), Some(86_400));
        assert_eq!(window("7d"), Some(604_800));
        for bad in ["", "h", "0h", "-1h", "1w", "367d", "abc"] {
            assert_eq!(window(bad), None, "{bad}");
        }
    }
}
