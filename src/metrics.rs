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
pub const PROTOCOL: &str = "sluice_source_protocol_version";
pub const STREAMED_TX: &str = "sluice_source_streamed_transactions_total";
pub const STREAMED_OPEN: &str = "sluice_source_streamed_transactions_open";
pub const STREAMED_SPILLS: &str = "sluice_source_streamed_spills_total";
pub const LEADER: &str = "sluice_leader";
pub const LAG_BYTES: &str = "sluice_replication_lag_bytes";
pub const LAG_SECONDS: &str = "sluice_replication_lag_seconds";
pub const LOG_HEAD: &str = "sluice_log_head_seq";
pub const SUBSCRIBERS: &str = "sluice_subscribers";
pub const HUB_SUBSCRIBERS: &str = "sluice_hub_live_subscribers";
pub const CATCHUPS: &str = "sluice_subscriber_catchups_total";
pub const HUB_DELIVERED: &str = "sluice_hub_deliveries_total";
pub const HUB_PUBLISHED: &str = "sluice_hub_published_events_total";
pub const HUB_PUBLISH_SECONDS: &str = "sluice_hub_publish_seconds_total";
pub const GROUP_DELIVERIES: &str = "sluice_group_deliveries_total";
pub const GROUP_REDELIVERIES: &str = "sluice_group_redeliveries_total";
pub const GROUP_ACKS: &str = "sluice_group_acks_total";
pub const GROUP_NACKS: &str = "sluice_group_nacks_total";
pub const GROUP_DEAD: &str = "sluice_group_dead_letters_total";
pub const GROUP_MESSAGES: &str = "sluice_group_messages";
pub const SSE_EVENTS: &str = "sluice_sse_events_sent_total";
pub const WS_EVENTS: &str = "sluice_ws_events_sent_total";
pub const WS_CONNECTIONS: &str = "sluice_ws_connections";
pub const LIVE_QUERIES: &str = "sluice_live_queries_total";
pub const LIVE_READS: &str = "sluice_live_reads_total";
pub const LIVE_ROWS: &str = "sluice_live_rows_read_total";
pub const LIVE_SHARED: &str = "sluice_live_shared_reads_total";
pub const WEBHOOK_ATTEMPTS: &str = "sluice_webhook_attempts_total";
pub const WEBHOOK_OUTCOMES: &str = "sluice_webhook_deliveries_total";
pub const WEBHOOK_IN_FLIGHT: &str = "sluice_webhook_requests_in_flight";
pub const WEBHOOK_LATENCY_SUM: &str = "sluice_webhook_request_seconds_total";
pub const DELIVERY_LATENCY: &str = "sluice_delivery_latency_seconds";
pub const OUTBOX_DEPTH: &str = "sluice_webhook_outbox_depth";
pub const BACKFILL_ROWS: &str = "sluice_backfill_rows_read_total";
pub const BACKFILL_CHUNKS: &str = "sluice_backfill_chunks_total";
pub const BACKFILL_RUNNING: &str = "sluice_backfill_running";
pub const BACKFILL_PROGRESS: &str = "sluice_backfill_current_rows";

/// Counters kept by the HTTP layer.
/// Upper bounds (seconds) of the latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// A fixed-bucket histogram of durations, lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last slot is `+Inf`.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records a duration given in microseconds (negative: clock skew
    /// between hosts, counted as zero).
    pub fn observe_micros(&self, micros: i64) {
        let micros = u64::try_from(micros).unwrap_or(0);
        let secs = micros as f64 / 1e6;
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Records the time from `commit_micros` (µs since the Unix epoch) to now.
    pub fn observe_since(&self, commit_micros: i64) {
        if commit_micros > 0 {
            self.observe_micros(chrono::Utc::now().timestamp_micros() - commit_micros);
        }
    }

    /// Appends `name_bucket{labels,le=…}`, `name_sum` and `name_count`.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = LATENCY_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

#[derive(Debug, Default)]
pub struct HttpMetrics {
    pub sse_subscribers: AtomicU64,
    pub sse_events: AtomicU64,
    pub catchups: AtomicU64,
    pub ws_connections: AtomicU64,
    pub ws_subscriptions: AtomicU64,
    pub ws_events: AtomicU64,
    /// Open NDJSON tails (`follow=true`).
    pub ndjson_subscribers: AtomicU64,
    /// Source commit → written to an SSE stream.
    pub sse_latency: Histogram,
    /// Source commit → written to a WebSocket.
    pub ws_latency: Histogram,
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

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let h = Histogram::default();
        h.observe_micros(500); // 0.5 ms
        h.observe_micros(3_000); // 3 ms
        h.observe_micros(-7); // skew: zero
        h.observe_micros(120_000_000); // 2 min: only +Inf
        let mut out = String::new();
        h.render(&mut out, DELIVERY_LATENCY, "transport=\"sse\"");
        for line in [
            "sluice_delivery_latency_seconds_bucket{transport=\"sse\",le=\"0.001\"} 2\n",
            "sluice_delivery_latency_seconds_bucket{transport=\"sse\",le=\"0.0025\"} 2\n",
            "sluice_delivery_latency_seconds_bucket{transport=\"sse\",le=\"0.005\"} 3\n",
            "sluice_delivery_latency_seconds_bucket{transport=\"sse\",le=\"60\"} 3\n",
            "sluice_delivery_latency_seconds_bucket{transport=\"sse\",le=\"+Inf\"} 4\n",
            "sluice_delivery_latency_seconds_sum{transport=\"sse\"} 120.0035\n",
            "sluice_delivery_latency_seconds_count{transport=\"sse\"} 4\n",
        ] {
            assert!(out.contains(line), "{line} in\n{out}");
        }
    }
}
