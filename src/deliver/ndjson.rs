//! NDJSON streams of a tenant's log (`GET /v1/events?format=ndjson`, whose
//! handler is `http::ndjson`): an export of a range, read page by page, and
//! a tail (`follow=true`) that catches up and goes live.
//!
//! One envelope per line. A tail writes `{"heartbeat":true,
//! "next_from":N}` after `http.heartbeat_secs` of silence (no envelope has a
//! `heartbeat` member, so readers tell them apart) and, when the server
//! stops, `{"shutdown":true,"next_from":N}`. A tail or export whose
//! credential is revoked or expires ends with
//! `{"error":{"code":"revoked"|"expired",…},"next_from":N}`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use tokio_util::sync::CancellationToken;

use super::follow::{FollowError, Follower, Start};
use super::live::{LiveError, LiveItem};
use super::Streams;
use crate::auth::{CredentialEnd, CredentialWatch};
use crate::event::{Committed, TenantId};
use crate::log::{self, LogQuery, ReadScope};
use crate::policy::Access;

/// Which of a tenant's events a list, export or tail returns.
pub struct EventRange {
    pub tenant: TenantId,
    /// First seq (inclusive).
    pub from: i64,
    /// Last seq (inclusive), if any.
    pub to: Option<i64>,
    /// Most events, if any.
    pub limit: Option<i64>,
    /// Only these event types.
    pub types: Option<Vec<String>>,
    /// The credential's policy and the request's selector.
    pub access: Access,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

impl EventRange {
    /// A row the log returned as this request sees it, if it does (its
    /// policy, then its selector).
    pub fn shows(&self, e: &Committed) -> Option<Arc<Committed>> {
        self.access.admit_one(&Arc::new(e.clone()))
    }

