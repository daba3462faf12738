//! The WebSocket endpoint against a real Postgres and server, driven by the
//! PyPI `websockets` client: auth, multiplexed subscriptions with filters,
//! unsubscribe, publish in order with row changes, a forged tenant ignored.

mod common;

use std::process::Stdio;
use std::time::Duration;

use std::collections::BTreeMap;

use common::selection::{filter_ok, topic_ok, FILTERS, TOPICS};
use common::ws::{close_code, connect, recv, send, Ws};
use common::{key, key_and_info, serve_items, stop_server, TestDb, PATIENCE};
use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sluice::auth::Role;
use sluice::server::Server;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const ITEMS: &str =
    "CREATE TABLE items (id int PRIMARY KEY, tenant text NOT NULL, color text, n int);
                     ALTER TABLE items REPLICA IDENTITY FULL;";

async fn serve(db: &TestDb) -> (Server, CancellationToken) {
    serve_with(db, &[]).await
}

/// Connections that do not authenticate are closed after a second.
const AUTH_TIMEOUT: &[(&str, &str)] = &[("SLUICE_WS_AUTH_TIMEOUT_SECS", "1")];

async fn serve_with(db: &TestDb, extra: &[(&str, &str)]) -> (Server, CancellationToken) {
    serve_items(db, &[AUTH_TIMEOUT, extra].concat()).await
}

async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .expect("python client answers in time")
        .expect("read")
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websockets_client_subscribes_filters_unsubscribes_and_publishes() {
    let db = TestDb::new("ws_py");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db).await;
    let service = key(&db, "acme", Role::Service).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/ws_client.py");
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .arg(format!("ws://{}/v1/ws", server.addr))
        .arg(&service)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let l = next_line(&mut lines).await;
    assert_eq!(l, "READY", "python client: {l}");
    c.batch_execute(
        "INSERT INTO items VALUES (1, 'acme', 'red', 1), (2, 'acme', 'blue', 2), (3, 'acme', 'red', 3), (4, 'acme', 'blue', 4), (9, 'globex', 'red', 9)",
    )
    .await
    .expect("write");
    stdin.write_all(b"go\n").await.expect("stdin");
    let l = next_line(&mut lines).await;
    assert_eq!(l, "PUBLISHED", "python client: {l}");
    c.batch_execute("INSERT INTO items VALUES (5, 'acme', 'red', 5)")
        .await
        .expect("write");
    stdin.write_all(b"go\n").await.expect("stdin");
    let l = next_line(&mut lines).await;
    let out = child.wait_with_output().await.expect("python exits");
    assert_eq!(
        l,
        "OK",
        "python client: {l} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
    stop_server(server, token).await;
}

async fn expect_error(ws: &mut Ws, code: &str) -> Value {
    let m = recv(ws).await;
    assert_eq!(m["type"], "error", "{m}");
    assert_eq!(m["code"], code, "{m}");
    assert!(!m["message"].as_str().unwrap_or("").is_empty(), "{m}");
    m
}

