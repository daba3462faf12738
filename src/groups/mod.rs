//! Consumer groups: durable work queues over a tenant's log. Each event a
//! group selects is delivered to one of its workers under a delivery token,
//! redelivered when not acknowledged within `ack_wait_ms`, retried later on
//! a nack, and parked as a dead letter after `max_deliveries`; with
//! `ordering = subject`, two events of one subject (a row's key) are never
//! in flight together and go out in seq order.
//!
//! State lives in the state database (`sluice.groups`,
//! `sluice.group_messages`, see `sql/011_groups.sql`), so any number of
//! Sluice processes serve one group: a receive locks the group's row for
//! its transaction (receives of one group take turns; acks do not wait),
//! reads the log past the group's `cursor` and records what it delivered.
//!
//! Invariants: an event below `cursor` that the group selects has a message
//! row until it is acknowledged (then the row is deleted) or it is dead;
//! a message is in flight under one token at a time (redelivery, nack and
//! seek replace or clear it), so an acknowledgement counts once; tokens of
//! another tenant or group never match (every statement is scoped by both).

pub mod spec;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{watch, Notify};
use tokio_postgres::GenericClient;

use crate::event::{Committed, TenantId};
use crate::log::{self, Durable, LogQuery, ReadScope};
use crate::policy::{Access, Policies};
pub use spec::{GroupSpec, OrderBy, SpecError, Start};

/// Most events one receive returns.
pub const MAX_RECEIVE: i64 = 1000;
/// Longest a receive waits for events.
pub const MAX_WAIT_MS: i64 = 60_000;
/// Most tokens in one ack, nack or extend.
pub const MAX_TOKENS: usize = 1000;
/// Log rows one receive reads at most past the cursor (the rest waits for
/// the next receive, so a selective group cannot hold its lock long).
const MAX_SCAN: i64 = 10_000;

/// Process-wide counters (no per-group labels).
#[derive(Debug, Default)]
pub struct GroupMetrics {
    pub delivered: AtomicU64,
    pub redelivered: AtomicU64,
    pub acked: AtomicU64,
    pub nacked: AtomicU64,
    pub dead: AtomicU64,
}

/// What the HTTP and WebSocket layers use: the policies groups are held
/// to, the counters, and a wake-up for long polls when messages are acked,
/// nacked, requeued or sought (another process's are seen by polling).
pub struct Groups {
    policies: Arc<Policies>,
    pub metrics: GroupMetrics,
    wake: Notify,
    /// Per group, events read past its cursor and not yet delivered.
    ahead: std::sync::Mutex<HashMap<(TenantId, String), Ahead>>,
}

/// Events a receive read from the log past the cursor and left for the
/// next one (in this process): valid while the group's cursor, generation
/// (seeks) and settings are what they were.
struct Ahead {
    from: i64,
    generation: i32,
    updated_at: chrono::DateTime<chrono::Utc>,
    /// What the group's access let through, from `from` on.
    events: std::collections::VecDeque<Arc<Committed>>,
    /// The seq after the last log row read.
    next: i64,
}

/// Log rows read at once past a group's cursor.
const READ_AHEAD: i64 = 1000;

/// Where a seek moves a group.
#[derive(Debug, Clone, PartialEq)]
pub enum Seek {
    Seq(i64),
    Time(chrono::DateTime<chrono::Utc>),
}

/// A parked message.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub seq: i64,
    pub attempts: i32,
    pub dead_at: Option<chrono::DateTime<chrono::Utc>>,
    /// None once retention pruned the event.
    pub event: Option<Bytes>,
}

/// A stored group.
#[derive(Debug, Clone)]
pub struct Group {
    pub tenant: TenantId,
    pub spec: GroupSpec,
    /// The next seq of the log the group has not read.
    pub cursor: i64,
    pub generation: i32,
    pub delivered: i64,
    pub redelivered: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// One delivered event.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `<seq>.<uuid>`: what ack, nack and extend take.
    pub token: String,
    pub attempt: i32,
    pub seq: i64,
    /// The envelope as the group's role sees it.
    pub event: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("no consumer group {0:?} for this tenant")]
    Unknown(String),
    #[error("a consumer group {0:?} already exists for this tenant")]
    Exists(String),
    #[error("{0}")]
    Invalid(#[from] SpecError),
    #[error("the log no longer holds seq {requested}: retention pruned it; the oldest available is {oldest}")]
    Gap { requested: i64, oldest: i64 },
    #[error("{0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("the state database is unavailable: {0}")]
    Pool(String),
}

