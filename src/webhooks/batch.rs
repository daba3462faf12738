//! Batching, as pure functions over what a claim read: which due
//! deliveries of a batched endpoint go out together in one request, and
//! that request's body.
//!
//! A request is either a retry (deliveries that already share a request id:
//! they go out again together, under the same `webhook-id`) or new (due
//! deliveries with no request yet, at most `max_events`, sent once there
//! are that many or the oldest has waited `max_wait`). An ordered endpoint
//! sends one request at a time, of deliveries consecutive from its earliest
//! unfinished one.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};

/// One unfinished delivery of a batched endpoint, as a claim read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: i64,
    pub seq: i64,
    /// The request it is retried in, if it was sent in a batch already.
    pub request: Option<String>,
    /// `next_attempt_at`: due from then.
    pub due_at: DateTime<Utc>,
}

/// One request to claim: the deliveries (their ids, in seq order) and, for
/// a retry, the request id they keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub request: Option<String>,
    pub deliveries: Vec<i64>,
}

/// What to claim now, and when to look again if a partial batch is waiting
/// for more events.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub requests: Vec<Planned>,
    pub wake: Option<Duration>,
}

/// The batching settings a plan follows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_events: usize,
    pub max_wait: Duration,
}

/// When a new batch whose oldest delivery is due at `oldest` may go:
/// `None` now, otherwise how long until it may.
fn wait_left(oldest: DateTime<Utc>, max_wait: Duration, now: DateTime<Utc>) -> Option<Duration> {
    let ready_at = oldest + chrono::Duration::from_std(max_wait).unwrap_or(chrono::Duration::MAX);
    (ready_at > now).then(|| (ready_at - now).to_std().unwrap_or(Duration::ZERO))
}

fn sorted_by_seq(mut picked: Vec<&Candidate>) -> Vec<i64> {
    picked.sort_by_key(|c| c.seq);
    picked.iter().map(|c| c.id).collect()
}

/// An unordered endpoint: `due` holds its due deliveries in
/// (`due_at`, seq) order, as read with a limit (`truncated`: there were
/// more than `free` full batches, so more may follow the last one read). At
/// most `free` requests, the earliest due first.
pub fn plan_unordered(
    due: &[Candidate],
    limits: Limits,
    now: DateTime<Utc>,
    free: usize,
    truncated: bool,
) -> Plan {
    let max_events = limits.max_events.max(1);
    // A retry whose deliveries sit at the end of a truncated read may have
    // more that were not read: leave it for a later claim, whole.
    let boundary = due.last().filter(|_| truncated).map(|c| c.due_at);
    // (position of its earliest delivery, request)
    let mut requests: Vec<(usize, Option<String>, Vec<&Candidate>)> = Vec::new();
    let mut fresh: Vec<(usize, &Candidate)> = Vec::new();
    for (i, c) in due.iter().enumerate() {
        match &c.request {
            None => fresh.push((i, c)),
            Some(r) => match requests.iter_mut().find(|(_, q, _)| q.as_ref() == Some(r)) {
                Some((_, _, members)) => members.push(c),
                None => requests.push((i, Some(r.clone()), vec![c])),
            },
        }
    }
    requests
        .retain(|(_, _, members)| boundary.is_none_or(|b| members.iter().all(|c| c.due_at != b)));
    let mut wake = None;
    for chunk in fresh.chunks(max_events) {
        let (first, oldest) = chunk[0];
        if chunk.len() < max_events {
            if let Some(left) = wait_left(oldest.due_at, limits.max_wait, now) {
                wake = Some(left);
                continue;
            }
        }
        requests.push((first, None, chunk.iter().map(|(_, c)| *c).collect()));
    }
    requests.sort_by_key(|(first, _, _)| *first);
    Plan {
        requests: requests
            .into_iter()
            .take(free)
            .map(|(_, request, members)| Planned {
                request,
                deliveries: sorted_by_seq(members),
            })
            .collect(),
        wake,
    }
}

