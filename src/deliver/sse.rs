//! Server-Sent Events sessions (`GET /v1/events/subscribe`, whose handler
//! is `http::sse`): the frames and the loop that picks the next one.
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

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::follow::{FollowError, Follower};
use super::live::{LiveError, LiveItem};
use super::Streams;
use crate::auth::CredentialWatch;
use crate::metrics::HttpMetrics;

/// How event frames are named (`mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameMode {
    /// `event: <type>` on every event frame (the default, `mode=typed`).
    Typed,
    /// No `event:` line (`mode=message`): a browser's `EventSource`
    /// delivers every event to `onmessage`.
    Message,
}

/// The headers of a stream's response (besides framing).
pub const RESPONSE_HEADERS: &[(&str, &str)] = &[
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
];

/// One open SSE stream, independent of the HTTP layer that carries it
/// (axum's body for most connections; `http::conn`'s lean writer for a
/// connection whose first request is a subscription). Counted in
/// `sluice_subscribers{transport="sse"}` while it lives.
pub struct SseSession {
    metrics: Arc<HttpMetrics>,
    shutdown: CancellationToken,
    retry_ms: u64,
    follower: Follower,
    credential: CredentialWatch,
    mode: FrameMode,
    heartbeat: Duration,
    /// When the last frame went out: a keepalive follows `heartbeat` after
    /// it, however often the other branches of `next_frame` wake.
    last_sent: tokio::time::Instant,
    idle: Pin<Box<tokio::time::Sleep>>,
    done: bool,
    /// A live query's initial part, until `synced`.
    live: Option<LivePhase>,
}

/// A live query's rows and changes up to the hand-over, then the follower
/// that goes on from it.
pub struct LivePhase {
    pub items: tokio::sync::mpsc::Receiver<Result<LiveItem, LiveError>>,
    /// The follower from a seq on (the hand-over's next); `None`: the
    /// items go on after `synced` (a top-N query's changes).
    pub then: Option<Box<dyn FnOnce(i64) -> Follower + Send + Sync>>,
    /// `synced` was sent: changes from here on carry their `id:`.
    pub synced: bool,
}

impl Drop for SseSession {
    fn drop(&mut self) {
        self.metrics.sse_subscribers.fetch_sub(1, Ordering::Relaxed);
        self.metrics
            .catchups
            .fetch_add(self.follower.catchups, Ordering::Relaxed);
    }
}

impl SseSession {
    /// A session over `follower` (positioned and checked by the caller)
    /// that ends when `credential` does or `streams.shutdown` fires.
    pub fn new(
        streams: &Streams,
        follower: Follower,
        credential: CredentialWatch,
        mode: FrameMode,
        retry_ms: u64,
    ) -> SseSession {
        let now = tokio::time::Instant::now();
        streams
            .metrics
            .sse_subscribers
            .fetch_add(1, Ordering::Relaxed);
        SseSession {
            metrics: streams.metrics.clone(),
            shutdown: streams.shutdown.clone(),
            retry_ms,
            follower,
            credential,
            mode,
            heartbeat: streams.heartbeat,
            last_sent: now,
            idle: Box::pin(tokio::time::sleep_until(now + streams.heartbeat)),
            done: false,
            live: None,
        }
    }

    /// This session starts with a live query's rows and changes (frames
    /// without an `id:`, so a client that reconnects before `synced` starts
    /// over), then `synced` with the hand-over seq as its `id:`, then the
    /// follower's events. `follower` given to [`SseSession::new`] is not
    /// read.
    pub fn with_live(mut self, live: LivePhase) -> SseSession {
        self.live = Some(live);
        self
    }

