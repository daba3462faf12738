//! Source checkpoints: the last source position whose events are in the log.
//!
//! A checkpoint is written in the same transaction as the events it covers,
//! so "in the log" and "checkpointed" can never disagree after a crash.
//!
//! This module also owns the one rule for how an [`AppendItem`] moves a
//! checkpoint ([`Checkpoint::advance`]). Exactly-once depends on the
//! appender (which writes the checkpoints a batch leads to, and re-derives
//! them after a lost COMMIT) and the sources (which remember what they have
//! sent, to skip it after a reconnect) applying the same rule, so both call
//! this function rather than keeping copies.

use tokio_postgres::GenericClient;

use super::append::AppendItem;
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

    /// Moves this checkpoint past `item`, as appending it moves the stored
    /// one; returns whether anything moved (an empty backfill chunk moves
    /// nothing). The caller applies only items of this checkpoint's source.
    ///
    /// `ack_lsn` never goes back, and only a transaction end moves it.
    pub fn advance(&mut self, item: &AppendItem) -> bool {
        match item {
            AppendItem::Event { event, token, .. } => {
                self.position = event.position;
                // A token names a point between events: everything up to it
                // is in the log.
                self.complete = token.is_some();
                if token.is_some() {
                    self.token = token.clone();
                }
                true
            }
            AppendItem::Progress {
                position, token, ..
            } => {
                self.position = *position;
                self.complete = true;
                self.token = Some(token.clone());
                true
            }
            AppendItem::BackfillChunk { events, .. } => match events.last() {
                Some(last) => {
                    self.position = last.position;
                    self.complete = false;
                    true
                }
                None => false,
            },
            AppendItem::TxEnd {
                commit_lsn,
                end_lsn,
                ..
            } => {
                if self.position.commit_lsn != *commit_lsn {
                    self.position = SourcePosition {
                        commit_lsn: *commit_lsn,
                        ordinal: 0,
                    };
                }
                self.complete = true;
                self.ack_lsn = (*end_lsn).max(self.ack_lsn);
                true
            }
        }
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
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::event::PendingEvent;

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

    fn src() -> Arc<str> {
        "pg/main".into()
    }

    fn pending(commit_lsn: u64, ordinal: u64) -> PendingEvent {
        PendingEvent {
            position: pos(commit_lsn, ordinal),
            ..super::super::copy::test_event("a", None, "{}")
        }
    }

    fn ev(commit_lsn: u64, ordinal: u64) -> AppendItem {
        AppendItem::Event {
            source: src(),
            event: pending(commit_lsn, ordinal),
            token: None,
        }
    }

    fn ev_with_token(commit_lsn: u64, ordinal: u64, token: &'static [u8]) -> AppendItem {
        AppendItem::Event {
            source: src(),
            event: pending(commit_lsn, ordinal),
            token: Some(Bytes::from_static(token)),
        }
    }

    fn tx_end(commit_lsn: u64, end_lsn: u64) -> AppendItem {
        AppendItem::TxEnd {
            source: src(),
            commit_lsn,
            end_lsn,
        }
    }

    fn chunk(events: Vec<PendingEvent>) -> AppendItem {
        AppendItem::BackfillChunk {
            source: src(),
            events,
            batches: None,
            backfill: 1,
            after: None,
            last_key: vec![Some("9".into())],
            rows_read: 2,
        }
    }

    fn advanced(mut cp: Checkpoint, items: &[AppendItem]) -> Checkpoint {
        for item in items {
            cp.advance(item);
        }
        cp
    }

    #[test]
    fn checkpoints_follow_events_and_transaction_ends() {
        let cp = advanced(Checkpoint::default(), &[ev(10, 1), ev(10, 2)]);
        assert_eq!(
            cp,
            Checkpoint {
                position: pos(10, 2),
                complete: false,
                ack_lsn: 0,
                token: None,
            }
        );
        let cp = advanced(cp, &[tx_end(10, 18)]);
        assert!(cp.complete);
        assert_eq!(cp.ack_lsn, 18);
        assert_eq!(cp.position.ordinal, 2);
        // A transaction with no captured events still moves the checkpoint.
        let cp = advanced(cp, &[tx_end(30, 38)]);
        assert_eq!(cp.position.commit_lsn, 30);
        assert_eq!(cp.ack_lsn, 38);
    }

    #[test]
    fn an_event_without_a_token_leaves_its_transaction_open() {
        let start = Checkpoint {
            position: pos(5, 0),
            complete: true,
            ack_lsn: 7,
            token: Some(Bytes::from_static(b"t0")),
        };
        let mut cp = start.clone();
        assert!(cp.advance(&ev(10, 3)));
        assert_eq!(cp.position, pos(10, 3));
        assert!(!cp.complete);
        // Neither the ack point nor a stored token moves.
        assert_eq!(cp.ack_lsn, 7);
        assert_eq!(cp.token, start.token);
    }

    #[test]
    fn an_event_with_a_token_is_complete_up_to_it() {
        let mut cp = Checkpoint::default();
        assert!(cp.advance(&ev_with_token(10, 3, b"t1")));
        assert_eq!(
            cp,
            Checkpoint {
                position: pos(10, 3),
                complete: true,
                ack_lsn: 0,
                token: Some(Bytes::from_static(b"t1")),
            }
        );
    }

    #[test]
    fn progress_stores_its_token_and_position() {
        let mut cp = advanced(Checkpoint::default(), &[ev(10, 3)]);
        assert!(cp.advance(&AppendItem::Progress {
            source: src(),
            position: pos(12, 0),
            token: Bytes::from_static(b"t2"),
        }));
        assert_eq!(cp.position, pos(12, 0));
        assert!(cp.complete);
        assert_eq!(cp.token, Some(Bytes::from_static(b"t2")));
        assert_eq!(cp.ack_lsn, 0);
    }

    #[test]
    fn an_empty_backfill_chunk_moves_nothing() {
        let start = advanced(Checkpoint::default(), &[ev(10, 3), tx_end(10, 14)]);
        let mut cp = start.clone();
        assert!(!cp.advance(&chunk(Vec::new())));
        assert_eq!(cp, start);
    }

    #[test]
    fn a_backfill_chunk_moves_to_its_last_event() {
        let mut cp = advanced(Checkpoint::default(), &[ev(10, 3), tx_end(10, 14)]);
        assert!(cp.advance(&chunk(vec![pending(20, 4), pending(20, 8)])));
        assert_eq!(cp.position, pos(20, 8));
        // Its transaction (the high watermark's) is not over yet.
        assert!(!cp.complete);
        assert_eq!(cp.ack_lsn, 14);
    }

    #[test]
    fn a_transaction_end_keeps_the_position_within_its_transaction() {
        let mut cp = advanced(Checkpoint::default(), &[ev(10, 3)]);
        assert!(cp.advance(&tx_end(10, 14)));
        assert_eq!(cp.position, pos(10, 3));
        assert!(cp.complete);
        assert_eq!(cp.ack_lsn, 14);
    }

    #[test]
    fn a_transaction_end_of_another_commit_moves_to_its_start() {
        let mut cp = advanced(Checkpoint::default(), &[ev(10, 3)]);
        assert!(cp.advance(&tx_end(20, 24)));
        assert_eq!(cp.position, pos(20, 0));
        assert!(cp.complete);
        assert_eq!(cp.ack_lsn, 24);
        assert!(cp.covers_transaction(20));
    }

    #[test]
    fn ack_lsn_never_goes_back() {
        let mut cp = advanced(Checkpoint::default(), &[tx_end(30, 38)]);
        // A heartbeat or non-transactional message whose LSN is before the
        // last end LSN acknowledged.
        assert!(cp.advance(&tx_end(31, 31)));
        assert_eq!(cp.ack_lsn, 38);
        for item in [ev(40, 1), chunk(vec![pending(40, 4)])] {
            cp.advance(&item);
            assert_eq!(cp.ack_lsn, 38);
        }
        cp.advance(&tx_end(40, 45));
        assert_eq!(cp.ack_lsn, 45);
    }
}
