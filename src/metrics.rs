//! Metric names (one place) and the Prometheus text rendering.
//!
//! Naming: `sluice_` prefix, base units, `_total` for counters, no tenant
//! label (unbounded cardinality).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

pub const EVENTS_APPENDED: &str = "sluice_events_appended_total";
pub const SOURCE_EVENTS: &str = "sluice_source_events_total";
pub const DROPPED: &str = "sluice_source_changes_dropped_total";
pub const TRANSACTIONS: &str = "sluice_source_transactions_total";
pub const RECONNECTS: &str = "sluice_source_reconnects_total";
pub const SOURCE_STREAMING: &str = "sluice_source_streaming";
pub const HEARTBEATS: &str = "sluice_source_heartbeats_total";
pub const LEADER: &str = "sluice_leader";
pub const LAG_BYTES: &str = "sluice_replication_lag_bytes";
pub const LAG_SECONDS: &str = "sluice_replication_lag_seconds";
pub const LOG_HEAD: &str = "sluice_log_head_seq";
pub const SUBSCRIBERS: &str = "sluice_subscribers";
pub const HUB_SUBSCRIBERS: &str = "sluice_hub_live_subscribers";
pub const CATCHUPS: &str = "sluice_subscriber_catchups_total";
pub const HUB_DELIVERED: &str = "sluice_hub_deliveries_total";
pub const SSE_EVENTS: &str = "sluice_sse_events_sent_total";
pub const WS_EVENTS: &str = "sluice_ws_events_sent_total";
pub const WS_CONNECTIONS: &str = "sluice_ws_connections";
pub const WEBHOOK_ATTEMPTS: &str = "sluice_webhook_attempts_total";
pub const WEBHOOK_OUTCOMES: &str = "sluice_webhook_deliveries_total";
pub const WEBHOOK_IN_FLIGHT: &str = "sluice_webhook_requests_in_flight";
pub const WEBHOOK_LATENCY_SUM: &str = "sluice_webhook_request_seconds_total";

/// Counters kept by the HTTP layer.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    pub sse_subscribers: AtomicU64,
    pub sse_events: AtomicU64,
    pub catchups: AtomicU64,
    pub ws_connections: AtomicU64,
    pub ws_subscriptions: AtomicU64,
    pub ws_events: AtomicU64,
}

/// One sample: name, optional `label="value"` text, value.
pub type Sample<'a> = (&'a str, Option<&'a str>, f64);

/// Renders samples as Prometheus text; `kinds` gives each name's type.
pub fn render(samples: &[Sample], kinds: &[(&str, &str, &str)]) -> String {
    let mut out = String::new();
    for (name, kind, help) in kinds {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (n, labels, v) in samples.iter().filter(|s| s.0 == *name) {
            match labels {
                Some(l) => {
                    let _ = writeln!(out, "{n}{{{l}}} {v}");
                }
                None => {
                    let _ = writeln!(out, "{n} {v}");
                }
            }
        }
    }
    out
}

pub fn load(a: &AtomicU64) -> f64 {
    a.load(Ordering::Relaxed) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_help_type_and_labelled_samples() {
        let text = render(
            &[
                (SUBSCRIBERS, Some("transport=\"sse\""), 3.0),
                (LAG_BYTES, None, 0.0),
            ],
            &[
                (SUBSCRIBERS, "gauge", "open subscriptions"),
                (LAG_BYTES, "gauge", "lag"),
            ],
        );
        assert!(text.contains(
            "# TYPE sluice_subscribers gauge\nsluice_subscribers{transport=\"sse\"} 3\n"
        ));
        assert!(text.contains("sluice_replication_lag_bytes 0\n"));
    }
}
