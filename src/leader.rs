//! High availability: several `sluice serve` processes share one state
//! database. The one holding the leader advisory lock runs the sources and
//! the appender; the others are standbys that serve SSE, WebSocket, NDJSON
//! and webhooks from the log, fed by the appender's `NOTIFY` (and a 1 s
//! poll), and take over when the leader's session ends.
//!
//! Invariant: at most one process appends (the appender's own lock backs
//! the leader lock up: a new leader's appender waits until the old one's
//! session is gone). A process that becomes leader forces its live
//! subscribers through the log once, so none misses what was appended
//! between its last feed read and its own first append.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::event::Committed;
use crate::hub::Hub;
use crate::log::{self, Durable, LogError, ReadScope, LEADER_LOCK_KEY, NOTIFY_CHANNEL};
use crate::pipeline::{self, Pipeline, PipelineError, Shared};

pub const ROLE_STARTING: u8 = 0;
pub const ROLE_STANDBY: u8 = 1;
pub const ROLE_LEADER: u8 = 2;

/// This process's role, for `/readyz` and `/metrics`.
#[derive(Debug, Default)]
pub struct Role(AtomicU8);

impl Role {
    pub fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }
    fn set(&self, r: u8) {
        self.0.store(r, Ordering::Relaxed);
    }
    pub fn name(&self) -> &'static str {
        match self.get() {
            ROLE_LEADER => "leader",
            ROLE_STANDBY => "standby",
            _ => "starting",
        }
    }
}

/// How often a standby tries for the lock, and a leader checks it holds it.
const LOCK_EVERY: Duration = Duration::from_secs(1);
/// Events read per query while feeding from the log.
const FEED_PAGE: i64 = 1000;

/// Tries once for the leader lock; the returned session holds it.
pub async fn try_lock(url: &str) -> Result<Option<Client>, crate::pgconn::PgError> {
    let client = log::connect_as(url, "sluice-leader").await?;
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK_KEY])
        .await?
        .get(0);
    Ok(got.then_some(client))
}

/// Returns when the session holding the lock is gone.
async fn lock_lost(client: &Client) {
    loop {
        tokio::time::sleep(LOCK_EVERY).await;
        if client.is_closed() || client.simple_query("SELECT 1").await.is_err() {
            return;
        }
    }
}

/// Everything the leadership loop needs.
pub struct Leadership {
    pub config: Arc<Config>,
    pub hub: Arc<Hub>,
    /// `shared.durable` is the process's durable state: the appender
    /// publishes to it while leading, the log feed while standing by.
    pub shared: Shared,
    pub role: Arc<Role>,
}

impl Leadership {
    /// Leads with `lock` (already held) or follows until it can lead, until
    /// `intake` is cancelled. Returns the pipeline's result when it stops.
    pub async fn run(
        self,
        mut lock: Option<Client>,
        mut running: Option<Pipeline>,
        intake: CancellationToken,
    ) -> Result<(), PipelineError> {
        let url = self.config.state_url()?.to_owned();
        loop {
            if running.is_none() {
                let Some(held) = self.follow_until_leader(&url, lock.take(), &intake).await else {
                    return Ok(());
                };
                lock = Some(held);
                running = match self.start_pipeline(&intake).await? {
                    Some(r) => Some(r),
                    None => return Ok(()),
                };
            }
            let (Some(pipeline), Some(held)) = (running.take(), lock.take()) else {
                continue;
            };
            // Lead (the appender publishes to the process's durable state).
            self.role.set(ROLE_LEADER);
            let stop = pipeline.intake.clone();
            let mut wait = Box::pin(pipeline.wait());
            let result = tokio::select! {
                r = &mut wait => Some(r),
                _ = intake.cancelled() => {
                    stop.cancel();
                    Some(wait.await)
                }
                _ = lock_lost(&held) => {
                    tracing::error!("lost the leader lock (state database session ended); stopping the sources and standing by");
                    stop.cancel();
                    if let Err(e) = wait.await {
                        tracing::warn!(error = %e, "the pipeline stopped with an error while stepping down");
                    }
                    None
                }
            };
            drop(held);
            if let Some(r) = result {
                return r;
            }
            self.role.set(ROLE_STANDBY);
        }
    }

