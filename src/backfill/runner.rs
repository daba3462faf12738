//! The leader's backfill runner: one running backfill at a time, chunk by
//! chunk, with its watermarks (see the module above). Resumes after a
//! restart from the last chunk recorded in the log's transaction.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::{Client, SimpleQueryMessage};
use tokio_util::sync::CancellationToken;

use super::{
    chunk_sql, db_message, order_check_sql, predicate, table_info, Chunk, Chunks, Mark, MARK_PREFIX,
};
use crate::config::PgSourceConfig;
use crate::log::Durable;
use crate::source::postgres::catalog::Catalog;
use crate::source::postgres::normalize::{Normalizer, TableRule};
use crate::source::postgres::stream::SESSION_OPTIONS;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct BackfillMetrics {
    pub rows_read: AtomicU64,
    pub chunks: AtomicU64,
    pub running: AtomicU64,
    /// The running backfill's rows read so far (across restarts) and its
    /// estimated total.
    pub current_read: AtomicU64,
    pub current_estimated: AtomicU64,
}

/// Why a backfill could not go on.
enum Failure {
    /// Worth retrying (connections).
    Transient(String),
    /// The backfill cannot finish (table dropped, no key…): marked failed.
    Fatal(String),
}

impl From<crate::pgconn::PgError> for Failure {
    fn from(e: crate::pgconn::PgError) -> Self {
        match e {
            crate::pgconn::PgError::Connect { ref error, .. } if error.as_db_error().is_none() => {
                Failure::Transient(e.to_string())
            }
            crate::pgconn::PgError::Postgres(e) => e.into(),
            other => Failure::Fatal(other.to_string()),
        }
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        if e.as_db_error().is_some() {
            Failure::Fatal(db_message(&e))
        } else {
            Failure::Transient(crate::pgconn::describe(&e))
        }
    }
}

pub struct Runner {
    pub pg: PgSourceConfig,
    pub state_url: String,
    pub chunks: Arc<Chunks>,
    pub durable: watch::Receiver<Arc<Durable>>,
    pub metrics: Arc<BackfillMetrics>,
}

