//! Counters of the Postgres source, read by logs now and `/metrics` later.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};

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
}
