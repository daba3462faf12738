//! The dispatcher: claims due deliveries, POSTs them signed, records each
//! attempt and schedules the next.
//!
//! Claiming sets a lease (`next_attempt_at` pushed past the request
//! timeout) and counts the attempt in one statement, with `FOR UPDATE SKIP
//! LOCKED`, so dispatchers in several processes share the outbox and one
//! that dies mid-attempt only delays a delivery until its lease runs out.
//! Claims are made per endpoint, each limited by that endpoint's free
//! concurrency and rate-limit tokens, so an endpoint that keeps failing or
//! has a backlog never takes the slots of another. An ordered endpoint's
//! next delivery is claimable only when no earlier one is unfinished, so it
//! receives its events in seq order, one at a time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::schedule::{self, TokenBucket};
use super::sign;
use super::ssrf;
use super::store::Endpoints;
use crate::config::WebhooksConfig;

/// Extra lease beyond the request timeout.
const LEASE_SLACK: Duration = Duration::from_secs(5);
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Most response-body bytes read (then the connection is dropped).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// How long a stopping dispatcher waits for requests in flight.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Counters exported as metrics.
#[derive(Debug, Default)]
pub struct WebhookMetrics {
    pub attempts: AtomicU64,
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub dead: AtomicU64,
    pub in_flight: AtomicU64,
    /// Sum of attempt latencies, in milliseconds.
    pub latency_ms_sum: AtomicU64,
    /// Source commit → the endpoint's 2xx.
    pub delivery_latency: crate::metrics::Histogram,
}

/// One claimed delivery.
struct Claimed {
    id: i64,
    endpoint: Arc<str>,
    seq: i64,
    attempt: i32,
}

/// Where and how to send.
struct Target {
    url: String,
    keys: Vec<Vec<u8>>,
    max_attempts: i32,
}

