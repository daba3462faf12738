//! Backfill progress, recorded in the append transaction that holds a
//! chunk's events (an [`AppendStage`] of the log).
//!
//! Invariant: a chunk's progress is recorded only if the backfill stood
//! exactly where the chunk starts (`last_key IS NOT DISTINCT FROM after`),
//! so a chunk emitted after a dropped one never skips it; and it is
//! durable exactly when the chunk's events are.

use futures_util::future::BoxFuture;
use tokio_postgres::Client;

use crate::log::{AppendStage, Appended};

/// Moves `sluice.backfills` on by each appended chunk.
#[derive(Debug, Default)]
pub struct RecordProgress;

const RECORD: &str = "UPDATE sluice.backfills SET last_key = $2, rows_read = rows_read + $3,
       rows_emitted = rows_emitted + $4, chunks = chunks + 1,
       first_seq = coalesce(first_seq, $5), updated_at = now()
     WHERE id = $1 AND last_key IS NOT DISTINCT FROM $6";

impl AppendStage for RecordProgress {
    fn in_transaction<'a>(
        &'a self,
        tx: &'a Client,
        appended: &'a Appended<'a>,
    ) -> BoxFuture<'a, Result<bool, tokio_postgres::Error>> {
        Box::pin(async move {
            if appended.chunks.is_empty() {
                return Ok(false);
            }
            let statement = tx.prepare(RECORD).await?;
            for chunk in appended.chunks {
                let rows_read = i64::try_from(chunk.rows_read).unwrap_or(i64::MAX);
                let after: Option<Vec<Option<String>>> = chunk.after.map(<[_]>::to_vec);
                let last_key: &[Option<String>] = chunk.last_key;
                tx.execute(
                    &statement,
                    &[
                        &chunk.backfill,
                        &last_key,
                        &rows_read,
                        &chunk.emitted,
                        &chunk.first_seq,
                        &after,
                    ],
                )
                .await?;
            }
            Ok(false)
        })
    }
}
