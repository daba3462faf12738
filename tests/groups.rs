//! Consumer groups, black-box against a real Postgres: receive, ack, nack,
//! redelivery after ack_wait, dead letters and requeue, seek, ordering by
//! subject, tenant isolation and bad input; several workers on two Sluice
//! processes with crashes, every event acknowledged once or dead-lettered.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{key, TestDb, PATIENCE};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sluice::auth::Role;

const ITEMS: &str =
    "CREATE TABLE items (id int, tenant text NOT NULL, n int, PRIMARY KEY (tenant, id));";

#[derive(Clone)]
struct Api {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Api {
    fn new(addr: std::net::SocketAddr, key: &str) -> Api {
        Api {
            base: format!("http://{addr}"),
            key: key.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(90))
                .build()
                .expect("client"),
        }
    }

    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.key));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }))
        };
        Ok((status, v))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.try_call(reqwest::Method::POST, path, Some(body))
            .await
            .expect("request")
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.try_call(reqwest::Method::GET, path, None)
            .await
            .expect("request")
    }

    /// Receives until `n` messages came (or panics after the patience).
    async fn receive_n(&self, group: &str, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let start = std::time::Instant::now();
        while out.len() < n {
            assert!(
                start.elapsed() < PATIENCE,
                "only {} of {n} messages",
                out.len()
            );
            let (s, v) = self
                .post(
                    &format!("/v1/groups/{group}/receive"),
                    json!({"max_messages": n - out.len(), "wait_ms": 5000}),
                )
                .await;
            assert_eq!(s, 200, "{v}");
            out.extend(v["messages"].as_array().expect("messages").iter().cloned());
        }
        out
    }
}

async fn serve(db: &TestDb) -> (sluice::server::Server, tokio_util::sync::CancellationToken) {
    let config = db.config_with(
        &[("public.items", "tenant")],
        &[("SLUICE_HTTP_LISTEN", "127.0.0.1:0")],
    );
    let token = tokio_util::sync::CancellationToken::new();
    let server = sluice::server::start(config, token.clone())
        .await
        .expect("server starts");
    (server, token)
}

async fn insert(db: &TestDb, tenant: &str, ids: std::ops::RangeInclusive<i32>) {
    db.client()
        .await
        .execute(
            "INSERT INTO items SELECT i, $1, 0 FROM generate_series($2::int, $3::int) i",
            &[&tenant, ids.start(), ids.end()],
        )
        .await
        .expect("insert");
}

fn tokens(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["delivery"].as_str().expect("delivery").to_owned())
        .collect()
}

fn seqs(messages: &[Value]) -> Vec<i64> {
    messages
        .iter()
        .map(|m| m["seq"].as_i64().expect("seq"))
        .collect()
}