    /// The log read of this range's next `limit` rows from `from`.
    pub fn query(&self, from: i64, limit: i64) -> LogQuery {
        LogQuery {
            from,
            to: self.to,
            limit,
            types: self.types.clone(),
            since: self.since,
            until: self.until,
        }
    }
}

/// NDJSON of a range, read page by page until the range (or `limit`) ends.
pub fn export(
    streams: Streams,
    req: EventRange,
    credential: CredentialWatch,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    let remaining = req.limit;
    stream::unfold(
        (streams, req, remaining, false, credential),
        |(streams, mut req, remaining, done, mut credential)| async move {
            if done || remaining == Some(0) {
                return None;
            }
            // Checked between pages: an export is as long-lived as the
            // range is large.
            if let Some(end) = credential.ended_now() {
                return Some((
                    Ok(credential_line(end, req.from)),
                    (streams, req, remaining, true, credential),
                ));
            }
            let page = streams.page_limit;
            let client = match streams.pool.get().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "ndjson export cannot reach the log");
                    return Some((
                        Ok(error_line("unavailable", req.from)),
                        (streams, req, remaining, true, credential),
                    ));
                }
            };
            let rows = match log::query_events(
                &**client,
                &ReadScope::Tenant(req.tenant.clone()),
                &req.query(req.from, page),
            )
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "ndjson export read failed");
                    return Some((
                        Ok(error_line("unavailable", req.from)),
                        (streams, req, remaining, true, credential),
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
                if let Some(shown) = req.shows(r) {
                    out.extend_from_slice(&shown.body);
                    out.push(b'\n');
                    remaining = remaining.map(|n| n - 1);
                }
            }
            Some((
                Ok(Bytes::from(out)),
                (streams, req, remaining, exhausted, credential),
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
pub fn tail(
    streams: Streams,
    req: EventRange,
    credential: CredentialWatch,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    stream::unfold(tail_of(streams, req, credential), |mut t| async move {
        let line = t.next_line().await?;
        Some((Ok(line), t))
    })
}

/// Most lines of a live query's rows written in one chunk.
const LIVE_CHUNK: usize = 256;

/// NDJSON of a live query (`snapshot=true`): its rows (`row.snapshot`
/// envelopes) and the changes up to the hand-over, then
/// `{"synced":true,"seq":H,"next_from":H+1}`; with `follow`, the tail from
/// `H + 1` (a `top` query's own changes), else the end. An error ends it with `{"error":{…}}` (no
/// `next_from`: before `synced` there is nothing to resume from).
pub fn live(
    streams: Streams,
    req: EventRange,
    items: tokio::sync::mpsc::Receiver<Result<LiveItem, LiveError>>,
    follow: bool,
    top: bool,
    credential: CredentialWatch,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    enum Phase {
        Rows(Box<LiveRows>),
        Tail(Box<Tail>),
        Done,
    }
    struct LiveRows {
        streams: Streams,
        req: EventRange,
        items: tokio::sync::mpsc::Receiver<Result<LiveItem, LiveError>>,
        follow: bool,
        top: bool,
        credential: CredentialWatch,
    }
    let rows = LiveRows {
        streams,
        req,
        items,
        follow,
        top,
        credential,
    };
    stream::unfold(Phase::Rows(Box::new(rows)), |phase| async move {
        let mut r = match phase {
            Phase::Done => return None,
            Phase::Tail(mut t) => {
                let line = t.next_line().await?;
                return Some((Ok(line), Phase::Tail(t)));
            }
            Phase::Rows(r) => r,
        };
        let shutdown = r.streams.shutdown.clone();
        let first = tokio::select! {
            item = r.items.recv() => item,
            end = r.credential.ended() => {
                let line = serde_json::json!({"error": {"code": end.code(), "message": end.message()}});
                return Some((Ok(Bytes::from(format!("{line}\n"))), Phase::Done));
            }
            () = shutdown.cancelled() => {
                return Some((Ok(Bytes::from_static(b"{\"shutdown\":true}\n")), Phase::Done));
            }
        };
        let mut out = Vec::new();
        let mut item = first;
        let mut n = 0;
        loop {
            match item {
                Some(Ok(LiveItem::Row(e) | LiveItem::Change(e))) => {
                    out.extend_from_slice(&e.body);
                    out.push(b'\n');
                }
                Some(Ok(LiveItem::Synced(h))) => {
                    out.extend_from_slice(
                        format!("{{\"synced\":true,\"seq\":{h},\"next_from\":{}}}\n", h + 1)
                            .as_bytes(),
                    );
                    if !r.follow {
                        return Some((Ok(Bytes::from(out)), Phase::Done));
                    }
                    if r.top {
                        // A top-N query's changes come on `items` too.
                        return Some((Ok(Bytes::from(out)), Phase::Rows(r)));
                    }
                    let LiveRows {
                        streams,
                        mut req,
                        credential,
                        ..
                    } = *r;
                    req.from = h + 1;
                    let tail = tail_of(streams, req, credential);
                    return Some((Ok(Bytes::from(out)), Phase::Tail(Box::new(tail))));
                }
                Some(Err(e)) => {
                    let line =
                        serde_json::json!({"error": {"code": e.code(), "message": e.to_string()}});
                    out.extend_from_slice(format!("{line}\n").as_bytes());
                    return Some((Ok(Bytes::from(out)), Phase::Done));
                }
                None => {
                    out.extend_from_slice(b"{\"error\":{\"code\":\"unavailable\",\"message\":\"the live query stopped; start it again\"}}\n");
                    return Some((Ok(Bytes::from(out)), Phase::Done));
                }
            }
            n += 1;
            if n == LIVE_CHUNK {
                break;
            }
            match r.items.try_recv() {
                Ok(next) => item = Some(next),
                Err(_) => break,
            }
        }
        Some((Ok(Bytes::from(out)), Phase::Rows(r)))
    })
}

/// The tail of `req` from its `from`.
fn tail_of(streams: Streams, req: EventRange, credential: CredentialWatch) -> Tail {
    let follower = streams.follower(
        req.tenant.clone(),
        Arc::new(req.access),
        Start::At(req.from),
    );
    let now = tokio::time::Instant::now();
    Tail {
        _open: Tailing::new(streams.metrics.clone()),
        shutdown: streams.shutdown.clone(),
        follower,
        types: req.types,
        credential,
        heartbeat: streams.heartbeat,
        last_sent: now,
        idle: Box::pin(tokio::time::sleep_until(now + streams.heartbeat)),
        done: false,
    }
}

/// One open tail.
struct Tail {
    shutdown: CancellationToken,
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
    /// Whether `types` selects the event; like the log reads, by its
    /// stored type (a policy's `row.entered`/`row.left` are stored
    /// `row.updated`; `doc.entered`/`doc.left` an update or replace).
    fn wants(&self, event_type: &str) -> bool {
        let stored: &[&str] = match event_type {
            "row.entered" | "row.left" => &["row.updated"],
            "doc.entered" | "doc.left" => &["doc.updated", "doc.replaced"],
            other => &[other][..],
        };
        self.types
            .as_ref()
            .is_none_or(|t| t.iter().any(|t| stored.contains(&t.as_str())))
    }

    /// The next line to write; `None` once the tail is over.
    async fn next_line(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let shutdown = self.shutdown.clone();
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
