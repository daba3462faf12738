//! Live queries: the rows of a table a subscriber may see, then every
//! change to them, with no gap and no duplicate between the two.
//!
//! How the hand-over is exact (no watermark in the stream is needed):
//! 1. `S`, the log's durable head, is read first: every event at or below
//!    it was committed at the source before what follows.
//! 2. On the source, a `REPEATABLE READ` transaction takes its snapshot
//!    (`txid_current_snapshot()`: `xmin:xmax:xip`): it sees exactly the
//!    transactions that committed before it.
//! 3. On another connection, `X = pg_current_wal_insert_lsn()` and a
//!    heartbeat message are written in one statement: every commit the
//!    snapshot sees is before `X` in the WAL, and the heartbeat after it
//!    (its transaction's commit flushes it). This and step 5 run while
//!    step 4 reads.
//! 4. The snapshot's rows of the tenant are read in primary-key pages
//!    (parameterised: the tenant and the keyset bound are parameters), each
//!    row turned into a `row.snapshot` envelope by the pipeline's own
//!    normalizer and held to the subscriber's policy and filter.
//! 5. Once the log's checkpoint for the source reaches `X` (the heartbeat
//!    moves it), the log holds every transaction the snapshot sees; `H`,
//!    the head read together with that checkpoint, is the hand-over point.
//! 6. The log's events in `(S, H]` are delivered except those of
//!    transactions the snapshot already saw (their xid is before `xmax` and
//!    not in `xip`); events after `H` all committed after `X`, so none is
//!    in the snapshot: the stream goes on from `H + 1` as any other.
//!
//! Frames before `synced` carry no resume id, so a client that reconnects
//! before it starts over with the snapshot; `synced` carries `H`.
//!
//! `live_top` builds top-N queries (`order_by`, `limit`) on the same
//! snapshot and hand-over.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::backfill::{table_info, TableInfo};
use crate::event::{Committed, TenantId};
use crate::log::{Durable, ReadScope};
use crate::policy::Access;
use crate::source::postgres::catalog::Catalog;
use crate::source::postgres::messages::HEARTBEAT_PREFIX;
use crate::source::postgres::normalize::{Normalizer, Outcome, TableRule, TxContext};
use crate::source::postgres::pgoutput::{Datum, Tuple};
use crate::sql::quote_ident;
use crate::subscription::filter::{Filter, PushedColumn};

/// Rows read per page of the initial read.
pub(super) const PAGE_ROWS: i64 = 2500;
/// How long the hand-over may wait for the log to reach the snapshot.
const HANDOVER_WAIT: Duration = Duration::from_secs(30);
/// The session settings the values' text forms depend on (as the
/// replication session pins them, `source::postgres::stream`).
const SESSION_SETTINGS: &str = "SET LOCAL DateStyle = ISO; SET LOCAL TimeZone = 'UTC';
     SET LOCAL IntervalStyle = postgres; SET LOCAL extra_float_digits = 1;
     SET LOCAL bytea_output = hex; SET LOCAL lc_monetary = 'C'";

/// What live queries need from the process.
pub struct LiveConfig {
    /// The source database's URL (a connection per initial read).
    pub source_url: String,
    /// Connections to the source, for the heartbeat.
    pub source: deadpool_postgres::Pool,
    /// The state database (the log).
    pub log: deadpool_postgres::Pool,
    pub durable: watch::Receiver<Arc<Durable>>,
    /// The Postgres source's name in envelopes, and its checkpoint key.
    pub event_source: String,
    pub checkpoint_key: String,
    /// Most rows one initial read may return (`http.max_snapshot_rows`).
    pub max_rows: u64,
    /// How long a finished read is handed to new subscribers of the same
    /// shape (`http.live_share_ms`): a reconnect storm within it costs one
    /// read.
    pub share: Duration,
    /// `statement_timeout` of the page queries (0: none).
    pub statement_timeout_ms: u64,
    /// The captured tables (`schema.table`) and their rules.
    pub tables: Vec<(String, TableRule)>,
}

/// Live queries of this process: the reads in flight or just done, shared
/// by subscribers of the same shape, and their counters.
pub struct Live {
    config: LiveConfig,
    shapes: Mutex<HashMap<ShapeKey, Arc<Slot>>>,
    pub metrics: LiveMetrics,
}

