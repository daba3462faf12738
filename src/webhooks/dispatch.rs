//! The dispatcher: claims due deliveries, POSTs them signed, records each
//! attempt and schedules the next.
//!
//! Claiming sets a lease (`next_attempt_at` pushed past the endpoint's
//! request timeout) and counts the attempt in one statement, so dispatchers
//! in several processes share the outbox and one that dies mid-attempt only
//! delays a delivery until its lease runs out. Claims are made per
//! endpoint, each limited by that endpoint's free concurrency and
//! rate-limit tokens (one per request), so an endpoint that keeps failing
//! or has a backlog never takes the slots of another. An ordered endpoint's
//! next request is claimable only when no earlier delivery is unfinished,
//! so it receives its events in seq order, one request at a time.
//!
//! A batched endpoint's deliveries are grouped into requests by
//! [`super::batch`], in a transaction holding the endpoint's advisory lock
//! (one dispatcher forms its batches at a time), and each delivery keeps
//! the id of the request it went out in, so a retry sends the same events
//! under the same `webhook-id`. Every delivery of a request shares its
//! outcome.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::batch::{self, Candidate, Limits, Planned};
use super::schedule::{self, TokenBucket};
use super::sign;
use super::ssrf;
use super::store::{BodyTemplate, Compiled, Endpoints, Snapshot};
use crate::config::WebhooksConfig;
use crate::event::Committed;

/// Extra lease beyond the request timeout.
const LEASE_SLACK: Duration = Duration::from_secs(5);
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Most response-body bytes read (then the connection is dropped).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// How long a stopping dispatcher waits for requests in flight.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// First key of the advisory lock a batch claim holds per endpoint (the
/// second is the hash of the endpoint's id).
const BATCH_LOCK_CLASS: i32 = 0x5175_1CE1;

/// Counters exported as metrics.
#[derive(Debug, Default)]
pub struct WebhookMetrics {
    /// Requests made (a batch is one).
    pub attempts: AtomicU64,
    /// Delivery outcomes (a batch counts each of its deliveries).
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub dead: AtomicU64,
    /// Requests in flight.
    pub in_flight: AtomicU64,
    /// Sum of request latencies, in milliseconds.
    pub latency_ms_sum: AtomicU64,
    /// Source commit → the endpoint's 2xx.
    pub delivery_latency: crate::metrics::Histogram,
}

/// One claimed delivery.
#[derive(Debug, Clone, Copy)]
struct Claimed {
    id: i64,
    seq: i64,
    attempt: i32,
}

/// Deliveries claimed to go out in one request.
struct Request {
    endpoint: Arc<Compiled>,
    /// Its `webhook-id`: `msg_<seq>` alone, the batch's request id in a batch.
    msg_id: String,
    /// Sent as a JSON array of envelopes.
    batch: bool,
    /// In seq order.
    deliveries: Vec<Claimed>,
}

/// Where and how to send.
struct Target {
    url: String,
    keys: Vec<Vec<u8>>,
    /// The endpoint's own headers.
    headers: HeaderMap,
}

/// A request ready to go.
struct Prepared {
    endpoint: Arc<Compiled>,
    msg_id: String,
    target: Arc<Target>,
    content_type: String,
    body: Bytes,
    /// The deliveries it carries, with their events' commit times.
    deliveries: Vec<(Claimed, i64)>,
}

/// What one delivery's attempt came to.
struct Outcome {
    delivery: i64,
    endpoint: Arc<str>,
    attempt: i32,
    /// `delivered`, `failed` or `dead`.
    status: &'static str,
    next_at: Option<chrono::DateTime<chrono::Utc>>,
    http_status: Option<i32>,
    latency_ms: i32,
    error: Option<String>,
    /// The endpoint answered 410: disable it.
    gone: bool,
    /// The `webhook-id` of the request.
    request: String,
    /// When the request was sent.
    at: chrono::DateTime<chrono::Utc>,
}

impl Outcome {
    /// A delivery that cannot be sent: dead, with the reason.
    fn unsent(endpoint: &Arc<str>, c: Claimed, request: &str, error: String) -> Outcome {
        Outcome {
            delivery: c.id,
            endpoint: endpoint.clone(),
            attempt: c.attempt,
            status: "dead",
            next_at: None,
            http_status: None,
            latency_ms: 0,
            error: Some(error),
            gone: false,
            request: request.to_owned(),
            at: chrono::Utc::now(),
        }
    }
}

/// One claimed request, finished: the outcome of every delivery it held.
struct Finished {
    endpoint: Arc<str>,
    outcomes: Vec<Outcome>,
}

