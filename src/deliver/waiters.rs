//! Publishers waiting for their events to reach the log, told by the
//! appender of this process instead of each querying the log after every
//! append: an append stage notes the custom events of each batch (tenant,
//! source xid, seq) and, after COMMIT, hands them to whoever registered
//! for that (tenant, xid).
//!
//! A publisher registers after its transaction committed. The stage hands
//! events over at `committed` (after COMMIT) under the same lock a
//! registration takes, and keeps the last [`RECENT`] custom events it
//! handed over: a registration finds its events in that record when they
//! were appended before it registered, and gets them as they come after.
//! Only when the record no longer reaches back to the log head the
//! publisher saw before emitting does it read the log itself. A process
//! whose appender is not running (a standby) has no stage attached; its
//! publishers read the log when the durable head moves.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio_postgres::Client;

use crate::event::types::CUSTOM_PREFIX;
use crate::event::TenantId;
use crate::log::{AppendStage, Appended};

/// Custom events remembered after they were handed over.
pub const RECENT: usize = 8192;

/// Everyone waiting, by (tenant, 32-bit source xid).
#[derive(Debug, Default)]
pub struct Waiters {
    state: Mutex<State>,
    /// Appenders of this process running with the stage.
    attached: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    waiting: HashMap<(TenantId, i64), Arc<Waiter>>,
    /// The last custom events handed over (tenant, xid, seq), oldest first.
    recent: VecDeque<(TenantId, i64, i64)>,
    /// The highest seq dropped from `recent` (0: none yet).
    forgotten_through: i64,
}

/// One publisher's wait: the seqs seen so far, and its wake-up.
#[derive(Debug, Default)]
pub struct Waiter {
    seqs: Mutex<Vec<i64>>,
    pub notify: Notify,
}

impl Waiter {
    /// The seqs handed over so far.
    pub fn seqs(&self) -> Vec<i64> {
        self.seqs.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// A registration; dropping it unregisters.
pub struct Registration {
    waiters: Arc<Waiters>,
    key: (TenantId, i64),
    pub waiter: Arc<Waiter>,
    /// Whether every event after the head given at registration that was
    /// handed over before it is in the waiter (else read the log once).
    pub complete: bool,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut s) = self.waiters.state.lock() {
            s.waiting.remove(&self.key);
        }
    }
}

impl Waiters {
    /// Waits for `tenant`'s events of source transaction `xid`, all of
    /// them after `head_before`; those already handed over are in the
    /// waiter at once.
    pub fn register(
        self: &Arc<Self>,
        tenant: &TenantId,
        xid: i64,
        head_before: i64,
    ) -> Registration {
        let key = (tenant.clone(), xid & 0xFFFF_FFFF);
        let waiter = Arc::new(Waiter::default());
        let mut complete = false;
        if let Ok(mut s) = self.state.lock() {
            let earlier: Vec<i64> = s
                .recent
                .iter()
                .filter(|(t, x, _)| *t == key.0 && *x == key.1)
                .map(|(_, _, seq)| *seq)
                .collect();
            if let Ok(mut seqs) = waiter.seqs.lock() {
                *seqs = earlier;
            }
            complete = s.forgotten_through <= head_before;
            s.waiting.insert(key.clone(), waiter.clone());
        }
        Registration {
            waiters: self.clone(),
            key,
            waiter,
            complete,
        }
    }

    /// Whether an appender of this process tells the waiters.
    pub fn attached(&self) -> bool {
        self.attached.load(Ordering::Acquire) > 0
    }

    /// The append stage that tells them; the waiters count as attached
    /// while it lives.
    pub fn stage(self: &Arc<Self>) -> Arc<dyn AppendStage> {
        self.attached.fetch_add(1, Ordering::AcqRel);
        Arc::new(Stage {
            waiters: self.clone(),
            batch: Mutex::default(),
        })
    }

