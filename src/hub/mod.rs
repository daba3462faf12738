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
use crate::policy::view::{route_of, Routes};
use crate::policy::{Access, EventView};

struct Entry {
    access: Arc<Access>,
    routes: Routes,
    tx: mpsc::Sender<Arc<Committed>>,
}

/// Counters exported as metrics.
#[derive(Debug, Default)]
pub struct HubStats {
    pub subscribers: AtomicU64,
    pub lagged: AtomicU64,
    pub delivered: AtomicU64,
    /// Events offered to subscribers, and the time spent routing them
    /// (the benchmark of per-change cost reads these).
    pub published: AtomicU64,
    pub publish_nanos: AtomicU64,
}

/// One tenant's subscribers, indexed by what can reach them.
///
/// Invariant: every entry is in exactly the lists its `routes` name: in
/// `everything` if it may see any event; otherwise in `custom` if custom
/// events may reach it, and per table or collection it may see, either in
/// that route's `scan` list or, when its policy predicate is an equality
/// with its claims (`owner_id = claim sub`), under each value in `by_value`.
#[derive(Default)]
struct TenantSubs {
    entries: HashMap<u64, Entry>,
    everything: Vec<u64>,
    custom: Vec<u64>,
    routes: HashMap<String, RouteSubs>,
}

#[derive(Default)]
struct RouteSubs {
    scan: Vec<u64>,
    /// column -> value -> subscribers
    by_value: HashMap<String, HashMap<String, Vec<u64>>>,
}

impl RouteSubs {
    fn is_empty(&self) -> bool {
        self.scan.is_empty() && self.by_value.is_empty()
    }
}

fn remove_id(list: &mut Vec<u64>, id: u64) {
    if let Some(pos) = list.iter().position(|e| *e == id) {
        list.swap_remove(pos);
    }
}

impl TenantSubs {
    fn insert(&mut self, id: u64, entry: Entry) {
        match &entry.routes {
            Routes::Everything => self.everything.push(id),
            Routes::Some { targets, custom } => {
                if *custom {
                    self.custom.push(id);
                }
                for (route, key) in targets {
                    let r = self.routes.entry(route.clone()).or_default();
                    match key {
                        None => r.scan.push(id),
                        Some((column, values)) => {
                            let by = r.by_value.entry(column.clone()).or_default();
                            for v in values {
                                let list = by.entry(v.clone()).or_default();
                                if !list.contains(&id) {
                                    list.push(id);
                                }
                            }
                        }
                    }
                }
            }
        }
        self.entries.insert(id, entry);
    }

    fn remove(&mut self, id: u64) -> bool {
        let Some(entry) = self.entries.remove(&id) else {
            return false;
        };
        match &entry.routes {
            Routes::Everything => remove_id(&mut self.everything, id),
            Routes::Some { targets, custom } => {
                if *custom {
                    remove_id(&mut self.custom, id);
                }
                for (route, key) in targets {
                    let Some(r) = self.routes.get_mut(route) else {
                        continue;
                    };
                    match key {
                        None => remove_id(&mut r.scan, id),
                        Some((column, values)) => {
                            if let Some(by) = r.by_value.get_mut(column) {
                                for v in values {
                                    if let Some(list) = by.get_mut(v) {
                                        remove_id(list, id);
                                        if list.is_empty() {
                                            by.remove(v);
                                        }
                                    }
                                }
                                if by.is_empty() {
                                    r.by_value.remove(column);
                                }
                            }
                        }
                    }
                    if r.is_empty() {
                        self.routes.remove(route);
                    }
                }
            }
        }
        true
    }

    /// The subscribers `event` can reach, each once, into `out`.
    fn candidates(&self, view: &mut EventView<'_>, out: &mut Vec<u64>) {
        out.clear();
        out.extend_from_slice(&self.everything);
        let Some(route) = route_of(&view.event.topic) else {
            out.extend_from_slice(&self.custom);
            return;
        };
        let Some(r) = self.routes.get(route) else {
            return;
        };
        out.extend_from_slice(&r.scan);
        if r.by_value.is_empty() {
            return;
        }
        let start = out.len();
        let truncate = &*view.event.event_type == crate::event::types::TRUNCATED;
        let data = view.data();
        for (column, by) in &r.by_value {
            if truncate {
                // No row: everyone who may see any row of the table.
                by.values().for_each(|ids| out.extend_from_slice(ids));
                continue;
            }
            for image in ["new", "old"] {
                let value = data
                    .and_then(|d| d.get(image))
                    .and_then(|row| row.get(column.as_str()))
                    .and_then(serde_json::Value::as_str);
                if let Some(ids) = value.and_then(|v| by.get(v)) {
                    out.extend_from_slice(ids);
                }
            }
        }
        // One subscriber may sit under a row's old and new value, or
        // under several values of a list claim.
        if out.len() - start > 1 {
            out[start..].sort_unstable();
            let mut w = start;
            for i in start..out.len() {
                if i == start || out[i] != out[w - 1] {
                    out[w] = out[i];
                    w += 1;
                }
            }
            out.truncate(w);
        }
    }
}

pub struct Hub {
    tenants: RwLock<HashMap<TenantId, TenantSubs>>,
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