/// Counters of `/metrics`.
#[derive(Debug, Default)]
pub struct LiveMetrics {
    /// Live queries started.
    pub started: AtomicU64,
    /// Initial reads of the source (one per shape, however many share it).
    pub reads: AtomicU64,
    /// Rows those reads returned.
    pub rows_read: AtomicU64,
    /// Live queries that were handed a read another one started.
    pub shared: AtomicU64,
}

/// What makes two live queries read the same rows: the tenant, the table,
/// and what is pushed down to SQL (the filter, over the columns the
/// policy shows).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ShapeKey {
    tenant: TenantId,
    table: String,
    filter: String,
    visible: String,
}

/// One read of a shape, shared by its subscribers while it runs and for
/// the share window after: the rows so far (they go out as they come),
/// then how it ended.
struct Slot {
    rows: std::sync::RwLock<Vec<Arc<Committed>>>,
    progress: watch::Sender<Progress>,
}

#[derive(Debug, Clone, Default)]
struct Progress {
    /// Rows in `Slot::rows` so far.
    rows: usize,
    end: Option<Result<Arc<Ending>, LiveError>>,
}

/// How a read ended: the log's changes the snapshot did not see up to the
/// hand-over, and the hand-over seq. Nothing here (nor in the rows) is
/// held to a subscriber's policy yet.
#[derive(Debug)]
struct Ending {
    changes: Vec<Arc<Committed>>,
    handover: i64,
    done: Instant,
}

impl Slot {
    /// Whether a subscriber arriving now may take this read.
    fn shareable(&self, window: Duration) -> bool {
        match &self.progress.borrow().end {
            None => true,
            Some(Ok(e)) => e.done.elapsed() < window,
            Some(Err(_)) => false,
        }
    }
}

/// The captured table a live query reads.
#[derive(Debug, Clone)]
pub struct LiveTable {
    pub schema: String,
    pub table: String,
    pub rule: TableRule,
}

