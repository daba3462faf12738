//! The appender: the one writer of the log.
//!
//! Sources send [`AppendItem`]s through a bounded queue (bounded in count
//! and in bytes). The appender gathers what is waiting (and the rest of a
//! source transaction it holds the start of) into one database transaction
//! (COPY of the events as rows and record batches, the relation→tenant
//! index, and each source's checkpoint), commits, and only then publishes
//! the new durable state, from which a source learns what it may
//! acknowledge upstream.
//!
//! Invariant: a batch is either wholly in the log with its checkpoints or
//! not at all; a batch whose commit outcome is unknown (connection lost
//! during COMMIT) is resolved by re-reading the checkpoints, never by
//! appending it twice. Accepted items are never dropped: database failures
//! are retried until they succeed or the appender is shut down.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::SinkExt;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_postgres::{Client, CopyInSink};
use tokio_util::sync::CancellationToken;

use super::batch::{Batcher, PreBatch};
use super::checkpoint::{self, Checkpoint};
use super::copy;
use super::stage::{AppendStage, Appended, AppendedChunk};
use super::{connect_as, LogError, APPENDER_LOCK_KEY};
use crate::config::AppenderConfig;
use crate::event::{Audience, Committed, PendingEvent, SourcePosition, TenantId};
use crate::hub::Hub;

/// What a source hands to the appender, in source order.
#[derive(Debug)]
pub enum AppendItem {
    Event {
        source: Arc<str>,
        event: PendingEvent,
        /// For sources resumed by token (MongoDB): the token of this event,
        /// stored as the checkpoint in the transaction that appends it.
        token: Option<Bytes>,
    },
    /// A backfill chunk: its snapshot events, appended as record batches
    /// (one row per tenant and up to [`BATCH_EVENTS`] events), and its
    /// progress, recorded in the same transaction.
    BackfillChunk {
        source: Arc<str>,
        /// Every event shares its header (relation, type, the high
        /// watermark's transaction) by construction.
        events: Vec<PendingEvent>,
        /// The events' record batches when built beside the stream
        /// ([`Batcher`]); `None`: the appender builds them.
        batches: Option<Vec<PreBatch>>,
        backfill: i64,
        /// The key the chunk starts after (`None`: the table's start):
        /// progress is recorded only if it is where the backfill stood, so
        /// a chunk emitted after a dropped one never skips it.
        after: Option<Vec<Option<String>>>,
        last_key: Vec<Option<String>>,
        rows_read: u64,
    },
    /// A token-resumed source moved on without an event for the log (its
    /// stream's post-batch token, a filtered-out change): store it, so a
    /// restart does not rescan what was already looked at.
    Progress {
        source: Arc<str>,
        position: SourcePosition,
        token: Bytes,
    },
    /// The transaction committed at `commit_lsn` has been sent completely;
    /// after it the source may acknowledge `end_lsn`.
    TxEnd {
        source: Arc<str>,
        commit_lsn: u64,
        end_lsn: u64,
    },
}

impl AppendItem {
    /// The events it carries (none for progress and transaction ends).
    fn events(&self) -> &[PendingEvent] {
        match self {
            AppendItem::Event { event, .. } => std::slice::from_ref(event),
            AppendItem::BackfillChunk { events, .. } => events,
            AppendItem::Progress { .. } | AppendItem::TxEnd { .. } => &[],
        }
    }

    /// Memory an item holds while queued and appended: the event, and its
    /// copy in a record batch's data.
    fn bytes(&self) -> usize {
        match self {
            AppendItem::Event { event, .. } => 2 * event.approx_bytes(),
            AppendItem::TxEnd { .. } => 64,
            AppendItem::Progress { token, .. } => 64 + token.len(),
            AppendItem::BackfillChunk {
                last_key,
                events,
                batches,
                ..
            } => {
                64 + last_key.iter().flatten().map(String::len).sum::<usize>()
                    + events.iter().map(PendingEvent::approx_bytes).sum::<usize>()
                    + batches.iter().flatten().map(PreBatch::bytes).sum::<usize>()
            }
        }
    }
}

/// An item in the queue with the queue budget it holds.
#[derive(Debug)]
struct Queued {
    item: AppendItem,
    permits: u32,
}

/// The appender's `application_name` (backfills tell its transactions by
/// it).
pub const APPENDER_APPLICATION: &str = "sluice-appender";

/// Bytes of COPY data in one CopyData message. The server reads each
/// message whole into a buffer it grows to fit, once per COPY: large
/// messages cost it fresh pages and copies on every append.
const COPY_CHUNK: usize = 64 << 10;

/// Bytes buffered before they are sent.
const COPY_BUFFER: usize = 1 << 20;

/// What is durably in the log.
#[derive(Debug, Clone, Default)]
pub struct Durable {
    /// Highest `seq` in the log (0 when empty).
    pub last_seq: i64,
    /// Each source's checkpoint as committed.
    pub checkpoints: BTreeMap<Arc<str>, Checkpoint>,
    /// The appender's backend on the state database (`pg_backend_pid()`),
    /// while connected: backfills tell its transactions by it.
    pub writer_pid: Option<i32>,
}

/// The sending side, cloned by every source.
#[derive(Clone)]
pub struct AppenderHandle {
    tx: mpsc::Sender<Queued>,
    budget: Arc<Semaphore>,
    max_item_permits: u32,
    durable: watch::Receiver<Arc<Durable>>,
}

