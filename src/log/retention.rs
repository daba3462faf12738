//! Retention: events older than `log.retention_hours` are deleted in the
//! background, in seq order and in bounded chunks, and the watermark
//! `sluice.retention.pruned_through` says which seqs are gone, so a reader
//! asking for one gets an explicit gap instead of a silent skip.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// Rows deleted per statement, so pruning never holds long locks.
const CHUNK: i64 = 10_000;

/// Deletes what is older than `retention`; returns the new watermark.
pub async fn prune_once(
    client: &Client,
    retention: Duration,
) -> Result<i64, tokio_postgres::Error> {
    let secs = retention.as_secs_f64();
    // appended_at never decreases along seq (one writer, one transaction
    // after another), so "older than" is a seq prefix.
    let cutoff: Option<i64> = client
        .query_one(
            "SELECT max(seq) FROM sluice.events WHERE appended_at < now() - make_interval(secs => $1)",
            &[&secs],
        )
        .await?
        .get(0);
    let Some(cutoff) = cutoff else {
        return crate::log::pruned_through(client).await;
    };
    loop {
        let deleted = client
            .execute(
                "DELETE FROM sluice.events WHERE seq IN
                   (SELECT seq FROM sluice.events WHERE seq <= $1 ORDER BY seq LIMIT $2)",
                &[&cutoff, &CHUNK],
            )
            .await?;
        if (deleted as i64) < CHUNK {
            break;
        }
    }
    client
        .execute(
            "UPDATE sluice.retention SET pruned_through = greatest(pruned_through, $1), pruned_at = now()",
            &[&cutoff],
        )
        .await?;
    Ok(cutoff)
}

/// Prunes every `interval` until `shutdown`.
pub async fn run(
    url: String,
    retention: Duration,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match crate::log::connect_as(&url, "sluice-retention").await {
            Ok(client) => match prune_once(&client, retention).await {
                Ok(w) => tracing::debug!(pruned_through = w, "retention pass"),
                Err(e) => {
                    tracing::warn!(error = %e, "retention pass failed; retrying next interval")
                }
            },
            Err(e) => tracing::warn!(error = %e, "retention cannot reach the state database"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
