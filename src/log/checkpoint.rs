//! Source checkpoints: the last source position whose events are in the log.
//!
//! A checkpoint is written in the same transaction as the events it covers,
//! so "in the log" and "checkpointed" can never disagree after a crash.

use tokio_postgres::GenericClient;

use crate::event::SourcePosition;

/// Where a source stands in the log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// Position of the last event appended (or of the last complete
    /// transaction, when it had no events).
    pub position: SourcePosition,
    /// Whether the transaction at `position.commit_lsn` is completely in the
    /// log. When false, only its changes up to `position.ordinal` are.
    pub complete: bool,
    /// The end LSN of the last complete transaction: what may be
    /// acknowledged to Postgres as flushed.
    pub ack_lsn: u64,
    /// Sources resumed by an opaque token (MongoDB): the token after the
    /// last event in the log, or of the last progress the source reported.
    pub token: Option<bytes::Bytes>,
}

impl Checkpoint {
    /// Whether a change at `pos` is already in the log (so must be skipped).
    pub fn covers(&self, pos: SourcePosition) -> bool {
        if pos.commit_lsn != self.position.commit_lsn {
            return pos.commit_lsn < self.position.commit_lsn;
        }
        self.complete || pos.ordinal <= self.position.ordinal
    }

    /// Whether the whole transaction committed at `commit_lsn` is in the log.
    pub fn covers_transaction(&self, commit_lsn: u64) -> bool {
        commit_lsn < self.position.commit_lsn
            || (commit_lsn == self.position.commit_lsn && self.complete)
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Loads the checkpoint of `source` (the default when there is none yet).
pub async fn load(
    client: &impl GenericClient,
    source: &str,
) -> Result<Checkpoint, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT commit_lsn, ordinal, complete, ack_lsn, resume_token FROM sluice.checkpoints WHERE source = $1",
            &[&source],
        )
        .await?;
    Ok(row.map_or_else(Checkpoint::default, |r| Checkpoint {
        position: SourcePosition {
            commit_lsn: to_u64(r.get(0)),
            ordinal: to_u64(r.get(1)),
        },
        complete: r.get(2),
        ack_lsn: to_u64(r.get(3)),
        token: r.get::<_, Option<Vec<u8>>>(4).map(bytes::Bytes::from),
    }))
}

/// Writes a checkpoint: `$1` source, then commit_lsn, ordinal, complete,
/// ack_lsn, resume_token (see [`store`]).
pub const STORE: &str =
    "INSERT INTO sluice.checkpoints (source, commit_lsn, ordinal, complete, ack_lsn, resume_token, updated_at)
     VALUES ($1, $2, $3, $4, $5, $6, now())
     ON CONFLICT (source) DO UPDATE SET commit_lsn = excluded.commit_lsn,
       ordinal = excluded.ordinal, complete = excluded.complete,
       ack_lsn = excluded.ack_lsn, resume_token = excluded.resume_token,
       updated_at = now()";

/// Writes the checkpoint of `source` (inside the caller's transaction),
/// with `statement`: [`STORE`] or that statement prepared.
pub async fn store<T>(
    client: &impl GenericClient,
    statement: &T,
    source: &str,
    cp: &Checkpoint,
) -> Result<(), tokio_postgres::Error>
where
    T: tokio_postgres::ToStatement + ?Sized + Sync + Send,
{
    client
        .execute(
            statement,
            &[
                &source,
                &to_i64(cp.position.commit_lsn),
                &to_i64(cp.position.ordinal),
                &cp.complete,
                &to_i64(cp.ack_lsn),
                &cp.token.as_deref(),
            ],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(commit_lsn: u64, ordinal: u64) -> SourcePosition {
        SourcePosition {
            commit_lsn,
            ordinal,
        }
    }

    #[test]
    fn partial_transaction_covers_only_its_appended_changes() {
        let cp = Checkpoint {
            position: pos(100, 3),
            complete: false,
            ack_lsn: 50,
            token: None,
        };
        assert!(cp.covers(pos(99, 1_000)));
        assert!(cp.covers(pos(100, 3)));
        assert!(!cp.covers(pos(100, 4)));
        assert!(!cp.covers(pos(101, 1)));
        assert!(!cp.covers_transaction(100));
        assert!(cp.covers_transaction(99));
    }

    #[test]
    fn complete_transaction_is_covered_whole() {
        let cp = Checkpoint {
            position: pos(100, 3),
            complete: true,
            ack_lsn: 120,
            token: None,
        };
        assert!(cp.covers(pos(100, 9)));
        assert!(cp.covers_transaction(100));
        assert!(!cp.covers_transaction(101));
    }

    #[test]
    fn empty_checkpoint_covers_nothing() {
        let cp = Checkpoint::default();
        assert!(!cp.covers(pos(1, 1)));
        assert!(!cp.covers_transaction(1));
    }
}
