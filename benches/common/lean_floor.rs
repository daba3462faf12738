//! The lean latency floor: the null reader's session (same replication
//! crate, decoder and session settings as Sluice's stream) on its own
//! pgoutput slot, noting when each commit of a watched tenant's row
//! arrives. It stores nothing and acknowledges each commit at once, so its
//! commit-to-receipt time is what logical replication alone costs on this
//! machine under the same load: the real limit for Sluice's latency
//! (`pg_recvlogical` adds its own wake-ups on top).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sluice::pgrepl::ReplEvent;
use sluice::source::postgres::pgoutput::{self, Datum, Message};

/// Microseconds from the Unix epoch to Postgres's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Streams `slot` until `stop`, pushing `(commit time, receipt time)` (Unix
/// microseconds) into `samples` for every transaction that inserted a row of
/// `table` whose column `column` (position in the table) is `tenant`.
/// Runs on the calling thread.
pub fn run(
    url: &str,
    slot: &str,
    publication: &str,
    (table, column, tenant): (&str, usize, &[u8]),
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(i64, i64)>>>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let (mut client, _) = sluice::source::postgres::stream::open_stream(
            url,
            "bench-lean-floor",
            (slot, publication),
            0,
            true,
        )
        .await
        .expect("connect the lean floor");
        let mut relation = None;
        let mut ours = false;
        while !stop.load(Ordering::Relaxed) {
            let event = match tokio::time::timeout(Duration::from_millis(200), client.recv()).await
            {
                Err(_) => continue,
                Ok(Ok(Some(event))) => event,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    if !stop.load(Ordering::Relaxed) {
                        eprintln!("lean floor: {e}");
                    }
                    break;
                }
            };
            let ReplEvent::XLogData { data, .. } = event else {
                continue;
            };
            match pgoutput::decode(&data) {
                Ok(Message::Begin(_)) => ours = false,
                Ok(Message::Commit(c)) => {
                    let at = crate::common::now_micros();
                    client.update_applied_lsn(c.end_lsn);
                    if ours {
                        samples
                            .lock()
                            .expect("samples")
                            .push((c.commit_time + PG_EPOCH_MICROS, at));
                    }
                }
                _ => note(&data, table, column, tenant, &mut relation, &mut ours),
            }
        }
        client.shutdown().await;
    });
}

/// Decodes one message: remembers `table`'s relation id, and whether the
/// open transaction inserted a row of `tenant`.
fn note(
    data: &Bytes,
    table: &str,
    column: usize,
    tenant: &[u8],
    relation: &mut Option<u32>,
    ours: &mut bool,
) {
    match pgoutput::decode(data) {
        Ok(Message::Relation(r)) if r.name == table => *relation = Some(r.id),
        Ok(Message::Insert(i)) if Some(i.relation_id) == *relation => {
            if matches!(i.new.0.get(column), Some(Datum::Text(t)) if t.as_ref() == tenant) {
                *ours = true;
            }
        }
        _ => {}
    }
}
