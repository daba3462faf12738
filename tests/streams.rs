//! Long-lived readers against a real server: streams end when their
//! credential does (NDJSON tails, SSE), keepalives arrive on idle streams
//! whatever the other timers, SSE frames a browser can use (named end
//! frames, the `message` mode, checked with the independent httpx-sse
//! client), filters on every read of `GET /v1/events`, and over-long
//! requests answered with the JSON error by both HTTP layers.

mod common;

use common::http::{get, read_head, stream, stream_second, Stream};
use common::{key, key_and_info, serve_items, stop_server, wait_for_events, TestDb, PATIENCE};
use serde_json::{json, Value};
use sluice::auth::keys::revoke_key;
use sluice::auth::{KeyInfo, Role};
use sluice::server::Server;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const ITEMS: &str =
    "CREATE TABLE items (id int PRIMARY KEY, tenant text NOT NULL, color text, n int);
     ALTER TABLE items REPLICA IDENTITY FULL;";

const SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";

/// Every stream here re-checks its credential each second, and keepalives
/// follow a second of silence unless a test says otherwise.
const STREAMS: &[(&str, &str)] = &[
    ("SLUICE_HTTP_HEARTBEAT_SECS", "1"),
    ("SLUICE_AUTH_REVOCATION_CHECK_SECS", "1"),
    ("SLUICE_AUTH_JWT_HS256_SECRET", SECRET),
];

async fn serve(db: &TestDb, extra: &[(&str, &str)]) -> (Server, CancellationToken) {
    serve_items(db, &[STREAMS, extra].concat()).await
}

/// Writes acme's row 1, waits until it is seq 1 in the log, and returns a
/// new anon key for acme (its record and secret).
async fn anon_key_after_one_event(db: &TestDb, c: &tokio_postgres::Client) -> (KeyInfo, String) {
    let anon = key_and_info(db, "acme", Role::Anon).await;
    c.batch_execute("INSERT INTO items VALUES (1, 'acme', 'red', 1)")
        .await
        .expect("write");
    wait_for_events(c, 1).await;
    anon
}

fn jwt(tenant: &str, exp: i64) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"tenant": tenant, "role": "anon", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

fn url_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// NDJSON lines until one that is not an envelope or heartbeat; returns the
/// seqs of the envelopes, the number of heartbeats, and that last line.
/// Fails when no such line came within the patience window (heartbeats
/// alone do not keep the test waiting).
async fn lines_until_control(tail: &mut Stream) -> (Vec<i64>, usize, Value) {
    tokio::time::timeout(PATIENCE, lines_until_control_forever(tail))
        .await
        .expect("the tail ended with a final line within the patience window")
}

