//! `GET /v1/events/subscribe`: Server-Sent Events for browsers (anon key in
//! the query string) and backends.
//!
//! Frames: a `retry:` hint first; then per event `id: <seq>`, `event:
//! <type>`, `data: <envelope>` (with `mode=message`, no `event:` line, so
//! a browser's `EventSource.onmessage` gets every event); a `: keepalive`
//! comment after `http.heartbeat_secs` of silence, whatever else is going
//! on. Resume with `Last-Event-ID` (the last seq seen, exclusive) or `from`
//! (inclusive). A stream ends with one named frame, never `error` (which a
//! browser cannot tell from a failed connection): `revoked` or `expired`
//! when its credential ends, `gap` when it fell behind the log's retention,
//! `shutdown` when the server stops, `closed` when the log cannot be read;
//! each carries a JSON `code` and the position to resume from.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::{stream, StreamExt};

use super::follow::{FollowError, Follower, Start};
use crate::auth::{CredentialWatch, Role};
use crate::http::params::Params;
use crate::http::{request, ApiError, AppState};

const PARAMS: &[&str] = &["topic", "table", "collection", "filter", "from", "mode"];

/// How event frames are named (`mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameMode {
    /// `event: <type>` on every event frame (the default, `mode=typed`).
    Typed,
    /// No `event:` line (`mode=message`): a browser's `EventSource`
    /// delivers every event to `onmessage`.
    Message,
}

impl FrameMode {
    fn from_params(params: &Params) -> Result<FrameMode, ApiError> {
        match params.one("mode")? {
            None | Some("typed") => Ok(FrameMode::Typed),
            Some("message") => Ok(FrameMode::Message),
            Some(other) => Err(ApiError::bad_param(
                "mode",
                format!("expected typed (event: <type> on each frame) or message (no event: line), got {other:?}"),
            )),
        }
    }
}

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
    Ok(params.from("from")?.map_or(Start::Live, Start::At))
}

async fn subscribe(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let session = SseSession::open(&state, &headers, raw.as_deref()).await?;
    let first = session.retry_hint();
    let rest = stream::unfold(session, |mut s| async move {
        let frame = s.next_frame().await?;
        Some((Ok::<Bytes, Infallible>(frame), s))
    });
    let body = stream::once(async move { Ok(first) }).chain(rest);
    let mut resp = Body::from_stream(body).into_response();
    let h = resp.headers_mut();
    for (name, value) in RESPONSE_HEADERS {
        h.insert(*name, HeaderValue::from_static(value));
    }
    Ok(resp)
}

/// The headers of a stream's response (besides framing).
pub const RESPONSE_HEADERS: &[(&str, &str)] = &[
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
];

/// One open SSE stream, independent of the HTTP layer that carries it
/// (axum's body for most connections; `http::conn`'s lean writer for a
/// connection whose first request is a subscription).
pub struct SseSession {
    state: AppState,
    follower: Follower,
    credential: CredentialWatch,
    mode: FrameMode,
    heartbeat: Duration,
    /// When the last frame went out: a keepalive follows `heartbeat` after
    /// it, however often the other branches of `next_frame` wake.
    last_sent: tokio::time::Instant,
    idle: Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

impl Drop for SseSession {
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

impl SseSession {
    /// Authenticates and validates a subscription request and positions its
    /// follower. Every client error is an `ApiError` (answered before any
    /// stream starts).
    pub async fn open(
        state: &AppState,
        headers: &HeaderMap,
        raw_query: Option<&str>,
    ) -> Result<SseSession, ApiError> {
        let (params, identity, tenant) =
            request(state, headers, raw_query, PARAMS, Role::Anon).await?;
        let selector = Arc::new(params.selector(&state.captured_tables())?);
        let mode = FrameMode::from_params(&params)?;
        let start = start(headers, &params)?;
        if let Start::At(from) = start {
            let client = state
                .pool
                .get()
                .await
                .map_err(|e| ApiError::unavailable("the log", &e))?;
            let gap = crate::log::gap_at(&**client, from)
                .await
                .map_err(|e| ApiError::unavailable("the log", &e))?;
            if let Some(g) = gap {
                return Err(ApiError::gap(g.requested, g.oldest));
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
        let credential = state.auth.watch(
            &identity,
            Duration::from_secs(state.config.auth.revocation_check_secs),
        );
        let heartbeat = Duration::from_secs(state.config.http.heartbeat_secs.max(1));
        let now = tokio::time::Instant::now();
        state
            .metrics
            .sse_subscribers
            .fetch_add(1, Ordering::Relaxed);
        Ok(SseSession {
            state: state.clone(),
            follower,
            credential,
            mode,
            heartbeat,
            last_sent: now,
            idle: Box::pin(tokio::time::sleep_until(now + heartbeat)),
            done: false,
        })
    }

    /// The stream's first frame: the reconnection delay hint.
    pub fn retry_hint(&self) -> Bytes {
        Bytes::from(format!("retry: {}\n\n", self.state.config.http.retry_ms))
    }

    fn event_type<'a>(&self, event_type: &'a str) -> Option<&'a str> {
        match self.mode {
            FrameMode::Typed => Some(event_type),
            FrameMode::Message => None,
        }
    }

