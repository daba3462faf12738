//! The replication loop: reads the slot through `pgwire-replication`,
//! decodes pgoutput, normalizes, and hands events to the appender in source
//! order. It acknowledges to Postgres only what the appender reports as
//! durable, and reconnects with backoff when the connection breaks.
//!
//! Invariant: an item is sent to the appender at most once per source
//! position (`last_sent` only moves forward, and a re-sent transaction is
//! skipped up to it), so a reconnect never duplicates an event.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use tokio_util::sync::CancellationToken;

use super::catalog::Catalog;
use super::normalize::{DropReason, Normalizer, Outcome, TableRule, TxContext, SUBS_PER_CHANGE};
use super::pgoutput::{self, Message};
use super::stats::SourceStats;
use crate::config::PgSourceConfig;
use crate::event::{pg_micros_to_unix, SourcePosition};
use crate::log::{AppendItem, AppenderHandle, Checkpoint, LogError};

/// Session settings that make the text forms of values what `value.rs`
/// expects, whatever the server's defaults are.
pub const SESSION_OPTIONS: &str = "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres \
     -c extra_float_digits=1 -c bytea_output=hex -c lc_monetary=C";

/// The prefix of logical messages that are custom events.
pub const CUSTOM_PREFIX: &str = "sluice";

/// The prefix of the heartbeat messages `monitor` emits: each is an empty
/// unit of progress that moves the checkpoint and the slot.
pub const HEARTBEAT_PREFIX: &str = "sluice-heartbeat";

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("replication connection: {0}")]
    Replication(#[from] pgwire_replication::PgWireError),
    #[error("source database (catalog session): {0}")]
    Catalog(#[from] crate::pgconn::PgError),
    #[error("cannot decode a pgoutput message (the stream is not understood, so nothing after it is appended): {0}")]
    Decode(#[from] pgoutput::DecodeError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("source url: {0}")]
    Url(String),
    #[error("the replication stream ended")]
    Ended,
}

impl From<tokio_postgres::Error> for SourceError {
    fn from(e: tokio_postgres::Error) -> Self {
        SourceError::Catalog(e.into())
    }
}

impl SourceError {
    /// Whether the loop should stop rather than reconnect.
    fn is_fatal(&self) -> bool {
        matches!(self, SourceError::Log(_) | SourceError::Url(_))
    }
}

/// Builds the replication connection settings from a Postgres URL.
pub fn replication_config(
    cfg: &PgSourceConfig,
    start: Lsn,
    ack: Lsn,
) -> Result<ReplicationConfig, SourceError> {
    // The same connection string, and the same TLS meaning, as every other
    // connection to the source (src/pgconn.rs).
    let target =
        crate::pgconn::replication_target(&cfg.url).map_err(|e| SourceError::Url(e.to_string()))?;
    let mut rc = ReplicationConfig::new(
        target.host,
        target.user,
        target.password,
        target.database,
        cfg.slot(),
        cfg.publication(),
    )
    .with_port(target.port)
    .with_tls(target.tls)
    .with_start_lsn(start)
    .with_ack_lsn(ack)
    .with_status_interval(Duration::from_millis(cfg.status_interval_ms))
    .with_wakeup_interval(Duration::from_secs(5))
    .with_buffer_size(cfg.queue_messages)
    .with_options(SESSION_OPTIONS)
    .with_application_name(format!("sluice/{}", cfg.name));
    rc.stop_at_lsn = None;
    Ok(rc)
}

pub struct PgSource {
    cfg: PgSourceConfig,
    rules: HashMap<(String, String), TableRule>,
    appender: AppenderHandle,
    key: Arc<str>,
    pub stats: Arc<SourceStats>,
    /// Backfill chunks waiting for their high watermark.
    chunks: Arc<crate::backfill::Chunks>,
}

/// The changes seen between a backfill chunk's watermarks.
#[derive(Default)]
struct Window {
    /// Subjects (`schema.table/key`) of changed rows.
    changed: std::collections::HashSet<String>,
    /// A TRUNCATE or an unattributable change happened, or too many rows
    /// changed to remember: the chunk is read again rather than emitted.
    truncated: bool,
}

impl Window {
    fn note(&mut self, subject: &str) {
        if self.truncated {
            return;
        }
        if self.changed.len() >= MAX_WINDOW_KEYS {
            self.changed = std::collections::HashSet::new();
            self.truncated = true;
            return;
        }
        self.changed.insert(subject.to_owned());
    }
}

struct OpenTx {
    ctx: TxContext,
    changes: u64,
    skip_all: bool,
}

impl PgSource {
    pub fn new(cfg: PgSourceConfig, appender: AppenderHandle, stats: Arc<SourceStats>) -> PgSource {
        let rules = cfg
            .tables
            .iter()
            .map(|t| {
                let (s, n) = t.schema_and_name();
                (
                    (s.to_owned(), n.to_owned()),
                    TableRule {
                        tenant_column: t.tenant_column.clone(),
                        fields_only: t.fields_only,
                    },
                )
            })
            .collect();
        let key = cfg.checkpoint_key().into();
        PgSource {
            cfg,
            rules,
            appender,
            key,
            stats,
            chunks: Arc::default(),
        }
    }

    /// Takes backfill chunks from `chunks` (shared with the runner).
    pub fn with_backfills(mut self, chunks: Arc<crate::backfill::Chunks>) -> PgSource {
        self.chunks = chunks;
        self
    }

    pub fn checkpoint_key(&self) -> Arc<str> {
        self.key.clone()
    }

    /// Streams until `shutdown`, reconnecting after failures. `start` is the
    /// source's checkpoint as the log holds it.
    pub async fn run(
        self,
        start: Checkpoint,
        shutdown: CancellationToken,
    ) -> Result<(), SourceError> {
        let mut last_sent = start;
        let mut backoff = Duration::from_millis(200);
        let max_backoff = Duration::from_millis(self.cfg.reconnect_max_backoff_ms.max(200));
        loop {
            let began = std::time::Instant::now();
            match self.session(&mut last_sent, &shutdown).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    self.stats.connected.store(false, Ordering::Relaxed);
                    self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    if began.elapsed() > Duration::from_secs(30) {
                        backoff = Duration::from_millis(200);
                    }
                    tracing::warn!(source = %self.cfg.name, error = %e, retry_in_ms = backoff.as_millis() as u64,
                        "replication interrupted; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        }
    }

    async fn session(
        &self,
        last_sent: &mut Checkpoint,
        shutdown: &CancellationToken,
    ) -> Result<(), SourceError> {
        let catalog_client = crate::log::connect(&self.cfg.url).await?;
        catalog_client
            .batch_execute("SET application_name = 'sluice-catalog'")
            .await?;
        let mut catalog = Catalog::new(catalog_client);
        let mut durable = self.appender.durable();
        let durable_ack = durable
            .borrow()
            .checkpoints
            .get(&self.key)
            .map_or(0, |c| c.ack_lsn);
        let rc = replication_config(
            &self.cfg,
            Lsn::from_u64(last_sent.ack_lsn),
            Lsn::from_u64(durable_ack),
        )?;
        let mut client = ReplicationClient::connect(rc).await?;
        let mut normalizer = Normalizer::new(&self.cfg.event_source());
        let mut tx: Option<OpenTx> = None;
        let mut outcomes = Vec::new();
        // Open backfill windows by chunk nonce; only windows whose low
        // watermark was read in this session count.
        let mut windows: HashMap<u64, Window> = HashMap::new();
        let mut first = true;
        loop {
            let ev = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    client.stop();
                    return Ok(());
                }
                changed = durable.changed() => {
                    if changed.is_err() {
                        return Err(LogError::Closed.into());
                    }
                    let ack = durable.borrow_and_update().checkpoints.get(&self.key).map(|c| c.ack_lsn);
                    if let Some(ack) = ack {
                        client.update_applied_lsn(Lsn::from_u64(ack));
                        self.stats.acked_lsn.store(ack, Ordering::Relaxed);
                    }
                    continue;
                }
                ev = client.recv() => ev?,
            };
            if first {
                first = false;
                self.stats.connected.store(true, Ordering::Relaxed);
                tracing::info!(source = %self.cfg.name, slot = %self.cfg.slot(), "replication streaming");
            }
            let Some(ev) = ev else {
                return Err(SourceError::Ended);
            };
            match ev {
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    self.stats
                        .server_wal_end
                        .store(wal_end.as_u64(), Ordering::Relaxed);
                    // Nothing open and everything sent is durable: the slot may
                    // move to the server's position (quiet captured tables must
                    // not hold WAL back).
                    let all_durable = durable
                        .borrow()
                        .checkpoints
                        .get(&self.key)
                        .is_some_and(|c| c == last_sent);
                    if tx.is_none() && all_durable && wal_end.as_u64() > last_sent.ack_lsn {
                        client.update_applied_lsn(wal_end);
                    }
                }
                ReplicationEvent::Begin {
                    final_lsn,
                    xid,
                    commit_time_micros,
                } => {
                    let commit_lsn = final_lsn.as_u64();
                    tx = Some(OpenTx {
                        ctx: TxContext::new(xid, commit_lsn, pg_micros_to_unix(commit_time_micros)),
                        changes: 0,
                        skip_all: last_sent.covers_transaction(commit_lsn),
                    });
                }
                ReplicationEvent::XLogData { data, .. } => {
                    let msg = pgoutput::decode(&data)?;
                    match msg {
                        Message::Relation(rel) => {
                            let rule = self
                                .rules
                                .get(&(rel.namespace.clone(), rel.name.clone()))
                                .cloned();
                            let resolved = catalog.resolve(rel, rule).await?;
                            normalizer.set_relation(resolved);
                        }
                        Message::Insert(_)
                        | Message::Update(_)
                        | Message::Delete(_)
                        | Message::Truncate(_) => {
                            let Some(open) = tx.as_mut() else {
                                tracing::warn!("change outside a transaction; ignored");
                                continue;
                            };
                            open.changes += 1;
                            if open.skip_all {
                                continue;
                            }
                            let base = SourcePosition {
                                commit_lsn: open.ctx.commit_lsn,
                                ordinal: open.changes.saturating_mul(SUBS_PER_CHANGE),
                            };
                            if last_sent.covers(SourcePosition {
                                ordinal: base.ordinal + SUBS_PER_CHANGE - 1,
                                ..base
                            }) {
                                continue;
                            }
                            outcomes.clear();
                            normalizer.change(&open.ctx, open.changes, &msg, &mut outcomes);
                            if !windows.is_empty() {
                                note_changes(&mut windows, &outcomes);
                                // An update that moved the row to another
                                // key changed the old key's row too.
                                if let Message::Update(u) = &msg {
                                    if let Some(
                                        pgoutput::OldTuple::Key(old)
                                        | pgoutput::OldTuple::Full(old),
                                    ) = &u.old
                                    {
                                        if let Some(subject) =
                                            normalizer.subject_of(u.relation_id, old)
                                        {
                                            for w in windows.values_mut() {
                                                w.note(&subject);
                                            }
                                        }
                                    }
                                }
                            }
                            for o in outcomes.drain(..) {
                                self.deliver(o, last_sent).await?;
                            }
                            self.stats
                                .value_fallbacks
                                .store(normalizer.stats.value_fallbacks, Ordering::Relaxed);
                        }
                        Message::Begin(_) | Message::Commit(_) | Message::Message(_) => {
                            tracing::warn!("transaction boundary arrived as raw data; ignored");
                        }
                        Message::Type(_) | Message::Origin(_) => {}
                    }
                }
                ReplicationEvent::Message {
                    transactional,
                    lsn,
                    prefix,
                    content,
                } => {
                    if prefix == HEARTBEAT_PREFIX && !transactional && tx.is_none() {
                        // Everything before it has been sent: acknowledging it
                        // once durable moves the slot past WAL that holds no
                        // captured change (other tables, other databases).
                        let at = lsn.as_u64();
                        if !last_sent.covers_transaction(at) {
                            self.end_tx(at, at, last_sent).await?;
                            self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    }
                    if prefix == crate::backfill::MARK_PREFIX {
                        let (Some(open), Some(mark)) =
                            (tx.as_mut(), crate::backfill::Mark::decode(&content))
                        else {
                            continue;
                        };
                        if open.skip_all {
                            continue;
                        }
                        if !mark.h {
                            // Windows whose high watermark never comes (the
                            // runner failed between the two) must not pile up.
                            if windows.len() >= MAX_WINDOWS {
                                windows.clear();
                            }
                            windows.insert(mark.n, Window::default());
                            continue;
                        }
                        let window = windows.remove(&mark.n);
                        let Some(chunk) = self.chunks.take(mark.n) else {
                            continue;
                        };
                        let Some(window) = window.filter(|w| !w.truncated) else {
                            // The low watermark was read in an earlier session
                            // (or a TRUNCATE intervened): the runner reads the
                            // chunk again.
                            continue;
                        };
                        // Normalized beside us, usually done by now; a
                        // normalizer that is gone means the runner is gone.
                        let Ok(chunk) = chunk.await else {
                            continue;
                        };
                        for reason in chunk.dropped {
                            self.deliver(Outcome::Dropped(reason), last_sent).await?;
                        }
                        // The rows whose key changed inside the window are
                        // left out: their change events are at least as new.
                        let mut events = chunk.events;
                        let mut batches = Some(chunk.batches);
                        if !window.changed.is_empty() {
                            let read = events.len();
                            events.retain(|e| {
                                e.subject
                                    .as_ref()
                                    .is_some_and(|s| !window.changed.contains(s))
                            });
                            if events.len() != read {
                                // Built for the events as read.
                                batches = None;
                            }
                        }
                        for e in &mut events {
                            open.changes += 1;
                            e.position = SourcePosition {
                                commit_lsn: open.ctx.commit_lsn,
                                ordinal: open.changes.saturating_mul(SUBS_PER_CHANGE),
                            };
                            e.time_micros = open.ctx.commit_time_micros;
                            e.time = open.ctx.time.clone();
                            e.txid = Some(u64::from(open.ctx.xid));
                            e.lsn = Some(open.ctx.commit_lsn);
                        }
                        if !events.is_empty() {
                            self.stats
                                .events
                                .fetch_add(events.len() as u64, Ordering::Relaxed);
                        }
                        self.send(
                            AppendItem::BackfillChunk {
                                source: self.key.clone(),
                                events,
                                batches,
                                backfill: chunk.backfill,
                                after: chunk.after,
                                last_key: chunk.last_key,
                                rows_read: chunk.rows_read,
                            },
                            last_sent,
                        )
                        .await?;
                        continue;
                    }
                    if prefix != CUSTOM_PREFIX {
                        continue;
                    }
                    match (transactional, tx.as_mut()) {
                        (true, Some(open)) => {
                            open.changes += 1;
                            if open.skip_all {
                                continue;
                            }
                            let pos = open.changes.saturating_mul(SUBS_PER_CHANGE);
                            let o = normalizer.custom(&open.ctx, pos, &content);
                            self.deliver(o, last_sent).await?;
                        }
                        _ => {
                            // A non-transactional message is its own unit.
                            let at = lsn.as_u64();
                            if last_sent.covers_transaction(at) {
                                continue;
                            }
                            let ctx = TxContext::new(0, at, chrono::Utc::now().timestamp_micros());
                            let o = normalizer.custom(&ctx, SUBS_PER_CHANGE, &content);
                            self.deliver(o, last_sent).await?;
                            self.end_tx(at, at, last_sent).await?;
                        }
                    }
                }
                ReplicationEvent::Commit { lsn, end_lsn, .. } => {
                    let Some(open) = tx.take() else { continue };
                    if open.skip_all {
                        continue;
                    }
                    self.end_tx(lsn.as_u64(), end_lsn.as_u64(), last_sent)
                        .await?;
                    self.stats.transactions.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .last_commit_micros
                        .store(open.ctx.commit_time_micros, Ordering::Relaxed);
                }
                ReplicationEvent::StoppedAt { .. } => return Ok(()),
            }
        }
    }

    async fn deliver(
        &self,
        outcome: Outcome,
        last_sent: &mut Checkpoint,
    ) -> Result<(), SourceError> {
        match outcome {
            Outcome::Event(event) => {
                if last_sent.covers(event.position) {
                    return Ok(());
                }
                self.send(
                    AppendItem::Event {
                        source: self.key.clone(),
                        event,
                        token: None,
                    },
                    last_sent,
                )
                .await?;
                self.stats.events.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Ignored => {}
            Outcome::Dropped(reason) => match &reason {
                DropReason::NoTenant { table, key, why } => {
                    self.stats.dropped_no_tenant.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%table, %key, %why, "change has no tenant; not delivered to anyone");
                }
                DropReason::MalformedCustom(why) => {
                    self.stats
                        .dropped_malformed_custom
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%why, "malformed custom event; not appended");
                }
                DropReason::UnknownRelation(id) => {
                    self.stats.dropped_other.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        relation_id = id,
                        "change for a relation never described; not appended"
                    );
                }
                DropReason::ShapeMismatch { table } => {
                    self.stats.dropped_other.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%table, "row does not match its relation's columns; not appended");
                }
            },
        }
        Ok(())
    }

    async fn end_tx(
        &self,
        commit_lsn: u64,
        end_lsn: u64,
        last_sent: &mut Checkpoint,
    ) -> Result<(), SourceError> {
        self.send(
            AppendItem::TxEnd {
                source: self.key.clone(),
                commit_lsn,
                end_lsn,
            },
            last_sent,
        )
        .await
    }

    /// Hands `item` to the appender, moving `last_sent` past it by the
    /// appender's own rule ([`Checkpoint::advance`]) on the item itself, so
    /// what is remembered as sent cannot differ from what was sent. (A
    /// failed send is fatal to `run`, so a `last_sent` moved past an item
    /// that was not sent is never used.)
    async fn send(&self, item: AppendItem, last_sent: &mut Checkpoint) -> Result<(), SourceError> {
        last_sent.advance(&item);
        self.appender.send(item).await?;
        Ok(())
    }
}

/// Open backfill windows kept at most (the runner has at most a few chunks
/// in flight; more means some high watermarks will never come).
const MAX_WINDOWS: usize = 16;
/// Changed rows remembered per window; a window that saw more is given up
/// and its chunk read again (memory stays bounded under any write load).
const MAX_WINDOW_KEYS: usize = 1_000_000;

/// Records the rows `outcomes` changed in every open backfill window.
fn note_changes(windows: &mut HashMap<u64, Window>, outcomes: &[Outcome]) {
    for o in outcomes {
        match o {
            Outcome::Event(e) => match (&e.audience, &e.subject) {
                (crate::event::Audience::TenantsOfRelation(_), _) => {
                    windows.values_mut().for_each(|w| w.truncated = true);
                }
                (_, Some(subject)) => {
                    for w in windows.values_mut() {
                        w.note(subject);
                    }
                }
                _ => {}
            },
            // A change with no deliverable event (no tenant) still changed
            // the row; its key is unknown here, so the chunk is read again.
            Outcome::Dropped(_) => windows.values_mut().for_each(|w| w.truncated = true),
            Outcome::Ignored => {}
        }
    }
}
