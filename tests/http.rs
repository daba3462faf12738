//! The HTTP API against a real Postgres and a real server on a free port:
//! SSE with an independent client (Python httpx-sse), randomized tenant
//! isolation, a slow subscriber, NDJSON export and tail, bad input.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::http::{get, request, stream, stream_second, Stream};
use common::selection::{filter_ok, topic_ok, FILTERS, TOPICS};
use common::{
    all_events, key, key_and_info, serve_items, stop_server, wait_for_events, TestDb, PATIENCE,
};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sluice::auth::keys::create_key;
use sluice::auth::Role;
use sluice::server::Server;
use tokio_util::sync::CancellationToken;

const ITEMS: &str =
    "CREATE TABLE items (id int PRIMARY KEY, tenant text NOT NULL, color text, n int);
                     ALTER TABLE items REPLICA IDENTITY FULL;";

/// Heartbeats after a second of silence, so tails and streams show them.
const HEARTBEAT: &[(&str, &str)] = &[("SLUICE_HTTP_HEARTBEAT_SECS", "1")];

async fn serve(db: &TestDb, extra: &[(&str, &str)]) -> (Server, CancellationToken) {
    serve_items(db, &[HEARTBEAT, extra].concat()).await
}

fn url_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sse_client_resumes_with_last_event_id_exactly_once() {
    let db = TestDb::new("pysse");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db, &[]).await;
    let anon = key(&db, "acme", Role::Anon).await;
    // Half the workload before the client connects, half while it reads.
    let write = |from: i32, to: i32| {
        format!(
            "INSERT INTO items SELECT g, CASE WHEN g % 2 = 0 THEN 'acme' ELSE 'globex' END, 'red', g FROM generate_series({from}, {to}) g;
             UPDATE items SET n = n + 100 WHERE id BETWEEN {from} AND {to} AND id % 4 = 0;
             DELETE FROM items WHERE id BETWEEN {from} AND {to} AND id % 8 = 0;"
        )
    };
    c.batch_execute(&write(1, 40)).await.expect("first half");
    let expected_first: usize = 20 + 10 + 5;
    let total = expected_first * 2;
    let base = format!("http://{}", server.addr);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/sse_resume.py");
    let child = tokio::process::Command::new("python3")
        .args([script, &base, &anon, &total.to_string(), "12"])
        .output();
    let writer = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.batch_execute(&write(41, 80)).await.expect("second half");
    };
    let (out, ()) = tokio::join!(tokio::time::timeout(PATIENCE, child), writer);
    let out = out
        .expect("python client finished in time")
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let received: Vec<Value> = serde_json::from_slice(&out.stdout).expect("client prints JSON");
    stop_server(server, token).await;

    let log = all_events(&c).await;
    let expected: Vec<i64> = log
        .iter()
        .filter(|e| e["tenant"] == "acme")
        .filter_map(|e| e["seq"].as_i64())
        .collect();
    assert_eq!(expected.len(), total);
    let got: Vec<i64> = received
        .iter()
        .filter_map(|r| r["envelope"]["seq"].as_i64())
        .collect();
    assert_eq!(
        got, expected,
        "every acme event exactly once, in order, across the reconnect"
    );
    for r in &received {
        assert_eq!(r["envelope"]["tenant"], "acme");
        assert_eq!(r["id"], r["envelope"]["seq"].to_string());
        assert_eq!(r["event"], r["envelope"]["type"]);
    }
    let types: std::collections::BTreeSet<&str> = received
        .iter()
        .filter_map(|r| r["event"].as_str())
        .collect();
    assert!(
        types.contains("row.inserted")
            && types.contains("row.updated")
            && types.contains("row.deleted")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_subscribers_get_exactly_their_tenants_matching_events() {
    let seed: u64 = std::env::var("SLUICE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("isolation test seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let db = TestDb::new("iso");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db, &[]).await;
    let tenants = ["t0", "t1", "t2", "t3", "t4"];
    let mut keys = BTreeMap::new();
    for t in tenants {
        keys.insert(t, key(&db, t, Role::Anon).await);
    }
    struct Sub {
        tenant: &'static str,
        topic: usize,
        filter: usize,
        stream: Stream,
    }
    let mut subs = Vec::new();
    for _ in 0..20 {
        let tenant = tenants[rng.gen_range(0..tenants.len())];
        let (topic, filter) = (
            rng.gen_range(0..TOPICS.len()),
            rng.gen_range(0..FILTERS.len()),
        );
        let mut path = format!("/v1/events/subscribe?apikey={}&from=1", keys[tenant]);
        if !TOPICS[topic].is_empty() {
            path.push_str(&format!("&topic={}", url_encode(TOPICS[topic])));
        }
        if !FILTERS[filter].is_empty() {
            path.push_str(&format!("&filter={}", url_encode(FILTERS[filter])));
        }
        let s = stream(server.addr, &path, &[]).await;
        assert_eq!(s.status, 200);
        subs.push(Sub {
            tenant,
            topic,
            filter,
            stream: s,
        });
    }
    // A random workload across tenants, in random transactions.
    let colors = ["red", "blue", "green"];
    let mut next_id = 1;
    let mut live_ids: Vec<i32> = Vec::new();
    for _ in 0..60 {
        let mut sql = String::from("BEGIN;");
        for _ in 0..rng.gen_range(1..6) {
            let op = rng.gen_range(0..10);
            if op < 5 || live_ids.is_empty() {
                let t = tenants[rng.gen_range(0..tenants.len())];
                sql.push_str(&format!(
                    "INSERT INTO items VALUES ({next_id}, '{t}', '{}', {});",
                    colors[rng.gen_range(0..3)],
                    rng.gen_range(0..10)
                ));
                live_ids.push(next_id);
                next_id += 1;
            } else if op < 8 {
                let id = live_ids[rng.gen_range(0..live_ids.len())];
                sql.push_str(&format!(
                    "UPDATE items SET color = '{}', n = {} WHERE id = {id};",
                    colors[rng.gen_range(0..3)],
                    rng.gen_range(0..10)
                ));
            } else {
                let id = live_ids.swap_remove(rng.gen_range(0..live_ids.len()));
                sql.push_str(&format!("DELETE FROM items WHERE id = {id};"));
            }
        }
        sql.push_str("COMMIT;");
        c.batch_execute(&sql).await.expect("workload");
    }
    // A last row per tenant that every subscription matches: a subscriber
    // that receives it has received everything before it.
    for t in tenants {
        c.batch_execute(&format!(
            "INSERT INTO items VALUES ({next_id}, '{t}', 'red', 1000)"
        ))
        .await
        .expect("sentinel");
        next_id += 1;
    }
    let log = all_events(&c).await;
    for (i, sub) in subs.iter_mut().enumerate() {
        let expected: Vec<i64> = log
            .iter()
            .filter(|e| e["tenant"] == sub.tenant)
            .filter(|e| topic_ok(sub.topic, e["topic"].as_str().unwrap_or("")))
            .filter(|e| filter_ok(sub.filter, &e["data"]))
            .filter_map(|e| e["seq"].as_i64())
            .collect();
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let ev = sub.stream.expect_event(PATIENCE).await;
            let env: Value = serde_json::from_str(&ev.data).expect("envelope");
            assert_eq!(
                env["tenant"], sub.tenant,
                "subscriber {i} got another tenant's event: {env}"
            );
            got.push(env["seq"].as_i64().expect("seq"));
        }
        assert_eq!(
            got, expected,
            "subscriber {i} (tenant {}, topic {:?}, filter {:?})",
            sub.tenant, TOPICS[sub.topic], FILTERS[sub.filter]
        );
    }
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_catches_up_from_the_log_and_misses_nothing() {
    let db = TestDb::new("slow");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db, &[("SLUICE_HUB_SUBSCRIBER_QUEUE", "8")]).await;
    let anon = key(&db, "acme", Role::Anon).await;
    let path = format!("/v1/events/subscribe?apikey={anon}");
    let mut slow = stream(server.addr, &path, &[]).await;
    let mut fast = stream(server.addr, &path, &[]).await;
    // The slow one reads nothing while 30 transactions of 50 rows commit.
    let writer = async {
        for i in 0..30 {
            c.batch_execute(&format!(
                "INSERT INTO items SELECT g, 'acme', 'red', g FROM generate_series({}, {}) g",
                i * 50 + 1,
                i * 50 + 50
            ))
            .await
            .expect("write");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let reader = async {
        let mut seqs = Vec::new();
        while seqs.len() < 1500 {
            let e = fast.expect_event(PATIENCE).await;
            seqs.push(e.id.expect("id").parse::<i64>().expect("seq"));
        }
        seqs
    };
    let ((), fast_seqs) = tokio::join!(writer, reader);
    wait_for_events(&c, 1500).await;
    let mut slow_seqs = Vec::new();
    while slow_seqs.len() < 1500 {
        let e = slow.expect_event(PATIENCE).await;
        slow_seqs.push(e.id.expect("id").parse::<i64>().expect("seq"));
    }
    let expected: Vec<i64> = (1..=1500).collect();
    assert_eq!(fast_seqs, expected);
    assert_eq!(slow_seqs, expected);
    let metrics = get(server.addr, "/metrics", &[]).await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    let catchups: f64 = text
        .lines()
        .find(|l| l.starts_with("sluice_subscriber_catchups_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("catch-up metric");
    assert!(
        catchups >= 1.0,
        "the slow subscriber left the live path at least once:\n{text}"
    );
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_exports_a_range_and_tails_from_a_seq() {
    let db = TestDb::new("ndjson");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db, &[]).await;
    let service = key(&db, "acme", Role::Service).await;
    let auth = format!("Bearer {service}");
    let hdr = [("Authorization", auth.as_str())];
    c.batch_execute("INSERT INTO items SELECT g, CASE WHEN g <= 20 THEN 'acme' ELSE 'globex' END, 'red', g FROM generate_series(1, 30) g")
        .await
        .expect("writes");
    wait_for_events(&c, 30).await;
    let r = get(server.addr, "/v1/events?format=ndjson&from=5&to=12", &hdr).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<Value> = String::from_utf8_lossy(&r.body)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one envelope per line"))
        .collect();
    let seqs: Vec<i64> = lines.iter().filter_map(|l| l["seq"].as_i64()).collect();
    assert_eq!(seqs, (5..=12).collect::<Vec<_>>());
    // JSON pages with Accept-driven NDJSON equivalence.
    let page = get(server.addr, "/v1/events?from=1&limit=7", &hdr)
        .await
        .json();
    assert_eq!(page["events"].as_array().map(Vec::len), Some(7));
    assert_eq!(page["next_from"], 8);
    let one = get(server.addr, "/v1/events/3", &hdr).await;
    assert_eq!(one.json()["seq"], 3);
    let other_tenant = get(server.addr, "/v1/events/25", &hdr).await;
    assert_eq!(
        other_tenant.status, 404,
        "another tenant's event is not found"
    );
    let stats = get(server.addr, "/v1/stats?window=1h", &hdr).await.json();
    assert_eq!(stats["total"], 20);
    assert_eq!(stats["by_type"]["row.inserted"], 20);

    // Tail from seq 18: the last three acme events, then live ones.
    let mut tail = stream(
        server.addr,
        "/v1/events?format=ndjson&follow=true&from=18",
        &hdr,
    )
    .await;
    assert_eq!(tail.status, 200);
    let mut got = Vec::new();
    let writer = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.batch_execute(
            "INSERT INTO items SELECT g, 'acme', 'blue', g FROM generate_series(31, 35) g",
        )
        .await
        .expect("live writes");
    };
    let reader = async {
        while got.len() < 8 {
            let line = tokio::time::timeout(PATIENCE, tail.next_line())
                .await
                .expect("line in time")
                .expect("open");
            let v: Value = serde_json::from_str(&line).expect("json line");
            if v.get("heartbeat").is_some() {
                continue;
            }
            got.push(v["seq"].as_i64().expect("seq"));
        }
    };
    tokio::join!(writer, reader);
    assert_eq!(got, vec![18, 19, 20, 31, 32, 33, 34, 35]);
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_precise_4xx_and_the_service_keeps_going() {
    let db = TestDb::new("badinput");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db, &[]).await;
    let anon = key(&db, "acme", Role::Anon).await;
    let service = key(&db, "acme", Role::Service).await;
    let deep = (0..12).fold(r#"{"field":"n","op":"eq","value":1}"#.to_owned(), |f, _| {
        format!(r#"{{"not":{f}}}"#)
    });
    let huge = "x".repeat(9000);
    let sub = |q: &str| format!("/v1/events/subscribe?apikey={anon}&{q}");
    let cases: Vec<(String, u16, Option<&str>)> = vec![
        ("/v1/events/subscribe".into(), 401, None),
        ("/v1/events/subscribe?apikey=sk_anon_nope".into(), 401, None),
        (format!("/v1/events/subscribe?apikey={service}"), 403, None),
        (sub("filter=%7Bnot-json"), 400, Some("filter")),
        (
            sub(&format!(
                "filter={}",
                url_encode(r#"{"field":"n","op":"like","value":1}"#)
            )),
            400,
            Some("filter"),
        ),
        (
            sub(&format!("filter={}", url_encode(&deep))),
            400,
            Some("filter"),
        ),
        (sub("topic=a%2F%2Fb"), 400, Some("topic")),
        (sub("table=public.nope"), 400, Some("table")),
        (sub("from=-1"), 400, Some("from")),
        (sub("from=abc"), 400, Some("from")),
        (sub("colour=red"), 400, Some("colour")),
        (sub(&format!("topic={huge}")), 400, Some("query")),
        (sub("tenant=globex"), 400, Some("tenant")),
        (
            format!("/v1/events?apikey={anon}&limit=0"),
            400,
            Some("limit"),
        ),
        (
            format!("/v1/events?apikey={anon}&format=xml"),
            400,
            Some("format"),
        ),
        (
            format!("/v1/events?apikey={anon}&follow=true"),
            400,
            Some("follow"),
        ),
        (
            format!("/v1/events?apikey={anon}&since=yesterday"),
            400,
            Some("since"),
        ),
        (format!("/v1/events/abc?apikey={anon}"), 400, Some("seq")),
        (format!("/v1/events/999999?apikey={anon}"), 404, None),
        (
            format!("/v1/stats?apikey={anon}&window=1w"),
            400,
            Some("window"),
        ),
    ];
    for (path, status, param) in &cases {
        let r = get(server.addr, path, &[]).await;
        assert_eq!(
            r.status,
            *status,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let body = r.json();
        assert_eq!(body["error"]["status"], *status, "{path}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{path}"
        );
        if let Some(p) = param {
            assert_eq!(body["error"]["param"], *p, "{path}: {body}");
        }
    }
    // A position pruned by retention is an explicit gap, not an empty stream.
    c.batch_execute("INSERT INTO items VALUES (1, 'acme', 'red', 1)")
        .await
        .expect("write");
    wait_for_events(&c, 1).await;
    c.batch_execute("UPDATE sluice.retention SET pruned_through = 5")
        .await
        .expect("watermark");
    let r = get(server.addr, &sub("from=3"), &[]).await;
    assert_eq!(r.status, 410);
    assert_eq!(r.json()["error"]["oldest"], 6);
    // Still healthy, and still serving.
    assert_eq!(get(server.addr, "/livez", &[]).await.status, 200);
    let ok = get(
        server.addr,
        &format!("/v1/events?apikey={anon}&from=6"),
        &[],
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["events"], json!([]));
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_answer() {
    let db = TestDb::new("health");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db, &[]).await;
    let addr: SocketAddr = server.addr;
    assert_eq!(get(addr, "/livez", &[]).await.json()["status"], "ok");
    // The source connects shortly after start; readiness follows.
    let start = std::time::Instant::now();
    loop {
        let r = get(addr, "/readyz", &[]).await;
        if r.status == 200 {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "never ready: {}",
            String::from_utf8_lossy(&r.body)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = String::from_utf8_lossy(&get(addr, "/metrics", &[]).await.body).to_string();
    for name in [
        "sluice_events_appended_total",
        "sluice_subscribers{transport=\"sse\"}",
        "sluice_subscriber_catchups_total",
        "sluice_replication_lag_bytes",
        "sluice_replication_lag_seconds",
    ] {
        assert!(m.contains(name), "metrics lack {name}:\n{m}");
    }
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_key_ends_its_open_stream_and_refuses_new_requests() {
    let db = TestDb::new("revoke");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db, &[("SLUICE_AUTH_REVOCATION_CHECK_SECS", "1")]).await;
    let (info, anon) = key_and_info(&db, "acme", Role::Anon).await;
    let path = format!("/v1/events/subscribe?apikey={anon}");
    let mut s = stream(server.addr, &path, &[]).await;
    assert_eq!(s.status, 200);
    c.batch_execute("INSERT INTO items VALUES (1, 'acme', 'red', 1)")
        .await
        .expect("write");
    let first = s.expect_event(PATIENCE).await;
    assert_eq!(first.event.as_deref(), Some("row.inserted"));
    assert!(sluice::auth::keys::revoke_key(&c, info.id)
        .await
        .expect("revoke"));
    let end = s.expect_event(PATIENCE).await;
    // Not `error`: a browser's EventSource would take it for a failed
    // connection (and reconnect).
    assert_eq!(end.event.as_deref(), Some("revoked"), "{end:?}");
    let data: Value = serde_json::from_str(&end.data).expect("JSON end frame");
    assert_eq!(data["code"], "revoked", "{end:?}");
    assert!(
        s.next_event().await.is_none(),
        "the stream ends after the revoked frame"
    );
    let again = get(server.addr, &path, &[]).await;
    assert_eq!(again.status, 401);
    assert_eq!(again.json()["error"]["code"], "revoked");
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_jwt_subscribes_to_its_tenant_only() {
    let db = TestDb::new("jwt");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let secret = "a-test-secret-that-is-at-least-32-bytes-long";
    let (server, token) = serve(&db, &[("SLUICE_AUTH_JWT_HS256_SECRET", secret)]).await;
    let exp = chrono::Utc::now().timestamp() + 600;
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"tenant": "globex", "role": "anon", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign");
    let auth = format!("Bearer {jwt}");
    let mut s = stream(
        server.addr,
        "/v1/events/subscribe?from=1",
        &[("Authorization", &auth)],
    )
    .await;
    assert_eq!(s.status, 200);
    c.batch_execute("INSERT INTO items VALUES (1, 'acme', 'red', 1), (2, 'globex', 'red', 2)")
        .await
        .expect("write");
    let e = s.expect_event(PATIENCE).await;
    let env: Value = serde_json::from_str(&e.data).expect("json");
    assert_eq!(env["tenant"], "globex");
    assert_eq!(env["data"]["new"]["id"], 2);
    let forged = format!("Bearer {}x", jwt);
    let r = get(server.addr, "/v1/events", &[("Authorization", &forged)]).await;
    assert_eq!(r.status, 401);
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_in_seq_order_and_readers_get_an_explicit_gap() {
    let db = TestDb::new("retain");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db, &[]).await;
    let anon = key(&db, "acme", Role::Anon).await;
    c.batch_execute("INSERT INTO items SELECT g, 'acme', 'red', g FROM generate_series(1, 10) g")
        .await
        .expect("old rows");
    wait_for_events(&c, 10).await;
    // Everything so far is older than a zero retention.
    let watermark = sluice::log::retention::prune_once(&c, Duration::ZERO)
        .await
        .expect("prune");
    assert_eq!(watermark, 10);
    c.batch_execute("INSERT INTO items VALUES (11, 'acme', 'red', 11)")
        .await
        .expect("new row");
    wait_for_events(&c, 11).await;
    let left: i64 = c
        .query_one("SELECT count(*) FROM sluice.events", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 1, "only the event after the watermark remains");
    // A restart after everything old was pruned continues above the watermark.
    stop_server(server, token).await;
    let watermark = sluice::log::retention::prune_once(&c, Duration::ZERO)
        .await
        .expect("prune");
    assert_eq!(watermark, 11);
    let (server, token) = serve(&db, &[]).await;
    c.batch_execute("INSERT INTO items VALUES (12, 'acme', 'red', 12)")
        .await
        .expect("after restart");
    let log = wait_for_events(&c, 12).await;
    let seqs: Vec<i64> = log.iter().filter_map(|e| e["seq"].as_i64()).collect();
    assert_eq!(seqs, vec![12], "seqs are never handed out twice");
    let gone = get(
        server.addr,
        &format!("/v1/events?apikey={anon}&from=4"),
        &[],
    )
    .await;
    assert_eq!(gone.status, 410);
    assert_eq!(gone.json()["error"]["oldest"], 12);
    // NDJSON chosen by the Accept header, from the oldest available seq.
    let r = get(
        server.addr,
        &format!("/v1/events?apikey={anon}&from=12"),
        &[("Accept", "application/x-ndjson")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<&str> = std::str::from_utf8(&r.body)
        .expect("utf8")
        .lines()
        .collect();
    assert_eq!(lines.len(), 1);
    assert!(lines[0].contains("\"seq\":12"));
    stop_server(server, token).await;
}

/// A subscription that is a connection's first request is streamed by the
/// lean writer (`http::conn`); one that follows another request on a
/// kept-alive connection goes through hyper and axum. Both must give the
/// same stream, and both end with their resume position on shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_stream_the_same_on_fresh_and_kept_alive_connections() {
    let db = TestDb::new("lean_sse");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db, &[]).await;
    let anon = key(&db, "acme", Role::Anon).await;
    c.batch_execute(
        "INSERT INTO items VALUES (1, 'acme', 'red', 1), (2, 'globex', 'red', 2);
         UPDATE items SET n = 10 WHERE id = 1;",
    )
    .await
    .expect("write");
    let path = format!("/v1/events/subscribe?from=1&apikey={anon}");
    let origin = [("Origin", "https://app.example.com")];
    let mut lean = stream(server.addr, &path, &origin).await;
    let mut routed = stream_second(server.addr, "/livez", &path, &origin).await;
    for s in [&lean, &routed] {
        assert_eq!(s.status, 200);
        assert_eq!(s.header("access-control-allow-origin"), Some("*"));
        assert_eq!(s.header("content-type"), Some("text/event-stream"));
        assert_eq!(s.header("cache-control"), Some("no-cache"));
        assert_eq!(s.header("transfer-encoding"), Some("chunked"));
    }
    c.batch_execute("DELETE FROM items WHERE id = 1")
        .await
        .expect("write");
    let mut got = Vec::new();
    for (i, s) in [&mut lean, &mut routed].into_iter().enumerate() {
        let mut events = Vec::new();
        while events.len() < 3 {
            let e = tokio::time::timeout(PATIENCE, s.next_event())
                .await
                .unwrap_or_else(|_| panic!("stream {i}: no event in time after {events:?}"))
                .unwrap_or_else(|| panic!("stream {i} ended after {events:?}"));
            if e.id.is_some() {
                events.push(e);
            }
        }
        got.push(events);
    }
    assert_eq!(got[0], got[1], "both paths carry the same frames");
    let types: Vec<_> = got[0]
        .iter()
        .map(|e| e.event.clone().unwrap_or_default())
        .collect();
    assert_eq!(types, ["row.inserted", "row.updated", "row.deleted"]);
    let last: i64 = got[0][2]
        .id
        .as_deref()
        .and_then(|s| s.parse().ok())
        .expect("seq id");
    token.cancel();
    for s in [&mut lean, &mut routed] {
        let end = loop {
            let e = s.expect_event(PATIENCE).await;
            if e.id.is_none() {
                break e;
            }
        };
        assert_eq!(end.event.as_deref(), Some("shutdown"), "{end:?}");
        let data: Value = serde_json::from_str(&end.data).expect("json");
        assert_eq!(data["resume_from"], last + 1);
        assert!(
            s.next_event().await.is_none(),
            "the stream ends after shutdown"
        );
    }
    server.wait().await.expect("server stops cleanly");
}

/// Browsers on other origins: allowed origins get CORS headers on answers,
/// streams and preflights; others get none (and a 403 preflight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_the_configured_origins_only() {
    let db = TestDb::new("cors");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let app = "https://app.example.com";
    let (server, token) = serve(
        &db,
        &[(
            "SLUICE_HTTP_CORS_ORIGINS",
            "https://other.test, https://app.example.com",
        )],
    )
    .await;
    let anon = key(&db, "acme", Role::Anon).await;
    let ok = get(
        server.addr,
        &format!("/v1/events?apikey={anon}"),
        &[("Origin", app)],
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("access-control-allow-origin"), Some(app));
    // Errors carry the header too, so the page can read why.
    let bad = get(
        server.addr,
        "/v1/events/subscribe?apikey=nope",
        &[("Origin", app)],
    )
    .await;
    assert_eq!(bad.status, 401);
    assert_eq!(bad.header("access-control-allow-origin"), Some(app));
    let s = stream(
        server.addr,
        &format!("/v1/events/subscribe?apikey={anon}"),
        &[("Origin", app)],
    )
    .await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("access-control-allow-origin"), Some(app));
    drop(s);
    let evil = get(server.addr, "/livez", &[("Origin", "https://evil.test")]).await;
    assert_eq!(evil.status, 200);
    assert_eq!(evil.header("access-control-allow-origin"), None);
    let pre = request(
        server.addr,
        "OPTIONS",
        "/v1/events",
        &[
            ("Origin", app),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "apikey"),
        ],
    )
    .await;
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("access-control-allow-origin"), Some(app));
    assert!(pre
        .header("access-control-allow-headers")
        .is_some_and(|h| h.contains("apikey")));
    let denied = request(
        server.addr,
        "OPTIONS",
        "/v1/events",
        &[
            ("Origin", "https://evil.test"),
            ("Access-Control-Request-Method", "GET"),
        ],
    )
    .await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.json()["error"]["code"], "origin_not_allowed");
    stop_server(server, token).await;
}

/// A subscription opened while its events are being appended (committed in
/// Postgres, not yet in the log) still gets every one: whether the hub
/// carries them or the log does, none falls between the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_opened_during_an_append_miss_nothing() {
    let db = TestDb::new("open_race");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db, &[]).await;
    let anon = key(&db, "acme", Role::Anon).await;
    let path = format!("/v1/events/subscribe?from=1&apikey={anon}");
    for i in 1..=25 {
        c.batch_execute(&format!(
            "INSERT INTO items VALUES ({i}, 'acme', 'red', {i})"
        ))
        .await
        .expect("write");
        // No waiting for the log: the stream opens while the row is in flight.
        let mut s = stream(server.addr, &path, &[]).await;
        assert_eq!(s.status, 200);
        let mut ids = Vec::new();
        while ids.len() < i {
            let e = tokio::time::timeout(PATIENCE, s.next_event())
                .await
                .unwrap_or_else(|_| panic!("round {i}: stuck after {ids:?}"))
                .expect("open stream");
            if let Some(id) = e.id {
                ids.push(id.parse::<usize>().expect("seq"));
            }
        }
        assert_eq!(ids, (1..=i).collect::<Vec<_>>(), "round {i}");
    }
    stop_server(server, token).await;
}

/// Snapshot events are stored as record batches (one row per tenant and up
/// to 256 events); every reader of a tenant must still see them one by one,
/// cut exactly at `from`, `to` and `limit`, and never another tenant's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_events_in_record_batches_reach_every_reader_one_by_one() {
    let db = TestDb::new("batches");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    // acme: 600 rows (batches of 256, 256 and 88 per chunk of 1000);
    // globex: 100, interleaved.
    c.batch_execute(
        "INSERT INTO items SELECT g, CASE WHEN g % 7 = 0 AND g <= 700 THEN 'globex' ELSE 'acme' END,
                'c\"' || g, g FROM generate_series(1, 700) g",
    )
    .await
    .expect("rows");
    let acme_ids: Vec<i64> = c
        .query(
            "SELECT id::bigint FROM items WHERE tenant = 'acme' ORDER BY id",
            &[],
        )
        .await
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (server, token) = serve(&db, &[]).await;
    let admin = create_key(&c, None, Role::Admin, None, &serde_json::Map::new(), None)
        .await
        .expect("admin key")
        .1;
    let service = key(&db, "acme", Role::Service).await;
    let anon = key(&db, "acme", Role::Anon).await;
    let hdr_auth = format!("Bearer {service}");
    let hdr = [("Authorization", hdr_auth.as_str())];

    // A browser subscribed before the backfill: its snapshot events come
    // live (from the appender's record batches), or from the log if it
    // falls behind; either way the same envelopes as every other reader.
    let mut sse = stream(
        server.addr,
        &format!("/v1/events/subscribe?apikey={anon}"),
        &[],
    )
    .await;
    assert_eq!(sse.status, 200);
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("http://{}/v1/backfills", server.addr))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(json!({"table": "public.items", "chunk_size": 1000}).to_string())
        .send()
        .await
        .expect("create")
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).expect("json"))
        .expect("body");
    let id = created["id"].as_i64().expect("id");
    let start = std::time::Instant::now();
    let done = loop {
        let b: Value = http
            .get(format!("http://{}/v1/backfills/{id}", server.addr))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .map(|b| serde_json::from_slice(&b).expect("json"))
            .expect("body");
        if b["status"] == "done" {
            break b;
        }
        assert!(start.elapsed() < PATIENCE, "backfill never finished: {b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let first = done["from_seq"].as_i64().expect("from_seq");
    let head: i64 = c
        .query_one("SELECT max(seq) FROM sluice.events", &[])
        .await
        .expect("head")
        .get(0);
    assert_eq!(head - first + 1, 700, "one seq per snapshot event");
    let rows: i64 = c
        .query_one(
            "SELECT count(*) FROM sluice.events WHERE first_seq IS NOT NULL",
            &[],
        )
        .await
        .expect("batch rows")
        .get(0);
    assert!(rows > 0 && rows < 10, "{rows} record batches");

    // NDJSON export of acme from the backfill's first seq: its 600 rows,
    // once each, in seq order, with their values.
    let r = get(
        server.addr,
        &format!("/v1/events?format=ndjson&from={first}"),
        &hdr,
    )
    .await;
    assert_eq!(r.status, 200);
    let lines: Vec<Value> = String::from_utf8_lossy(&r.body)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one envelope per line"))
        .collect();
    let seqs: Vec<i64> = lines.iter().filter_map(|l| l["seq"].as_i64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq order");
    assert!(lines
        .iter()
        .all(|l| l["tenant"] == "acme" && l["type"] == "row.snapshot"));
    let mut ids: Vec<i64> = lines
        .iter()
        .map(|l| l["data"]["new"]["id"].as_i64().expect("id"))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, acme_ids);
    for l in &lines {
        let id = l["data"]["new"]["id"].as_i64().expect("id");
        assert_eq!(l["subject"], format!("public.items/{id}"));
        assert_eq!(l["data"]["new"]["color"], format!("c\"{id}"));
    }

    // A range cut inside batches, a page shorter than a batch, one event.
    let (a, b) = (seqs[100], seqs[130]);
    let r = get(
        server.addr,
        &format!("/v1/events?format=ndjson&from={a}&to={b}"),
        &hdr,
    )
    .await;
    let cut: Vec<i64> = String::from_utf8_lossy(&r.body)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok()?["seq"].as_i64())
        .collect();
    assert_eq!(cut, seqs[100..=130].to_vec());
    let page = get(server.addr, &format!("/v1/events?from={a}&limit=7"), &hdr)
        .await
        .json();
    let paged: Vec<i64> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["seq"].as_i64())
        .collect();
    assert_eq!(paged, seqs[100..107].to_vec());
    assert_eq!(page["next_from"], seqs[106] + 1);
    let one = get(server.addr, &format!("/v1/events/{}", seqs[300]), &hdr).await;
    assert_eq!(one.json(), lines[300]);
    let globex_seq = (first..=head)
        .find(|s| !seqs.contains(s))
        .expect("a globex seq");
    let other = get(server.addr, &format!("/v1/events/{globex_seq}"), &hdr).await;
    assert_eq!(other.status, 404, "another tenant's event is not found");
    let stats = get(server.addr, "/v1/stats?window=1h", &hdr).await.json();
    assert_eq!(stats["by_type"]["row.snapshot"], 600);

    // SSE, live and from the backfill's first seq, with the browser's anon
    // key: the same events, byte for byte the same envelopes.
    let mut from_first = stream(
        server.addr,
        &format!("/v1/events/subscribe?apikey={anon}&from={first}"),
        &[],
    )
    .await;
    assert_eq!(from_first.status, 200);
    for stream in [&mut from_first, &mut sse] {
        for line in &lines {
            let e = stream.expect_event(PATIENCE).await;
            assert_eq!(
                e.id.as_deref(),
                line["seq"].as_i64().map(|s| s.to_string()).as_deref()
            );
            let data: Value = serde_json::from_str(&e.data).expect("json");
            assert_eq!(&data, line);
        }
    }
    drop((from_first, sse));
    stop_server(server, token).await;
}
