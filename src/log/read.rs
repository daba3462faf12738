//! Reads of the log. Every read names its scope: one tenant, or the
//! operator's cross-tenant view, which is spelled out as such.

use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row};

use crate::event::{format_time_micros, Envelope, TenantId};

/// Whose events a read may return.
#[derive(Debug, Clone)]
pub enum ReadScope {
    Tenant(TenantId),
    /// Every tenant: only for operator tools (`sluice tail` without
    /// `--tenant`, admin keys).
    Operator,
}

/// One event as stored, with its envelope rebuilt.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: i64,
    pub tenant: String,
    pub event_type: String,
    pub topic: String,
    /// The envelope JSON, byte for byte what the live path sends.
    pub body: String,
    /// Source commit time, µs since the Unix epoch.
    pub commit_micros: i64,
}

impl StoredEvent {
    /// The envelope's `data`, parsed (for filters).
    pub fn data(&self) -> Option<serde_json::Value> {
        let mut v: serde_json::Value = serde_json::from_str(&self.body).ok()?;
        Some(v.get_mut("data")?.take())
    }
}

/// What to read besides the scope.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// First seq (inclusive).
    pub from: i64,
    /// Last seq (inclusive), if any.
    pub to: Option<i64>,
    pub limit: i64,
    /// Only these event types.
    pub types: Option<Vec<String>>,
    /// Commit time bounds (inclusive since, exclusive until).
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

const COLUMNS: &str = "seq, tenant, type, topic, source, subject, txid, lsn, commit_time, data";

fn to_u64(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

fn stored(r: &Row) -> StoredEvent {
    let seq: i64 = r.get(0);
    let tenant: String = r.get(1);
    let event_type: String = r.get(2);
    let topic: String = r.get(3);
    let time: chrono::DateTime<chrono::Utc> = r.get(8);
    let commit_micros = time.timestamp_micros();
    let time = format_time_micros(commit_micros);
    let body = Envelope {
        seq,
        tenant: &tenant,
        event_type: &event_type,
        topic: &topic,
        source: r.get(4),
        subject: r.get(5),
        txid: to_u64(r.get(6)),
        lsn: to_u64(r.get(7)),
        time: &time,
        data: r.get(9),
    }
    .to_json();
    StoredEvent {
        seq,
        tenant,
        event_type,
        topic,
        body,
        commit_micros,
    }
}

/// Events of `scope` matching `q`, in seq order.
pub async fn query_events(
    client: &impl GenericClient,
    scope: &ReadScope,
    q: &LogQuery,
) -> Result<Vec<StoredEvent>, tokio_postgres::Error> {
    let mut sql = format!("SELECT {COLUMNS} FROM sluice.events WHERE seq >= $1");
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&q.from];
    let hash;
    let tenant;
    if let ReadScope::Tenant(t) = scope {
        hash = t.hash32();
        tenant = t.as_str();
        params.push(&hash);
        params.push(&tenant);
        sql.push_str(&format!(
            " AND tenant_hash = ${} AND tenant = ${}",
            params.len() - 1,
            params.len()
        ));
    }
    if let Some(to) = &q.to {
        params.push(to);
        sql.push_str(&format!(" AND seq <= ${}", params.len()));
    }
    if let Some(types) = &q.types {
        params.push(types);
        sql.push_str(&format!(" AND type = ANY(${})", params.len()));
    }
    if let Some(since) = &q.since {
        params.push(since);
        sql.push_str(&format!(" AND commit_time >= ${}", params.len()));
    }
    if let Some(until) = &q.until {
        params.push(until);
        sql.push_str(&format!(" AND commit_time < ${}", params.len()));
    }
    params.push(&q.limit);
    sql.push_str(&format!(" ORDER BY seq LIMIT ${}", params.len()));
    let rows = client.query(&sql, &params).await?;
    Ok(rows.iter().map(stored).collect())
}

/// Events with `seq >= from`, in seq order, at most `limit`.
pub async fn read_events(
    client: &impl GenericClient,
    scope: &ReadScope,
    from: i64,
    limit: i64,
) -> Result<Vec<StoredEvent>, tokio_postgres::Error> {
    query_events(
        client,
        scope,
        &LogQuery {
            from,
            limit,
            ..LogQuery::default()
        },
    )
    .await
}

/// The events with these seqs, in seq order, any tenant (the webhook
/// dispatcher: each delivery was matched to its tenant when written).
pub async fn events_by_seq(
    client: &impl GenericClient,
    seqs: &[i64],
) -> Result<Vec<StoredEvent>, tokio_postgres::Error> {
    let sql = format!("SELECT {COLUMNS} FROM sluice.events WHERE seq = ANY($1) ORDER BY seq");
    let rows = client.query(&sql, &[&seqs]).await?;
    Ok(rows.iter().map(stored).collect())
}

/// The highest seq pruned by retention (0 when nothing was): positions at or
/// below it are gone.
pub async fn pruned_through(client: &impl GenericClient) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_opt("SELECT pruned_through FROM sluice.retention", &[])
        .await?
        .map_or(0, |r| r.get(0)))
}
