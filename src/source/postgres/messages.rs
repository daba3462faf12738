//! The prefixes of the logical decoding messages Sluice reads from the
//! stream (`pg_logical_emit_message(transactional, prefix, content)`), each
//! defined here once: custom events, which users and `POST`/WebSocket
//! publish emit; heartbeats, which `monitor` emits; backfill watermarks,
//! which the backfill runner emits. Messages with any other prefix are
//! ignored.

/// Custom events: content `{"tenant", "type", "data", "subject"?}`
/// becomes `custom.<type>` (docs/events.md).
pub const CUSTOM_PREFIX: &str = "sluice";

/// Heartbeats: each is an empty unit of progress that moves the checkpoint
/// and the slot (non-transactional, empty content).
pub const HEARTBEAT_PREFIX: &str = "sluice-heartbeat";

/// Backfill watermarks: content `{b, n, h}` (`backfill::Mark`).
pub const MARK_PREFIX: &str = "sluice-backfill";