impl Runner {
    pub async fn run(self, stop: CancellationToken) {
        let created = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(listen(
            self.state_url.clone(),
            created.clone(),
            stop.clone(),
        ));
        let mut backoff = Duration::from_millis(200);
        loop {
            let result = self.next(&stop).await;
            let idle = matches!(result, Ok(false));
            let wait = match result {
                Ok(true) => Duration::ZERO,
                Ok(false) => Duration::from_secs(1),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "backfill runner");
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    backoff
                }
            };
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    // A new backfill (sql/008_backfill_notify.sql).
                    _ = created.notified(), if idle => {}
                    _ = stop.cancelled() => return,
                }
            }
            if stop.is_cancelled() {
                return;
            }
        }
    }

    /// Runs the oldest running backfill to its end (or until `stop`);
    /// false when there was none.
    async fn next(&self, stop: &CancellationToken) -> Result<bool, String> {
        let state = crate::log::connect_as(&self.state_url, "sluice-backfill")
            .await
            .map_err(|e| e.to_string())?;
        let Some(row) = state
            .query_opt(
                "SELECT id, table_name, predicate, chunk_size, throttle_ms, last_key
                 FROM sluice.backfills WHERE status = 'running' ORDER BY id LIMIT 1",
                &[],
            )
            .await
            .map_err(|e| crate::pgconn::describe(&e))?
        else {
            return Ok(false);
        };
        let id: i64 = row.get(0);
        let table: String = row.get(1);
        let predicate: Option<String> = row.get(2);
        let chunk_size: i32 = row.get(3);
        let throttle = Duration::from_millis(u64::try_from(row.get::<_, i32>(4)).unwrap_or(0));
        let last_key: Option<Vec<Option<String>>> = row.get(5);
        tracing::info!(backfill = id, %table, resumed = last_key.is_some(), "backfill running");
        self.metrics.running.store(1, Ordering::Relaxed);
        // The guard cancels the source's query and halts this backfill when
        // it is cancelled (its status leaves `running`) or on shutdown: a
        // slow chunk query must not hold its snapshot on the source.
        let source_pid = Arc::new(AtomicI32::new(0));
        let cancelled = Arc::new(AtomicBool::new(false));
        let halt = CancellationToken::new();
        let ended = CancellationToken::new();
        let guard = tokio::spawn(guard(Guard {
            state_url: self.state_url.clone(),
            source_url: self.pg.url.clone(),
            backfill: id,
            source_pid: source_pid.clone(),
            cancelled: cancelled.clone(),
            halt: halt.clone(),
            ended: ended.clone(),
            stop: stop.clone(),
        }));
        let result = tokio::select! {
            r = self.run_one(
                &state,
                id,
                &table,
                predicate.as_deref(),
                chunk_size,
                throttle,
                last_key,
                &source_pid,
                stop,
            ) => r,
            _ = halt.cancelled() => Ok(()),
        };
        ended.cancel();
        let _ = guard.await;
        self.metrics.running.store(0, Ordering::Relaxed);
        self.chunks.forget(id);
        // What a cancelled query or a halted run reports is not a failure.
        let result = if stop.is_cancelled() || cancelled.load(Ordering::Relaxed) {
            if cancelled.load(Ordering::Relaxed) {
                tracing::info!(backfill = id, %table, "backfill cancelled");
            }
            Ok(())
        } else {
            result
        };
        match result {
            Ok(()) => Ok(true),
            Err(Failure::Fatal(why)) => {
                tracing::error!(backfill = id, %table, error = %why, "backfill failed");
                state
                    .execute(
                        "UPDATE sluice.backfills SET status = 'failed', error = $2, updated_at = now(), finished_at = now()
                         WHERE id = $1 AND status = 'running'",
                        &[&id, &why],
                    )
                    .await
                    .map_err(|e| crate::pgconn::describe(&e))?;
                Ok(true)
            }
            Err(Failure::Transient(why)) => Err(why),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_one(
        &self,
        state: &Client,
        id: i64,
        table: &str,
        predicate: Option<&str>,
        chunk_size: i32,
        throttle: Duration,
        mut last_key: Option<Vec<Option<String>>>,
        source_pid: &AtomicI32,
        stop: &CancellationToken,
    ) -> Result<(), Failure> {
        let options = format!("{SESSION_OPTIONS} -c standard_conforming_strings=on");
        let source = crate::pgconn::connect(
            &self.pg.url,
            crate::pgconn::Session::named("sluice-backfill").with_options(&options),
        )
        .await?;
        source_pid.store(
            source
                .query_one("SELECT pg_backend_pid()", &[])
                .await?
                .get(0),
            Ordering::Relaxed,
        );
        // Should this process die, the server ends a chunk query on its own
        // once it notices the connection is gone (PostgreSQL 14+, where the
        // platform supports it; elsewhere the setting is refused: ignored).
        let _ = source
            .batch_execute("SET client_connection_check_interval = 1000")
            .await;
        // Per-chunk queries, parsed and planned once.
        let queries = Queries {
            writers: source.prepare(BUSY_SQL).await?,
            progress: state.prepare(PROGRESS_SQL).await?,
        };
        let (schema, name) = table.split_once('.').unwrap_or(("public", table));
        let info = table_info(&source, schema, name)
            .await?
            .ok_or_else(|| Failure::Fatal(format!("table {table} no longer exists")))?;
        if info.primary_key.is_empty() {
            return Err(Failure::Fatal(format!("table {table} has no primary key")));
        }
        // The predicate as a function of the row (module `predicate`); the
        // chunk query calls it beside the key bound.
        let filter = match predicate {
            None => None,
            Some(p) => {
                let name = predicate::function_name(&id.to_string());
                predicate::install(&source, &info, &name, p)
                    .await
                    .map_err(|e| match e {
                        predicate::PredicateError::Invalid(m) => {
                            Failure::Fatal(format!("invalid predicate: {m}"))
                        }
                        predicate::PredicateError::Db(e) => e.into(),
                    })?;
                Some(predicate::call_sql(&info, &name))
            }
        };
        let timeout_ms = self.pg.backfill_statement_timeout_ms;
        let begin = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL statement_timeout = {timeout_ms}"
        );
        let rule = self
            .pg
            .tables
            .iter()
            .find(|t| t.table == table)
            .map(TableRule::from)
            .ok_or_else(|| Failure::Fatal(format!("table {table} is no longer captured")))?;
        // Rows are normalized here, beside the stream, not on its task.
        let mut catalog = Catalog::new(
            crate::log::connect_as(&self.pg.url, "sluice-backfill")
                .await
                .map_err(|e| Failure::Transient(e.to_string()))?,
        );
        let mut normalizer = Normalizer::new(&self.pg.event_source());
        normalizer.set_relation(catalog.resolve(info.relation.clone(), Some(rule)).await?);
        drop(catalog);
        // Chunks are normalized on a thread of their own, in order, while
        // this task reads the next one; it ends when `jobs` is dropped.
        let (jobs, mut queue) = tokio::sync::mpsc::channel::<Job>(IN_FLIGHT);
        let relation_id = info.relation.id;
        tokio::task::spawn_blocking(move || {
            while let Some(job) = queue.blocking_recv() {
                let normalized = super::read::normalize(&mut normalizer, relation_id, &job.raw);
                let _ = job.reply.send(Chunk {
                    backfill: job.backfill,
                    events: normalized.events,
                    batches: normalized.batches,
                    dropped: normalized.dropped,
                    rows_read: job.raw.rows,
                    after: job.after,
                    last_key: job.last_key,
                });
            }
        });
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        // Throttled backfills read one chunk at a time, so the pause is
        // between every two chunks.
        let depth = if throttle.is_zero() { IN_FLIGHT } else { 1 };
        // The next chunk's low watermark, once committed (with the previous
        // chunk's high one: one commit per chunk, not two).
        let mut low: Option<u64> = None;
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            let nonce = match low.take() {
                Some(nonce) => nonce,
                None => {
                    let nonce: u64 = rand::random();
                    emit_mark(
                        &source,
                        Mark {
                            b: id,
                            n: nonce,
                            h: false,
                        },
                    )
                    .await?;
                    nonce
                }
            };
            let writer = self.durable.borrow().writer_pid.unwrap_or(-1);
            wait_for_writers(&source, &queries.writers, writer).await?;
            // The chunk's own snapshot, read-only whatever the predicate
            // calls. BEGIN and the COPY go out together (one round trip);
            // a failed BEGIN fails the chunk, whatever the COPY did.
            let sql = chunk_sql(&info, filter.as_deref(), last_key.as_deref(), chunk_size);
            // `biased`: polled in order, so BEGIN is sent first.
            let (begun, read) = tokio::join!(
                biased;
                source.batch_execute(&begin),
                super::read::raw(&source, &sql)
            );
            begun?;
            let read = match read {
                Ok(read) => read,
                Err(e) => {
                    source.batch_execute("ROLLBACK").await?;
                    return Err(chunk_failure(e, timeout_ms));
                }
            };
            let next_key = read.last_key(&info.primary_key);
            if let (Some(first), Some(last)) = (read.first_key(&info.primary_key), &next_key) {
                let check = order_check_sql(&info, last_key.as_deref(), &first, last);
                let ordered: bool = source.query_one(check.as_str(), &[]).await?.get(0);
                if !ordered {
                    source.batch_execute("ROLLBACK").await?;
                    return Err(Failure::Fatal(format!(
                        "a chunk returned rows it had already read or out of key order (keys {} to {} after {}); stopped",
                        show_key(&first),
                        show_key(last),
                        last_key.as_deref().map_or_else(|| "the start".to_owned(), show_key)
                    )));
                }
            }
            let count = read.rows;
            if let Some(next_key) = &next_key {
                let (reply, chunk) = tokio::sync::oneshot::channel();
                self.chunks.put(nonce, id, chunk);
                jobs.send(Job {
                    backfill: id,
                    raw: read,
                    after: last_key.clone(),
                    last_key: next_key.clone(),
                    reply,
                })
                .await
                .map_err(|_| Failure::Transient("the chunk normalizer stopped".into()))?;
            }
            // Ends the read, and commits this chunk's high watermark with
            // the next one's low watermark (an empty chunk's high one just
            // closes its window).
            let next_nonce: u64 = rand::random();
            let marks = source
                .simple_query(&format!(
                    "COMMIT; SELECT pg_logical_emit_message(true, {p}, {h})::text,
                                    pg_logical_emit_message(true, {p}, {l})::text",
                    p = crate::sql::quote_literal(MARK_PREFIX),
                    h = crate::sql::quote_literal(
                        &Mark {
                            b: id,
                            n: nonce,
                            h: true
                        }
                        .encode()
                    ),
                    l = crate::sql::quote_literal(
                        &Mark {
                            b: id,
                            n: next_nonce,
                            h: false
                        }
                        .encode()
                    ),
                ))
                .await?;
            low = Some(next_nonce);
            let Some(next_key) = next_key else {
                // Closes the low watermark just committed: no chunk follows
                // it yet.
                emit_mark(
                    &source,
                    Mark {
                        b: id,
                        n: next_nonce,
                        h: true,
                    },
                )
                .await?;
                low = None;
                // The end, if every chunk in flight was recorded.
                let Some(recorded) = self
                    .settle(state, &queries, id, &mut inflight, stop)
                    .await?
                else {
                    return Ok(());
                };
                if recorded != last_key {
                    last_key = recorded;
                    continue;
                }
                state
                    .execute(
                        "UPDATE sluice.backfills SET status = 'done', updated_at = now(), finished_at = now() WHERE id = $1 AND status = 'running'",
                        &[&id],
                    )
                    .await?;
                tracing::info!(backfill = id, %table, "backfill done");
                return Ok(());
            };
            let high = marks
                .iter()
                .find_map(|m| match m {
                    SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                })
                .unwrap_or_default();
            let high = crate::event::parse_lsn(&high)
                .ok_or_else(|| Failure::Fatal(format!("unexpected LSN {high:?}")))?;
            inflight.push_back(InFlight {
                nonce,
                high,
                next_key: next_key.clone(),
                count,
            });
            last_key = Some(next_key);
            // Reading runs ahead of appending by up to IN_FLIGHT chunks.
            while inflight.len() >= depth {
                let Some(oldest) = inflight.pop_front() else {
                    break;
                };
                if !self.durable_past(oldest.high, stop).await? {
                    return Ok(());
                }
                self.chunks.take(oldest.nonce);
                let (recorded, status) = self.progress(state, &queries, id).await?;
                if status != "running" {
                    return Ok(());
                }
                let expected =
                    std::iter::once(&oldest.next_key).chain(inflight.iter().map(|c| &c.next_key));
                if !expected.into_iter().any(|k| recorded.as_ref() == Some(k)) {
                    // The stream could not emit a chunk (its low watermark
                    // came in an earlier session): read on from the record.
                    let Some(recorded) = self
                        .settle(state, &queries, id, &mut inflight, stop)
                        .await?
                    else {
                        return Ok(());
                    };
                    last_key = recorded;
                    break;
                }
                self.metrics
                    .rows_read
                    .fetch_add(oldest.count, Ordering::Relaxed);
                self.metrics.chunks.fetch_add(1, Ordering::Relaxed);
                if !throttle.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(throttle) => {}
                        _ = stop.cancelled() => return Ok(()),
                    }
                }
            }
        }
    }

    /// Waits until the source's acknowledged position passes `high` (the
    /// chunk's high watermark transaction is in the log); false on `stop`.
    async fn durable_past(&self, high: u64, stop: &CancellationToken) -> Result<bool, Failure> {
        let key = self.pg.checkpoint_key();
        let mut durable = self.durable.clone();
        loop {
            let acked = durable
                .borrow_and_update()
                .checkpoints
                .get(key.as_str())
                .is_some_and(|c| c.ack_lsn > high);
            if acked {
                return Ok(true);
            }
            tokio::select! {
                changed = durable.changed() => {
                    if changed.is_err() {
                        return Err(Failure::Transient("the appender stopped".into()));
                    }
                }
                _ = stop.cancelled() => return Ok(false),
            }
        }
    }

    /// The recorded key and status (and the progress metrics updated).
    async fn progress(
        &self,
        state: &Client,
        queries: &Queries,
        id: i64,
    ) -> Result<(Option<Vec<Option<String>>>, String), Failure> {
        let row = state.query_one(&queries.progress, &[&id]).await?;
        self.metrics.current_read.store(
            u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
            Ordering::Relaxed,
        );
        self.metrics.current_estimated.store(
            u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
            Ordering::Relaxed,
        );
        Ok((row.get(0), row.get(3)))
    }

    /// Waits until every chunk in flight is in the log; returns the
    /// recorded key (`None` on `stop`).
    async fn settle(
        &self,
        state: &Client,
        queries: &Queries,
        id: i64,
        inflight: &mut VecDeque<InFlight>,
        stop: &CancellationToken,
    ) -> Result<Option<Option<Vec<Option<String>>>>, Failure> {
        while let Some(c) = inflight.pop_front() {
            if !self.durable_past(c.high, stop).await? {
                return Ok(None);
            }
            self.chunks.take(c.nonce);
            self.metrics.rows_read.fetch_add(c.count, Ordering::Relaxed);
            self.metrics.chunks.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Some(self.progress(state, queries, id).await?.0))
    }
}

