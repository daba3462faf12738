//! Snapshots and backfills: a captured table's existing rows as
//! `row.snapshot` events, consistent with the change stream.
//!
//! The technique is DBLog's watermarks (Netflix, 2019), which Debezium's
//! incremental snapshots also follow. For each chunk the leader's runner
//!
//! 1. commits a low watermark, `pg_logical_emit_message(true,
//!    'sluice-backfill', {b, n, h: false})`;
//! 2. waits until the transactions in progress just after the low
//!    watermark have ended (one whose commit record precedes it can be
//!    invisible for a moment), then reads the next chunk in primary-key
//!    order in a snapshot of its own;
//! 3. hands the rows to the replication stream (`Chunks`, by nonce `n`),
//!    normalized into events on a thread of their own while it goes on;
//! 4. commits a high watermark (`h: true`).
//!
//! The stream remembers the keys that change between the two watermarks;
//! at the high watermark it emits the chunk's rows except those keys (their
//! change events, already in the log, are at least as new), so no
//! snapshot row ever follows a newer change of its key. The chunk's
//! progress is written in the append transaction that holds its events.

pub mod initial;
pub mod predicate;
pub mod progress;
pub mod read;
pub mod runner;

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio_postgres::Client;

use crate::config::PgSourceConfig;
use crate::event::PendingEvent;
use crate::source::postgres::normalize::DropReason;
use crate::source::postgres::pgoutput::{Column, Relation, ReplicaIdentity};
use crate::sql::{quote_ident, quote_literal};

pub use crate::source::postgres::messages::MARK_PREFIX;
/// Rows per chunk unless a request says otherwise. Measured with
/// `scripts/bench-backfill.sh` (ARCHITECTURE.md): 2,000 reached 0.35 of a
/// raw read, 5,000 0.48, 10,000 0.56, 20,000 0.55; live changes' p99
/// during the backfill stayed within 27–47 ms up to 10,000 (p50 4 → 12
/// ms) and reached 64 ms at 20,000.
pub const DEFAULT_CHUNK: i32 = 10_000;
pub const MAX_CHUNK: i32 = 100_000;

/// A watermark: backfill `b`, chunk nonce `n`, high (`h`) or low.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub b: i64,
    pub n: u64,
    pub h: bool,
}

impl Mark {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a mark serializes")
    }
    pub fn decode(content: &[u8]) -> Option<Mark> {
        serde_json::from_slice(content).ok()
    }
}

/// One chunk read by the runner, waiting for its high watermark.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub backfill: i64,
    /// Its rows' snapshot events, in key order, normalized beside the
    /// stream; the stream stamps the high watermark's transaction on them.
    pub events: Vec<PendingEvent>,
    /// The events' record batches (rebuilt by the appender when the stream
    /// leaves events out).
    pub batches: Vec<crate::log::batch::PreBatch>,
    /// Rows that gave no event, and why (counted by the stream).
    pub dropped: Vec<DropReason>,
    pub rows_read: u64,
    /// The key the chunk starts after (`None`: the table's start).
    pub after: Option<Vec<Option<String>>>,
    /// The last row's primary-key values.
    pub last_key: Vec<Option<String>>,
}

/// Chunks handed from the runner to the stream, by nonce. A chunk is
/// registered once read, before its high watermark, and arrives when its
/// rows are normalized (on another thread, while the runner reads the next
/// one); the stream waits for it at the high watermark.
#[derive(Debug, Default)]
pub struct Chunks(Mutex<HashMap<u64, (i64, oneshot::Receiver<Chunk>)>>);

impl Chunks {
    pub fn put(&self, nonce: u64, backfill: i64, chunk: oneshot::Receiver<Chunk>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(nonce, (backfill, chunk));
    }
    pub fn take(&self, nonce: u64) -> Option<oneshot::Receiver<Chunk>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&nonce)
            .map(|(_, c)| c)
    }
    /// Forgets the chunks of a backfill (it ended).
    pub fn forget(&self, backfill: i64) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, (b, _)| *b != backfill);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("table {0} does not exist")]
    UnknownTable(String),
    #[error("table {0} is not captured (it is not in source.postgres.tables)")]
    NotCaptured(String),
    #[error("table {0} has no primary key: a backfill reads in primary-key order")]
    NoPrimaryKey(String),
    #[error("invalid predicate: {0}")]
    InvalidPredicate(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("no backfill {0}")]
    NotFound(i64),
    #[error("database: {0}")]
    Db(#[from] crate::pgconn::PgError),
}

