//! `POST /v1/events` and `POST /v1/events/publish` against a real Postgres
//! and a real server: events appended through Postgres in request order and
//! in commit order with row changes, the tenant always the credential's,
//! `correlation_id` and `attributes` in the envelope, `Idempotency-Key`
//! replays (including the recovery of a request whose answer was lost,
//! resolved from the source transaction's status), and precise errors for
//! bad requests.

mod common;

use common::{key, serve_items, stop_server, TestDb};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sluice::auth::Role;

const ITEMS: &str =
    "CREATE TABLE items (id int PRIMARY KEY, tenant text NOT NULL, n int); ALTER TABLE items REPLICA IDENTITY FULL;";

struct Api {
    base: String,
    http: reqwest::Client,
}

struct Answer {
    status: u16,
    replayed: bool,
    body: Value,
}

impl Api {
    async fn post(&self, path: &str, key: &str, idem: Option<&str>, body: Vec<u8>) -> Answer {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = idem {
            req = req.header("idempotency-key", k);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let replayed = resp.headers().get("idempotent-replayed").is_some();
        let text = resp.text().await.expect("body");
        Answer {
            status,
            replayed,
            body: serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text })),
        }
    }

    async fn publish(&self, key: &str, body: &Value) -> Answer {
        self.post("/v1/events", key, None, body.to_string().into_bytes())
            .await
    }

    /// The tenant's whole log, as its service key reads it.
    async fn log(&self, key: &str) -> Vec<Value> {
        let resp = self
            .http
            .get(format!("{}/v1/events?from=1&limit=1000", self.base))
            .header("authorization", format!("Bearer {key}"))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status().as_u16(), 200);
        let v: Value = serde_json::from_str(&resp.text().await.expect("body")).expect("json");
        v["events"].as_array().cloned().unwrap_or_default()
    }
}