/// The whole lifecycle of one group's messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_ack_nack_redeliver_dead_letter_requeue_and_seek() {
    let db = TestDb::new("grp_life");
    db.client()
        .await
        .batch_execute(ITEMS)
        .await
        .expect("schema");
    let (server, token) = serve(&db).await;
    let a = Api::new(server.addr, &key(&db, "a", Role::Service).await);
    let b = Api::new(server.addr, &key(&db, "b", Role::Service).await);
    let (s, g) = a
        .post(
            "/v1/groups",
            json!({"name": "work", "topics": ["tables/public.items/*"], "start": "beginning",
                   "ack_wait_ms": 2000, "max_deliveries": 2}),
        )
        .await;
    assert_eq!(s, 201, "{g}");
    assert_eq!(g["ordering"], "none");
    let (s, e) = a.post("/v1/groups", json!({"name": "work"})).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("exists")),
        "{e}"
    );
    // b has a group of the same name: its own.
    let (s, _) = b
        .post("/v1/groups", json!({"name": "work", "start": "beginning"}))
        .await;
    assert_eq!(s, 201);

    insert(&db, "a", 1..=5).await;
    insert(&db, "b", 100..=104).await;
    let got = a.receive_n("work", 5).await;
    let first = seqs(&got);
    let t = tokens(&got);
    // The first four are worked on for long: their deadlines move a
    // minute out, so nothing here depends on how fast the test runs; only
    // the fifth is left to expire (the test waits for it, never times it).
    let (s, _) = a
        .post(
            "/v1/groups/work/extend",
            json!({"deliveries": [t[0], t[1], t[2], t[3]], "ms": 60000}),
        )
        .await;
    assert_eq!(s, 200);
    for m in &got {
        assert_eq!(m["attempt"], 1);
        assert_eq!(m["event"]["tenant"], "a", "{m}");
    }
    // Nothing more for now: a short poll comes back empty.
    let (s, v) = a
        .post("/v1/groups/work/receive", json!({"wait_ms": 0}))
        .await;
    assert_eq!((s, v["messages"].as_array().map(Vec::len)), (200, Some(0)));

    // b's tokens and forged ones are unknown to a's group, alike.
    let b_got = b.receive_n("work", 5).await;
    for m in &b_got {
        assert_eq!(m["event"]["tenant"], "b");
    }
    let (s, e) = a
        .post(
            "/v1/groups/work/ack",
            json!({"deliveries": tokens(&b_got[..1])}),
        )
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("unknown_delivery")),
        "{e}"
    );
    let forged = format!("{}.0000000000004000800000000000000f", first[0]);
    let (s2, e2) = a
        .post("/v1/groups/work/ack", json!({"deliveries": [forged]}))
        .await;
    assert_eq!(s2, 404);
    assert_eq!(
        e2["error"]["message"], e["error"]["message"],
        "indistinguishable"
    );
    let (s, e) = a
        .post("/v1/groups/work/ack", json!({"deliveries": ["nope"]}))
        .await;
    assert_eq!(
        (s, e["error"]["param"].as_str()),
        (400, Some("deliveries[0]")),
        "{e}"
    );

    // Ack two, nack one (now), let the fifth expire.
    let (s, v) = a
        .post("/v1/groups/work/ack", json!({"deliveries": [t[0], t[1]]}))
        .await;
    assert_eq!((s, v["acked"].as_u64()), (200, Some(2)), "{v}");
    let (s, _) = a
        .post("/v1/groups/work/ack", json!({"deliveries": [t[0]]}))
        .await;
    assert_eq!(s, 404, "an ack counts once");
    let (s, _) = a
        .post("/v1/groups/work/nack", json!({"deliveries": [t[2]]}))
        .await;
    assert_eq!(s, 200);
    // The nacked one comes back at once, attempt 2 (kept a minute); the
    // fifth once its 2 s ran out.
    let mut again = a.receive_n("work", 1).await;
    assert_eq!(
        (seqs(&again), again[0]["attempt"].as_i64()),
        (vec![first[2]], Some(2))
    );
    let (s, _) = a
        .post(
            "/v1/groups/work/extend",
            json!({"deliveries": tokens(&again)}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = a
        .post(
            "/v1/groups/work/extend",
            json!({"deliveries": tokens(&again), "ms": 60000}),
        )
        .await;
    assert_eq!(s, 200);
    again.extend(a.receive_n("work", 1).await);
    assert_eq!(seqs(&again), vec![first[2], first[4]]);
    assert!(again.iter().all(|m| m["attempt"] == 2));
    // The old token of a redelivered message is void.
    let (s, _) = a
        .post("/v1/groups/work/ack", json!({"deliveries": [t[4]]}))
        .await;
    assert_eq!(s, 404);
    // Second failure of each: max_deliveries = 2, so both are dead.
    let (s, v) = a
        .post(
            "/v1/groups/work/nack",
            json!({"deliveries": tokens(&again)}),
        )
        .await;
    assert_eq!((s, v["dead"].as_u64()), (200, Some(2)), "{v}");
    let (s, d) = a.get("/v1/groups/work/dead").await;
    assert_eq!(s, 200);
    let dead: Vec<i64> = d["dead"]
        .as_array()
        .expect("dead")
        .iter()
        .map(|x| x["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(dead, vec![first[2], first[4]]);
    assert_eq!(d["dead"][0]["event"]["tenant"], "a");
    let (_, st) = a.get("/v1/groups/work/stats").await;
    assert_eq!(st["dead_letters"], 2, "{st}");
    assert_eq!(st["in_flight"], 1, "{st}");
    let (s, v) = a
        .post("/v1/groups/work/dead/requeue", json!({"seqs": [first[2]]}))
        .await;
    assert_eq!((s, v["requeued"].as_u64()), (200, Some(1)));
    let back = a.receive_n("work", 1).await;
    assert_eq!(
        (seqs(&back), back[0]["attempt"].as_i64()),
        (vec![first[2]], Some(1))
    );

    // Seek back to the first event: everything not yet acknowledged (the
    // extended and the requeued ones) and the acknowledged ones come again;
    // tokens from before are void; the dead letter stays parked.
    let (s, v) = a
        .post("/v1/groups/work/seek", json!({"seq": first[0]}))
        .await;
    assert_eq!((s, v["cursor"].as_i64()), (200, Some(first[0])));
    let (s, _) = a
        .post("/v1/groups/work/ack", json!({"deliveries": [t[3]]}))
        .await;
    assert_eq!(s, 404, "a seek voids the tokens of before");
    let replay = a.receive_n("work", 4).await;
    assert_eq!(
        seqs(&replay),
        vec![first[0], first[1], first[2], first[3]],
        "the dead letter {} stays parked",
        first[4]
    );
    // Seek forward past everything.
    let (s, v) = a
        .post(
            "/v1/groups/work/seek",
            json!({"time": "2999-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    insert(&db, "a", 6..=6).await;
    let after = a.receive_n("work", 1).await;
    assert!(
        after[0]["seq"].as_i64() > first.last().copied(),
        "{after:?}"
    );

    // Bad input.
    for (body, param) in [
        (json!({"max_messages": 0}), "max_messages"),
        (json!({"max_messages": 1001}), "max_messages"),
        (json!({"wait_ms": -1}), "wait_ms"),
        (json!({"other": 1}), "body"),
    ] {
        let (s, e) = a.post("/v1/groups/work/receive", body.clone()).await;
        assert_eq!(s, 400, "{body}: {e}");
        assert!(
            e["error"]["param"]
                .as_str()
                .is_some_and(|p| p.starts_with(param) || param == "body"),
            "{body}: {e}"
        );
    }
    let (s, e) = a.post("/v1/groups/nope/receive", json!({})).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("unknown_group"))
    );
    let (s, e) = a.post("/v1/groups", json!({"name": "x y"})).await;
    assert_eq!((s, e["error"]["param"].as_str()), (400, Some("name")));
    let (s, e) = a
        .post("/v1/groups", json!({"name": "late", "start": {"seq": 0}}))
        .await;
    assert_eq!((s, e["error"]["param"].as_str()), (400, Some("start.seq")));
    let anon = Api::new(server.addr, &key(&db, "a", Role::Anon).await);
    let (s, _) = anon.get("/v1/groups").await;
    assert_eq!(s, 403, "groups need a service key");
    let (s, v) = a.get("/v1/groups").await;
    assert_eq!(s, 200);
    assert_eq!(
        v["groups"].as_array().map(Vec::len),
        Some(1),
        "b's group is not listed"
    );
    common::stop_server(server, token).await;
}

/// With ordering by subject, events of one row never overlap in flight and
/// are acknowledged in seq order, while other rows go in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_by_subject_keeps_each_rows_events_in_order() {
    let db = TestDb::new("grp_order");
    db.client()
        .await
        .batch_execute(ITEMS)
        .await
        .expect("schema");
    let (server, token) = serve(&db).await;
    let a = Api::new(server.addr, &key(&db, "a", Role::Service).await);
    let (s, _) = a
        .post(
            "/v1/groups",
            json!({"name": "ord", "start": "beginning", "ordering": "subject", "ack_wait_ms": 60000, "max_deliveries": 100}),
        )
        .await;
    assert_eq!(s, 201);
    insert(&db, "a", 1..=10).await;
    let c = db.client().await;
    for round in 1..=9 {
        c.execute("UPDATE items SET n = $1 WHERE tenant = 'a'", &[&round])
            .await
            .expect("update");
    }
    let total = 100;
    let in_flight: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let acked: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..4u64 {
        let (a, in_flight, acked) = (a.clone(), in_flight.clone(), acked.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(w);
            loop {
                if acked.lock().expect("acked").len() >= total {
                    return;
                }
                let (s, v) = a
                    .post(
                        "/v1/groups/ord/receive",
                        json!({"max_messages": 5, "wait_ms": 200}),
                    )
                    .await;
                assert_eq!(s, 200, "{v}");
                let msgs = v["messages"].as_array().expect("messages").clone();
                for m in &msgs {
                    let subject = m["event"]["subject"].as_str().expect("subject").to_owned();
                    let seq = m["seq"].as_i64().expect("seq");
                    let prev = in_flight.lock().expect("lock").insert(subject.clone(), seq);
                    assert!(
                        prev.is_none(),
                        "{subject}: {seq} delivered while {prev:?} in flight"
                    );
                }
                for m in &msgs {
                    let subject = m["event"]["subject"].as_str().expect("subject").to_owned();
                    let seq = m["seq"].as_i64().expect("seq");
                    let t = m["delivery"].as_str().expect("token");
                    let nack = rng.gen_bool(0.2);
                    // Cleared before the server forgets it, so a mark is
                    // never stale.
                    in_flight.lock().expect("lock").remove(&subject);
                    let verb = if nack { "nack" } else { "ack" };
                    let (s, v) = a
                        .post(
                            &format!("/v1/groups/ord/{verb}"),
                            json!({"deliveries": [t]}),
                        )
                        .await;
                    assert_eq!(s, 200, "{v}");
                    if !nack {
                        acked.lock().expect("acked").push((subject, seq));
                    }
                }
            }
        }));
    }
    for w in workers {
        tokio::time::timeout(PATIENCE, w)
            .await
            .expect("in time")
            .expect("worker");
    }
    let acked = acked.lock().expect("acked").clone();
    assert_eq!(acked.len(), total);
    let mut per: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (s, q) in &acked {
        per.entry(s.clone()).or_default().push(*q);
    }
    assert_eq!(per.len(), 10);
    for (s, qs) in per {
        assert_eq!(qs.len(), 10, "{s}");
        assert!(
            qs.windows(2).all(|w| w[0] < w[1]),
            "{s} acked out of order: {qs:?}"
        );
    }
    let distinct: BTreeSet<i64> = acked.iter().map(|(_, q)| *q).collect();
    assert_eq!(distinct.len(), total, "each event acknowledged once");
    common::stop_server(server, token).await;
}

/// Four workers on two Sluice processes: random nacks, a worker that takes
/// messages and drops them, and one process killed (SIGKILL) and started
/// again while they work. In the end every event of the tenant was
/// acknowledged exactly once or is a dead letter; none is lost; events of
/// one subject never overlapped in flight and were acknowledged in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_on_two_processes_with_a_crash_settle_every_event_once() {
    use common::proc::{free_port, ready_as, serve_on, write_config};
    let seed: u64 = rand::thread_rng().gen();
    eprintln!("groups crash seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let db = TestDb::new("grp_crash");
    db.client()
        .await
        .batch_execute(ITEMS)
        .await
        .expect("schema");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &db, "public.items", "tenant", "");
    let (pa, pb) = (free_port(), free_port());
    let first = serve_on(&config, pa);
    let a_addr = ready_as(pa, "leader").await;
    let second = serve_on(&config, pb);
    let b_addr = ready_as(pb, "standby").await;
    let service = key(&db, "a", Role::Service).await;
    let api = Api::new(a_addr, &service);
    let (s, v) = api
        .post(
            "/v1/groups",
            json!({"name": "jobs", "start": "beginning", "ordering": "subject",
                   "ack_wait_ms": 3000, "max_deliveries": 3}),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    // The writer: 30 rows per tenant, then 300 updates of random rows.
    let writer = {
        let c = db.client().await;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 1);
        tokio::spawn(async move {
            for t in ["a", "b"] {
                c.execute(
                    "INSERT INTO items SELECT i, $1, 0 FROM generate_series(1, 30) i",
                    &[&t],
                )
                .await
                .expect("insert");
            }
            for _ in 0..300 {
                let t = if rng.gen_bool(0.7) { "a" } else { "b" };
                let id: i32 = rng.gen_range(1..=30);
                c.execute(
                    "UPDATE items SET n = n + 1 WHERE tenant = $1 AND id = $2",
                    &[&t, &id],
                )
                .await
                .expect("update");
                if rng.gen_bool(0.1) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };

    #[derive(Default)]
    struct Shared {
        acked: Vec<(String, i64)>,
        /// Acks whose answer was lost to a crash and whose retry found the
        /// message gone: acknowledged, or expired and to come again.
        uncertain: BTreeSet<i64>,
        /// What each acknowledgement was (for a failure's message).
        trail: Vec<(i64, String)>,
        in_flight: HashMap<String, i64>,
        done: bool,
    }
    let shared: Arc<Mutex<Shared>> = Arc::default();
    let addrs = [a_addr, b_addr];
    let mut workers = Vec::new();
    for w in 0..4usize {
        let shared = shared.clone();
        let service = service.clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(w as u64));
        workers.push(tokio::spawn(async move {
            let mut at = w % 2;
            // Worker 3 drops a third of what it takes.
            let dropper = w == 3;
            loop {
                if shared.lock().expect("lock").done {
                    return;
                }
                let api = Api::new(addrs[at], &service);
                let got = api
                    .try_call(
                        reqwest::Method::POST,
                        "/v1/groups/jobs/receive",
                        Some(json!({"max_messages": 10, "wait_ms": 500})),
                    )
                    .await;
                let msgs = match got {
                    Ok((200, v)) => v["messages"].as_array().expect("messages").clone(),
                    Ok((503, _)) | Err(_) => {
                        // That process is down (or its database link):
                        // go to the other one.
                        at = 1 - at;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Ok((s, v)) => panic!("receive: {s} {v}"),
                };
                for m in &msgs {
                    assert_eq!(m["event"]["tenant"], "a", "{m}");
                    let subject = m["event"]["subject"].as_str().expect("subject").to_owned();
                    let seq = m["seq"].as_i64().expect("seq");
                    let prev = shared
                        .lock()
                        .expect("lock")
                        .in_flight
                        .insert(subject.clone(), seq);
                    assert!(
                        prev.is_none(),
                        "{subject}: {seq} delivered while {prev:?} was in flight (seed {seed})"
                    );
                }
                let drop_these = dropper && rng.gen_bool(0.33);
                for m in &msgs {
                    let subject = m["event"]["subject"].as_str().expect("subject").to_owned();
                    let seq = m["seq"].as_i64().expect("seq");
                    shared.lock().expect("lock").in_flight.remove(&subject);
                    if drop_these {
                        continue;
                    }
                    let t = m["delivery"].as_str().expect("token").to_owned();
                    let nack = rng.gen_bool(0.15);
                    let (path, body) = if nack {
                        (
                            "/v1/groups/jobs/nack",
                            json!({"deliveries": [t], "delay_ms": rng.gen_range(0..50)}),
                        )
                    } else {
                        ("/v1/groups/jobs/ack", json!({"deliveries": [t]}))
                    };
                    // Settle through whichever process answers.
                    let mut retried = false;
                    loop {
                        let api = Api::new(addrs[at], &service);
                        match api
                            .try_call(reqwest::Method::POST, path, Some(body.clone()))
                            .await
                        {
                            Ok((200, _)) => {
                                if !nack {
                                    let mut sh = shared.lock().expect("lock");
                                    sh.acked.push((subject.clone(), seq));
                                    sh.trail.push((
                                        seq,
                                        format!(
                                            "worker {w} via port {} attempt {} token {t} retried {retried}",
                                            addrs[at].port(),
                                            m["attempt"]
                                        ),
                                    ));
                                }
                                break;
                            }
                            // Expired while a process was down (it comes
                            // again), or acknowledged by a try whose answer
                            // was lost.
                            Ok((404, _)) => {
                                if retried && !nack {
                                    shared.lock().expect("lock").uncertain.insert(seq);
                                }
                                break;
                            }
                            Ok((503, _)) | Err(_) => {
                                retried = true;
                                at = 1 - at;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Ok((s, v)) => panic!("{path}: {s} {v}"),
                        }
                    }
                }
            }
        }));
    }

    // Kill one process (at random) once work is under way, and start it
    // again.
    let poll = |n: usize| {
        let shared = shared.clone();
        async move {
            common::poll_until(PATIENCE, Duration::from_millis(50), || {
                let shared = shared.clone();
                async move {
                    let k = shared.lock().expect("lock").acked.len();
                    if k >= n {
                        Ok(())
                    } else {
                        Err(format!("{k} of {n} acknowledged"))
                    }
                }
            })
            .await
        }
    };
    poll(60).await;
    let kill_first = rng.gen_bool(0.5);
    let (_first, _second) = if kill_first {
        drop(first);
        ready_as(pb, "leader").await;
        (serve_on(&config, pa), second)
    } else {
        drop(second);
        (first, serve_on(&config, pb))
    };
    eprintln!(
        "killed the {}",
        if kill_first { "leader" } else { "standby" }
    );
    writer.await.expect("writer");

    // Every event of tenant a: acknowledged or dead, once.
    let c = db.client().await;
    // 60 inserts and 300 updates, all in the log.
    let all = common::wait_for_events(&c, 360).await;
    assert_eq!(all.len(), 360);
    let wanted: BTreeSet<i64> = all
        .iter()
        .filter(|e| e["tenant"] == "a")
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect();
    let dead = || async {
        let api = Api::new(b_addr, &service);
        match api
            .try_call(
                reqwest::Method::GET,
                "/v1/groups/jobs/dead?limit=1000",
                None,
            )
            .await
        {
            Ok((200, v)) => v["dead"]
                .as_array()
                .expect("dead")
                .iter()
                .map(|d| d["seq"].as_i64().expect("seq"))
                .collect::<BTreeSet<i64>>(),
            _ => BTreeSet::new(),
        }
    };
    // Done when the group has nothing left: every event read, none ready
    // or in flight.
    common::poll_until(PATIENCE, Duration::from_millis(200), || async {
        for addr in addrs {
            let api = Api::new(addr, &service);
            if let Ok((200, st)) = api
                .try_call(reqwest::Method::GET, "/v1/groups/jobs/stats", None)
                .await
            {
                return if st["backlog"] == 0 {
                    Ok(())
                } else {
                    Err(format!("left: {st}"))
                };
            }
        }
        Err("no process answers".to_owned())
    })
    .await;
    shared.lock().expect("lock").done = true;
    for w in workers {
        w.await.expect("worker");
    }
    let acked = shared.lock().expect("lock").acked.clone();
    let distinct: BTreeSet<i64> = acked.iter().map(|x| x.1).collect();
    if distinct.len() != acked.len() {
        let trail = shared.lock().expect("lock").trail.clone();
        let mut seen = BTreeMap::<i64, usize>::new();
        for (q, _) in &trail {
            *seen.entry(*q).or_default() += 1;
        }
        for (q, how) in &trail {
            if seen[q] > 1 {
                eprintln!("seq {q}: {how}");
            }
        }
    }
    assert_eq!(
        distinct.len(),
        acked.len(),
        "an event acknowledged twice (seed {seed})"
    );
    let dead = dead().await;
    assert!(
        distinct.is_disjoint(&dead),
        "acknowledged and dead (seed {seed})"
    );
    let uncertain = shared.lock().expect("lock").uncertain.clone();
    let settled: BTreeSet<i64> = distinct
        .iter()
        .chain(&dead)
        .chain(&uncertain)
        .copied()
        .collect();
    assert_eq!(
        settled, wanted,
        "every event settled, none lost (seed {seed})"
    );
    let mut per: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (s, q) in &acked {
        per.entry(s.clone()).or_default().push(*q);
    }
    for (s, qs) in per {
        assert!(
            qs.windows(2).all(|w| w[0] < w[1]),
            "{s} acknowledged out of order: {qs:?} (seed {seed})"
        );
    }
    eprintln!(
        "{} acknowledged, {} dead letters, {} acks whose answer a crash lost",
        acked.len(),
        dead.len(),
        uncertain.len()
    );
}

/// A group over a WebSocket: events within the subscription's budget, ack
/// and nack messages, and a dropped socket's unsettled messages back to the
/// group after ack_wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_takes_group_work_within_its_budget() {
    use common::ws::{connect, recv, send};
    let db = TestDb::new("grp_ws");
    db.client()
        .await
        .batch_execute(ITEMS)
        .await
        .expect("schema");
    let (server, token) = serve(&db).await;
    let service = key(&db, "a", Role::Service).await;
    let a = Api::new(server.addr, &service);
    let (s, _) = a
        .post(
            "/v1/groups",
            json!({"name": "ws", "start": "beginning", "ack_wait_ms": 60000}),
        )
        .await;
    assert_eq!(s, 201);
    insert(&db, "a", 1..=10).await;
    let mut ws = connect(server.addr, "").await;
    send(&mut ws, json!({"type": "auth", "token": service})).await;
    assert_eq!(recv(&mut ws).await["type"], "auth_ok");
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "w1", "group": "nope"}),
    )
    .await;
    let e = recv(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("unknown_id")),
        "{e}"
    );
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "w1", "group": "ws", "topic": "tables/**"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["code"], "invalid_message");
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "w1", "group": "ws", "max_in_flight": 3}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    // Events and replies interleave on the socket: events that come while
    // a reply is awaited wait in `inbox`.
    let mut inbox: std::collections::VecDeque<Value> = Default::default();
    async fn reply(
        ws: &mut common::ws::Ws,
        inbox: &mut std::collections::VecDeque<Value>,
    ) -> Value {
        loop {
            let m = recv(ws).await;
            if m["type"] == "event" {
                inbox.push_back(m);
            } else {
                return m;
            }
        }
    }
    let mut acked: Vec<i64> = Vec::new();
    let mut nacked_once = false;
    let mut most_held = 0;
    let mut held = 0usize;
    while acked.len() < 10 {
        let m = match inbox.pop_front() {
            Some(m) => m,
            None => recv(&mut ws).await,
        };
        assert_eq!(m["type"], "event", "{m}");
        assert_eq!(m["sub"], "w1");
        held += 1;
        most_held = most_held.max(held + inbox.len());
        let t = m["delivery"].as_str().expect("delivery").to_owned();
        if !nacked_once {
            nacked_once = true;
            send(
                &mut ws,
                json!({"type": "nack", "id": "w1", "deliveries": [t]}),
            )
            .await;
            let r = reply(&mut ws, &mut inbox).await;
            assert_eq!(
                (r["type"].as_str(), r["count"].as_u64()),
                (Some("nacked"), Some(1)),
                "{r}"
            );
            held -= 1;
            continue;
        }
        send(
            &mut ws,
            json!({"type": "ack", "id": "w1", "deliveries": [t]}),
        )
        .await;
        let r = reply(&mut ws, &mut inbox).await;
        assert_eq!(
            (r["type"].as_str(), r["count"].as_u64()),
            (Some("acked"), Some(1)),
            "{r}"
        );
        held -= 1;
        acked.push(m["seq"].as_i64().expect("seq"));
    }
    assert!(
        most_held <= 3,
        "at most max_in_flight (3) unsettled at once, saw {most_held}"
    );
    let distinct: BTreeSet<i64> = acked.iter().copied().collect();
    assert_eq!(distinct.len(), 10, "each of the 10 once: {acked:?}");
    // Unknown tokens are told, not guessed at.
    send(
        &mut ws,
        json!({"type": "ack", "id": "w1", "deliveries": ["1.0000000000000000000000000000000f"]}),
    )
    .await;
    let r = recv(&mut ws).await;
    assert_eq!(r["unknown"].as_array().map(Vec::len), Some(1), "{r}");
    drop(ws);

    // A socket dropped with work in hand: the group takes it back (a short
    // ack_wait from here on, for the messages read after the change).
    let r = a
        .http
        .patch(format!("{}/v1/groups/ws", a.base))
        .header("authorization", format!("Bearer {}", a.key))
        .header("content-type", "application/json")
        .body(json!({"ack_wait_ms": 500}).to_string())
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status().as_u16(), 200);
    insert(&db, "a", 11..=12).await;
    let mut ws2 = connect(server.addr, "").await;
    send(&mut ws2, json!({"type": "auth", "token": service})).await;
    assert_eq!(recv(&mut ws2).await["type"], "auth_ok");
    send(
        &mut ws2,
        json!({"type": "subscribe", "id": "w2", "group": "ws"}),
    )
    .await;
    assert_eq!(recv(&mut ws2).await["type"], "subscribed");
    let first = recv(&mut ws2).await;
    let second = recv(&mut ws2).await;
    let held: BTreeSet<i64> = [&first, &second]
        .iter()
        .map(|m| m["seq"].as_i64().expect("seq"))
        .collect();
    drop(ws2);
    let again = a.receive_n("ws", 2).await;
    assert_eq!(seqs(&again).into_iter().collect::<BTreeSet<_>>(), held);
    assert!(again.iter().all(|m| m["attempt"] == 2));
    common::stop_server(server, token).await;
}