impl From<tokio_postgres::Error> for BackfillError {
    fn from(e: tokio_postgres::Error) -> Self {
        BackfillError::Db(e.into())
    }
}

/// What a backfill needs to know of a table.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub relation: Relation,
    /// `format_type` of each column, for casting key literals.
    pub type_names: Vec<String>,
    /// Each column's collation (`None`: not collatable), so that a key
    /// literal compares as the column does.
    pub collations: Vec<Option<String>>,
    /// Indexes (into the columns) of the primary key, in key order.
    pub primary_key: Vec<usize>,
}

impl TableInfo {
    pub fn qualified(&self) -> String {
        format!(
            "{}.{}",
            quote_ident(&self.relation.namespace),
            quote_ident(&self.relation.name)
        )
    }
}

/// The table's columns as pgoutput describes them (generated and dropped
/// columns left out), its types and primary key; `None` if it does not exist.
pub async fn table_info(
    source: &Client,
    schema: &str,
    table: &str,
) -> Result<Option<TableInfo>, tokio_postgres::Error> {
    let Some(rel) = source
        .query_opt(
            "SELECT c.oid, c.relreplident::text FROM pg_catalog.pg_class c
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&schema, &table],
        )
        .await?
    else {
        return Ok(None);
    };
    let oid: u32 = rel.get(0);
    let identity = match rel.get::<_, &str>(1) {
        "f" => ReplicaIdentity::Full,
        "n" => ReplicaIdentity::Nothing,
        "i" => ReplicaIdentity::Index,
        _ => ReplicaIdentity::Default,
    };
    let cols = source
        .query(
            "SELECT a.attname::text, a.atttypid, a.atttypmod,
                    format_type(a.atttypid, a.atttypmod),
                    coalesce(a.attnum = ANY(i.indkey::int2[]), false),
                    array_position(i.indkey::int2[], a.attnum),
                    CASE WHEN a.attcollation <> 0 THEN a.attcollation::regcollation::text END
             FROM pg_catalog.pg_attribute a
             LEFT JOIN pg_catalog.pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
             ORDER BY a.attnum",
            &[&oid],
        )
        .await?;
    let mut columns = Vec::new();
    let mut type_names = Vec::new();
    let mut collations = Vec::new();
    let mut pk: Vec<(i32, usize)> = Vec::new();
    for (idx, r) in cols.iter().enumerate() {
        let in_pk: bool = r.get(4);
        if let Some(pos) = r.get::<_, Option<i32>>(5) {
            pk.push((pos, idx));
        }
        columns.push(Column {
            is_key: in_pk || identity == ReplicaIdentity::Full,
            name: r.get(0),
            type_oid: r.get(1),
            type_modifier: r.get(2),
        });
        type_names.push(r.get(3));
        collations.push(r.get(6));
    }
    pk.sort();
    Ok(Some(TableInfo {
        relation: Relation {
            id: oid,
            namespace: schema.to_owned(),
            name: table.to_owned(),
            replica_identity: identity,
            columns,
        },
        type_names,
        collations,
        primary_key: pk.into_iter().map(|(_, i)| i).collect(),
    }))
}

/// The chunk query: rows after `after` (primary-key values) that pass
/// `filter`, in key order. `filter` is the call of the predicate's function
/// ([`predicate::call_sql`]), never the predicate's text: the key bound
/// applies to every row whatever the predicate says.
pub fn chunk_sql(
    info: &TableInfo,
    filter: Option<&str>,
    after: Option<&[Option<String>]>,
    limit: i32,
) -> String {
    let cols: Vec<String> = info
        .relation
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    let key: Vec<String> = info
        .primary_key
        .iter()
        .map(|&i| quote_ident(&info.relation.columns[i].name))
        .collect();
    let mut sql = format!(
        "SELECT {} FROM {}\nWHERE true",
        cols.join(", "),
        info.qualified()
    );
    if let Some(after) = after {
        let lits: Vec<String> = info
            .primary_key
            .iter()
            .zip(after)
            .map(|(&i, v)| match v {
                Some(v) => format!("{}::{}", quote_literal(v), info.type_names[i]),
                None => "NULL".to_owned(),
            })
            .collect();
        sql.push_str(&format!(
            " AND ({}) > ({})",
            key.join(", "),
            lits.join(", ")
        ));
    }
    if let Some(f) = filter {
        sql.push_str(&format!(" AND {f}"));
    }
    sql.push_str(&format!("\nORDER BY {} LIMIT {limit}", key.join(", ")));
    sql
}

