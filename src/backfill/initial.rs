//! The initial snapshot: when a table is configured `snapshot = "initial"`
//! and the slot does not exist yet, the slot is created with an exported
//! snapshot (`CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT` on a replication
//! session) and the tables are read inside that snapshot (`SET TRANSACTION
//! SNAPSHOT`) before the source starts. Their `row.snapshot` events thus
//! precede every change from the slot, and together they are exactly the
//! state at the slot's consistent point followed by every change after it.
//!
//! Progress is recorded per chunk like a backfill's (kind `initial`). If
//! the process dies part-way, the exported snapshot is gone with it; the
//! leader's runner then finishes the rest as a watermark backfill from the
//! last recorded key, which keeps the log consistent with the stream.
//!
//! When the slot exists already (`sluice setup` made it, or the table was
//! configured later), a table with no initial snapshot recorded gets one
//! as a watermark backfill of kind `initial` instead.
//!
//! **Invariant:** each `snapshot = "initial"` table gets at most one
//! initial snapshot per state database (the `sluice.backfills` row of kind
//! `initial` is the record).

use std::sync::Arc;

use super::{chunk_sql, table_info, BackfillError, Request};
use crate::config::PgSourceConfig;
use crate::event::{parse_lsn, SourcePosition};
use crate::log::{AppendItem, AppenderHandle, LogError};
use crate::source::postgres::catalog::Catalog;
use crate::source::postgres::normalize::{Normalizer, TableRule, TxContext};
use crate::source::postgres::stream::{replication_session, SESSION_OPTIONS};