/// A group started at a backfill sees the table's rows as they were read,
/// then the changes after; and a group of another tenant never sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_from_a_backfill_sees_the_table_then_its_changes() {
    let db = TestDb::new("grp_bf");
    db.client()
        .await
        .batch_execute(ITEMS)
        .await
        .expect("schema");
    let (server, token) = serve(&db).await;
    insert(&db, "a", 1..=5).await;
    insert(&db, "b", 100..=102).await;
    let admin = sluice::auth::keys::create_key(
        &db.client().await,
        None,
        Role::Admin,
        None,
        &serde_json::Map::new(),
        None,
    )
    .await
    .expect("admin key")
    .1;
    let ops = Api::new(server.addr, &admin);
    let (s, bf) = ops
        .post("/v1/backfills", json!({"table": "public.items"}))
        .await;
    assert_eq!(s, 201, "{bf}");
    let id = bf["id"].as_i64().expect("backfill id");
    common::poll_until(PATIENCE, Duration::from_millis(100), || async {
        let (_, b) = ops.get(&format!("/v1/backfills/{id}")).await;
        if b["status"] == "done" {
            Ok(())
        } else {
            Err(format!("backfill {b}"))
        }
    })
    .await;
    insert(&db, "a", 6..=6).await;
    let a = Api::new(server.addr, &key(&db, "a", Role::Service).await);
    let (s, v) = a
        .post(
            "/v1/groups",
            json!({"name": "bf", "start": {"backfill": id}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = a
        .post(
            "/v1/groups",
            json!({"name": "x", "start": {"backfill": 999_999}}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (400, Some("start.backfill")),
        "{v}"
    );
    let got = a.receive_n("bf", 6).await;
    let kinds: Vec<(String, i64)> = got
        .iter()
        .map(|m| {
            (
                m["event"]["type"].as_str().expect("type").to_owned(),
                m["event"]["data"]["new"]["id"].as_i64().expect("id"),
            )
        })
        .collect();
    let mut snapshot: Vec<i64> = kinds
        .iter()
        .filter(|k| k.0 == "row.snapshot")
        .map(|k| k.1)
        .collect();
    snapshot.sort_unstable();
    assert_eq!(snapshot, vec![1, 2, 3, 4, 5], "{kinds:?}");
    assert_eq!(
        kinds.last(),
        Some(&("row.inserted".to_owned(), 6)),
        "{kinds:?}"
    );
    assert!(got.iter().all(|m| m["event"]["tenant"] == "a"));
    common::stop_server(server, token).await;
}

/// Settings change with PATCH (not the position); DELETE removes a group
/// and its messages; stats count what is waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_changed_counted_and_deleted() {
    let db = TestDb::new("grp_crud");
    db.client()
        .await
        .batch_execute(ITEMS)
        .await
        .expect("schema");
    let (server, token) = serve(&db).await;
    let a = Api::new(server.addr, &key(&db, "a", Role::Service).await);
    let (s, _) = a
        .post("/v1/groups", json!({"name": "g", "start": "beginning"}))
        .await;
    assert_eq!(s, 201);
    insert(&db, "a", 1..=4).await;
    // Stats see the four once they are in the log.
    common::poll_until(PATIENCE, Duration::from_millis(50), || async {
        let (_, st) = a.get("/v1/groups/g/stats").await;
        if st["backlog"] == 4 {
            Ok(())
        } else {
            Err(format!("{st}"))
        }
    })
    .await;
    let got = a.receive_n("g", 1).await;
    let (_, st) = a.get("/v1/groups/g/stats").await;
    assert_eq!(
        (st["in_flight"].as_i64(), st["backlog"].as_i64()),
        (Some(1), Some(4)),
        "{st}"
    );
    let metrics = common::http::get(server.addr, "/metrics", &[]).await;
    let text = String::from_utf8(metrics.body).expect("utf8");
    assert!(
        text.lines()
            .any(|l| l == "sluice_group_messages{state=\"in_flight\"} 1"),
        "{text}"
    );
    assert!(text
        .lines()
        .any(|l| l.starts_with("sluice_group_deliveries_total ")));
    let r = a
        .http
        .patch(format!("{}/v1/groups/g", a.base))
        .header("authorization", format!("Bearer {}", a.key))
        .header("content-type", "application/json")
        .body(
            json!({"max_deliveries": 9, "ordering": "subject", "topics": ["tables/**"]})
                .to_string(),
        )
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status().as_u16(), 200);
    let (_, g) = a.get("/v1/groups/g").await;
    assert_eq!(
        (
            g["max_deliveries"].as_i64(),
            g["ordering"].as_str(),
            g["topics"][0].as_str()
        ),
        (Some(9), Some("subject"), Some("tables/**")),
        "{g}"
    );
    // The position did not move: the rest still comes.
    let rest = a.receive_n("g", 3).await;
    assert!(seqs(&rest)
        .iter()
        .all(|s| *s > got[0]["seq"].as_i64().expect("seq")));
    let r = a
        .http
        .delete(format!("{}/v1/groups/g", a.base))
        .header("authorization", format!("Bearer {}", a.key))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status().as_u16(), 204);
    let (s, e) = a.get("/v1/groups/g").await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("unknown_group"))
    );
    let left: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM sluice.group_messages", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "a deleted group's messages go with it");
    common::stop_server(server, token).await;
}
