//! Live queries (`snapshot=true`) against a real Postgres and a real
//! server: the current rows of a table a subscriber may see, `synced`, then
//! every change, with no gap and no duplicate. A writer changes random rows
//! (moving them in and out of the filter) while subscribers start at random
//! moments; each subscriber's stream, replayed, equals the table at the
//! matching log position. Tenant and policy isolation, resuming, every
//! transport, shared reads and the row limit.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::http::{get, stream, SseEvent};
use common::ws::{connect, recv, send};
use common::{key, poll_until, serve_items, TestDb, PATIENCE};
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use sluice::auth::keys::create_key;
use sluice::auth::Role;
use sluice::event::TenantId;

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, tenant text NOT NULL, owner text, status text, n int, secret text);
     ALTER TABLE items REPLICA IDENTITY FULL;";

/// Members see the items they own, without `secret`.
const POLICIES: &str = r#"[
  {role="member", table="public.items", rows={field="new.owner", op="eq", claim="sub"}, hide_columns=["secret"]},
]"#;

/// The id of the row the tests insert last: once a subscriber has it, it
/// has everything before it.
const SENTINEL: i64 = 1_000_000;

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn setup(
    prefix: &str,
    extra: &[(&str, &str)],
) -> (
    TestDb,
    sluice::server::Server,
    tokio_util::sync::CancellationToken,
) {
    let db = TestDb::new(prefix);
    db.client()
        .await
        .batch_execute(ITEMS)
        .await
        .expect("schema");
    // `public.items` captured, with the members' policy.
    let mut env = vec![("SLUICE_POLICIES", POLICIES)];
    env.extend_from_slice(extra);
    let (server, token) = serve_items(&db, &env).await;
    (db, server, token)
}

async fn member_key(db: &TestDb, tenant: &str, sub: &str) -> String {
    let claims: Map<String, Value> = [("sub".to_owned(), json!(sub))].into_iter().collect();
    create_key(
        &db.client().await,
        Some(&TenantId::new(tenant).expect("tenant")),
        Role::Anon,
        None,
        &claims,
        Some("member"),
    )
    .await
    .expect("create key")
    .1
}

/// A subscriber's view: the rows by id, as the events carry them.
#[derive(Debug, Default, Clone, PartialEq)]
struct View(BTreeMap<i64, Value>);

impl View {
    fn apply(&mut self, e: &Value) {
        let data = &e["data"];
        let id = || {
            data["key"]["id"]
                .as_i64()
                .unwrap_or_else(|| panic!("a key in {e}"))
        };
        match e["type"].as_str().expect("type") {
            "row.snapshot" | "row.inserted" | "row.updated" | "row.entered" => {
                self.0.insert(id(), data["new"].clone());
            }
            "row.deleted" | "row.left" => {
                self.0.remove(&id());
            }
            "row.truncated" => self.0.clear(),
            other => panic!("unexpected event type {other} in {e}"),
        }
    }

    /// What differs from `want`, by key (for a readable failure).
    fn diff(&self, want: &View) -> Vec<String> {
        let mut keys: Vec<&i64> = self.0.keys().chain(want.0.keys()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys.into_iter()
            .filter(|k| self.0.get(k) != want.0.get(k))
            .map(|k| format!("{k}: got {:?}, want {:?}", self.0.get(k), want.0.get(k)))
            .collect()
    }

    fn open(&self) -> View {
        View(
            self.0
                .iter()
                .filter(|(_, r)| r["status"] == "open")
                .map(|(k, r)| (*k, r.clone()))
                .collect(),
        )
    }
}

/// The whole log of the tenant's `items`, as its service key reads it.
async fn log_of(addr: SocketAddr, service: &str) -> Vec<Value> {
    let auth = format!("Bearer {service}");
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let r = get(
            addr,
            &format!("/v1/events?table=public.items&from={from}&limit=1000"),
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(r.status, 200);
        let page = r.json();
        let events = page["events"].as_array().expect("events").clone();
        let next = page["next_from"].as_i64().expect("next_from");
        if next == from {
            return out;
        }
        out.extend(events);
        from = next;
    }
}

/// The table's rows of the tenant at every seq of its log: `at(seq)` is
/// the state once every event up to `seq` is applied.
struct Truth {
    log: Vec<Value>,
}

impl Truth {
    fn walker(&self) -> Walker<'_> {
        Walker {
            log: &self.log,
            next: 0,
            view: View::default(),
        }
    }
}

struct Walker<'a> {
    log: &'a [Value],
    next: usize,
    view: View,
}

impl Walker<'_> {
    /// The table at `seq` (`seq` never goes back).
    fn at(&mut self, seq: i64) -> &View {
        while self.next < self.log.len() && self.log[self.next]["seq"].as_i64().expect("seq") <= seq
        {
            self.view.apply(&self.log[self.next]);
            self.next += 1;
        }
        &self.view
    }
}

/// SSE events until both `synced` and the sentinel row have come (the
/// sentinel may be among the rows or a change after `synced`).
async fn collect_until_sentinel(s: &mut common::http::Stream) -> Vec<SseEvent> {
    let mut out = Vec::new();
    let (mut synced, mut sentinel) = (false, false);
    while !(synced && sentinel) {
        let Some(ev) = tokio::time::timeout(PATIENCE, s.next_event())
            .await
            .expect("synced and the sentinel within the patience window")
        else {
            panic!("the stream ended before the sentinel: {out:?}")
        };
        if ev.event.as_deref() == Some("synced") {
            synced = true;
        } else {
            sentinel |= serde_json::from_str::<Value>(&ev.data)
                .ok()
                .is_some_and(|v| v["data"]["key"]["id"] == SENTINEL);
        }
        out.push(ev);
    }
    out
}

