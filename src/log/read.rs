//! Reads of the log. Every read names its scope: one tenant, or the
//! operator's cross-tenant view, which is spelled out as such.

use tokio_postgres::GenericClient;

use crate::event::TenantId;

/// Whose events a read may return.
#[derive(Debug, Clone)]
pub enum ReadScope {
    Tenant(TenantId),
    /// Every tenant: only for operator tools (`sluice tail` without
    /// `--tenant`, admin keys).
    Operator,
}

/// One event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: i64,
    pub tenant: String,
    pub body: String,
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
                    "SELECT seq, tenant, body FROM sluice.events
                     WHERE tenant = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
                    &[&t.as_str(), &from, &limit],
                )
                .await?
        }
        ReadScope::Operator => client
            .query(
                "SELECT seq, tenant, body FROM sluice.events WHERE seq >= $1 ORDER BY seq LIMIT $2",
                &[&from, &limit],
            )
            .await?,
    };
    Ok(rows
        .iter()
        .map(|r| StoredEvent {
            seq: r.get(0),
            tenant: r.get(1),
            body: r.get(2),
        })
        .collect())
}
