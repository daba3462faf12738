//! One `from` rule on every transport, against a real Postgres and server:
//! `from=0` is the start of the log (seqs start at 1), a negative `from` is
//! refused with a precise error, and a start is a gap only once retention
//! really removed an event at or after it. SSE, `GET /v1/events` (JSON
//! page, NDJSON export, NDJSON tail), WebSocket `subscribe`, webhook replay
//! `from_seq` and `sluice tail --from`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::http::{get, stream};
use common::receiver::{Answer, Receiver};
use common::ws::{connect, recv, send, Ws};
use common::{key, proc, wait_for_events, TestDb, PATIENCE};
use serde_json::{json, Value};
use sluice::auth::Role;

const ITEMS: &str =
    "CREATE TABLE items (id int PRIMARY KEY, tenant text NOT NULL, color text, n int);
                     ALTER TABLE items REPLICA IDENTITY FULL;";

/// A WebSocket authenticated with `anon`.
async fn ws(addr: std::net::SocketAddr, anon: &str) -> Ws {
    let mut ws = connect(addr, &format!("?apikey={anon}")).await;
    assert_eq!(recv(&mut ws).await["type"], "auth_ok");
    ws
}

async fn ws_subscribe(ws: &mut Ws, id: &str, from: i64) -> Value {
    send(ws, json!({"type": "subscribe", "id": id, "from": from})).await;
    recv(ws).await
}

/// Seqs of the first `n` SSE events of `path`.
async fn sse_seqs(addr: std::net::SocketAddr, path: &str, n: usize) -> Vec<i64> {
    let mut s = stream(addr, path, &[]).await;
    assert_eq!(s.status, 200, "{path}");
    let mut seqs = Vec::new();
    while seqs.len() < n {
        let e = s.expect_event(PATIENCE).await;
        seqs.push(e.id.expect("id").parse().expect("seq"));
    }
    seqs
}

/// Seqs of the first `n` envelope lines of an NDJSON tail.
async fn tail_seqs(addr: std::net::SocketAddr, path: &str, n: usize) -> Vec<i64> {
    let mut s = stream(addr, path, &[]).await;
    assert_eq!(s.status, 200, "{path}");
    let mut seqs = Vec::new();
    while seqs.len() < n {
        let line = tokio::time::timeout(PATIENCE, s.next_line())
            .await
            .expect("line in time")
            .expect("open");
        let v: Value = serde_json::from_str(&line).expect("json line");
        if v.get("heartbeat").is_none() {
            seqs.push(v["seq"].as_i64().expect("seq"));
        }
    }
    seqs
}

