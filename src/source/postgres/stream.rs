//! The replication loop: reads the slot through `pgwire-replication`,
//! decodes pgoutput, normalizes, and hands events to the appender in source
//! order. It acknowledges to Postgres only what the appender reports as
//! durable, and reconnects with backoff when the connection breaks.
//!
//! `PgSource::run` reconnects; one connection is a `Session`, which the
//! loop feeds one replication event at a time, with one method per kind
//! (keepalive, begin, relation, change, logical message, commit). Backfill
//! watermark windows are kept by `watermark`.
//!
//! Invariant: an item is sent to the appender at most once per source
//! position (`last_sent` only moves forward, by [`Checkpoint::advance`] on
//! the very item sent, and a re-sent transaction is skipped up to it), so a
//! reconnect never duplicates an event.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::catalog::Catalog;
use super::messages::{CUSTOM_PREFIX, HEARTBEAT_PREFIX, MARK_PREFIX};
use super::normalize::{DropReason, Normalizer, Outcome, TableRule, TxContext, SUBS_PER_CHANGE};
use super::pgoutput::{self, Message};
use super::stats::SourceStats;
use super::watermark::{self, Windows};
use crate::config::PgSourceConfig;
use crate::event::{pg_micros_to_unix, SourcePosition};
use crate::log::{AppendItem, AppenderHandle, Checkpoint, Durable, LogError};

/// Session settings that make the text forms of values what `value/`
/// expects, whatever the server's defaults are.
pub const SESSION_OPTIONS: &str = "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres \
     -c extra_float_digits=1 -c bytea_output=hex -c lc_monetary=C";

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
                ((s.to_owned(), n.to_owned()), TableRule::from(t))
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

    /// One connection: connects, then dispatches what arrives until
    /// shutdown, an error or the end of the stream. The select is biased:
    /// shutdown first, then the appender's durable progress (so
    /// acknowledgements are not starved by a busy stream), then the stream.
    async fn session(
        &self,
        last_sent: &mut Checkpoint,
        shutdown: &CancellationToken,
    ) -> Result<(), SourceError> {
        let mut s = Session::connect(self, last_sent).await?;
        loop {
            let ev = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    s.client.stop();
                    return Ok(());
                }
                changed = s.durable.changed() => {
                    if changed.is_err() {
                        return Err(LogError::Closed.into());
                    }
                    s.on_durable();
                    continue;
                }
                ev = s.client.recv() => ev?,
            };
            s.note_streaming();
            let Some(ev) = ev else {
                return Err(SourceError::Ended);
            };
            if s.dispatch(ev).await?.is_break() {
                return Ok(());
            }
        }
    }
}

/// The state of one replication connection.
struct Session<'a> {
    client: ReplicationClient,
    catalog: Catalog,
    normalizer: Normalizer,
    durable: watch::Receiver<Arc<Durable>>,
    /// The transaction being received (between Begin and Commit).
    tx: Option<OpenTx>,
    /// The current change's outcomes (kept to reuse the allocation).
    outcomes: Vec<Outcome>,
    windows: Windows,
    /// Whether nothing has been received yet.
    first: bool,
    out: Out<'a>,
}

/// The sending side of a session: the source and what it has sent.
struct Out<'a> {
    source: &'a PgSource,
    last_sent: &'a mut Checkpoint,
}