impl AppenderHandle {
    /// Queues an item, waiting while the queue is full (backpressure).
    pub async fn send(&self, item: AppendItem) -> Result<(), LogError> {
        let want = u32::try_from(item.bytes())
            .unwrap_or(u32::MAX)
            .clamp(1, self.max_item_permits);
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|_| LogError::Closed)?;
        permit.forget();
        self.tx
            .send(Queued {
                item,
                permits: want,
            })
            .await
            .map_err(|_| LogError::Closed)
    }

    /// Watch the durable state (last seq, checkpoints).
    pub fn durable(&self) -> watch::Receiver<Arc<Durable>> {
        self.durable.clone()
    }
}

pub struct Appender {
    url: String,
    config: AppenderConfig,
    rx: mpsc::Receiver<Queued>,
    budget: Arc<Semaphore>,
    durable_tx: watch::Sender<Arc<Durable>>,
    client: Option<Client>,
    /// `client`'s backend pid.
    writer_pid: Option<i32>,
    /// The append transaction's statements, prepared on `client`.
    statements: Option<Statements>,
    next_seq: i64,
    checkpoints: BTreeMap<Arc<str>, Checkpoint>,
    /// Relation → tenants known to have rows there (to expand TRUNCATE).
    tenants_of: HashMap<Arc<str>, BTreeSet<TenantId>>,
    /// Where committed events go live.
    hub: Option<Arc<Hub>>,
    /// What else happens in each append transaction, in order.
    stages: Vec<Arc<dyn AppendStage>>,
    counts: Arc<AppendCounts>,
}

/// Events appended by this process, per source and type (custom types
/// counted as one, `custom`, so the label set stays bounded).
#[derive(Debug, Default)]
pub struct AppendCounts(std::sync::Mutex<BTreeMap<SourceType, u64>>);

/// (event source, event type).
type SourceType = (Arc<str>, Arc<str>);

impl AppendCounts {
    /// `(source, type, count)`, sorted; the source without `/sluice/`.
    pub fn snapshot(&self) -> Vec<(Arc<str>, Arc<str>, u64)> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((s, t), n)| (s.clone(), t.clone(), *n))
            .collect()
    }

    fn add(&self, batch: &[(SourceType, u64)]) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for ((source, event_type), n) in batch {
            let source: Arc<str> = source.strip_prefix("/sluice/").unwrap_or(source).into();
            let event_type: Arc<str> = if event_type.starts_with(crate::event::types::CUSTOM_PREFIX)
            {
                "custom".into()
            } else {
                event_type.clone()
            };
            *m.entry((source, event_type)).or_default() += n;
        }
    }
}

/// Longest the appender waits for the rest of a source transaction it has
/// the beginning of ([`Appender::take_rest_of_transaction`]).
const TX_LINGER: Duration = Duration::from_millis(20);

/// The source and txid of the last item when it is an event of a source
/// transaction (whose end, its `TxEnd`, then is not in `items` yet).
fn open_transaction(items: &[Queued]) -> Option<(Arc<str>, u64)> {
    match items.last().map(|q| &q.item) {
        Some(AppendItem::Event { source, event, .. }) => Some((source.clone(), event.txid?)),
        _ => None,
    }
}

/// Whether `item` shows that `source`'s transaction `txid` has been sent
/// completely: its `TxEnd`, or anything else from that source.
fn ends_transaction(item: &AppendItem, source: &Arc<str>, txid: u64) -> bool {
    match item {
        AppendItem::Event {
            source: s, event, ..
        } => **s == **source && event.txid != Some(txid),
        AppendItem::TxEnd { source: s, .. }
        | AppendItem::Progress { source: s, .. }
        | AppendItem::BackfillChunk { source: s, .. } => **s == **source,
    }
}

/// Budget, in bytes, of items waiting for the appender.
const QUEUE_BYTES: usize = 64 * 1024 * 1024;

impl Appender {
    /// Connects, takes the writer lock, and loads the log's position.
    pub async fn start(
        url: &str,
        config: &AppenderConfig,
        hub: Option<Arc<Hub>>,
    ) -> Result<(Appender, AppenderHandle), LogError> {
        let (durable_tx, _) = watch::channel(Arc::new(Durable::default()));
        Appender::start_publishing(url, config, hub, durable_tx).await
    }

    /// [`Appender::start`], publishing the durable state to `durable_tx`
    /// (the process's own, read by the HTTP API): published by the one
    /// writer itself, so the head a reader sees is never behind what the
    /// hub was asked about.
    pub async fn start_publishing(
        url: &str,
        config: &AppenderConfig,
        hub: Option<Arc<Hub>>,
        durable_tx: watch::Sender<Arc<Durable>>,
    ) -> Result<(Appender, AppenderHandle), LogError> {
        let (tx, rx) = mpsc::channel(config.queue_events);
        let budget = Arc::new(Semaphore::new(QUEUE_BYTES));
        let durable_rx = durable_tx.subscribe();
        let mut appender = Appender {
            url: url.to_owned(),
            config: config.clone(),
            rx,
            budget: budget.clone(),
            durable_tx,
            client: None,
            writer_pid: None,
            statements: None,
            next_seq: 1,
            checkpoints: BTreeMap::new(),
            tenants_of: HashMap::new(),
            hub,
            stages: Vec::new(),
            counts: Arc::default(),
        };
        appender.reconnect().await?;
        let handle = AppenderHandle {
            tx,
            budget,
            max_item_permits: u32::try_from(QUEUE_BYTES / 4).unwrap_or(u32::MAX),
            durable: durable_rx,
        };
        Ok((appender, handle))
    }