/// Subscribers that start at points of a writer's progress (not at moments
/// of a clock): `start(milestone)` waits until the writer has committed
/// that many transactions, and `started` counts the opened streams.
#[derive(Clone)]
struct Milestones {
    written: tokio::sync::watch::Receiver<usize>,
    started: tokio::sync::mpsc::Sender<()>,
}

impl Milestones {
    async fn start(&mut self, milestone: usize) {
        self.written
            .wait_for(|n| *n >= milestone)
            .await
            .expect("the writer runs");
    }
}

/// Checks one live query's stream against the log: before `synced`, no
/// frame has an id; replayed to `synced` it is the table at `H`; each event
/// after it has the id of its seq and leaves the replay equal to the table
/// at that seq. Returns the replayed view and `H`.
fn check_stream(events: &[SseEvent], truth: &Truth, tenant: &str, filtered: bool) -> (View, i64) {
    let mut view = View::default();
    let mut walker = truth.walker();
    let synced = events
        .iter()
        .position(|e| e.event.as_deref() == Some("synced"))
        .unwrap_or_else(|| panic!("no synced frame in {events:?}"));
    let expect = |w: &View| if filtered { w.open() } else { w.clone() };
    for e in &events[..synced] {
        assert_eq!(e.id, None, "frames before synced carry no id: {e:?}");
        let v: Value = serde_json::from_str(&e.data).expect("json");
        assert_eq!(v["tenant"], tenant, "{v}");
        view.apply(&v);
    }
    let s = &events[synced];
    let handover: i64 =
        s.id.as_deref()
            .expect("synced has an id")
            .parse()
            .expect("seq");
    assert_eq!(
        serde_json::from_str::<Value>(&s.data).expect("json"),
        json!({ "seq": handover })
    );
    let want = expect(walker.at(handover));
    assert!(
        view == want,
        "the replay at synced (H = {handover}): {:?}",
        view.diff(&want)
    );
    let mut last = handover;
    for e in &events[synced + 1..] {
        let v: Value = serde_json::from_str(&e.data).expect("json");
        let seq = v["seq"].as_i64().expect("seq");
        assert_eq!(e.id.as_deref(), Some(seq.to_string().as_str()), "{e:?}");
        assert!(seq > last, "seqs rise after synced: {seq} after {last}");
        last = seq;
        assert_eq!(v["tenant"], tenant, "{v}");
        view.apply(&v);
        let want = expect(walker.at(seq));
        assert!(
            view == want,
            "the replay at seq {seq}: {:?}",
            view.diff(&want)
        );
    }
    (view, handover)
}

type Rows = BTreeMap<i64, (Option<String>, Option<i32>)>;

/// The rows of `got` and `want` that differ, with the log's events of each
/// (any tenant), for a failure that says what happened.
async fn explain(db: &TestDb, got: &Rows, want: &Rows) -> String {
    let mut bad: Vec<i64> = got
        .keys()
        .chain(want.keys())
        .filter(|k| got.get(k) != want.get(k))
        .copied()
        .collect();
    bad.dedup();
    let mut why = Vec::new();
    for id in &bad {
        why.push(format!(
            "{id}: got {:?}, want {:?}",
            got.get(id),
            want.get(id)
        ));
        let subject = format!("public.items/{id}");
        for r in db
            .client()
            .await
            .query(
                "SELECT seq, tenant, type, txid::text, data::text FROM sluice.event_log WHERE subject = $1 ORDER BY seq",
                &[&subject],
            )
            .await
            .expect("event_log")
        {
            why.push(format!(
                "  seq {} {} {} txid {} {}",
                r.get::<_, i64>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2),
                r.get::<_, Option<String>>(3).unwrap_or_default(),
                r.get::<_, String>(4)
            ));
        }
    }
    let seqs: Vec<i64> = db
        .client()
        .await
        .query("SELECT seq FROM sluice.event_log ORDER BY seq", &[])
        .await
        .expect("event_log")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let holes: Vec<(i64, i64)> = seqs
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0], w[1]))
        .collect();
    why.push(format!(
        "log seqs: {} rows, last {:?}, holes {holes:?}",
        seqs.len(),
        seqs.last()
    ));
    why.join("\n")
}

fn rows_of(view: &View) -> Rows {
    view.0
        .iter()
        .map(|(k, r)| {
            (
                *k,
                (
                    r["status"].as_str().map(str::to_owned),
                    r["n"].as_i64().map(|n| n as i32),
                ),
            )
        })
        .collect()
}