    /// An event frame if one is at hand without waiting (to write several
    /// in one go).
    pub fn try_next_frame(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let e = self.follower.try_next()?;
        self.state
            .metrics
            .sse_events
            .fetch_add(1, Ordering::Relaxed);
        self.state
            .metrics
            .sse_latency
            .observe_since(e.commit_micros);
        self.last_sent = tokio::time::Instant::now();
        Some(event_frame(e.seq, self.event_type(&e.event_type), &e.body))
    }

    /// The next frame to send; `None` when the stream is over.
    pub async fn next_frame(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let shutdown = self.state.shutdown.clone();
        let frame = loop {
            tokio::select! {
                next = self.follower.next() => break match next {
                    Ok(e) => {
                        self.state.metrics.sse_events.fetch_add(1, Ordering::Relaxed);
                        self.state.metrics.sse_latency.observe_since(e.commit_micros);
                        event_frame(e.seq, self.event_type(&e.event_type), &e.body)
                    }
                    Err(FollowError::Gap { requested, oldest }) => {
                        self.done = true;
                        control_frame("gap", serde_json::json!({"code": "gap", "requested": requested, "oldest": oldest}))
                    }
                    Err(FollowError::Db(e)) => {
                        tracing::warn!(error = %e, "sse stream cannot read the log; closing it");
                        self.done = true;
                        control_frame("closed", serde_json::json!({"code": "unavailable", "message": "the log cannot be read; reconnect shortly", "resume_from": self.follower.position()}))
                    }
                },
                () = self.idle.as_mut() => {
                    // Armed for `heartbeat` after a frame that may not have
                    // been the last one: silence is measured from the last.
                    let due = self.last_sent + self.heartbeat;
                    if due > tokio::time::Instant::now() {
                        self.idle.as_mut().reset(due);
                        continue;
                    }
                    break Bytes::from_static(b": keepalive\n\n");
                }
                end = self.credential.ended() => {
                    self.done = true;
                    break control_frame(end.code(), serde_json::json!({"code": end.code(), "message": end.message(), "resume_from": self.follower.position()}));
                }
                () = shutdown.cancelled() => {
                    self.done = true;
                    break control_frame("shutdown", serde_json::json!({"code": "shutdown", "resume_from": self.follower.position()}));
                }
            }
        };
        // The idle timer is not reset here (a timer-wheel update per frame):
        // when it fires it re-arms itself for `heartbeat` after this.
        self.last_sent = tokio::time::Instant::now();
        Some(frame)
    }
}

/// Formats one event frame; without a type it has no `event:` line (a
/// browser names it `message`).
pub fn event_frame(seq: i64, event_type: Option<&str>, body: &[u8]) -> Bytes {
    let mut f = Vec::with_capacity(body.len() + event_type.map_or(0, str::len) + 40);
    f.extend_from_slice(b"id: ");
    f.extend_from_slice(seq.to_string().as_bytes());
    if let Some(t) = event_type {
        f.extend_from_slice(b"\nevent: ");
        f.extend_from_slice(t.as_bytes());
    }
    f.extend_from_slice(b"\ndata: ");
    // The envelope is one line of JSON (no raw newlines), so one data line.
    f.extend_from_slice(body);
    f.extend_from_slice(b"\n\n");
    Bytes::from(f)
}

fn control_frame(event: &str, data: serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}
