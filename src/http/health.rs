//! `/livez` (the process answers), `/readyz` (the state database answers
//! and the source is streaming, with the reasons when not) and `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;
use crate::metrics::{self, load};
use crate::source::postgres::stats::{SLOT_LOST, SLOT_MISSING};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/livez", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
}

async fn readyz(State(state): State<AppState>) -> Response {
    let mut problems = Vec::new();
    let db = tokio::time::timeout(Duration::from_secs(2), async {
        let client = state.pool.get().await.map_err(|e| e.to_string())?;
        client
            .query_one("SELECT 1", &[])
            .await
            .map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    })
    .await;
    match db {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(format!("state database unreachable: {e}")),
        Err(_) => problems.push("state database did not answer within 2 s".to_owned()),
    }
    // A standby serves from the log; the sources are the leader's to run.
    let leading = state.role.get() == crate::leader::ROLE_LEADER;
    if state.role.get() == crate::leader::ROLE_STARTING {
        problems.push("starting: not yet leading or standing by".to_owned());
    }
    if leading && !state.source.connected.load(Ordering::Relaxed) {
        problems
            .push("the Postgres source is not streaming (connecting or reconnecting)".to_owned());
    }
    let slot_name = state
        .config
        .source
        .postgres
        .as_ref()
        .map(|p| p.slot())
        .unwrap_or_default();
    let monitor = &state.source.monitor;
    if let Some(e) = monitor.error().filter(|_| leading) {
        problems.push(format!("the source database is unreachable: {e}"));
    }
    match monitor.slot.load(Ordering::Relaxed) * u8::from(leading) {
        SLOT_MISSING => problems.push(format!(
            "replication slot {slot_name} does not exist (dropped?); `sluice setup` creates it, and changes made while it was missing are not in the log"
        )),
        SLOT_LOST => problems.push(format!(
            "replication slot {slot_name} is invalidated (wal_status = lost): the server removed WAL it still needed (max_slot_wal_keep_size); drop and recreate it with `sluice setup`, and backfill what was missed"
        )),
        _ => {}
    }
    let mut sources = serde_json::Map::new();
    for m in state.mongo.iter().filter(|_| leading) {
        let streaming = m.streaming.load(Ordering::Relaxed);
        let stuck = m.stuck();
        if let Some(why) = &stuck {
            problems.push(format!("mongo source {} is stopped: {why}", m.name));
        } else if !streaming {
            problems.push(format!(
                "mongo source {} is not streaming (connecting or reconnecting){}",
                m.name,
                m.last_error().map(|e| format!(": {e}")).unwrap_or_default()
            ));
        }
        sources.insert(
            format!("mongo/{}", m.name),
            json!({
                "streaming": streaming,
                "stuck": stuck,
                "last_error": m.last_error(),
                "conditions": m.conditions(),
            }),
        );
    }
    let mut body = json!({"status": "ready", "role": state.role.name()});
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        body = json!({"status": "not ready", "role": state.role.name(), "problems": problems});
        StatusCode::SERVICE_UNAVAILABLE
    };
    if !sources.is_empty() {
        body["sources"] = serde_json::Value::Object(sources);
    }
    (status, Json(body)).into_response()
}

/// Consumer-group messages by state (all groups together), read when
/// scraped; `None` when the database does not answer within 2 s.
async fn group_messages(state: &AppState) -> Option<[f64; 3]> {
    let read = async {
        let client = state.pool.get().await.ok()?;
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'inflight'),
                        count(*) FILTER (WHERE state = 'ready'),
                        count(*) FILTER (WHERE state = 'dead')
                 FROM sluice.group_messages",
                &[],
            )
            .await
            .ok()?;
        Some([0, 1, 2].map(|i| row.get::<_, i64>(i) as f64))
    };
    tokio::time::timeout(Duration::from_secs(2), read)
        .await
        .ok()
        .flatten()
}