/// A chunk handed to the stream, not yet known to be in the log.
struct InFlight {
    nonce: u64,
    high: u64,
    next_key: Vec<Option<String>>,
    count: u64,
}

/// Wakes `created` on each new backfill (the state database's
/// `sluice_backfills` notifications), reconnecting while `stop` is not
/// cancelled. The runner also looks once a second, so a lost notification
/// costs at most that.
async fn listen(url: String, created: Arc<tokio::sync::Notify>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let session = async {
            let wake = created.clone();
            let (client, driver) = crate::pgconn::connect_listening(
                &url,
                crate::pgconn::Session::named("sluice-backfill-listen"),
                move |_| wake.notify_one(),
            )
            .await?;
            client.batch_execute("LISTEN sluice_backfills").await?;
            // Held until the connection ends.
            let _ = driver.await;
            drop(client);
            Ok::<(), crate::pgconn::PgError>(())
        };
        tokio::select! {
            result = session => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "backfill listener");
                }
            }
            _ = stop.cancelled() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// A key as `(v1, v2)` for messages.
fn show_key(key: &[Option<String>]) -> String {
    let parts: Vec<&str> = key.iter().map(|v| v.as_deref().unwrap_or("NULL")).collect();
    format!("({})", parts.join(", "))
}

/// A chunk query's error, saying which bound stopped it.
fn chunk_failure(e: tokio_postgres::Error, timeout_ms: u64) -> Failure {
    let timed_out = e.as_db_error().is_some_and(|d| {
        *d.code() == tokio_postgres::error::SqlState::QUERY_CANCELED
            && d.message().contains("statement timeout")
    });
    if timed_out {
        return Failure::Fatal(format!(
            "a chunk query ran longer than source.postgres.backfill_statement_timeout_ms ({timeout_ms} ms); \
             a smaller chunk_size, or a predicate an index can serve, reads less per chunk"
        ));
    }
    e.into()
}