#[derive(Debug, thiserror::Error)]
pub enum InitialError {
    #[error("initial snapshot of {table}: {source}")]
    Table {
        table: String,
        source: BackfillError,
    },
    #[error("initial snapshot: {0}")]
    Db(#[from] crate::pgconn::PgError),
    #[error("initial snapshot: creating the slot with an exported snapshot failed: {0}")]
    Slot(String),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Setup(#[from] crate::source::postgres::setup::SetupError),
}

/// With the slot already there (made by `sluice setup`, or before the
/// table was configured `snapshot = "initial"`), a table that never had an
/// initial snapshot gets one as a watermark backfill (kind `initial`),
/// which the leader's runner reads while the stream flows. A table has had
/// one once any backfill of kind `initial` is recorded for it, whatever
/// became of it: a cancelled or failed one is not started again (a
/// `sluice backfill` reads the table on demand).
async fn schedule_unsnapshotted(
    pg: &PgSourceConfig,
    state_url: &str,
    source: &tokio_postgres::Client,
    tables: &[&crate::config::TableConfig],
) -> Result<Vec<String>, InitialError> {
    let state = crate::log::connect_as(state_url, "sluice-snapshot").await?;
    let mut done = Vec::new();
    for t in tables {
        let recorded: Option<(i64, String)> = state
            .query_opt(
                "SELECT id, status FROM sluice.backfills WHERE table_name = $1 AND kind = 'initial'
                 ORDER BY id DESC LIMIT 1",
                &[&t.table],
            )
            .await?
            .map(|r| (r.get(0), r.get(1)));
        match recorded {
            Some((id, status)) if status == "failed" || status == "cancelled" => {
                tracing::warn!(table = %t.table, backfill = id, %status, "the initial snapshot did not complete; `sluice backfill --table` reads the table on demand");
            }
            Some(_) => {}
            None => {
                let req = Request {
                    table: t.table.clone(),
                    chunk_size: Some(PAGE),
                    ..Request::default()
                };
                let b = super::create(&state, source, pg, &req, "initial")
                    .await
                    .map_err(|source| InitialError::Table {
                        table: t.table.clone(),
                        source,
                    })?;
                done.push(format!(
                    "table {} is configured snapshot=\"initial\" and was never snapshotted (the slot {} already existed): backfill {} reads it while streaming",
                    t.table,
                    pg.slot(),
                    b.id
                ));
            }
        }
    }
    Ok(done)
}

impl From<tokio_postgres::Error> for InitialError {
    fn from(e: tokio_postgres::Error) -> Self {
        InitialError::Db(e.into())
    }
}

/// Rows read per query inside the exported snapshot.
const PAGE: i32 = 10_000;

/// Creates the slot with an exported snapshot and appends the initial
/// tables' rows, if there are such tables and the slot is new. Returns what
/// it did (for the start-up log).
pub async fn run_if_new_slot(
    pg: &PgSourceConfig,
    state_url: &str,
    handle: &AppenderHandle,
) -> Result<Vec<String>, InitialError> {
    let tables: Vec<_> = pg
        .tables
        .iter()
        .filter(|t| t.snapshot.as_deref() == Some("initial"))
        .collect();
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let source = crate::log::connect_as(&pg.url, "sluice-snapshot").await?;
    let slot = pg.slot();
    if source
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?
        .is_some()
    {
        return schedule_unsnapshotted(pg, state_url, &source, &tables).await;
    }
    for line in crate::source::postgres::setup::publication(&source, pg).await? {
        tracing::info!(action = %line, "setup");
    }
    let state = crate::log::connect_as(state_url, "sluice-snapshot").await?;
    // Record the snapshots first (cancelling any earlier attempt: without a
    // slot it appended nothing the stream would continue from).
    let mut jobs = Vec::new();
    for t in &tables {
        state
            .execute(
                "UPDATE sluice.backfills SET status = 'cancelled', finished_at = now()
                 WHERE table_name = $1 AND kind = 'initial' AND status = 'running'",
                &[&t.table],
            )
            .await?;
        let req = Request {
            table: t.table.clone(),
            chunk_size: Some(PAGE),
            ..Request::default()
        };
        let b = super::create(&state, &source, pg, &req, "initial")
            .await
            .map_err(|source| InitialError::Table {
                table: t.table.clone(),
                source,
            })?;
        jobs.push((b.id, (*t).clone()));
    }

    // The slot, and the snapshot of its consistent point.
    let mut repl = replication_session(pg)
        .await
        .map_err(|e| InitialError::Slot(e.to_string()))?;
    let command = crate::source::postgres::setup::create_slot_command(&slot, repl.major(), true);
    let rows = repl
        .simple_query(&command)
        .await
        .map_err(|e| InitialError::Slot(e.to_string()))?;
    let text = |row: &[Option<bytes::Bytes>], i: usize| {
        row.get(i)
            .and_then(|v| v.as_ref())
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let row = rows
        .first()
        .ok_or_else(|| InitialError::Slot("no answer".into()))?;
    let consistent = text(row, 1)
        .as_deref()
        .and_then(parse_lsn)
        .ok_or_else(|| InitialError::Slot("no consistent point".into()))?;
    let snapshot = text(row, 2).ok_or_else(|| InitialError::Slot("no snapshot name".into()))?;
    let mut done = vec![format!(
        "created replication slot {slot} with exported snapshot {snapshot} at {}",
        crate::event::format_lsn(consistent)
    )];

    let options = format!("{SESSION_OPTIONS} -c standard_conforming_strings=on");
    let reader = crate::pgconn::connect(
        &pg.url,
        crate::pgconn::Session::named("sluice-snapshot").with_options(&options),
    )
    .await?;
    reader
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            crate::sql::quote_literal(&snapshot)
        ))
        .await?;
    let mut catalog = Catalog::new(crate::log::connect_as(&pg.url, "sluice-snapshot").await?);
    let mut normalizer = Normalizer::new(&pg.event_source());
    let key: Arc<str> = format!("initial/{}", pg.checkpoint_key()).into();
    let ctx = TxContext::new(0, consistent, chrono::Utc::now().timestamp_micros());
    let mut ordinal = 0u64;
    for (id, t) in jobs {
        let (schema, name) = t.schema_and_name();
        let info = table_info(&reader, schema, name)
            .await?
            .ok_or_else(|| InitialError::Table {
                table: t.table.clone(),
                source: BackfillError::UnknownTable(t.table.clone()),
            })?;
        let rule = TableRule::from(&t);
        normalizer.set_relation(catalog.resolve(info.relation.clone(), Some(rule)).await?);
        let mut last_key: Option<Vec<Option<String>>> = None;
        let mut total = 0u64;
        loop {
            let sql = chunk_sql(&info, None, last_key.as_deref(), PAGE);
            let raw = super::read::raw(&reader, &sql).await?;
            let Some(next) = raw.last_key(&info.primary_key) else {
                break;
            };
            let super::read::Normalized {
                mut events,
                dropped,
                batches,
            } = super::read::normalize(&mut normalizer, info.relation.id, &raw);
            for reason in dropped {
                tracing::warn!(table = %t.table, ?reason, "snapshot row not delivered");
            }
            for e in &mut events {
                ordinal += 1;
                e.txid = None;
                e.lsn = Some(consistent);
                e.time_micros = ctx.commit_time_micros;
                e.time = ctx.time.clone();
                e.position = SourcePosition {
                    commit_lsn: consistent,
                    ordinal,
                };
            }
            total += raw.rows;
            handle
                .send(AppendItem::BackfillChunk {
                    source: key.clone(),
                    events,
                    batches: Some(batches),
                    backfill: id,
                    after: last_key.clone(),
                    last_key: next.clone(),
                    rows_read: raw.rows,
                })
                .await?;
            last_key = Some(next);
        }
        // Done once everything sent is durable.
        let mut durable = handle.durable();
        loop {
            let reached = durable
                .borrow_and_update()
                .checkpoints
                .get(&key)
                .is_some_and(|c| c.position.ordinal >= ordinal);
            if reached || ordinal == 0 {
                break;
            }
            if durable.changed().await.is_err() {
                return Err(LogError::Closed.into());
            }
        }
        state
            .execute(
                "UPDATE sluice.backfills SET status = 'done', updated_at = now(), finished_at = now() WHERE id = $1",
                &[&id],
            )
            .await?;
        done.push(format!("initial snapshot of {}: {total} rows", t.table));
    }
    reader.batch_execute("COMMIT").await?;
    drop(repl);
    Ok(done)
}
