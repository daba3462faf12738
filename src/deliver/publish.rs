//! Publishing custom events from a client (WebSocket `publish`, `POST
//! /v1/events`): they go through Postgres as `sluice` logical messages
//! (`pg_logical_emit_message`, transactional), all of one request in one
//! source transaction, so they are durable, ordered with the row changes
//! around them and appended together, and come back through the pipeline
//! like any other custom event. The caller gets their seqs once they are in
//! the log.
//!
//! Idempotency: a request with a key claims `(tenant, key)` in
//! `sluice.publish_requests` with a lease, records its source transaction's
//! txid *before* that transaction commits, and stores its answer once the
//! events are in the log. A retry finds the answer; or, when the first
//! attempt died, its txid, and asks the source whether that transaction
//! committed (`txid_status`): committed, the events are in (or on their way
//! to) the log and the retry answers with their seqs; aborted or never
//! emitted, the retry publishes. So a retried request appends its events
//! exactly once (sql/012_publish.sql).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;

use crate::auth::{Identity, Role};
use crate::deliver::ws_protocol::{echo, MAX_SUBJECT_BYTES};
use crate::event::{Extensions, TenantId};
use crate::log::Durable;
use crate::policy::Policies;
use crate::source::postgres::messages::CUSTOM_PREFIX;
use crate::source::postgres::normalize::{valid_custom_name, MAX_CUSTOM_NAME};

/// How long a publish waits for its events to reach the log.
const PUBLISH_WAIT: Duration = Duration::from_secs(10);
/// How long a claimed idempotency key is held by the request that claimed
/// it: longer than a publish can take, so a live request is never taken
/// over.
const CLAIM_LEASE_SECS: f64 = 20.0;

/// What publishing needs: both databases and the log's durable head.
#[derive(Clone)]
pub struct Publisher {
    /// Connections to the source database, where the messages are emitted.
    pub source: deadpool_postgres::Pool,
    /// The state database, where the events are looked for.
    pub log: deadpool_postgres::Pool,
    pub durable: watch::Receiver<Arc<Durable>>,
    /// Told by this process's appender when events are in the log.
    pub waiters: Arc<super::waiters::Waiters>,
}

/// One event to publish, checked.
#[derive(Debug, Clone)]
pub struct Publication {
    /// The custom event name (`order.shipped`: type `custom.order.shipped`,
    /// topic `custom/order.shipped`).
    pub name: String,
    pub data: Value,
    pub subject: Option<String>,
    pub ext: Option<Extensions>,
}

impl Publication {
    /// The logical message's content (docs/events.md, "Custom events").
    fn content(&self, tenant: &TenantId) -> String {
        let mut c = json!({"tenant": tenant.as_str(), "type": self.name, "data": self.data});
        if let Some(s) = &self.subject {
            c["subject"] = json!(s);
        }
        if let Some(Ok(Value::Object(ext))) = self
            .ext
            .as_ref()
            .map(|e| serde_json::from_str::<Value>(e.as_str()))
        {
            for (k, v) in ext {
                c[k] = v;
            }
        }
        c.to_string()
    }

    pub fn topic(&self) -> String {
        format!("custom/{}", self.name)
    }
}

/// An idempotency key with the hash of the request it came with.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    /// SHA-256 of the request body.
    pub request_hash: Vec<u8>,
}

/// Turns a publish's seqs into the answer stored for its replays.
pub type Answer = dyn Fn(&[i64]) -> Value + Sync;

/// What a publish came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Published {
    /// Every event is in the log, at these seqs (in request order).
    Appended(Vec<i64>),
    /// The events are committed in Postgres but not yet in the log (the
    /// pipeline is behind): they will be delivered.
    Committed,
    /// The first answer to this idempotency key, replayed.
    Replayed(Value),
}

/// Why a publish did not happen (or cannot be told yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("{0} is unavailable; retry shortly")]
    Unavailable(&'static str),
    #[error("a request with this Idempotency-Key is still in progress; retry shortly")]
    InProgress,
    #[error("this Idempotency-Key was used with a different request body")]
    KeyReused,
}

/// What a custom event name must be, as errors say it.
pub const NAME_WANTED: &str =
    "an event name of 1 to 128 characters of A-Z a-z 0-9 _ . -, e.g. \"order.shipped\"";

/// Checks a custom event name ([`valid_custom_name`]); the error says
/// what was expected and what was found.
pub fn check_name(name: &str) -> Result<(), String> {
    if valid_custom_name(name) {
        return Ok(());
    }
    let found = if name.is_empty() {
        "an empty string".to_owned()
    } else if name.len() > MAX_CUSTOM_NAME {
        format!("{} bytes", name.len())
    } else {
        echo(name)
    };
    Err(format!("expected {NAME_WANTED}, found {found}"))
}

