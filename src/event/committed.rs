//! `Committed`: one event as the log holds it once committed, the one type
//! every reader sees whether it came live through the hub or from a log
//! read (the follower, SSE, NDJSON, WebSocket, webhooks, `sluice tail`, a
//! standby's feed).
//!
//! Invariant: `body` is the envelope JSON, byte for byte the same for a
//! seq whether it was handed out live when appended or rebuilt by a log
//! read (both serialize through `Envelope::to_json`).

use std::sync::Arc;

use bytes::Bytes;

use super::TenantId;

/// One committed event.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub seq: i64,
    pub tenant: TenantId,
    /// `tables/public.orders/update`
    pub topic: Arc<str>,
    /// `row.updated`, `custom.order.shipped`, …
    pub event_type: Arc<str>,
    /// The envelope JSON (one line).
    pub body: Bytes,
    /// Source commit time, µs since the Unix epoch.
    pub commit_micros: i64,
}

impl Committed {
    /// The envelope's `data`, parsed (only needed when a filter asks).
    pub fn data(&self) -> Option<serde_json::Value> {
        let mut v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        Some(v.get_mut("data")?.take())
    }
}
