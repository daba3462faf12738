//! The null reader: the ingest benchmark's real limit. It streams from its
//! own slot with the same replication crate and decoder as Sluice, decodes
//! every message and throws it away, and acknowledges each commit at once,
//! so what it costs is what reading the backlog costs, with nothing stored.
//!
//! Run as a mode of the benchmark binary itself (`--null-reader URL SLOT
//! PUBLICATION END_LSN`), so its CPU is its own process's; it prints
//! `null-reader messages=N cpu_secs=S` when it reaches the end.

use sluice::pgrepl::ReplEvent;
use sluice::source::postgres::pgoutput::{self, Message};
use sluice::source::postgres::stream::open_stream;

/// Streams `slot` until `end` (an LSN as Postgres prints it), decoding
/// every message; returns how many pgoutput messages it decoded.
pub fn run(url: &str, slot: &str, publication: &str, end: &str) -> u64 {
    let end = pgoutput::parse_lsn(end).expect("end LSN");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        // The same session as Sluice's stream (protocol, status interval,
        // buffer, session options), so the two differ only in what they do
        // with it.
        let (mut client, _) = open_stream(url, "bench-null-reader", (slot, publication), 0, true)
            .await
            .expect("connect");
        let mut messages = 0u64;
        let mut in_stream = false;
        while let Some(event) = client.recv().await.expect("replication stream") {
            let ReplEvent::XLogData { data, .. } = event else {
                continue;
            };
            messages += 1;
            let end_lsn = match pgoutput::decode_with(&data, in_stream) {
                Ok((_, Message::Commit(c))) => c.end_lsn,
                Ok((_, Message::StreamCommit(c))) => c.end_lsn,
                Ok((_, Message::StreamStart(_))) => {
                    in_stream = true;
                    continue;
                }
                Ok((_, Message::StreamStop)) => {
                    in_stream = false;
                    continue;
                }
                decoded => {
                    std::hint::black_box(decoded.is_ok());
                    continue;
                }
            };
            client.update_applied_lsn(end_lsn);
            if end_lsn >= end {
                break;
            }
        }
        client.shutdown().await;
        messages
    })
}