/// Checks a custom event's `subject`: a string of 1 to
/// [`MAX_SUBJECT_BYTES`] printable characters.
pub fn check_subject(v: &Value) -> Result<String, String> {
    let s = match v {
        Value::String(s) => s,
        other => {
            return Err(format!(
                "expected a string of 1 to {MAX_SUBJECT_BYTES} bytes, found {}",
                crate::event::json::kind_of(other)
            ))
        }
    };
    if s.is_empty() || s.len() > MAX_SUBJECT_BYTES {
        let found = if s.is_empty() {
            "an empty string".to_owned()
        } else {
            format!("{} bytes", s.len())
        };
        return Err(format!(
            "expected a string of 1 to {MAX_SUBJECT_BYTES} bytes, found {found}"
        ));
    }
    if let Some((at, _)) = s.char_indices().find(|(_, c)| c.is_control()) {
        return Err(format!(
            "contains a control character at byte {at}; only printable characters are allowed"
        ));
    }
    Ok(s.clone())
}

/// Whether `identity` may publish on `topic` (`custom/<name>`): service
/// anywhere no policy says otherwise; anon and custom roles only where a
/// topics policy allows publishing. The refusal says why.
pub fn may_publish(policies: &Policies, identity: &Identity, topic: &str) -> Result<(), String> {
    let viewer = policies.viewer(identity);
    if viewer.is_open() {
        return if identity.role >= Role::Service {
            Ok(())
        } else {
            Err("publishing needs a service key (this credential is anon)".to_owned())
        };
    }
    if viewer.may_publish(topic) {
        Ok(())
    } else {
        Err(format!(
            "role {:?} may not publish on {topic}: no access policy with publish = true covers it",
            identity.policy_role
        ))
    }
}