/// A backfill as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Backfill {
    pub id: i64,
    pub table: String,
    pub predicate: Option<String>,
    pub kind: String,
    pub status: String,
    pub chunk_size: i32,
    pub throttle_ms: i32,
    pub rows_read: i64,
    pub rows_emitted: i64,
    pub rows_estimated: Option<i64>,
    pub chunks: i64,
    /// Subscribe from this seq to get the table from its beginning: every
    /// snapshot row of this backfill and every change after it starts.
    pub from_seq: i64,
    /// The first snapshot event appended.
    pub first_seq: Option<i64>,
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
}

const COLUMNS: &str = "id, table_name, predicate, kind, status, chunk_size, throttle_ms, rows_read,
    rows_emitted, rows_estimated, chunks, first_seq, error, created_at, updated_at, finished_at, start_seq";

fn from_row(r: &tokio_postgres::Row) -> Backfill {
    let ts =
        |v: chrono::DateTime<chrono::Utc>| v.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    Backfill {
        id: r.get(0),
        table: r.get(1),
        predicate: r.get(2),
        kind: r.get(3),
        status: r.get(4),
        chunk_size: r.get(5),
        throttle_ms: r.get(6),
        rows_read: r.get(7),
        rows_emitted: r.get(8),
        rows_estimated: r.get(9),
        chunks: r.get(10),
        from_seq: r.get::<_, i64>(16) + 1,
        first_seq: r.get(11),
        error: r.get(12),
        created_at: ts(r.get(13)),
        updated_at: ts(r.get(14)),
        finished_at: r
            .get::<_, Option<chrono::DateTime<chrono::Utc>>>(15)
            .map(ts),
    }
}

/// What a client asks for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub table: String,
    #[serde(default, rename = "where")]
    pub predicate: Option<String>,
    #[serde(default)]
    pub chunk_size: Option<i32>,
    #[serde(default)]
    pub throttle_ms: Option<i32>,
}

/// Validates `req` against the captured tables and the source database
/// (nothing runs before every check passed) and records it; the leader's
/// runner picks it up.
pub async fn create(
    state: &Client,
    source: &Client,
    pg: &PgSourceConfig,
    req: &Request,
    kind: &str,
) -> Result<Backfill, BackfillError> {
    let (schema, table) = req
        .table
        .split_once('.')
        .filter(|(s, t)| !s.is_empty() && !t.is_empty() && !t.contains('.'))
        .ok_or_else(|| {
            BackfillError::InvalidRequest(format!(
                "table: expected schema.table, got {:?}",
                req.table
            ))
        })?;
    let chunk = req.chunk_size.unwrap_or(DEFAULT_CHUNK);
    if !(1..=MAX_CHUNK).contains(&chunk) {
        return Err(BackfillError::InvalidRequest(format!(
            "chunk_size: expected 1 to {MAX_CHUNK}, got {chunk}"
        )));
    }
    let throttle = req.throttle_ms.unwrap_or(0);
    if !(0..=60_000).contains(&throttle) {
        return Err(BackfillError::InvalidRequest(format!(
            "throttle_ms: expected 0 to 60000, got {throttle}"
        )));
    }
    let info = table_info(source, schema, table)
        .await?
        .ok_or_else(|| BackfillError::UnknownTable(req.table.clone()))?;
    if !pg.tables.iter().any(|t| t.table == req.table) {
        return Err(BackfillError::NotCaptured(req.table.clone()));
    }
    if info.primary_key.is_empty() {
        return Err(BackfillError::NoPrimaryKey(req.table.clone()));
    }
    // An empty or blank `where` is a mistake, not "every row".
    let predicate = match req.predicate.as_deref() {
        None => None,
        Some(p) => Some(predicate::text(p).map_err(predicate_error)?),
    };
    if let Some(p) = predicate {
        // The server parses it alone, as a function body, and it is
        // inspected (module `predicate`); nothing of it runs.
        predicate::validate(source, &info, p)
            .await
            .map_err(predicate_error)?;
    }
    let estimated = estimate_rows(source, &info).await?;
    let row = state
        .query_one(
            &format!(
                "INSERT INTO sluice.backfills (table_name, predicate, kind, chunk_size, throttle_ms, rows_estimated, start_seq)
                 VALUES ($1, $2, $3, $4, $5, $6, {HEAD_SQL})
                 RETURNING {COLUMNS}",
                HEAD_SQL = crate::log::HEAD_SQL
            ),
            &[&req.table, &predicate, &kind, &chunk, &throttle, &estimated],
        )
        .await?;
    Ok(from_row(&row))
}

