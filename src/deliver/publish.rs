//! Publishing a custom event from a client: it goes through Postgres as a
//! `sluice` logical message (`pg_logical_emit_message`, transactional), so
//! it is durable and ordered with the row changes around it, and comes back
//! through the pipeline like any other custom event. The caller gets its
//! seq once it is in the log.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::watch;

use crate::event::TenantId;
use crate::log::Durable;
use crate::source::postgres::messages::CUSTOM_PREFIX;

/// How long a publish waits for its event to reach the log.
const PUBLISH_WAIT: Duration = Duration::from_secs(10);

/// What publishing needs: both databases and the log's durable head.
#[derive(Clone)]
pub struct Publisher {
    /// Connections to the source database, where the message is emitted.
    pub source: deadpool_postgres::Pool,
    /// The state database, where the event is looked for.
    pub log: deadpool_postgres::Pool,
    pub durable: watch::Receiver<Arc<Durable>>,
}

/// Emits the event for `tenant` (from the credential, never from the
/// client) and waits for its seq.
pub async fn publish(
    publisher: &Publisher,
    tenant: &TenantId,
    name: &str,
    data: Map<String, Value>,
    subject: Option<String>,
) -> Result<i64, String> {
    let mut content = json!({"tenant": tenant.as_str(), "type": name, "data": Value::Object(data)});
    if let Some(s) = subject {
        content["subject"] = json!(s);
    }
    let mut durable = publisher.durable.clone();
    let head_before = durable.borrow().last_seq;
    let source = publisher
        .source
        .get()
        .await
        .map_err(|e| unavailable("the source database", &e))?;
    let row = source
        .query_one(
            "SELECT pg_logical_emit_message(true, $2::text, $1::text)::text, txid_current()",
            &[&content.to_string(), &CUSTOM_PREFIX],
        )
        .await
        .map_err(|e| unavailable("the source database", &e))?;
    drop(source);
    let txid: i64 = row.get(1);
    // pgoutput carries the 32-bit xid; the log stores that.
    let xid = txid & 0xFFFF_FFFF;
    let event_type = format!("custom.{name}");
    let deadline = tokio::time::Instant::now() + PUBLISH_WAIT;
    loop {
        let client = publisher
            .log
            .get()
            .await
            .map_err(|e| unavailable("the log", &e))?;
        let found = crate::log::first_seq_of_txid(&**client, tenant, head_before, xid, &event_type)
            .await
            .map_err(|e| unavailable("the log", &e))?;
        drop(client);
        if let Some(seq) = found {
            return Ok(seq);
        }
        match tokio::time::timeout_at(deadline, durable.changed()).await {
            Ok(Ok(())) => {}
            _ => {
                return Err(format!(
                    "the event was committed to Postgres but did not reach the log within {}s; it will still be delivered",
                    PUBLISH_WAIT.as_secs()
                ))
            }
        }
    }
}

fn unavailable(what: &str, e: &(dyn std::error::Error + 'static)) -> String {
    tracing::warn!(error = %crate::pgconn::error_chain(e), what, "publish failed");
    format!("{what} is unavailable; retry shortly")
}