/// What a live query sends, in order: rows, changes, then `Synced`.
#[derive(Debug)]
pub enum LiveItem {
    /// A current row, as a `row.snapshot` envelope (`seq` 0: not a log
    /// event).
    Row(Arc<Committed>),
    /// A change between the snapshot and the hand-over.
    Change(Arc<Committed>),
    /// The stream is at the log's seq `H`: changes follow from `H + 1`.
    Synced(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LiveError {
    #[error("the initial read would return more than {0} rows (http.max_snapshot_rows); narrow the filter")]
    TooLarge(u64),
    #[error("{0}")]
    Table(String),
    #[error("{0} is unavailable; retry shortly")]
    Unavailable(&'static str),
}

impl LiveError {
    /// The `code` clients see.
    pub fn code(&self) -> &'static str {
        match self {
            LiveError::TooLarge(_) => "snapshot_too_large",
            LiveError::Table(_) => "snapshot_unavailable",
            LiveError::Unavailable(_) => "unavailable",
        }
    }
}

impl Live {
    pub fn new(config: LiveConfig) -> Live {
        Live {
            config,
            shapes: Mutex::new(HashMap::new()),
            metrics: LiveMetrics::default(),
        }
    }

    pub(super) fn config(&self) -> &LiveConfig {
        &self.config
    }

    /// The captured table `schema.table`, if it is one.
    pub fn table(&self, name: &str) -> Option<LiveTable> {
        let (_, rule) = self.config.tables.iter().find(|(t, _)| t == name)?;
        let (schema, table) = name.split_once('.')?;
        Some(LiveTable {
            schema: schema.to_owned(),
            table: table.to_owned(),
            rule: rule.clone(),
        })
    }

    /// Starts a live query; its items come on the receiver (bounded: a
    /// slow client slows its own replay down, nothing piles up). `access`
    /// must have `membership` set, so the changes after the hand-over keep
    /// the view exact.
    pub fn start(
        self: &Arc<Live>,
        tenant: TenantId,
        access: Arc<Access>,
        table: LiveTable,
    ) -> mpsc::Receiver<Result<LiveItem, LiveError>> {
        let (tx, rx) = mpsc::channel(256);
        let live = self.clone();
        self.metrics.started.fetch_add(1, Ordering::Relaxed);
        let slot = self.slot(&tenant, &access, &table);
        tokio::spawn(async move {
            if let Err(e) = live.replay(&slot, &tenant, &access, &table, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }

    /// Sends one subscriber its view of a read, its rows as they come,
    /// then the log's changes of the table since the read's hand-over (a
    /// shared read may be a moment old): `synced` comes at the log's head
    /// as this subscriber found it.
    async fn replay(
        &self,
        slot: &Slot,
        tenant: &TenantId,
        access: &Access,
        table: &LiveTable,
        out: &mpsc::Sender<Result<LiveItem, LiveError>>,
    ) -> Result<(), LiveError> {
        let mut progress = slot.progress.subscribe();
        let mut sent = 0;
        let ending = loop {
            let now = progress.borrow_and_update().clone();
            while sent < now.rows {
                let batch: Vec<Arc<Committed>> = {
                    let rows = slot.rows.read().unwrap_or_else(|p| p.into_inner());
                    rows[sent..now.rows.min(sent + 256)].to_vec()
                };
                sent += batch.len();
                for row in &batch {
                    if let Some(seen) = access.admit_one(row) {
                        if out.send(Ok(LiveItem::Row(seen))).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
            if let Some(end) = now.end {
                break end?;
            }
            if progress.changed().await.is_err() {
                return Err(LiveError::Unavailable("the live query's read"));
            }
        };
        for change in &ending.changes {
            if let Some(seen) = access.admit_one(change) {
                if out.send(Ok(LiveItem::Change(seen))).await.is_err() {
                    return Ok(());
                }
            }
        }
        let head = self.config.durable.borrow().last_seq;
        let mut synced = ending.handover;
        // A read a moment old is brought up to the head here; one far
        // behind hands over at its own `H` and the follower catches up from
        // the log page by page (nothing large is held per subscriber).
        if head > ending.handover && head - ending.handover <= PAGE_ROWS {
            let changes =
                changes_between(&self.config, tenant, table, ending.handover, head, None).await?;
            for change in &changes {
                if let Some(seen) = access.admit_one(change) {
                    if out.send(Ok(LiveItem::Change(seen))).await.is_err() {
                        return Ok(());
                    }
                }
            }
            synced = head;
        }
        let _ = out.send(Ok(LiveItem::Synced(synced))).await;
        Ok(())
    }

    /// The read of this shape: one in flight or done within the share
    /// window, else a new one, started now on a task of its own (it goes
    /// on if its first subscriber leaves: others may share it).
    fn slot(
        self: &Arc<Live>,
        tenant: &TenantId,
        access: &Arc<Access>,
        table: &LiveTable,
    ) -> Arc<Slot> {
        let route = format!("tables/{}.{}", table.schema, table.table);
        let filter = access.selector.filter.as_ref();
        let key = ShapeKey {
            tenant: tenant.clone(),
            table: format!("{}.{}", table.schema, table.table),
            filter: format!("{filter:?}"),
            // The pushed-down filter depends on the policy only through
            // which of its columns the policy shows.
            visible: filter
                .map(|f| {
                    f.columns()
                        .iter()
                        .map(|c| {
                            if access.shows_column(&route, c) {
                                '1'
                            } else {
                                '0'
                            }
                        })
                        .collect()
                })
                .unwrap_or_default(),
        };
        let share = self.config.share;
        let mut shapes = self.shapes.lock().unwrap_or_else(|p| p.into_inner());
        shapes.retain(|_, s| s.shareable(share));
        if let Some(s) = shapes.get(&key) {
            self.metrics.shared.fetch_add(1, Ordering::Relaxed);
            return s.clone();
        }
        let slot = Arc::new(Slot {
            rows: std::sync::RwLock::new(Vec::new()),
            progress: watch::channel(Progress::default()).0,
        });
        shapes.insert(key, slot.clone());
        drop(shapes);
        self.metrics.reads.fetch_add(1, Ordering::Relaxed);
        let (live, filling) = (self.clone(), slot.clone());
        let (tenant, access, table) = (tenant.clone(), access.clone(), table.clone());
        tokio::spawn(async move {
            /// Ends the read with an error if its task ends without an end
            /// (a panic): its subscribers must not wait for ever.
            struct Ends(Arc<Slot>);
            impl Drop for Ends {
                fn drop(&mut self) {
                    self.0.progress.send_if_modified(|p| {
                        let unset = p.end.is_none();
                        if unset {
                            p.end = Some(Err(LiveError::Unavailable("the live query's read")));
                        }
                        unset
                    });
                }
            }
            let _ends = Ends(filling.clone());
            let route = format!("tables/{}.{}", table.schema, table.table);
            let shows = |c: &str| access.shows_column(&route, c);
            let filter = access.selector.filter.as_ref();
            let end = read(&live.config, &tenant, &table, filter, &shows, &filling).await;
            let rows = filling.progress.borrow().rows;
            live.metrics
                .rows_read
                .fetch_add(rows as u64, Ordering::Relaxed);
            // A failed read is not handed to anyone who comes later
            // (`shareable`); those reading it get the error.
            filling
                .progress
                .send_modify(|p| p.end = Some(end.map(Arc::new)));
        });
        slot
    }
}

/// The source's snapshot, as the log's 32-bit xids compare with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visibility {
    xmax: u32,
    xip: Vec<u32>,
}

impl Visibility {
    /// `xmin:xmax:xip,…` as `txid_current_snapshot()` prints it.
    pub fn parse(s: &str) -> Option<Visibility> {
        let mut parts = s.trim().split(':');
        let _xmin: u64 = parts.next()?.parse().ok()?;
        let xmax: u64 = parts.next()?.parse().ok()?;
        let xip = parts
            .next()?
            .split(',')
            .filter(|x| !x.is_empty())
            .map(|x| x.parse::<u64>().ok().map(|v| v as u32))
            .collect::<Option<Vec<u32>>>()?;
        Some(Visibility {
            xmax: xmax as u32,
            xip,
        })
    }

    /// Whether the snapshot saw transaction `xid` (32-bit, as the log
    /// holds it): it began before `xmax` and was not in progress.
    pub fn saw(&self, xid: u32) -> bool {
        // `xid` precedes `xmax` in the circular xid space.
        (self.xmax.wrapping_sub(xid) as i32) > 0 && !self.xip.contains(&xid)
    }
}

/// The `txid` member of an envelope (it precedes `data`, and a string
/// member cannot hold the unescaped `,"txid":`).
pub fn envelope_txid(body: &[u8]) -> Option<u32> {
    let head = match memchr::memmem::find(body, b",\"data\":") {
        Some(end) => &body[..end],
        None => body,
    };
    let at = memchr::memmem::find(head, b",\"txid\":")? + 8;
    let digits: &[u8] = &head[at..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end])
        .ok()?
        .parse::<u64>()
        .ok()
        .map(|v| v as u32)
}

/// An initial read in progress: the table as the catalog describes it, a
/// `REPEATABLE READ` snapshot on a connection of its own, and the WAL
/// position its hand-over waits for (the module doc says why this is
/// exact).
pub(super) struct Snapshot {
    client: tokio_postgres::Client,
    pub(super) info: TableInfo,
    outputs: Vec<String>,
    pub(super) tenant_at: usize,
    normalizer: Normalizer,
    visibility: Visibility,
    start_seq: i64,
    now: i64,
    n: u64,
}

impl Snapshot {
    /// Describes the table and takes the snapshot ([`handover`] writes the
    /// heartbeat after it, beside the pages).
    pub(super) async fn begin(ctx: &LiveConfig, table: &LiveTable) -> Result<Snapshot, LiveError> {
        let source_down = |_| LiveError::Unavailable("the source database");
        let start_seq = ctx.durable.borrow().last_seq;
        let client = crate::log::connect_as(&ctx.source_url, "sluice-live")
            .await
            .map_err(source_down)?;
        let info = table_info(&client, &table.schema, &table.table)
            .await
            .map_err(|e| db("the source database", &e))?
            .ok_or_else(|| {
                LiveError::Table(format!(
                    "table {}.{} does not exist",
                    table.schema, table.table
                ))
            })?;
        if info.primary_key.is_empty() {
            return Err(LiveError::Table(format!(
                "table {}.{} has no primary key; a live query reads it in key order",
                table.schema, table.table
            )));
        }
        let Some(tenant_at) = info
            .relation
            .columns
            .iter()
            .position(|c| c.name == table.rule.tenant_column)
        else {
            return Err(LiveError::Table(format!(
                "table {}.{} has no column {}",
                table.schema, table.table, table.rule.tenant_column
            )));
        };
        // The pipeline's normalizer, so a row reads exactly as a change does.
        let mut catalog = Catalog::new(client);
        let resolved = catalog
            .resolve(info.relation.clone(), Some(table.rule.clone()))
            .await
            .map_err(|e| LiveError::Table(e.to_string()))?;
        let client = catalog.into_client();
        let mut normalizer = Normalizer::new(&ctx.event_source);
        normalizer.set_relation(resolved);
        let outputs = output_functions(&client, &info).await?;
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {SESSION_SETTINGS}; SET LOCAL statement_timeout = {}",
                ctx.statement_timeout_ms
            ))
            .await
            .map_err(|e| db("the source database", &e))?;
        let snapshot: String = client
            .query_one("SELECT txid_current_snapshot()::text", &[])
            .await
            .map_err(|e| db("the source database", &e))?
            .get(0);
        let visibility = Visibility::parse(&snapshot)
            .ok_or(LiveError::Unavailable("the source database's snapshot"))?;
        Ok(Snapshot {
            client,
            info,
            outputs,
            tenant_at,
            normalizer,
            visibility,
            start_seq,
            now: chrono::Utc::now().timestamp_micros(),
            n: 0,
        })
    }

    /// The table's columns as the filter's pushdown sees them.
    pub(super) fn columns<'a>(
        &'a self,
        table: &LiveTable,
        shows: &(dyn Fn(&str) -> bool + Sync),
    ) -> Vec<PushedColumn<'a>> {
        self.info
            .relation
            .columns
            .iter()
            .zip(&self.info.type_names)
            .map(|(c, t)| PushedColumn {
                name: &c.name,
                type_name: t,
                // A fields-only table's events carry no row to test.
                visible: !table.rule.fields_only && shows(&c.name),
            })
            .collect()
    }

    /// The `SELECT` list and `FROM` of a page: every column through its
    /// type's output function, the table aliased `t`.
    pub(super) fn select_from(&self) -> String {
        // Qualified with the alias, so an ORDER BY or a bound always
        // compares the columns, never an output column of the same name.
        // `outputs` are the server's own (regproc) names.
        let select: Vec<String> = self
            .info
            .relation
            .columns
            .iter()
            .zip(&self.outputs)
            .map(|(c, out)| format!("textin({out}(t.{}))", quote_ident(&c.name)))
            .collect();
        format!(
            "SELECT {} FROM {} AS t",
            select.join(", "),
            self.info.qualified()
        )
    }

    /// Reads the pages of a keyset query in the snapshot: `first` (its
    /// bound parameters NULL), then `next` bound after the previous page's
    /// last row (its columns `bound`), until a page is short or `each`
    /// says stop. `params(bound)` gives a page's parameters. Each page's
    /// query is sent before the previous page is turned into events, so
    /// the server reads while Sluice normalizes.
    pub(super) async fn pages(
        &mut self,
        first: &str,
        next: &str,
        bound: &[usize],
        params: impl Fn(Option<&[Option<String>]>) -> Vec<Option<String>>,
        tenant: &TenantId,
        mut each: impl FnMut(Option<Arc<Committed>>) -> Result<bool, LiveError>,
    ) -> Result<(), LiveError> {
        let failed = |e: tokio_postgres::Error| db("the source database", &e);
        let Snapshot {
            client,
            info,
            normalizer,
            now,
            n,
            ..
        } = self;
        let first = client.prepare(first).await.map_err(failed)?;
        let next = client.prepare(next).await.map_err(failed)?;
        let txc = TxContext::new(0, 0, *now);
        let mut pending = Box::pin(fetch(client, &first, params(None)));
        // A page that was already answered when its query was sent.
        let mut answered = None;
        loop {
            let rows = match answered.take() {
                Some(rows) => rows,
                None => pending.as_mut().await,
            }
            .map_err(failed)?;
            let more = rows.len() as i64 == PAGE_ROWS;
            if let (true, Some(last)) = (more, rows.last()) {
                let after: Vec<Option<String>> = bound
                    .iter()
                    .map(|&i| last.get::<_, Option<String>>(i))
                    .collect();
                pending = Box::pin(fetch(client, &next, params(Some(&after))));
                // Polled once: the query is on its way to the server.
                if let std::task::Poll::Ready(r) = futures_util::poll!(pending.as_mut()) {
                    answered = Some(r);
                }
            }
            for row in &rows {
                let tuple = Tuple(
                    (0..info.relation.columns.len())
                        .map(|i| match row.get::<_, Option<&str>>(i) {
                            Some(v) => Datum::Text(Bytes::copy_from_slice(v.as_bytes())),
                            None => Datum::Null,
                        })
                        .collect(),
                );
                *n += 1;
                let event = match normalizer.snapshot(&txc, *n, info.relation.id, &tuple) {
                    // The row's own tenant, as the pipeline reads it: the
                    // query asked for the credential's, and nothing else
                    // goes.
                    Outcome::Event(mut e) if matches!(&e.audience, crate::event::Audience::Tenant(t) if t == tenant) =>
                    {
                        e.txid = None;
                        e.lsn = None;
                        Some(Arc::new(Committed {
                            seq: 0,
                            tenant: tenant.clone(),
                            topic: e.topic.clone(),
                            event_type: e.event_type.clone(),
                            body: Bytes::from(e.envelope_json(0, tenant)),
                            commit_micros: *now,
                        }))
                    }
                    _ => None,
                };
                // `each` gets the row's event if it is a row of the tenant.
                if !each(event)? {
                    return Ok(());
                }
            }
            if !more {
                return Ok(());
            }
        }
    }

    /// Ends the snapshot and returns the table's changes in `(S, H]` it
    /// did not see, `H` the hand-over ([`handover`], awaited beside the
    /// pages).
    pub(super) async fn finish(
        self,
        ctx: &LiveConfig,
        tenant: &TenantId,
        table: &LiveTable,
        handover: i64,
    ) -> Result<Vec<Arc<Committed>>, LiveError> {
        drop(self.client);
        let changes = changes_between(
            ctx,
            tenant,
            table,
            self.start_seq,
            handover,
            Some(&self.visibility),
        )
        .await?;
        Ok(changes)
    }
}

/// One page query; the request goes out on the first poll.
async fn fetch(
    client: &tokio_postgres::Client,
    statement: &tokio_postgres::Statement,
    params: Vec<Option<String>>,
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
        .iter()
        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    client.query(statement, &refs).await
}

/// Reads the tenant's rows of the table in primary-key pages at a
/// snapshot, then the log up to the hand-over.
async fn read(
    ctx: &LiveConfig,
    tenant: &TenantId,
    table: &LiveTable,
    filter: Option<&Filter>,
    shows: &(dyn Fn(&str) -> bool + Sync),
    slot: &Slot,
) -> Result<Ending, LiveError> {
    let mut snap = Snapshot::begin(ctx, table).await?;
    let first_param = 2 + snap.info.primary_key.len();
    let pushed = {
        let columns = snap.columns(table, shows);
        filter.and_then(|f| f.pushdown(&columns, first_param))
    };
    let sql = page_sql(&snap, pushed.as_ref().map(|p| p.sql.as_str()));
    let pushed_params: Vec<Option<String>> = pushed
        .as_ref()
        .map(|p| p.params.iter().cloned().map(Some).collect())
        .unwrap_or_default();
    let keys = snap.info.primary_key.clone();
    let params = |after: Option<&[Option<String>]>| {
        let mut p: Vec<Option<String>> = vec![Some(tenant.as_str().to_owned())];
        match after {
            Some(a) => p.extend(a.iter().cloned()),
            None => p.extend(keys.iter().map(|_| None)),
        }
        p.extend(pushed_params.iter().cloned());
        p
    };
    // Rows go to the slot (and out to its subscribers) page by page, and
    // the log catches up with the snapshot while the pages are read.
    let mut page = Vec::new();
    let mut total: u64 = 0;
    let publish = |page: &mut Vec<Arc<Committed>>| {
        if page.is_empty() {
            return;
        }
        let n = {
            let mut rows = slot.rows.write().unwrap_or_else(|p| p.into_inner());
            rows.append(page);
            rows.len()
        };
        slot.progress.send_modify(|p| p.rows = n);
    };
    let ((), handover) = tokio::try_join!(
        snap.pages(&sql.first, &sql.next, &keys, params, tenant, |event| {
            if let Some(event) = event {
                total += 1;
                if total > ctx.max_rows {
                    return Err(LiveError::TooLarge(ctx.max_rows));
                }
                page.push(event);
                if page.len() as i64 >= PAGE_ROWS {
                    publish(&mut page);
                }
            }
            Ok(true)
        }),
        handover(ctx)
    )?;
    publish(&mut page);
    let changes = snap.finish(ctx, tenant, table, handover).await?;
    Ok(Ending {
        changes,
        handover,
        done: Instant::now(),
    })
}

/// The log's events of the tenant's `table` in `(after, upto]`, without
/// those of transactions `seen` saw; more than `http.max_snapshot_rows` of
/// them is [`LiveError::TooLarge`] (they are held in memory).
async fn changes_between(
    ctx: &LiveConfig,
    tenant: &TenantId,
    table: &LiveTable,
    after: i64,
    upto: i64,
    seen: Option<&Visibility>,
) -> Result<Vec<Arc<Committed>>, LiveError> {
    let log = ctx
        .log
        .get()
        .await
        .map_err(|_| LiveError::Unavailable("the log"))?;
    let scope = ReadScope::Tenant(tenant.clone());
    let prefix = format!("tables/{}.{}/", table.schema, table.table);
    let mut changes = Vec::new();
    let mut from = after + 1;
    while from <= upto {
        let events = crate::log::read_events(&**log, &scope, from, PAGE_ROWS)
            .await
            .map_err(|e| db("the log", &e))?;
        let Some(last) = events.last().map(|e| e.seq) else {
            break;
        };
        for e in events.into_iter().filter(|e| e.seq <= upto) {
            if !e.topic.starts_with(&prefix) {
                continue;
            }
            if let (Some(v), Some(x)) = (seen, envelope_txid(&e.body)) {
                if v.saw(x) {
                    continue;
                }
            }
            if changes.len() as u64 >= ctx.max_rows {
                return Err(LiveError::TooLarge(ctx.max_rows));
            }
            changes.push(Arc::new(e));
        }
        from = last + 1;
    }
    Ok(changes)
}

/// The first page's query and the next pages' (after a key), rows of one
/// tenant in key order, every column as text.
struct PageSql {
    first: String,
    next: String,
}

/// Each column's type output function (`boolout`, `array_out`, …), in
/// column order: a value reads as its type's text form, exactly what
/// pgoutput sends (a cast to text is not always that: `true::text` is
/// `true` where the output is `t`, `char(n)` loses its padding, `inet`
/// gains a `/32`).
async fn output_functions(
    client: &tokio_postgres::Client,
    info: &TableInfo,
) -> Result<Vec<String>, LiveError> {
    let rows = client
        .query(
            "SELECT a.attname::text, t.typoutput::regproc::text
               FROM pg_catalog.pg_attribute a
               JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
              WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped",
            &[&info.relation.id],
        )
        .await
        .map_err(|e| db("the source database", &e))?;
    let by_name: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    info.relation
        .columns
        .iter()
        .map(|c| {
            by_name.get(&c.name).cloned().ok_or_else(|| {
                LiveError::Table(format!(
                    "column {} changed while the live query started; retry",
                    c.name
                ))
            })
        })
        .collect()
}

fn page_sql(snap: &Snapshot, pushed: Option<&str>) -> PageSql {
    let info = &snap.info;
    let cols = &info.relation.columns;
    let key: Vec<String> = info
        .primary_key
        .iter()
        .map(|&i| format!("t.{}", quote_ident(&cols[i].name)))
        .collect();
    let mut base = format!(
        "{} WHERE t.{} = $1::text::{}",
        snap.select_from(),
        quote_ident(&cols[snap.tenant_at].name),
        info.type_names[snap.tenant_at]
    );
    if let Some(p) = pushed {
        base.push_str(&format!(" AND ({p})"));
    }
    let order = format!(" ORDER BY {} LIMIT {PAGE_ROWS}", key.join(", "));
    // A bound compares as its column does (its collation), so the pages
    // follow the ORDER BY exactly.
    let bound: Vec<String> = info
        .primary_key
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            let cast = format!("${}::text::{}", k + 2, info.type_names[i]);
            match &info.collations[i] {
                Some(c) => format!("{cast} COLLATE {c}"),
                None => cast,
            }
        })
        .collect();
    // The first page binds the key parameters too (as NULLs), so every
    // page numbers the pushed-down filter's parameters alike.
    let unused: Vec<String> = (0..info.primary_key.len())
        .map(|k| format!("${}::text IS NULL", k + 2))
        .collect();
    PageSql {
        first: format!("{base} AND {}{order}", unused.join(" AND ")),
        next: format!(
            "{base} AND ({}) > ({}){order}",
            key.join(", "),
            bound.join(", ")
        ),
    }
}