fn predicate_error(e: predicate::PredicateError) -> BackfillError {
    match e {
        predicate::PredicateError::Invalid(m) => BackfillError::InvalidPredicate(m),
        predicate::PredicateError::Db(e) => BackfillError::Db(e.into()),
    }
}

/// Tables at most this large (bytes on disk) that were never analysed are
/// counted exactly for `rows_estimated`; larger ones get the planner's
/// estimate from their size.
const COUNT_BELOW_BYTES: i64 = 64 << 20;

/// The table's row count as `pg_class.reltuples` has it; for a table never
/// analysed (`reltuples` = -1 since PostgreSQL 14) a count when it is
/// small, else the planner's estimate from its pages and row width.
pub async fn estimate_rows(
    source: &Client,
    info: &TableInfo,
) -> Result<Option<i64>, tokio_postgres::Error> {
    estimate_rows_counting_below(source, info, COUNT_BELOW_BYTES).await
}

/// [`estimate_rows`], counting tables of at most `count_below` bytes.
pub async fn estimate_rows_counting_below(
    source: &Client,
    info: &TableInfo,
    count_below: i64,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let row = source
        .query_one(
            // A partitioned table's size is its partitions'.
            "SELECT c.reltuples::float8,
                    (SELECT coalesce(sum(pg_catalog.pg_total_relation_size(p.relid)), 0)::int8
                     FROM pg_catalog.pg_partition_tree(c.oid) p)
             FROM pg_catalog.pg_class c WHERE c.oid = $1",
            &[&info.relation.id],
        )
        .await?;
    let (tuples, bytes): (f64, i64) = (row.get(0), row.get(1));
    if tuples >= 0.0 {
        return Ok(Some(tuples as i64));
    }
    if bytes <= count_below {
        let n: i64 = source
            .query_one(&format!("SELECT count(*) FROM {}", info.qualified()), &[])
            .await?
            .get(0);
        return Ok(Some(n));
    }
    // The plan comes as `json`.
    let plan: Option<serde_json::Value> = source
        .query_one(
            &format!("EXPLAIN (FORMAT JSON) SELECT 1 FROM {}", info.qualified()),
            &[],
        )
        .await?
        .try_get(0)
        .ok();
    Ok(plan
        .and_then(|v| v[0]["Plan"]["Plan Rows"].as_f64())
        .map(|n| n as i64))
}

/// A query that is true when a chunk's rows are all past `after` and in
/// ascending key order (`first` ≤ `last`, `first` > `after`): a chunk that
/// returns rows already read stops its backfill instead of looping.
pub fn order_check_sql(
    info: &TableInfo,
    after: Option<&[Option<String>]>,
    first: &[Option<String>],
    last: &[Option<String>],
) -> String {
    let row = |key: &[Option<String>]| -> String {
        let lits: Vec<String> = info
            .primary_key
            .iter()
            .zip(key)
            .map(
                |(&i, v)| match (v, info.collations.get(i).cloned().flatten()) {
                    (Some(v), Some(c)) => {
                        format!("{}::{} COLLATE {c}", quote_literal(v), info.type_names[i])
                    }
                    (Some(v), None) => format!("{}::{}", quote_literal(v), info.type_names[i]),
                    (None, _) => "NULL".to_owned(),
                },
            )
            .collect();
        format!("ROW({})", lits.join(", "))
    };
    let mut sql = format!("SELECT coalesce({} <= {}, false)", row(first), row(last));
    if let Some(after) = after {
        sql.push_str(&format!(
            " AND coalesce({} > {}, false)",
            row(first),
            row(after)
        ));
    }
    sql
}