/// An ordered endpoint: `unfinished` holds its earliest unfinished
/// deliveries in seq order, due or not, as read with a limit of
/// `max_events`. One request at most: the retry the earliest belongs to,
/// or a new batch of the consecutive due deliveries from it.
pub fn plan_ordered(unfinished: &[Candidate], limits: Limits, now: DateTime<Utc>) -> Plan {
    let max_events = limits.max_events.max(1);
    let Some(first) = unfinished.first() else {
        return Plan::default();
    };
    if first.due_at > now {
        // In flight (leased) or waiting for its retry: it holds the line.
        return Plan::default();
    }
    if let Some(r) = &first.request {
        let members = unfinished
            .iter()
            .take_while(|c| c.request.as_ref() == Some(r))
            .collect();
        return Plan {
            requests: vec![Planned {
                request: Some(r.clone()),
                deliveries: sorted_by_seq(members),
            }],
            wake: None,
        };
    }
    let run: Vec<&Candidate> = unfinished
        .iter()
        .take_while(|c| c.request.is_none() && c.due_at <= now)
        .take(max_events)
        .collect();
    // The run can only grow with events not yet written when it reached
    // the end of what is unfinished.
    let may_grow = run.len() == unfinished.len() && run.len() < max_events;
    if may_grow {
        if let Some(left) = wait_left(first.due_at, limits.max_wait, now) {
            return Plan {
                requests: Vec::new(),
                wake: Some(left),
            };
        }
    }
    Plan {
        requests: vec![Planned {
            request: None,
            deliveries: sorted_by_seq(run),
        }],
        wake: None,
    }
}

