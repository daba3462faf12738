//! Outbound webhooks: endpoints per tenant, an outbox written in the append
//! transaction, dispatchers that claim due deliveries with `FOR UPDATE SKIP
//! LOCKED`, Standard Webhooks signatures, retries with backoff, dead
//! letters and replay.
//!
//! Invariant: a committed event has its deliveries (written in its append
//! transaction); a delivery leaves `pending`/`failed` only as `delivered`
//! (a 2xx was received) or `dead` (attempts exhausted, endpoint gone, event
//! pruned). Delivery is at least once; `webhook-id` is stable across
//! attempts so receivers can drop duplicates.

pub mod batch;
pub mod declared;
pub mod dispatch;
pub mod schedule;
pub mod sign;
pub mod spec;
pub mod ssrf;
pub mod store;
pub mod template;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio_postgres::{Client, GenericClient};

use crate::event::{PendingEvent, TenantId};
use crate::log::{AppendStage, Appended};
pub use store::Endpoints;

/// What the appender needs to write outbox rows, and how it wakes the
/// dispatcher.
#[derive(Clone, Default)]
pub struct Outbox {
    pub endpoints: Arc<Endpoints>,
    pub notify: Arc<Notify>,
}

impl Outbox {
    /// An outbox with no access policies (every endpoint receives its
    /// tenant's events whole).
    pub fn new() -> Outbox {
        Outbox::with_policies(Arc::default())
    }

    /// An outbox whose endpoints are held to `policies` (an endpoint with a
    /// role receives what that role may see).
    pub(crate) fn with_policies(policies: Arc<crate::policy::Policies>) -> Outbox {
        Outbox {
            endpoints: Endpoints::new(policies),
            notify: Arc::new(Notify::new()),
        }
    }

    /// Inserts one delivery per (matching enabled endpoint, event) inside
    /// the append transaction `tx`; returns how many.
    pub async fn write(
        &self,
        tx: &impl GenericClient,
        events: &[(i64, &TenantId, &PendingEvent)],
    ) -> Result<usize, tokio_postgres::Error> {
        let snapshot = self.endpoints.refresh(tx).await?;
        if snapshot.by_tenant.is_empty() {
            return Ok(0);
        }
        let mut ids: Vec<&str> = Vec::new();
        let mut seqs: Vec<i64> = Vec::new();
        for (seq, tenant, event) in events {
            let data = || serde_json::from_str(event.data.get()).ok();
            let committed = || {
                Arc::new(crate::event::Committed {
                    seq: *seq,
                    tenant: (*tenant).clone(),
                    topic: event.topic.clone(),
                    event_type: event.event_type.clone(),
                    body: bytes::Bytes::from(event.envelope_json(*seq, tenant)),
                    commit_micros: event.time_micros,
                })
            };
            for endpoint in snapshot.matching(tenant, &event.topic, data, committed) {
                ids.push(&endpoint.id);
                seqs.push(*seq);
            }
        }
        if ids.is_empty() {
            return Ok(0);
        }
        tx.execute(
            "INSERT INTO sluice.webhook_deliveries (webhook_id, seq)
             SELECT * FROM unnest($1::text[], $2::bigint[])
             ON CONFLICT (webhook_id, seq) DO NOTHING",
            &[&ids, &seqs],
        )
        .await?;
        Ok(ids.len())
    }
}

/// The outbox as a stage of every append transaction: deliveries are
/// written with the events they carry; the dispatcher is woken after
/// COMMIT when there are new ones.
impl AppendStage for Outbox {
    fn wants_events(&self) -> bool {
        true
    }

    fn in_transaction<'a>(
        &'a self,
        tx: &'a Client,
        appended: &'a Appended<'a>,
    ) -> BoxFuture<'a, Result<bool, tokio_postgres::Error>> {
        Box::pin(async move { Ok(self.write(tx, appended.events).await? > 0) })
    }

    fn committed(&self) {
        self.notify.notify_one();
    }
}

/// A new endpoint or delivery id: `prefix` + 24 random base62 characters.
pub fn new_id(prefix: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::thread_rng();
    let tail: String = (0..24)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect();
    format!("{prefix}{tail}")
}