pub struct Dispatcher {
    pool: deadpool_postgres::Pool,
    endpoints: Arc<Endpoints>,
    notify: Arc<Notify>,
    config: WebhooksConfig,
    schedule: Vec<Duration>,
    http: reqwest::Client,
    pub metrics: Arc<WebhookMetrics>,
}

impl Dispatcher {
    pub fn new(
        pool: deadpool_postgres::Pool,
        outbox: &super::Outbox,
        config: &WebhooksConfig,
        metrics: Arc<WebhookMetrics>,
    ) -> Result<Dispatcher, String> {
        let schedule = schedule::parse_schedule(&config.retry_schedule)?;
        // Every request carries its endpoint's timeout, which bounds the
        // connection too.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve the destination itself, past the guard.
            .no_proxy()
            // Endpoints often share a host: keep a connection per request slot.
            .pool_max_idle_per_host(config.concurrency)
            .user_agent(concat!("sluice-webhooks/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(ssrf::GuardedResolver {
                allow_private: config.allow_private_addresses,
            }))
            .build()
            .map_err(|e| format!("cannot build the webhook HTTP client: {e}"))?;
        Ok(Dispatcher {
            pool,
            endpoints: outbox.endpoints.clone(),
            notify: outbox.notify.clone(),
            config: config.clone(),
            schedule,
            http,
            metrics,
        })
    }

    /// Runs until `stop`; requests in flight then get a few seconds to
    /// finish (unfinished ones are retried after their lease by any node).
    pub async fn run(self, stop: CancellationToken) {
        let this = Arc::new(self);
        let (tx, mut rx) = mpsc::unbounded_channel::<Finished>();
        let mut in_flight: HashMap<Arc<str>, usize> = HashMap::new();
        let mut total = 0usize;
        let mut buckets: HashMap<Arc<str>, TokenBucket> = HashMap::new();
        let mut done: Vec<Outcome> = Vec::new();
        let poll = Duration::from_millis(this.config.poll_interval_ms);
        let mut backoff = Duration::ZERO;
        loop {
            while let Ok(f) = rx.try_recv() {
                release(&mut in_flight, &mut total, &f.endpoint);
                done.extend(f.outcomes);
            }
            if !done.is_empty() {
                this.metrics
                    .in_flight
                    .store(total as u64, Ordering::Relaxed);
                if let Err(e) = this.record(&done).await {
                    // The leases make these deliveries due again: at least
                    // once still holds.
                    tracing::warn!(error = %e, n = done.len(), "cannot record webhook attempts; they will be retried");
                }
                done.clear();
            }
            let mut wake = poll;
            if total < this.config.concurrency && backoff.is_zero() {
                match this
                    .claim_and_send(&mut in_flight, &mut total, &mut buckets, &tx)
                    .await
                {
                    Ok(next) => {
                        if let Some(t) = next {
                            wake = wake.min(t);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook dispatcher cannot claim deliveries; retrying");
                        backoff = Duration::from_millis(500);
                    }
                }
                this.metrics
                    .in_flight
                    .store(total as u64, Ordering::Relaxed);
            }
            if !backoff.is_zero() {
                wake = backoff;
                backoff = Duration::ZERO;
            }
            tokio::select! {
                _ = this.notify.notified() => {}
                Some(f) = rx.recv() => {
                    release(&mut in_flight, &mut total, &f.endpoint);
                    done.extend(f.outcomes);
                }
                _ = tokio::time::sleep(wake) => {}
                _ = stop.cancelled() => break,
            }
        }
        // Let requests in flight finish and record them.
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while total > 0 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(f)) => {
                    release(&mut in_flight, &mut total, &f.endpoint);
                    done.extend(f.outcomes);
                }
                _ => break,
            }
        }
        if !done.is_empty() {
            if let Err(e) = this.record(&done).await {
                tracing::warn!(error = %e, "cannot record the last webhook attempts; they will be retried");
            }
        }
    }

    /// The request timeout of `endpoint`.
    fn timeout(&self, endpoint: &Compiled) -> Duration {
        endpoint
            .timeout
            .unwrap_or(Duration::from_millis(self.config.timeout_ms))
    }

    /// How long a claim of `endpoint`'s deliveries holds them, in seconds.
    fn lease_secs(&self, endpoint: &Compiled) -> f64 {
        (self.timeout(endpoint) + LEASE_SLACK).as_secs_f64()
    }

    /// Claims what may be sent now and starts sending it. Returns when to
    /// look again sooner than the poll interval: the next rate-limit token
    /// an endpoint waits for, or the moment a waiting batch is due.
    async fn claim_and_send(
        self: &Arc<Self>,
        in_flight: &mut HashMap<Arc<str>, usize>,
        total: &mut usize,
        buckets: &mut HashMap<Arc<str>, TokenBucket>,
        tx: &mpsc::UnboundedSender<Finished>,
    ) -> Result<Option<Duration>, String> {
        let mut client = self.pool.get().await.map_err(|e| e.to_string())?;
        let snapshot = self
            .endpoints
            .refresh(&**client)
            .await
            .map_err(|e| e.to_string())?;
        let now = Instant::now();
        let mut wake: Option<Duration> = None;
        let mut soonest = |d: Duration| wake = Some(wake.map_or(d, |w: Duration| w.min(d)));
        // (endpoint, requests it may start now)
        let mut single: Vec<(Arc<Compiled>, usize)> = Vec::new();
        let mut batched: Vec<(Arc<Compiled>, usize)> = Vec::new();
        for e in snapshot.all() {
            let cap = if e.ordered {
                1
            } else {
                self.config.endpoint_concurrency
            };
            let mut free = cap.saturating_sub(in_flight.get(&e.id).copied().unwrap_or(0));
            if let Some((per_second, burst)) = e.rate {
                let bucket = buckets
                    .entry(e.id.clone())
                    .or_insert_with(|| TokenBucket::new(per_second, burst));
                let mut got = 0;
                while got < free {
                    match bucket.try_take(now) {
                        Ok(()) => got += 1,
                        Err(wait) => {
                            soonest(wait);
                            break;
                        }
                    }
                }
                free = got;
            }
            if free > 0 {
                if e.batch.is_some() {
                    batched.push((e.clone(), free));
                } else {
                    single.push((e.clone(), free));
                }
            }
        }
        buckets.retain(|id, _| snapshot.all().any(|e| &e.id == id));
        let mut room = self.config.concurrency.saturating_sub(*total);
        let mut requests: Vec<Request> = Vec::new();
        if !single.is_empty() && room > 0 {
            requests = self.claim_single(&client, &single, room).await?;
            room = room.saturating_sub(requests.len());
        }
        if !batched.is_empty() && room > 0 {
            let (claimed, batch_wake) = self.claim_batches(&mut client, &batched, room).await?;
            requests.extend(claimed);
            if let Some(w) = batch_wake {
                soonest(w);
            }
        }
        // Tokens taken for requests that were not made go back.
        for (e, free) in single.iter().chain(&batched) {
            if let Some(bucket) = buckets.get_mut(&e.id) {
                let used = requests.iter().filter(|r| r.endpoint.id == e.id).count();
                bucket.refund(u32::try_from(free.saturating_sub(used)).unwrap_or(u32::MAX));
            }
        }
        if requests.is_empty() {
            return Ok(wake);
        }
        let prepared = self.prepare(&client, &snapshot, requests).await?;
        drop(client);
        for (endpoint, ready) in prepared {
            *in_flight.entry(endpoint.clone()).or_default() += 1;
            *total += 1;
            match ready {
                Err(unsent) => {
                    let _ = tx.send(Finished {
                        endpoint,
                        outcomes: unsent,
                    });
                }
                Ok((p, unsent)) => {
                    let this = self.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let mut outcomes = this.attempt(p).await;
                        outcomes.extend(unsent);
                        let _ = tx.send(Finished { endpoint, outcomes });
                    });
                }
            }
        }
        Ok(wake)
    }

    /// Claims deliveries of endpoints that send one event per request: at
    /// most `free` of each, `room` in all.
    async fn claim_single(
        &self,
        client: &deadpool_postgres::Object,
        endpoints: &[(Arc<Compiled>, usize)],
        room: usize,
    ) -> Result<Vec<Request>, String> {
        let ids: Vec<&str> = endpoints.iter().map(|(e, _)| &*e.id).collect();
        let limits: Vec<i32> = endpoints
            .iter()
            .map(|(_, free)| i32::try_from(*free).unwrap_or(i32::MAX))
            .collect();
        let leases: Vec<f64> = endpoints.iter().map(|(e, _)| self.lease_secs(e)).collect();
        let room = i64::try_from(room).unwrap_or(i64::MAX);
        let rows = client
            .query(
                "WITH due AS (
                     SELECT d.id, e.lease
                     FROM unnest($1::text[], $2::int[], $4::float8[]) AS e(id, lim, lease)
                     JOIN sluice.webhooks w ON w.id = e.id AND w.enabled
                     CROSS JOIN LATERAL (
                         SELECT d.id FROM sluice.webhook_deliveries d
                         WHERE d.webhook_id = e.id
                           AND d.status IN ('pending', 'failed')
                           AND d.next_attempt_at <= now()
                           AND (NOT w.ordered OR NOT EXISTS (
                               SELECT 1 FROM sluice.webhook_deliveries o
                               WHERE o.webhook_id = e.id
                                 AND o.status IN ('pending', 'failed')
                                 AND o.seq < d.seq))
                         ORDER BY d.next_attempt_at, d.seq
                         LIMIT e.lim
                         FOR UPDATE OF d SKIP LOCKED
                     ) d
                     LIMIT $3
                 )
                 UPDATE sluice.webhook_deliveries d
                 SET attempts = d.attempts + 1,
                     next_attempt_at = now() + make_interval(secs => due.lease),
                     request = NULL,
                     updated_at = now()
                 FROM due WHERE d.id = due.id
                 RETURNING d.id, d.webhook_id, d.seq, d.attempts",
                &[&ids, &limits, &room, &leases],
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let endpoint: String = r.get(1);
                let endpoint = endpoints
                    .iter()
                    .find(|(e, _)| *e.id == *endpoint)?
                    .0
                    .clone();
                let c = Claimed {
                    id: r.get(0),
                    seq: r.get(2),
                    attempt: r.get(3),
                };
                Some(Request {
                    endpoint,
                    msg_id: format!("msg_{}", c.seq),
                    batch: false,
                    deliveries: vec![c],
                })
            })
            .collect())
    }

    /// Claims the batches of batched endpoints (at most `free` requests of
    /// each, `room` in all), skipping endpoints another dispatcher is
    /// claiming for; returns them and when a waiting batch is due.
    async fn claim_batches(
        &self,
        client: &mut deadpool_postgres::Object,
        endpoints: &[(Arc<Compiled>, usize)],
        room: usize,
    ) -> Result<(Vec<Request>, Option<Duration>), String> {
        let err = |e: tokio_postgres::Error| e.to_string();
        let tx = client.transaction().await.map_err(err)?;
        let ids: Vec<&str> = endpoints.iter().map(|(e, _)| &*e.id).collect();
        let locked: HashSet<String> = tx
            .query(
                "SELECT e FROM unnest($1::text[]) AS e
                 WHERE pg_try_advisory_xact_lock($2, hashtext(e))",
                &[&ids, &BATCH_LOCK_CLASS],
            )
            .await
            .map_err(err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mine: Vec<&(Arc<Compiled>, usize)> = endpoints
            .iter()
            .filter(|(e, _)| locked.contains(&*e.id))
            .collect();
        let limits_of = |e: &Compiled| {
            let b = e.batch.unwrap_or(super::spec::Batch {
                max_events: 1,
                max_wait_ms: 0,
            });
            Limits {
                max_events: usize::try_from(b.max_events).unwrap_or(1).max(1),
                max_wait: Duration::from_millis(u64::try_from(b.max_wait_ms).unwrap_or(0)),
            }
        };
        // Unordered: the due deliveries, enough for `free` full batches and
        // one more (which tells whether the read was cut short); ordered:
        // the earliest unfinished ones, due or not.
        let mut reads: Vec<(bool, Vec<&str>, Vec<i32>)> = vec![
            (false, Vec::new(), Vec::new()),
            (true, Vec::new(), Vec::new()),
        ];
        for (e, free) in &mine {
            let max_events = limits_of(e).max_events;
            let lim = if e.ordered {
                max_events
            } else {
                max_events.saturating_mul(*free).saturating_add(1)
            };
            let read = &mut reads[usize::from(e.ordered)];
            read.1.push(&e.id);
            read.2.push(i32::try_from(lim).unwrap_or(i32::MAX));
        }
        let mut candidates: HashMap<String, (Vec<Candidate>, chrono::DateTime<chrono::Utc>)> =
            HashMap::new();
        for (ordered, ids, lims) in &reads {
            if ids.is_empty() {
                continue;
            }
            let sql = format!(
                "SELECT e.id, d.id, d.seq, d.request, d.next_attempt_at, now()
                 FROM unnest($1::text[], $2::int[]) AS e(id, lim)
                 JOIN sluice.webhooks w ON w.id = e.id AND w.enabled
                 CROSS JOIN LATERAL (
                     SELECT d.id, d.seq, d.request, d.next_attempt_at
                     FROM sluice.webhook_deliveries d
                     WHERE d.webhook_id = e.id AND d.status IN ('pending', 'failed') {}
                     ORDER BY {}
                     LIMIT e.lim
                 ) d",
                if *ordered {
                    ""
                } else {
                    "AND d.next_attempt_at <= now()"
                },
                if *ordered {
                    "d.seq"
                } else {
                    "d.next_attempt_at, d.seq"
                },
            );
            for r in tx.query(&sql, &[ids, lims]).await.map_err(err)? {
                let entry = candidates
                    .entry(r.get(0))
                    .or_insert_with(|| (Vec::new(), r.get(5)));
                entry.0.push(Candidate {
                    id: r.get(1),
                    seq: r.get(2),
                    request: r.get(3),
                    due_at: r.get(4),
                });
            }
        }
        let mut wake: Option<Duration> = None;
        // (endpoint, planned request)
        let mut planned: Vec<(&Arc<Compiled>, Planned)> = Vec::new();
        for (e, free) in &mine {
            let Some((list, now)) = candidates.get(&*e.id) else {
                continue;
            };
            let limits = limits_of(e);
            let plan = if e.ordered {
                batch::plan_ordered(list, limits, *now)
            } else {
                let lim = limits.max_events.saturating_mul(*free);
                batch::plan_unordered(list, limits, *now, *free, list.len() > lim)
            };
            if let Some(w) = plan.wake {
                wake = Some(wake.map_or(w, |x: Duration| x.min(w)));
            }
            planned.extend(plan.requests.into_iter().map(|p| (e, p)));
        }
        planned.truncate(room);
        if planned.is_empty() {
            tx.commit().await.map_err(err)?;
            return Ok((Vec::new(), wake));
        }
        let request_ids: Vec<String> = planned
            .iter()
            .map(|(_, p)| p.request.clone().unwrap_or_else(|| super::new_id("batch_")))
            .collect();
        let mut ids: Vec<i64> = Vec::new();
        let mut of_request: Vec<&str> = Vec::new();
        let mut leases: Vec<f64> = Vec::new();
        for ((e, p), request) in planned.iter().zip(&request_ids) {
            for d in &p.deliveries {
                ids.push(*d);
                of_request.push(request);
                leases.push(self.lease_secs(e));
            }
        }
        let rows = tx
            .query(
                "UPDATE sluice.webhook_deliveries d
                 SET attempts = d.attempts + 1,
                     next_attempt_at = now() + make_interval(secs => c.lease),
                     request = c.request,
                     updated_at = now()
                 FROM unnest($1::bigint[], $2::text[], $3::float8[]) AS c(id, request, lease)
                 WHERE d.id = c.id AND d.status IN ('pending', 'failed')
                   AND d.next_attempt_at <= now()
                 RETURNING d.id, d.seq, d.attempts",
                &[&ids, &of_request, &leases],
            )
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
        let claimed: HashMap<i64, Claimed> = rows
            .iter()
            .map(|r| {
                let c = Claimed {
                    id: r.get(0),
                    seq: r.get(1),
                    attempt: r.get(2),
                };
                (c.id, c)
            })
            .collect();
        let requests = planned
            .into_iter()
            .zip(request_ids)
            .filter_map(|((e, p), msg_id)| {
                let mut deliveries: Vec<Claimed> = p
                    .deliveries
                    .iter()
                    .filter_map(|d| claimed.get(d).copied())
                    .collect();
                deliveries.sort_by_key(|c| c.seq);
                (!deliveries.is_empty()).then(|| Request {
                    endpoint: e.clone(),
                    msg_id,
                    batch: true,
                    deliveries,
                })
            })
            .collect();
        Ok((requests, wake))
    }

    /// Loads what `requests` carry and builds each one's body. Per request:
    /// the request ready to send with the deliveries that cannot be sent
    /// (dead: event pruned, endpoint gone, role no longer sees it), or, when
    /// none can be sent, only those. Events of a batch past its byte budget
    /// are released to the next request.
    #[allow(clippy::type_complexity)]
    async fn prepare(
        &self,
        client: &tokio_postgres::Client,
        snapshot: &Snapshot,
        requests: Vec<Request>,
    ) -> Result<Vec<(Arc<str>, Result<(Prepared, Vec<Outcome>), Vec<Outcome>>)>, String> {
        let seqs: Vec<i64> = requests
            .iter()
            .flat_map(|r| r.deliveries.iter().map(|c| c.seq))
            .collect();
        let events: HashMap<i64, Arc<Committed>> = crate::log::events_by_seq(client, &seqs)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|e| (e.seq, Arc::new(e)))
            .collect();
        let endpoint_ids: Vec<&str> = requests.iter().map(|r| &*r.endpoint.id).collect();
        let targets = load_targets(client, &endpoint_ids).await?;
        let mut released: (Vec<i64>, Vec<i32>) = (Vec::new(), Vec::new());
        let mut out = Vec::new();
        for r in requests {
            let endpoint_id = r.endpoint.id.clone();
            // Still enabled and as claimed: the role's view of each event.
            let live = snapshot.get(&r.endpoint.id);
            let target = targets.get(&*r.endpoint.id).cloned();
            let mut unsent = Vec::new();
            let mut sendable: Vec<(Claimed, i64, Bytes)> = Vec::new();
            for c in &r.deliveries {
                // An endpoint with a role gets the event as that role sees it
                // (hidden columns removed, `row.left`/`row.entered`); one the
                // role no longer sees (the policies changed) has no body.
                let shown = events.get(&c.seq).and_then(|e| match live {
                    Some(endpoint) if !endpoint.access.viewer.is_open() => {
                        endpoint.access.admit_one(e).map(|shown| shown.body.clone())
                    }
                    _ => Some(e.body.clone()),
                });
                match (shown, &target) {
                    (Some(body), Some(_)) => {
                        let commit = events.get(&c.seq).map_or(0, |e| e.commit_micros);
                        sendable.push((*c, commit, body));
                    }
                    _ => unsent.push(Outcome::unsent(
                        &endpoint_id,
                        *c,
                        &r.msg_id,
                        format!(
                            "event {} is no longer in the log (pruned by retention), its endpoint was deleted, or the endpoint's role no longer sees it",
                            c.seq
                        ),
                    )),
                }
            }
            let Some(target) = target.filter(|_| !sendable.is_empty()) else {
                out.push((endpoint_id, Err(unsent)));
                continue;
            };
            let mut content_type = "application/json".to_owned();
            let body = if r.batch {
                let envelopes: Vec<Bytes> = sendable.iter().map(|s| s.2.clone()).collect();
                let (body, taken) = batch::body(&envelopes, self.config.batch_max_bytes);
                for (c, _, _) in sendable.drain(taken..) {
                    released.0.push(c.id);
                    released.1.push(c.attempt);
                }
                body
            } else if let Some(t) = &r.endpoint.template {
                // Rendered against the envelope the endpoint may see; a
                // render that fails makes this delivery dead, nothing else.
                match render(t, &sendable[0].2, self.config.template_max_bytes) {
                    Ok(body) => {
                        content_type.clone_from(&t.content_type);
                        body
                    }
                    Err(error) => {
                        unsent.push(Outcome::unsent(
                            &endpoint_id,
                            sendable[0].0,
                            &r.msg_id,
                            error,
                        ));
                        out.push((endpoint_id, Err(unsent)));
                        continue;
                    }
                }
            } else {
                sendable[0].2.clone()
            };
            out.push((
                endpoint_id,
                Ok((
                    Prepared {
                        endpoint: r.endpoint,
                        msg_id: r.msg_id,
                        target,
                        content_type,
                        body,
                        deliveries: sendable.into_iter().map(|(c, t, _)| (c, t)).collect(),
                    },
                    unsent,
                )),
            ));
        }
        if !released.0.is_empty() {
            // Undo their claim: due again now, in no request.
            client
                .execute(
                    "UPDATE sluice.webhook_deliveries d
                     SET attempts = d.attempts - 1, next_attempt_at = now(), request = NULL,
                         updated_at = now()
                     FROM unnest($1::bigint[], $2::int[]) AS r(id, attempt)
                     WHERE d.id = r.id AND d.attempts = r.attempt",
                    &[&released.0, &released.1],
                )
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(out)
    }

    /// One attempt of one request: every delivery it carries shares the
    /// outcome.
    async fn attempt(&self, p: Prepared) -> Vec<Outcome> {
        self.metrics.attempts.fetch_add(1, Ordering::Relaxed);
        let timeout = self.timeout(&p.endpoint);
        let timestamp = chrono::Utc::now().timestamp();
        let signature = sign::signature_header(&p.target.keys, &p.msg_id, timestamp, &p.body);
        let at = chrono::Utc::now();
        let started = Instant::now();
        let result = self.send(&p, timestamp, &signature, timeout).await;
        let latency_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
        self.metrics
            .latency_ms_sum
            .fetch_add(latency_ms.max(0) as u64, Ordering::Relaxed);
        let mut status = "dead";
        let mut next_at = None;
        let mut http_status = None;
        let mut error = None;
        let mut gone = false;
        let retry_after = match result {
            Ok((code, _)) if (200..300).contains(&code) => {
                status = "delivered";
                http_status = Some(i32::from(code));
                None
            }
            Ok((410, _)) => {
                http_status = Some(410);
                error = Some("the endpoint answered 410 Gone: it is now disabled".to_owned());
                gone = true;
                None
            }
            Ok((code, retry_after)) => {
                http_status = Some(i32::from(code));
                error = Some(format!("the endpoint answered HTTP {code}"));
                retry_after.or(Some(Duration::ZERO))
            }
            Err(e) => {
                error = Some(e);
                Some(Duration::ZERO)
            }
        };
        // Failed (not 410): retried unless a delivery used its last attempt.
        let attempts_made = p
            .deliveries
            .iter()
            .map(|(c, _)| c.attempt)
            .max()
            .unwrap_or(1);
        if let Some(asked) = retry_after {
            if attempts_made < p.endpoint.max_attempts {
                let schedule = p.endpoint.schedule.as_deref().unwrap_or(&self.schedule);
                let delay = schedule::retry_delay(
                    schedule,
                    u32::try_from(attempts_made).unwrap_or(u32::MAX),
                    schedule::jitter_factor(),
                )
                .max(asked.min(MAX_RETRY_AFTER));
                status = "failed";
                next_at = Some(
                    chrono::Utc::now()
                        + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero()),
                );
            }
        }
        if status == "delivered" {
            for (_, commit_micros) in &p.deliveries {
                self.metrics.delivery_latency.observe_since(*commit_micros);
            }
        }
        p.deliveries
            .iter()
            .map(|(c, _)| Outcome {
                delivery: c.id,
                endpoint: p.endpoint.id.clone(),
                attempt: c.attempt,
                status,
                next_at,
                http_status,
                latency_ms,
                error: error.clone(),
                gone,
                request: p.msg_id.clone(),
                at,
            })
            .collect()
    }

    /// POSTs the request; the status and any `Retry-After`, or what went
    /// wrong.
    async fn send(
        &self,
        p: &Prepared,
        timestamp: i64,
        signature: &str,
        timeout: Duration,
    ) -> Result<(u16, Option<Duration>), String> {
        let parsed = url::Url::parse(&p.target.url).map_err(|e| format!("invalid URL: {e}"))?;
        if !self.config.allow_private_addresses {
            // IP literals never reach the resolver; check them here.
            let ip = match parsed.host() {
                Some(url::Host::Ipv4(a)) => Some(std::net::IpAddr::V4(a)),
                Some(url::Host::Ipv6(a)) => Some(std::net::IpAddr::V6(a)),
                _ => None,
            };
            if let Some(reason) = ip.and_then(ssrf::blocked_reason) {
                return Err(format!("refused to connect: the address is {reason}"));
            }
        }
        let resp = self
            .http
            .post(parsed)
            .headers(p.target.headers.clone())
            .header("content-type", &p.content_type)
            .header("webhook-id", &p.msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .timeout(timeout)
            .body(p.body.clone())
            .send()
            .await
            .map_err(|e| describe(&e, timeout))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| schedule::parse_retry_after(v, SystemTime::now()));
        let mut resp = resp;
        let mut read = 0;
        while let Ok(Some(chunk)) = resp.chunk().await {
            read += chunk.len();
            if read > MAX_RESPONSE_BYTES {
                break;
            }
        }
        Ok((status, retry_after))
    }

    /// Writes finished attempts: the deliveries' new state and the attempt
    /// log, in one transaction; disables endpoints that answered 410.
    ///
    /// A delivery's state is written only while it still carries the claim
    /// that made this attempt (`attempts` is the attempt's number): a replay
    /// that reset it while the request was in flight, or another process's
    /// claim after this one's lease ran out, is never overwritten by an
    /// older outcome. The attempt itself is logged either way.
    async fn record(&self, done: &[Outcome]) -> Result<(), String> {
        let mut client = self.pool.get().await.map_err(|e| e.to_string())?;
        let tx = client.transaction().await.map_err(|e| e.to_string())?;
        let ids: Vec<i64> = done.iter().map(|o| o.delivery).collect();
        let statuses: Vec<&str> = done.iter().map(|o| o.status).collect();
        let next: Vec<Option<chrono::DateTime<chrono::Utc>>> =
            done.iter().map(|o| o.next_at).collect();
        let attempts: Vec<i32> = done.iter().map(|o| o.attempt).collect();
        let http: Vec<Option<i32>> = done.iter().map(|o| o.http_status).collect();
        let latency: Vec<i32> = done.iter().map(|o| o.latency_ms).collect();
        let errors: Vec<Option<&str>> = done.iter().map(|o| o.error.as_deref()).collect();
        let requests: Vec<&str> = done.iter().map(|o| o.request.as_str()).collect();
        let at: Vec<chrono::DateTime<chrono::Utc>> = done.iter().map(|o| o.at).collect();
        tx.execute(
            "UPDATE sluice.webhook_deliveries d
             SET status = o.status,
                 next_attempt_at = coalesce(o.next_at, d.next_attempt_at),
                 updated_at = now()
             FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::int[])
                  AS o(id, status, next_at, attempt)
             WHERE d.id = o.id AND d.attempts = o.attempt",
            &[&ids, &statuses, &next, &attempts],
        )
        .await
        .map_err(|e| e.to_string())?;
        tx.execute(
            "INSERT INTO sluice.webhook_attempts
                 (delivery_id, attempt, http_status, latency_ms, error, request, at)
             SELECT * FROM unnest($1::bigint[], $2::int[], $3::int[], $4::int[], $5::text[],
                                  $6::text[], $7::timestamptz[])",
            &[&ids, &attempts, &http, &latency, &errors, &requests, &at],
        )
        .await
        .map_err(|e| e.to_string())?;
        let gone: Vec<&str> = done
            .iter()
            .filter(|o| o.gone)
            .map(|o| &*o.endpoint)
            .collect();
        if !gone.is_empty() {
            tx.execute(
                "UPDATE sluice.webhooks
                 SET enabled = false, disabled_reason = 'the endpoint answered 410 Gone', updated_at = now()
                 WHERE id = ANY($1) AND enabled",
                &[&gone],
            )
            .await
            .map_err(|e| e.to_string())?;
        }
        tx.commit().await.map_err(|e| e.to_string())?;
        for o in done {
            let counter = match o.status {
                "delivered" => &self.metrics.delivered,
                "failed" => &self.metrics.failed,
                _ => &self.metrics.dead,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The body `t` renders from `envelope` (JSON), or why it cannot.
fn render(t: &BodyTemplate, envelope: &[u8], max_bytes: usize) -> Result<Bytes, String> {
    let envelope: Value = serde_json::from_slice(envelope)
        .map_err(|e| format!("the event's envelope is not JSON: {e}"))?;
    t.template
        .render(&envelope, max_bytes)
        .map(Bytes::from)
        .map_err(|e| format!("the template cannot be rendered for this event: {e}"))
}

fn release(in_flight: &mut HashMap<Arc<str>, usize>, total: &mut usize, endpoint: &Arc<str>) {
    if let Some(n) = in_flight.get_mut(endpoint) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            in_flight.remove(endpoint);
        }
    }
    *total = total.saturating_sub(1);
}