    /// Starts the pipeline, waiting while a previous leader's appender
    /// still holds the log (its session ends soon after it lost the lead).
    async fn start_pipeline(
        &self,
        intake: &CancellationToken,
    ) -> Result<Option<Pipeline>, PipelineError> {
        loop {
            let r = pipeline::start_with(
                &self.config,
                intake.child_token(),
                Some(self.hub.clone()),
                self.shared.clone(),
            )
            .await;
            match r {
                Ok(p) => {
                    // Whatever the old leader appended after this process's
                    // last feed read reaches live subscribers through the log.
                    self.hub.lag_everyone();
                    tracing::info!("leading: sources and appender running");
                    return Ok(Some(p));
                }
                Err(PipelineError::Log(LogError::AnotherWriter(_))) => {
                    tracing::warn!("the previous leader's appender still holds the log; waiting");
                    tokio::select! {
                        _ = tokio::time::sleep(LOCK_EVERY) => {}
                        _ = intake.cancelled() => return Ok(None),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Feeds the hub from the log until the leader lock is ours (or
    /// `intake` ends: then `None`).
    async fn follow_until_leader(
        &self,
        url: &str,
        held: Option<Client>,
        intake: &CancellationToken,
    ) -> Option<Client> {
        if let Some(held) = held {
            return Some(held);
        }
        self.role.set(ROLE_STANDBY);
        tracing::info!("standing by: another process leads; serving from the log");
        let stop = CancellationToken::new();
        let feed = tokio::spawn(feed(
            url.to_owned(),
            self.hub.clone(),
            self.shared.durable.clone(),
            self.shared.outbox.notify.clone(),
            stop.clone(),
        ));
        let got = loop {
            match try_lock(url).await {
                Ok(Some(client)) => break Some(client),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the state database to try for the lead")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(LOCK_EVERY) => {}
                _ = intake.cancelled() => break None,
            }
        };
        stop.cancel();
        feed.await.ok();
        if got.is_some() {
            tracing::info!("took the leader lock");
        }
        got
    }
}

/// Feeds `hub` and the durable head from the log, reconnecting with
/// backoff, until `stop`.
async fn feed(
    url: String,
    hub: Arc<Hub>,
    durable: watch::Sender<Arc<Durable>>,
    outbox: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match feed_session(&url, &hub, &durable, &outbox, &stop).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "reading the log for live subscribers failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn feed_session(
    url: &str,
    hub: &Hub,
    durable: &watch::Sender<Arc<Durable>>,
    outbox: &tokio::sync::Notify,
    stop: &CancellationToken,
) -> Result<(), LogError> {
    let (wake_tx, mut wake) = mpsc::unbounded_channel::<()>();
    // The channel closes when the connection ends (the callback is dropped).
    let (client, driver) = crate::pgconn::connect_listening(
        url,
        crate::pgconn::Session::named("sluice-standby-feed"),
        move |_| {
            let _ = wake_tx.send(());
        },
    )
    .await?;
    let result = async {
        client
            .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
            .await?;
        let mut last = durable.borrow().last_seq;
        if last == 0 {
            last = log::head(&client).await?;
            durable.send_replace(Arc::new(Durable {
                last_seq: last,
                checkpoints: Default::default(),
                writer_pid: None,
            }));
        }
        loop {
            loop {
                let rows =
                    log::read_events(&client, &ReadScope::Operator, last + 1, FEED_PAGE).await?;
                let Some(newest) = rows.last().map(|r| r.seq) else {
                    break;
                };
                last = newest;
                // The head first, then the hub: the order the appender
                // keeps, which followers rely on.
                durable.send_replace(Arc::new(Durable {
                    last_seq: last,
                    checkpoints: Default::default(),
                    writer_pid: None,
                }));
                let live: Vec<Arc<Committed>> = rows
                    .into_iter()
                    .filter(|r| hub.wants(&r.tenant))
                    .map(Arc::new)
                    .collect();
                if !live.is_empty() {
                    hub.publish(&live);
                }
                outbox.notify_one();
            }
            tokio::select! {
                w = wake.recv() => {
                    if w.is_none() {
                        return Err(LogError::Closed);
                    }
                    while wake.try_recv().is_ok() {}
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.cancelled() => return Ok(()),
            }
        }
    }
    .await;
    driver.abort();
    result
}