/// Events of one subscription until `n` arrived.
async fn events(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = recv(ws).await;
        assert_eq!(m["type"], "event", "{m}");
        out.push(m["event"].clone());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_precise_errors_and_the_connection_stays_usable() {
    let db = TestDb::new("ws_bad");
    db.client().await.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve_with(&db, &[("SLUICE_WS_MAX_SUBSCRIPTIONS", "5")]).await;
    let anon = key(&db, "acme", Role::Anon).await;
    let mut ws = connect(server.addr, "").await;
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "x", "topic": "tables/**"}),
    )
    .await;
    let m = expect_error(&mut ws, "not_authenticated").await;
    assert_eq!(m["id"], "x");
    ws.send(Message::Text("not json".into()))
        .await
        .expect("send");
    expect_error(&mut ws, "invalid_json").await;
    send(&mut ws, json!({"type": "dance"})).await;
    expect_error(&mut ws, "unknown_type").await;
    ws.send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .expect("send");
    expect_error(&mut ws, "binary_not_supported").await;
    let huge = json!({"type": "ping", "pad": "x".repeat(70_000)});
    send(&mut ws, huge).await;
    expect_error(&mut ws, "message_too_large").await;
    send(&mut ws, json!({"type": "auth", "token": "sk_anon_nope"})).await;
    expect_error(&mut ws, "auth_failed").await;
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");
    send(&mut ws, json!({"type": "auth", "token": anon})).await;
    let ok = recv(&mut ws).await;
    assert_eq!(ok["type"], "auth_ok", "{ok}");
    assert_eq!(ok["role"], "anon");
    send(&mut ws, json!({"type": "auth", "token": anon})).await;
    expect_error(&mut ws, "already_authenticated").await;
    send(
        &mut ws,
        json!({"type": "publish", "event": "x", "data": {}}),
    )
    .await;
    expect_error(&mut ws, "forbidden").await;
    send(&mut ws, json!({"type": "subscribe", "id": "f", "filter": {"field": "new.n", "op": "like", "value": 1}})).await;
    assert_eq!(expect_error(&mut ws, "invalid_filter").await["id"], "f");
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "t", "topic": "tables/pub*/x"}),
    )
    .await;
    expect_error(&mut ws, "invalid_topic").await;
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "u", "table": "public.nope"}),
    )
    .await;
    expect_error(&mut ws, "unknown_table").await;
    send(&mut ws, json!({"type": "unsubscribe", "id": "ghost"})).await;
    expect_error(&mut ws, "unknown_id").await;
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "a", "colour": "red"}),
    )
    .await;
    expect_error(&mut ws, "invalid_message").await;
    // 1,000 rapid subscribe/unsubscribe pairs, each answered.
    for i in 0..1000 {
        send(&mut ws, json!({"type": "subscribe", "id": format!("r{i}")})).await;
        send(
            &mut ws,
            json!({"type": "unsubscribe", "id": format!("r{i}")}),
        )
        .await;
    }
    for i in 0..1000 {
        let a = recv(&mut ws).await;
        assert_eq!(
            (a["type"].as_str(), a["id"].as_str()),
            (Some("subscribed"), Some(format!("r{i}").as_str())),
            "{a}"
        );
        let b = recv(&mut ws).await;
        assert_eq!(
            (b["type"].as_str(), b["id"].as_str()),
            (Some("unsubscribed"), Some(format!("r{i}").as_str())),
            "{b}"
        );
    }
    for i in 0..5 {
        send(&mut ws, json!({"type": "subscribe", "id": format!("k{i}")})).await;
        assert_eq!(recv(&mut ws).await["type"], "subscribed");
    }
    send(&mut ws, json!({"type": "subscribe", "id": "k0"})).await;
    expect_error(&mut ws, "duplicate_id").await;
    send(&mut ws, json!({"type": "subscribe", "id": "k5"})).await;
    expect_error(&mut ws, "too_many_subscriptions").await;
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");
    // The server is healthy and the hub holds only the 5 open subscriptions
    // (each registers, and an aborted one leaves, from its own task: allow
    // them a moment).
    let hub = server.state.hub.clone();
    let start = std::time::Instant::now();
    loop {
        let n = hub
            .stats
            .subscribers
            .load(std::sync::atomic::Ordering::Relaxed);
        if n == 5 {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "only {n} of 5 subscriptions went live"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(ws);
    // No auth within the timeout: closed with 4001.
    let mut idle = connect(server.addr, "").await;
    assert_eq!(close_code(&mut idle).await, 4001);
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_resumes_from_a_seq_exactly_once_in_order() {
    let db = TestDb::new("ws_resume");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db).await;
    let anon = key(&db, "acme", Role::Anon).await;
    c.batch_execute("INSERT INTO items SELECT g, 'acme', 'red', g FROM generate_series(1, 30) g")
        .await
        .expect("write");
    let mut ws = connect(server.addr, &format!("?apikey={anon}")).await;
    assert_eq!(recv(&mut ws).await["type"], "auth_ok");
    send(&mut ws, json!({"type": "subscribe", "id": "s", "from": 1})).await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    let first = events(&mut ws, 12).await;
    drop(ws); // disconnected mid-stream
    c.batch_execute("INSERT INTO items SELECT g, 'acme', 'red', g FROM generate_series(31, 45) g")
        .await
        .expect("write");
    let last = first[11]["seq"].as_i64().expect("seq");
    let mut ws = connect(server.addr, &format!("?apikey={anon}")).await;
    assert_eq!(recv(&mut ws).await["type"], "auth_ok");
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "s", "from": last + 1}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    let rest = events(&mut ws, 45 - 12).await;
    let ids: Vec<i64> = first
        .iter()
        .chain(rest.iter())
        .map(|e| e["data"]["new"]["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(
        ids,
        (1..=45).collect::<Vec<_>>(),
        "every event once, in order"
    );
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_ws_subscriptions_get_exactly_their_tenants_matching_events() {
    let seed: u64 = std::env::var("SLUICE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("ws isolation test seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let db = TestDb::new("ws_iso");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db).await;
    let tenants = ["t0", "t1", "t2", "t3"];
    let mut keys = BTreeMap::new();
    for t in tenants {
        keys.insert(t, key(&db, t, Role::Service).await);
    }
    // Connections with one or two subscriptions each, from seq 1.
    struct Conn {
        tenant: &'static str,
        ws: Ws,
        subs: Vec<(String, usize, usize)>,
    }
    let mut conns = Vec::new();
    for i in 0..10 {
        let tenant = tenants[rng.gen_range(0..tenants.len())];
        let mut ws = connect(server.addr, "").await;
        send(&mut ws, json!({"type": "auth", "token": keys[tenant]})).await;
        assert_eq!(recv(&mut ws).await["tenant"], tenant);
        let mut subs = Vec::new();
        for j in 0..rng.gen_range(1..3) {
            let (topic, filter) = (
                rng.gen_range(0..TOPICS.len()),
                rng.gen_range(0..FILTERS.len()),
            );
            let id = format!("c{i}s{j}");
            let mut m = json!({"type": "subscribe", "id": id, "from": 1});
            if !TOPICS[topic].is_empty() {
                m["topic"] = json!(TOPICS[topic]);
            }
            if !FILTERS[filter].is_empty() {
                m["filter"] = serde_json::from_str(FILTERS[filter]).expect("filter");
            }
            send(&mut ws, m).await;
            assert_eq!(recv(&mut ws).await["type"], "subscribed");
            subs.push((id, topic, filter));
        }
        conns.push(Conn { tenant, ws, subs });
    }
    // A random workload; some connections publish with a forged tenant.
    let colors = ["red", "blue", "green"];
    let mut next_id = 1;
    for round in 0..40 {
        let mut sql = String::from("BEGIN;");
        for _ in 0..rng.gen_range(1..5) {
            let t = tenants[rng.gen_range(0..tenants.len())];
            sql.push_str(&format!(
                "INSERT INTO items VALUES ({next_id}, '{t}', '{}', {});",
                colors[rng.gen_range(0..3)],
                rng.gen_range(0..10)
            ));
            next_id += 1;
        }
        sql.push_str("UPDATE items SET n = n + 1 WHERE id % 7 = 0; COMMIT;");
        c.batch_execute(&sql).await.expect("workload");
        if round % 8 == 0 {
            let k = rng.gen_range(0..conns.len());
            let forged = tenants[(tenants
                .iter()
                .position(|t| *t == conns[k].tenant)
                .expect("t")
                + 1)
                % tenants.len()];
            send(&mut conns[k].ws, json!({"type": "publish", "event": "note", "tenant": forged, "data": {"round": round}})).await;
        }
    }
    // The publishes are answered later (the test reads no frame yet):
    // wait until the log holds one.
    let log = common::poll_until(PATIENCE, Duration::from_millis(50), || async {
        let log = common::all_events(&c).await;
        if log.iter().any(|e| e["type"] == "custom.note") {
            Ok(log)
        } else {
            Err("no published note in the log yet".to_owned())
        }
    })
    .await;
    for conn in &mut conns {
        let mut expected: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for (id, topic, filter) in &conn.subs {
            expected.insert(
                id.clone(),
                log.iter()
                    .filter(|e| e["tenant"] == conn.tenant)
                    .filter(|e| topic_ok(*topic, e["topic"].as_str().unwrap_or("")))
                    .filter(|e| filter_ok(*filter, &e["data"]))
                    .filter_map(|e| e["seq"].as_i64())
                    .collect(),
            );
        }
        let want: usize = expected.values().map(Vec::len).sum();
        let mut got: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        let mut n = 0;
        while n < want {
            let m = recv(&mut conn.ws).await;
            match m["type"].as_str() {
                Some("event") => {
                    assert_eq!(
                        m["event"]["tenant"], conn.tenant,
                        "another tenant's event: {m}"
                    );
                    got.entry(m["sub"].as_str().expect("sub").to_owned())
                        .or_default()
                        .push(m["event"]["seq"].as_i64().expect("seq"));
                    n += 1;
                }
                Some("published") => {}
                _ => panic!("unexpected {m}"),
            }
        }
        for (id, seqs) in &expected {
            assert_eq!(
                got.get(id).cloned().unwrap_or_default(),
                *seqs,
                "subscription {id} of {}",
                conn.tenant
            );
        }
    }
    // Published events carry the publisher's tenant, never the forged one.
    for e in log.iter().filter(|e| e["type"] == "custom.note") {
        assert!(tenants.contains(&e["tenant"].as_str().unwrap_or("")));
    }
    stop_server(server, token).await;
}

/// A connection that reads nothing for a while: its subscription falls back
/// to the log (memory stays bounded), a fast connection is not held up, and
/// the slow one still gets every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_connection_catches_up_from_the_log_and_misses_nothing() {
    let db = TestDb::new("ws_slow");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve_with(
        &db,
        &[
            ("SLUICE_WS_QUEUE", "4"),
            ("SLUICE_HUB_SUBSCRIBER_QUEUE", "8"),
        ],
    )
    .await;
    let anon = key(&db, "acme", Role::Anon).await;
    let mut slow = connect(server.addr, &format!("?apikey={anon}")).await;
    let mut fast = connect(server.addr, &format!("?apikey={anon}")).await;
    for ws in [&mut slow, &mut fast] {
        assert_eq!(recv(ws).await["type"], "auth_ok");
        send(
            ws,
            json!({"type": "subscribe", "id": "s", "table": "public.items"}),
        )
        .await;
        assert_eq!(recv(ws).await["type"], "subscribed");
    }
    const N: i64 = 3000;
    let reader = tokio::spawn(async move {
        let got = events(&mut fast, N as usize).await;
        got.iter()
            .map(|e| e["data"]["new"]["id"].as_i64().expect("id"))
            .collect::<Vec<_>>()
    });
    for k in 0..30 {
        c.batch_execute(&format!(
            "INSERT INTO items SELECT g, 'acme', 'red', g FROM generate_series({}, {}) g",
            k * 100 + 1,
            k * 100 + 100
        ))
        .await
        .expect("write");
    }
    let fast_ids = tokio::time::timeout(PATIENCE, reader)
        .await
        .expect("the fast connection is not held up")
        .expect("reader");
    assert_eq!(fast_ids, (1..=N).collect::<Vec<_>>());
    let slow_ids: Vec<i64> = events(&mut slow, N as usize)
        .await
        .iter()
        .map(|e| e["data"]["new"]["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(
        slow_ids,
        (1..=N).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert!(
        server
            .state
            .hub
            .stats
            .lagged
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "the slow subscription fell back to the log"
    );
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_key_closes_its_connections_with_4003() {
    let db = TestDb::new("ws_revoke");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve_with(&db, &[("SLUICE_AUTH_REVOCATION_CHECK_SECS", "1")]).await;
    let (info, anon) = key_and_info(&db, "acme", Role::Anon).await;
    let mut ws = connect(server.addr, &format!("?apikey={anon}")).await;
    assert_eq!(recv(&mut ws).await["type"], "auth_ok");
    assert!(sluice::auth::keys::revoke_key(&c, info.id)
        .await
        .expect("revoke"));
    assert_eq!(close_code(&mut ws).await, 4003);
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloudevents_subprotocol_carries_bare_envelopes() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let db = TestDb::new("ws_ce");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db).await;
    let anon = key(&db, "acme", Role::Anon).await;
    let mut req = format!("ws://{}/v1/ws?apikey={anon}", server.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "cloudevents.json".parse().expect("header"),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connects");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("cloudevents.json")
    );
    assert_eq!(recv(&mut ws).await["type"], "auth_ok");
    send(&mut ws, json!({"type": "subscribe", "id": "s", "from": 1})).await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    c.batch_execute("INSERT INTO items VALUES (1, 'acme', 'red', 1)")
        .await
        .expect("write");
    let e = recv(&mut ws).await;
    assert_eq!(e["specversion"], "1.0", "a bare CloudEvents envelope: {e}");
    assert_eq!(e["type"], "row.inserted");
    assert_eq!(e["tenant"], "acme");
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_each_subscription_where_to_resume_then_closes_with_1001() {
    let db = TestDb::new("ws_shutdown");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db).await;
    let anon = key(&db, "acme", Role::Anon).await;
    c.batch_execute("INSERT INTO items SELECT g, 'acme', 'red', g FROM generate_series(1, 10) g")
        .await
        .expect("write");
    let mut ws = connect(server.addr, &format!("?apikey={anon}")).await;
    assert_eq!(recv(&mut ws).await["type"], "auth_ok");
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "all", "from": 1}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    let seen = events(&mut ws, 10).await;
    // Nothing matches this one yet: its position is where it started.
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "blue", "filter": {"field": "color", "op": "eq", "value": "blue"}}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    token.cancel();
    let mut resume = std::collections::BTreeMap::new();
    let code = loop {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("in time")
        {
            Some(Ok(Message::Text(t))) => {
                let m: Value = serde_json::from_str(t.as_str()).expect("json");
                assert_eq!(m["type"], "shutdown", "{m}");
                resume.insert(
                    m["id"].as_str().expect("id").to_owned(),
                    m["resume_from"].as_i64().expect("resume_from"),
                );
            }
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(_)) => continue,
            other => panic!("expected shutdown frames then a close, got {other:?}"),
        }
    };
    assert_eq!(code, 1001);
    let last = seen[9]["seq"].as_i64().expect("seq");
    assert_eq!(resume.get("all"), Some(&(last + 1)), "{resume:?}");
    assert!(
        resume
            .get("blue")
            .is_some_and(|r| *r >= 1 && *r <= last + 1),
        "{resume:?}"
    );
    server.wait().await.expect("server stops");
}