/// Tokens as given (`<seq>.<32 hex digits>`), split into seqs, the random
/// parts as bytes, and those as lower-case hex; malformed ones are refused
/// by position.
pub fn parse_tokens(tokens: &[String]) -> Result<ParsedTokens, SpecError> {
    if tokens.is_empty() || tokens.len() > MAX_TOKENS {
        return Err(SpecError::new(
            "deliveries",
            format!(
                "expected 1 to {MAX_TOKENS} delivery tokens, got {}",
                tokens.len()
            ),
        ));
    }
    let mut out = ParsedTokens::default();
    for (i, t) in tokens.iter().enumerate() {
        let parsed = t.split_once('.').and_then(|(s, h)| {
            let seq: i64 = s.parse().ok().filter(|n| *n >= 1)?;
            let bytes = (h.len() == 32).then(|| hex::decode(h).ok()).flatten()?;
            Some((seq, bytes, h.to_ascii_lowercase()))
        });
        let Some((seq, bytes, hex)) = parsed else {
            return Err(SpecError::new(
                format!("deliveries[{i}]"),
                format!("{t:?} is not a delivery token (they look like \"42.0f8e…\", as receive returned them)"),
            ));
        };
        out.seqs.push(seq);
        out.bytes.push(bytes);
        out.hex.push(hex);
    }
    Ok(out)
}

/// What [`parse_tokens`] makes of tokens, position by position.
#[derive(Debug, Default)]
pub struct ParsedTokens {
    pub seqs: Vec<i64>,
    pub bytes: Vec<Vec<u8>>,
    pub hex: Vec<String>,
}

/// The outcome of an ack, nack or extend: the tokens that matched a
/// message in flight, and those that did not (unknown, expired, of
/// another group or tenant: all alike).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settled {
    pub done: Vec<String>,
    pub unknown: Vec<String>,
    /// Nacks that reached max_deliveries and went to the dead letters.
    pub dead: usize,
}

fn settled(tokens: &[String], matched: &HashSet<String>) -> Settled {
    let mut out = Settled::default();
    for t in tokens {
        let id = t
            .split_once('.')
            .map_or("", |(_, u)| u)
            .to_ascii_lowercase();
        if matched.contains(&id) {
            out.done.push(t.clone());
        } else {
            out.unknown.push(t.clone());
        }
    }
    out
}

const GROUP_COLUMNS: &str =
    "tenant, name, topics, filter, role, claims, ack_wait_ms, max_deliveries, \
     max_in_flight, ordering, cursor, generation, delivered, redelivered, created_at, updated_at";

fn group_of(r: &tokio_postgres::Row) -> Option<Group> {
    let ordering: String = r.get(9);
    Some(Group {
        tenant: TenantId::new(r.get::<_, &str>(0)).ok()?,
        spec: GroupSpec {
            name: r.get(1),
            topics: r.get(2),
            filter: r.get(3),
            role: r.get(4),
            claims: r.get(5),
            ack_wait_ms: r.get(6),
            max_deliveries: r.get(7),
            max_in_flight: r.get(8),
            ordering: OrderBy::parse(&ordering).unwrap_or(OrderBy::None),
        },
        cursor: r.get(10),
        generation: r.get(11),
        delivered: r.get(12),
        redelivered: r.get(13),
        created_at: r.get(14),
        updated_at: r.get(15),
    })
}

/// The envelope's `subject`, if any (ordering is by it).
fn subject_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Subject {
        subject: Option<String>,
    }
    serde_json::from_slice::<Subject>(body).ok()?.subject
}

impl Groups {
    pub fn new(policies: Arc<Policies>) -> Groups {
        Groups {
            policies,
            metrics: GroupMetrics::default(),
            wake: Notify::new(),
            ahead: std::sync::Mutex::default(),
        }
    }

    /// What a group receives: its role's policy, then its topics and filter.
    pub fn access(&self, g: &Group) -> Option<Access> {
        Some(Access {
            viewer: self
                .policies
                .viewer_as(&g.tenant, g.spec.role.as_deref(), &g.spec.claims)?,
            selector: g.spec.selector()?,
            membership: false,
        })
    }