    /// Counts appended events into `counts` (read by `/metrics`).
    pub fn set_counts(&mut self, counts: Arc<AppendCounts>) {
        self.counts = counts;
    }

    /// Runs `stage` in every append transaction from now on, after the
    /// stages added before it.
    pub fn add_stage(&mut self, stage: Arc<dyn AppendStage>) {
        self.stages.push(stage);
    }

    /// Loads a source's checkpoint from the log (sources call this once at
    /// start, before sending anything).
    pub async fn checkpoint(&mut self, source: &Arc<str>) -> Result<Checkpoint, LogError> {
        let client = self.client.as_ref().ok_or(LogError::Closed)?;
        let cp = checkpoint::load(client, source).await?;
        self.checkpoints.insert(source.clone(), cp.clone());
        self.publish();
        Ok(cp)
    }

    async fn reconnect(&mut self) -> Result<(), LogError> {
        self.client = None;
        self.writer_pid = None;
        self.statements = None;
        let client = connect_as(&self.url, APPENDER_APPLICATION).await?;
        let row = client
            .query_one(
                "SELECT pg_try_advisory_lock($1), pg_backend_pid()",
                &[&APPENDER_LOCK_KEY],
            )
            .await?;
        let locked: bool = row.get(0);
        if !locked {
            return Err(LogError::AnotherWriter(APPENDER_LOCK_KEY));
        }
        // Above every seq ever handed out: the log's own, and those retention
        // already pruned (an emptied log must not restart at 1).
        let last = super::read::head(&client).await?;
        self.next_seq = last + 1;
        for (source, cp) in self.checkpoints.iter_mut() {
            *cp = checkpoint::load(&client, source).await?;
        }
        self.statements = Some(Statements::prepare(&client).await?);
        self.client = Some(client);
        self.writer_pid = Some(row.get(1));
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        self.durable_tx.send_replace(Arc::new(Durable {
            last_seq: self.next_seq - 1,
            checkpoints: self.checkpoints.clone(),
            writer_pid: self.writer_pid,
        }));
    }