/// The hand-over of a snapshot taken before: the heartbeat written after
/// it, then the log's head once the log holds everything before the
/// heartbeat.
pub(super) async fn handover(ctx: &LiveConfig) -> Result<i64, LiveError> {
    let mark = heartbeat(ctx).await?;
    wait_for_log(ctx, mark).await
}

/// Writes the heartbeat after the snapshot; returns the WAL position every
/// commit the snapshot saw is before.
async fn heartbeat(ctx: &LiveConfig) -> Result<u64, LiveError> {
    let mut source = ctx
        .source
        .get()
        .await
        .map_err(|_| LiveError::Unavailable("the source database"))?;
    let failed = |e: tokio_postgres::Error| db("the source database", &e);
    // A non-transactional message is not flushed by itself, and the
    // walsender sends only flushed WAL: it would wait for the WAL writer
    // (up to wal_writer_delay). The transaction around it takes an xid, so
    // its commit writes a record after the message and flushes both.
    let tx = source.transaction().await.map_err(failed)?;
    tx.batch_execute("SET LOCAL synchronous_commit = on")
        .await
        .map_err(failed)?;
    let row = tx
        .query_one(
            "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint,
                    pg_logical_emit_message(false, $1::text, ''::text)::text,
                    pg_current_xact_id()::text",
            &[&HEARTBEAT_PREFIX],
        )
        .await
        .map_err(failed)?;
    tx.commit().await.map_err(failed)?;
    Ok(row.get::<_, i64>(0).max(0) as u64)
}

