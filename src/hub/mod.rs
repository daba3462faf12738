//! The live hub: in-memory fan-out of committed events to subscribers.
//!
//! The appender publishes each committed batch here. Subscribers are kept
//! per tenant, so routing a change costs the number of subscribers of *its*
//! tenant, never of others. Each envelope is serialized once and shared
//! (`Bytes`) by every subscriber it reaches.
//!
//! Every subscriber has a bounded queue. A subscriber whose queue is full is
//! taken off the live path and told so (`Lagged`); it then catches up from
//! the log from its last delivered `seq` and registers again. Memory stays
//! bounded and nothing is dropped: the log is the source of truth, the hub
//! only a shortcut for the head of it.
//!
//! Invariant: a subscriber only ever receives events whose tenant equals the
//! tenant it registered with (taken from its credential by the caller).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;

use crate::event::{Committed, TenantId};
use crate::subscription::Selector;

struct Entry {
    id: u64,
    selector: Arc<Selector>,
    tx: mpsc::Sender<Arc<Committed>>,
}

/// Counters exported as metrics.
#[derive(Debug, Default)]
pub struct HubStats {
    pub subscribers: AtomicU64,
    pub lagged: AtomicU64,
    pub delivered: AtomicU64,
}

pub struct Hub {
    tenants: RwLock<HashMap<TenantId, Vec<Entry>>>,
    next_id: AtomicU64,
    queue: usize,
    pub stats: HubStats,
    /// Serializes publishing, so every subscriber sees seq order.
    publishing: Mutex<()>,
}

/// A registration; dropping it leaves the hub. When `rx` ends (`recv`
/// gives `None`) the subscriber lagged: its queue overflowed, the hub let it
/// go, and it must catch up from the log after its last delivered seq.
pub struct Subscription {
    hub: Arc<Hub>,
    tenant: TenantId,
    id: u64,
    pub rx: mpsc::Receiver<Arc<Committed>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(&self.tenant, self.id);
    }
}

impl Hub {
    pub fn new(queue: usize) -> Arc<Hub> {
        Arc::new(Hub {
            tenants: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            queue: queue.max(1),
            stats: HubStats::default(),
            publishing: Mutex::new(()),
        })
    }

    /// Registers a subscriber of `tenant` for events matching `selector`.
    pub fn subscribe(self: &Arc<Hub>, tenant: TenantId, selector: Arc<Selector>) -> Subscription {
        let (tx, rx) = mpsc::channel(self.queue);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.tenants
            .write()
            .expect("hub lock is never poisoned: no code panics while holding it")
            .entry(tenant.clone())
            .or_default()
            .push(Entry { id, selector, tx });
        self.stats.subscribers.fetch_add(1, Ordering::Relaxed);
        Subscription {
            hub: self.clone(),
            tenant,
            id,
            rx,
        }
    }

    fn remove(&self, tenant: &TenantId, id: u64) {
        let mut tenants = self
            .tenants
            .write()
            .expect("hub lock is never poisoned: no code panics while holding it");
        if let Some(list) = tenants.get_mut(tenant) {
            let before = list.len();
            list.retain(|e| e.id != id);
            if list.len() < before {
                self.stats.subscribers.fetch_sub(1, Ordering::Relaxed);
            }
            if list.is_empty() {
                tenants.remove(tenant);
            }
        }
    }

    /// Whether anyone of `tenant` is subscribed (so its envelopes need
    /// building at all).
    pub fn wants(&self, tenant: &TenantId) -> bool {
        self.tenants
            .read()
            .expect("hub lock is never poisoned: no code panics while holding it")
            .contains_key(tenant)
    }

