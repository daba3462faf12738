//! Record batches (sql/007_record_batches.sql) built as events arrive:
//! a group's events (a backfill chunk, or the events of one source
//! transaction in one append) grouped by tenant, each tenant's events in
//! their order, cut where the header changes (type, topic) and at
//! [`BATCH_EVENTS`] events or [`BATCH_BYTES`] of data, each batch's `data`
//! array written while its events are fresh in cache. The backfill
//! normalizer builds a chunk's beside the stream; the appender builds a
//! transaction's, and adds each row's header. Pure.
//!
//! Invariant: a batch holds one tenant's events, consecutive in that
//! tenant's order and sharing every header column; the caller gives the
//! group only events that share source, txid, lsn and commit time.

use std::collections::HashMap;
use std::sync::Arc;

use super::copy;
use crate::event::{Audience, PendingEvent, TenantId};

/// Events in one record batch at most, and its `data` bytes at most (a
/// reader re-reads a batch it stopped inside; keep that small).
pub const BATCH_EVENTS: usize = 256;
pub const BATCH_BYTES: usize = 256 << 10;

/// One record batch of a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreBatch {
    /// Indices of its events in the chunk, in order; all of one tenant.
    pub members: Vec<usize>,
    /// `[[subject, data], …]` of those events (unused when there is one:
    /// a lone event is stored as an ordinary row).
    pub data: Vec<u8>,
}

impl PreBatch {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() + 8 * self.members.len()
    }
}

/// Builds a chunk's batches event by event ([`Batcher::push`]), then hands
/// them over in log order: tenants in order of their first event, each
/// tenant's batches in order ([`Batcher::finish`]).
#[derive(Debug, Default)]
pub struct Batcher {
    at: HashMap<TenantId, usize>,
    /// Per tenant, in order of first appearance: its closed batches and
    /// its open one.
    tenants: Vec<Vec<PreBatch>>,
    /// Data bytes counted into each tenant's open batch.
    open_bytes: Vec<usize>,
    /// (type, topic) of each tenant's open batch, and whether it holds an
    /// event with extensions (which is always alone: a batch row has no
    /// `ext` column of its own).
    open_header: Vec<(Arc<str>, Arc<str>, bool)>,
}

impl Batcher {
    pub fn new() -> Batcher {
        Batcher::default()
    }

    /// Adds the chunk's event number `j`. Events of other audiences (never
    /// in a chunk) are left out.
    pub fn push(&mut self, j: usize, event: &PendingEvent) {
        let Audience::Tenant(t) = &event.audience else {
            return;
        };
        let g = match self.at.get(t) {
            Some(&g) => g,
            None => {
                self.at.insert(t.clone(), self.tenants.len());
                self.tenants.push(Vec::new());
                self.open_bytes.push(0);
                self.open_header.push((
                    event.event_type.clone(),
                    event.topic.clone(),
                    event.ext.is_some(),
                ));
                self.tenants.len() - 1
            }
        };
        let (Some(batches), Some(bytes), Some(header)) = (
            self.tenants.get_mut(g),
            self.open_bytes.get_mut(g),
            self.open_header.get_mut(g),
        ) else {
            return;
        };
        let size = event.data.get().len() + 32;
        let same_header = *header.0 == *event.event_type
            && *header.1 == *event.topic
            && !header.2
            && event.ext.is_none();
        let full = batches.last().is_none_or(|b| {
            !b.members.is_empty()
                && (!same_header || b.members.len() >= BATCH_EVENTS || *bytes + size > BATCH_BYTES)
        });
        if full {
            if !same_header {
                *header = (
                    event.event_type.clone(),
                    event.topic.clone(),
                    event.ext.is_some(),
                );
            }
            if let Some(b) = batches.last_mut() {
                b.data.push(b']');
            }
            batches.push(PreBatch {
                members: Vec::new(),
                data: Vec::with_capacity(size.min(BATCH_BYTES) * 4),
            });
            *bytes = 0;
        }
        if let Some(b) = batches.last_mut() {
            b.data.push(if b.members.is_empty() { b'[' } else { b',' });
            copy::batch_element(&mut b.data, event);
            b.members.push(j);
        }
        *bytes += size;
    }

    /// Every batch, in log order.
    pub fn finish(self) -> Vec<PreBatch> {
        let mut out = Vec::new();
        for mut batches in self.tenants {
            if let Some(b) = batches.last_mut() {
                b.data.push(b']');
            }
            out.append(&mut batches);
        }
        out
    }

