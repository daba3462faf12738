//! Counters of the Postgres source, read by logs now and `/metrics` later.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct SourceStats {
    pub connected: AtomicBool,
    pub reconnects: AtomicU64,
    pub events: AtomicU64,
    pub transactions: AtomicU64,
    /// Changes whose row had no usable tenant: delivered to no one.
    pub dropped_no_tenant: AtomicU64,
    /// `sluice` logical messages that were not valid custom events.
    pub dropped_malformed_custom: AtomicU64,
    /// Changes that could not be normalized for another reason.
    pub dropped_other: AtomicU64,
    /// Values sent as Postgres text because they did not convert.
    pub value_fallbacks: AtomicU64,
    pub acked_lsn: AtomicU64,
    pub server_wal_end: AtomicU64,
    /// Commit time (µs since the Unix epoch) of the last transaction read.
    pub last_commit_micros: AtomicI64,
    /// Heartbeat messages read back from the slot.
    pub heartbeats: AtomicU64,
    /// The pgoutput protocol version of the current session (0: none yet).
    pub protocol: AtomicU64,
    /// Messages of transactions received while they ran (streamed).
    pub streamed_messages: AtomicU64,
    /// Streamed transactions committed and appended.
    pub streamed_transactions: AtomicU64,
    /// Streamed transactions received and neither committed nor aborted.
    pub streamed_open: AtomicU64,
    /// Streamed transactions that outgrew `stream_memory_mb` and spilled
    /// to disk.
    pub streamed_spills: AtomicU64,
    /// What the monitor last saw on the source database.
    pub monitor: SlotHealth,
}

/// The replication slot as the monitor last saw it.
#[derive(Debug, Default)]
pub struct SlotHealth {
    /// `pg_current_wal_lsn()` on the source.
    pub wal_lsn: AtomicU64,
    /// The slot's `confirmed_flush_lsn`.
    pub confirmed_flush: AtomicU64,
    /// One of the `SLOT_*` values.
    pub slot: AtomicU8,
    /// Why the last check failed (the source database is unreachable).
    pub error: Mutex<Option<String>>,
    /// When the last check succeeded, µs since the Unix epoch (0: never).
    pub checked_micros: AtomicI64,
}

pub const SLOT_UNKNOWN: u8 = 0;
pub const SLOT_OK: u8 = 1;
pub const SLOT_MISSING: u8 = 2;
/// `wal_status = 'lost'`: WAL the slot needed was removed.
pub const SLOT_LOST: u8 = 3;

impl SlotHealth {
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub fn set_error(&self, e: Option<String>) {
        *self.error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }
}