    fn hand_over(&self, events: Vec<(TenantId, i64, i64)>) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        for (tenant, xid, seq) in events {
            if let Some(w) = s.waiting.get(&(tenant.clone(), xid)) {
                if let Ok(mut seqs) = w.seqs.lock() {
                    seqs.push(seq);
                }
                w.notify.notify_one();
            }
            if s.recent.len() >= RECENT {
                if let Some((_, _, old)) = s.recent.pop_front() {
                    s.forgotten_through = s.forgotten_through.max(old);
                }
            }
            s.recent.push_back((tenant, xid, seq));
        }
    }
}

struct Stage {
    waiters: Arc<Waiters>,
    /// The custom events of the batch in its transaction now.
    batch: Mutex<Vec<(TenantId, i64, i64)>>,
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.waiters.attached.fetch_sub(1, Ordering::AcqRel);
    }
}

impl AppendStage for Stage {
    fn wants_events(&self) -> bool {
        true
    }

    fn in_transaction<'a>(
        &'a self,
        _tx: &'a Client,
        appended: &'a Appended<'a>,
    ) -> BoxFuture<'a, Result<bool, tokio_postgres::Error>> {
        // Every custom event, whether anyone waits now or not: a publisher
        // may register between here and COMMIT.
        let custom: Vec<(TenantId, i64, i64)> = appended
            .events
            .iter()
            .filter(|(_, _, e)| e.event_type.starts_with(CUSTOM_PREFIX))
            .filter_map(|(seq, tenant, e)| {
                let xid = i64::try_from(e.txid?).ok()?;
                Some(((*tenant).clone(), xid & 0xFFFF_FFFF, *seq))
            })
            .collect();
        let any = !custom.is_empty();
        // A retried batch replaces what its failed attempt noted.
        if let Ok(mut b) = self.batch.lock() {
            *b = custom;
        }
        Box::pin(async move { Ok(any) })
    }

    fn committed(&self) {
        let events = self
            .batch
            .lock()
            .map(|mut b| std::mem::take(&mut *b))
            .unwrap_or_default();
        self.waiters.hand_over(events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registered_waiter_gets_its_transactions_seqs_and_no_others() {
        let waiters = Arc::new(Waiters::default());
        let acme = TenantId::new("acme").expect("valid");
        let other = TenantId::new("other").expect("valid");
        waiters.hand_over(vec![(acme.clone(), 7, 9), (other.clone(), 9, 10)]);
        // Seq 9 was handed over before the registration: it is found.
        let reg = waiters.register(&acme, 0x1_0000_0007, 8);
        assert!(reg.complete);
        waiters.hand_over(vec![
            (acme.clone(), 7, 10),
            (other.clone(), 7, 11),
            (acme.clone(), 8, 12),
            (acme.clone(), 7, 13),
        ]);
        assert_eq!(reg.waiter.seqs(), [9, 10, 13]);
        drop(reg);
        assert!(waiters.state.lock().expect("lock").waiting.is_empty());
    }

    #[test]
    fn a_registration_after_the_record_was_cut_is_told_to_read_the_log() {
        let waiters = Arc::new(Waiters::default());
        let acme = TenantId::new("acme").expect("valid");
        let n = i64::try_from(RECENT).expect("fits") + 10;
        waiters.hand_over((1..=n).map(|seq| (acme.clone(), 1, seq)).collect());
        // Seqs 1..=10 are forgotten: a publisher that saw head 5 may have
        // had events among them.
        assert!(!waiters.register(&acme, 2, 5).complete);
        assert!(waiters.register(&acme, 2, 10).complete);
        assert_eq!(waiters.register(&acme, 1, 10).waiter.seqs().len(), RECENT);
    }

    #[test]
    fn the_stage_counts_as_attached_while_it_lives() {
        let waiters = Arc::new(Waiters::default());
        assert!(!waiters.attached());
        let stage = waiters.stage();
        assert!(waiters.attached());
        drop(stage);
        assert!(!waiters.attached());
    }
}
