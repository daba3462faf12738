//! Reads of the log. Every read names its scope: one tenant, or the
//! operator's cross-tenant view, which is spelled out as such.

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
    /// The envelope JSON, byte for byte what the live path sends.
    pub body: String,
}

const COLUMNS: &str = "seq, tenant, type, topic, source, subject, txid, lsn, commit_time, data";

fn to_u64(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

fn stored(r: &Row) -> StoredEvent {
    let seq: i64 = r.get(0);
    let tenant: String = r.get(1);
    let time: chrono::DateTime<chrono::Utc> = r.get(8);
    let time = format_time_micros(time.timestamp_micros());
    let body = Envelope {
        seq,
        tenant: &tenant,
        event_type: r.get(2),
        topic: r.get(3),
        source: r.get(4),
        subject: r.get(5),
        txid: to_u64(r.get(6)),
        lsn: to_u64(r.get(7)),
        time: &time,
        data: r.get(9),
    }
    .to_json();
    StoredEvent { seq, tenant, body }
}

/// Events with `seq >= from`, in seq order, at most `limit`.
pub async fn read_events(
    client: &impl GenericClient,
    scope: &ReadScope,
    from: i64,
    limit: i64,
) -> Result<Vec<StoredEvent>, tokio_postgres::Error> {
    let rows = match scope {
        ReadScope::Tenant(t) => {
            client
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM sluice.events
                         WHERE tenant_hash = $1 AND tenant = $2 AND seq >= $3 ORDER BY seq LIMIT $4"
                    ),
                    &[&t.hash32(), &t.as_str(), &from, &limit],
                )
                .await?
        }
        ReadScope::Operator => {
            client
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM sluice.events WHERE seq >= $1 ORDER BY seq LIMIT $2"
                    ),
                    &[&from, &limit],
                )
                .await?
        }
    };
    Ok(rows.iter().map(stored).collect())
}
