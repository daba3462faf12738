//! Watches the source database from a normal connection: the server's WAL
//! position and the slot's confirmed position (replication lag in bytes),
//! whether the slot exists and still has its WAL, and emits the heartbeat
//! message that keeps the slot moving while the captured tables are quiet.
//!
//! Why a heartbeat: pgoutput sends nothing for transactions that touch no
//! published table, so with only other tables (or other databases of the
//! cluster) writing, the slot's confirmed position would never move and the
//! server would keep all that WAL. A non-transactional logical message in
//! the captured database is decoded and sent; the source acknowledges it
//! like an empty transaction once everything before it is durable.
//!
//! A standby source (Postgres 16+ decodes on a standby) cannot write one:
//! there the positions are the replayed WAL's and no heartbeat is sent.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::messages::HEARTBEAT_PREFIX;
use super::stats::{SourceStats, SLOT_LOST, SLOT_MISSING, SLOT_OK};
use crate::config::PgSourceConfig;

/// How often the slot is checked when heartbeats are rarer (or off).
const CHECK_EVERY: Duration = Duration::from_secs(5);

pub async fn run(cfg: PgSourceConfig, stats: Arc<SourceStats>, shutdown: CancellationToken) {
    let heartbeat = (cfg.heartbeat_secs > 0).then(|| Duration::from_secs(cfg.heartbeat_secs));
    let every = heartbeat.map_or(CHECK_EVERY, |h| h.min(CHECK_EVERY));
    let slot = cfg.slot();
    let mut client: Option<tokio_postgres::Client> = None;
    let mut last_beat = Instant::now();
    // A standby (logical decoding on a standby, Postgres 16+) cannot write
    // a heartbeat; its slot moves with the primary's activity.
    let mut standby = false;
    loop {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match crate::log::connect_as(&cfg.url, "sluice-monitor").await {
                Ok(c) => Some(c),
                Err(e) => {
                    // /readyz gets the short form; the server's words go to the log.
                    tracing::debug!(error = %e, "monitor cannot connect to the source database");
                    let short = e
                        .postgres()
                        .map_or_else(|| e.to_string(), |p| p.to_string());
                    stats
                        .monitor
                        .set_error(Some(format!("cannot connect: {short}")));
                    None
                }
            };
        }
        if let Some(c) = &client {
            match check(c, &slot).await {
                Ok((wal, confirmed, state, in_recovery)) => {
                    if in_recovery && !standby {
                        tracing::info!("the source is a standby: no heartbeats are written (the slot moves with the primary's writes)");
                    }
                    standby = in_recovery;
                    let m = &stats.monitor;
                    m.wal_lsn.store(wal, Ordering::Relaxed);
                    m.confirmed_flush.store(confirmed, Ordering::Relaxed);
                    m.slot.store(state, Ordering::Relaxed);
                    m.checked_micros
                        .store(chrono::Utc::now().timestamp_micros(), Ordering::Relaxed);
                    m.set_error(None);
                }
                Err(e) => {
                    stats.monitor.set_error(Some(e.to_string()));
                    client = None;
                }
            }
        }
        if let (Some(h), Some(c)) = (heartbeat, &client) {
            if !standby && last_beat.elapsed() >= h && stats.connected.load(Ordering::Relaxed) {
                last_beat = Instant::now();
                if let Err(e) = c
                    .execute(
                        "SELECT pg_logical_emit_message(false, $1::text, ''::text)",
                        &[&HEARTBEAT_PREFIX],
                    )
                    .await
                {
                    tracing::warn!(error = %crate::pgconn::describe(&e), "heartbeat failed");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// (current WAL LSN (replayed, on a standby), the slot's confirmed flush
/// LSN, its state, whether the source is a standby).
async fn check(
    c: &tokio_postgres::Client,
    slot: &str,
) -> Result<(u64, u64, u8, bool), tokio_postgres::Error> {
    let row = c
        .query_one(
            "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                          ELSE pg_current_wal_lsn() END - '0/0')::int8,
                    (s.confirmed_flush_lsn - '0/0')::int8,
                    s.wal_status,
                    s.slot_name IS NOT NULL,
                    pg_is_in_recovery()
             FROM (SELECT 1) one
             LEFT JOIN pg_replication_slots s ON s.slot_name = $1",
            &[&slot],
        )
        .await?;
    let wal: i64 = row.get(0);
    let confirmed: Option<i64> = row.get(1);
    let status: Option<String> = row.get(2);
    let exists: bool = row.get(3);
    let standby: bool = row.get(4);
    let state = match (exists, status.as_deref()) {
        (false, _) => SLOT_MISSING,
        (true, Some("lost")) => SLOT_LOST,
        (true, _) => SLOT_OK,
    };
    let to_u64 = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok((to_u64(wal), confirmed.map_or(0, to_u64), state, standby))
}