    /// Registers a subscriber of `tenant` for the events its `access` lets
    /// through (its policy, then its selector).
    pub fn subscribe(self: &Arc<Hub>, tenant: TenantId, access: Arc<Access>) -> Subscription {
        let (tx, rx) = mpsc::channel(self.queue);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let routes = access.viewer.routes();
        self.tenants
            .write()
            .expect("hub lock is never poisoned: no code panics while holding it")
            .entry(tenant.clone())
            .or_default()
            .insert(id, Entry { access, routes, tx });
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
        if let Some(subs) = tenants.get_mut(tenant) {
            if subs.remove(id) {
                self.stats.subscribers.fetch_sub(1, Ordering::Relaxed);
            }
            if subs.entries.is_empty() {
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
        let n: usize = tenants.values().map(|t| t.entries.len()).sum();
        tenants.clear();
        self.stats
            .subscribers
            .fetch_sub(n as u64, Ordering::Relaxed);
        self.stats.lagged.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Hands committed events (in seq order) to their tenants' subscribers,
    /// each as its policy shows it.
    ///
    /// Queues hold `Arc`s: a queue's storage is allocated in blocks of 32
    /// slots per subscriber, so a slot costs a pointer, not an event.
    pub fn publish(&self, events: &[Arc<Committed>]) {
        let _order = self
            .publishing
            .lock()
            .expect("hub publish lock is never poisoned: no code panics while holding it");
        let started = std::time::Instant::now();
        let mut lagged: Vec<(TenantId, u64)> = Vec::new();
        let mut candidates: Vec<u64> = Vec::new();
        {
            let tenants = self
                .tenants
                .read()
                .expect("hub lock is never poisoned: no code panics while holding it");
            for event in events {
                let Some(subs) = tenants.get(&event.tenant) else {
                    continue;
                };
                let mut view = EventView::new(event);
                subs.candidates(&mut view, &mut candidates);
                for id in &candidates {
                    let Some(entry) = subs.entries.get(id) else {
                        continue;
                    };
                    if lagged.iter().any(|(_, l)| l == id) {
                        continue;
                    }
                    let Some(shown) = entry.access.admit(&mut view) else {
                        continue;
                    };
                    match entry.tx.try_send(shown) {
                        Ok(()) => {
                            self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            lagged.push((event.tenant.clone(), *id));
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
            }
        }
        self.stats
            .published
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        self.stats.publish_nanos.fetch_add(
            u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
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
            if let Some(subs) = tenants.get_mut(&tenant) {
                if subs.remove(id) {
                    self.stats.subscribers.fetch_sub(1, Ordering::Relaxed);
                    self.stats.lagged.fetch_add(1, Ordering::Relaxed);
                }
                if subs.entries.is_empty() {
                    tenants.remove(&tenant);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::Selector;
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

    fn all() -> Arc<Access> {
        Arc::new(Access::open(Selector::default()))
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
        let mut s = hub.subscribe(
            TenantId::new("a").expect("valid"),
            Arc::new(Access::open(sel)),
        );
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

    fn row_event(seq: i64, event_type: &str, op: &str, new: &str, old: &str) -> Arc<Committed> {
        let topic = format!("tables/public.todos/{op}");
        let body = format!(
            r#"{{"seq":{seq},"type":"{event_type}","topic":"{topic}","data":{{"op":"{op}","key":{{"id":1}},"new":{{"id":1,"owner_id":"{new}","secret":"s"}},"old":{{"id":1,"owner_id":"{old}","secret":"s"}}}}}}"#
        );
        Arc::new(Committed {
            seq,
            tenant: TenantId::new("a").expect("valid"),
            topic: topic.into(),
            event_type: event_type.into(),
            body: Bytes::from(body),
            commit_micros: 0,
        })
    }

    fn drain_types(sub: &mut Subscription) -> Vec<(i64, String)> {
        let mut out = Vec::new();
        while let Ok(e) = sub.rx.try_recv() {
            out.push((e.seq, e.event_type.to_string()));
        }
        out
    }

    #[test]
    fn policy_subscribers_are_reached_through_their_claim_value() {
        use crate::auth::{CredentialId, Identity, Role};
        let cfgs: Vec<crate::config::PolicyConfig> = serde_json::from_value(serde_json::json!([
            {"role": "member", "table": "public.todos",
             "rows": {"field": "owner_id", "op": "eq", "claim": "sub"}, "hide_columns": ["secret"]}
        ]))
        .expect("config");
        let policies =
            crate::policy::Policies::compile(&cfgs, &["public.todos".into()], &[]).expect("valid");
        let hub = Hub::new(64);
        let t = TenantId::new("a").expect("valid");
        let sub = |user: &str| {
            let mut claims = serde_json::Map::new();
            claims.insert("sub".into(), user.into());
            let identity = Identity {
                tenant: Some(t.clone()),
                role: Role::Anon,
                policy_role: "member".into(),
                claims: Arc::new(claims),
                credential: CredentialId::ApiKey { id: 1 },
            };
            let access = Access {
                viewer: policies.viewer(&identity),
                selector: Selector::default(),
                membership: false,
            };
            hub.subscribe(t.clone(), Arc::new(access))
        };
        let (mut u1, mut u2, mut u3) = (sub("u1"), sub("u2"), sub("u3"));
        let mut everyone = hub.subscribe(t.clone(), all());
        hub.publish(&[
            row_event(1, "row.inserted", "insert", "u1", "u1"),
            row_event(2, "row.updated", "update", "u2", "u1"),
            row_event(3, "row.deleted", "delete", "u2", "u2"),
        ]);
        assert_eq!(
            drain_types(&mut u1),
            vec![(1, "row.inserted".into()), (2, "row.left".into())]
        );
        assert_eq!(
            drain_types(&mut u2),
            vec![(2, "row.entered".into()), (3, "row.deleted".into())]
        );
        assert_eq!(drain_types(&mut u3), vec![]);
        assert_eq!(drain_types(&mut everyone).len(), 3);
        drop(u2);
        hub.publish(&[row_event(4, "row.inserted", "insert", "u2", "u2")]);
        assert_eq!(drain_types(&mut u1), vec![]);
        assert_eq!(hub.stats.subscribers.load(Ordering::Relaxed), 3);
        assert_eq!(hub.stats.published.load(Ordering::Relaxed), 4);
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