    /// The frame of a live query's item (`None`: its task is gone).
    fn live_frame(&mut self, item: Option<Result<LiveItem, LiveError>>) -> Bytes {
        match item {
            Some(Ok(LiveItem::Row(e) | LiveItem::Change(e))) => {
                self.metrics.sse_events.fetch_add(1, Ordering::Relaxed);
                if self.live.as_ref().is_some_and(|l| l.synced) {
                    self.metrics.sse_latency.observe_since(e.commit_micros);
                    return event_frame(e.seq, self.event_type(&e.event_type), &e.body);
                }
                unnumbered_frame(self.event_type(&e.event_type), &e.body)
            }
            Some(Ok(LiveItem::Synced(handover))) => {
                if let Some(live) = &mut self.live {
                    live.synced = true;
                    if let Some(then) = live.then.take() {
                        self.follower = then(handover + 1);
                        self.live = None;
                    }
                }
                Bytes::from(format!(
                    "id: {handover}\nevent: synced\ndata: {}\n\n",
                    serde_json::json!({"seq": handover})
                ))
            }
            Some(Err(e)) => {
                self.done = true;
                self.live = None;
                control_frame(
                    "closed",
                    serde_json::json!({"code": e.code(), "message": e.to_string()}),
                )
            }
            None => {
                self.done = true;
                self.live = None;
                control_frame(
                    "closed",
                    serde_json::json!({"code": "unavailable", "message": "the live query stopped; reconnect to start it again"}),
                )
            }
        }
    }

    /// `data` with `resume_from`, where there is a position to resume
    /// from (not in a live query's initial part, nor in a top-N query,
    /// which starts over on every connection).
    fn with_resume(&self, mut data: serde_json::Value) -> serde_json::Value {
        if self.live.is_none() {
            data["resume_from"] = self.follower.position().into();
        }
        data
    }

    /// The stream's first frame: the reconnection delay hint.
    pub fn retry_hint(&self) -> Bytes {
        Bytes::from(format!("retry: {}\n\n", self.retry_ms))
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
        if let Some(live) = &mut self.live {
            let item = live.items.try_recv().ok()?;
            let frame = self.live_frame(Some(item));
            self.last_sent = tokio::time::Instant::now();
            return Some(frame);
        }
        let e = self.follower.try_next()?;
        self.metrics.sse_events.fetch_add(1, Ordering::Relaxed);
        self.metrics.sse_latency.observe_since(e.commit_micros);
        self.last_sent = tokio::time::Instant::now();
        Some(event_frame(e.seq, self.event_type(&e.event_type), &e.body))
    }

    /// The next frame to send; `None` when the stream is over.
    pub async fn next_frame(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let shutdown = self.shutdown.clone();
        let frame = loop {
            // A live query's items until `synced` (a top-N query's for
            // good), else the follower's events.
            let (live, follower) = (&mut self.live, &mut self.follower);
            let next = async move {
                match live {
                    Some(l) => Next::Live(l.items.recv().await),
                    None => Next::Follow(follower.next().await),
                }
            };
            tokio::select! {
                next = next => break match next {
                    Next::Live(item) => self.live_frame(item),
                    Next::Follow(Ok(e)) => {
                        self.metrics.sse_events.fetch_add(1, Ordering::Relaxed);
                        self.metrics.sse_latency.observe_since(e.commit_micros);
                        event_frame(e.seq, self.event_type(&e.event_type), &e.body)
                    }
                    Next::Follow(Err(FollowError::Gap { requested, oldest })) => {
                        self.done = true;
                        control_frame("gap", serde_json::json!({"code": "gap", "requested": requested, "oldest": oldest}))
                    }
                    Next::Follow(Err(FollowError::Db(e))) => {
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
                    break control_frame(end.code(), self.with_resume(serde_json::json!({"code": end.code(), "message": end.message()})));
                }
                () = shutdown.cancelled() => {
                    self.done = true;
                    break control_frame("shutdown", self.with_resume(serde_json::json!({"code": "shutdown"})));
                }
            }
        };
        // The idle timer is not reset here (a timer-wheel update per frame):
        // when it fires it re-arms itself for `heartbeat` after this.
        self.last_sent = tokio::time::Instant::now();
        Some(frame)
    }
}

/// What the session waited for.
enum Next {
    Live(Option<Result<LiveItem, LiveError>>),
    Follow(Result<Arc<crate::event::Committed>, FollowError>),
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

/// A live query's frame before `synced`: no `id:`, so it moves no
/// client's resume position.
fn unnumbered_frame(event_type: Option<&str>, body: &[u8]) -> Bytes {
    let mut f = Vec::with_capacity(body.len() + event_type.map_or(0, str::len) + 24);
    if let Some(t) = event_type {
        f.extend_from_slice(b"event: ");
        f.extend_from_slice(t.as_bytes());
        f.push(b'\n');
    }
    f.extend_from_slice(b"data: ");
    f.extend_from_slice(body);
    f.extend_from_slice(b"\n\n");
    Bytes::from(f)
}

fn control_frame(event: &str, data: serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}
