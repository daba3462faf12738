//! Retention: events older than `log.retention_hours` are deleted in the
//! background, in seq order and in bounded chunks, and the watermark
//! `sluice.retention.pruned_through` says which seqs are gone, so a reader
//! asking for one gets an explicit gap instead of a silent skip.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// Rows deleted per statement, so pruning never holds long locks.
const CHUNK: i64 = 10_000;

/// How long a publish request's `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_HOURS: i32 = 24;

/// Deletes what is older than `retention`; returns the new watermark.
pub async fn prune_once(
    client: &Client,
    retention: Duration,
) -> Result<i64, tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM sluice.publish_requests WHERE created_at < now() - make_interval(hours => $1)",
            &[&IDEMPOTENCY_HOURS],
        )
        .await?;
    let secs = retention.as_secs_f64();
    let Some(cutoff) = cutoff_seq(client, secs).await? else {
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
    // Webhook deliveries of pruned events go with them (their attempts
    // cascade): a pending one could never be sent, its body is gone.
    loop {
        let deleted = client
            .execute(
                "DELETE FROM sluice.webhook_deliveries WHERE id IN
                   (SELECT id FROM sluice.webhook_deliveries WHERE seq <= $1 LIMIT $2)",
                &[&cutoff, &CHUNK],
            )
            .await?;
        if (deleted as i64) < CHUNK {
            break;
        }
    }
    Ok(cutoff)
}

/// The highest seq appended more than `secs` ago, by binary search over
/// seq: appended_at never decreases along seq (one writer, one transaction
/// after another), so "older than" is a seq prefix, found with about
/// log2(n) primary-key lookups.
async fn cutoff_seq(client: &Client, secs: f64) -> Result<Option<i64>, tokio_postgres::Error> {
    let bounds = client
        .query_one("SELECT min(seq), max(seq) FROM sluice.events", &[])
        .await?;
    let (Some(mut lo), Some(mut hi)): (Option<i64>, Option<i64>) = (bounds.get(0), bounds.get(1))
    else {
        return Ok(None);
    };
    let old = |seq: i64| async move {
        // The first event at or after `seq` (seqs may have gaps).
        let row = client
            .query_opt(
                "SELECT appended_at < now() - make_interval(secs => $2) FROM sluice.events
                 WHERE seq >= $1 ORDER BY seq LIMIT 1",
                &[&seq, &secs],
            )
            .await?;
        Ok::<bool, tokio_postgres::Error>(row.is_some_and(|r| r.get(0)))
    };
    if !old(lo).await? {
        return Ok(None);
    }
    // Invariant: the event at or after `lo` is old; none after `hi` exists.
    while lo < hi {
        let mid = lo + (hi - lo + 1) / 2;
        if old(mid).await? {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    // `lo` may sit in a gap: the old event is the first one at or after it.
    let seq: Option<i64> = client
        .query_opt(
            "SELECT seq FROM sluice.events WHERE seq >= $1 ORDER BY seq LIMIT 1",
            &[&lo],
        )
        .await?
        .map(|r| r.get(0));
    Ok(seq)
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
                    tracing::warn!(error = %crate::pgconn::describe(&e), "retention pass failed; retrying next interval")
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
