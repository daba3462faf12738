//! What may happen inside an append transaction besides the events: the
//! stages other modules plug into the one writer.
//!
//! The appender copies a batch's events into the log, stores the sources'
//! checkpoints, then runs each [`AppendStage`] in the order they were added,
//! inside the same transaction, and after COMMIT calls
//! [`AppendStage::committed`] on those that asked. A stage's writes are
//! therefore durable exactly when the batch's events are, and a batch whose
//! commit was lost is never staged twice (it is not appended twice).
//!
//! Today's stages: backfill progress (`backfill::progress`) and the webhook
//! outbox (`webhooks::Outbox`). `log` knows them only through this trait.
//!
//! Invariant: a stage fails the whole append by returning an error (the
//! appender reconnects and retries the batch); it never commits, rolls back
//! or holds on to the transaction.

use futures_util::future::BoxFuture;
use tokio_postgres::Client;

use crate::event::{PendingEvent, TenantId};

/// What a committed-to-be batch became, for the stages.
pub struct Appended<'a> {
    /// Every event with the seq it was given and its tenant, in seq order.
    /// Filled only when some stage [`wants_events`](AppendStage::wants_events)
    /// (or a hub is attached); empty otherwise.
    pub events: &'a [(i64, &'a TenantId, &'a PendingEvent)],
    /// Every backfill chunk of the batch, in batch order.
    pub chunks: &'a [AppendedChunk<'a>],
}

/// One backfill chunk as appended, with the progress its producer sent.
#[derive(Debug)]
pub struct AppendedChunk<'a> {
    pub backfill: i64,
    /// The key the chunk starts after (`None`: the table's start).
    pub after: Option<&'a [Option<String>]>,
    pub last_key: &'a [Option<String>],
    pub rows_read: u64,
    /// The seq of its first event (`None`: every row was left out).
    pub first_seq: Option<i64>,
    /// How many events it appended.
    pub emitted: i64,
}

/// A step of every append transaction, after the events and checkpoints.
pub trait AppendStage: Send + Sync {
    /// Whether the stage reads [`Appended::events`] (building that list
    /// costs a little per event).
    fn wants_events(&self) -> bool {
        false
    }

    /// Writes the stage's rows in the append transaction: `tx` is the
    /// appender's session with that transaction open (COMMIT is sent once
    /// every stage has returned). Its first statement may reach the server
    /// in one round trip with the appender's own. Returns whether
    /// [`AppendStage::committed`] should run after COMMIT.
    fn in_transaction<'a>(
        &'a self,
        tx: &'a Client,
        appended: &'a Appended<'a>,
    ) -> BoxFuture<'a, Result<bool, tokio_postgres::Error>>;

    /// After the transaction committed (wake whoever reads the rows).
    fn committed(&self) {}
}
