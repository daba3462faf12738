//! The durable, ordered event log in Postgres schema `sluice`: migrations,
//! the appender (its one writer), source checkpoints, and reads.
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

use tokio_postgres::{Client, NoTls};

pub use append::{
    AppendCounts, AppendItem, Appender, AppenderHandle, Durable, APPENDER_APPLICATION,
};
pub use checkpoint::Checkpoint;
pub use position::{gap, gap_at, parse_from, Gap, InvalidFrom};
pub use read::{
    events_by_seq, pruned_through, query_events, read_events, LogQuery, ReadScope, StoredEvent,
};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("state database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("another sluice process is appending to this state database (advisory lock {0} is held); stop it or point state.url elsewhere")]
    AnotherWriter(i64),
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        version: i32,
        name: &'static str,
        source: tokio_postgres::Error,
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
            LogError::Db(e) => db_error_is_retryable(e),
            _ => false,
        }
    }
}

pub(crate) fn db_error_is_retryable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        None => true, // I/O error, no SQLSTATE: the connection broke
        Some(code) => {
            let c = code.code();
            // 08 connection exception, 40 transaction rollback, 53 insufficient
            // resources, 57P01..57P03 admin shutdown / crash / cannot connect now
            c.starts_with("08")
                || c.starts_with("40")
                || c.starts_with("53")
                || c.starts_with("57P")
        }
    }
}

/// Connects to the state database; the connection task runs in the background
/// and ends when the client is dropped.
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    connect_as(url, "sluice").await
}

/// Connects with `application_name` set (unless the URL sets one), so an
/// operator can tell Sluice's sessions apart in `pg_stat_activity`.
pub async fn connect_as(
    url: &str,
    application_name: &str,
) -> Result<Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    if config.get_application_name().is_none() {
        config.application_name(application_name);
    }
    let (client, conn) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "state connection ended");
        }
    });
    Ok(client)
}

/// The advisory lock key held by the appender for its whole session.
pub const APPENDER_LOCK_KEY: i64 = 0x51_75_1C_E0_00_01;

/// The advisory lock key held by the leader (the process that runs the
/// sources and the appender) for as long as it leads.
pub const LEADER_LOCK_KEY: i64 = 0x51_75_1C_E0_00_03;

/// The channel the appender notifies (payload: the new head seq) in each
/// append transaction.
pub const NOTIFY_CHANNEL: &str = "sluice_log";