/// The table's rows of `tenant` with status `open`, as SQL reads them now.
async fn open_rows(db: &TestDb, tenant: &str) -> Rows {
    db.client()
        .await
        .query(
            "SELECT id, status, n FROM items WHERE tenant = $1 AND status = 'open'",
            &[&tenant],
        )
        .await
        .expect("select")
        .iter()
        .map(|r| (i64::from(r.get::<_, i32>(0)), (r.get(1), r.get(2))))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_queries_started_during_random_writes_replay_to_the_table() {
    // Reads are not shared once done, so every subscriber that starts after
    // another's read finished takes its own snapshot mid-write.
    let (db, server, token) = setup("live_random", &[("SLUICE_HTTP_LIVE_SHARE_MS", "0")]).await;
    let addr = server.addr;
    let service = key(&db, "acme", Role::Service).await;
    let src = db.client().await;
    // More rows than one page of the initial read (2,500).
    src.batch_execute(
        "INSERT INTO items SELECT g, 'acme', 'u1', CASE WHEN g % 3 = 0 THEN 'open' ELSE 'closed' END, g, 's'
           FROM generate_series(1, 2600) g;
         INSERT INTO items SELECT g, 'other', 'u1', 'open', g, 's' FROM generate_series(5001, 5200) g;",
    )
    .await
    .expect("rows");

    let filter = enc(r#"{"field":"status","op":"eq","value":"open"}"#);
    let (written, progress) = tokio::sync::watch::channel(0usize);
    let (started, mut opened) = tokio::sync::mpsc::channel(20);
    let milestones = Milestones {
        written: progress,
        started,
    };
    let mut subscribers = Vec::new();
    for i in 0..20 {
        // Half filtered, half the whole table; subscriber i starts once
        // the writer has committed 20 × i transactions.
        let path = if i % 2 == 0 {
            format!("/v1/events/subscribe?table=public.items&snapshot=true&filter={filter}")
        } else {
            "/v1/events/subscribe?table=public.items&snapshot=true".to_owned()
        };
        let auth = format!("Bearer {service}");
        let mut m = milestones.clone();
        subscribers.push(tokio::spawn(async move {
            m.start(20 * i).await;
            let mut s = stream(addr, &path, &[("authorization", &auth)]).await;
            assert_eq!(s.status, 200);
            m.started.send(()).await.expect("counted");
            (i % 2 == 0, collect_until_sentinel(&mut s).await)
        }));
    }
    drop(milestones);

    // The writer: 400 transactions of 1 to 3 changes each, in both
    // tenants, moving rows in and out of the filter.
    let writer = {
        let mut c = db.client().await;
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let mut next_id = 3000;
            for _ in 0..400 {
                let tx = c.transaction().await.expect("begin");
                for _ in 0..rng.gen_range(1..=3) {
                    let tenant = if rng.gen_bool(0.8) { "acme" } else { "other" };
                    let base = if tenant == "acme" { 1 } else { 5001 };
                    let id = rng.gen_range(base..base + 200);
                    let status = if rng.gen_bool(0.5) { "open" } else { "closed" };
                    match rng.gen_range(0..4) {
                        0 => {
                            next_id += 1;
                            let id = if tenant == "acme" {
                                next_id
                            } else {
                                next_id + 10_000
                            };
                            tx.execute(
                                "INSERT INTO items VALUES ($1, $2, 'u1', $3, 0, 's')",
                                &[&id, &tenant, &status],
                            )
                            .await
                            .expect("insert");
                        }
                        1 => {
                            tx.execute(
                                "UPDATE items SET status = $2 WHERE id = $1",
                                &[&id, &status],
                            )
                            .await
                            .expect("update status");
                        }
                        2 => {
                            tx.execute("UPDATE items SET n = n + 1 WHERE id = $1", &[&id])
                                .await
                                .expect("update n");
                        }
                        _ => {
                            tx.execute("DELETE FROM items WHERE id = $1", &[&id])
                                .await
                                .expect("delete");
                        }
                    }
                }
                tx.commit().await.expect("commit");
                written.send_modify(|n| *n += 1);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    writer.await.expect("writer");
    // Every stream is open before the sentinel goes in.
    for _ in 0..20 {
        opened.recv().await.expect("a subscriber started");
    }
    src.execute(
        "INSERT INTO items VALUES ($1, 'acme', 'u1', 'open', 0, 's')",
        &[&(SENTINEL as i32)],
    )
    .await
    .expect("sentinel");

    let mut streams = Vec::new();
    for s in subscribers {
        streams.push(s.await.expect("subscriber"));
    }
    let truth = Truth {
        log: log_of(addr, &service).await,
    };
    assert!(
        truth.log.len() > 2800,
        "the log holds the rows and the writes"
    );
    let stored: Vec<i64> = db
        .client()
        .await
        .query(
            "SELECT seq FROM sluice.event_log WHERE tenant = 'acme' AND topic LIKE 'tables/public.items/%' ORDER BY seq",
            &[],
        )
        .await
        .expect("event_log")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let read: Vec<i64> = truth
        .log
        .iter()
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect();
    if stored != read {
        let missing: Vec<&i64> = stored.iter().filter(|s| !read.contains(s)).collect();
        panic!(
            "GET /v1/events read {} events, the log holds {}; missing {missing:?}",
            read.len(),
            stored.len()
        );
    }
    let want = open_rows(&db, "acme").await;
    // The log itself, replayed, is the table (what the live queries are
    // checked against).
    let mut whole = truth.walker();
    let logged = rows_of(&whole.at(i64::MAX).open());
    if logged != want {
        panic!(
            "the log replayed is not the table: {}",
            explain(&db, &logged, &want).await
        );
    }
    for (filtered, events) in &streams {
        let (view, _) = check_stream(events, &truth, "acme", *filtered);
        // And the end state is the table's, as SQL reads it.
        let got = rows_of(&view.open());
        if got != want {
            panic!(
                "the replayed view is not the table (filtered: {filtered}): {}",
                explain(&db, &got, &want).await
            );
        }
    }
    token.cancel();
    server.wait().await.expect("server stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_queries_hold_to_tenant_and_policy_on_every_transport_and_resume_with_changes() {
    let (db, server, token) = setup("live_policy", &[]).await;
    let addr = server.addr;
    let src = db.client().await;
    // The policy decides on the old row too.
    src.batch_execute(
        "ALTER TABLE items REPLICA IDENTITY FULL;
         INSERT INTO items VALUES (1, 'acme', 'u1', 'open', 1, 'x1'), (2, 'acme', 'u2', 'open', 2, 'x2'),
                                  (3, 'acme', 'u1', 'closed', 3, 'x3'), (4, 'other', 'u1', 'open', 4, 'x4');",
    )
    .await
    .expect("rows");
    let member = member_key(&db, "acme", "u1").await;
    let sse = format!("/v1/events/subscribe?table=public.items&snapshot=true&apikey={member}");
    let mut s = stream(addr, &sse, &[]).await;
    assert_eq!(s.status, 200);
    let mut rows = Vec::new();
    let handover = loop {
        let e = s.expect_event(PATIENCE).await;
        if e.event.as_deref() == Some("synced") {
            break e.id.expect("id").parse::<i64>().expect("seq");
        }
        assert_eq!(e.event.as_deref(), Some("row.snapshot"));
        assert_eq!(e.id, None);
        rows.push(serde_json::from_str::<Value>(&e.data).expect("json"));
    };
    let ids: Vec<i64> = rows
        .iter()
        .map(|r| r["data"]["key"]["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids, [1, 3], "own rows of its tenant only, in key order");
    for r in &rows {
        assert_eq!(r["tenant"], "acme");
        assert_eq!(r["seq"], 0, "a snapshot row is not a log event");
        assert!(
            r["data"]["new"].get("secret").is_none(),
            "secret is hidden: {r}"
        );
        assert_eq!(r["data"]["new"]["owner"], "u1");
    }
    // Changes after synced, as the policy shows them.
    src.batch_execute(
        "UPDATE items SET n = 10 WHERE id = 1;
         UPDATE items SET n = 20 WHERE id = 2;
         UPDATE items SET owner = 'u2' WHERE id = 3;
         UPDATE items SET owner = 'u1' WHERE id = 2;
         UPDATE items SET n = 40 WHERE id = 4;",
    )
    .await
    .expect("changes");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let e = s.expect_event(PATIENCE).await;
        let v: Value = serde_json::from_str(&e.data).expect("json");
        assert!(v["seq"].as_i64().expect("seq") > handover);
        assert_eq!(e.id, Some(v["seq"].to_string()));
        assert!(
            v["data"]["new"].get("secret").is_none() && v["data"]["old"].get("secret").is_none()
        );
        seen.push((
            v["type"].as_str().expect("type").to_owned(),
            v["data"]["key"]["id"].as_i64().expect("id"),
        ));
    }
    assert_eq!(
        seen,
        [
            ("row.updated".to_owned(), 1),
            ("row.left".to_owned(), 3),
            ("row.entered".to_owned(), 2)
        ]
    );
    let last_id = {
        // Resuming after synced: changes only, no rows and no synced.
        src.execute("UPDATE items SET n = 11 WHERE id = 1", &[])
            .await
            .expect("update");
        let mut again = stream(addr, &sse, &[("last-event-id", &handover.to_string())]).await;
        let first = again.expect_event(PATIENCE).await;
        assert_eq!(first.event.as_deref(), Some("row.updated"), "{first:?}");
        assert_eq!(
            serde_json::from_str::<Value>(&first.data).expect("json")["data"]["key"]["id"],
            1
        );
        first.id.expect("id")
    };
    assert!(last_id.parse::<i64>().expect("seq") > handover);

    // The WebSocket: rows as event frames, then synced, then changes.
    let mut ws = connect(addr, "").await;
    send(&mut ws, json!({"type": "auth", "token": member})).await;
    assert_eq!(recv(&mut ws).await["type"], "auth_ok");
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "todo", "table": "public.items", "snapshot": true,
               "filter": {"field": "n", "op": "gte", "value": 11}}),
    )
    .await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "subscribed", "id": "todo"})
    );
    let r = recv(&mut ws).await;
    assert_eq!(r["type"], "event");
    assert_eq!(r["sub"], "todo");
    assert_eq!(r["event"]["type"], "row.snapshot");
    assert_eq!(r["event"]["data"]["new"]["n"], 11);
    let ids: Vec<i64> = vec![r["event"]["data"]["key"]["id"].as_i64().expect("id")];
    let r = recv(&mut ws).await;
    assert_eq!(r["event"]["data"]["key"]["id"], 2, "{r}");
    let synced = recv(&mut ws).await;
    assert_eq!(synced["type"], "synced", "{synced}");
    assert_eq!(synced["id"], "todo");
    let h = synced["seq"].as_i64().expect("seq");
    assert_eq!(ids, [1]);
    // A row that leaves the filter leaves the view.
    src.execute("UPDATE items SET n = 5 WHERE id = 2", &[])
        .await
        .expect("update");
    let left = recv(&mut ws).await;
    assert_eq!(left["event"]["type"], "row.left", "{left}");
    assert_eq!(left["event"]["data"]["key"]["id"], 2);
    assert!(left["event"]["seq"].as_i64().expect("seq") > h);

    // NDJSON: the rows, the synced line, and the end.
    let r = get(
        addr,
        &format!("/v1/events?format=ndjson&table=public.items&snapshot=true&apikey={member}"),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    let lines: Vec<Value> = String::from_utf8(r.body)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let (last, rows) = lines.split_last().expect("lines");
    assert_eq!(last["synced"], true, "{last}");
    assert_eq!(last["next_from"], last["seq"].as_i64().expect("seq") + 1);
    // (A read a moment old may be shared: then its changes since follow.)
    let mut view = View::default();
    rows.iter().for_each(|r| view.apply(r));
    let ids: Vec<i64> = view.0.keys().copied().collect();
    assert_eq!(ids, [1, 2], "the member's rows now");
    assert_eq!(view.0[&1]["n"], 11);

    // Precise errors.
    let service = key(&db, "acme", Role::Service).await;
    let auth = format!("Bearer {service}");
    for (path, param) in [
        ("/v1/events/subscribe?snapshot=true", "table"),
        (
            "/v1/events/subscribe?snapshot=true&table=public.items&topic=custom/*",
            "table",
        ),
        (
            "/v1/events/subscribe?snapshot=yes&table=public.items",
            "snapshot",
        ),
        ("/v1/events?snapshot=true&table=public.items", "snapshot"),
        (
            "/v1/events?format=ndjson&snapshot=true&table=public.items&limit=5",
            "limit",
        ),
    ] {
        let r = get(addr, path, &[("authorization", &auth)]).await;
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.json()["error"]["param"], param, "{path}: {}", r.json());
    }
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "two", "topic": "custom/*", "table": "public.items", "snapshot": true}),
    )
    .await;
    let err = recv(&mut ws).await;
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "invalid_message", "{err}");
    token.cancel();
    server.wait().await.expect("server stops cleanly");
}