    /// The batches of `events`, built in one go.
    pub fn of(events: &[PendingEvent]) -> Vec<PreBatch> {
        let mut b = Batcher::new();
        for (j, e) in events.iter().enumerate() {
            b.push(j, e);
        }
        b.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(tenant: &str, n: usize, data_len: usize) -> PendingEvent {
        copy::test_event(
            tenant,
            Some(&format!("public.t/{n}")),
            &format!("\"{}\"", "x".repeat(data_len)),
        )
    }

    #[test]
    fn chunk_events_group_by_tenant_in_order() {
        let events: Vec<PendingEvent> = ["a", "b", "a", "c", "b", "a"]
            .iter()
            .enumerate()
            .map(|(n, t)| snapshot(t, n, 1))
            .collect();
        let groups: Vec<Vec<usize>> = Batcher::of(&events)
            .into_iter()
            .map(|b| b.members)
            .collect();
        assert_eq!(groups, vec![vec![0, 2, 5], vec![1, 4], vec![3]]);
    }

    #[test]
    fn batch_data_is_the_array_of_subject_data_pairs() {
        let events = vec![
            copy::test_event("a", Some("public.t/\"1\"\n"), r#"{"id":1}"#),
            copy::test_event("b", None, "[]"),
            copy::test_event("a", None, "2"),
        ];
        let batches = Batcher::of(&events);
        let data: Vec<String> = batches
            .iter()
            .map(|b| String::from_utf8(b.data.clone()).expect("utf-8"))
            .collect();
        assert_eq!(
            data,
            vec![
                r#"[["public.t/\"1\"\n",{"id":1}],[null,2]]"#.to_owned(),
                "[[null,[]]]".to_owned()
            ]
        );
        for d in &data {
            let _: Vec<(Option<String>, serde_json::Value)> =
                serde_json::from_str(d).expect("a JSON array of pairs");
        }
    }

    #[test]
    fn a_header_change_cuts_the_tenants_batch_and_keeps_its_order() {
        let typed = |tenant: &str, n: usize, kind: &str| PendingEvent {
            event_type: format!("row.{kind}").into(),
            topic: format!("tables/public.t/{kind}").into(),
            ..snapshot(tenant, n, 1)
        };
        let events = vec![
            typed("a", 0, "insert"),
            typed("b", 1, "insert"),
            typed("a", 2, "insert"),
            typed("a", 3, "update"),
            typed("b", 4, "insert"),
            typed("a", 5, "insert"),
        ];
        let groups: Vec<Vec<usize>> = Batcher::of(&events)
            .into_iter()
            .map(|b| b.members)
            .collect();
        assert_eq!(groups, vec![vec![0, 2], vec![3], vec![5], vec![1, 4]]);
        for g in &groups {
            let head = &events[g[0]];
            assert!(
                g.iter()
                    .all(|&j| events[j].event_type == head.event_type
                        && events[j].topic == head.topic)
            );
        }
    }

    #[test]
    fn an_event_with_extensions_is_always_alone() {
        let ext = crate::event::Extensions::new(Some(&serde_json::json!("c-1")), None)
            .expect("valid")
            .expect("some");
        let with = |n: usize| PendingEvent {
            ext: Some(ext.clone()),
            ..snapshot("a", n, 1)
        };
        let events = vec![
            snapshot("a", 0, 1),
            snapshot("a", 1, 1),
            with(2),
            with(3),
            snapshot("a", 4, 1),
            snapshot("a", 5, 1),
        ];
        let groups: Vec<Vec<usize>> = Batcher::of(&events)
            .into_iter()
            .map(|b| b.members)
            .collect();
        assert_eq!(groups, vec![vec![0, 1], vec![2], vec![3], vec![4, 5]]);
    }

    #[test]
    fn record_batches_are_bounded_by_count_and_bytes() {
        let events: Vec<PendingEvent> = (0..600).map(|n| snapshot("a", n, 1)).collect();
        let batches = Batcher::of(&events);
        let sizes: Vec<usize> = batches.iter().map(|b| b.members.len()).collect();
        assert_eq!(
            sizes,
            vec![BATCH_EVENTS, BATCH_EVENTS, 600 - 2 * BATCH_EVENTS]
        );
        let all: Vec<usize> = batches.into_iter().flat_map(|b| b.members).collect();
        assert_eq!(
            all,
            (0..600).collect::<Vec<_>>(),
            "every event once, in order"
        );

        // Big events: cut by bytes, and one event bigger than the bound is
        // a batch of its own.
        let events: Vec<PendingEvent> = vec![
            snapshot("a", 0, 100 << 10),
            snapshot("a", 1, 100 << 10),
            snapshot("a", 2, 100 << 10),
            snapshot("a", 3, 300 << 10),
            snapshot("a", 4, 10),
        ];
        let sizes: Vec<usize> = Batcher::of(&events)
            .iter()
            .map(|b| b.members.len())
            .collect();
        assert_eq!(sizes, vec![2, 1, 1, 1]);
    }
}