    /// Runs until every handle is dropped (then flushes what was queued) or
    /// `shutdown` fires (then flushes what was already queued and returns).
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), LogError> {
        let mut items: Vec<Queued> = Vec::with_capacity(self.config.max_batch_events);
        loop {
            items.clear();
            let n = tokio::select! {
                n = self.rx.recv_many(&mut items, self.config.max_batch_events) => n,
                _ = shutdown.cancelled() => {
                    self.rx.close();
                    self.rx.recv_many(&mut items, self.config.max_batch_events).await
                }
            };
            if n == 0 {
                // Let the next writer in at once rather than when this
                // session's backend has gone.
                if let Some(c) = &self.client {
                    let _ = c
                        .execute("SELECT pg_advisory_unlock($1)", &[&APPENDER_LOCK_KEY])
                        .await;
                }
                return Ok(());
            }
            let mut bytes = items.iter().map(|q| q.item.bytes()).sum();
            self.fill(&mut items, &mut bytes);
            self.take_rest_of_transaction(&mut items, bytes, &shutdown)
                .await;
            let permits: usize = items.iter().map(|q| q.permits as usize).sum();
            self.append_with_retry(&mut items, &shutdown).await?;
            self.budget.add_permits(permits);
        }
    }

    /// Takes more waiting items, up to the batch bounds, without waiting.
    /// `bytes` is what `items` holds, kept up to date.
    fn fill(&mut self, items: &mut Vec<Queued>, bytes: &mut usize) {
        while items.len() < self.config.max_batch_events && *bytes < self.config.max_batch_bytes {
            match self.rx.try_recv() {
                Ok(item) => {
                    *bytes += item.item.bytes();
                    items.push(item);
                }
                Err(_) => break,
            }
        }
    }

    /// While the batch ends inside a source transaction (its last item is
    /// an event of a transaction whose end has not come), takes the rest of
    /// that transaction as it arrives, up to the batch bounds and for at
    /// most [`TX_LINGER`], then what else is waiting. That transaction
    /// already committed at the source and the rest of it is on its way:
    /// appended whole, it makes whole record batches and one commit
    /// instead of several. Only that one transaction is waited for (never
    /// the next one behind it), and a lone change (its end follows it) and
    /// an event without a transaction never wait.
    async fn take_rest_of_transaction(
        &mut self,
        items: &mut Vec<Queued>,
        mut bytes: usize,
        shutdown: &CancellationToken,
    ) {
        let Some((source, txid)) = open_transaction(items) else {
            return;
        };
        let deadline = tokio::time::Instant::now() + TX_LINGER;
        while items.len() < self.config.max_batch_events
            && bytes < self.config.max_batch_bytes
            && !shutdown.is_cancelled()
        {
            let next = tokio::select! {
                next = tokio::time::timeout_at(deadline, self.rx.recv()) => next,
                _ = shutdown.cancelled() => break,
            };
            let Ok(Some(q)) = next else { break };
            let before = items.len();
            bytes += q.item.bytes();
            items.push(q);
            // What else arrived meanwhile, in one go (a wait per item would
            // cost a timer each).
            self.fill(items, &mut bytes);
            let ended = items
                .get(before..)
                .unwrap_or_default()
                .iter()
                .any(|q| ends_transaction(&q.item, &source, txid));
            if ended {
                break;
            }
        }
    }

    async fn append_with_retry(
        &mut self,
        batch: &mut [Queued],
        shutdown: &CancellationToken,
    ) -> Result<(), LogError> {
        let mut expected = self.checkpoints.clone();
        advance_checkpoints(&mut expected, batch.iter().map(|q| &q.item));
        let mut backoff = Duration::from_millis(100);
        loop {
            let result = match self.client.as_mut() {
                Some(_) => self.append(batch, &expected).await,
                None => Err(LogError::Closed),
            };
            let err = match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() || matches!(e, LogError::Closed) => e,
                Err(e) => return Err(e),
            };
            tracing::warn!(error = %err, "append failed; reconnecting to the state database");
            self.client = None;
            self.tenants_of.clear();
            loop {
                if shutdown.is_cancelled() && backoff >= Duration::from_secs(5) {
                    return Err(err);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                match self.reconnect().await {
                    Ok(()) => break,
                    Err(LogError::AnotherWriter(k)) => return Err(LogError::AnotherWriter(k)),
                    Err(e) => tracing::warn!(error = %e, "state database still unreachable"),
                }
            }
            // The lost attempt may have committed: the checkpoints say, since
            // they are written in the same transaction as the events.
            if self.committed(&expected).await? {
                tracing::info!("the interrupted append had committed; not appending it again");
                if let Some(hub) = &self.hub {
                    // Which seqs that batch got is not known here: everyone
                    // reads it from the log instead of missing it live.
                    hub.lag_everyone();
                }
                self.checkpoints = expected;
                self.publish();
                return Ok(());
            }
        }
    }

    /// Whether the log's checkpoints are those `expected` after a batch.
    async fn committed(&self, expected: &BTreeMap<Arc<str>, Checkpoint>) -> Result<bool, LogError> {
        let client = self.client.as_ref().ok_or(LogError::Closed)?;
        for (source, cp) in expected {
            if checkpoint::load(client, source).await? != *cp {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// One batch in one transaction: index relations, copy the events,
    /// store the checkpoints, run the stages, wake the standbys, commit;
    /// then make the new state known ([`Appender::committed_batch`]).
    async fn append(
        &mut self,
        batch: &mut [Queued],
        expected: &BTreeMap<Arc<str>, Checkpoint>,
    ) -> Result<(), LogError> {
        let result = self.append_once(batch, expected).await;
        if result.is_err() {
            // The session may be inside the failed transaction (this
            // append does not use a `Transaction` guard, whose drop would
            // roll back): it is not used again.
            self.client = None;
        }
        result
    }

    /// [`Appender::append`]'s transaction, in three round trips when no
    /// stage needs more: BEGIN with the COPY's start; the COPY's end with
    /// the checkpoints, the stages and the NOTIFY; COMMIT.
    /// tokio-postgres sends the requests of concurrent futures on one
    /// connection in the order they were first polled, and Postgres runs
    /// them in that order, so sending them together changes no order. Any
    /// error is seen before COMMIT is sent; after an error the transaction
    /// is aborted at the server and the caller drops the session.
    async fn append_once(
        &mut self,
        batch: &mut [Queued],
        expected: &BTreeMap<Arc<str>, Checkpoint>,
    ) -> Result<(), LogError> {
        let want_events = self.hub.is_some() || self.stages.iter().any(|s| s.wants_events());
        let client = self.client.as_ref().ok_or(LogError::Closed)?;
        let statements = self.statements.as_ref().ok_or(LogError::Closed)?;
        let (next_seq, group_by_tenant) = (self.next_seq, self.config.group_by_tenant);
        let (tenants_of, batch_ref) = (&self.tenants_of, &*batch);
        let ((), (index, (copied, sink))) =
            futures_util::try_join!(client.batch_execute("BEGIN"), async {
                let index = index_relations(client, statements, tenants_of, batch_ref).await?;
                let copied = copy_events(
                    client,
                    statements,
                    batch_ref,
                    next_seq,
                    &index.truncated,
                    want_events,
                    group_by_tenant,
                )
                .await?;
                Ok((index, copied))
            },)?;
        let head = (copied.next_seq > next_seq).then(|| (copied.next_seq - 1).to_string());
        let notify = async {
            if let Some(head) = &head {
                // Wakes the other processes serving this log (standbys feed
                // their live subscribers from it); delivered at commit.
                client
                    .execute(&statements.notify, &[&super::NOTIFY_CHANNEL, head])
                    .await?;
            }
            Ok::<(), tokio_postgres::Error>(())
        };
        let mut sink = sink;
        let (_, (), ran, ()) = futures_util::try_join!(
            sink.as_mut().finish(),
            store_checkpoints(client, statements, &self.checkpoints, expected),
            run_stages(client, &self.stages, batch_ref, &copied),
            notify,
        )?;
        client.batch_execute("COMMIT").await?;
        self.committed_batch(batch, copied, index.new_pairs, expected, &ran);
        Ok(())
    }

    /// After COMMIT: the stages' follow-ups, the new durable state, then the
    /// hub.
    fn committed_batch(
        &mut self,
        batch: &[Queued],
        copied: Copied,
        new_pairs: BTreeSet<(Arc<str>, TenantId)>,
        expected: &BTreeMap<Arc<str>, Checkpoint>,
        ran: &[bool],
    ) {
        for (stage, _) in self.stages.iter().zip(ran).filter(|(_, r)| **r) {
            stage.committed();
        }
        self.next_seq = copied.next_seq;
        self.checkpoints = expected.clone();
        self.counts.add(&copied.counted);
        for (rel, t) in new_pairs {
            self.tenants_of.entry(rel).or_default().insert(t);
        }
        self.publish();
        if let Some(hub) = &self.hub {
            // Asked after the durable head moved (`self.publish()` above): a
            // follower that registers after this question finds these seqs
            // under the head and reads them from the log; one that registered
            // before is wanted here. Asking before the commit would lose the
            // events of a follower registering in between.
            let events: Vec<Arc<Committed>> = copied
                .events
                .into_iter()
                .filter(|e| hub.wants(&e.tenant))
                .filter_map(|e| {
                    let event = event_at(batch, e.item, e.member)?;
                    Some(Arc::new(Committed {
                        seq: e.seq,
                        body: Bytes::from(event.envelope_json(e.seq, &e.tenant)),
                        tenant: e.tenant,
                        topic: event.topic.clone(),
                        event_type: event.event_type.clone(),
                        commit_micros: event.time_micros,
                    }))
                })
                .collect();
            if !events.is_empty() {
                hub.publish(&events);
            }
        }
    }
}

/// The relation→tenant index after a batch's first step.
struct RelationIndex {
    /// (relation, tenant) pairs first seen in this batch, inserted in its
    /// transaction and remembered once it commits.
    new_pairs: BTreeSet<(Arc<str>, TenantId)>,
    /// Every tenant with rows in each relation a TRUNCATE of the batch
    /// empties (the TRUNCATE's audience).
    truncated: HashMap<Arc<str>, Vec<TenantId>>,
}

/// Indexes the batch's (relation, tenant) pairs, then reads the audience
/// of each TRUNCATE, in that order, so a TRUNCATE in the same batch reaches
/// a tenant whose first row is in it too.
async fn index_relations(
    tx: &Client,
    statements: &Statements,
    known: &HashMap<Arc<str>, BTreeSet<TenantId>>,
    batch: &[Queued],
) -> Result<RelationIndex, tokio_postgres::Error> {
    let mut new_pairs: BTreeSet<(Arc<str>, TenantId)> = BTreeSet::new();
    let mut truncated_relations: BTreeSet<Arc<str>> = BTreeSet::new();
    for event in batch.iter().flat_map(|q| q.item.events()) {
        match (&event.audience, &event.relation) {
            (Audience::Tenant(t), Some(rel)) => {
                if !known.get(rel).is_some_and(|s| s.contains(t)) {
                    new_pairs.insert((rel.clone(), t.clone()));
                }
            }
            (Audience::Tenant(_), None) => {}
            (Audience::TenantsOfRelation(rel), _) => {
                truncated_relations.insert(rel.clone());
            }
        }
    }
    if !new_pairs.is_empty() {
        let rels: Vec<&str> = new_pairs.iter().map(|(r, _)| &**r).collect();
        let tenants: Vec<&str> = new_pairs.iter().map(|(_, t)| t.as_str()).collect();
        tx.execute(&statements.relation_tenants, &[&rels, &tenants])
            .await?;
    }
    let mut truncated = HashMap::new();
    for rel in truncated_relations {
        let rows = tx.query(&statements.tenants_of_relation, &[&&*rel]).await?;
        let tenants = rows
            .iter()
            .filter_map(|r| TenantId::new(r.get::<_, &str>(0)).ok())
            .collect();
        truncated.insert(rel, tenants);
    }
    Ok(RelationIndex {
        new_pairs,
        truncated,
    })
}

/// One event of a batch with the seq it was given.
struct Placed {
    seq: i64,
    tenant: TenantId,
    /// Index of its item in the batch.
    item: usize,
    /// Index of the event in its item (backfill chunks hold many).
    member: usize,
}

/// What copying a batch's events produced.
struct Copied {
    /// The seq after the batch's last event.
    next_seq: i64,
    /// Every event with its seq, in seq order (empty unless asked for).
    events: Vec<Placed>,
    /// Events per (source, type), in runs.
    counted: Vec<(SourceType, u64)>,
    /// Per backfill chunk: (item index, first seq, events emitted).
    chunks: Vec<(usize, i64, i64)>,
}

/// COPYs every event of the batch into the log, giving seqs from
/// `next_seq` on: the events of one source transaction become record
/// batches (per tenant, each tenant's events in their order; a lone event
/// is an ordinary row), a TRUNCATE one row per tenant of its relation, a
/// backfill chunk its record batches.
async fn copy_events(
    tx: &Client,
    statements: &Statements,
    batch: &[Queued],
    next_seq: i64,
    truncated: &HashMap<Arc<str>, Vec<TenantId>>,
    want_events: bool,
    group_by_tenant: bool,
) -> Result<(Copied, Pin<Box<CopyInSink<Bytes>>>), tokio_postgres::Error> {
    let mut sink = Box::pin(tx.copy_in::<_, Bytes>(&statements.copy).await?);
    let mut buf = BytesMut::with_capacity(COPY_BUFFER + COPY_BUFFER / 4);
    buf.extend_from_slice(copy::HEADER);
    let mut seq = next_seq;
    let capacity = if want_events {
        batch.iter().map(|q| q.item.events().len()).sum()
    } else {
        0
    };
    let mut placed = PlacedEvents {
        want: want_events,
        events: Vec::with_capacity(capacity),
    };
    // Runs of one (source, type): consecutive events mostly share it, so
    // counting costs a comparison per event.
    let mut counted: Vec<(SourceType, u64)> = Vec::new();
    let mut chunks: Vec<(usize, i64, i64)> = Vec::new();
    let mut i = 0;
    while i < batch.len() {
        let Some(q) = batch.get(i) else { break };
        match &q.item {
            AppendItem::BackfillChunk {
                events, batches, ..
            } => {
                let first = seq;
                if let Some(e) = events.first() {
                    counted.push((
                        (e.source.clone(), e.event_type.clone()),
                        events.len() as u64,
                    ));
                }
                let built;
                let batches = match batches {
                    Some(b) => b,
                    None => {
                        built = Batcher::of(events);
                        &built
                    }
                };
                // A chunk's batch members are its events.
                let at = |j: usize| (i, j);
                copy_batches(
                    sink.as_mut(),
                    &mut buf,
                    &mut seq,
                    batch,
                    batches,
                    at,
                    &mut placed,
                )
                .await?;
                chunks.push((i, first, seq - first));
                i += 1;
            }
            AppendItem::Event { event, .. } => {
                let end = transaction_run_end(batch, i, group_by_tenant);
                for q in batch.get(i..end).unwrap_or_default() {
                    if let AppendItem::Event { event, .. } = &q.item {
                        match counted.last_mut() {
                            Some(((s, t), n)) if *s == event.source && *t == event.event_type => {
                                *n += 1
                            }
                            _ => {
                                counted.push(((event.source.clone(), event.event_type.clone()), 1))
                            }
                        }
                    }
                }
                if end > i + 1 {
                    // Several events of one source transaction: record
                    // batches, per tenant, as a backfill chunk's.
                    let mut batcher = Batcher::new();
                    for (k, q) in batch.get(i..end).unwrap_or_default().iter().enumerate() {
                        if let AppendItem::Event { event, .. } = &q.item {
                            batcher.push(i + k, event);
                        }
                    }
                    // A transaction's batch members are items of the batch.
                    let at = |j: usize| (j, 0);
                    let batches = batcher.finish();
                    copy_batches(
                        sink.as_mut(),
                        &mut buf,
                        &mut seq,
                        batch,
                        &batches,
                        at,
                        &mut placed,
                    )
                    .await?;
                } else {
                    let tenants: &[TenantId] = match &event.audience {
                        Audience::Tenant(t) => std::slice::from_ref(t),
                        Audience::TenantsOfRelation(rel) => {
                            truncated.get(rel).map_or(&[], |v| v.as_slice())
                        }
                    };
                    for tenant in tenants {
                        copy::encode_row(&mut buf, seq, tenant, event);
                        placed.push(seq, tenant, i, 0);
                        seq += 1;
                    }
                    if buf.len() >= COPY_BUFFER {
                        send_copy(sink.as_mut(), &mut buf, true).await?;
                    }
                }
                i = end;
            }
            AppendItem::Progress { .. } | AppendItem::TxEnd { .. } => i += 1,
        }
    }
    buf.extend_from_slice(copy::TRAILER);
    send_copy(sink.as_mut(), &mut buf, false).await?;
    Ok((
        Copied {
            next_seq: seq,
            events: placed.events,
            counted,
            chunks,
        },
        sink,
    ))
}

/// The events copied so far with their seqs, when the caller wants them.
struct PlacedEvents {
    want: bool,
    events: Vec<Placed>,
}

impl PlacedEvents {
    fn push(&mut self, seq: i64, tenant: &TenantId, item: usize, member: usize) {
        if self.want {
            self.events.push(Placed {
                seq,
                tenant: tenant.clone(),
                item,
                member,
            });
        }
    }
}

/// Copies record batches from `*seq` on (a lone event as an ordinary row),
/// each tagged with its first event's tenant and header; `at` maps a
/// batch member to (item, member) in `batch`. The one path of backfill
/// chunks and live transactions.
async fn copy_batches(
    mut sink: std::pin::Pin<&mut tokio_postgres::CopyInSink<Bytes>>,
    buf: &mut BytesMut,
    seq: &mut i64,
    batch: &[Queued],
    batches: &[PreBatch],
    at: impl Fn(usize) -> (usize, usize),
    placed: &mut PlacedEvents,
) -> Result<(), tokio_postgres::Error> {
    for b in batches {
        let Some((i, j)) = b.members.first().map(|&m| at(m)) else {
            continue;
        };
        let Some(head) = event_at(batch, i, j) else {
            continue;
        };
        let Audience::Tenant(tenant) = &head.audience else {
            continue;
        };
        if b.members.len() == 1 {
            copy::encode_row(buf, *seq, tenant, head);
        } else {
            copy::encode_batch(buf, *seq, tenant, head, b.members.len(), &b.data);
        }
        for &m in &b.members {
            let (i, j) = at(m);
            placed.push(*seq, tenant, i, j);
            *seq += 1;
        }
        if buf.len() >= COPY_BUFFER {
            send_copy(sink.as_mut(), buf, true).await?;
        }
    }
    Ok(())
}

/// The end of the run of event items from `start` that may share record
/// batches: events of one source transaction (same source, txid, commit
/// LSN and time), each for one tenant, and unless `group_by_tenant` all of
/// the same tenant (so grouping reorders nothing). A transaction's end
/// (its `TxEnd`), another source's item or a TRUNCATE ends the run, so a
/// batch never spans a commit; it holds what this append has. Events
/// without a transaction (MongoDB's) run alone.
fn transaction_run_end(batch: &[Queued], start: usize, group_by_tenant: bool) -> usize {
    let Some(AppendItem::Event {
        source: first_source,
        event: first,
        ..
    }) = batch.get(start).map(|q| &q.item)
    else {
        return start + 1;
    };
    if first.txid.is_none() || first.lsn.is_none() || !matches!(first.audience, Audience::Tenant(_))
    {
        return start + 1;
    }
    let mut end = start + 1;
    while let Some(AppendItem::Event { source, event, .. }) = batch.get(end).map(|q| &q.item) {
        let same_tenant = match (&event.audience, &first.audience) {
            (Audience::Tenant(a), Audience::Tenant(b)) => group_by_tenant || a == b,
            _ => false,
        };
        let same = same_tenant
            && event.txid == first.txid
            && event.lsn == first.lsn
            && event.time_micros == first.time_micros
            && **source == **first_source;
        if !same {
            break;
        }
        end += 1;
    }
    end
}

/// Writes each checkpoint the batch moved.
async fn store_checkpoints(
    tx: &Client,
    statements: &Statements,
    before: &BTreeMap<Arc<str>, Checkpoint>,
    after: &BTreeMap<Arc<str>, Checkpoint>,
) -> Result<(), tokio_postgres::Error> {
    for (source, cp) in after {
        if before.get(source) != Some(cp) {
            checkpoint::store(tx, &statements.checkpoint, source, cp).await?;
        }
    }
    Ok(())
}

/// Runs every stage in order inside the transaction; returns, per stage,
/// whether it wants its [`AppendStage::committed`] call.
async fn run_stages(
    tx: &Client,
    stages: &[Arc<dyn AppendStage>],
    batch: &[Queued],
    copied: &Copied,
) -> Result<Vec<bool>, tokio_postgres::Error> {
    if stages.is_empty() {
        return Ok(Vec::new());
    }
    let chunks: Vec<AppendedChunk<'_>> = copied
        .chunks
        .iter()
        .filter_map(|&(i, first, emitted)| match &batch.get(i)?.item {
            AppendItem::BackfillChunk {
                backfill,
                after,
                last_key,
                rows_read,
                ..
            } => Some(AppendedChunk {
                backfill: *backfill,
                after: after.as_deref(),
                last_key,
                rows_read: *rows_read,
                first_seq: (emitted > 0).then_some(first),
                emitted,
            }),
            _ => None,
        })
        .collect();
    let events: Vec<(i64, &TenantId, &PendingEvent)> = copied
        .events
        .iter()
        .filter_map(|e| Some((e.seq, &e.tenant, event_at(batch, e.item, e.member)?)))
        .collect();
    let appended = Appended {
        events: &events,
        chunks: &chunks,
    };
    let mut ran = Vec::with_capacity(stages.len());
    for stage in stages {
        ran.push(stage.in_transaction(tx, &appended).await?);
    }
    Ok(ran)
}

/// Sends all of `buf` in CopyData messages of at most [`COPY_CHUNK`] bytes
/// (slices of the one buffer, not copies). With `more` to come, `buf` is
/// replaced by a fresh buffer rather than left with the rest of this one:
/// growing a buffer still shared with the bytes in flight copies them.
async fn send_copy(
    mut sink: std::pin::Pin<&mut tokio_postgres::CopyInSink<Bytes>>,
    buf: &mut BytesMut,
    more: bool,
) -> Result<(), tokio_postgres::Error> {
    let mut all = if more {
        std::mem::replace(buf, BytesMut::with_capacity(COPY_BUFFER + COPY_BUFFER / 4))
    } else {
        buf.split()
    }
    .freeze();
    while !all.is_empty() {
        let piece = all.split_to(all.len().min(COPY_CHUNK));
        sink.as_mut().feed(piece).await?;
    }
    sink.flush().await
}

/// The statements of every append transaction, prepared once per
/// connection rather than parsed and planned in each.
struct Statements {
    copy: tokio_postgres::Statement,
    relation_tenants: tokio_postgres::Statement,
    tenants_of_relation: tokio_postgres::Statement,
    checkpoint: tokio_postgres::Statement,
    notify: tokio_postgres::Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Statements, tokio_postgres::Error> {
        Ok(Statements {
            copy: client.prepare(copy::COPY_STATEMENT).await?,
            relation_tenants: client
                .prepare(
                    "INSERT INTO sluice.relation_tenants (relation, tenant)
                     SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
                )
                .await?,
            tenants_of_relation: client
                .prepare(
                    "SELECT tenant FROM sluice.relation_tenants WHERE relation = $1 ORDER BY tenant",
                )
                .await?,
            checkpoint: client.prepare(checkpoint::STORE).await?,
            notify: client.prepare("SELECT pg_notify($1, $2)").await?,
        })
    }
}

/// The checkpoints after `batch`, starting from `cps`: each item moves its
/// source's by [`Checkpoint::advance`].
fn advance_checkpoints<'a>(
    cps: &mut BTreeMap<Arc<str>, Checkpoint>,
    batch: impl IntoIterator<Item = &'a AppendItem>,
) {
    for item in batch {
        let (AppendItem::Event { source, .. }
        | AppendItem::Progress { source, .. }
        | AppendItem::BackfillChunk { source, .. }
        | AppendItem::TxEnd { source, .. }) = item;
        if let Some(cp) = cps.get_mut(source) {
            cp.advance(item);
            continue;
        }
        // An item that moves nothing creates no entry (so no checkpoint
        // row is written for it).
        let mut cp = Checkpoint::default();
        if cp.advance(item) {
            cps.insert(source.clone(), cp);
        }
    }
}

/// The `j`th event of the `i`th item.
fn event_at(batch: &[Queued], i: usize, j: usize) -> Option<&PendingEvent> {
    match &batch.get(i)?.item {
        AppendItem::Event { event, .. } => Some(event),
        AppendItem::BackfillChunk { events, .. } => events.get(j),
        AppendItem::TxEnd { .. } | AppendItem::Progress { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(commit_lsn: u64, ordinal: u64) -> PendingEvent {
        PendingEvent {
            position: SourcePosition {
                commit_lsn,
                ordinal,
            },
            ..copy::test_event("a", None, "{}")
        }
    }

    fn chunk(src: &Arc<str>, events: Vec<PendingEvent>) -> AppendItem {
        AppendItem::BackfillChunk {
            source: src.clone(),
            events,
            batches: None,
            backfill: 1,
            after: None,
            last_key: vec![Some("1".into())],
            rows_read: 1,
        }
    }

    fn queued(item: AppendItem) -> Queued {
        Queued { item, permits: 1 }
    }

    fn live(src: &Arc<str>, tenant: &str, txid: Option<u64>) -> Queued {
        queued(AppendItem::Event {
            source: src.clone(),
            event: PendingEvent {
                txid,
                lsn: txid.map(|t| t * 100),
                ..copy::test_event(tenant, None, "{}")
            },
            token: None,
        })
    }

    #[test]
    fn batches_never_span_a_commit_a_source_or_an_event_without_a_transaction() {
        let a: Arc<str> = "pg/a".into();
        let b: Arc<str> = "pg/b".into();
        let batch = vec![
            live(&a, "x", Some(1)),
            live(&a, "y", Some(1)),
            live(&a, "x", Some(1)),
            queued(AppendItem::TxEnd {
                source: a.clone(),
                commit_lsn: 100,
                end_lsn: 108,
            }),
            live(&a, "x", Some(2)),
            live(&b, "x", Some(2)),
            live(&a, "x", Some(2)),
            live(&a, "x", None),
            live(&a, "x", None),
            live(&a, "x", Some(3)),
            live(&a, "x", Some(4)),
        ];
        let ends: Vec<usize> = [0, 4, 5, 6, 7, 8, 9, 10]
            .iter()
            .map(|&i| transaction_run_end(&batch, i, true))
            .collect();
        assert_eq!(ends, vec![3, 5, 6, 7, 8, 9, 10, 11]);
        // Ungrouped: a run is one tenant's consecutive events.
        let ends: Vec<usize> = [0, 1, 2]
            .iter()
            .map(|&i| transaction_run_end(&batch, i, false))
            .collect();
        assert_eq!(ends, vec![1, 2, 3]);
    }

    #[test]
    fn only_the_open_transaction_is_waited_for() {
        let a: Arc<str> = "pg/a".into();
        let b: Arc<str> = "pg/b".into();
        assert_eq!(
            open_transaction(&[live(&a, "x", Some(1)), live(&a, "x", Some(2))]),
            Some((a.clone(), 2))
        );
        assert_eq!(
            open_transaction(&[live(&a, "x", None)]),
            None,
            "no transaction"
        );
        let ended = queued(AppendItem::TxEnd {
            source: a.clone(),
            commit_lsn: 100,
            end_lsn: 108,
        });
        assert_eq!(open_transaction(std::slice::from_ref(&ended)), None);
        assert!(ends_transaction(&ended.item, &a, 1));
        assert!(
            !ends_transaction(&ended.item, &b, 1),
            "another source's end"
        );
        assert!(!ends_transaction(&live(&a, "y", Some(1)).item, &a, 1));
        assert!(ends_transaction(&live(&a, "x", Some(2)).item, &a, 1));
        assert!(!ends_transaction(&live(&b, "x", Some(2)).item, &a, 1));
    }

    // The rule itself is tested in `checkpoint`; these test how a batch
    // applies it per source.
    #[test]
    fn batch_checkpoints_are_kept_per_source() {
        let a: Arc<str> = "pg/a".into();
        let b: Arc<str> = "pg/b".into();
        let mut cps = BTreeMap::new();
        advance_checkpoints(
            &mut cps,
            &[
                AppendItem::Event {
                    source: a.clone(),
                    event: event(10, 1),
                    token: None,
                },
                AppendItem::TxEnd {
                    source: b.clone(),
                    commit_lsn: 30,
                    end_lsn: 38,
                },
                AppendItem::Event {
                    source: a.clone(),
                    event: event(10, 2),
                    token: None,
                },
            ],
        );
        assert_eq!(cps.len(), 2);
        assert_eq!(
            cps[&a].position,
            SourcePosition {
                commit_lsn: 10,
                ordinal: 2
            }
        );
        assert!(!cps[&a].complete);
        assert_eq!(cps[&b].position.commit_lsn, 30);
        assert_eq!(cps[&b].ack_lsn, 38);
    }

    #[test]
    fn an_item_that_moves_nothing_creates_no_checkpoint() {
        let src: Arc<str> = "pg/main".into();
        let mut cps = BTreeMap::new();
        advance_checkpoints(&mut cps, &[chunk(&src, Vec::new())]);
        assert!(cps.is_empty());
        // Nor does it change an existing one.
        advance_checkpoints(&mut cps, &[chunk(&src, vec![event(10, 4)])]);
        let before = cps[&src].clone();
        advance_checkpoints(&mut cps, &[chunk(&src, Vec::new())]);
        assert_eq!(cps[&src], before);
    }
}