/// The value of an unlabelled counter in `/metrics`.
async fn metric(addr: SocketAddr, name: &str) -> u64 {
    let body = String::from_utf8(get(addr, "/metrics", &[]).await.body).expect("utf-8");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} in /metrics"))
        .trim()
        .parse()
        .expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_of_one_shape_share_a_read_and_an_oversized_read_fails_clearly() {
    // A read stays shared for an hour (longer than the test); at most 50 rows per read.
    let (db, server, token) = setup(
        "live_shared",
        &[
            ("SLUICE_HTTP_LIVE_SHARE_MS", "3600000"),
            ("SLUICE_HTTP_MAX_SNAPSHOT_ROWS", "50"),
        ],
    )
    .await;
    let addr = server.addr;
    let src = db.client().await;
    src.batch_execute(
        "INSERT INTO items SELECT g, 'acme', 'u1', CASE WHEN g % 2 = 0 THEN 'open' ELSE 'closed' END, g, 's'
           FROM generate_series(1, 80) g;",
    )
    .await
    .expect("rows");
    let service = key(&db, "acme", Role::Service).await;
    let auth = format!("Bearer {service}");
    let open = enc(r#"{"field":"status","op":"eq","value":"open"}"#);
    let path = format!("/v1/events/subscribe?table=public.items&snapshot=true&filter={open}");
    let reads_before = metric(addr, "sluice_live_reads_total").await;
    let mut first_rows = None;
    for i in 0..10 {
        if i == 9 {
            // A change after the shared read: the late subscriber gets it
            // from the log (before synced if it is in the log by then: a
            // shared read is brought up to the head; else just after).
            src.execute("UPDATE items SET status = 'open' WHERE id = 1", &[])
                .await
                .expect("update");
        }
        let mut s = stream(addr, &path, &[("authorization", &auth)]).await;
        let mut rows = Vec::new();
        let mut changes = Vec::new();
        loop {
            let e = s.expect_event(PATIENCE).await;
            if e.event.as_deref() == Some("synced") {
                break;
            }
            if e.event.as_deref() == Some("row.snapshot") {
                rows.push(e.data);
            } else {
                changes.push(e.data);
            }
        }
        assert_eq!(
            rows.len(),
            40,
            "the open rows (the filter ran in SQL: 80 rows is over the limit)"
        );
        match &first_rows {
            None => first_rows = Some(rows),
            Some(f) => assert_eq!(&rows, f, "the same read"),
        }
        if i == 9 {
            if changes.is_empty() {
                changes.push(s.expect_event(PATIENCE).await.data);
            }
            let v: Value = serde_json::from_str(&changes[0]).expect("json");
            assert_eq!(v["type"], "row.updated");
            assert_eq!(v["data"]["key"]["id"], 1);
        } else {
            assert!(changes.is_empty(), "{changes:?}");
        }
    }
    assert_eq!(
        metric(addr, "sluice_live_reads_total").await - reads_before,
        1
    );
    assert!(metric(addr, "sluice_live_shared_reads_total").await >= 9);

    // A filter that cannot run in SQL reads all 80 rows: over the limit.
    let suffix = enc(r#"{"field":"status","op":"suffix","value":"pen"}"#);
    let mut s = stream(
        addr,
        &format!("/v1/events/subscribe?table=public.items&snapshot=true&filter={suffix}"),
        &[("authorization", &auth)],
    )
    .await;
    let e = s.expect_event(PATIENCE).await;
    assert_eq!(e.event.as_deref(), Some("closed"), "{e:?}");
    let v: Value = serde_json::from_str(&e.data).expect("json");
    assert_eq!(v["code"], "snapshot_too_large", "{v}");
    assert!(v["message"]
        .as_str()
        .expect("message")
        .contains("http.max_snapshot_rows"));
    assert!(s.next_event().await.is_none(), "the stream ends");
    let mut ws = connect(addr, "").await;
    send(&mut ws, json!({"type": "auth", "token": service})).await;
    assert_eq!(recv(&mut ws).await["type"], "auth_ok");
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "all", "table": "public.items", "snapshot": true}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    let err = recv(&mut ws).await;
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "snapshot_too_large", "{err}");
    assert_eq!(err["id"], "all");
    // The connection and the server go on.
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");
    let _ = poll_until(PATIENCE, Duration::from_millis(50), || async {
        let r = get(addr, "/readyz", &[]).await;
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("readyz {}", r.status))
        }
    })
    .await;
    token.cancel();
    server.wait().await.expect("server stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_row_reads_exactly_as_its_change_event() {
    let db = TestDb::new("live_types");
    db.client()
        .await
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('sad', 'happy');
             CREATE TABLE typed (
                 id int PRIMARY KEY, tenant text NOT NULL,
                 b bool, c char(4), n numeric(10,2), f8 float8, j jsonb, by bytea,
                 ts timestamptz, d date, iv interval, ip inet, ia int4[], m mood, u uuid, mo money
             );
             ALTER TABLE typed REPLICA IDENTITY FULL;",
        )
        .await
        .expect("schema");
    let config = db.config_with(
        &[("public.typed", "tenant")],
        &[("SLUICE_HTTP_LISTEN", "127.0.0.1:0")],
    );
    let token = tokio_util::sync::CancellationToken::new();
    let server = sluice::server::start(config, token.clone())
        .await
        .expect("server starts");
    let addr = server.addr;
    let service = key(&db, "acme", Role::Service).await;
    db.client()
        .await
        .batch_execute(
            r#"INSERT INTO typed VALUES
                 (1, 'acme', true, 'ab', 12.5, 1.5e300, '{"a": [1, "x"]}', '\x00ff', '2026-01-02 03:04:05.5+02',
                  '2026-01-02', '1 day 02:03:04', '10.0.0.1', '{1,NULL,3}', 'happy',
                  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 12.34),
                 (2, 'acme', false, NULL, 'NaN', '-Infinity', 'null', '', NULL, NULL, NULL, '::1/128', '{}', NULL, NULL, NULL);"#,
        )
        .await
        .expect("rows");
    let auth = format!("Bearer {service}");
    // The change events, from the log.
    let inserted = poll_until(PATIENCE, Duration::from_millis(50), || async {
        let r = get(
            addr,
            "/v1/events?table=public.typed",
            &[("authorization", &auth)],
        )
        .await;
        let events = r.json()["events"].as_array().cloned().unwrap_or_default();
        if events.len() == 2 {
            Ok(events)
        } else {
            Err(format!("{} of 2 events", events.len()))
        }
    })
    .await;
    let mut s = stream(
        addr,
        "/v1/events/subscribe?table=public.typed&snapshot=true",
        &[("authorization", &auth)],
    )
    .await;
    for change in &inserted {
        let e = s.expect_event(PATIENCE).await;
        let row: Value = serde_json::from_str(&e.data).expect("json");
        assert_eq!(row["type"], "row.snapshot");
        assert_eq!(
            row["data"]["new"], change["data"]["new"],
            "the row as its insert carried it"
        );
        assert_eq!(row["data"]["key"], change["data"]["key"]);
        assert_eq!(row["subject"], change["subject"]);
    }
    assert_eq!(
        s.expect_event(PATIENCE).await.event.as_deref(),
        Some("synced")
    );
    token.cancel();
    server.wait().await.expect("server stops cleanly");
}