async fn lines_until_control_forever(tail: &mut Stream) -> (Vec<i64>, usize, Value) {
    let mut seqs = Vec::new();
    let mut heartbeats = 0;
    loop {
        let line = tail
            .next_line()
            .await
            .expect("the tail ended without a final line");
        let v: Value = serde_json::from_str(&line).expect("JSON line");
        if v.get("heartbeat").is_some() {
            heartbeats += 1;
        } else if let Some(seq) = v.get("seq").and_then(Value::as_i64) {
            seqs.push(seq);
        } else {
            return (seqs, heartbeats, v);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ndjson_tail_ends_with_a_revoked_line_when_its_anon_key_is_revoked() {
    let db = TestDb::new("tailrevoke");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db, &[]).await;
    let (info, anon) = anon_key_after_one_event(&db, &c).await;
    let path = format!("/v1/events?format=ndjson&follow=true&from=1&apikey={anon}");
    let mut tail = stream(server.addr, &path, &[]).await;
    assert_eq!(tail.status, 200);
    let first = tokio::time::timeout(PATIENCE, tail.next_line())
        .await
        .expect("first line in time")
        .expect("open");
    assert_eq!(
        serde_json::from_str::<Value>(&first).expect("json")["seq"],
        1
    );
    assert!(revoke_key(&c, info.id).await.expect("revoke"));
    // Rows written after the revocation must not reach the revoked tail.
    c.batch_execute("INSERT INTO items VALUES (2, 'acme', 'red', 2)")
        .await
        .expect("write");
    let (_, _, end) = lines_until_control(&mut tail).await;
    assert_eq!(end["error"]["code"], "revoked", "{end}");
    assert!(end["next_from"].as_i64().is_some(), "{end}");
    assert!(
        tokio::time::timeout(PATIENCE, tail.next_line())
            .await
            .expect("the tail ends")
            .is_none(),
        "nothing after the final line"
    );
    let again = get(server.addr, &path, &[]).await;
    assert_eq!(again.status, 401);
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ndjson_tail_ends_with_an_expired_line_when_its_jwt_expires() {
    let db = TestDb::new("tailexpire");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db, &[]).await;
    // Valid now (and for the leeway after exp), refused within seconds.
    let exp = chrono::Utc::now().timestamp() + 1;
    let auth = format!("Bearer {}", jwt("acme", exp));
    let mut tail = stream(
        server.addr,
        "/v1/events?format=ndjson&follow=true",
        &[("Authorization", &auth)],
    )
    .await;
    assert_eq!(tail.status, 200);
    c.batch_execute("INSERT INTO items VALUES (1, 'acme', 'red', 1)")
        .await
        .expect("write");
    let (seqs, _, end) = lines_until_control(&mut tail).await;
    assert_eq!(end["error"]["code"], "expired", "{end}");
    assert!(seqs.iter().all(|s| *s == 1), "{seqs:?}");
    assert!(
        tokio::time::timeout(PATIENCE, tail.next_line())
            .await
            .expect("the tail ends")
            .is_none(),
        "nothing after the final line"
    );
    let again = get(
        server.addr,
        "/v1/events?format=ndjson",
        &[("Authorization", &auth)],
    )
    .await;
    assert_eq!(again.status, 401);
    assert_eq!(again.json()["error"]["code"], "expired");
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_ends_with_an_expired_frame_when_its_jwt_expires() {
    let db = TestDb::new("sseexpire");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db, &[]).await;
    let exp = chrono::Utc::now().timestamp() + 1;
    let mut s = stream(
        server.addr,
        &format!("/v1/events/subscribe?apikey={}", jwt("acme", exp)),
        &[],
    )
    .await;
    assert_eq!(s.status, 200);
    let end = s.expect_event(PATIENCE).await;
    assert_eq!(end.event.as_deref(), Some("expired"), "{end:?}");
    let data: Value = serde_json::from_str(&end.data).expect("JSON");
    assert_eq!(data["code"], "expired");
    assert!(data["resume_from"].as_i64().is_some(), "{data}");
    assert!(s.next_event().await.is_none(), "the stream ends");
    stop_server(server, token).await;
}

/// Reads SSE blocks until `want` keepalive comments came; fails after the
/// patience window.
async fn keepalives(s: &mut Stream, want: usize) {
    let count = async {
        let mut seen = 0;
        while seen < want {
            let block = s.next_block().await.expect("the stream stays open");
            if block.lines().any(|l| l == ": keepalive") {
                seen += 1;
            }
        }
    };
    tokio::time::timeout(PATIENCE, count)
        .await
        .expect("keepalives within the patience window");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_get_keepalives_when_credential_checks_are_more_frequent() {
    let db = TestDb::new("keepalive");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    // Re-checks every second; keepalives after two seconds of silence.
    let (server, token) = serve(&db, &[("SLUICE_HTTP_HEARTBEAT_SECS", "2")]).await;
    let anon = key(&db, "acme", Role::Anon).await;
    let path = format!("/v1/events/subscribe?apikey={anon}");
    // The lean path (first request of a connection) and axum's (after
    // another request on a kept-alive connection).
    let mut lean = stream(server.addr, &path, &[]).await;
    let mut axum = stream_second(server.addr, "/livez", &path, &[]).await;
    assert_eq!((lean.status, axum.status), (200, 200));
    let tail_path = format!("/v1/events?format=ndjson&follow=true&apikey={anon}");
    let mut tail = stream(server.addr, &tail_path, &[]).await;
    assert_eq!(tail.status, 200);
    tokio::join!(keepalives(&mut lean, 2), keepalives(&mut axum, 2), async {
        let mut heartbeats = 0;
        while heartbeats < 2 {
            let line = tokio::time::timeout(PATIENCE, tail.next_line())
                .await
                .expect("a heartbeat within the patience window")
                .expect("open");
            let v: Value = serde_json::from_str(&line).expect("json");
            assert_eq!(v["heartbeat"], true, "{v}");
            heartbeats += 1;
        }
    });
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_mode_frames_have_no_event_line_and_end_frames_keep_their_names() {
    let db = TestDb::new("msgmode");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db, &[]).await;
    let (info, anon) = anon_key_after_one_event(&db, &c).await;
    let typed = format!("/v1/events/subscribe?apikey={anon}&from=1");
    let message = format!("{typed}&mode=message");
    let mut t = stream(server.addr, &typed, &[]).await;
    let mut m = stream(server.addr, &message, &[]).await;
    let mut m_axum = stream_second(server.addr, "/livez", &message, &[]).await;
    let e = t.expect_event(PATIENCE).await;
    assert_eq!(e.event.as_deref(), Some("row.inserted"));
    for s in [&mut m, &mut m_axum] {
        let e = s.expect_event(PATIENCE).await;
        assert_eq!(e.event, None, "{e:?}");
        assert_eq!(e.id.as_deref(), Some("1"));
        let env: Value = serde_json::from_str(&e.data).expect("envelope");
        assert_eq!(env["type"], "row.inserted");
    }
    assert!(revoke_key(&c, info.id).await.expect("revoke"));
    for s in [&mut t, &mut m, &mut m_axum] {
        let end = s.expect_event(PATIENCE).await;
        assert_eq!(end.event.as_deref(), Some("revoked"), "{end:?}");
        assert!(s.next_event().await.is_none(), "the stream ends");
    }
    let anon2 = key(&db, "acme", Role::Anon).await;
    let bad = get(
        server.addr,
        &format!("/v1/events/subscribe?apikey={anon2}&mode=plain"),
        &[],
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["param"], "mode");
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sse_client_gets_message_mode_events_as_message_and_the_revoked_end_frame() {
    let db = TestDb::new("pybrowser");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db, &[]).await;
    let (info, anon) = key_and_info(&db, "acme", Role::Anon).await;
    c.batch_execute(
        "INSERT INTO items SELECT g, 'acme', 'red', g FROM generate_series(1, 3) g;
         UPDATE items SET n = 10 WHERE id = 2;",
    )
    .await
    .expect("writes");
    wait_for_events(&c, 4).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/sse_events.py");
    let base = format!("http://{}", server.addr);
    let mut child = tokio::process::Command::new("python3")
        .args([script, &base, &anon, "message"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let stdout = child.stdout.take().expect("piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut received: Vec<Value> = Vec::new();
    let read = async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            let v: Value = serde_json::from_str(&line).expect("the client prints JSON lines");
            received.push(v);
            if received.len() == 4 {
                // Every event arrived: now end the stream's credential.
                assert!(revoke_key(&c, info.id).await.expect("revoke"));
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("the python client finished in time");
    let out = child.wait_with_output().await.expect("python exits");
    assert!(
        out.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop_server(server, token).await;
    assert_eq!(received.len(), 5, "{received:?}");
    for (i, r) in received[..4].iter().enumerate() {
        assert_eq!(r["event"], "message", "{r}");
        let env: Value = serde_json::from_str(r["data"].as_str().expect("data")).expect("json");
        assert_eq!(env["seq"], i as i64 + 1, "{r}");
        assert_eq!(r["id"], env["seq"].to_string());
    }
    let end = &received[4];
    assert_eq!(end["event"], "revoked", "{end}");
    let data: Value = serde_json::from_str(end["data"].as_str().expect("data")).expect("json");
    assert_eq!(data["code"], "revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_work_on_json_pages_exports_and_tails_and_pages_move_past_skipped_events() {
    let db = TestDb::new("listfilter");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    // A page reads at most 4 log rows: a selective filter leaves pages
    // short, or empty, while next_from still moves.
    let (server, token) = serve(&db, &[("SLUICE_HTTP_PAGE_LIMIT", "4")]).await;
    let anon = key(&db, "acme", Role::Anon).await;
    c.batch_execute(
        "INSERT INTO items SELECT g, CASE WHEN g % 7 = 0 THEN 'globex' ELSE 'acme' END,
                CASE WHEN g % 5 = 0 THEN 'red' ELSE 'blue' END, g
         FROM generate_series(1, 40) g",
    )
    .await
    .expect("writes");
    wait_for_events(&c, 40).await;
    let log = common::all_events(&c).await;
    let red: Vec<i64> = log
        .iter()
        .filter(|e| e["tenant"] == "acme" && e["data"]["new"]["color"] == "red")
        .filter_map(|e| e["seq"].as_i64())
        .collect();
    assert_eq!(red.len(), 7, "ids 5, 10, …, 40 but 35");
    let filter = url_encode(r#"{"field":"new.color","op":"eq","value":"red"}"#);
    let selectors = [
        format!("filter={filter}"),
        format!("filter={filter}&table=public.items"),
        format!("filter={filter}&topic=tables/public.items/*"),
    ];
    for sel in &selectors {
        // JSON pages of 2, followed until next_from stops moving.
        let mut from = 1;
        let mut got = Vec::new();
        let mut pages = 0;
        loop {
            let r = get(
                server.addr,
                &format!("/v1/events?apikey={anon}&{sel}&limit=2&from={from}"),
                &[],
            )
            .await;
            assert_eq!(r.status, 200, "{sel}: {}", String::from_utf8_lossy(&r.body));
            let page = r.json();
            let events = page["events"].as_array().expect("events");
            assert!(events.len() <= 2, "{page}");
            got.extend(events.iter().filter_map(|e| e["seq"].as_i64()));
            let next = page["next_from"].as_i64().expect("next_from");
            assert!(next >= from, "{page}");
            if next == from {
                assert!(events.is_empty(), "{page}");
                break;
            }
            from = next;
            pages += 1;
            assert!(pages < 100, "paging never ends: {page}");
        }
        assert_eq!(got, red, "{sel}: every matching event once, in order");
        // NDJSON export.
        let r = get(
            server.addr,
            &format!("/v1/events?apikey={anon}&{sel}&format=ndjson&from=1"),
            &[],
        )
        .await;
        assert_eq!(r.status, 200);
        let seqs: Vec<i64> = String::from_utf8_lossy(&r.body)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("line")["seq"].clone())
            .filter_map(|s| s.as_i64())
            .collect();
        assert_eq!(seqs, red, "{sel}: export");
    }
    // A tail with the filter: the old matches, then the live one only.
    let mut tail = stream(
        server.addr,
        &format!("/v1/events?apikey={anon}&filter={filter}&format=ndjson&follow=true&from=1"),
        &[],
    )
    .await;
    assert_eq!(tail.status, 200);
    c.batch_execute("INSERT INTO items VALUES (41, 'acme', 'blue', 41), (42, 'acme', 'red', 42)")
        .await
        .expect("live writes");
    let mut got = Vec::new();
    let read = async {
        while got.len() < red.len() + 1 {
            let line = tail.next_line().await.expect("open");
            let v: Value = serde_json::from_str(&line).expect("json");
            if v.get("heartbeat").is_some() {
                continue;
            }
            assert_eq!(v["data"]["new"]["color"], "red", "{v}");
            got.push(v["data"]["new"]["id"].as_i64().expect("id"));
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("the matching events within the patience window");
    assert_eq!(got, vec![5, 10, 15, 20, 25, 30, 40, 42]);
    // An invalid filter names it.
    let r = get(
        server.addr,
        &format!("/v1/events?apikey={anon}&filter=%7Bnope"),
        &[],
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "filter");
    stop_server(server, token).await;
}

/// Sends `head` (a request line and headers, without the final CRLF) on
/// `sock` and reads one whole answer: status and body.
async fn raw_answer(
    sock: &mut tokio::io::BufReader<tokio::net::TcpStream>,
    head: &str,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    sock.get_mut()
        .write_all(format!("{head}\r\n\r\n").as_bytes())
        .await
        .expect("send the request");
    let (status, headers) = read_head(sock).await;
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("answer {status} without content-length: {headers:?}"));
    let mut body = vec![0u8; len];
    sock.read_exact(&mut body).await.expect("body");
    (status, headers, body)
}

/// One request on a fresh connection, after `before` (a request answered
/// on the same kept-alive connection first) if given.
async fn answer_to(addr: std::net::SocketAddr, before: Option<&str>, head: &str) -> (u16, Value) {
    let sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut sock = tokio::io::BufReader::new(sock);
    if let Some(path) = before {
        let (status, _, _) = raw_answer(
            &mut sock,
            &format!("GET {path} HTTP/1.1\r\nHost: sluice\r\nConnection: keep-alive"),
        )
        .await;
        assert_eq!(status, 200, "the first request is answered");
    }
    let (status, headers, body) = raw_answer(&mut sock, head).await;
    assert!(
        headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("content-type") && v == "application/json"),
        "{status}: {headers:?}"
    );
    let v: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "{status}: not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_queries_and_heads_get_the_json_error_on_first_and_later_requests() {
    let db = TestDb::new("longhead");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db, &[]).await;
    let anon = key(&db, "acme", Role::Anon).await;
    let query = |n: usize| format!("apikey={anon}&topic={}", "x".repeat(n));
    let get_line = |path: String| format!("GET {path} HTTP/1.1\r\nHost: sluice");
    for before in [None, Some("/livez")] {
        let label = before.map_or("first request", |_| "after another request");
        for path in ["/v1/events/subscribe", "/v1/events"] {
            // Over http.max_query_bytes but within the head limit.
            let (status, v) = answer_to(
                server.addr,
                before,
                &get_line(format!("{path}?{}", query(20_000))),
            )
            .await;
            assert_eq!(status, 400, "{label} {path}: {v}");
            assert_eq!(v["error"]["param"], "query", "{label} {path}: {v}");
            // Past the head limit, in the request line.
            for n in [70_000, 200_000] {
                let (status, v) = answer_to(
                    server.addr,
                    before,
                    &get_line(format!("{path}?{}", query(n))),
                )
                .await;
                assert_eq!(status, 431, "{label} {path} {n}: {v}");
                assert_eq!(v["error"]["code"], "request_head_too_large", "{v}");
                assert_eq!(v["error"]["status"], 431, "{v}");
                assert!(
                    v["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("http.max_query_bytes")),
                    "{v}"
                );
            }
        }
        // Past the head limit in the headers.
        let big_header = format!(
            "GET /livez HTTP/1.1\r\nHost: sluice\r\nx-padding: {}",
            "y".repeat(80_000)
        );
        let (status, v) = answer_to(server.addr, before, &big_header).await;
        assert_eq!(status, 431, "{label}: {v}");
        // Not HTTP at all.
        let (status, v) =
            answer_to(server.addr, before, "GET /livez HTTP/1.1\r\nHost sluice").await;
        assert_eq!(status, 400, "{label}: {v}");
        assert_eq!(v["error"]["code"], "malformed_request", "{v}");
    }
    // The server goes on serving.
    assert_eq!(get(server.addr, "/livez", &[]).await.status, 200);
    stop_server(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_authenticated_by_message_closes_with_4003_when_its_jwt_expires() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let db = TestDb::new("wsexpire");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db, &[]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", server.addr))
        .await
        .expect("websocket connects");
    // The credential comes with the first message, after the upgrade: the
    // watch starts from there.
    let exp = chrono::Utc::now().timestamp() + 1;
    let auth = json!({"type": "auth", "token": jwt("acme", exp)}).to_string();
    ws.send(Message::text(auth)).await.expect("send auth");
    let code = tokio::time::timeout(PATIENCE, async {
        let mut authenticated = false;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("json");
                    assert_eq!(v["type"], "auth_ok", "{v}");
                    authenticated = true;
                }
                Some(Ok(Message::Close(Some(f)))) => {
                    assert!(authenticated, "closed before auth_ok");
                    return u16::from(f.code);
                }
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("closed within the patience window");
    assert_eq!(code, 4003);
    stop_server(server, token).await;
}
