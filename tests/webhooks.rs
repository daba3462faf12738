//! Webhooks against a real Postgres, a real server and a test receiver:
//! signatures checked by the PyPI `standardwebhooks` package (through a
//! secret rotation), failures of every kind retried on schedule with a
//! stable `webhook-id`, dead letters and replay, 410, rate limits, ordered
//! endpoints, and bad input.

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
    assert!(String::from_utf8_lossy(&out.stdout).contains("verified 6"));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let db = TestDb::new("wh_retry_after");
    write(&db, ITEMS).await;
    let (server, token) = serve(&db, &[]).await;
    let api = api(&db, &server, "acme").await;
    // The schedule says 300 ms; the receiver asks for 2 s.
    let rx = Receiver::start(Arc::new(|_, before| {
        if before == 0 {
            Answer::RetryAfter(429, 2)
        } else {
            Answer::Status(200)
        }
    }))
    .await;
    api.create(json!({"url": rx.url("/ra")})).await;
    insert(&db, "acme", 1..=1).await;
    rx.wait_until(PATIENCE, "the retry", |r| r.len() >= 2).await;
    let got = rx.received();
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "retried after {gap:?}, before Retry-After"
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