/// Publishes one event for `tenant` (from the credential, never from the
/// client) and waits for its seq.
pub async fn publish(
    publisher: &Publisher,
    tenant: &TenantId,
    name: &str,
    data: serde_json::Map<String, Value>,
    subject: Option<String>,
) -> Result<i64, String> {
    let one = Publication {
        name: name.to_owned(),
        data: Value::Object(data),
        subject,
        ext: None,
    };
    match publish_all(publisher, tenant, &[one], None).await {
        Ok(Published::Appended(seqs)) => seqs.first().copied().ok_or_else(|| {
            "the event was committed but not found in the log; it will still be delivered"
                .to_owned()
        }),
        Ok(_) => Err(format!(
            "the event was committed to Postgres but did not reach the log within {}s; it will still be delivered",
            PUBLISH_WAIT.as_secs()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Publishes `events` for `tenant` in one source transaction, in order;
/// with `idempotency`, at most once per key (see the module doc).
/// `answer` turns the seqs into the response stored for replays.
pub async fn publish_all(
    publisher: &Publisher,
    tenant: &TenantId,
    events: &[Publication],
    idempotency: Option<(&Idempotency, &Answer)>,
) -> Result<Published, PublishError> {
    let Some((idem, answer)) = idempotency else {
        let head_before = publisher.durable.borrow().last_seq;
        let xid = emit(publisher, tenant, events, None).await?;
        return wait_for_log(publisher, tenant, head_before, xid, events.len()).await;
    };
    let claim = match claim(publisher, tenant, idem, events.len()).await? {
        Claim::Answered(v) => return Ok(Published::Replayed(v)),
        Claim::Resolve { txid, head_before } => {
            // The first attempt committed: answer with its events.
            let got = wait_for_log(publisher, tenant, head_before, txid, events.len()).await?;
            if let Published::Appended(seqs) = &got {
                store_answer(publisher, tenant, idem, None, &answer(seqs)).await?;
            }
            return Ok(got);
        }
        Claim::Mine(attempt) => attempt,
    };
    let head_before = publisher.durable.borrow().last_seq;
    let xid = emit(publisher, tenant, events, Some((idem, claim, head_before))).await?;
    let got = wait_for_log(publisher, tenant, head_before, xid, events.len()).await?;
    if let Published::Appended(seqs) = &got {
        store_answer(publisher, tenant, idem, Some(claim), &answer(seqs)).await?;
    }
    Ok(got)
}

/// Where a request with an idempotency key stands.
enum Claim {
    /// This request holds the key under this attempt number: publish.
    Mine(i32),
    /// An earlier attempt's answer.
    Answered(Value),
    /// An earlier attempt committed source transaction `txid` (64-bit)
    /// and died before answering: its events follow `head_before`.
    Resolve { txid: i64, head_before: i64 },
}

async fn claim(
    publisher: &Publisher,
    tenant: &TenantId,
    idem: &Idempotency,
    events: usize,
) -> Result<Claim, PublishError> {
    let state = publisher
        .log
        .get()
        .await
        .map_err(|e| unavailable("the state database", &e))?;
    let db = |e: tokio_postgres::Error| unavailable("the state database", &e);
    let n = i32::try_from(events).unwrap_or(i32::MAX);
    let inserted = state
        .query_opt(
            "INSERT INTO sluice.publish_requests (tenant, key, request_hash, claimed_until, events)
             VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5)
             ON CONFLICT (tenant, key) DO NOTHING RETURNING attempt",
            &[
                &tenant.as_str(),
                &idem.key,
                &idem.request_hash,
                &CLAIM_LEASE_SECS,
                &n,
            ],
        )
        .await
        .map_err(db)?;
    if let Some(r) = inserted {
        return Ok(Claim::Mine(r.get(0)));
    }
    let row = state
        .query_opt(
            "SELECT request_hash, attempt, claimed_until > now(), txid, head_before, response
             FROM sluice.publish_requests WHERE tenant = $1 AND key = $2",
            &[&tenant.as_str(), &idem.key],
        )
        .await
        .map_err(db)?;
    // Deleted by retention between the two statements: a key that old is
    // forgotten; this request publishes as a new one would (after a claim).
    let Some(row) = row else {
        return Err(PublishError::InProgress);
    };
    let hash: Vec<u8> = row.get(0);
    if hash != idem.request_hash {
        return Err(PublishError::KeyReused);
    }
    if let Some(answer) = row.get::<_, Option<Value>>(5) {
        return Ok(Claim::Answered(answer));
    }
    let attempt: i32 = row.get(1);
    let leased: bool = row.get(2);
    if leased {
        return Err(PublishError::InProgress);
    }
    let txid: Option<i64> = row.get(3);
    let head_before: Option<i64> = row.get(4);
    if let (Some(txid), Some(head_before)) = (txid, head_before) {
        let source = publisher
            .source
            .get()
            .await
            .map_err(|e| unavailable("the source database", &e))?;
        let status: Option<String> = source
            .query_one("SELECT txid_status($1)", &[&txid])
            .await
            .map_err(|e| unavailable("the source database", &e))?
            .get(0);
        match status.as_deref() {
            Some("committed") => return Ok(Claim::Resolve { txid, head_before }),
            Some("in progress") => return Err(PublishError::InProgress),
            // Aborted, or too old for the server to know (it cannot have
            // committed unseen: its events would be in the log and the
            // answer stored long before).
            _ => {}
        }
    }
    // The earlier attempt emitted nothing that committed: take the key over.
    let taken = state
        .query_opt(
            "UPDATE sluice.publish_requests
             SET attempt = attempt + 1, claimed_until = now() + make_interval(secs => $4),
                 txid = NULL, head_before = NULL
             WHERE tenant = $1 AND key = $2 AND attempt = $3 AND claimed_until <= now()
             RETURNING attempt",
            &[&tenant.as_str(), &idem.key, &attempt, &CLAIM_LEASE_SECS],
        )
        .await
        .map_err(db)?;
    match taken {
        Some(r) => Ok(Claim::Mine(r.get(0))),
        None => Err(PublishError::InProgress),
    }
}

/// Emits every event in one source transaction; returns its 32-bit xid as
/// the log stores it. With a claim, the transaction's txid is recorded
/// under that claim before COMMIT (and nothing is emitted if the claim was
/// lost).
async fn emit(
    publisher: &Publisher,
    tenant: &TenantId,
    events: &[Publication],
    claim: Option<(&Idempotency, i32, i64)>,
) -> Result<i64, PublishError> {
    let contents: Vec<String> = events.iter().map(|e| e.content(tenant)).collect();
    let src = |e: tokio_postgres::Error| unavailable("the source database", &e);
    let mut source = publisher
        .source
        .get()
        .await
        .map_err(|e| unavailable("the source database", &e))?;
    let Some((idem, attempt, head_before)) = claim else {
        // One statement is one transaction: one round trip.
        let stmt = source
            .prepare_cached(EMIT_ONE_STATEMENT)
            .await
            .map_err(src)?;
        let txid: i64 = source
            .query_one(&stmt, &[&CUSTOM_PREFIX, &contents])
            .await
            .map_err(src)?
            .get(0);
        // pgoutput carries the 32-bit xid; the log stores that.
        return Ok(txid & 0xFFFF_FFFF);
    };
    let tx = source.transaction().await.map_err(src)?;
    let txid: i64 = tx
        .query_one("SELECT txid_current()", &[])
        .await
        .map_err(src)?
        .get(0);
    let state = publisher
        .log
        .get()
        .await
        .map_err(|e| unavailable("the state database", &e))?;
    let held = state
        .execute(
            "UPDATE sluice.publish_requests SET txid = $4, head_before = $5
             WHERE tenant = $1 AND key = $2 AND attempt = $3 AND claimed_until > now()",
            &[&tenant.as_str(), &idem.key, &attempt, &txid, &head_before],
        )
        .await
        .map_err(|e| unavailable("the state database", &e))?;
    drop(state);
    if held != 1 {
        // Dropping `tx` rolls it back: nothing was emitted.
        return Err(PublishError::InProgress);
    }
    tx.execute(EMIT, &[&CUSTOM_PREFIX, &contents])
        .await
        .map_err(src)?;
    tx.commit().await.map_err(src)?;
    Ok(txid & 0xFFFF_FFFF)
}

/// Emits the messages `$2` with prefix `$1`, in array order.
const EMIT: &str = "SELECT pg_logical_emit_message(true, $1::text, c)
     FROM unnest($2::text[]) WITH ORDINALITY AS u(c, n) ORDER BY n";

/// [`EMIT`] and the transaction's txid, in one statement (so one
/// transaction).
const EMIT_ONE_STATEMENT: &str = "SELECT txid_current(), (SELECT count(*) FROM (
         SELECT pg_logical_emit_message(true, $1::text, c)
         FROM unnest($2::text[]) WITH ORDINALITY AS u(c, n) ORDER BY n) m)";

/// Waits until the `n` events of transaction `xid` are in the log: told
/// by this process's appender ([`super::waiters`]), reading the log only
/// when that cannot tell (a standby, or a record that no longer reaches
/// back far enough).
async fn wait_for_log(
    publisher: &Publisher,
    tenant: &TenantId,
    head_before: i64,
    xid: i64,
    n: usize,
) -> Result<Published, PublishError> {
    let xid = xid & 0xFFFF_FFFF;
    let mut durable = publisher.durable.clone();
    durable.borrow_and_update();
    let reg = publisher.waiters.register(tenant, xid, head_before);
    let deadline = tokio::time::Instant::now() + PUBLISH_WAIT;
    let mut seen = std::collections::BTreeSet::new();
    let mut durable_open = true;
    let told = publisher.waiters.attached();
    if !reg.complete || !told {
        seen.extend(read_log(publisher, tenant, head_before, xid).await?);
    }
    loop {
        seen.extend(reg.waiter.seqs());
        if seen.len() >= n {
            return Ok(Published::Appended(seen.into_iter().collect()));
        }
        let told = publisher.waiters.attached();
        tokio::select! {
            _ = reg.waiter.notify.notified() => {}
            changed = durable.changed(), if !told && durable_open => {
                match changed {
                    Ok(()) => seen.extend(read_log(publisher, tenant, head_before, xid).await?),
                    Err(_) => durable_open = false,
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                seen.extend(read_log(publisher, tenant, head_before, xid).await?);
                seen.extend(reg.waiter.seqs());
                return Ok(if seen.len() >= n {
                    Published::Appended(seen.into_iter().collect())
                } else {
                    Published::Committed
                });
            }
        }
    }
}

async fn read_log(
    publisher: &Publisher,
    tenant: &TenantId,
    head_before: i64,
    xid: i64,
) -> Result<Vec<i64>, PublishError> {
    let client = publisher
        .log
        .get()
        .await
        .map_err(|e| unavailable("the log", &e))?;
    crate::log::custom_seqs_of_txid(&client, tenant, head_before, xid)
        .await
        .map_err(|e| unavailable("the log", &e))
}

async fn store_answer(
    publisher: &Publisher,
    tenant: &TenantId,
    idem: &Idempotency,
    attempt: Option<i32>,
    answer: &Value,
) -> Result<(), PublishError> {
    let state = publisher
        .log
        .get()
        .await
        .map_err(|e| unavailable("the state database", &e))?;
    state
        .execute(
            "UPDATE sluice.publish_requests SET response = $4
             WHERE tenant = $1 AND key = $2 AND response IS NULL
               AND ($3::int IS NULL OR attempt = $3)",
            &[&tenant.as_str(), &idem.key, &attempt, answer],
        )
        .await
        .map_err(|e| unavailable("the state database", &e))?;
    Ok(())
}

fn unavailable(what: &'static str, e: &(dyn std::error::Error + 'static)) -> PublishError {
    tracing::warn!(error = %crate::pgconn::error_chain(e), what, "publish failed");
    PublishError::Unavailable(what)
}