    /// Sends every subscriber back to the log (used when the appender cannot
    /// say which events a batch held, so no one may rely on the live path
    /// having carried them).
    pub fn lag_everyone(&self) {
        let mut tenants = self
            .tenants
            .write()
            .expect("hub lock is never poisoned: no code panics while holding it");
        let n: usize = tenants.values().map(Vec::len).sum();
        tenants.clear();
        self.stats
            .subscribers
            .fetch_sub(n as u64, Ordering::Relaxed);
        self.stats.lagged.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Hands committed events (in seq order) to their tenants' subscribers.
    ///
    /// Queues hold `Arc`s: a queue's storage is allocated in blocks of 32
    /// slots per subscriber, so a slot costs a pointer, not an event.
    pub fn publish(&self, events: &[Arc<Committed>]) {
        let _order = self
            .publishing
            .lock()
            .expect("hub publish lock is never poisoned: no code panics while holding it");
        let mut lagged: Vec<(TenantId, u64)> = Vec::new();
        {
            let tenants = self
                .tenants
                .read()
                .expect("hub lock is never poisoned: no code panics while holding it");
            for event in events {
                let Some(list) = tenants.get(&event.tenant) else {
                    continue;
                };
                let mut data: Option<Option<serde_json::Value>> = None;
                for entry in list {
                    if lagged.iter().any(|(_, id)| *id == entry.id) {
                        continue;
                    }
                    let wanted = entry.selector.matches(&event.topic, || {
                        data.get_or_insert_with(|| event.data()).clone()
                    });
                    if !wanted {
                        continue;
                    }
                    match entry.tx.try_send(event.clone()) {
                        Ok(()) => {
                            self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            lagged.push((event.tenant.clone(), entry.id));
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
            }
        }
        if lagged.is_empty() {
            return;
        }
        // Lagged subscribers leave the live path: dropping their sender ends
        // their queue after the events already in it.
        let mut tenants = self
            .tenants
            .write()
            .expect("hub lock is never poisoned: no code panics while holding it");
        for (tenant, id) in lagged {
            if let Some(list) = tenants.get_mut(&tenant) {
                if let Some(pos) = list.iter().position(|e| e.id == id) {
                    let entry = list.swap_remove(pos);
                    self.stats.subscribers.fetch_sub(1, Ordering::Relaxed);
                    self.stats.lagged.fetch_add(1, Ordering::Relaxed);
                    drop(entry);
                }
                if list.is_empty() {
                    tenants.remove(&tenant);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn ev(seq: i64, tenant: &str, topic: &str) -> Arc<Committed> {
        Arc::new(Committed {
            seq,
            tenant: TenantId::new(tenant).expect("valid"),
            topic: topic.into(),
            event_type: "row.inserted".into(),
            body: Bytes::from(format!(r#"{{"seq":{seq},"data":{{"new":{{"n":{seq}}}}}}}"#)),
            commit_micros: 0,
        })
    }

    fn all() -> Arc<Selector> {
        Arc::new(Selector {
            topics: vec![],
            filter: None,
        })
    }

    fn drain(sub: &mut Subscription) -> (Vec<i64>, bool) {
        let mut seqs = Vec::new();
        loop {
            match sub.rx.try_recv() {
                Ok(e) => seqs.push(e.seq),
                Err(mpsc::error::TryRecvError::Empty) => return (seqs, false),
                Err(mpsc::error::TryRecvError::Disconnected) => return (seqs, true),
            }
        }
    }

    #[test]
    fn subscribers_only_get_their_tenants_events() {
        let hub = Hub::new(16);
        let mut a = hub.subscribe(TenantId::new("a").expect("valid"), all());
        let mut b = hub.subscribe(TenantId::new("b").expect("valid"), all());
        hub.publish(&[ev(1, "a", "t/x"), ev(2, "b", "t/x"), ev(3, "a", "t/y")]);
        assert_eq!(drain(&mut a), (vec![1, 3], false));
        assert_eq!(drain(&mut b), (vec![2], false));
    }

    #[test]
    fn selectors_filter_by_topic_and_data() {
        use crate::subscription::{Filter, TopicGlob};
        let hub = Hub::new(16);
        let sel = Selector {
            topics: vec![TopicGlob::parse("t/*").expect("glob")],
            filter: Some(
                Filter::parse_str(r#"{"field":"new.n","op":"gt","value":1}"#).expect("filter"),
            ),
        };
        let mut s = hub.subscribe(TenantId::new("a").expect("valid"), Arc::new(sel));
        hub.publish(&[ev(1, "a", "t/x"), ev(2, "a", "t/x"), ev(3, "a", "u/x")]);
        assert_eq!(drain(&mut s), (vec![2], false));
    }

    #[test]
    fn a_full_queue_takes_the_subscriber_off_the_live_path() {
        let hub = Hub::new(2);
        let t = TenantId::new("a").expect("valid");
        let mut slow = hub.subscribe(t.clone(), all());
        let mut fast = hub.subscribe(t, all());
        hub.publish(&[ev(1, "a", "t"), ev(2, "a", "t")]);
        assert_eq!(drain(&mut fast), (vec![1, 2], false));
        hub.publish(&[ev(3, "a", "t"), ev(4, "a", "t")]);
        // slow still holds 1 and 2, then learns it lagged; 3 and 4 are
        // for it to read from the log.
        assert_eq!(drain(&mut slow), (vec![1, 2], true));
        assert_eq!(drain(&mut fast), (vec![3, 4], false));
        assert_eq!(hub.stats.lagged.load(Ordering::Relaxed), 1);
        hub.publish(&[ev(5, "a", "t")]);
        assert_eq!(drain(&mut fast), (vec![5], false));
    }

    #[test]
    fn dropping_a_subscription_leaves_the_hub() {
        let hub = Hub::new(4);
        let t = TenantId::new("a").expect("valid");
        let s = hub.subscribe(t.clone(), all());
        assert!(hub.wants(&t));
        drop(s);
        assert!(!hub.wants(&t));
        assert_eq!(hub.stats.subscribers.load(Ordering::Relaxed), 0);
    }
}
