//! Webhooks against a real Postgres, a real server and a test receiver:
//! signatures checked by the PyPI `standardwebhooks` package (through a
//! secret rotation, and for batched and templated bodies), failures of
//! every kind retried on schedule with a stable `webhook-id`, dead letters
//! and replay, 410, rate limits, ordered endpoints, bad input, and the
//! per-endpoint options: headers, timeouts, retry policies, batches and
//! templates.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::receiver::{Answer, Receiver};
use common::{key, serve_items, stop_server, TestDb, PATIENCE};
use serde_json::{json, Value};
use sluice::auth::Role;
use sluice::server::{self, Server};
use tokio_util::sync::CancellationToken;

const ITEMS: &str =
    "CREATE TABLE items (id int PRIMARY KEY, tenant text NOT NULL, color text, n int);
                     ALTER TABLE items REPLICA IDENTITY FULL;";

/// Short delays so retries happen within a test.
const FAST: &[(&str, &str)] = &[
    ("SLUICE_WEBHOOKS_ALLOW_PRIVATE_ADDRESSES", "true"),
    ("SLUICE_WEBHOOKS_RETRY_SCHEDULE", "0s,300ms,600ms,900ms"),
    ("SLUICE_WEBHOOKS_TIMEOUT_MS", "700"),
    ("SLUICE_WEBHOOKS_POLL_INTERVAL_MS", "50"),
];

struct Api {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.key));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&b).expect("json"));
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }))
        };
        (status, v)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn create(&self, body: Value) -> Value {
        let (status, v) = self.post("/v1/webhooks", body).await;
        assert_eq!(status, 201, "{v}");
        v
    }

    /// The endpoint's deliveries (newest first).
    async fn deliveries(&self, id: &str, status: Option<&str>) -> Vec<Value> {
        let q = status.map_or(String::new(), |s| format!("&status={s}"));
        let (code, v) = self
            .get(&format!("/v1/webhooks/{id}/deliveries?limit=1000{q}"))
            .await;
        assert_eq!(code, 200, "{v}");
        v["deliveries"].as_array().cloned().unwrap_or_default()
    }
}

async fn serve(db: &TestDb, extra: &[(&str, &str)]) -> (Server, CancellationToken) {
    serve_items(db, &[FAST, extra].concat()).await
}

async fn api(db: &TestDb, server: &Server, tenant: &str) -> Api {
    Api {
        base: format!("http://{}", server.addr),
        key: key(db, tenant, Role::Service).await,
        http: reqwest::Client::new(),
    }
}

async fn write(db: &TestDb, sql: &str) {
    db.client().await.batch_execute(sql).await.expect("write");
}

/// Inserts rows `ids` for `tenant`, one transaction each.
async fn insert(db: &TestDb, tenant: &str, ids: impl IntoIterator<Item = i32>) {
    let c = db.client().await;
    for i in ids {
        c.execute(
            "INSERT INTO items VALUES ($1, $2, 'red', $1)",
            &[&i, &tenant],
        )
        .await
        .expect("insert");
    }
}