/// Waits until the log's checkpoint of the source reaches `mark`; returns
/// the log's head read with it.
async fn wait_for_log(ctx: &LiveConfig, mark: u64) -> Result<i64, LiveError> {
    let mut durable = ctx.durable.clone();
    let deadline = tokio::time::Instant::now() + HANDOVER_WAIT;
    let mark = i64::try_from(mark).unwrap_or(i64::MAX);
    loop {
        let state = ctx
            .log
            .get()
            .await
            .map_err(|_| LiveError::Unavailable("the log"))?;
        // The checkpoint and the events are written in one transaction:
        // one statement reads a consistent pair.
        let row = state
            .query_opt(
                &format!(
                    "SELECT c.commit_lsn, {} FROM sluice.checkpoints c WHERE c.source = $1",
                    crate::log::HEAD_SQL
                ),
                &[&ctx.checkpoint_key],
            )
            .await
            .map_err(|e| db("the log", &e))?;
        drop(state);
        if let Some(r) = row {
            let lsn: i64 = r.get(0);
            if lsn >= mark {
                return Ok(r.get(1));
            }
        }
        tokio::select! {
            _ = durable.changed() => {}
            // A standby's durable head may move without telling: look again.
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Err(LiveError::Unavailable("the log (it did not reach the snapshot's position within 30 s)"));
            }
        }
    }
}