/// URL, signing keys (the previous secret while its overlap lasts) and
/// headers of these endpoints.
async fn load_targets(
    client: &impl tokio_postgres::GenericClient,
    ids: &[&str],
) -> Result<HashMap<String, Arc<Target>>, String> {
    let rows = client
        .query(
            "SELECT id, url, secret,
                    CASE WHEN previous_expires > now() THEN previous_secret END,
                    headers
             FROM sluice.webhooks WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    for r in rows {
        let id: String = r.get(0);
        let mut keys = Vec::new();
        for secret in [r.get::<_, Option<String>>(2), r.get(3)]
            .into_iter()
            .flatten()
        {
            match sign::secret_key(&secret) {
                Ok(k) => keys.push(k),
                Err(e) => {
                    tracing::error!(endpoint = %id, error = %e, "webhook secret does not decode")
                }
            }
        }
        let headers = header_map(&id, &r.get::<_, Value>(4));
        out.insert(
            id,
            Arc::new(Target {
                url: r.get(1),
                keys,
                headers,
            }),
        );
    }
    Ok(out)
}

/// An endpoint's stored headers (validated when stored; one that no longer
/// converts is left out, with a warning). Values are marked sensitive so
/// they never appear in debug output.
fn header_map(endpoint: &str, stored: &Value) -> HeaderMap {
    let mut map = HeaderMap::new();
    let Value::Object(headers) = stored else {
        return map;
    };
    for (name, value) in headers {
        let converted = (
            HeaderName::from_bytes(name.as_bytes()),
            value.as_str().map(HeaderValue::from_str),
        );
        match converted {
            (Ok(n), Some(Ok(mut v))) => {
                v.set_sensitive(true);
                map.insert(n, v);
            }
            _ => {
                tracing::warn!(endpoint, header = %name, "stored webhook header is not valid HTTP; not sent")
            }
        }
    }
    map
}

/// A transport failure in words (with its causes).
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {} ms", timeout.as_millis());
    }
    let mut text = if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "the request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