/// A text frame of exactly `bytes` bytes: a ping padded with `x`.
fn padded_ping(bytes: usize) -> Message {
    let head = r#"{"type":"ping","pad":""#;
    let text = format!("{head}{}\"}}", "x".repeat(bytes - head.len() - 2));
    assert_eq!(text.len(), bytes);
    Message::Text(text.into())
}

/// Sends `frame` while reading, and returns the code of the close frame the
/// server answers with. The frame may still be in flight when the close
/// arrives (the server stops reading it), so sending and reading are apart.
/// A connection dropped without a close frame (what a browser reports as
/// 1006) fails the test.
async fn close_code_after(ws: Ws, frame: Message) -> u16 {
    let (mut tx, mut rx) = ws.split();
    let sender = tokio::spawn(async move {
        let _ = tx.send(frame).await;
        tx
    });
    let code = tokio::time::timeout(PATIENCE, async {
        loop {
            match rx.next().await {
                Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("closed in time");
    sender.abort();
    code
}

/// With the default 64 KiB limit: a frame of exactly 16 × the limit (1 MiB)
/// is answered `message_too_large` and the connection stays; one byte more
/// (and a frame of several MiB) is not read: close 1009, before and after
/// auth. The server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_beyond_16_times_the_limit_close_with_1009_before_and_after_auth() {
    const MIB: usize = 1 << 20;
    let db = TestDb::new("ws_big");
    db.client().await.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db).await;
    assert_eq!(server.state.config.ws.max_message_bytes * 16, MIB);
    let anon = key(&db, "acme", Role::Anon).await;

    // Before auth.
    let mut ws = connect(server.addr, "").await;
    ws.send(padded_ping(MIB)).await.expect("send");
    expect_error(&mut ws, "message_too_large").await;
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong", "the connection stays");
    assert_eq!(close_code_after(ws, padded_ping(MIB + 1)).await, 1009);
    let ws = connect(server.addr, "").await;
    assert_eq!(close_code_after(ws, padded_ping(4 * MIB)).await, 1009);

    // After auth (in the URL, and by message).
    let mut ws = connect(server.addr, &format!("?apikey={anon}")).await;
    assert_eq!(recv(&mut ws).await["type"], "auth_ok");
    ws.send(padded_ping(MIB)).await.expect("send");
    expect_error(&mut ws, "message_too_large").await;
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong", "the connection stays");
    assert_eq!(close_code_after(ws, padded_ping(MIB + 1)).await, 1009);
    let mut ws = connect(server.addr, "").await;
    send(&mut ws, json!({"type": "auth", "token": anon})).await;
    assert_eq!(recv(&mut ws).await["type"], "auth_ok");
    assert_eq!(close_code_after(ws, padded_ping(4 * MIB)).await, 1009);
    // A binary frame beyond the limit is closed the same way.
    let mut ws = connect(server.addr, &format!("?apikey={anon}")).await;
    assert_eq!(recv(&mut ws).await["type"], "auth_ok");
    assert_eq!(
        close_code_after(ws, Message::Binary(vec![0u8; MIB + 1].into())).await,
        1009
    );

    // Still serving.
    let mut ws = connect(server.addr, "").await;
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");
    stop_server(server, token).await;
}

/// The independent client: PyPI `websockets` reads the close frame 1009
/// `message_too_big` for a 1 MiB + 1 frame, before and after auth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websockets_client_sees_close_1009_for_a_frame_beyond_16_times_the_limit() {
    let db = TestDb::new("ws_big_py");
    db.client().await.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db).await;
    let anon = key(&db, "acme", Role::Anon).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/ws_too_big.py");
    let url = format!("ws://{}/v1/ws", server.addr);
    let size = (1usize << 20) + 1;
    for args in [
        vec![url.clone(), size.to_string()],
        vec![url.clone(), anon.clone(), size.to_string()],
    ] {
        let out = tokio::time::timeout(
            PATIENCE,
            tokio::process::Command::new("python3")
                .arg(script)
                .args(&args)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("python client ends in time")
        .expect("python3 runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.trim(), "CLOSED 1009 message_too_big", "{args:?}");
    }
    stop_server(server, token).await;
}

/// Sends each case's message and expects the error `code` carrying `id`.
async fn errors_carry_ids(ws: &mut Ws, cases: &[(Value, &str, &str)], when: &str) {
    for (m, code, id) in cases {
        send(ws, m.clone()).await;
        let e = expect_error(ws, code).await;
        assert_eq!(e["id"], *id, "{when}, {m}: {e}");
    }
}

/// Every error answering a JSON object with a string `id` carries it,
/// whatever is wrong with the object, before and after auth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_the_id_of_the_message_they_answer() {
    let db = TestDb::new("ws_ids");
    db.client().await.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db).await;
    let service = key(&db, "acme", Role::Service).await;
    let mut ws = connect(server.addr, "").await;
    let cases = [
        (json!({"id": "m1"}), "invalid_message", "m1"),
        (json!({"type": "nope", "id": "u1"}), "unknown_type", "u1"),
        (json!({"type": 3, "id": "t1"}), "invalid_message", "t1"),
        (json!({"type": "ping", "id": "p1"}), "invalid_message", "p1"),
        (
            json!({"type": "auth", "token": "k", "id": "a1"}),
            "invalid_message",
            "a1",
        ),
        (
            json!({"type": "publish", "id": "n1", "event": "x", "data": {}}),
            "not_authenticated",
            "n1",
        ),
        (
            json!({"type": "subscribe", "id": "n2"}),
            "not_authenticated",
            "n2",
        ),
    ];
    errors_carry_ids(&mut ws, &cases, "before auth").await;
    send(&mut ws, json!({"type": "auth", "token": service})).await;
    assert_eq!(recv(&mut ws).await["type"], "auth_ok");
    let cases = [
        (json!({"id": "m1"}), "invalid_message", "m1"),
        (json!({"type": "nope", "id": "u1"}), "unknown_type", "u1"),
        (
            json!({"type": "publish", "id": "p2", "event": "x", "data": {}}),
            "invalid_message",
            "p2",
        ),
        (
            json!({"type": "subscribe", "id": "", "topic": "a"}),
            "invalid_message",
            "",
        ),
        (
            json!({"type": "subscribe", "id": "s1", "from": -1}),
            "invalid_message",
            "s1",
        ),
        (
            json!({"type": "unsubscribe", "id": "ghost"}),
            "unknown_id",
            "ghost",
        ),
    ];
    errors_carry_ids(&mut ws, &cases, "after auth").await;
    // No id to carry: not an object, or no string id.
    ws.send(Message::Text("[1]".into())).await.expect("send");
    assert!(expect_error(&mut ws, "invalid_message")
        .await
        .get("id")
        .is_none());
    send(&mut ws, json!({"type": "nope", "id": 7})).await;
    assert!(expect_error(&mut ws, "unknown_type")
        .await
        .get("id")
        .is_none());
    stop_server(server, token).await;
}