fn db(what: &'static str, e: &tokio_postgres::Error) -> LiveError {
    tracing::warn!(error = %crate::pgconn::describe(e), what, "live query failed");
    LiveError::Unavailable(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_saw_what_committed_before_it() {
        let v = Visibility::parse("100:105:101,103").expect("valid");
        for (xid, saw) in [
            (99, true),
            (100, true),
            (101, false),
            (102, true),
            (103, false),
            (104, true),
            (105, false),
            (200, false),
        ] {
            assert_eq!(v.saw(xid), saw, "{xid}");
        }
        // 64-bit values with an epoch compare by their low 32 bits.
        let v = Visibility::parse(&format!("{}:{}:", (1u64 << 32) + 10, (1u64 << 32) + 12))
            .expect("valid");
        assert!(v.saw(11) && !v.saw(12) && v.saw(u32::MAX));
        assert_eq!(Visibility::parse("bad"), None);
    }

    #[test]
    fn the_txid_is_read_from_the_envelope_head_only() {
        let body = br#"{"seq":1,"topic":"t","txid":7731,"lsn":"0/1","data":{"txid":5}}"#;
        assert_eq!(envelope_txid(body), Some(7731));
        let none = br#"{"seq":1,"topic":"t","data":{"x":1,"txid":5}}"#;
        assert_eq!(envelope_txid(none), None);
    }
}
