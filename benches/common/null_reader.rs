//! The null reader: the ingest benchmark's real limit. It streams from its
//! own slot with the same replication crate and decoder as Sluice, decodes
//! every message and throws it away, and acknowledges each commit at once,
//! so what it costs is what reading the backlog costs, with nothing stored.
//!
//! Run as a mode of the benchmark binary itself (`--null-reader URL SLOT
//! PUBLICATION END_LSN`), so its CPU is its own process's; it prints
//! `null-reader messages=N cpu_secs=S` when it reaches the end.

use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};

/// Streams `slot` until `end` (an LSN as Postgres prints it), decoding
/// every message; returns how many pgoutput messages it decoded.
pub fn run(url: &str, slot: &str, publication: &str, end: &str) -> u64 {
    let end = Lsn::parse(end).expect("end LSN");
    let target = sluice::pgconn::replication_target(url).expect("replication target");
    let config = ReplicationConfig::new(
        target.host,
        target.user,
        target.password,
        target.database,
        slot,
        publication,
    )
    .with_port(target.port)
    .with_tls(target.tls)
    .with_stop_lsn(end)
    // The same session as Sluice's stream (status interval, buffer,
    // session options), so the two differ only in what they do with it.
    .with_status_interval(Duration::from_millis(50))
    .with_buffer_size(1024)
    .with_options(sluice::source::postgres::stream::SESSION_OPTIONS)
    .with_application_name("bench-null-reader");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let mut client = ReplicationClient::connect(config).await.expect("connect");
        let mut messages = 0u64;
        while let Some(event) = client.recv().await.expect("replication stream") {
            match event {
                ReplicationEvent::XLogData { data, .. } => {
                    let decoded = sluice::source::postgres::pgoutput::decode(&data);
                    std::hint::black_box(decoded.is_ok());
                    messages += 1;
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    client.update_applied_lsn(end_lsn);
                }
                ReplicationEvent::StoppedAt { .. } => break,
                ReplicationEvent::KeepAlive { .. }
                | ReplicationEvent::Begin { .. }
                | ReplicationEvent::Message { .. } => {}
            }
        }
        client.stop();
        messages
    })
}