impl<'a> Session<'a> {
    /// Opens the catalog session and the replication connection, starting
    /// after what `last_sent` says is sent and acknowledging what the log
    /// holds durably.
    async fn connect(
        source: &'a PgSource,
        last_sent: &'a mut Checkpoint,
    ) -> Result<Session<'a>, SourceError> {
        let catalog_client = crate::log::connect(&source.cfg.url).await?;
        catalog_client
            .batch_execute("SET application_name = 'sluice-catalog'")
            .await?;
        let catalog = Catalog::new(catalog_client);
        let durable = source.appender.durable();
        let durable_ack = durable
            .borrow()
            .checkpoints
            .get(&source.key)
            .map_or(0, |c| c.ack_lsn);
        let rc = replication_config(
            &source.cfg,
            Lsn::from_u64(last_sent.ack_lsn),
            Lsn::from_u64(durable_ack),
        )?;
        let client = ReplicationClient::connect(rc).await?;
        Ok(Session {
            client,
            catalog,
            normalizer: Normalizer::new(&source.cfg.event_source()),
            durable,
            tx: None,
            outcomes: Vec::new(),
            windows: Windows::default(),
            first: true,
            out: Out { source, last_sent },
        })
    }

    fn source(&self) -> &'a PgSource {
        self.out.source
    }

    /// The appender made more durable: acknowledge it upstream.
    fn on_durable(&mut self) {
        let source = self.source();
        let ack = self
            .durable
            .borrow_and_update()
            .checkpoints
            .get(&source.key)
            .map(|c| c.ack_lsn);
        if let Some(ack) = ack {
            self.client.update_applied_lsn(Lsn::from_u64(ack));
            source.stats.acked_lsn.store(ack, Ordering::Relaxed);
        }
    }

    /// Something arrived: the first time, the source is connected.
    fn note_streaming(&mut self) {
        if self.first {
            self.first = false;
            let source = self.source();
            source.stats.connected.store(true, Ordering::Relaxed);
            tracing::info!(source = %source.cfg.name, slot = %source.cfg.slot(), "replication streaming");
        }
    }

    /// Handles one replication event; `Break`: the stream stopped.
    async fn dispatch(&mut self, ev: ReplicationEvent) -> Result<ControlFlow<()>, SourceError> {
        match ev {
            ReplicationEvent::KeepAlive { wal_end, .. } => self.on_keepalive(wal_end),
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => self.on_begin(final_lsn.as_u64(), xid, commit_time_micros),
            ReplicationEvent::XLogData { data, .. } => self.on_data(&data).await?,
            ReplicationEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => {
                self.on_message(transactional, lsn.as_u64(), &prefix, &content)
                    .await?
            }
            ReplicationEvent::Commit { lsn, end_lsn, .. } => {
                self.on_commit(lsn.as_u64(), end_lsn.as_u64()).await?
            }
            ReplicationEvent::StoppedAt { .. } => return Ok(ControlFlow::Break(())),
        }
        Ok(ControlFlow::Continue(()))
    }

    fn on_keepalive(&mut self, wal_end: Lsn) {
        let source = self.source();
        source
            .stats
            .server_wal_end
            .store(wal_end.as_u64(), Ordering::Relaxed);
        // Nothing open and everything sent is durable: the slot may move to
        // the server's position (quiet captured tables must not hold WAL
        // back).
        let last_sent = &*self.out.last_sent;
        let all_durable = self
            .durable
            .borrow()
            .checkpoints
            .get(&source.key)
            .is_some_and(|c| c == last_sent);
        if self.tx.is_none() && all_durable && wal_end.as_u64() > last_sent.ack_lsn {
            self.client.update_applied_lsn(wal_end);
        }
    }

    fn on_begin(&mut self, commit_lsn: u64, xid: u32, commit_time_micros: i64) {
        self.tx = Some(OpenTx {
            ctx: TxContext::new(xid, commit_lsn, pg_micros_to_unix(commit_time_micros)),
            changes: 0,
            skip_all: self.out.last_sent.covers_transaction(commit_lsn),
        });
    }

    /// A pgoutput message inside the stream's data.
    async fn on_data(&mut self, data: &bytes::Bytes) -> Result<(), SourceError> {
        let msg = pgoutput::decode(data)?;
        match msg {
            Message::Relation(rel) => self.on_relation(rel).await?,
            Message::Insert(_) | Message::Update(_) | Message::Delete(_) | Message::Truncate(_) => {
                self.on_change(&msg).await?
            }
            Message::Begin(_) | Message::Commit(_) | Message::Message(_) => {
                tracing::warn!("transaction boundary arrived as raw data; ignored");
            }
            Message::Type(_) | Message::Origin(_) => {}
        }
        Ok(())
    }

    async fn on_relation(&mut self, rel: pgoutput::Relation) -> Result<(), SourceError> {
        let rule = self
            .source()
            .rules
            .get(&(rel.namespace.clone(), rel.name.clone()))
            .cloned();
        let resolved = self.catalog.resolve(rel, rule).await?;
        self.normalizer.set_relation(resolved);
        Ok(())
    }

    /// A row change (insert, update, delete, truncate).
    async fn on_change(&mut self, msg: &Message) -> Result<(), SourceError> {
        let Some(open) = self.tx.as_mut() else {
            tracing::warn!("change outside a transaction; ignored");
            return Ok(());
        };
        open.changes += 1;
        if open.skip_all {
            return Ok(());
        }
        let base = SourcePosition {
            commit_lsn: open.ctx.commit_lsn,
            ordinal: open.changes.saturating_mul(SUBS_PER_CHANGE),
        };
        if self.out.last_sent.covers(SourcePosition {
            ordinal: base.ordinal + SUBS_PER_CHANGE - 1,
            ..base
        }) {
            return Ok(());
        }
        self.outcomes.clear();
        self.normalizer
            .change(&open.ctx, open.changes, msg, &mut self.outcomes);
        self.windows
            .note_change(msg, &self.outcomes, &self.normalizer);
        for o in self.outcomes.drain(..) {
            self.out.deliver(o).await?;
        }
        self.out
            .source
            .stats
            .value_fallbacks
            .store(self.normalizer.stats.value_fallbacks, Ordering::Relaxed);
        Ok(())
    }

    /// A logical message: a heartbeat, a backfill watermark or a custom
    /// event (others are not Sluice's).
    async fn on_message(
        &mut self,
        transactional: bool,
        lsn: u64,
        prefix: &str,
        content: &[u8],
    ) -> Result<(), SourceError> {
        if prefix == HEARTBEAT_PREFIX && !transactional && self.tx.is_none() {
            return self.on_heartbeat(lsn).await;
        }
        if prefix == MARK_PREFIX {
            return self.on_watermark(content).await;
        }
        if prefix != CUSTOM_PREFIX {
            return Ok(());
        }
        self.on_custom(transactional, lsn, content).await
    }

    async fn on_heartbeat(&mut self, end: u64) -> Result<(), SourceError> {
        // Everything before it has been sent: acknowledging it once durable
        // moves the slot past WAL that holds no captured change (other
        // tables, other databases).
        let at = unit_position(end);
        if !self.out.last_sent.covers_transaction(at) {
            self.out.end_tx(at, end).await?;
            self.source()
                .stats
                .heartbeats
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// A backfill watermark: the low one opens the chunk's window, the high
    /// one emits the chunk (see `watermark`).
    async fn on_watermark(&mut self, content: &[u8]) -> Result<(), SourceError> {
        let (Some(open), Some(mark)) = (self.tx.as_mut(), crate::backfill::Mark::decode(content))
        else {
            return Ok(());
        };
        if open.skip_all {
            return Ok(());
        }
        if !mark.h {
            self.windows.open(mark.n);
            return Ok(());
        }
        let window = self.windows.close(mark.n);
        let source = self.out.source;
        // Taken whether or not it is emitted: a chunk not emitted is read
        // again under another nonce.
        let Some(chunk) = source.chunks.take(mark.n) else {
            return Ok(());
        };
        let Some(window) = window else {
            // The low watermark was read in an earlier session (or a
            // TRUNCATE intervened): the runner reads the chunk again.
            return Ok(());
        };
        // Normalized beside us, usually done by now; a normalizer that is
        // gone means the runner is gone.
        let Ok(mut chunk) = chunk.await else {
            return Ok(());
        };
        for reason in std::mem::take(&mut chunk.dropped) {
            self.out.deliver(Outcome::Dropped(reason)).await?;
        }
        let item = watermark::chunk_item(
            source.key.clone(),
            chunk,
            &window,
            &open.ctx,
            &mut open.changes,
        );
        if let AppendItem::BackfillChunk { events, .. } = &item {
            if !events.is_empty() {
                source
                    .stats
                    .events
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
            }
        }
        self.out.send(item).await
    }

    /// A custom event: part of its transaction, or its own unit.
    async fn on_custom(
        &mut self,
        transactional: bool,
        lsn: u64,
        content: &[u8],
    ) -> Result<(), SourceError> {
        match (transactional, self.tx.as_mut()) {
            (true, Some(open)) => {
                open.changes += 1;
                if open.skip_all {
                    return Ok(());
                }
                let pos = open.changes.saturating_mul(SUBS_PER_CHANGE);
                let o = self.normalizer.custom(&open.ctx, pos, content);
                self.out.deliver(o).await?;
            }
            _ => {
                // A non-transactional message is its own unit.
                let at = unit_position(lsn);
                if self.out.last_sent.covers_transaction(at) {
                    return Ok(());
                }
                let ctx = TxContext::new(0, at, chrono::Utc::now().timestamp_micros());
                let o = self.normalizer.custom(&ctx, SUBS_PER_CHANGE, content);
                self.out.deliver(o).await?;
                self.out.end_tx(at, lsn).await?;
            }
        }
        Ok(())
    }

    async fn on_commit(&mut self, lsn: u64, end_lsn: u64) -> Result<(), SourceError> {
        let Some(open) = self.tx.take() else {
            return Ok(());
        };
        if open.skip_all {
            return Ok(());
        }
        self.out.end_tx(lsn, end_lsn).await?;
        let stats = &self.source().stats;
        stats.transactions.fetch_add(1, Ordering::Relaxed);
        stats
            .last_commit_micros
            .store(open.ctx.commit_time_micros, Ordering::Relaxed);
        Ok(())
    }
}

impl Out<'_> {
    async fn deliver(&mut self, outcome: Outcome) -> Result<(), SourceError> {
        let source = self.source;
        match outcome {
            Outcome::Event(event) => {
                if self.last_sent.covers(event.position) {
                    return Ok(());
                }
                self.send(AppendItem::Event {
                    source: source.key.clone(),
                    event,
                    token: None,
                })
                .await?;
                source.stats.events.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Ignored => {}
            Outcome::Dropped(reason) => source.count_drop(&reason),
        }
        Ok(())
    }

    /// The transaction committed at `commit_lsn` is completely sent.
    async fn end_tx(&mut self, commit_lsn: u64, end_lsn: u64) -> Result<(), SourceError> {
        self.send(AppendItem::TxEnd {
            source: self.source.key.clone(),
            commit_lsn,
            end_lsn,
        })
        .await
    }

    /// Hands `item` to the appender, moving `last_sent` past it by the
    /// appender's own rule ([`Checkpoint::advance`]) on the item itself, so
    /// what is remembered as sent cannot differ from what was sent. (A
    /// failed send is fatal to `run`, so a `last_sent` moved past an item
    /// that was not sent is never used.)
    async fn send(&mut self, item: AppendItem) -> Result<(), SourceError> {
        self.last_sent.advance(&item);
        self.source.appender.send(item).await?;
        Ok(())
    }
}

/// The position of a non-transactional message (a heartbeat, a custom
/// event of its own) whose WAL record ends at `end`: the record's last
/// byte.
///
/// Not `end` itself: the next record starts exactly there, and it may be
/// the commit record of a transaction that was open while the message was
/// written (its changes before the message, its commit just after). That
/// transaction's `commit_lsn` is `end`, and a checkpoint at `end` would
/// count it as appended ([`Checkpoint::covers_transaction`]) and skip it.
/// No record starts at `end - 1` (records are 8-byte aligned), so every
/// commit before the message is below it and every commit after it above.
fn unit_position(end: u64) -> u64 {
    end.saturating_sub(1)
}

impl PgSource {
    /// Counts and logs a change that gave no event.
    fn count_drop(&self, reason: &DropReason) {
        match reason {
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
        }
    }
}