/// The live query through an SSE client we did not write (httpx-sse from
/// PyPI): rows without ids, `synced` with the hand-over id, changes; a
/// reconnect with the `Last-Event-ID` the client tracked resumes with
/// changes only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_sse_client_reads_a_live_query_and_resumes_after_synced() {
    use tokio::io::AsyncBufReadExt;
    let (db, server, token) = setup("live_python", &[]).await;
    let src = db.client().await;
    src.batch_execute(
        "INSERT INTO items SELECT g, 'acme', 'u1', 'open', g, 's' FROM generate_series(1, 5) g;
         INSERT INTO items VALUES (9, 'other', 'u1', 'open', 9, 's');",
    )
    .await
    .expect("rows");
    let anon = member_key(&db, "acme", "u1").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/sse_live.py");
    let base = format!("http://{}", server.addr);
    let mut child = tokio::process::Command::new("python3")
        .args([script, &base, &anon, "public.items", "2", "1"])
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
            if v.get("synced").is_some() {
                // Synced: three changes, the third after the client leaves.
                src.batch_execute(
                    "UPDATE items SET n = 100 WHERE id = 1;
                     UPDATE items SET n = 200 WHERE id = 9;
                     DELETE FROM items WHERE id = 2;
                     UPDATE items SET status = 'closed' WHERE id = 3;",
                )
                .await
                .expect("changes");
            }
            let done = v.get("done").is_some();
            received.push(v);
            if done {
                break;
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
    token.cancel();
    server.wait().await.expect("server stops cleanly");

    let synced_at = received
        .iter()
        .position(|v| v.get("synced").is_some())
        .expect("synced");
    for r in &received[..synced_at] {
        assert_eq!(r["event"], "row.snapshot", "{r}");
        assert_eq!(r["id"], "", "no id before synced: {r}");
        assert_eq!(r["envelope"]["tenant"], "acme");
    }
    assert_eq!(synced_at, 5, "the tenant's five rows: {received:?}");
    let h: i64 = received[synced_at]["synced"]
        .as_str()
        .expect("id")
        .parse()
        .expect("seq");
    assert_eq!(received[synced_at]["data"]["seq"], h);
    let rest: Vec<(&str, &str, i64)> = received[synced_at + 1..]
        .iter()
        .filter(|v| v.get("done").is_none())
        .map(|v| {
            (
                v["phase"].as_str().expect("phase"),
                v["event"].as_str().expect("event"),
                v["envelope"]["data"]["key"]["id"].as_i64().expect("id"),
            )
        })
        .collect();
    assert_eq!(
        rest,
        [
            ("first", "row.updated", 1),
            ("first", "row.deleted", 2),
            ("resumed", "row.updated", 3)
        ],
        "changes of its tenant only, and after the reconnect changes only"
    );
    for v in &received[synced_at + 1..] {
        if let Some(seq) = v["envelope"]["seq"].as_i64() {
            assert!(seq > h);
            assert_eq!(v["id"], seq.to_string());
        }
    }
}

