//! The durable, ordered event log in Postgres schema `sluice`: migrations,
//! the appender (its one writer) and the stages that join its transactions,
//! source checkpoints, and reads. Only this module knows the tables
//! `sluice.events`, `sluice.checkpoints` and `sluice.relation_tenants` and
//! the record-batch format.
//!
//! Invariant: `seq` order is commit order of the appender's transactions,
//! and a source position is in the log at most once (the checkpoint is
//! written in the same transaction as the events it covers).

pub mod append;
pub mod batch;
pub mod checkpoint;
pub mod copy;
pub mod migrate;
pub mod position;
pub mod read;
pub mod retention;
pub mod stage;

use tokio_postgres::Client;

use crate::pgconn::{self, PgError, Session};

pub use append::{
    AppendCounts, AppendItem, Appender, AppenderHandle, Durable, APPENDER_APPLICATION,
};
pub use checkpoint::Checkpoint;
pub use position::{gap, gap_at, parse_from, Gap, InvalidFrom};
pub use read::{
    counts_by_type_topic, custom_seqs_of_txid, events_by_seq, head, pruned_through, query_events,
    read_events, tenant_seqs_present, LogQuery, ReadScope, HEAD_SQL,
};
pub use stage::{AppendStage, Appended, AppendedChunk};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("state database: {0}")]
    Db(#[from] PgError),
    #[error("another sluice process is appending to this state database (advisory lock {0} is held); stop it or point state.url elsewhere")]
    AnotherWriter(i64),
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        version: i32,
        name: &'static str,
        source: PgError,
    },
    #[error("the state database has migration {found}, newer than this binary knows ({known}); upgrade sluice")]
    TooNew { found: i32, known: i32 },
    #[error("the appender stopped")]
    Closed,
}

impl LogError {
    /// Whether retrying after reconnecting can succeed (the database went
    /// away or the transaction lost a serialization race), as opposed to a
    /// fault that needs an operator.
    pub fn is_retryable(&self) -> bool {
        match self {
            LogError::Db(e) => e.is_retryable(),
            _ => false,
        }
    }
}

impl From<tokio_postgres::Error> for LogError {
    fn from(e: tokio_postgres::Error) -> Self {
        LogError::Db(e.into())
    }
}

pub(crate) fn db_error_is_retryable(e: &tokio_postgres::Error) -> bool {
    pgconn::is_retryable(e)
}

/// Connects to a database (through [`pgconn`], with the string's TLS
/// settings); the connection task runs in the background and ends when the
/// client is dropped.
pub async fn connect(url: &str) -> Result<Client, PgError> {
    connect_as(url, "sluice").await
}

/// Connects with `application_name` set (unless the URL sets one), so an
/// operator can tell Sluice's sessions apart in `pg_stat_activity`.
pub async fn connect_as(url: &str, application_name: &str) -> Result<Client, PgError> {
    pgconn::connect(url, Session::named(application_name)).await
}

/// The advisory lock key held by the appender for its whole session.
pub const APPENDER_LOCK_KEY: i64 = 0x51_75_1C_E0_00_01;

/// The advisory lock key held by the leader (the process that runs the
/// sources and the appender) for as long as it leads.
pub const LEADER_LOCK_KEY: i64 = 0x51_75_1C_E0_00_03;

/// The channel the appender notifies (payload: the new head seq) in each
/// append transaction.
pub const NOTIFY_CHANNEL: &str = "sluice_log";
