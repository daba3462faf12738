//! The replication loop: reads the slot through Sluice's replication
//! client (`pgrepl`), at the highest pgoutput protocol version the server
//! speaks (with `streaming`, large transactions arrive while they run and
//! are staged until their commit, `staging`), decodes pgoutput, normalizes, and hands events to the appender in source
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

use crate::pgrepl::{ReplConn, ReplError, ReplEvent, ReplStream, ReplTarget, StreamConfig};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::catalog::Catalog;
use super::messages::{CUSTOM_PREFIX, HEARTBEAT_PREFIX, MARK_PREFIX};
use super::normalize::{DropReason, Normalizer, Outcome, TableRule, TxContext, SUBS_PER_CHANGE};
use super::pgoutput::{self, Message};
use super::staging::{Staging, StagingError};
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
    Replication(#[from] ReplError),
    #[error("{0}")]
    Staging(#[from] StagingError),
    #[error("the replication stream is not understood: {0}")]
    Stream(String),
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

/// The pgoutput protocol version Sluice asks a server of `major` for:
/// the highest it offers (2 on 14, 3 on 15, 4 on 16 and later), or 1 when
/// streaming is off (what the other versions add is streaming and
/// two-phase, neither asked for then).
pub fn protocol_version(major: u32, streaming: bool) -> u32 {
    match major {
        _ if !streaming => 1,
        0..=13 => 1,
        14 => 2,
        15 => 3,
        _ => 4,
    }
}

/// The `START_REPLICATION` command for `slot` from `start`.
pub fn start_command(slot: &str, publication: &str, start: u64, proto: u32) -> String {
    // The option value is a list of identifiers inside a string literal.
    let names = crate::sql::quote_ident(publication).replace('\'', "''");
    let streaming = if proto >= 2 { ", streaming 'on'" } else { "" };
    format!(
        "START_REPLICATION SLOT {} LOGICAL {} (proto_version '{proto}', publication_names '{names}', messages 'true'{streaming})",
        crate::sql::quote_ident(slot),
        crate::event::format_lsn(start),
    )
}

/// Connects a replication session to `url` (every host of it, in order,
/// as `target_session_attrs` asks), with Sluice's session settings.
pub async fn connect_replication(
    url: &str,
    application_name: &str,
) -> Result<ReplConn, SourceError> {
    let target = ReplTarget::parse(url).map_err(|e| SourceError::Url(e.to_string()))?;
    let session = crate::pgrepl::Session {
        application_name: application_name.to_owned(),
        options: Some(SESSION_OPTIONS.to_owned()),
    };
    Ok(ReplConn::connect(&target, &session).await?)
}

/// [`connect_replication`] for a source.
pub async fn replication_session(cfg: &PgSourceConfig) -> Result<ReplConn, SourceError> {
    connect_replication(&cfg.url, &format!("sluice/{}", cfg.name)).await
}

/// Streams `slot` from `start` at the protocol version Sluice would use
/// (streaming as `streaming` says), acknowledging as Sluice's stream does
/// by default; for the benchmarks' readers, which must read exactly as
/// Sluice does. Returns the stream and its protocol version.
pub async fn open_stream(
    url: &str,
    application_name: &str,
    (slot, publication): (&str, &str),
    start: u64,
    streaming: bool,
) -> Result<(ReplStream, u32), SourceError> {
    let conn = connect_replication(url, application_name).await?;
    let proto = protocol_version(conn.major(), streaming);
    let stream = conn
        .start(
            &start_command(slot, publication, start, proto),
            StreamConfig {
                status_interval: Duration::from_millis(crate::config::default_int(
                    "source.postgres.status_interval_ms",
                )),
                wakeup_interval: Duration::from_secs(5),
                buffer: crate::config::default_int("source.postgres.queue_messages") as usize,
                start_ack: start,
            },
        )
        .await?;
    Ok((stream, proto))
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

/// Where spilled streamed transactions go.
fn spill_dir(cfg: &PgSourceConfig) -> std::path::PathBuf {
    cfg.spill_dir.clone().unwrap_or_else(std::env::temp_dir)
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
                    s.client.shutdown().await;
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
    client: ReplStream,
    /// The top-level xid of the stream block being received (between
    /// Stream Start and Stream Stop).
    in_stream: Option<u32>,
    /// Streamed transactions not committed yet.
    staging: Staging,
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
        let conn = replication_session(&source.cfg).await?;
        let proto = protocol_version(conn.major(), source.cfg.streaming);
        source
            .stats
            .protocol
            .store(u64::from(proto), Ordering::Relaxed);
        let command = start_command(
            &source.cfg.slot(),
            &source.cfg.publication(),
            last_sent.ack_lsn,
            proto,
        );
        tracing::info!(source = %source.cfg.name, server = %conn.addr(), version = %conn.server_version,
            proto_version = proto, streaming = proto >= 2, "starting replication");
        let client = conn
            .start(
                &command,
                StreamConfig {
                    status_interval: Duration::from_millis(source.cfg.status_interval_ms),
                    wakeup_interval: Duration::from_secs(5),
                    buffer: source.cfg.queue_messages,
                    start_ack: durable_ack,
                },
            )
            .await?;
        Ok(Session {
            client,
            in_stream: None,
            staging: Staging::new(
                source.cfg.stream_memory_mb.saturating_mul(1 << 20),
                spill_dir(&source.cfg),
            ),
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
            self.client.update_applied_lsn(ack);
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
    async fn dispatch(&mut self, ev: ReplEvent) -> Result<ControlFlow<()>, SourceError> {
        match ev {
            ReplEvent::KeepAlive { wal_end, .. } => self.on_keepalive(wal_end),
            ReplEvent::XLogData { data, .. } => self.on_data(&data).await?,
        }
        Ok(ControlFlow::Continue(()))
    }

    fn on_keepalive(&mut self, wal_end: u64) {
        let source = self.source();
        source
            .stats
            .server_wal_end
            .store(wal_end, Ordering::Relaxed);
        // Nothing open and everything sent is durable: the slot may move to
        // the server's position (quiet captured tables must not hold WAL
        // back). A streamed transaction still open does not hold it: the
        // server sends it again, whole, to a session that starts before
        // its commit.
        let last_sent = &*self.out.last_sent;
        let all_durable = self
            .durable
            .borrow()
            .checkpoints
            .get(&source.key)
            .is_some_and(|c| c == last_sent);
        if self.tx.is_none() && all_durable && wal_end > last_sent.ack_lsn {
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

    /// A pgoutput message.
    async fn on_data(&mut self, data: &bytes::Bytes) -> Result<(), SourceError> {
        let (xid, msg) = pgoutput::decode_with(data, self.in_stream.is_some())?;
        if let (Some(top), Some(sub)) = (self.in_stream, xid) {
            // Part of a transaction still running: kept until it commits.
            let spilled = self.staging.spilled;
            self.staging.add(top, sub, data)?;
            let stats = &self.source().stats;
            stats.streamed_messages.fetch_add(1, Ordering::Relaxed);
            if self.staging.spilled > spilled {
                stats.streamed_spills.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(());
        }
        match msg {
            Message::Begin(b) => self.on_begin(b.final_lsn, b.xid, b.commit_time),
            Message::Commit(c) => self.on_commit(c.commit_lsn, c.end_lsn).await?,
            Message::StreamStart(st) => {
                if self.in_stream.is_some() {
                    return Err(SourceError::Stream(
                        "a stream block began inside another".into(),
                    ));
                }
                self.staging.start(st.xid, st.first_segment);
                self.in_stream = Some(st.xid);
            }
            Message::StreamStop => self.in_stream = None,
            Message::StreamAbort(a) => self.staging.abort(a.xid, a.subxid)?,
            Message::StreamCommit(c) => self.on_stream_commit(c).await?,
            other => return self.on_message_decoded(other).await,
        }
        self.source()
            .stats
            .streamed_open
            .store(self.staging.open() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// A relation, change or logical message of the open transaction (or
    /// a logical message of its own).
    async fn on_message_decoded(&mut self, msg: Message) -> Result<(), SourceError> {
        match msg {
            Message::Relation(rel) => self.on_relation(rel).await?,
            Message::Insert(_) | Message::Update(_) | Message::Delete(_) | Message::Truncate(_) => {
                self.on_change(&msg).await?
            }
            Message::Message(m) => {
                self.on_message(m.transactional, m.lsn, &m.prefix, &m.content)
                    .await?
            }
            Message::Type(_) | Message::Origin(_) => {}
            Message::Begin(_)
            | Message::Commit(_)
            | Message::StreamStart(_)
            | Message::StreamStop
            | Message::StreamCommit(_)
            | Message::StreamAbort(_) => {
                return Err(SourceError::Stream(
                    "a transaction boundary inside a streamed transaction".into(),
                ))
            }
        }
        Ok(())
    }

    /// A streamed transaction committed: its staged messages go through
    /// the same path as a transaction sent whole, at its place in commit
    /// order.
    async fn on_stream_commit(&mut self, c: pgoutput::StreamCommit) -> Result<(), SourceError> {
        let Some(mut replay) = self.staging.take(c.xid) else {
            // Never happens with a conforming server (a session receives a
            // transaction from its first block); reconnecting has it sent
            // again rather than appending it empty.
            return Err(SourceError::Stream(format!(
                "stream commit of transaction {} whose blocks were not received",
                c.xid
            )));
        };
        // Streams come for every large transaction, also one that changed
        // nothing published (Sluice's own appends when the log shares the
        // database): an empty one is nothing, as an empty transaction sent
        // whole is.
        if replay.messages == 0 || self.out.last_sent.covers_transaction(c.commit_lsn) {
            return Ok(());
        }
        self.source()
            .stats
            .streamed_transactions
            .fetch_add(1, Ordering::Relaxed);
        self.on_begin(c.commit_lsn, c.xid, c.commit_time);
        while let Some(bytes) = replay.next_message()? {
            let (_, msg) = pgoutput::decode_with(&bytes, true)?;
            self.on_message_decoded(msg).await?;
        }
        self.on_commit(c.commit_lsn, c.end_lsn).await
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