async fn replay(addr: std::net::SocketAddr, service: &str, id: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/v1/webhooks/{id}/replay"))
        .header("authorization", format!("Bearer {service}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("replay request");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (status, serde_json::from_str(&text).expect("json body"))
}

/// `sluice tail --tenant acme --from <from>`: (exit code, stdout, stderr).
async fn sluice_tail(config: std::path::PathBuf, from: &str) -> (i32, String, String) {
    let from = from.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = proc::sluice()
            .arg("--config")
            .arg(&config)
            .args(["tail", "--tenant", "acme", &format!("--from={from}")])
            .output()
            .expect("run sluice tail");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("tail task")
}

fn line_seqs(ndjson: &str) -> Vec<i64> {
    ndjson
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("one envelope per line")["seq"]
                .as_i64()
                .expect("seq")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_zero_is_the_start_on_every_transport_and_a_gap_only_once_pruned() {
    let db = TestDb::new("from_rule");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = common::serve_items(
        &db,
        &[
            ("SLUICE_WEBHOOKS_ALLOW_PRIVATE_ADDRESSES", "true"),
            ("SLUICE_WEBHOOKS_POLL_INTERVAL_MS", "50"),
        ],
    )
    .await;
    let addr = server.addr;
    let anon = key(&db, "acme", Role::Anon).await;
    let service = key(&db, "acme", Role::Service).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = proc::write_config(dir.path(), &db, "public.items", "tenant", "");
    c.batch_execute("INSERT INTO items SELECT g, 'acme', 'red', g FROM generate_series(1, 3) g")
        .await
        .expect("write");
    let log = wait_for_events(&c, 3).await;
    let all: Vec<i64> = log.iter().filter_map(|e| e["seq"].as_i64()).collect();
    assert_eq!(all, vec![1, 2, 3], "seqs start at 1");

    // Nothing pruned: from=0 is every event from seq 1, on every transport.
    let q = |rest: &str| format!("?apikey={anon}&from=0{rest}");
    assert_eq!(
        sse_seqs(addr, &format!("/v1/events/subscribe{}", q("")), 3).await,
        all,
        "SSE"
    );
    let page = get(addr, &format!("/v1/events{}", q("")), &[]).await;
    assert_eq!(page.status, 200, "{}", String::from_utf8_lossy(&page.body));
    let page_seqs: Vec<i64> = page.json()["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["seq"].as_i64())
        .collect();
    assert_eq!(page_seqs, all, "JSON page");
    let export = get(addr, &format!("/v1/events{}", q("&format=ndjson")), &[]).await;
    assert_eq!(export.status, 200);
    assert_eq!(
        line_seqs(&String::from_utf8_lossy(&export.body)),
        all,
        "NDJSON export"
    );
    assert_eq!(
        tail_seqs(
            addr,
            &format!("/v1/events{}", q("&format=ndjson&follow=true")),
            3
        )
        .await,
        all,
        "NDJSON tail"
    );
    let mut sock = ws(addr, &anon).await;
    assert_eq!(
        ws_subscribe(&mut sock, "zero", 0).await["type"],
        "subscribed"
    );
    let mut got = Vec::new();
    while got.len() < 3 {
        let m = recv(&mut sock).await;
        assert_eq!(m["type"], "event", "{m}");
        got.push(m["event"]["seq"].as_i64().expect("seq"));
    }
    assert_eq!(got, all, "WebSocket");
    send(&mut sock, json!({"type": "unsubscribe", "id": "zero"})).await;
    assert_eq!(recv(&mut sock).await["type"], "unsubscribed");
    let rx = Receiver::start(Arc::new(|_, _| Answer::Status(200))).await;
    let endpoint = reqwest::Client::new()
        .post(format!("http://{addr}/v1/webhooks"))
        .header("authorization", format!("Bearer {service}"))
        .header("content-type", "application/json")
        .body(json!({"url": rx.url("/hook")}).to_string())
        .send()
        .await
        .expect("create endpoint");
    assert_eq!(endpoint.status().as_u16(), 201);
    let endpoint: Value =
        serde_json::from_str(&endpoint.text().await.expect("body")).expect("endpoint");
    let hook = endpoint["id"].as_str().expect("id").to_owned();
    let (code, v) = replay(addr, &service, &hook, json!({"from_seq": 0})).await;
    assert_eq!(
        (code, &v["enqueued"]),
        (202, &json!(3)),
        "webhook replay: {v}"
    );
    rx.wait_until(PATIENCE, "the three replayed events", |r| {
        let mut seqs: Vec<i64> = r.iter().map(|x| x.seq()).collect();
        seqs.sort_unstable();
        seqs.dedup();
        seqs == [1, 2, 3]
    })
    .await;
    let (exit, out, err) = sluice_tail(config.clone(), "0").await;
    assert_eq!(exit, 0, "sluice tail: {err}");
    assert_eq!(line_seqs(&out), all, "sluice tail");

    // Negative is refused everywhere, naming the parameter.
    for path in [
        format!("/v1/events/subscribe?apikey={anon}&from=-1"),
        format!("/v1/events?apikey={anon}&from=-1"),
        format!("/v1/events?apikey={anon}&from=0.5&format=ndjson"),
    ] {
        let r = get(addr, &path, &[]).await;
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.json()["error"]["param"], "from", "{path}");
    }
    let m = ws_subscribe(&mut sock, "neg", -1).await;
    assert_eq!(
        (&m["type"], &m["code"], &m["id"]),
        (&json!("error"), &json!("invalid_message"), &json!("neg")),
        "{m}"
    );
    let (code, v) = replay(addr, &service, &hook, json!({"from_seq": -1})).await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["error"]["param"], "from_seq", "{v}");
    let (exit, _, err) = sluice_tail(config.clone(), "-1").await;
    assert_eq!(exit, 2, "a usage error: {err}");
    assert!(err.contains(">= 0"), "{err}");

    // Retention removes seqs 1..=3: now from=0 (and 3) is a gap everywhere,
    // and from=4 is not.
    let watermark = sluice::log::retention::prune_once(&c, Duration::ZERO)
        .await
        .expect("prune");
    assert_eq!(watermark, 3);
    for rest in ["", "&format=ndjson", "&format=ndjson&follow=true"] {
        for (path, what) in [
            (format!("/v1/events/subscribe{}", q(rest)), "SSE"),
            (format!("/v1/events{}", q(rest)), "GET /v1/events"),
        ] {
            if what == "SSE" && !rest.is_empty() {
                continue;
            }
            let r = get(addr, &path, &[]).await;
            assert_eq!(r.status, 410, "{what} {path}");
            let body = r.json();
            assert_eq!(body["error"]["code"], "gap", "{path}: {body}");
            assert_eq!(body["error"]["oldest"], 4, "{path}: {body}");
        }
    }
    let m = ws_subscribe(&mut sock, "after", 0).await;
    assert_eq!(
        (&m["type"], &m["code"], &m["id"]),
        (&json!("error"), &json!("gap"), &json!("after")),
        "{m}"
    );
    assert!(
        m["message"]
            .as_str()
            .unwrap_or("")
            .contains("oldest available is 4"),
        "{m}"
    );
    let (code, v) = replay(addr, &service, &hook, json!({"from_seq": 0})).await;
    assert_eq!(code, 410, "{v}");
    assert_eq!(
        (
            &v["error"]["code"],
            &v["error"]["oldest"],
            &v["error"]["param"]
        ),
        (&json!("gap"), &json!(4), &json!("from_seq")),
        "{v}"
    );
    let (exit, out, err) = sluice_tail(config.clone(), "0").await;
    assert_eq!(exit, 1, "sluice tail after pruning: {out} {err}");
    assert!(err.contains("oldest available is 4"), "{err}");

    // Past the watermark nothing is a gap.
    c.batch_execute("INSERT INTO items VALUES (4, 'acme', 'red', 4)")
        .await
        .expect("write");
    wait_for_events(&c, 4).await;
    assert_eq!(
        sse_seqs(
            addr,
            &format!("/v1/events/subscribe?apikey={anon}&from=4"),
            1
        )
        .await,
        vec![4]
    );
    let r = get(addr, &format!("/v1/events?apikey={anon}&from=4"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["events"][0]["seq"], 4);
    assert_eq!(
        ws_subscribe(&mut sock, "four", 4).await["type"],
        "subscribed"
    );
    assert_eq!(recv(&mut sock).await["event"]["seq"], 4);
    let (code, v) = replay(addr, &service, &hook, json!({"from_seq": 4})).await;
    assert_eq!((code, &v["enqueued"]), (202, &json!(1)), "{v}");
    let (exit, out, err) = sluice_tail(config, "4").await;
    assert_eq!(exit, 0, "{err}");
    assert_eq!(line_seqs(&out), vec![4]);
    drop(sock);
    common::stop_server(server, token).await;
}