/// The server's message of a database error (never the whole debug text).
pub fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

pub async fn get(state: &Client, id: i64) -> Result<Backfill, BackfillError> {
    state
        .query_opt(
            &format!("SELECT {COLUMNS} FROM sluice.backfills WHERE id = $1"),
            &[&id],
        )
        .await?
        .map(|r| from_row(&r))
        .ok_or(BackfillError::NotFound(id))
}

/// Cancels a running backfill: the runner's guard sees the status within
/// half a second, cancels its query on the source and stops it;
/// `Ok(None)` when it is not running.
pub async fn cancel(state: &Client, id: i64) -> Result<Option<Backfill>, BackfillError> {
    let row = state
        .query_opt(
            &format!(
                "UPDATE sluice.backfills SET status = 'cancelled', updated_at = now(), finished_at = now()
                 WHERE id = $1 AND status = 'running' RETURNING {COLUMNS}"
            ),
            &[&id],
        )
        .await?;
    match row {
        Some(r) => Ok(Some(from_row(&r))),
        None => get(state, id).await.map(|_| None),
    }
}

pub async fn list(state: &Client) -> Result<Vec<Backfill>, BackfillError> {
    Ok(state
        .query(
            &format!("SELECT {COLUMNS} FROM sluice.backfills ORDER BY id DESC LIMIT 100"),
            &[],
        )
        .await?
        .iter()
        .map(from_row)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_identifiers_are_quoted() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn marks_round_trip() {
        let m = Mark {
            b: 7,
            n: u64::MAX,
            h: true,
        };
        assert_eq!(Mark::decode(m.encode().as_bytes()), Some(m));
        assert_eq!(Mark::decode(b"{}"), None);
    }

    #[test]
    fn chunk_queries_page_by_key_and_call_the_predicate_function_beside_the_bound() {
        let info = TableInfo {
            relation: Relation {
                id: 1,
                namespace: "public".into(),
                name: "orders".into(),
                replica_identity: ReplicaIdentity::Full,
                columns: ["tenant", "id", "note"]
                    .iter()
                    .map(|n| Column {
                        is_key: true,
                        name: (*n).into(),
                        type_oid: 25,
                        type_modifier: -1,
                    })
                    .collect(),
            },
            type_names: vec!["text".into(), "integer".into(), "text".into()],
            collations: vec![Some("\"default\"".into()), None, Some("\"default\"".into())],
            primary_key: vec![0, 1],
        };
        let first = chunk_sql(&info, None, None, 10);
        assert_eq!(
            first,
            "SELECT \"tenant\", \"id\", \"note\" FROM \"public\".\"orders\"\nWHERE true\nORDER BY \"tenant\", \"id\" LIMIT 10"
        );
        let next = chunk_sql(
            &info,
            Some("pg_temp.sluice_where_1(\"tenant\", \"id\", \"note\")"),
            Some(&[Some("o'brien".into()), Some("42".into())]),
            10,
        );
        assert_eq!(
            next,
            "SELECT \"tenant\", \"id\", \"note\" FROM \"public\".\"orders\"\nWHERE true AND (\"tenant\", \"id\") > ('o''brien'::text, '42'::integer) AND pg_temp.sluice_where_1(\"tenant\", \"id\", \"note\")\nORDER BY \"tenant\", \"id\" LIMIT 10"
        );
    }

    #[test]
    fn order_checks_compare_keys_typed_and_collated_like_the_columns() {
        let info = TableInfo {
            relation: Relation {
                id: 1,
                namespace: "public".into(),
                name: "t".into(),
                replica_identity: ReplicaIdentity::Default,
                columns: vec![Column {
                    is_key: true,
                    name: "id".into(),
                    type_oid: 23,
                    type_modifier: -1,
                }],
            },
            type_names: vec!["text".into()],
            collations: vec![Some("\"C\"".into())],
            primary_key: vec![0],
        };
        assert_eq!(
            order_check_sql(&info, Some(&[Some("9".into())]), &[Some("10".into())], &[Some("12".into())]),
            "SELECT coalesce(ROW('10'::text COLLATE \"C\") <= ROW('12'::text COLLATE \"C\"), false) AND coalesce(ROW('10'::text COLLATE \"C\") > ROW('9'::text COLLATE \"C\"), false)"
        );
    }
}
