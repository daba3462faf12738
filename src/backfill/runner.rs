//! The leader's backfill runner: one running backfill at a time, chunk by
//! chunk, with its watermarks (see the module above). Resumes after a
//! restart from the last chunk recorded in the log's transaction.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};
use tokio_util::sync::CancellationToken;

use super::{chunk_sql, db_message, table_info, Chunk, Chunks, Mark, MARK_PREFIX};
use crate::config::PgSourceConfig;
use crate::log::Durable;
use crate::source::postgres::normalize::TableRule;
use crate::source::postgres::pgoutput::{Datum, Tuple};
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

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        if e.as_db_error().is_some() {
            Failure::Fatal(db_message(&e))
        } else {
            Failure::Transient(e.to_string())
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
        let mut backoff = Duration::from_millis(200);
        loop {
            let result = self.next(&stop).await;
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
            .map_err(|e| e.to_string())?
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
        let result = self
            .run_one(
                &state,
                id,
                &table,
                predicate.as_deref(),
                chunk_size,
                throttle,
                last_key,
                stop,
            )
            .await;
        self.metrics.running.store(0, Ordering::Relaxed);
        self.chunks.forget(id);
        match result {
            Ok(()) => Ok(true),
            Err(Failure::Fatal(why)) => {
                tracing::error!(backfill = id, %table, error = %why, "backfill failed");
                state
                    .execute(
                        "UPDATE sluice.backfills SET status = 'failed', error = $2, updated_at = now(), finished_at = now() WHERE id = $1",
                        &[&id, &why],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
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
        stop: &CancellationToken,
    ) -> Result<(), Failure> {
        let mut config: tokio_postgres::Config = self
            .pg
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| Failure::Fatal(e.to_string()))?;
        config.options(format!(
            "{SESSION_OPTIONS} -c standard_conforming_strings=on"
        ));
        config.application_name("sluice-backfill");
        let (source, conn) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let (schema, name) = table.split_once('.').unwrap_or(("public", table));
        let info = table_info(&source, schema, name)
            .await?
            .ok_or_else(|| Failure::Fatal(format!("table {table} no longer exists")))?;
        if info.primary_key.is_empty() {
            return Err(Failure::Fatal(format!("table {table} has no primary key")));
        }
        let rule = self
            .pg
            .tables
            .iter()
            .find(|t| t.table == table)
            .map(|t| TableRule {
                tenant_column: t.tenant_column.clone(),
                fields_only: t.fields_only,
            })
            .ok_or_else(|| Failure::Fatal(format!("table {table} is no longer captured")))?;
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        // Throttled backfills read one chunk at a time, so the pause is
        // between every two chunks.
        let depth = if throttle.is_zero() { IN_FLIGHT } else { 1 };
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            let nonce: u64 = rand::random();
            let mark = |h| Mark { b: id, n: nonce, h }.encode();
            source
                .execute(
                    "SELECT pg_logical_emit_message(true, $1::text, $2::text)",
                    &[&MARK_PREFIX, &mark(false)],
                )
                .await?;
            // A transaction whose commit record precedes the low watermark
            // in the WAL can still be invisible for a moment after it (its
            // commit is not yet in the process array): its change is before
            // the window but not in the chunk. So wait until every
            // transaction in progress after the low watermark has ended;
            // then the chunk's snapshot sees all that precede it.
            let after_low: String = source
                .query_one("SELECT pg_current_snapshot()::text", &[])
                .await?
                .get(0);
            loop {
                let busy: i64 = source
                    .query_one(
                        "SELECT count(*) FROM pg_snapshot_xip($1::text::pg_snapshot) x
                         WHERE pg_xact_status(x) = 'in progress'",
                        &[&after_low],
                    )
                    .await?
                    .get(0);
                if busy == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // The chunk's own snapshot, read-only whatever the predicate
            // calls.
            let sql = chunk_sql(&info, predicate, last_key.as_deref(), chunk_size);
            source
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?;
            let read = source.simple_query(&sql).await;
            source.batch_execute("COMMIT").await?;
            let rows: Vec<Tuple> = read?
                .into_iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => Some(Tuple(
                        (0..r.len())
                            .map(|i| match r.get(i) {
                                Some(v) => Datum::Text(bytes::Bytes::copy_from_slice(v.as_bytes())),
                                None => Datum::Null,
                            })
                            .collect(),
                    )),
                    _ => None,
                })
                .collect();
            let Some(last) = rows.last() else {
                // The end, if every chunk in flight was recorded.
                let Some(recorded) = self.settle(state, id, &mut inflight, stop).await? else {
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
            let next_key: Vec<Option<String>> = info
                .primary_key
                .iter()
                .map(|&i| match last.0.get(i) {
                    Some(Datum::Text(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                    _ => None,
                })
                .collect();
            let count = rows.len() as u64;
            self.chunks.put(
                nonce,
                Chunk {
                    backfill: id,
                    relation: info.relation.clone(),
                    rule: rule.clone(),
                    rows,
                    after: last_key.clone(),
                    last_key: next_key.clone(),
                },
            );
            let high: String = source
                .query_one(
                    "SELECT pg_logical_emit_message(true, $1::text, $2::text)::text",
                    &[&MARK_PREFIX, &mark(true)],
                )
                .await?
                .get(0);
            let high = crate::event::parse_lsn(&high)
                .ok_or_else(|| Failure::Fatal(format!("unexpected LSN {high}")))?;
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
                let (recorded, status) = self.progress(state, id).await?;
                if status != "running" {
                    return Ok(());
                }
                let expected =
                    std::iter::once(&oldest.next_key).chain(inflight.iter().map(|c| &c.next_key));
                if !expected.into_iter().any(|k| recorded.as_ref() == Some(k)) {
                    // The stream could not emit a chunk (its low watermark
                    // came in an earlier session): read on from the record.
                    let Some(recorded) = self.settle(state, id, &mut inflight, stop).await? else {
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
        id: i64,
    ) -> Result<(Option<Vec<Option<String>>>, String), Failure> {
        let row = state
            .query_one(
                "SELECT last_key, rows_read, coalesce(rows_estimated, 0), status FROM sluice.backfills WHERE id = $1",
                &[&id],
            )
            .await?;
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
        Ok(Some(self.progress(state, id).await?.0))
    }
}

/// A chunk handed to the stream, not yet known to be in the log.
struct InFlight {
    nonce: u64,
    high: u64,
    next_key: Vec<Option<String>>,
    count: u64,
}

/// Chunks read ahead of the log.
const IN_FLIGHT: usize = 3;