fn seqs(v: &Value) -> Vec<i64> {
    v["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect()
}

async fn setup(
    prefix: &str,
) -> (
    TestDb,
    sluice::server::Server,
    tokio_util::sync::CancellationToken,
    Api,
) {
    let db = TestDb::new(prefix);
    db.client()
        .await
        .batch_execute(ITEMS)
        .await
        .expect("schema");
    let (server, token) = serve_items(&db, &[]).await;
    let api = Api {
        base: format!("http://{}", server.addr),
        http: reqwest::Client::new(),
    };
    (db, server, token, api)
}

#[tokio::test]
async fn published_events_are_in_the_log_in_order_with_their_members() {
    let (db, server, token, api) = setup("pub_order").await;
    let acme = key(&db, "acme", Role::Service).await;
    let globex = key(&db, "globex", Role::Service).await;
    let c = db.client().await;
    c.execute("INSERT INTO items VALUES (1, 'acme', 1)", &[])
        .await
        .expect("insert");

    let one = api
        .publish(
            &acme,
            &json!({"type": "order.shipped", "data": {"order": 1, "note": "a \"quoted\" line\n"},
                    "subject": "o-1", "correlation_id": "req-77", "attributes": {"region": "eu", "channel": "api"}}),
        )
        .await;
    assert_eq!(one.status, 201, "{}", one.body);
    assert!(!one.replayed);
    let first = one.body["seq"].as_i64().expect("seq");
    assert_eq!(one.body["id"], first.to_string());
    assert_eq!(one.body["type"], "custom.order.shipped");
    assert_eq!(one.body["topic"], "custom/order.shipped");

    let list = api
        .publish(
            &acme,
            &json!({"events": [
                {"type": "a", "data": {"i": 0}},
                {"type": "b", "data": {"i": 1}, "subject": "s"},
                {"type": "a", "data": {"i": 2}, "correlation_id": "c2"},
            ]}),
        )
        .await;
    assert_eq!(list.status, 201, "{}", list.body);
    let batch = seqs(&list.body);
    assert_eq!(batch.len(), 3);
    assert!(batch[0] > first);
    assert_eq!(
        batch,
        (batch[0]..batch[0] + 3).collect::<Vec<_>>(),
        "one transaction, consecutive seqs"
    );

    c.execute("INSERT INTO items VALUES (2, 'acme', 2)", &[])
        .await
        .expect("insert");
    let alias = api
        .post(
            "/v1/events/publish",
            &acme,
            None,
            json!({"topic": "custom/chat.message", "data": {"text": "hi"}})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(alias.status, 201, "{}", alias.body);
    let bare = api
        .post(
            "/v1/events/publish",
            &globex,
            None,
            json!({"topic": "chat.message", "data": {"text": "other tenant"}})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(bare.status, 201, "{}", bare.body);

    // The log: row, published, list, row, alias; every one acme's.
    let log = common::poll_until(
        common::PATIENCE,
        std::time::Duration::from_millis(50),
        || {
            let api = &api;
            let acme = &acme;
            async move {
                let log = api.log(acme).await;
                if log.len() == 7 {
                    Ok(log)
                } else {
                    Err(format!("{} events in acme's log", log.len()))
                }
            }
        },
    )
    .await;
    let types: Vec<&str> = log
        .iter()
        .map(|e| e["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        types,
        [
            "row.inserted",
            "custom.order.shipped",
            "custom.a",
            "custom.b",
            "custom.a",
            "row.inserted",
            "custom.chat.message"
        ]
    );
    assert!(log.iter().all(|e| e["tenant"] == "acme"));
    let shipped = &log[1];
    assert_eq!(shipped["seq"], first);
    assert_eq!(shipped["subject"], "o-1");
    assert_eq!(
        shipped["data"],
        json!({"order": 1, "note": "a \"quoted\" line\n"})
    );
    assert_eq!(shipped["correlation_id"], "req-77");
    assert_eq!(
        shipped["attributes"],
        json!({"region": "eu", "channel": "api"})
    );
    // Members in the documented order: the extensions just before data.
    let keys: Vec<&String> = shipped.as_object().expect("object").keys().collect();
    assert_eq!(
        keys,
        [
            "specversion",
            "id",
            "seq",
            "source",
            "type",
            "subject",
            "time",
            "tenant",
            "topic",
            "txid",
            "lsn",
            "correlation_id",
            "attributes",
            "data"
        ]
    );
    assert_eq!(log[4]["correlation_id"], "c2");
    assert!(log[2].get("correlation_id").is_none() && log[2].get("attributes").is_none());
    assert_eq!(
        log[2..5]
            .iter()
            .map(|e| e["seq"].as_i64().expect("seq"))
            .collect::<Vec<_>>(),
        batch
    );
    assert_eq!(log[2]["txid"], log[4]["txid"], "a list is one transaction");
    // The other tenant's event is its own.
    let other = api.log(&globex).await;
    assert_eq!(other.len(), 1);
    assert_eq!(other[0]["data"]["text"], "other tenant");
    assert_eq!(other[0]["tenant"], "globex");

    stop_server(server, token).await;
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_and_appends_nothing() {
    let (db, server, token, api) = setup("pub_idem").await;
    let acme = key(&db, "acme", Role::Service).await;
    let globex = key(&db, "globex", Role::Service).await;
    let body =
        json!({"events": [{"type": "paid", "data": {"n": 1}}, {"type": "paid", "data": {"n": 2}}]})
            .to_string()
            .into_bytes();
    let first = api
        .post("/v1/events", &acme, Some("k-1"), body.clone())
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert!(!first.replayed);
    for _ in 0..3 {
        let again = api
            .post("/v1/events", &acme, Some("k-1"), body.clone())
            .await;
        assert_eq!(again.status, 201, "{}", again.body);
        assert!(again.replayed, "the replay says so");
        assert_eq!(again.body, first.body);
    }
    // The same key with another body is refused, precisely.
    let other = json!({"type": "paid", "data": {"n": 3}})
        .to_string()
        .into_bytes();
    let reused = api
        .post("/v1/events", &acme, Some("k-1"), other.clone())
        .await;
    assert_eq!(reused.status, 422, "{}", reused.body);
    assert_eq!(reused.body["error"]["code"], "idempotency_key_reused");
    assert_eq!(reused.body["error"]["param"], "Idempotency-Key");
    // Keys are per tenant.
    let theirs = api.post("/v1/events", &globex, Some("k-1"), other).await;
    assert_eq!(theirs.status, 201, "{}", theirs.body);
    assert!(!theirs.replayed);
    // A malformed key.
    for bad in ["has space", &"k".repeat(256)] {
        let r = api.post("/v1/events", &acme, Some(bad), body.clone()).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.body["error"]["param"], "Idempotency-Key");
    }
    let log = api.log(&acme).await;
    assert_eq!(log.len(), 2, "one append for four requests: {log:?}");
    assert_eq!(
        log.iter()
            .map(|e| e["seq"].as_i64().expect("seq"))
            .collect::<Vec<_>>(),
        seqs(&first.body)
    );
    stop_server(server, token).await;
}

/// A request whose first attempt died after its source transaction
/// committed (or before it did) is resolved on retry from what the source
/// says of that transaction: the committed one is answered with its events'
/// seqs and nothing is appended; the aborted one is published afresh; one
/// whose claim is still held is answered 409.
#[tokio::test]
async fn a_retry_after_a_lost_answer_is_resolved_from_the_source_transaction() {
    let (db, server, token, api) = setup("pub_recover").await;
    let acme = key(&db, "acme", Role::Service).await;
    let c = db.client().await;
    let head: i64 = c
        .query_one("SELECT coalesce(max(seq), 0) FROM sluice.events", &[])
        .await
        .expect("head")
        .get(0);

    // Attempt 1 of request A committed its transaction, then "crashed";
    // attempt 1 of request B emitted, then its transaction rolled back.
    let body_a = json!({"type": "shipped", "data": {"o": 1}})
        .to_string()
        .into_bytes();
    let body_b = json!({"type": "lost", "data": {"o": 2}})
        .to_string()
        .into_bytes();
    let mut src = db.client().await;
    let txid_a = emit_in_transaction(&mut src, "shipped", true).await;
    let txid_b = emit_in_transaction(&mut src, "lost", false).await;
    // Their claims, as the dead attempts left them (leases run out), and a
    // third still held.
    for (k, body, txid, lease) in [
        ("A", &body_a, Some(txid_a), "-1 second"),
        ("B", &body_b, Some(txid_b), "-1 second"),
        ("C", &body_b, None, "1 hour"),
    ] {
        let hash = Sha256::digest(body).to_vec();
        c.execute(
            "INSERT INTO sluice.publish_requests (tenant, key, request_hash, claimed_until, txid, head_before, events)
             VALUES ('acme', $1, $2, now() + $3::text::interval, $4, $5, 1)",
            &[&k, &hash, &lease, &txid, &head],
        )
        .await
        .expect("claim");
    }

    let a = api
        .post("/v1/events", &acme, Some("A"), body_a.clone())
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let b = api
        .post("/v1/events", &acme, Some("B"), body_b.clone())
        .await;
    assert_eq!(b.status, 201, "{}", b.body);
    let held = api
        .post("/v1/events", &acme, Some("C"), body_b.clone())
        .await;
    assert_eq!(held.status, 409, "{}", held.body);
    assert_eq!(held.body["error"]["code"], "idempotency_in_progress");

    let log = api.log(&acme).await;
    let types: Vec<&str> = log
        .iter()
        .map(|e| e["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        types,
        ["custom.shipped", "custom.lost"],
        "A once (its first attempt's), B once (the retry's)"
    );
    assert_eq!(a.body["seq"], log[0]["seq"]);
    assert_eq!(b.body["seq"], log[1]["seq"]);
    // Both answers are stored now.
    assert!(
        api.post("/v1/events", &acme, Some("A"), body_a)
            .await
            .replayed
    );
    assert!(
        api.post("/v1/events", &acme, Some("B"), body_b)
            .await
            .replayed
    );
    stop_server(server, token).await;
}

/// Emits one custom event of type `name` for acme in a transaction that
/// commits or rolls back; returns its txid.
async fn emit_in_transaction(src: &mut tokio_postgres::Client, name: &str, commit: bool) -> i64 {
    let n = if commit { 1 } else { 2 };
    let tx = src.transaction().await.expect("begin");
    let txid: i64 = tx
        .query_one("SELECT txid_current()", &[])
        .await
        .expect("txid")
        .get(0);
    tx.execute(
        "SELECT pg_logical_emit_message(true, 'sluice', $1::text)",
        &[&json!({"tenant": "acme", "type": name, "data": {"o": n}}).to_string()],
    )
    .await
    .expect("emit");
    if commit {
        tx.commit().await.expect("commit");
    } else {
        tx.rollback().await.expect("rollback");
    }
    txid
}

#[tokio::test]
async fn bad_publish_requests_get_precise_errors_and_the_service_keeps_going() {
    let (db, server, token, api) = setup("pub_errors").await;
    let acme = key(&db, "acme", Role::Service).await;
    let anon = key(&db, "acme", Role::Anon).await;
    let ok = json!({"type": "x", "data": {}});

    let r = api.publish(&anon, &ok).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("service key"));

    let r = api
        .post("/v1/events", &acme, None, b"{not json".to_vec())
        .await;
    assert_eq!(
        (r.status, r.body["error"]["param"].clone()),
        (400, json!("body")),
        "{}",
        r.body
    );

    // The tenant is the credential's: naming one is an unknown member.
    let r = api
        .publish(&acme, &json!({"type": "x", "data": {}, "tenant": "globex"}))
        .await;
    assert_eq!(
        (r.status, r.body["error"]["param"].clone()),
        (400, json!("tenant")),
        "{}",
        r.body
    );

    let r = api
        .publish(&acme, &json!({"type": "bad name!", "data": {}}))
        .await;
    assert_eq!(
        (r.status, r.body["error"]["param"].clone()),
        (400, json!("type")),
        "{}",
        r.body
    );

    let many: Vec<Value> = (0..1001).map(|_| ok.clone()).collect();
    let r = api.publish(&acme, &json!({ "events": many })).await;
    assert_eq!(
        (r.status, r.body["error"]["param"].clone()),
        (400, json!("events")),
        "{}",
        r.body
    );

    let big = json!({"type": "x", "data": {"blob": "x".repeat(5 << 20)}});
    let r = api.publish(&acme, &big).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "body_too_large");

    // Nothing of that was appended, and a good request still works.
    let r = api.publish(&acme, &ok).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let log = api.log(&acme).await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["seq"], r.body["seq"]);
    stop_server(server, token).await;
}

/// A standby (no appender of its own) answers a publish too: it learns
/// that the events are in the log from the log itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_publishes_and_answers_once_the_leader_appended() {
    use common::proc::{leader_and_standby, write_config};
    let db = TestDb::new("pub_standby");
    db.client()
        .await
        .batch_execute(ITEMS)
        .await
        .expect("schema");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &db, "public.items", "tenant", "");
    let (_leader, a, _standby, b) = leader_and_standby(&config).await;
    let acme = key(&db, "acme", Role::Service).await;
    let on = |addr: std::net::SocketAddr| Api {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
    };
    let (leader, standby) = (on(a), on(b));
    let mut answered = Vec::new();
    for i in 0..5 {
        let api = if i % 2 == 0 { &standby } else { &leader };
        let r = api
            .publish(&acme, &json!({"events": [{"type": "n", "data": {"i": i}}, {"type": "n", "data": {"i": i}}]}))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        answered.extend(seqs(&r.body));
    }
    let r = standby
        .post(
            "/v1/events",
            &acme,
            Some("on-standby"),
            json!({"type": "k", "data": {}}).to_string().into_bytes(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    answered.push(r.body["seq"].as_i64().expect("seq"));
    let log: Vec<i64> = leader
        .log(&acme)
        .await
        .iter()
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(
        log, answered,
        "every answer is the event's seq in the log, each once"
    );
}