/// How often a running backfill's status is looked at, so that a cancel
/// reaches a chunk query still running.
const CANCEL_POLL: Duration = Duration::from_millis(500);

/// What [`guard`] watches and whom it stops.
struct Guard {
    state_url: String,
    source_url: String,
    backfill: i64,
    /// The backend reading the chunks (0 until it connected).
    source_pid: Arc<AtomicI32>,
    /// Set when the backfill was cancelled (its status left `running`).
    cancelled: Arc<AtomicBool>,
    /// Halts the run (its future is dropped, its connection closed).
    halt: CancellationToken,
    /// The run ended by itself.
    ended: CancellationToken,
    stop: CancellationToken,
}

/// Until the run ends: on shutdown, or once the backfill's status leaves
/// `running` (a cancel), cancels the query on the source backend and halts
/// the run.
async fn guard(g: Guard) {
    let state = crate::log::connect_as(&g.state_url, "sluice-backfill-guard")
        .await
        .map_err(|e| tracing::warn!(backfill = g.backfill, error = %e, "backfill guard: no state connection; only shutdown cancels"))
        .ok();
    loop {
        tokio::select! {
            _ = g.ended.cancelled() => return,
            _ = g.stop.cancelled() => break,
            _ = tokio::time::sleep(CANCEL_POLL) => {
                let Some(state) = &state else { continue };
                let status = state
                    .query_opt("SELECT status FROM sluice.backfills WHERE id = $1", &[&g.backfill])
                    .await;
                match status {
                    // `done` and `failed` are the run's own doing.
                    Ok(Some(r)) if r.get::<_, &str>(0) != "cancelled" => {}
                    Ok(_) => {
                        g.cancelled.store(true, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => tracing::debug!(backfill = g.backfill, error = %e, "backfill guard"),
                }
            }
        }
    }
    g.halt.cancel();
    let pid = g.source_pid.load(Ordering::Relaxed);
    if pid == 0 {
        return;
    }
    let cancelled = async {
        let client = crate::log::connect_as(&g.source_url, "sluice-backfill-cancel").await?;
        client
            .query_one("SELECT pg_cancel_backend($1)", &[&pid])
            .await
            .map(|r| r.get::<_, bool>(0))
            .map_err(crate::pgconn::PgError::from)
    };
    match cancelled.await {
        Ok(true) => tracing::info!(
            backfill = g.backfill,
            pid,
            "cancelled the backfill's query on the source"
        ),
        Ok(false) => tracing::warn!(
            backfill = g.backfill,
            pid,
            "the backfill's source backend could not be signalled"
        ),
        Err(e) => {
            tracing::warn!(backfill = g.backfill, pid, error = %e, "cancelling the backfill's query on the source failed")
        }
    }
}

/// Commits one watermark on its own.
async fn emit_mark(source: &Client, mark: Mark) -> Result<(), tokio_postgres::Error> {
    source
        .execute(
            "SELECT pg_logical_emit_message(true, $1::text, $2::text)",
            &[&MARK_PREFIX, &mark.encode()],
        )
        .await
        .map(drop)
}

/// Waits until the transactions in progress now have ended.
///
/// A transaction whose commit record precedes a low watermark in the WAL
/// can still be invisible for a moment after it (its commit is not yet in
/// the process array): its change is before the window but would not be in
/// the chunk. So, after the low watermark, wait until every transaction in
/// progress has ended; then the chunk's snapshot sees all that precede it.
/// The appender's own transactions write only the log, never a captured
/// table: they are not waited for.
async fn wait_for_writers(
    source: &Client,
    busy_sql: &tokio_postgres::Statement,
    writer_pid: i32,
) -> Result<(), tokio_postgres::Error> {
    let busy: Vec<String> = source
        .query_one(busy_sql, &[&crate::log::APPENDER_APPLICATION, &writer_pid])
        .await?
        .get(0);
    if busy.is_empty() {
        return Ok(());
    }
    loop {
        let still: i64 = source
            .query_one(
                "SELECT count(*) FROM unnest($1::text[]) x WHERE pg_xact_status(x::xid8) = 'in progress'",
                &[&busy],
            )
            .await?
            .get(0);
        if still == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The transactions in progress but the appender's ([`wait_for_writers`]):
/// its backend is the one with its pid (`$2`, which it publishes) *and*
/// its application name (`$1`), so neither a client naming itself so nor
/// a backend of another cluster with that pid is ever skipped.
const BUSY_SQL: &str =
    "SELECT coalesce(array_agg(x::text), '{}') FROM pg_snapshot_xip(pg_current_snapshot()) x
     WHERE x::xid NOT IN (SELECT backend_xid FROM pg_stat_get_activity($2)
                          WHERE application_name = $1 AND backend_xid IS NOT NULL)";

/// A backfill's recorded key, progress and status.
const PROGRESS_SQL: &str = "SELECT last_key, rows_read, coalesce(rows_estimated, 0), status \
                            FROM sluice.backfills WHERE id = $1";

/// The runner's per-chunk queries, prepared on its connections.
struct Queries {
    writers: tokio_postgres::Statement,
    progress: tokio_postgres::Statement,
}

/// A chunk for the normalizer thread.
struct Job {
    backfill: i64,
    raw: super::read::Raw,
    after: Option<Vec<Option<String>>>,
    last_key: Vec<Option<String>>,
    reply: tokio::sync::oneshot::Sender<Chunk>,
}

/// Chunks read ahead of the log.
const IN_FLIGHT: usize = 3;
