//! `GET /v1/events/subscribe`: Server-Sent Events for browsers (anon key in
//! the query string) and backends.
//!
//! Frames: a `retry:` hint first; then per event `id: <seq>`, `event:
//! <type>`, `data: <envelope>`; a `: keepalive` comment after
//! `http.heartbeat_secs` of silence. Resume with `Last-Event-ID` (the last
//! seq seen, exclusive) or `from` (inclusive). A stream ends with an
//! `event: error` frame when its credential is revoked or expires, with
//! `event: gap` when it fell behind the log's retention, and with `event:
//! shutdown` (carrying the resume position) when the server stops.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::stream;

use super::follow::{FollowError, Follower, Start};
use crate::auth::{Identity, Role};
use crate::http::params::Params;
use crate::http::{request, ApiError, AppState};

const PARAMS: &[&str] = &["topic", "table", "collection", "filter", "from"];

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/events/subscribe", get(subscribe))
}

/// The start position: `Last-Event-ID` (exclusive) wins over `from`.
fn start(headers: &HeaderMap, params: &Params) -> Result<Start, ApiError> {
    if let Some(v) = headers.get("last-event-id") {
        let text = v.to_str().unwrap_or("");
        return match text.trim().parse::<i64>() {
            Ok(n) if n >= 0 => Ok(Start::At(n + 1)),
            _ => Err(ApiError::bad_param(
                "Last-Event-ID",
                format!("expected the seq of the last event received, got {text:?}"),
            )),
        };
    }
    Ok(params.seq("from")?.map_or(Start::Live, Start::At))
}

async fn subscribe(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (params, identity, tenant) =
        request(&state, &headers, raw.as_deref(), PARAMS, Role::Anon).await?;
    let selector = Arc::new(params.selector(&state.captured_tables())?);
    let start = start(&headers, &params)?;
    if let Start::At(from) = start {
        let client = state
            .pool
            .get()
            .await
            .map_err(|e| ApiError::unavailable("the log", e))?;
        let pruned = crate::log::pruned_through(&**client)
            .await
            .map_err(|e| ApiError::unavailable("the log", e))?;
        if from <= pruned {
            return Err(ApiError::gap(from, pruned + 1));
        }
    }
    let follower = Follower::new(
        state.hub.clone(),
        state.pool.clone(),
        state.durable.clone(),
        tenant,
        selector,
        start,
        state.config.http.page_limit,
    );
    state
        .metrics
        .sse_subscribers
        .fetch_add(1, Ordering::Relaxed);
    let stream = frames(state, identity, follower);
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

struct Conn {
    state: AppState,
    identity: Identity,
    follower: Follower,
    revocation: tokio::time::Interval,
    heartbeat: Duration,
    retry_sent: bool,
    done: bool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.state
            .metrics
            .sse_subscribers
            .fetch_sub(1, Ordering::Relaxed);
        self.state
            .metrics
            .catchups
            .fetch_add(self.follower.catchups, Ordering::Relaxed);
    }
}

/// Formats one event frame.
pub fn event_frame(seq: i64, event_type: &str, body: &[u8]) -> Bytes {
    let mut f = Vec::with_capacity(body.len() + event_type.len() + 40);
    f.extend_from_slice(b"id: ");
    f.extend_from_slice(seq.to_string().as_bytes());
    f.extend_from_slice(b"\nevent: ");
    f.extend_from_slice(event_type.as_bytes());
    f.extend_from_slice(b"\ndata: ");
    // The envelope is one line of JSON (no raw newlines), so one data line.
    f.extend_from_slice(body);
    f.extend_from_slice(b"\n\n");
    Bytes::from(f)
}

fn control_frame(event: &str, data: serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

fn frames(
    state: AppState,
    identity: Identity,
    follower: Follower,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    let check = Duration::from_secs(state.config.auth.revocation_check_secs.max(1));
    let mut revocation = tokio::time::interval_at(tokio::time::Instant::now() + check, check);
    revocation.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let conn = Conn {
        heartbeat: Duration::from_secs(state.config.http.heartbeat_secs.max(1)),
        state,
        identity,
        follower,
        revocation,
        retry_sent: false,
        done: false,
    };
    stream::unfold(conn, |mut c| async move {
        if c.done {
            return None;
        }
        if !c.retry_sent {
            c.retry_sent = true;
            let hint = Bytes::from(format!("retry: {}\n\n", c.state.config.http.retry_ms));
            return Some((Ok(hint), c));
        }
        let shutdown = c.state.shutdown.clone();
        let frame = tokio::select! {
            next = c.follower.next() => match next {
                Ok(e) => {
                    c.state.metrics.sse_events.fetch_add(1, Ordering::Relaxed);
                    event_frame(e.seq, &e.event_type, &e.body)
                }
                Err(FollowError::Gap { requested, oldest }) => {
                    c.done = true;
                    control_frame("gap", serde_json::json!({"code": "gap", "requested": requested, "oldest": oldest}))
                }
                Err(FollowError::Db(e)) => {
                    tracing::warn!(error = %e, "sse stream cannot read the log; closing it");
                    c.done = true;
                    control_frame("error", serde_json::json!({"code": "unavailable", "resume_from": c.follower.position()}))
                }
            },
            _ = tokio::time::sleep(c.heartbeat) => Bytes::from_static(b": keepalive\n\n"),
            _ = c.revocation.tick() => {
                if c.state.auth.still_valid(&c.identity).await {
                    return Some((Ok(Bytes::new()), c));
                }
                c.done = true;
                control_frame("error", serde_json::json!({"code": "credential_revoked", "message": "the credential of this stream was revoked or expired"}))
            }
            _ = shutdown.cancelled() => {
                c.done = true;
                control_frame("shutdown", serde_json::json!({"resume_from": c.follower.position()}))
            }
        };
        Some((Ok(frame), c))
    })
}