/// What an attempt came to.
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
        let timeout = Duration::from_millis(config.timeout_ms);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve the destination itself, past the guard.
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
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
        let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
        let mut in_flight: HashMap<Arc<str>, usize> = HashMap::new();
        let mut total = 0usize;
        let mut buckets: HashMap<Arc<str>, TokenBucket> = HashMap::new();
        let mut done: Vec<Outcome> = Vec::new();
        let poll = Duration::from_millis(this.config.poll_interval_ms);
        let mut backoff = Duration::ZERO;
        loop {
            while let Ok(o) = rx.try_recv() {
                done.push(o);
            }
            if !done.is_empty() {
                for o in &done {
                    release(&mut in_flight, &mut total, &o.endpoint);
                }
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
                    Ok(next_token) => {
                        if let Some(t) = next_token {
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
                Some(o) = rx.recv() => done.push(o),
                _ = tokio::time::sleep(wake) => {}
                _ = stop.cancelled() => break,
            }
        }
        // Let requests in flight finish and record them.
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while total > 0 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(o)) => {
                    release(&mut in_flight, &mut total, &o.endpoint);
                    done.push(o);
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

    /// Claims what may be sent now and starts sending it. Returns when the
    /// next rate-limit token comes, if an endpoint is waiting for one.
    async fn claim_and_send(
        self: &Arc<Self>,
        in_flight: &mut HashMap<Arc<str>, usize>,
        total: &mut usize,
        buckets: &mut HashMap<Arc<str>, TokenBucket>,
        tx: &mpsc::UnboundedSender<Outcome>,
    ) -> Result<Option<Duration>, String> {
        let client = self.pool.get().await.map_err(|e| e.to_string())?;
        let snapshot = self
            .endpoints
            .refresh(&**client)
            .await
            .map_err(|e| e.to_string())?;
        let now = Instant::now();
        let mut next_token: Option<Duration> = None;
        let mut ids: Vec<&str> = Vec::new();
        let mut limits: Vec<i32> = Vec::new();
        let mut taken: HashMap<&str, usize> = HashMap::new();
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
                            next_token = Some(next_token.map_or(wait, |t: Duration| t.min(wait)));
                            break;
                        }
                    }
                }
                free = got;
            }
            if free > 0 {
                ids.push(&e.id);
                limits.push(i32::try_from(free).unwrap_or(i32::MAX));
                taken.insert(&e.id, free);
            }
        }
        buckets.retain(|id, _| snapshot.all().any(|e| &e.id == id));
        if ids.is_empty() {
            return Ok(next_token);
        }
        let room = i64::try_from(self.config.concurrency.saturating_sub(*total)).unwrap_or(0);
        let lease = (Duration::from_millis(self.config.timeout_ms) + LEASE_SLACK).as_secs_f64();
        let rows = client
            .query(
                "WITH due AS (
                     SELECT d.id
                     FROM unnest($1::text[], $2::int[]) AS e(id, lim)
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
                     next_attempt_at = now() + make_interval(secs => $4),
                     updated_at = now()
                 FROM due WHERE d.id = due.id
                 RETURNING d.id, d.webhook_id, d.seq, d.attempts",
                &[&ids, &limits, &room, &lease],
            )
            .await
            .map_err(|e| e.to_string())?;
        if rows.is_empty() {
            return Ok(next_token);
        }
        let claimed: Vec<Claimed> = rows
            .iter()
            .map(|r| {
                let endpoint: String = r.get(1);
                Claimed {
                    id: r.get(0),
                    endpoint: snapshot
                        .all()
                        .find(|e| *e.id == *endpoint)
                        .map_or_else(|| endpoint.as_str().into(), |e| e.id.clone()),
                    seq: r.get(2),
                    attempt: r.get(3),
                }
            })
            .collect();
        for c in &claimed {
            *in_flight.entry(c.endpoint.clone()).or_default() += 1;
            *total += 1;
        }
        let seqs: Vec<i64> = claimed.iter().map(|c| c.seq).collect();
        let events = crate::log::events_by_seq(&**client, &seqs)
            .await
            .map_err(|e| e.to_string())?;
        let committed: HashMap<i64, i64> =
            events.iter().map(|e| (e.seq, e.commit_micros)).collect();
        let events: HashMap<i64, Arc<crate::event::Committed>> =
            events.into_iter().map(|e| (e.seq, Arc::new(e))).collect();
        let endpoint_ids: Vec<&str> = claimed.iter().map(|c| &*c.endpoint).collect();
        let targets = load_targets(&**client, &endpoint_ids).await?;
        drop(client);
        for c in claimed {
            let this = self.clone();
            let tx = tx.clone();
            // An endpoint with a role gets the event as that role sees it
            // (hidden columns removed, `row.left`/`row.entered`); one the
            // role no longer sees (the policies changed) has no body.
            let body = events
                .get(&c.seq)
                .and_then(|e| match snapshot.get(&c.endpoint) {
                    Some(endpoint) if !endpoint.access.viewer.is_open() => {
                        endpoint.access.admit_one(e).map(|shown| shown.body.clone())
                    }
                    _ => Some(e.body.clone()),
                });
            let target = targets.get(&*c.endpoint).cloned();
            let commit_micros = committed.get(&c.seq).copied().unwrap_or(0);
            tokio::spawn(async move {
                let outcome = this.attempt(c, target, body).await;
                if outcome.status == "delivered" {
                    this.metrics.delivery_latency.observe_since(commit_micros);
                }
                let _ = tx.send(outcome);
            });
        }
        Ok(next_token)
    }

    /// One attempt of one delivery.
    async fn attempt(
        &self,
        c: Claimed,
        target: Option<Arc<Target>>,
        body: Option<Bytes>,
    ) -> Outcome {
        self.metrics.attempts.fetch_add(1, Ordering::Relaxed);
        let mut out = Outcome {
            delivery: c.id,
            endpoint: c.endpoint.clone(),
            attempt: c.attempt,
            status: "dead",
            next_at: None,
            http_status: None,
            latency_ms: 0,
            error: None,
            gone: false,
        };
        let (Some(target), Some(body)) = (target, body) else {
            out.error = Some(format!(
                "event {} is no longer in the log (pruned by retention), its endpoint was deleted, or the endpoint's role no longer sees it",
                c.seq
            ));
            return out;
        };
        let msg_id = format!("msg_{}", c.seq);
        let timestamp = chrono::Utc::now().timestamp();
        let signature = sign::signature_header(&target.keys, &msg_id, timestamp, &body);
        let started = Instant::now();
        let result = self
            .send(&target.url, &msg_id, timestamp, &signature, body)
            .await;
        out.latency_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
        self.metrics
            .latency_ms_sum
            .fetch_add(out.latency_ms.max(0) as u64, Ordering::Relaxed);
        let retry_after = match result {
            Ok((status, _)) if (200..300).contains(&status) => {
                out.status = "delivered";
                out.http_status = Some(i32::from(status));
                return out;
            }
            Ok((410, _)) => {
                out.http_status = Some(410);
                out.error = Some("the endpoint answered 410 Gone: it is now disabled".to_owned());
                out.gone = true;
                return out;
            }
            Ok((status, retry_after)) => {
                out.http_status = Some(i32::from(status));
                out.error = Some(format!("the endpoint answered HTTP {status}"));
                retry_after
            }
            Err(e) => {
                out.error = Some(e);
                None
            }
        };
        if c.attempt >= target.max_attempts {
            return out;
        }
        let attempts_made = u32::try_from(c.attempt).unwrap_or(u32::MAX);
        let mut delay =
            schedule::retry_delay(&self.schedule, attempts_made, schedule::jitter_factor());
        if let Some(ra) = retry_after {
            delay = delay.max(ra.min(MAX_RETRY_AFTER));
        }
        out.status = "failed";
        out.next_at = Some(
            chrono::Utc::now()
                + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero()),
        );
        out
    }

    /// POSTs `body`; the status and any `Retry-After`, or what went wrong.
    async fn send(
        &self,
        url: &str,
        msg_id: &str,
        timestamp: i64,
        signature: &str,
        body: Bytes,
    ) -> Result<(u16, Option<Duration>), String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
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
            .header("content-type", "application/json")
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| describe(&e, self.config.timeout_ms))?;
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
            "INSERT INTO sluice.webhook_attempts (delivery_id, attempt, http_status, latency_ms, error)
             SELECT * FROM unnest($1::bigint[], $2::int[], $3::int[], $4::int[], $5::text[])",
            &[&ids, &attempts, &http, &latency, &errors],
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

fn release(in_flight: &mut HashMap<Arc<str>, usize>, total: &mut usize, endpoint: &Arc<str>) {
    if let Some(n) = in_flight.get_mut(endpoint) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            in_flight.remove(endpoint);
        }
    }
    *total = total.saturating_sub(1);
}

/// URL and signing keys of these endpoints (the previous secret while its
/// overlap lasts).
async fn load_targets(
    client: &impl tokio_postgres::GenericClient,
    ids: &[&str],
) -> Result<HashMap<String, Arc<Target>>, String> {
    let rows = client
        .query(
            "SELECT id, url, secret,
                    CASE WHEN previous_expires > now() THEN previous_secret END,
                    max_attempts
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
        out.insert(
            id,
            Arc::new(Target {
                url: r.get(1),
                keys,
                max_attempts: r.get(4),
            }),
        );
    }
    Ok(out)
}

/// A transport failure in words (with its causes).
fn describe(e: &reqwest::Error, timeout_ms: u64) -> String {
    if e.is_timeout() {
        return format!("no answer within {timeout_ms} ms");
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