/// The first `n` rows of `view` by `n` descending, then id descending.
fn top(view: &View, n: usize) -> View {
    let mut rows: Vec<(&i64, &Value)> = view.0.iter().filter(|(_, r)| !r["n"].is_null()).collect();
    rows.sort_by(|(ia, a), (ib, b)| {
        b["n"]
            .as_i64()
            .cmp(&a["n"].as_i64())
            .then_with(|| ib.cmp(ia))
    });
    View(
        rows.into_iter()
            .take(n)
            .map(|(k, r)| (*k, r.clone()))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_top_n_live_query_stays_equal_to_rerunning_the_query_while_a_writer_runs() {
    let (db, server, token) = setup("live_top", &[]).await;
    let addr = server.addr;
    let service = key(&db, "acme", Role::Service).await;
    let src = db.client().await;
    src.batch_execute(
        "INSERT INTO items SELECT g, 'acme', 'u1', CASE WHEN g % 2 = 0 THEN 'open' ELSE 'closed' END, (g * 37) % 101, 's'
           FROM generate_series(1, 300) g;
         INSERT INTO items SELECT g, 'other', 'u1', 'open', 1000 + g, 's' FROM generate_series(5001, 5050) g;",
    )
    .await
    .expect("rows");
    let filter = enc(r#"{"field":"status","op":"eq","value":"open"}"#);
    let auth = format!("Bearer {service}");
    let (written, progress) = tokio::sync::watch::channel(0usize);
    let (started, mut opened) = tokio::sync::mpsc::channel(3);
    let milestones = Milestones {
        written: progress,
        started,
    };
    let mut subscribers = Vec::new();
    for (i, milestone) in [0usize, 30, 90].into_iter().enumerate() {
        let path = format!(
            "/v1/events/subscribe?table=public.items&snapshot=true&order_by=-n&limit={}&filter={filter}",
            [5, 3, 10][i]
        );
        let auth = auth.clone();
        let mut m = milestones.clone();
        subscribers.push(tokio::spawn(async move {
            m.start(milestone).await;
            let mut s = stream(addr, &path, &[("authorization", &auth)]).await;
            assert_eq!(s.status, 200);
            m.started.send(()).await.expect("counted");
            collect_until_sentinel(&mut s).await
        }));
    }
    drop(milestones);
    // A writer that moves rows up and down the order, in and out of the
    // filter, inserts and deletes (the top rows too, so the window runs
    // short and is read again).
    let writer = {
        let mut c = db.client().await;
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(99);
            let mut next_id = 400;
            for _ in 0..300 {
                let tx = c.transaction().await.expect("begin");
                for _ in 0..rng.gen_range(1..=2) {
                    let id: i32 = rng.gen_range(1..=300);
                    match rng.gen_range(0..5) {
                        0 => {
                            next_id += 1;
                            let n: i32 = rng.gen_range(0..120);
                            tx.execute(
                                "INSERT INTO items VALUES ($1, 'acme', 'u1', 'open', $2, 's')",
                                &[&next_id, &n],
                            )
                            .await
                            .expect("insert");
                        }
                        1 => {
                            let n: i32 = rng.gen_range(0..120);
                            tx.execute("UPDATE items SET n = $2 WHERE id = $1", &[&id, &n])
                                .await
                                .expect("update n");
                        }
                        2 => {
                            let status = if rng.gen_bool(0.5) { "open" } else { "closed" };
                            tx.execute(
                                "UPDATE items SET status = $2 WHERE id = $1",
                                &[&id, &status],
                            )
                            .await
                            .expect("update status");
                        }
                        3 => {
                            // Delete one of the current top rows.
                            tx.execute(
                                "DELETE FROM items WHERE id = (SELECT id FROM items WHERE tenant = 'acme' AND status = 'open' ORDER BY n DESC, id DESC LIMIT 1)",
                                &[],
                            )
                            .await
                            .expect("delete top");
                        }
                        _ => {
                            tx.execute("DELETE FROM items WHERE id = $1", &[&id])
                                .await
                                .expect("delete");
                        }
                    }
                }
                tx.commit().await.expect("commit");
                written.send_modify(|n| *n += 1);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    writer.await.expect("writer");
    for _ in 0..3 {
        opened.recv().await.expect("a subscriber started");
    }
    src.execute(
        "INSERT INTO items VALUES ($1, 'acme', 'u1', 'open', 100000, 's')",
        &[&(SENTINEL as i32)],
    )
    .await
    .expect("sentinel");
    let mut all = Vec::new();
    for s in subscribers {
        all.push(s.await.expect("subscriber"));
    }
    let truth = Truth {
        log: log_of(addr, &service).await,
    };
    for (i, events) in all.iter().enumerate() {
        let limit = [5, 3, 10][i];
        let mut view = View::default();
        let mut walker = truth.walker();
        let synced = events
            .iter()
            .position(|e| e.event.as_deref() == Some("synced"))
            .expect("synced");
        for e in &events[..synced] {
            assert_eq!(e.event.as_deref(), Some("row.snapshot"), "{e:?}");
            view.apply(&serde_json::from_str(&e.data).expect("json"));
        }
        assert!(view.0.len() <= limit);
        let h: i64 = events[synced]
            .id
            .as_deref()
            .expect("id")
            .parse()
            .expect("seq");
        let want = top(&walker.at(h).open(), limit);
        assert!(
            view == want,
            "subscriber {i} at synced {h}: {:?}",
            view.diff(&want)
        );
        let rest = &events[synced + 1..];
        for (j, e) in rest.iter().enumerate() {
            let v: Value = serde_json::from_str(&e.data).expect("json");
            let seq = v["seq"].as_i64().expect("seq");
            assert_eq!(e.id.as_deref(), Some(seq.to_string().as_str()));
            let kind = v["type"].as_str().expect("type");
            assert!(
                ["row.entered", "row.left", "row.updated"].contains(&kind),
                "{kind}"
            );
            view.apply(&v);
            // The events of one change share its seq: check after the last.
            let last_of_seq = rest.get(j + 1).is_none_or(|n| n.id != e.id);
            if last_of_seq {
                let want = top(&walker.at(seq).open(), limit);
                assert!(
                    view == want,
                    "subscriber {i} (top {limit}) at seq {seq}: {:?}",
                    view.diff(&want)
                );
            }
        }
        assert!(view.0.contains_key(&SENTINEL));
    }
    let reads = metric(addr, "sluice_live_reads_total").await;
    assert!(
        reads > 3,
        "the windows ran short and were read again ({reads} reads)"
    );
    token.cancel();
    server.wait().await.expect("server stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_n_over_websocket_and_ndjson_holds_to_the_policy_with_precise_errors() {
    let (db, server, token) = setup("live_top_ws", &[]).await;
    let addr = server.addr;
    let src = db.client().await;
    src.batch_execute(
        "INSERT INTO items VALUES (1, 'acme', 'u1', 'open', 10, 'a'), (2, 'acme', 'u2', 'open', 99, 'b'),
                                  (3, 'acme', 'u1', 'open', 30, 'c'), (4, 'acme', 'u1', 'open', 20, 'd'),
                                  (5, 'other', 'u1', 'open', 500, 'e');",
    )
    .await
    .expect("rows");
    let member = member_key(&db, "acme", "u1").await;
    let mut ws = connect(addr, "").await;
    send(&mut ws, json!({"type": "auth", "token": member})).await;
    assert_eq!(recv(&mut ws).await["type"], "auth_ok");
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "top", "table": "public.items", "snapshot": true,
               "order_by": "-n", "limit": 2}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    let mut ids = Vec::new();
    loop {
        let m = recv(&mut ws).await;
        if m["type"] == "synced" {
            break;
        }
        assert_eq!(m["event"]["type"], "row.snapshot", "{m}");
        assert!(m["event"]["data"]["new"].get("secret").is_none());
        ids.push(m["event"]["data"]["key"]["id"].as_i64().expect("id"));
    }
    assert_eq!(
        ids,
        [3, 4],
        "the member's own top 2 (not u2's 99, not the other tenant's 500)"
    );
    // Row 1 climbs to the top: it enters, 4 leaves.
    src.execute("UPDATE items SET n = 50 WHERE id = 1", &[])
        .await
        .expect("update");
    let left = recv(&mut ws).await;
    let entered = recv(&mut ws).await;
    assert_eq!(
        (
            left["event"]["type"].as_str(),
            left["event"]["data"]["key"]["id"].as_i64()
        ),
        (Some("row.left"), Some(4))
    );
    assert_eq!(
        (
            entered["event"]["type"].as_str(),
            entered["event"]["data"]["key"]["id"].as_i64()
        ),
        (Some("row.entered"), Some(1))
    );
    assert_eq!(left["event"]["seq"], entered["event"]["seq"]);
    // Ordering by a column the policy hides is refused.
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "bad", "table": "public.items", "snapshot": true,
               "order_by": "secret", "limit": 2}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    let err = recv(&mut ws).await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["id"], "bad");
    assert!(
        err["message"].as_str().expect("message").contains("hidden"),
        "{err}"
    );
    for (msg, why) in [
        (
            json!({"type": "subscribe", "id": "x", "table": "public.items", "snapshot": true, "limit": 2}),
            "needs order_by",
        ),
        (
            json!({"type": "subscribe", "id": "x", "table": "public.items", "snapshot": true, "order_by": "n", "limit": 5000}),
            "1 to 1000",
        ),
        (
            json!({"type": "subscribe", "id": "x", "table": "public.items", "order_by": "n", "limit": 5}),
            "snapshot",
        ),
    ] {
        send(&mut ws, msg).await;
        let err = recv(&mut ws).await;
        assert_eq!(err["code"], "invalid_message", "{err}");
        assert!(
            err["message"].as_str().expect("message").contains(why),
            "{err}"
        );
    }

    // NDJSON: the top rows, then synced, then the end.
    let r = get(
        addr,
        &format!("/v1/events?format=ndjson&table=public.items&snapshot=true&order_by=n&limit=2&apikey={member}"),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    let lines: Vec<Value> = String::from_utf8(r.body)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let ids: Vec<i64> = lines
        .iter()
        .filter_map(|l| l["data"]["key"]["id"].as_i64())
        .collect();
    assert_eq!(ids, [4, 3], "ascending: n 20, 30 (row 1 is 50 now)");
    assert_eq!(lines.last().expect("line")["synced"], true);
    let service = key(&db, "acme", Role::Service).await;
    let auth = format!("Bearer {service}");
    for (path, param) in [
        (
            "/v1/events/subscribe?table=public.items&order_by=n&limit=2",
            "order_by",
        ),
        (
            "/v1/events/subscribe?table=public.items&snapshot=true&order_by=n",
            "limit",
        ),
        (
            "/v1/events/subscribe?table=public.items&snapshot=true&limit=2",
            "limit",
        ),
        (
            "/v1/events/subscribe?table=public.items&snapshot=true&order_by=n&limit=0",
            "limit",
        ),
    ] {
        let r = get(addr, path, &[("authorization", &auth)]).await;
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.json()["error"]["param"], param, "{path}: {}", r.json());
    }
    token.cancel();
    server.wait().await.expect("server stops cleanly");
}