/// A batch body: a JSON array of `envelopes` (each one JSON value), in
/// order, as many as fit in `budget` bytes, at least one. Returns the body
/// and how many envelopes it holds.
pub fn body(envelopes: &[Bytes], budget: usize) -> (Bytes, usize) {
    let mut out = Vec::with_capacity(
        envelopes
            .iter()
            .map(|e| e.len() + 1)
            .sum::<usize>()
            .min(budget)
            + 2,
    );
    out.push(b'[');
    let mut taken = 0;
    for e in envelopes {
        // '[' or ',' before it, ']' after the last.
        if taken > 0 && out.len() + 1 + e.len() + 1 > budget {
            break;
        }
        if taken > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e);
        taken += 1;
    }
    out.push(b']');
    (Bytes::from(out), taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_700_000_000_000 + ms).expect("valid time")
    }

    fn new(id: i64, seq: i64, due_ms: i64) -> Candidate {
        Candidate {
            id,
            seq,
            request: None,
            due_at: at(due_ms),
        }
    }

    fn retry(id: i64, seq: i64, due_ms: i64, request: &str) -> Candidate {
        Candidate {
            request: Some(request.to_owned()),
            ..new(id, seq, due_ms)
        }
    }

    const LIMITS: Limits = Limits {
        max_events: 3,
        max_wait: Duration::from_millis(1000),
    };

    fn ids(plan: &Plan) -> Vec<Vec<i64>> {
        plan.requests.iter().map(|r| r.deliveries.clone()).collect()
    }

    #[test]
    fn unordered_full_batches_go_at_once_and_a_partial_one_waits() {
        let due: Vec<Candidate> = (1..=7).map(|i| new(i, i * 10, 0)).collect();
        let plan = plan_unordered(&due, LIMITS, at(100), 8, false);
        assert_eq!(ids(&plan), [vec![1, 2, 3], vec![4, 5, 6]]);
        assert_eq!(plan.wake, Some(Duration::from_millis(900)));
        let later = plan_unordered(&due, LIMITS, at(1000), 8, false);
        assert_eq!(ids(&later), [vec![1, 2, 3], vec![4, 5, 6], vec![7]]);
        assert_eq!(later.wake, None);
        let one_slot = plan_unordered(&due, LIMITS, at(1000), 1, false);
        assert_eq!(ids(&one_slot), [vec![1, 2, 3]]);
    }

    #[test]
    fn unordered_retries_keep_their_request_and_come_in_due_order() {
        // Read in (due, seq) order: a retry due first, new ones, another retry.
        let due = vec![
            retry(5, 50, 0, "b1"),
            retry(6, 40, 0, "b1"),
            new(1, 10, 10),
            new(2, 20, 20),
            retry(7, 70, 30, "b2"),
        ];
        let plan = plan_unordered(&due, LIMITS, at(2000), 8, false);
        assert_eq!(
            plan.requests,
            [
                Planned {
                    request: Some("b1".into()),
                    deliveries: vec![6, 5]
                },
                Planned {
                    request: None,
                    deliveries: vec![1, 2]
                },
                Planned {
                    request: Some("b2".into()),
                    deliveries: vec![7]
                },
            ]
        );
        // A truncated read may have cut b2 short: it waits for a whole read.
        let plan = plan_unordered(&due, LIMITS, at(2000), 8, true);
        assert_eq!(ids(&plan), [vec![6, 5], vec![1, 2]]);
        // A whole retry that fills the read is sent.
        let whole: Vec<Candidate> = (1..=3).map(|i| retry(i, i, 0, "b3")).collect();
        let plan = plan_unordered(&whole, LIMITS, at(0), 1, false);
        assert_eq!(ids(&plan), [vec![1, 2, 3]]);
    }

    #[test]
    fn unordered_batches_are_in_seq_order_inside() {
        let due = vec![new(9, 90, 0), new(3, 30, 5), new(5, 50, 6)];
        let plan = plan_unordered(&due, LIMITS, at(0), 1, false);
        assert_eq!(ids(&plan), [vec![3, 5, 9]]);
    }

    #[test]
    fn zero_wait_sends_whatever_is_due() {
        let limits = Limits {
            max_events: 100,
            max_wait: Duration::ZERO,
        };
        let plan = plan_unordered(&[new(1, 1, 0)], limits, at(0), 1, false);
        assert_eq!(ids(&plan), [vec![1]]);
        let plan = plan_ordered(&[new(1, 1, 0)], limits, at(0));
        assert_eq!(ids(&plan), [vec![1]]);
    }

    #[test]
    fn ordered_waits_behind_its_earliest_unfinished_delivery() {
        // In flight: leased into the future.
        let leased = vec![new(1, 1, 5000), new(2, 2, 0), new(3, 3, 0)];
        assert_eq!(plan_ordered(&leased, LIMITS, at(0)), Plan::default());
        // Full: goes now; consecutive from the earliest.
        let due: Vec<Candidate> = (1..=3).map(|i| new(i, i, 0)).collect();
        assert_eq!(ids(&plan_ordered(&due, LIMITS, at(0))), [vec![1, 2, 3]]);
        // Partial and young: waits for more.
        let plan = plan_ordered(&due[..2], LIMITS, at(400));
        assert_eq!(
            plan,
            Plan {
                requests: vec![],
                wake: Some(Duration::from_millis(600))
            }
        );
        assert_eq!(
            ids(&plan_ordered(&due[..2], LIMITS, at(1000))),
            [vec![1, 2]]
        );
    }

    #[test]
    fn ordered_retries_its_request_whole_before_anything_later() {
        let unfinished = vec![retry(1, 1, 0, "b1"), retry(2, 2, 0, "b1"), new(3, 3, 0)];
        let plan = plan_ordered(&unfinished, LIMITS, at(0));
        assert_eq!(
            plan.requests,
            [Planned {
                request: Some("b1".into()),
                deliveries: vec![1, 2]
            }]
        );
        // A run that cannot grow (a retry follows it) goes without waiting.
        let replayed = vec![new(1, 1, 0), retry(2, 2, 500, "b1")];
        assert_eq!(ids(&plan_ordered(&replayed, LIMITS, at(0))), [vec![1]]);
    }

    #[test]
    fn bodies_are_arrays_within_the_budget() {
        let e = |s: &str| Bytes::from(s.to_owned());
        let envelopes = [e("{\"seq\":1}"), e("{\"seq\":2}"), e("{\"seq\":3}")];
        let (b, n) = body(&envelopes, 1 << 20);
        assert_eq!(
            (&b[..], n),
            (&b"[{\"seq\":1},{\"seq\":2},{\"seq\":3}]"[..], 3)
        );
        let (b, n) = body(&envelopes, 21);
        assert_eq!((&b[..], n), (&b"[{\"seq\":1},{\"seq\":2}]"[..], 2));
        let (b, n) = body(&envelopes, 2);
        assert_eq!((&b[..], n), (&b"[{\"seq\":1}]"[..], 1), "one always goes");
        let parsed: serde_json::Value =
            serde_json::from_slice(&body(&envelopes, 100).0).expect("a batch body is JSON");
        assert_eq!(parsed.as_array().map(Vec::len), Some(3));
    }
}