    pub async fn create(
        &self,
        client: &impl GenericClient,
        tenant: &TenantId,
        spec: &GroupSpec,
        start: &Start,
    ) -> Result<Group, GroupError> {
        let pruned = log::pruned_through(client).await?;
        let cursor = match start {
            Start::Beginning => pruned + 1,
            Start::Now => log::head(client).await? + 1,
            Start::Seq(n) => *n,
            Start::Backfill(id) => {
                let row = client
                    .query_opt(
                        "SELECT coalesce(first_seq, start_seq + 1)::bigint FROM sluice.backfills WHERE id = $1",
                        &[id],
                    )
                    .await?;
                row.map(|r| r.get::<_, i64>(0)).ok_or_else(|| {
                    SpecError::new("start.backfill", format!("no backfill {id:?}"))
                })?
            }
        };
        if let Some(g) = log::gap(cursor, pruned) {
            return Err(GroupError::Gap {
                requested: g.requested,
                oldest: g.oldest,
            });
        }
        let cursor = cursor.max(1);
        let (t, ordering) = (tenant.as_str(), spec.ordering.as_str());
        let row = client
            .query_opt(
                &format!(
                    "INSERT INTO sluice.groups (tenant, name, topics, filter, role, claims, ack_wait_ms,
                         max_deliveries, max_in_flight, ordering, cursor)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                     ON CONFLICT DO NOTHING
                     RETURNING {GROUP_COLUMNS}"
                ),
                &{
                    let mut p: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                        spec.params(&t, &ordering).to_vec();
                    p.push(&cursor);
                    p
                },
            )
            .await?;
        match row.as_ref().and_then(group_of) {
            Some(g) => Ok(g),
            None => Err(GroupError::Exists(spec.name.clone())),
        }
    }

    pub async fn get(
        &self,
        client: &impl GenericClient,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Group, GroupError> {
        client
            .query_opt(
                &format!(
                    "SELECT {GROUP_COLUMNS} FROM sluice.groups WHERE tenant = $1 AND name = $2"
                ),
                &[&tenant.as_str(), &name],
            )
            .await?
            .as_ref()
            .and_then(group_of)
            .ok_or_else(|| GroupError::Unknown(name.to_owned()))
    }

    pub async fn list(
        &self,
        client: &impl GenericClient,
        tenant: &TenantId,
    ) -> Result<Vec<Group>, GroupError> {
        Ok(client
            .query(
                &format!(
                    "SELECT {GROUP_COLUMNS} FROM sluice.groups WHERE tenant = $1 ORDER BY name"
                ),
                &[&tenant.as_str()],
            )
            .await?
            .iter()
            .filter_map(group_of)
            .collect())
    }

    /// Replaces the settings of a group (not its position).
    pub async fn update(
        &self,
        client: &impl GenericClient,
        tenant: &TenantId,
        spec: &GroupSpec,
    ) -> Result<Group, GroupError> {
        let (t, ordering) = (tenant.as_str(), spec.ordering.as_str());
        let row = client
            .query_opt(
                &format!(
                    "UPDATE sluice.groups SET topics = $3, filter = $4, role = $5, claims = $6,
                         ack_wait_ms = $7, max_deliveries = $8, max_in_flight = $9, ordering = $10,
                         updated_at = now()
                     WHERE tenant = $1 AND name = $2
                     RETURNING {GROUP_COLUMNS}"
                ),
                &spec.params(&t, &ordering),
            )
            .await?;
        self.wake.notify_waiters();
        row.as_ref()
            .and_then(group_of)
            .ok_or_else(|| GroupError::Unknown(spec.name.clone()))
    }

    pub async fn delete(
        &self,
        client: &impl GenericClient,
        tenant: &TenantId,
        name: &str,
    ) -> Result<(), GroupError> {
        // One statement, so the messages go with their group.
        let n = client
            .execute(
                "WITH g AS (DELETE FROM sluice.groups WHERE tenant = $1 AND name = $2 RETURNING 1),
                      m AS (DELETE FROM sluice.group_messages WHERE tenant = $1 AND name = $2)
                 SELECT 1 FROM g",
                &[&tenant.as_str(), &name],
            )
            .await?;
        self.wake.notify_waiters();
        if n == 0 {
            return Err(GroupError::Unknown(name.to_owned()));
        }
        Ok(())
    }

    /// Up to `max` events, waiting up to `wait` for the first one: the
    /// long poll. `durable` (the log's head) wakes it when events arrive.
    pub async fn receive(
        self: &Arc<Self>,
        pool: &deadpool_postgres::Pool,
        tenant: &TenantId,
        name: &str,
        max: i64,
        wait: Duration,
        durable: &mut watch::Receiver<Arc<Durable>>,
    ) -> Result<Vec<Delivery>, GroupError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Armed before the attempt, so a wake-up during it is not lost.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            durable.borrow_and_update();
            // On a task of its own: a caller that goes away (a client
            // disconnecting, a WebSocket closing) must not leave a
            // connection in the pool mid-transaction, holding the group's
            // lock. What such a receive delivered returns after ack_wait.
            let got = {
                let (this, pool, tenant, name) =
                    (self.clone(), pool.clone(), tenant.clone(), name.to_owned());
                tokio::spawn(async move {
                    let client = pool
                        .get()
                        .await
                        .map_err(|e| GroupError::Pool(e.to_string()))?;
                    this.receive_once(&client, &tenant, &name, max).await
                })
                .await
                .map_err(|e| GroupError::Pool(format!("the receive task failed: {e}")))??
            };
            let now = tokio::time::Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            // Timers (ack_wait, nack delays) and other processes' acks are
            // seen by polling; new events and this process's acks wake it.
            let nap = (deadline - now).min(Duration::from_millis(250));
            tokio::select! {
                _ = durable.changed() => {}
                _ = woken => {}
                _ = tokio::time::sleep(nap) => {}
            }
        }
    }

    /// One receive transaction: expire overdue deliveries, claim ready
    /// messages, then read the log past the cursor.
    pub async fn receive_once(
        &self,
        client: &deadpool_postgres::ClientWrapper,
        tenant: &TenantId,
        name: &str,
        max: i64,
    ) -> Result<Vec<Delivery>, GroupError> {
        let got = self.receive_tx(client, tenant, name, max).await;
        if got.is_err() {
            // Whatever the transaction did is undone (outside one, a no-op).
            let _ = client.batch_execute("ROLLBACK").await;
        }
        got
    }

    /// [`Groups::receive_once`]'s transaction: three round trips when
    /// nothing is due again (BEGIN with the group's lock; expiry, counts
    /// and the retention watermark; the new messages and the cursor with
    /// COMMIT). Its statements are prepared once per connection, so a
    /// pipelined request is sent whole on its first poll, and
    /// `futures_util::future::try_join` polls in argument order: what is
    /// pipelined reaches the server in the order written.
    async fn receive_tx(
        &self,
        client: &deadpool_postgres::ClientWrapper,
        tenant: &TenantId,
        name: &str,
        max: i64,
    ) -> Result<Vec<Delivery>, GroupError> {
        use futures_util::future::{try_join, try_join3};
        let tx: &tokio_postgres::Client = client;
        let t = tenant.as_str();
        let lock = client
            .prepare_cached(&format!(
                "SELECT {GROUP_COLUMNS} FROM sluice.groups WHERE tenant = $1 AND name = $2 FOR NO KEY UPDATE"
            ))
            .await?;
        let (_, locked) =
            try_join(tx.batch_execute("BEGIN"), tx.query_opt(&lock, &[&t, &name])).await?;
        let group = locked
            .as_ref()
            .and_then(group_of)
            .ok_or_else(|| GroupError::Unknown(name.to_owned()))?;
        let access = self.access(&group).ok_or_else(|| {
            SpecError::new("filter", "the group's topics or filter no longer parse")
        })?;
        let spec = &group.spec;
        // Pipelined (one round trip): overdue deliveries expire, and what
        // is in flight and due is counted (`now()` is the transaction's, so
        // the count does not depend on the order the two run in).
        let expire_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&t, &name, &spec.max_deliveries];
        let count_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&t, &name];
        let s_expire = client
            .prepare_cached(
                "UPDATE sluice.group_messages
             SET state = CASE WHEN attempts >= $3 THEN 'dead' ELSE 'ready' END,
                 dead_at = CASE WHEN attempts >= $3 THEN now() END,
                 token = NULL, due = now()
             WHERE tenant = $1 AND name = $2 AND state = 'inflight' AND due <= now()
             RETURNING state",
            )
            .await?;
        let s_count = client
            .prepare_cached(
                "SELECT count(*) FILTER (WHERE state = 'inflight' AND due > now()),
                        count(*) FILTER (WHERE due <= now())
                 FROM sluice.group_messages WHERE tenant = $1 AND name = $2 AND state <> 'dead'",
            )
            .await?;
        let s_pruned = client
            .prepare_cached("SELECT coalesce(max(pruned_through), 0) FROM sluice.retention")
            .await?;
        let (expired, counts, pruned) = try_join3(
            tx.query(&s_expire, &expire_params),
            tx.query_one(&s_count, &count_params),
            tx.query_one(&s_pruned, &[]),
        )
        .await?;
        let pruned: i64 = pruned.get(0);
        let died = expired
            .iter()
            .filter(|r| r.get::<_, &str>(0) == "dead")
            .count();
        self.metrics.dead.fetch_add(died as u64, Ordering::Relaxed);
        let in_flight: i64 = counts.get(0);
        let due: i64 = counts.get::<_, i64>(1) - died as i64;
        let mut room = max.min(i64::from(spec.max_in_flight) - in_flight).max(0);
        let ack_wait = f64::from(spec.ack_wait_ms);
        let mut out: Vec<Delivery> = Vec::new();
        let mut redelivered = 0i64;
        // 1. Ready messages, oldest first (per subject: only the oldest
        //    pending one of its subject).
        let mut claimed: Vec<(i64, i32, String)> = Vec::new();
        if room > 0 && due > 0 {
            let blocked = if spec.ordering == OrderBy::Subject {
                " AND NOT EXISTS (SELECT 1 FROM sluice.group_messages o
                     WHERE o.tenant = $1 AND o.name = $2 AND o.subject = r.subject
                       AND o.seq < r.seq AND o.state <> 'dead')"
            } else {
                ""
            };
            let s_claim = client
                .prepare_cached(&format!(
                        "UPDATE sluice.group_messages m
                         SET state = 'inflight', attempts = attempts + 1,
                             due = now() + $4 * interval '1 millisecond', token = uuid_send(gen_random_uuid())
                         WHERE m.tenant = $1 AND m.name = $2 AND m.seq IN (
                             SELECT r.seq FROM sluice.group_messages r
                             WHERE r.tenant = $1 AND r.name = $2 AND r.state = 'ready' AND r.due <= now(){blocked}
                             ORDER BY r.seq LIMIT $3)
                         RETURNING m.seq, m.attempts, encode(m.token, 'hex')"
                ))
                .await?;
            claimed = tx
                .query(&s_claim, &[&t, &name, &room, &ack_wait])
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            room -= claimed.len() as i64;
            redelivered += claimed.iter().filter(|c| c.1 > 1).count() as i64;
        }
        // 2. The log past the cursor.
        let mut cursor = group.cursor;
        if cursor <= pruned {
            tracing::warn!(
                tenant = t,
                group = name,
                from = cursor,
                to = pruned + 1,
                "retention pruned events this group had not read; it goes on after them"
            );
            cursor = pruned + 1;
        }
        let mut fresh_seqs: Vec<i64> = Vec::new();
        let mut fresh_subjects: Vec<Option<String>> = Vec::new();
        let mut fresh_states: Vec<&str> = Vec::new();
        let mut fresh_bodies: HashMap<i64, Bytes> = HashMap::new();
        let scope = ReadScope::Tenant(tenant.clone());
        // What this process read past the cursor last time and did not
        // deliver (a log page holds more than one receive takes); valid
        // while the group is where it left it, unchanged.
        let key = (tenant.clone(), name.to_owned());
        let mut ahead = self
            .ahead
            .lock()
            .expect("read-ahead lock is never poisoned: no code panics holding it")
            .remove(&key)
            .filter(|a| {
                a.from == cursor
                    && a.generation == group.generation
                    && a.updated_at == group.updated_at
            })
            .unwrap_or_else(|| Ahead {
                from: cursor,
                generation: group.generation,
                updated_at: group.updated_at,
                events: std::collections::VecDeque::new(),
                next: cursor,
            });
        let mut scanned = 0i64;
        let mut pending: HashSet<String> = HashSet::new();
        let mut pending_known: HashSet<String> = HashSet::new();
        while room > 0 {
            if ahead.events.is_empty() {
                if scanned >= MAX_SCAN {
                    break;
                }
                let rows = log::query_events(
                    tx,
                    &scope,
                    &LogQuery {
                        from: ahead.next,
                        limit: READ_AHEAD,
                        ..LogQuery::default()
                    },
                )
                .await?;
                scanned += rows.len() as i64;
                let exhausted = (rows.len() as i64) < READ_AHEAD;
                if let Some(last) = rows.last() {
                    ahead.next = last.seq + 1;
                }
                ahead.events.extend(
                    rows.into_iter()
                        .filter_map(|r| access.admit_one(&Arc::new(r))),
                );
                if ahead.events.is_empty() {
                    if exhausted {
                        break;
                    }
                    continue;
                }
            }
            // Subjects of what is at hand already pending in the group.
            if spec.ordering == OrderBy::Subject {
                let unknown: Vec<String> = ahead
                    .events
                    .iter()
                    .filter_map(|e| subject_of(&e.body))
                    .filter(|s| !pending_known.contains(s))
                    .collect();
                if !unknown.is_empty() {
                    let s_subjects = client
                        .prepare_cached(
                            "SELECT DISTINCT subject FROM sluice.group_messages
                             WHERE tenant = $1 AND name = $2 AND subject IS NOT NULL
                               AND state <> 'dead' AND subject = ANY($3)",
                        )
                        .await?;
                    let found: Vec<String> = tx
                        .query(&s_subjects, &[&t, &name, &unknown])
                        .await?
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    pending.extend(found);
                    pending_known.extend(unknown);
                }
            }
            while room > 0 {
                let Some(e) = ahead.events.pop_front() else {
                    break;
                };
                let subject = subject_of(&e.body);
                let blocked = spec.ordering == OrderBy::Subject
                    && subject.as_ref().is_some_and(|s| pending.contains(s));
                fresh_seqs.push(e.seq);
                if blocked {
                    // Read, but behind an earlier event of its subject.
                    fresh_subjects.push(subject);
                    fresh_states.push("ready");
                    continue;
                }
                if let (OrderBy::Subject, Some(s)) = (spec.ordering, &subject) {
                    pending.insert(s.clone());
                }
                fresh_subjects.push(subject);
                fresh_states.push("inflight");
                fresh_bodies.insert(e.seq, e.body.clone());
                room -= 1;
            }
        }
        // The cursor: the first event at hand not taken, else past every row read.
        cursor = ahead.events.front().map_or(ahead.next, |e| e.seq);
        ahead.from = cursor;
        // The new messages and the group's cursor in one statement, COMMIT
        // pipelined behind it (the statement is prepared, so it is sent
        // first; as text it would be parsed first, a round trip, and the
        // COMMIT would overtake it: the crash test caught that).
        let new_params: [&(dyn tokio_postgres::types::ToSql + Sync); 9] = [
            &t,
            &name,
            &fresh_seqs,
            &fresh_subjects,
            &fresh_states,
            &ack_wait,
            &cursor,
            &(claimed.len() as i64),
            &redelivered,
        ];
        let s_insert = client
            .prepare_cached(
                "WITH ins AS (
                     INSERT INTO sluice.group_messages (tenant, name, seq, subject, state, attempts, due, token)
                     SELECT $1, $2, s, sub, st,
                            CASE WHEN st = 'inflight' THEN 1 ELSE 0 END,
                            CASE WHEN st = 'inflight' THEN now() + $6 * interval '1 millisecond' ELSE now() END,
                            CASE WHEN st = 'inflight' THEN uuid_send(gen_random_uuid()) END
                     FROM unnest($3::bigint[], $4::text[], $5::text[]) AS u(s, sub, st)
                     ON CONFLICT DO NOTHING
                     RETURNING seq, attempts, token),
                 upd AS (
                     UPDATE sluice.groups
                     SET cursor = $7,
                         delivered = delivered + $8 + (SELECT count(*) FROM ins WHERE token IS NOT NULL),
                         redelivered = redelivered + $9
                     WHERE tenant = $1 AND name = $2)
                 SELECT seq, attempts, encode(token, 'hex') FROM ins WHERE token IS NOT NULL",
            )
            .await?;
        let (rows, _) =
            try_join(tx.query(&s_insert, &new_params), tx.batch_execute("COMMIT")).await?;
        let fresh: Vec<(i64, i32, String)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        if !ahead.events.is_empty() {
            self.ahead
                .lock()
                .expect("read-ahead lock is never poisoned: no code panics holding it")
                .insert(key, ahead);
        }
        // Bodies of the claimed messages (read after the commit: the lock
        // is not held for them).
        let mut bodies = fresh_bodies;
        if !claimed.is_empty() {
            let seqs: Vec<i64> = claimed.iter().map(|c| c.0).collect();
            for e in log::events_by_seq(tx, &seqs).await? {
                if e.tenant != *tenant {
                    continue;
                }
                if let Some(shown) = access.admit_one(&Arc::new(e)) {
                    bodies.insert(shown.seq, shown.body.clone());
                }
            }
        }
        let mut gone: Vec<i64> = Vec::new();
        for (seq, attempt, token) in claimed.into_iter().chain(fresh) {
            match bodies.get(&seq) {
                Some(body) => out.push(Delivery {
                    token: format!("{seq}.{token}"),
                    attempt,
                    seq,
                    event: body.clone(),
                }),
                None => gone.push(seq),
            }
        }
        if !gone.is_empty() {
            // Pruned by retention (or no longer visible to the group's
            // role): nothing left to deliver.
            client
                .execute(
                    "DELETE FROM sluice.group_messages WHERE tenant = $1 AND name = $2 AND seq = ANY($3)",
                    &[&t, &name, &gone],
                )
                .await?;
        }
        out.sort_by_key(|d| d.seq);
        self.metrics
            .delivered
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        self.metrics
            .redelivered
            .fetch_add(redelivered as u64, Ordering::Relaxed);
        Ok(out)
    }

    async fn exists(
        &self,
        client: &impl GenericClient,
        tenant: &TenantId,
        name: &str,
    ) -> Result<(), GroupError> {
        let found = client
            .query_opt(
                "SELECT 1 FROM sluice.groups WHERE tenant = $1 AND name = $2",
                &[&tenant.as_str(), &name],
            )
            .await?;
        found
            .map(|_| ())
            .ok_or_else(|| GroupError::Unknown(name.to_owned()))
    }

    /// Acknowledges deliveries: their messages are done.
    pub async fn ack(
        &self,
        client: &deadpool_postgres::ClientWrapper,
        tenant: &TenantId,
        name: &str,
        tokens: &[String],
    ) -> Result<Settled, GroupError> {
        let parsed = parse_tokens(tokens)?;
        let (seqs, ids) = (&parsed.seqs, &parsed.bytes);
        self.exists(&**client, tenant, name).await?;
        let s_ack = client
            .prepare_cached(
                "DELETE FROM sluice.group_messages
                 WHERE tenant = $1 AND name = $2 AND seq = ANY($3) AND state = 'inflight'
                   AND token = ANY($4::bytea[])
                 RETURNING encode(token, 'hex')",
            )
            .await?;
        let matched: HashSet<String> = client
            .query(&s_ack, &[&tenant.as_str(), &name, &seqs, &ids])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        self.metrics
            .acked
            .fetch_add(matched.len() as u64, Ordering::Relaxed);
        self.wake.notify_waiters();
        Ok(settled(tokens, &matched))
    }

    /// Gives deliveries back: receivable again after `delay_ms`, or dead
    /// letters when they have had max_deliveries attempts.
    pub async fn nack(
        &self,
        client: &deadpool_postgres::ClientWrapper,
        tenant: &TenantId,
        name: &str,
        tokens: &[String],
        delay_ms: i64,
    ) -> Result<Settled, GroupError> {
        let parsed = parse_tokens(tokens)?;
        let (seqs, ids) = (&parsed.seqs, &parsed.bytes);
        self.exists(&**client, tenant, name).await?;
        let rows = client
            .query(
                "WITH hit AS (
                     SELECT seq, token FROM sluice.group_messages
                     WHERE tenant = $1 AND name = $2 AND seq = ANY($3) AND state = 'inflight'
                       AND token = ANY($4::bytea[])
                     FOR UPDATE)
                 UPDATE sluice.group_messages m
                 SET state = CASE WHEN m.attempts >= g.max_deliveries THEN 'dead' ELSE 'ready' END,
                     dead_at = CASE WHEN m.attempts >= g.max_deliveries THEN now() END,
                     due = now() + $5 * interval '1 millisecond', token = NULL
                 FROM hit, sluice.groups g
                 WHERE g.tenant = m.tenant AND g.name = m.name
                   AND m.tenant = $1 AND m.name = $2 AND m.seq = hit.seq
                 RETURNING encode(hit.token, 'hex'), m.state",
                &[&tenant.as_str(), &name, &seqs, &ids, &(delay_ms as f64)],
            )
            .await?;
        let matched: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
        let dead = rows
            .iter()
            .filter(|r| r.get::<_, &str>(1) == "dead")
            .count();
        self.metrics
            .nacked
            .fetch_add(matched.len() as u64, Ordering::Relaxed);
        self.metrics.dead.fetch_add(dead as u64, Ordering::Relaxed);
        self.wake.notify_waiters();
        let mut out = settled(tokens, &matched);
        out.dead = dead;
        Ok(out)
    }

    /// Pushes the deadline of deliveries still being worked on to now +
    /// `ms` (the group's ack_wait_ms when `None`).
    pub async fn extend(
        &self,
        client: &deadpool_postgres::ClientWrapper,
        tenant: &TenantId,
        name: &str,
        tokens: &[String],
        ms: Option<i64>,
    ) -> Result<Settled, GroupError> {
        let parsed = parse_tokens(tokens)?;
        let (seqs, ids) = (&parsed.seqs, &parsed.bytes);
        self.exists(&**client, tenant, name).await?;
        let matched: HashSet<String> = client
            .query(
                "UPDATE sluice.group_messages m
                 SET due = now() + coalesce($5, g.ack_wait_ms::float8) * interval '1 millisecond'
                 FROM sluice.groups g
                 WHERE g.tenant = m.tenant AND g.name = m.name
                   AND m.tenant = $1 AND m.name = $2 AND m.seq = ANY($3) AND m.state = 'inflight'
                   AND m.token = ANY($4::bytea[])
                 RETURNING encode(m.token, 'hex')",
                &[&tenant.as_str(), &name, &seqs, &ids, &ms.map(|m| m as f64)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(settled(tokens, &matched))
    }

    /// Moves the group to `target`: messages not yet acknowledged are
    /// forgotten (their tokens match nothing any more), dead letters stay.
    /// Returns the new cursor.
    pub async fn seek(
        &self,
        client: &mut tokio_postgres::Client,
        tenant: &TenantId,
        name: &str,
        target: &Seek,
    ) -> Result<i64, GroupError> {
        let t = tenant.as_str();
        let tx = client.transaction().await?;
        tx.query_opt(
            "SELECT 1 FROM sluice.groups WHERE tenant = $1 AND name = $2 FOR UPDATE",
            &[&t, &name],
        )
        .await?
        .ok_or_else(|| GroupError::Unknown(name.to_owned()))?;
        let pruned = log::pruned_through(&tx).await?;
        let cursor = match target {
            Seek::Seq(n) => *n,
            Seek::Time(at) => {
                let first = log::query_events(
                    &tx,
                    &ReadScope::Tenant(tenant.clone()),
                    &LogQuery {
                        from: pruned + 1,
                        limit: 1,
                        since: Some(*at),
                        ..LogQuery::default()
                    },
                )
                .await?;
                match first.first() {
                    Some(e) => e.seq,
                    None => log::head(&tx).await? + 1,
                }
            }
        };
        if let Some(g) = log::gap(cursor, pruned) {
            return Err(GroupError::Gap {
                requested: g.requested,
                oldest: g.oldest,
            });
        }
        tx.execute(
            "DELETE FROM sluice.group_messages WHERE tenant = $1 AND name = $2 AND state <> 'dead'",
            &[&t, &name],
        )
        .await?;
        tx.execute(
            "UPDATE sluice.groups SET cursor = $3, generation = generation + 1, updated_at = now()
             WHERE tenant = $1 AND name = $2",
            &[&t, &name, &cursor.max(1)],
        )
        .await?;
        tx.commit().await?;
        self.wake.notify_waiters();
        Ok(cursor.max(1))
    }

    /// The dead letters, oldest first: (seq, attempts, when it died, the
    /// event as the group sees it, if the log still holds it).
    pub async fn dead(
        &self,
        client: &impl GenericClient,
        tenant: &TenantId,
        name: &str,
        from: i64,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, GroupError> {
        let group = self.get(client, tenant, name).await?;
        let access = self.access(&group);
        let rows = client
            .query(
                "SELECT seq, attempts, dead_at FROM sluice.group_messages
                 WHERE tenant = $1 AND name = $2 AND state = 'dead' AND seq >= $3
                 ORDER BY seq LIMIT $4",
                &[&tenant.as_str(), &name, &from, &limit],
            )
            .await?;
        let seqs: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let mut bodies: HashMap<i64, Bytes> = HashMap::new();
        if let Some(access) = &access {
            for e in log::events_by_seq(client, &seqs).await? {
                if e.tenant == *tenant {
                    if let Some(shown) = access.admit_one(&Arc::new(e)) {
                        bodies.insert(shown.seq, shown.body.clone());
                    }
                }
            }
        }
        Ok(rows
            .iter()
            .map(|r| {
                let seq: i64 = r.get(0);
                DeadLetter {
                    seq,
                    attempts: r.get(1),
                    dead_at: r.get(2),
                    event: bodies.remove(&seq),
                }
            })
            .collect())
    }

    /// Makes dead letters receivable again (all of them, or those `seqs`),
    /// with their attempts reset; returns how many.
    pub async fn requeue(
        &self,
        client: &impl GenericClient,
        tenant: &TenantId,
        name: &str,
        seqs: Option<&[i64]>,
    ) -> Result<u64, GroupError> {
        self.exists(client, tenant, name).await?;
        let n = client
            .execute(
                "UPDATE sluice.group_messages SET state = 'ready', attempts = 0, due = now(), dead_at = NULL
                 WHERE tenant = $1 AND name = $2 AND state = 'dead' AND ($3::bigint[] IS NULL OR seq = ANY($3))",
                &[&tenant.as_str(), &name, &seqs.map(<[i64]>::to_vec)],
            )
            .await?;
        self.wake.notify_waiters();
        Ok(n)
    }

    /// The group's figures.
    pub async fn stats(
        &self,
        client: &impl GenericClient,
        tenant: &TenantId,
        name: &str,
    ) -> Result<serde_json::Value, GroupError> {
        let group = self.get(client, tenant, name).await?;
        let t = tenant.as_str();
        let counts = client
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'inflight'),
                        count(*) FILTER (WHERE state = 'ready'),
                        count(*) FILTER (WHERE state = 'dead'),
                        min(seq) FILTER (WHERE state <> 'dead'),
                        coalesce(sum(greatest(attempts - 1, 0)) FILTER (WHERE state <> 'dead'), 0)::bigint
                 FROM sluice.group_messages WHERE tenant = $1 AND name = $2",
                &[&t, &name],
            )
            .await?;
        let (in_flight, ready, dead): (i64, i64, i64) =
            (counts.get(0), counts.get(1), counts.get(2));
        let oldest: Option<i64> = counts.get(3);
        // Events past the cursor the group will receive, counted up to a
        // bound (a group far behind says "at least").
        let mut unread = 0i64;
        let mut capped = false;
        if let Some(access) = self.access(&group) {
            let mut from = group.cursor;
            let scope = ReadScope::Tenant(tenant.clone());
            let mut scanned = 0;
            loop {
                let rows = log::query_events(
                    client,
                    &scope,
                    &LogQuery {
                        from,
                        limit: 1000,
                        ..LogQuery::default()
                    },
                )
                .await?;
                scanned += rows.len();
                let Some(last) = rows.last().map(|r| r.seq) else {
                    break;
                };
                let n = rows.len();
                unread += rows
                    .into_iter()
                    .filter(|r| access.admit_one(&Arc::new(r.clone())).is_some())
                    .count() as i64;
                from = last + 1;
                if n < 1000 {
                    break;
                }
                if scanned >= 100_000 {
                    capped = true;
                    break;
                }
            }
        }
        let oldest_age_ms = match oldest {
            Some(seq) => log::events_by_seq(client, &[seq])
                .await?
                .first()
                .map(|e| (chrono::Utc::now().timestamp_micros() - e.commit_micros).max(0) / 1000),
            None => None,
        };
        Ok(serde_json::json!({
            "name": group.spec.name,
            "position": oldest.unwrap_or(group.cursor).min(group.cursor),
            "cursor": group.cursor,
            "backlog": unread + ready + in_flight,
            "backlog_at_least": capped,
            "unread": unread,
            "ready": ready,
            "in_flight": in_flight,
            "dead_letters": dead,
            "oldest_unacked_age_ms": oldest_age_ms,
            "delivered": group.delivered,
            "redelivered": group.redelivered,
            "pending_redeliveries": counts.get::<_, i64>(4),
        }))
    }
}