/// Deliveries waiting, read when scraped (`None` when the database does
/// not answer within 2 s: the gauge is left out rather than wrong).
async fn outbox_depth(state: &AppState) -> Option<f64> {
    let read = async {
        let client = state.pool.get().await.ok()?;
        let row = client
            .query_one(
                "SELECT count(*) FROM sluice.webhook_deliveries WHERE status IN ('pending', 'failed')",
                &[],
            )
            .await
            .ok()?;
        Some(row.get::<_, i64>(0) as f64)
    };
    tokio::time::timeout(Duration::from_secs(2), read)
        .await
        .ok()
        .flatten()
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    let s = &state.source;
    let now_micros = chrono::Utc::now().timestamp_micros();
    let last_commit = s.last_commit_micros.load(Ordering::Relaxed);
    let lag_seconds = if last_commit > 0
        && s.acked_lsn.load(Ordering::Relaxed) < s.server_wal_end.load(Ordering::Relaxed)
    {
        (now_micros - last_commit).max(0) as f64 / 1e6
    } else {
        0.0
    };
    // The server's WAL position minus the slot's confirmed position, as the
    // monitor last read them; before its first reading, what the stream saw.
    let (wal, confirmed) = (
        s.monitor.wal_lsn.load(Ordering::Relaxed),
        s.monitor.confirmed_flush.load(Ordering::Relaxed),
    );
    let lag_bytes = if wal > 0 && confirmed > 0 {
        wal.saturating_sub(confirmed) as f64
    } else {
        s.server_wal_end
            .load(Ordering::Relaxed)
            .saturating_sub(s.acked_lsn.load(Ordering::Relaxed)) as f64
    };
    let head = state.head() as f64;
    let mongo_labels: Vec<[String; 4]> = state
        .mongo
        .iter()
        .map(|m| {
            let source = format!("source=\"mongo/{}\"", m.name);
            [
                format!("reason=\"no_tenant\",{source}"),
                format!("reason=\"delete_without_pre_image\",{source}"),
                format!("reason=\"other\",{source}"),
                source,
            ]
        })
        .collect();
    let mut samples = vec![
        (metrics::LOG_HEAD, None, head),
        (
            metrics::SOURCE_EVENTS,
            Some("source=\"postgres\""),
            load(&s.events),
        ),
        (
            metrics::TRANSACTIONS,
            Some("source=\"postgres\""),
            load(&s.transactions),
        ),
        (
            metrics::RECONNECTS,
            Some("source=\"postgres\""),
            load(&s.reconnects),
        ),
        (
            metrics::DROPPED,
            Some("reason=\"no_tenant\""),
            load(&s.dropped_no_tenant),
        ),
        (
            metrics::DROPPED,
            Some("reason=\"malformed_custom\""),
            load(&s.dropped_malformed_custom),
        ),
        (
            metrics::DROPPED,
            Some("reason=\"other\""),
            load(&s.dropped_other),
        ),
        (metrics::LAG_BYTES, None, lag_bytes),
        (
            metrics::LEADER,
            None,
            f64::from(u8::from(state.role.get() == crate::leader::ROLE_LEADER)),
        ),
        (
            metrics::HEARTBEATS,
            Some("source=\"postgres\""),
            load(&s.heartbeats),
        ),
        (metrics::PROTOCOL, None, load(&s.protocol)),
        (metrics::STREAMED_TX, None, load(&s.streamed_transactions)),
        (metrics::STREAMED_OPEN, None, load(&s.streamed_open)),
        (metrics::STREAMED_SPILLS, None, load(&s.streamed_spills)),
        (metrics::LAG_SECONDS, None, lag_seconds),
        (
            metrics::SUBSCRIBERS,
            Some("transport=\"sse\""),
            load(&state.metrics.sse_subscribers),
        ),
        (
            metrics::HUB_SUBSCRIBERS,
            None,
            load(&state.hub.stats.subscribers),
        ),
        (
            metrics::CATCHUPS,
            None,
            load(&state.metrics.catchups) + load(&state.hub.stats.lagged),
        ),
        (
            metrics::HUB_DELIVERED,
            None,
            load(&state.hub.stats.delivered),
        ),
        (
            metrics::HUB_PUBLISHED,
            None,
            load(&state.hub.stats.published),
        ),
        (
            metrics::HUB_PUBLISH_SECONDS,
            None,
            load(&state.hub.stats.publish_nanos) / 1e9,
        ),
        (
            metrics::GROUP_DELIVERIES,
            None,
            load(&state.groups.metrics.delivered),
        ),
        (
            metrics::GROUP_REDELIVERIES,
            None,
            load(&state.groups.metrics.redelivered),
        ),
        (metrics::GROUP_ACKS, None, load(&state.groups.metrics.acked)),
        (
            metrics::GROUP_NACKS,
            None,
            load(&state.groups.metrics.nacked),
        ),
        (metrics::GROUP_DEAD, None, load(&state.groups.metrics.dead)),
        (metrics::SSE_EVENTS, None, load(&state.metrics.sse_events)),
        (
            metrics::SUBSCRIBERS,
            Some("transport=\"ndjson\""),
            load(&state.metrics.ndjson_subscribers),
        ),
        (
            metrics::SUBSCRIBERS,
            Some("transport=\"ws\""),
            load(&state.metrics.ws_subscriptions),
        ),
        (
            metrics::WS_CONNECTIONS,
            None,
            load(&state.metrics.ws_connections),
        ),
        (metrics::WS_EVENTS, None, load(&state.metrics.ws_events)),
        (
            metrics::LIVE_QUERIES,
            None,
            load(&state.live.metrics.started),
        ),
        (metrics::LIVE_READS, None, load(&state.live.metrics.reads)),
        (
            metrics::LIVE_ROWS,
            None,
            load(&state.live.metrics.rows_read),
        ),
        (metrics::LIVE_SHARED, None, load(&state.live.metrics.shared)),
        (
            metrics::WEBHOOK_ATTEMPTS,
            None,
            load(&state.webhook_metrics.attempts),
        ),
        (
            metrics::WEBHOOK_OUTCOMES,
            Some("outcome=\"delivered\""),
            load(&state.webhook_metrics.delivered),
        ),
        (
            metrics::WEBHOOK_OUTCOMES,
            Some("outcome=\"failed\""),
            load(&state.webhook_metrics.failed),
        ),
        (
            metrics::WEBHOOK_OUTCOMES,
            Some("outcome=\"dead\""),
            load(&state.webhook_metrics.dead),
        ),
        (
            metrics::WEBHOOK_IN_FLIGHT,
            None,
            load(&state.webhook_metrics.in_flight),
        ),
        (
            metrics::WEBHOOK_LATENCY_SUM,
            None,
            load(&state.webhook_metrics.latency_ms_sum) / 1000.0,
        ),
    ];
    for (m, labels) in state.mongo.iter().zip(&mongo_labels) {
        let [no_tenant, no_pre_image, other, source] = labels;
        samples.extend([
            (
                metrics::SOURCE_EVENTS,
                Some(source.as_str()),
                load(&m.events),
            ),
            (
                metrics::RECONNECTS,
                Some(source.as_str()),
                load(&m.reconnects),
            ),
            (
                metrics::DROPPED,
                Some(no_tenant.as_str()),
                load(&m.dropped_no_tenant),
            ),
            (
                metrics::DROPPED,
                Some(no_pre_image.as_str()),
                load(&m.dropped_delete_without_pre_image),
            ),
            (
                metrics::DROPPED,
                Some(other.as_str()),
                load(&m.dropped_other),
            ),
            (
                metrics::SOURCE_STREAMING,
                Some(source.as_str()),
                f64::from(u8::from(m.streaming.load(Ordering::Relaxed))),
            ),
        ]);
    }
    let outbox_depth = outbox_depth(&state).await;
    if let Some(depth) = outbox_depth {
        samples.push((metrics::OUTBOX_DEPTH, None, depth));
    }
    if let Some([in_flight, ready, dead]) = group_messages(&state).await {
        samples.push((
            metrics::GROUP_MESSAGES,
            Some("state=\"in_flight\""),
            in_flight,
        ));
        samples.push((metrics::GROUP_MESSAGES, Some("state=\"ready\""), ready));
        samples.push((metrics::GROUP_MESSAGES, Some("state=\"dead\""), dead));
    }
    let b = &state.backfill_metrics;
    samples.extend([
        (metrics::BACKFILL_ROWS, None, load(&b.rows_read)),
        (metrics::BACKFILL_CHUNKS, None, load(&b.chunks)),
        (metrics::BACKFILL_RUNNING, None, load(&b.running)),
        (
            metrics::BACKFILL_PROGRESS,
            Some("of=\"read\""),
            load(&b.current_read),
        ),
        (
            metrics::BACKFILL_PROGRESS,
            Some("of=\"estimated\""),
            load(&b.current_estimated),
        ),
    ]);
    let kinds = [
        (
            metrics::BACKFILL_ROWS,
            "counter",
            "rows read by backfills in this process",
        ),
        (metrics::BACKFILL_CHUNKS, "counter", "backfill chunks appended"),
        (
            metrics::BACKFILL_RUNNING,
            "gauge",
            "1 while this process runs a backfill",
        ),
        (
            metrics::BACKFILL_PROGRESS,
            "gauge",
            "the running backfill: rows read so far and the estimated total",
        ),
        (
            metrics::GROUP_MESSAGES,
            "gauge",
            "consumer-group messages by state (in_flight, ready, dead), all groups together",
        ),
        (
            metrics::OUTBOX_DEPTH,
            "gauge",
            "webhook deliveries waiting (pending or failed with a retry due), all endpoints",
        ),
        (
            metrics::LEADER,
            "gauge",
            "1 while this process leads (runs the sources and the appender), 0 on a standby",
        ),
        (
            metrics::HEARTBEATS,
            "counter",
            "heartbeat messages read back from the replication slot",
        ),
        (
            metrics::PROTOCOL,
            "gauge",
            "pgoutput protocol version of the replication session (2-4: large transactions streamed while they run; 0: not connected)",
        ),
        (
            metrics::STREAMED_TX,
            "counter",
            "transactions received while they ran (streamed), committed and appended",
        ),
        (
            metrics::STREAMED_OPEN,
            "gauge",
            "streamed transactions staged, neither committed nor aborted yet",
        ),
        (
            metrics::STREAMED_SPILLS,
            "counter",
            "streamed transactions that outgrew source.postgres.stream_memory_mb and spilled to disk",
        ),
        (
            metrics::SOURCE_STREAMING,
            "gauge",
            "1 while a MongoDB source's change stream is open",
        ),
        (
            metrics::EVENTS_APPENDED,
            "counter",
            "events appended by this process, by source and type (custom types counted as `custom`)",
        ),
        (metrics::LOG_HEAD, "gauge", "the last seq in the log"),
        (
            metrics::SOURCE_EVENTS,
            "counter",
            "events read from the source",
        ),
        (metrics::TRANSACTIONS, "counter", "source transactions read"),
        (metrics::RECONNECTS, "counter", "replication reconnections"),
        (
            metrics::DROPPED,
            "counter",
            "changes not delivered to anyone, by reason",
        ),
        (
            metrics::LAG_BYTES,
            "gauge",
            "server WAL position minus the acknowledged position",
        ),
        (
            metrics::LAG_SECONDS,
            "gauge",
            "now minus the commit time of the last transaction read, while behind",
        ),
        (
            metrics::SUBSCRIBERS,
            "gauge",
            "open subscriptions by transport",
        ),
        (
            metrics::HUB_SUBSCRIBERS,
            "gauge",
            "subscribers on the live path",
        ),
        (
            metrics::CATCHUPS,
            "counter",
            "times a subscriber fell back to the log",
        ),
        (
            metrics::HUB_DELIVERED,
            "counter",
            "events handed to live subscribers",
        ),
        (
            metrics::HUB_PUBLISHED,
            "counter",
            "committed events the hub routed to its subscribers",
        ),
        (
            metrics::HUB_PUBLISH_SECONDS,
            "counter",
            "time the hub spent routing events (access policies included)",
        ),
        (
            metrics::GROUP_DELIVERIES,
            "counter",
            "consumer-group events delivered (first and later attempts)",
        ),
        (
            metrics::GROUP_REDELIVERIES,
            "counter",
            "consumer-group deliveries that were a second or later attempt",
        ),
        (metrics::GROUP_ACKS, "counter", "consumer-group deliveries acknowledged"),
        (metrics::GROUP_NACKS, "counter", "consumer-group deliveries given back (nack)"),
        (
            metrics::GROUP_DEAD,
            "counter",
            "consumer-group messages parked as dead letters",
        ),
        (
            metrics::SSE_EVENTS,
            "counter",
            "events written to SSE streams",
        ),
        (
            metrics::WEBHOOK_ATTEMPTS,
            "counter",
            "webhook requests made",
        ),
        (
            metrics::WEBHOOK_OUTCOMES,
            "counter",
            "webhook attempts by outcome (failed: a retry is scheduled)",
        ),
        (
            metrics::WEBHOOK_IN_FLIGHT,
            "gauge",
            "webhook requests in flight in this process",
        ),
        (
            metrics::WEBHOOK_LATENCY_SUM,
            "counter",
            "total seconds webhook requests took (divide by attempts for the mean)",
        ),
        (
            metrics::WS_CONNECTIONS,
            "gauge",
            "open WebSocket connections",
        ),
        (
            metrics::LIVE_QUERIES,
            "counter",
            "live queries (snapshot=true) started",
        ),
        (
            metrics::LIVE_READS,
            "counter",
            "initial reads of the source for live queries (one per shape, however many subscribers share it)",
        ),
        (
            metrics::LIVE_ROWS,
            "counter",
            "rows those initial reads returned",
        ),
        (
            metrics::LIVE_SHARED,
            "counter",
            "live queries handed a read another one started (within 2 s)",
        ),
        (
            metrics::WS_EVENTS,
            "counter",
            "events sent on WebSocket subscriptions",
        ),
    ];
    let appended: Vec<(String, f64)> = state
        .appended
        .snapshot()
        .into_iter()
        .map(|(source, event_type, n)| {
            (
                format!("source=\"{source}\",type=\"{event_type}\""),
                n as f64,
            )
        })
        .collect();
    for (labels, n) in &appended {
        samples.push((metrics::EVENTS_APPENDED, Some(labels.as_str()), *n));
    }
    let mut text = metrics::render(&samples, &kinds);
    let _ = writeln!(
        text,
        "# HELP {0} source commit to delivery: written to an SSE stream or WebSocket, or a webhook's 2xx\n# TYPE {0} histogram",
        metrics::DELIVERY_LATENCY
    );
    for (transport, h) in [
        ("sse", &state.metrics.sse_latency),
        ("ws", &state.metrics.ws_latency),
        ("webhook", &state.webhook_metrics.delivery_latency),
    ] {
        h.render(
            &mut text,
            metrics::DELIVERY_LATENCY,
            &format!("transport=\"{transport}\""),
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