fn distinct_seqs(rs: &[common::receiver::Received]) -> BTreeSet<i64> {
    rs.iter().map(|r| r.seq()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_and_verify_with_standardwebhooks_through_a_rotation() {
    let db = TestDb::new("wh_sign");
    write(&db, ITEMS).await;
    let (server, token) = serve(&db, &[]).await;
    let api = api(&db, &server, "acme").await;
    let rx = Receiver::ok().await;
    let ep = api
        .create(json!({"url": rx.url("/hook"), "topics": ["tables/public.items/*"], "description": "orders"}))
        .await;
    let id = ep["id"].as_str().expect("id").to_owned();
    let first = ep["secret"].as_str().expect("secret shown once").to_owned();
    assert!(first.starts_with("whsec_"));
    let (_, shown) = api.get(&format!("/v1/webhooks/{id}")).await;
    assert!(
        shown.get("secret").is_none(),
        "the secret is never shown again: {shown}"
    );
    // A batched endpoint and a templated one sign their own bodies.
    let batch_rx = Receiver::ok().await;
    let batched = api
        .create(
            json!({"url": batch_rx.url("/batch"), "topics": ["tables/public.items/*"],
            "batch": {"max_events": 4, "max_wait_ms": 100}}),
        )
        .await;
    let template_rx = Receiver::ok().await;
    let templated = api
        .create(
            json!({"url": template_rx.url("/tpl"), "topics": ["tables/public.items/*"],
            "template": "{\"text\": \"{{type}}: {{data.new.color}} \u{e9}\", \"seq\": {{seq}}}"}),
        )
        .await;

    insert(&db, "acme", 1..=3).await;
    insert(&db, "globex", 100..=101).await;
    rx.wait_until(PATIENCE, "3 deliveries", |r| r.len() >= 3)
        .await;
    let (status, rotated) = api
        .post(&format!("/v1/webhooks/{id}/rotate-secret"), json!({}))
        .await;
    assert_eq!(status, 200, "{rotated}");
    let second = rotated["secret"].as_str().expect("new secret").to_owned();
    insert(&db, "acme", 4..=6).await;
    rx.wait_until(PATIENCE, "6 deliveries", |r| r.len() >= 6)
        .await;

    let got = rx.received();
    assert_eq!(
        distinct_seqs(&got).len(),
        6,
        "acme's 6 events, no globex event"
    );
    // Each body is the event's envelope, byte for byte what the log serves.
    for r in &got {
        let (code, stored) = api.get(&format!("/v1/events/{}", r.seq())).await;
        assert_eq!(code, 200);
        let body: Value = serde_json::from_str(&r.body).expect("json");
        assert_eq!(body, stored);
        assert_eq!(body["tenant"], "acme");
        assert_eq!(r.header("webhook-id"), format!("msg_{}", r.seq()));
        assert_eq!(r.header("content-type"), "application/json");
    }
    // Before the rotation one signature; after it, old and new both sign.
    let mut cases = Vec::new();
    for r in &got {
        let sigs = r.header("webhook-signature").split(' ').count();
        let secrets = if sigs == 1 {
            vec![first.clone()]
        } else {
            assert_eq!(sigs, 2, "{}", r.header("webhook-signature"));
            vec![first.clone(), second.clone()]
        };
        cases.push(json!({"secrets": secrets, "headers": r.headers, "body": r.body}));
    }
    let after: Vec<_> = got
        .iter()
        .filter(|r| r.header("webhook-signature").contains(' '))
        .collect();
    assert_eq!(
        after.len(),
        3,
        "the 3 deliveries after the rotation carry both signatures"
    );
    batch_rx
        .wait_until(PATIENCE, "6 batched events", |r| {
            r.iter().map(|x| x.seqs().len()).sum::<usize>() >= 6
        })
        .await;
    template_rx
        .wait_until(PATIENCE, "6 templated deliveries", |r| r.len() >= 6)
        .await;
    let batches = batch_rx.received();
    for (other, endpoint) in [(&batches, &batched), (&template_rx.received(), &templated)] {
        let secret = endpoint["secret"].as_str().expect("secret");
        for r in other {
            cases.push(json!({"secrets": [secret], "headers": r.headers, "body": r.body}));
        }
    }
    for r in &template_rx.received() {
        let body: Value = serde_json::from_str(&r.body).expect("json");
        assert_eq!(body["text"], "row.inserted: red \u{e9}", "{}", r.body);
        assert_eq!(r.header("webhook-id"), format!("msg_{}", body["seq"]));
    }
    let expected = cases.len();
    assert_eq!(expected, 6 + batches.len() + 6);
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), serde_json::to_vec(&cases).expect("json")).expect("write");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/verify_webhooks.py"
    );
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(file.path())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "standardwebhooks rejected a delivery: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("verified {expected} ")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_receivers_get_every_event_on_schedule_with_a_stable_id() {
    let db = TestDb::new("wh_retry");
    write(&db, ITEMS).await;
    let (server, token) = serve(&db, &[]).await;
    let api = api(&db, &server, "acme").await;
    // Each event fails three times, each time differently, then succeeds.
    let rx = Receiver::start(Arc::new(|_, before| match before {
        0 => Answer::Status(500),
        1 => Answer::Hang(Duration::from_secs(2)),
        2 => Answer::Close,
        _ => Answer::Status(204),
    }))
    .await;
    let ep = api
        .create(json!({"url": rx.url("/hook"), "max_attempts": 5}))
        .await;
    let id = ep["id"].as_str().expect("id").to_owned();
    insert(&db, "acme", 1..=4).await;
    rx.wait_until(PATIENCE, "4 events delivered", |r| {
        r.iter().filter(|x| x.answer == Answer::Status(204)).count() >= 4
    })
    .await;
    let got = rx.received();
    let mut by_id: BTreeMap<String, Vec<&common::receiver::Received>> = BTreeMap::new();
    for r in &got {
        by_id
            .entry(r.header("webhook-id").to_owned())
            .or_default()
            .push(r);
    }
    assert_eq!(by_id.len(), 4);
    for (msg, attempts) in &by_id {
        assert_eq!(attempts.len(), 4, "{msg}: 3 failures then success");
        let bodies: BTreeSet<&str> = attempts.iter().map(|a| a.body.as_str()).collect();
        assert_eq!(bodies.len(), 1, "{msg}: the same body every attempt");
        // The schedule (0, 300 ms, 600 ms, 900 ms, ±20 %) after each failure;
        // a hang also costs the 700 ms timeout.
        let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1].at - w[0].at).collect();
        assert!(gaps[0] >= Duration::from_millis(240), "{msg}: {gaps:?}");
        assert!(
            gaps[1] >= Duration::from_millis(480 + 700),
            "{msg}: {gaps:?}"
        );
        assert!(gaps[2] >= Duration::from_millis(720), "{msg}: {gaps:?}");
    }
    // The API tells each attempt (the last outcome is recorded just after
    // the receiver answered it).
    let ds = common::poll_until(PATIENCE, Duration::from_millis(50), || async {
        let ds = api.deliveries(&id, Some("delivered")).await;
        if ds.len() == 4 {
            Ok(ds)
        } else {
            Err(format!("{} of 4 recorded as delivered", ds.len()))
        }
    })
    .await;
    for d in &ds {
        let log = d["attempt_log"].as_array().expect("attempt log");
        assert_eq!(log.len(), 4, "{d}");
        assert_eq!(log[0]["http_status"], 500);
        assert!(
            log[1]["error"]
                .as_str()
                .unwrap_or("")
                .contains("no answer within 700 ms"),
            "{d}"
        );
        assert!(
            log[2]["http_status"].is_null() && log[2]["error"].is_string(),
            "{d}"
        );
        assert_eq!(log[3]["http_status"], 204);
        assert_eq!(d["attempts"], 4);
    }
    // And the metrics count them by outcome.
    let m = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        m.contains("sluice_webhook_deliveries_total{outcome=\"delivered\"} 4"),
        "{m}"
    );
    assert!(
        m.contains("sluice_webhook_deliveries_total{outcome=\"failed\"} 12"),
        "{m}"
    );
    assert!(m.contains("sluice_webhook_attempts_total 16"), "{m}");
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_replay_and_gone_endpoints() {
    let db = TestDb::new("wh_dead");
    write(&db, ITEMS).await;
    let (server, token) = serve(&db, &[]).await;
    let api = api(&db, &server, "acme").await;
    let rx = Receiver::start(Arc::new(|_, _| Answer::Status(503))).await;
    let ep = api
        .create(json!({"url": rx.url("/dead"), "max_attempts": 2}))
        .await;
    let id = ep["id"].as_str().expect("id").to_owned();
    insert(&db, "acme", 1..=3).await;
    let start = std::time::Instant::now();
    while api.deliveries(&id, Some("dead")).await.len() < 3 {
        assert!(start.elapsed() < PATIENCE, "deliveries never became dead");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rx.received().len(), 6, "exactly max_attempts per event");
    // The receiver recovers; replaying the dead letters delivers them.
    rx.set_policy(Arc::new(|_, _| Answer::Status(200)));
    let (code, v) = api
        .post(
            &format!("/v1/webhooks/{id}/replay"),
            json!({"status": "dead"}),
        )
        .await;
    assert_eq!(code, 202, "{v}");
    assert_eq!(v["enqueued"], 3);
    rx.wait_until(PATIENCE, "replayed deliveries", |r| {
        r.iter().filter(|x| x.answer == Answer::Status(200)).count() >= 3
    })
    .await;
    // Replay from a seq re-sends what was already delivered.
    let (code, v) = api
        .post(&format!("/v1/webhooks/{id}/replay"), json!({"from_seq": 2}))
        .await;
    assert_eq!(code, 202, "{v}");
    assert_eq!(v["enqueued"], 2);
    rx.wait_until(PATIENCE, "replayed from seq", |r| {
        r.iter().filter(|x| x.answer == Answer::Status(200)).count() >= 5
    })
    .await;
    // Replay by id: the tenant's own event is sent again, with its stable id.
    let (code, v) = api
        .post(
            &format!("/v1/webhooks/{id}/replay"),
            json!({"event_ids": ["1"]}),
        )
        .await;
    assert_eq!(code, 202, "{v}");
    assert_eq!(v["enqueued"], 1);
    rx.wait_until(PATIENCE, "replayed by id", |r| {
        r.iter()
            .filter(|x| x.answer == Answer::Status(200) && x.header("webhook-id") == "msg_1")
            .count()
            >= 2
    })
    .await;
    // 410 disables the endpoint.
    let gone = Receiver::start(Arc::new(|_, _| Answer::Status(410))).await;
    let ep2 = api.create(json!({"url": gone.url("/gone")})).await;
    let id2 = ep2["id"].as_str().expect("id").to_owned();
    insert(&db, "acme", 10..=10).await;
    let start = std::time::Instant::now();
    loop {
        let (_, e) = api.get(&format!("/v1/webhooks/{id2}")).await;
        if e["enabled"] == false {
            assert!(
                e["disabled_reason"].as_str().unwrap_or("").contains("410"),
                "{e}"
            );
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "410 never disabled the endpoint"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    insert(&db, "acme", 11..=12).await;
    rx.wait_until(PATIENCE, "the other endpoint still gets events", |r| {
        r.iter().filter(|x| x.answer == Answer::Status(200)).count() >= 8
    })
    .await;
    assert_eq!(
        gone.received().len(),
        1,
        "a disabled endpoint gets nothing more"
    );
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_and_ordered_endpoints_receive_in_order() {
    let db = TestDb::new("wh_rate");
    write(&db, ITEMS).await;
    let (server, token) = serve(&db, &[]).await;
    let api = api(&db, &server, "acme").await;
    let limited = Receiver::ok().await;
    api.create(json!({"url": limited.url("/rate"), "rate_limit": {"per_second": 10, "burst": 2}}))
        .await;
    // Every third request fails: ordered delivery must wait for the retry.
    let ordered = Receiver::start(Arc::new(|r, before| {
        if before == 0 && r.seq() % 3 == 0 {
            Answer::Status(500)
        } else {
            Answer::Status(200)
        }
    }))
    .await;
    api.create(json!({"url": ordered.url("/ordered"), "ordered": true}))
        .await;
    insert(&db, "acme", 1..=20).await;
    limited
        .wait_until(PATIENCE, "20 rate-limited deliveries", |r| r.len() >= 20)
        .await;
    ordered
        .wait_until(PATIENCE, "20 ordered deliveries", |r| {
            r.iter().filter(|x| x.answer == Answer::Status(200)).count() >= 20
        })
        .await;
    // 10/s with a burst of 2: 20 requests need at least (20 - 2) / 10 s.
    let got = limited.received();
    let span = got[got.len() - 1].at - got[0].at;
    assert!(
        span >= Duration::from_millis(1700),
        "rate limit exceeded: 20 in {span:?}"
    );
    let seqs: Vec<i64> = ordered.received().iter().map(|r| r.seq()).collect();
    let mut sorted = seqs.clone();
    sorted.sort();
    assert_eq!(
        seqs, sorted,
        "an ordered endpoint never sees a later event first"
    );
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_webhook_input_gets_a_precise_4xx() {
    let db = TestDb::new("wh_bad");
    write(&db, ITEMS).await;
    // Private addresses refused here (the default).
    let (server, token) = serve_items(&db, &[]).await;
    let acme = api(&db, &server, "acme").await;
    let globex = api(&db, &server, "globex").await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({"url": "not a url"}), "url"),
        (json!({"url": "ftp://example.com/x"}), "url"),
        (json!({"url": "http://127.0.0.1:9/hook"}), "url"),
        (
            json!({"url": "http://169.254.169.254/latest/meta-data"}),
            "url",
        ),
        (json!({"url": "http://10.1.2.3/x"}), "url"),
        (json!({"url": "http://localhost:8080/x"}), "url"),
        (
            json!({"url": "https://93.184.216.34/x", "topics": ["tables/pub*/insert"]}),
            "topics[0]",
        ),
        (
            json!({"url": "https://93.184.216.34/x", "filter": {"field": "new.n", "op": "between", "value": 1}}),
            "filter",
        ),
        (
            json!({"url": "https://93.184.216.34/x", "description": "x".repeat(2000)}),
            "description",
        ),
        (
            json!({"url": "https://93.184.216.34/x", "max_attempts": 0}),
            "max_attempts",
        ),
        (
            json!({"url": "https://93.184.216.34/x", "rate_limit": {"per_second": -1, "burst": 1}}),
            "rate_limit.per_second",
        ),
        (
            json!({"url": "https://93.184.216.34/x", "colour": "red"}),
            "body",
        ),
        (json!({"topics": []}), "body"),
    ];
    for (body, param) in cases {
        let (code, v) = acme.post("/v1/webhooks", body.clone()).await;
        assert_eq!(code, 400, "{body}: {v}");
        let got = v["error"]["param"].as_str().unwrap_or("");
        assert!(
            got == param || (param == "body" && !got.is_empty()),
            "{body}: param {got:?}, want {param:?}: {v}"
        );
        assert!(!v["error"]["message"].as_str().unwrap_or("").is_empty());
    }
    let ep = acme.create(json!({"url": "https://93.184.216.34/x"})).await;
    let id = ep["id"].as_str().expect("id");
    // Another tenant's endpoint does not exist for globex: 404, never 403.
    for path in [
        format!("/v1/webhooks/{id}"),
        format!("/v1/webhooks/{id}/deliveries"),
    ] {
        let (code, v) = globex.get(&path).await;
        assert_eq!(code, 404, "{path}: {v}");
    }
    let (code, _) = globex
        .call(reqwest::Method::DELETE, &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(code, 404);
    let (code, _) = globex
        .post(
            &format!("/v1/webhooks/{id}/replay"),
            json!({"status": "dead"}),
        )
        .await;
    assert_eq!(code, 404);
    // An anon key may not manage webhooks.
    let anon = key(&db, "acme", Role::Anon).await;
    let as_anon = Api {
        base: acme.base.clone(),
        key: anon,
        http: reqwest::Client::new(),
    };
    let (code, v) = as_anon.get("/v1/webhooks").await;
    assert_eq!(code, 403, "{v}");
    let (code, v) = acme
        .post(
            &format!("/v1/webhooks/{id}/replay"),
            json!({"status": "dead", "from_seq": 1}),
        )
        .await;
    assert_eq!(code, 400, "{v}");
    let (code, v) = acme
        .post(
            &format!("/v1/webhooks/{id}/replay"),
            json!({"event_ids": ["999999"]}),
        )
        .await;
    assert_eq!(code, 404, "{v}");
    let (code, v) = acme
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/webhooks/{id}"),
            Some(json!({"url": "http://[::1]/x"})),
        )
        .await;
    assert_eq!(code, 400, "{v}");
    let (code, v) = acme
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/webhooks/{id}"),
            Some(json!({"enabled": false, "description": "paused"})),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["enabled"], false);
    assert_eq!(v["description"], "paused");
    let (code, _) = acme
        .call(reqwest::Method::DELETE, &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(code, 204);
    // Endpoints that point inside anyway (written behind the API's back, or
    // a name that resolves inside later: DNS rebinding) are refused when
    // connecting, and nothing reaches them.
    let inside = Receiver::ok().await;
    let port = inside.addr.port();
    let c = db.client().await;
    for (wid, url) in [
        ("wh_literal", format!("http://127.0.0.1:{port}/x")),
        ("wh_name", format!("http://localhost:{port}/x")),
    ] {
        c.execute(
            "INSERT INTO sluice.webhooks (id, tenant, url, max_attempts, secret) VALUES ($1, 'acme', $2, 1, $3)",
            &[&wid, &url, &sluice::webhooks::sign::generate_secret()],
        )
        .await
        .expect("endpoint");
    }
    insert(&db, "acme", 1..=1).await;
    for wid in ["wh_literal", "wh_name"] {
        let start = std::time::Instant::now();
        let dead = loop {
            let d = acme.deliveries(wid, Some("dead")).await;
            if !d.is_empty() {
                break d;
            }
            assert!(start.elapsed() < PATIENCE, "{wid}: never attempted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let error = dead[0]["attempt_log"][0]["error"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        assert!(error.contains("loopback"), "{wid}: {error}");
    }
    assert!(
        inside.received().is_empty(),
        "the guard let a request through"
    );
    stop_server(server, token).await;
}

/// Two dispatchers (as in two processes) share one outbox: every event is
/// delivered once, and both do part of the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatchers_share_the_outbox_without_double_sends() {
    let db = TestDb::new("wh_share");
    write(&db, ITEMS).await;
    let (server, token) = serve(&db, &[]).await;
    let api = api(&db, &server, "acme").await;
    // Slow answers keep both dispatchers busy.
    let rx = Receiver::start(Arc::new(|_, _| {
        Answer::Slow(Duration::from_millis(20), 200)
    }))
    .await;
    api.create(json!({"url": rx.url("/shared")})).await;
    let config = db.config_with(&[("public.items", "tenant")], FAST);
    let other = sluice::webhooks::dispatch::Dispatcher::new(
        server::pool(&db.url, 2).expect("pool"),
        &sluice::webhooks::Outbox::new(),
        &config.webhooks,
        Arc::default(),
    )
    .expect("second dispatcher");
    let other_metrics = other.metrics.clone();
    let stop_other = CancellationToken::new();
    let other_task = tokio::spawn(other.run(stop_other.clone()));
    let c = db.client().await;
    c.batch_execute("INSERT INTO items SELECT g, 'acme', 'red', g FROM generate_series(1, 300) g")
        .await
        .expect("write");
    rx.wait_until(PATIENCE, "300 deliveries", |r| r.len() >= 300)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = rx.received();
    let ids: BTreeSet<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(got.len(), 300, "no event sent twice");
    assert_eq!(ids.len(), 300);
    let theirs = other_metrics
        .delivered
        .load(std::sync::atomic::Ordering::Relaxed);
    let ours = server
        .state
        .webhook_metrics
        .delivered
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(theirs + ours, 300);
    assert!(
        theirs > 0 && ours > 0,
        "both dispatchers worked: {ours} + {theirs}"
    );
    stop_other.cancel();
    other_task.await.expect("second dispatcher stops");
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_in_flight_at_shutdown_finishes_and_is_recorded() {
    let db = TestDb::new("wh_stop");
    write(&db, ITEMS).await;
    let slow_ok = [("SLUICE_WEBHOOKS_TIMEOUT_MS", "10000")];
    let (server, token) = serve(&db, &slow_ok).await;
    let api = api(&db, &server, "acme").await;
    // The endpoint takes a second and a half to answer 200.
    let rx = Receiver::start(Arc::new(|_, _| {
        Answer::Slow(Duration::from_millis(1500), 200)
    }))
    .await;
    let ep = api.create(json!({"url": rx.url("/slow")})).await;
    let id = ep["id"].as_str().expect("id").to_owned();
    insert(&db, "acme", [1]).await;
    rx.wait_until(PATIENCE, "the attempt started", |r| r.len() == 1)
        .await;
    // Stop while the request is in flight: the dispatcher waits for it.
    stop_server(server, token).await;
    let c = db.client().await;
    let row = c
        .query_one(
            "SELECT status, attempts FROM sluice.webhook_deliveries WHERE webhook_id = $1",
            &[&id],
        )
        .await
        .expect("delivery");
    let (status, attempts): (String, i32) = (row.get(0), row.get(1));
    assert_eq!((status.as_str(), attempts), ("delivered", 1));
    // A restart does not send it again.
    let (server, token) = serve(&db, &slow_ok).await;
    insert(&db, "acme", [2]).await;
    rx.wait_until(PATIENCE, "the next event arrived", |r| r.len() == 2)
        .await;
    stop_server(server, token).await;
    assert_eq!(
        distinct_seqs(&rx.received()).len(),
        2,
        "{:?}",
        rx.received().len()
    );
}

impl Api {
    async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PATCH, path, Some(body)).await
    }
}

/// Waits until the endpoint's deliveries satisfy `done`; returns them.
async fn wait_deliveries(
    api: &Api,
    id: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    common::poll_until(PATIENCE, Duration::from_millis(50), || async {
        let ds = api.deliveries(id, None).await;
        if done(&ds) {
            Ok(ds)
        } else {
            Err(format!("{what}: not yet, deliveries are {ds:?}"))
        }
    })
    .await
}

fn time_of(v: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("a time: {v}")))
        .unwrap_or_else(|e| panic!("{v}: {e}"))
        .to_utc()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_headers_arrive_are_masked_on_read_and_reserved_names_are_refused() {
    let db = TestDb::new("wh_headers");
    write(&db, ITEMS).await;
    let (server, token) = serve(&db, &[]).await;
    let api = api(&db, &server, "acme").await;
    let rx = Receiver::ok().await;
    let ep = api
        .create(json!({"url": rx.url("/h"), "headers": {
            "X-Secret": "s3cret-token-value",
            "Authorization": "Bearer abcdefgh",
            "X-Short": "12345678",
        }}))
        .await;
    let id = ep["id"].as_str().expect("id").to_owned();
    let masked = json!({"X-Secret": "s3…", "Authorization": "Be…", "X-Short": "…"});
    assert_eq!(ep["headers"], masked, "{ep}");
    let (_, read) = api.get(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(read["headers"], masked, "{read}");
    let (_, list) = api.get("/v1/webhooks").await;
    assert_eq!(list["webhooks"][0]["headers"], masked, "{list}");
    assert!(
        !list.to_string().contains("s3cret-token-value") && !list.to_string().contains("abcdefgh"),
        "a header value is never shown: {list}"
    );

    insert(&db, "acme", [1]).await;
    rx.wait_until(PATIENCE, "the delivery", |r| !r.is_empty())
        .await;
    let got = &rx.received()[0];
    assert_eq!(got.header("x-secret"), "s3cret-token-value");
    assert_eq!(got.header("authorization"), "Bearer abcdefgh");
    assert_eq!(got.header("x-short"), "12345678");
    assert!(got.header("user-agent").starts_with("sluice-webhooks/"));
    assert_eq!(got.header("webhook-id"), format!("msg_{}", got.seq()));

    // PATCH replaces the whole map; null clears it.
    let (code, v) = api
        .patch(
            &format!("/v1/webhooks/{id}"),
            json!({"headers": {"X-Other": "1"}}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["headers"], json!({"X-Other": "…"}));
    insert(&db, "acme", [2]).await;
    rx.wait_until(PATIENCE, "the second delivery", |r| r.len() >= 2)
        .await;
    let second = &rx.received()[1];
    assert_eq!(second.header("x-other"), "1");
    assert_eq!(second.header("x-secret"), "", "the old headers are gone");
    let (code, v) = api
        .patch(&format!("/v1/webhooks/{id}"), json!({"headers": null}))
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["headers"], json!({}));

    // Refused, whatever the case, each answer naming the header.
    for name in [
        "webhook-id",
        "Webhook-Signature",
        "webhook-timestamp",
        "Content-Type",
        "content-length",
        "Host",
        "Connection",
        "Transfer-Encoding",
        "TE",
        "Upgrade",
        "Proxy-Authorization",
        "User-Agent",
    ] {
        let (code, v) = api
            .post(
                "/v1/webhooks",
                json!({"url": rx.url("/h"), "headers": {name: "x"}}),
            )
            .await;
        assert_eq!(code, 400, "{name}: {v}");
        assert_eq!(v["error"]["param"], format!("headers.{name}"), "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("may not set"),
            "{v}"
        );
    }
    let bad: Vec<(Value, &str)> = vec![
        (json!({"Bad Name": "x"}), "headers.Bad Name"),
        (json!({"X-A": "line\nbreak"}), "headers.X-A"),
        (json!({"X-A": "x".repeat(4097)}), "headers.X-A"),
        (json!({"X-A": 5}), "headers.X-A"),
        (json!(["X-A"]), "headers"),
    ];
    for (headers, param) in bad {
        let (code, v) = api
            .post(
                "/v1/webhooks",
                json!({"url": rx.url("/h"), "headers": headers}),
            )
            .await;
        assert_eq!(code, 400, "{v}");
        assert_eq!(v["error"]["param"], param, "{v}");
    }
    let (code, v) = api
        .patch(
            &format!("/v1/webhooks/{id}"),
            json!({"headers": {"Host": "evil"}}),
        )
        .await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["error"]["param"], "headers.Host");
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_endpoint_timeout_fails_a_slower_receiver_and_a_longer_one_waits_for_it() {
    let db = TestDb::new("wh_timeout");
    write(&db, ITEMS).await;
    // The global timeout (700 ms) would fail /slow; the endpoint allows 20 s.
    let (server, token) = serve(&db, &[]).await;
    let api = api(&db, &server, "acme").await;
    let rx = Receiver::start(Arc::new(|r, _| {
        if r.path == "/hang" {
            Answer::Hang(Duration::from_secs(30))
        } else {
            Answer::Slow(Duration::from_millis(1500), 200)
        }
    }))
    .await;
    let short = api
        .create(json!({"url": rx.url("/hang"), "timeout_ms": 300, "max_attempts": 1}))
        .await;
    let long = api
        .create(json!({"url": rx.url("/slow"), "timeout_ms": 20000, "max_attempts": 1}))
        .await;
    assert_eq!(long["timeout_ms"], 20000);
    insert(&db, "acme", [1]).await;
    let short_id = short["id"].as_str().expect("id");
    let long_id = long["id"].as_str().expect("id");
    let dead = wait_deliveries(&api, short_id, "the short timeout fails", |ds| {
        ds.first().is_some_and(|d| d["status"] == "dead")
    })
    .await;
    let error = dead[0]["attempt_log"][0]["error"].as_str().unwrap_or("");
    assert_eq!(error, "no answer within 300 ms", "{dead:?}");
    let done = wait_deliveries(&api, long_id, "the long timeout succeeds", |ds| {
        ds.first().is_some_and(|d| d["status"] == "delivered")
    })
    .await;
    assert_eq!(done[0]["attempt_log"][0]["http_status"], 200, "{done:?}");
    // The claim's lease covered the endpoint's timeout (+5 s), not the
    // global one: a delivered row keeps the lease it was claimed with.
    let row = db
        .client()
        .await
        .query_one(
            "SELECT extract(epoch FROM next_attempt_at - created_at)::float8
             FROM sluice.webhook_deliveries WHERE webhook_id = $1",
            &[&long_id],
        )
        .await
        .expect("delivery");
    let lease: f64 = row.get(0);
    assert!(lease >= 25.0, "leased for {lease} s");
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_endpoint_retry_policy_sets_the_delays_and_the_number_of_attempts() {
    let db = TestDb::new("wh_policy");
    write(&db, ITEMS).await;
    let (server, token) = serve(&db, &[]).await;
    let api = api(&db, &server, "acme").await;
    let rx = Receiver::start(Arc::new(|_, _| Answer::Status(503))).await;
    // Dead after exactly 3 attempts (the global default is 8).
    let three = api
        .create(
            json!({"url": rx.url("/three"), "max_attempts": 3, "retry_schedule": "0s,50ms,100ms"}),
        )
        .await;
    // An hour after the first failure (the global schedule says 300 ms).
    let hourly = api
        .create(json!({"url": rx.url("/hourly"), "max_attempts": 5, "retry_schedule": "0s, 1h"}))
        .await;
    assert_eq!(three["retry_schedule"], "0s,50ms,100ms");
    insert(&db, "acme", [1]).await;
    let three_id = three["id"].as_str().expect("id");
    let ds = wait_deliveries(&api, three_id, "dead after 3", |ds| {
        ds.first().is_some_and(|d| d["status"] == "dead")
    })
    .await;
    assert_eq!(ds[0]["attempts"], 3, "{ds:?}");
    assert_eq!(ds[0]["attempt_log"].as_array().map(Vec::len), Some(3));
    let hourly_id = hourly["id"].as_str().expect("id");
    let ds = wait_deliveries(&api, hourly_id, "the first failure", |ds| {
        ds.first().is_some_and(|d| d["status"] == "failed")
    })
    .await;
    let first_at = time_of(&ds[0]["attempt_log"][0]["at"]);
    let next = time_of(&ds[0]["next_attempt_at"]);
    // 1 h jittered by at most 20 %.
    assert!(
        next - first_at >= chrono::Duration::minutes(48),
        "retry at {next}, first attempt at {first_at}"
    );
    assert!(
        next - first_at <= chrono::Duration::minutes(73),
        "retry at {next}, first attempt at {first_at}"
    );
    assert_eq!(
        rx.received().iter().filter(|r| r.path == "/three").count(),
        3,
        "exactly max_attempts requests"
    );
    // Bad policies name the member.
    for (body, param) in [
        (json!({"retry_schedule": "5s,soon"}), "retry_schedule"),
        (json!({"retry_schedule": ""}), "retry_schedule"),
        (json!({"timeout_ms": 50}), "timeout_ms"),
        (json!({"timeout_ms": 60001}), "timeout_ms"),
        (json!({"max_attempts": 101}), "max_attempts"),
    ] {
        let (code, v) = api.patch(&format!("/v1/webhooks/{three_id}"), body).await;
        assert_eq!(code, 400, "{v}");
        assert_eq!(v["error"]["param"], param, "{v}");
    }
    // null puts the global schedule back.
    let (code, v) = api
        .patch(
            &format!("/v1/webhooks/{three_id}"),
            json!({"retry_schedule": null, "timeout_ms": null}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert!(
        v["retry_schedule"].is_null() && v["timeout_ms"].is_null(),
        "{v}"
    );
    stop_server(server, token).await;
}

/// A 429's `Retry-After` outlasts the schedule, as the times the server
/// stored show: each attempt's `at` is when its request was sent, and a
/// failed delivery's `next_attempt_at` when it may go again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_retry_after_delays_the_retry_by_at_least_that_long_in_the_stored_times() {
    let db = TestDb::new("wh_429");
    write(&db, ITEMS).await;
    let (server, token) = serve(&db, &[]).await;
    let api = api(&db, &server, "acme").await;
    // The schedule says 100 ms; the receiver asks for 3 s, then an hour.
    let rx = Receiver::start(Arc::new(|_, before| match before {
        0 => Answer::RetryAfter(429, 3),
        _ => Answer::RetryAfter(429, 3600),
    }))
    .await;
    let ep = api
        .create(json!({"url": rx.url("/ra"), "retry_schedule": "0s,100ms", "max_attempts": 5}))
        .await;
    let id = ep["id"].as_str().expect("id");
    insert(&db, "acme", [1]).await;
    let ds = wait_deliveries(&api, id, "two attempts recorded", |ds| {
        ds.first().is_some_and(|d| {
            d["attempt_log"].as_array().map_or(0, Vec::len) == 2 && d["status"] == "failed"
        })
    })
    .await;
    let log = ds[0]["attempt_log"].as_array().expect("log");
    assert!(log.iter().all(|a| a["http_status"] == 429), "{log:?}");
    let (first, second) = (time_of(&log[0]["at"]), time_of(&log[1]["at"]));
    assert!(
        second - first >= chrono::Duration::seconds(3),
        "second attempt at {second}, {} after the first",
        second - first
    );
    let next = time_of(&ds[0]["next_attempt_at"]);
    assert!(
        next - second >= chrono::Duration::seconds(3600),
        "next attempt at {next}, {} after the second",
        next - second
    );
    assert_eq!(rx.received().len(), 2);
    stop_server(server, token).await;
}

/// Each request the receiver got, as (webhook-id, seqs in body order).
fn requests_of(got: &[common::receiver::Received]) -> Vec<(String, Vec<i64>)> {
    got.iter()
        .map(|r| (r.header("webhook-id").to_owned(), r.seqs()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_endpoints_get_arrays_in_seq_order_every_event_once_and_replay_resends_one() {
    let db = TestDb::new("wh_batch");
    write(&db, ITEMS).await;
    let (server, token) = serve(&db, &[]).await;
    let api = api(&db, &server, "acme").await;
    let rx = Receiver::ok().await;
    let ep = api
        .create(json!({"url": rx.url("/batch"), "batch": {"max_events": 5, "max_wait_ms": 200}}))
        .await;
    assert_eq!(ep["batch"], json!({"max_events": 5, "max_wait_ms": 200}));
    let id = ep["id"].as_str().expect("id").to_owned();
    // 17 events in one transaction, then 6 one by one.
    write(
        &db,
        "INSERT INTO items SELECT g, 'acme', 'red', g FROM generate_series(1, 17) g",
    )
    .await;
    insert(&db, "acme", 18..=23).await;
    insert(&db, "globex", [100]).await;
    rx.wait_until(PATIENCE, "23 events", |r| {
        r.iter().map(|x| x.seqs().len()).sum::<usize>() >= 23
    })
    .await;
    let got = rx.received();
    let requests = requests_of(&got);
    let mut all: Vec<i64> = Vec::new();
    for (msg, seqs) in &requests {
        assert!(msg.starts_with("batch_"), "{msg}");
        assert!(
            (1..=5).contains(&seqs.len()),
            "{msg}: {} events",
            seqs.len()
        );
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{msg}: {seqs:?}");
        all.extend(seqs);
    }
    let distinct: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), 23, "every event exactly once: {requests:?}");
    assert_eq!(distinct.len(), 23);
    let ids: BTreeSet<&str> = requests.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(ids.len(), requests.len(), "one id per request");
    // The bulk insert filled whole batches.
    assert!(
        requests.iter().filter(|(_, s)| s.len() == 5).count() >= 3,
        "{requests:?}"
    );
    // Each element is the event's envelope, as a single delivery's body is.
    for r in &got {
        let body: Value = serde_json::from_str(&r.body).expect("json");
        for e in body.as_array().expect("array") {
            let (code, stored) = api.get(&format!("/v1/events/{}", e["seq"])).await;
            assert_eq!(code, 200);
            assert_eq!(*e, stored);
            assert_eq!(e["tenant"], "acme");
        }
    }
    // The deliveries list which request carried each event.
    let ds = wait_deliveries(&api, &id, "all delivered", |ds| {
        ds.len() == 23 && ds.iter().all(|d| d["status"] == "delivered")
    })
    .await;
    let carried: BTreeMap<i64, String> = requests
        .iter()
        .flat_map(|(m, seqs)| seqs.iter().map(move |s| (*s, m.clone())))
        .collect();
    for d in &ds {
        let seq = d["seq"].as_i64().expect("seq");
        assert_eq!(d["request"], carried[&seq], "{d}");
        assert_eq!(d["webhook_id"], carried[&seq], "{d}");
        assert_eq!(d["attempt_log"][0]["request"], carried[&seq], "{d}");
    }
    let (first_msg, first_seqs) = &requests[0];
    let (code, v) = api
        .get(&format!("/v1/webhooks/{id}/deliveries?request={first_msg}"))
        .await;
    assert_eq!(code, 200, "{v}");
    let mut listed: Vec<i64> = v["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .map(|d| d["seq"].as_i64().expect("seq"))
        .collect();
    listed.sort();
    assert_eq!(&listed, first_seqs);
    // Replaying one event sends it again, in a new request.
    let again = first_seqs[1];
    let (code, v) = api
        .post(
            &format!("/v1/webhooks/{id}/replay"),
            json!({"event_ids": [again]}),
        )
        .await;
    assert_eq!(code, 202, "{v}");
    rx.wait_until(PATIENCE, "the replay", |r| r.len() > got.len())
        .await;
    let replayed = &rx.received()[got.len()];
    assert_eq!(replayed.seqs(), [again]);
    assert!(!ids.contains(replayed.header("webhook-id")));
    let ds = wait_deliveries(&api, &id, "the replay recorded", |ds| {
        ds.iter().any(|d| {
            d["seq"] == again
                && d["status"] == "delivered"
                && d["attempts"] == 1
                && d["request"] == replayed.header("webhook-id")
        })
    })
    .await;
    assert_eq!(ds.len(), 23);
    // A batch request is one attempt in the metrics, its events 23 + 1
    // delivered outcomes.
    let m = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        m.contains(&format!(
            "sluice_webhook_attempts_total {}",
            requests.len() + 1
        )),
        "{m}"
    );
    assert!(
        m.contains("sluice_webhook_deliveries_total{outcome=\"delivered\"} 24"),
        "{m}"
    );
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_batched_endpoint_sees_increasing_seqs_across_requests_through_failures() {
    let db = TestDb::new("wh_batch_ordered");
    write(&db, ITEMS).await;
    let (server, token) = serve(&db, &[]).await;
    let api = api(&db, &server, "acme").await;
    // Every request whose first event has an odd seq fails once.
    let rx = Receiver::start(Arc::new(|r, before| {
        let first = r.seqs().first().copied().unwrap_or(0);
        if before == 0 && first % 2 == 1 {
            Answer::Status(500)
        } else {
            Answer::Status(200)
        }
    }))
    .await;
    let ep = api
        .create(json!({"url": rx.url("/ob"), "ordered": true,
            "batch": {"max_events": 4, "max_wait_ms": 100}}))
        .await;
    let id = ep["id"].as_str().expect("id").to_owned();
    insert(&db, "acme", 1..=10).await;
    write(
        &db,
        "INSERT INTO items SELECT g, 'acme', 'red', g FROM generate_series(11, 30) g",
    )
    .await;
    rx.wait_until(PATIENCE, "30 events delivered", |r| {
        r.iter()
            .filter(|x| x.answer == Answer::Status(200))
            .map(|x| x.seqs().len())
            .sum::<usize>()
            >= 30
    })
    .await;
    let got = rx.received();
    let requests = requests_of(&got);
    // In the order received: a failed request is retried next, whole, with
    // its id; delivered requests follow one another in seq order.
    let mut delivered: Vec<i64> = Vec::new();
    for (i, r) in got.iter().enumerate() {
        let (msg, seqs) = &requests[i];
        assert!(seqs.len() <= 4 && !seqs.is_empty(), "{requests:?}");
        if r.answer == Answer::Status(500) {
            assert_eq!(
                requests.get(i + 1),
                Some(&(msg.clone(), seqs.clone())),
                "the retry comes next, the same request: {requests:?}"
            );
        } else {
            delivered.extend(seqs);
        }
    }
    assert!(
        delivered.windows(2).all(|w| w[0] < w[1]),
        "seqs strictly increase across requests: {delivered:?}"
    );
    assert_eq!(delivered.len(), 30, "{requests:?}");
    assert!(
        got.iter().any(|r| r.answer == Answer::Status(500)),
        "some request failed and was retried"
    );
    // The bodies of a retried request are the same bytes (one signature
    // input, one id).
    let mut bodies: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in &got {
        bodies
            .entry(r.header("webhook-id"))
            .or_default()
            .insert(&r.body);
    }
    assert!(bodies.values().all(|b| b.len() == 1), "{bodies:?}");
    let ds = wait_deliveries(&api, &id, "all recorded", |ds| {
        ds.len() == 30 && ds.iter().all(|d| d["status"] == "delivered")
    })
    .await;
    for d in &ds {
        let log = d["attempt_log"].as_array().expect("log");
        assert!(
            log.iter().all(|a| a["request"] == d["request"]),
            "every attempt in the same request: {d}"
        );
    }
    // Bad batch settings name the member; a template cannot be batched.
    for (body, param) in [
        (json!({"batch": {"max_events": 0}}), "batch.max_events"),
        (json!({"batch": {"max_events": 1001}}), "batch.max_events"),
        (
            json!({"batch": {"max_events": 5, "max_wait_ms": 60001}}),
            "batch.max_wait_ms",
        ),
        (
            json!({"batch": {"max_events": 5, "every": 1}}),
            "batch.every",
        ),
        (json!({"template": "{\"text\": \"x\"}"}), "template"),
    ] {
        let (code, v) = api.patch(&format!("/v1/webhooks/{id}"), body.clone()).await;
        assert_eq!(code, 400, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
    }
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_shape_the_body_escape_hostile_values_and_a_failed_render_is_dead_alone() {
    let db = TestDb::new("wh_template");
    write(&db, ITEMS).await;
    let (server, token) = serve(&db, &[]).await;
    let api = api(&db, &server, "acme").await;
    let rx = Receiver::ok().await;
    let chat = api
        .create(json!({"url": rx.url("/chat"),
            "template": "{\"text\": \"{{type}} on {{subject}}: {{data.new.color}}\", \"n\": {{data.new.n}}, \"row\": {{json data.new}}}"}))
        .await;
    assert_eq!(chat["template_content_type"], "application/json");
    let plain = api
        .create(
            json!({"url": rx.url("/plain"), "template": "{{type}} {{data.new.color}}",
            "template_content_type": "text/plain; charset=utf-8"}),
        )
        .await;
    // Inserts have no `old`: their render fails; updates render.
    let was = api
        .create(
            json!({"url": rx.url("/was"), "template": "{\"text\": \"was {{data.old.color}}\"}"}),
        )
        .await;
    let hostile = "\"}], \"x\": 1, \\ \n\t\u{2028} {{type}} </script>";
    db.client()
        .await
        .execute("INSERT INTO items VALUES (1, 'acme', $1, 7)", &[&hostile])
        .await
        .expect("insert");
    write(&db, "UPDATE items SET color = 'blue' WHERE id = 1").await;
    rx.wait_until(PATIENCE, "chat and plain got both, /was the update", |r| {
        let on = |p: &str| r.iter().filter(|x| x.path == p).count();
        on("/chat") >= 2 && on("/plain") >= 2 && on("/was") >= 1
    })
    .await;
    let got = rx.received();
    let (_, insert_event) = api.get("/v1/events/1").await;
    let on = |p: &str| -> Vec<&common::receiver::Received> {
        got.iter().filter(|x| x.path == p).collect()
    };
    // Unordered endpoints may receive the two events in either order: pick
    // the insert's request (seq 1) by its id.
    let insert_on = |p: &str| -> &common::receiver::Received {
        on(p)
            .into_iter()
            .find(|x| x.header("webhook-id") == "msg_1")
            .unwrap_or_else(|| panic!("{p} received the insert"))
    };
    let first = insert_on("/chat");
    assert_eq!(first.header("content-type"), "application/json");
    let body: Value = serde_json::from_str(&first.body).expect("a templated JSON body is JSON");
    assert_eq!(
        body,
        json!({
            "text": format!("row.inserted on {}: {hostile}", insert_event["subject"].as_str().expect("subject")),
            "n": 7,
            "row": insert_event["data"]["new"],
        })
    );
    let text = insert_on("/plain");
    assert_eq!(text.header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(text.body, format!("row.inserted {hostile}"));
    let was_got = on("/was");
    assert_eq!(was_got.len(), 1, "only the update rendered");
    let body: Value = serde_json::from_str(&was_got[0].body).expect("json");
    assert_eq!(body, json!({"text": format!("was {hostile}")}));
    // The insert's delivery to /was is dead with the reason; the endpoint
    // is still enabled and took the next event.
    let was_id = was["id"].as_str().expect("id");
    let ds = wait_deliveries(&api, was_id, "both recorded", |ds| {
        ds.len() == 2
            && ds
                .iter()
                .all(|d| d["status"] == "dead" || d["status"] == "delivered")
    })
    .await;
    let dead: Vec<&Value> = ds.iter().filter(|d| d["status"] == "dead").collect();
    assert_eq!(dead.len(), 1, "{ds:?}");
    assert_eq!(dead[0]["seq"], 1);
    let error = dead[0]["attempt_log"][0]["error"].as_str().unwrap_or("");
    assert!(
        error.contains("template") && error.contains("data.old.color"),
        "{error}"
    );
    assert!(dead[0]["attempt_log"][0]["http_status"].is_null());
    let (_, e) = api.get(&format!("/v1/webhooks/{was_id}")).await;
    assert_eq!(e["enabled"], true, "{e}");
    // Bad templates are refused when saved, naming `template`.
    let plain_id = plain["id"].as_str().expect("id");
    for (body, param) in [
        (
            json!({"template": "{\"text\": {{upper type}}}", "template_content_type": null}),
            "template",
        ),
        (
            json!({"template": "{\"text\": \"{{type}}\"", "template_content_type": null}),
            "template",
        ),
        (
            json!({"template_content_type": "not a type"}),
            "template_content_type",
        ),
        (json!({"batch": {"max_events": 2}}), "template"),
    ] {
        let (code, v) = api
            .patch(&format!("/v1/webhooks/{plain_id}"), body.clone())
            .await;
        assert_eq!(code, 400, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
    }
    // null removes the template (and its content type): envelopes again.
    let (code, v) = api
        .patch(
            &format!("/v1/webhooks/{plain_id}"),
            json!({"template": null}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert!(
        v["template"].is_null() && v["template_content_type"].is_null(),
        "{v}"
    );
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_bounds_split_batches_and_make_oversized_renders_dead() {
    let db = TestDb::new("wh_bytes");
    write(&db, ITEMS).await;
    let bounds = [
        ("SLUICE_WEBHOOKS_BATCH_MAX_BYTES", "1500"),
        ("SLUICE_WEBHOOKS_TEMPLATE_MAX_BYTES", "100"),
    ];
    let (server, token) = serve(&db, &bounds).await;
    let api = api(&db, &server, "acme").await;
    let rx = Receiver::ok().await;
    let ep = api
        .create(json!({"url": rx.url("/b"), "batch": {"max_events": 50, "max_wait_ms": 0}}))
        .await;
    let big = api
        .create(json!({"url": rx.url("/t"), "template": "{\"all\": {{json data}}}"}))
        .await;
    write(
        &db,
        "INSERT INTO items SELECT g, 'acme', repeat('x', 200), g FROM generate_series(1, 12) g",
    )
    .await;
    rx.wait_until(PATIENCE, "12 batched events", |r| {
        r.iter()
            .filter(|x| x.path == "/b")
            .map(|x| x.seqs().len())
            .sum::<usize>()
            >= 12
    })
    .await;
    let got: Vec<_> = rx
        .received()
        .into_iter()
        .filter(|r| r.path == "/b")
        .collect();
    let mut seqs: Vec<i64> = Vec::new();
    for r in &got {
        assert!(
            r.body.len() <= 1500 || r.seqs().len() == 1,
            "{} bytes, {} events",
            r.body.len(),
            r.seqs().len()
        );
        seqs.extend(r.seqs());
    }
    seqs.sort();
    assert_eq!(seqs, (1..=12).collect::<Vec<i64>>(), "every event once");
    assert!(got.len() > 1, "the budget split the 12 events");
    // The events left out of a request were not charged an attempt.
    let id = ep["id"].as_str().expect("id");
    let ds = wait_deliveries(&api, id, "all delivered", |ds| {
        ds.len() == 12 && ds.iter().all(|d| d["status"] == "delivered")
    })
    .await;
    assert!(ds.iter().all(|d| d["attempts"] == 1), "{ds:?}");
    // A render over its bound is dead, with the reason.
    let big_id = big["id"].as_str().expect("id");
    let ds = wait_deliveries(&api, big_id, "oversized renders dead", |ds| {
        ds.len() == 12 && ds.iter().all(|d| d["status"] == "dead")
    })
    .await;
    let error = ds[0]["attempt_log"][0]["error"].as_str().unwrap_or("");
    assert!(error.contains("limit of 100 bytes"), "{error}");
    assert!(rx.received().iter().all(|r| r.path != "/t"));
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_is_retried_whole_under_its_id_and_its_deliveries_share_each_outcome() {
    let db = TestDb::new("wh_batch_retry");
    write(&db, ITEMS).await;
    let (server, token) = serve(&db, &[]).await;
    let api = api(&db, &server, "acme").await;
    // /flaky fails each request once; /down always.
    let rx = Receiver::start(Arc::new(|r, before| {
        if r.path == "/flaky" && before > 0 {
            Answer::Status(200)
        } else {
            Answer::Status(503)
        }
    }))
    .await;
    let batch = json!({"max_events": 3, "max_wait_ms": 200});
    let flaky = api
        .create(json!({"url": rx.url("/flaky"), "batch": batch, "retry_schedule": "0s,100ms"}))
        .await;
    let down = api
        .create(
            json!({"url": rx.url("/down"), "batch": batch, "retry_schedule": "0s,100ms",
            "max_attempts": 2}),
        )
        .await;
    write(
        &db,
        "INSERT INTO items SELECT g, 'acme', 'red', g FROM generate_series(1, 9) g",
    )
    .await;
    for (id, status) in [(&flaky["id"], "delivered"), (&down["id"], "dead")] {
        let id = id.as_str().expect("id");
        let ds = wait_deliveries(&api, id, status, |ds| {
            ds.len() == 9 && ds.iter().all(|d| d["status"] == status)
        })
        .await;
        let mut by_request: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
        for d in &ds {
            assert_eq!(d["attempts"], 2, "{d}");
            let log = d["attempt_log"].as_array().expect("log");
            assert_eq!(log.len(), 2, "{d}");
            assert!(log.iter().all(|a| a["request"] == d["request"]), "{d}");
            by_request
                .entry(d["request"].as_str().expect("request").to_owned())
                .or_default()
                .push(d);
        }
        for (request, members) in &by_request {
            assert!(members.len() <= 3, "{request}: {members:?}");
            // One request, one outcome: the same send time and answer for all.
            for i in 0..2 {
                let first = &members[0]["attempt_log"][i];
                for d in members {
                    let a = &d["attempt_log"][i];
                    assert_eq!(a["at"], first["at"], "{request}: {members:?}");
                    assert_eq!(a["http_status"], first["http_status"]);
                }
            }
        }
    }
    let got = rx.received();
    for path in ["/flaky", "/down"] {
        let mut sent: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for r in got.iter().filter(|r| r.path == path) {
            sent.entry(r.header("webhook-id"))
                .or_default()
                .push(&r.body);
        }
        for (msg, bodies) in &sent {
            assert_eq!(bodies.len(), 2, "{path} {msg}: sent twice");
            assert_eq!(bodies[0], bodies[1], "{path} {msg}: the same body");
        }
        let seqs: BTreeSet<i64> = got
            .iter()
            .filter(|r| r.path == path)
            .flat_map(|r| r.seqs())
            .collect();
        assert_eq!(seqs.len(), 9, "{path}");
    }
    stop_server(server, token).await;
}

/// Endpoints declared in the configuration are created at start, updated
/// in place when their declaration changes, disabled (never deleted) when
/// it goes, and owned by the configuration: the API may pause one but not
/// change, delete or re-key it. API-created endpoints are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_declared_in_the_configuration_are_reconciled_at_start() {
    let db = TestDb::new("wh_declared");
    write(&db, ITEMS).await;
    let rx = Receiver::ok().await;
    let secret = sluice::webhooks::sign::generate_secret();
    let declare = |eps: String| -> Vec<(String, String)> {
        vec![
            ("SLUICE_WEBHOOKS_ENDPOINTS".to_owned(), eps),
            ("WH_DECLARED_SECRET".to_owned(), secret.clone()),
        ]
    };
    let start = |env: Vec<(String, String)>| {
        let db = &db;
        async move {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            serve(db, &env).await
        }
    };
    let first = format!(
        r#"[{{name="billing", tenant="acme", url="{}", topics=["tables/public.items/*"], secret_env="WH_DECLARED_SECRET", headers={{X-Team="billing-team"}}}},
            {{name="audit", tenant="acme", url="{}"}}]"#,
        rx.url("/billing"),
        rx.url("/audit")
    );
    let (server, token) = start(declare(first)).await;
    let api1 = api(&db, &server, "acme").await;
    let by_api = api1
        .create(json!({"url": rx.url("/api"), "topics": ["tables/public.items/*"]}))
        .await;
    let (_, list) = api1.get("/v1/webhooks").await;
    let find = |list: &Value, name: &str| -> Value {
        list["webhooks"]
            .as_array()
            .expect("webhooks")
            .iter()
            .find(|w| w["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no endpoint named {name}: {list}"))
    };
    let billing = find(&list, "billing");
    let audit = find(&list, "audit");
    assert_eq!(billing["managed_by"], "config");
    assert_eq!(by_api["managed_by"], "api");
    assert_eq!(
        billing["headers"]["X-Team"], "bi…",
        "header values masked on read"
    );
    let billing_id = billing["id"].as_str().expect("id").to_owned();
    let audit_id = audit["id"].as_str().expect("id").to_owned();

    insert(&db, "acme", [1]).await;
    rx.wait_until(PATIENCE, "three endpoints got seq 1", |r| {
        ["/billing", "/audit", "/api"]
            .iter()
            .all(|p| r.iter().any(|x| x.path == *p))
    })
    .await;
    // Signed with the secret from the environment; the header arrives.
    let got = rx.received();
    let b = got.iter().find(|r| r.path == "/billing").expect("billing");
    assert_eq!(b.header("x-team"), "billing-team");
    let key = sluice::webhooks::sign::secret_key(&secret).expect("secret");
    let ts: i64 = b.header("webhook-timestamp").parse().expect("timestamp");
    assert!(sluice::webhooks::sign::verify(
        &key,
        b.header("webhook-id"),
        ts,
        b.body.as_bytes(),
        b.header("webhook-signature")
    ));

    // The configuration owns it.
    let (code, v) = api1
        .patch(
            &format!("/v1/webhooks/{billing_id}"),
            json!({"url": rx.url("/elsewhere")}),
        )
        .await;
    assert_eq!(
        (code, v["error"]["code"].clone()),
        (409, json!("declared_in_config")),
        "{v}"
    );
    let (code, v) = api1
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/webhooks/{audit_id}"),
            None,
        )
        .await;
    assert_eq!(code, 409, "{v}");
    let (code, v) = api1
        .post(
            &format!("/v1/webhooks/{billing_id}/rotate-secret"),
            json!({}),
        )
        .await;
    assert_eq!(code, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("WH_DECLARED_SECRET"),
        "{v}"
    );
    // Pausing is the API's to do.
    let (code, v) = api1
        .patch(
            &format!("/v1/webhooks/{audit_id}"),
            json!({"enabled": false}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    let (code, _) = api1
        .patch(
            &format!("/v1/webhooks/{audit_id}"),
            json!({"enabled": true}),
        )
        .await;
    assert_eq!(code, 200);
    stop_server(server, token).await;

    // Billing moves, audit goes, search comes.
    let second = format!(
        r#"[{{name="billing", tenant="acme", url="{}", topics=["tables/public.items/*"], secret_env="WH_DECLARED_SECRET"}},
            {{name="search", tenant="acme", url="{}", batch={{max_events=10, max_wait_ms=0}}}}]"#,
        rx.url("/billing2"),
        rx.url("/search")
    );
    let (server, token) = start(declare(second)).await;
    let api2 = api(&db, &server, "acme").await;
    let (_, list) = api2.get("/v1/webhooks").await;
    let billing = find(&list, "billing");
    assert_eq!(billing["id"], billing_id.as_str(), "updated in place");
    assert_eq!(billing["url"], rx.url("/billing2"));
    assert_eq!(billing["headers"], json!({}));
    let audit = find(&list, "audit");
    assert_eq!(audit["enabled"], false);
    assert_eq!(audit["disabled_reason"], "removed from the configuration");
    let search = find(&list, "search");
    assert_eq!(search["enabled"], true);
    assert_eq!(search["batch"]["max_events"], 10);
    let api_one = list["webhooks"]
        .as_array()
        .expect("webhooks")
        .iter()
        .find(|w| w["id"] == by_api["id"])
        .cloned()
        .expect("the API's endpoint is still there");
    assert_eq!(api_one["enabled"], true);

    insert(&db, "acme", [2]).await;
    rx.wait_until(PATIENCE, "seq 2 at billing2, search and api", |r| {
        ["/billing2", "/search", "/api"]
            .iter()
            .all(|p| r.iter().any(|x| x.path == *p))
    })
    .await;
    assert_eq!(
        rx.received().iter().filter(|r| r.path == "/audit").count(),
        1,
        "the removed endpoint got nothing more"
    );
    // No longer declared: the API may delete it now.
    let (code, v) = api2
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/webhooks/{audit_id}"),
            None,
        )
        .await;
    assert_eq!(code, 204, "{v}");
    stop_server(server, token).await;
}
