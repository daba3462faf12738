//! Access policies, black-box against a real Postgres: what a credential
//! may see inside its tenant (rows by a claim, columns), on SSE, WebSocket,
//! NDJSON/JSON reads and webhooks, with `row.left`/`row.entered` when an
//! update moves a row across a subscriber's predicate; forged and
//! malformed claims; policies refused at start.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::http::{get, stream};
use common::receiver::Receiver;
use common::ws::{connect, recv, send};
use common::{TestDb, PATIENCE};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use sluice::auth::keys::create_key;
use sluice::auth::Role;
use sluice::event::TenantId;

const JWT_SECRET: &str = "policies-test-hs256-secret-of-enough-bytes";

/// Members see their own todos without `secret`; viewers their teams'
/// todos, three columns only; both receive custom events, and members may
/// publish chat messages.
const POLICIES: &str = r#"[
  {role="member", table="public.todos", rows={field="new.owner_id", op="eq", claim="sub"}, hide_columns=["secret"]},
  {role="viewer", table="public.todos", rows={field="new.team_id", op="in", claim="teams"}, columns=["id", "team_id", "title"]},
  {role="member", topics=["custom/chat.message"], publish=true},
  {role="member", topics=["custom/*"]},
  {role="viewer", topics=["custom/*"]},
]"#;

const TODOS: &str = "CREATE TABLE todos (id int PRIMARY KEY, tenant text NOT NULL, owner_id text, team_id text, title text, secret text);
     ALTER TABLE todos REPLICA IDENTITY FULL;";

/// A database holding `todos` and a server with the policies on it.
async fn todos(
    prefix: &str,
) -> (
    TestDb,
    sluice::server::Server,
    tokio_util::sync::CancellationToken,
) {
    let db = TestDb::new(prefix);
    db.client()
        .await
        .batch_execute(TODOS)
        .await
        .expect("schema");
    let (server, token) = serve(&db, &[]).await;
    (db, server, token)
}

async fn serve(
    db: &TestDb,
    extra: &[(&str, &str)],
) -> (sluice::server::Server, tokio_util::sync::CancellationToken) {
    let mut env = vec![
        ("SLUICE_HTTP_LISTEN", "127.0.0.1:0"),
        ("SLUICE_POLICIES", POLICIES),
        ("SLUICE_AUTH_JWT_HS256_SECRET", JWT_SECRET),
        ("SLUICE_WEBHOOKS_ALLOW_PRIVATE_ADDRESSES", "true"),
    ];
    env.extend_from_slice(extra);
    let config = db.config_with(&[("public.todos", "tenant")], &env);
    let token = tokio_util::sync::CancellationToken::new();
    let server = sluice::server::start(config, token.clone())
        .await
        .expect("server starts");
    (server, token)
}

fn claims(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("claims are an object"),
    }
}

/// An anon API key of `tenant` with custom role `role` and `claims`.
async fn role_key(db: &TestDb, tenant: &str, role: &str, c: Value) -> String {
    let client = db.client().await;
    create_key(
        &client,
        Some(&TenantId::new(tenant).expect("tenant")),
        Role::Anon,
        None,
        &claims(c),
        Some(role),
    )
    .await
    .expect("create key")
    .1
}

fn jwt(payload: &Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        payload,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

fn exp() -> i64 {
    chrono::Utc::now().timestamp() + 3600
}

/// A custom `done` event for `tenant`: every member and viewer of it
/// receives it after everything written before.
async fn done(db: &TestDb, tenant: &str) {
    db.client()
        .await
        .execute(
            "SELECT pg_logical_emit_message(true, 'sluice', $1::text)",
            &[&json!({"tenant": tenant, "type": "done", "data": {}}).to_string()],
        )
        .await
        .expect("emit done");
}

/// SSE events of `path` until the custom `done` event (excluded).
async fn sse_until_done(addr: std::net::SocketAddr, path: String) -> Vec<Value> {
    let mut s = stream(addr, &path, &[]).await;
    assert_eq!(s.status, 200, "{path}");
    let mut out = Vec::new();
    loop {
        let e = s.expect_event(PATIENCE).await;
        let v: Value = serde_json::from_str(&e.data).expect("json");
        if v["type"] == "custom.done" {
            return out;
        }
        out.push(v);
    }
}

/// WebSocket events of one subscription until the custom `done` event.
async fn ws_until_done(addr: std::net::SocketAddr, key: String, from: Option<i64>) -> Vec<Value> {
    let mut ws = connect(addr, "").await;
    send(&mut ws, json!({"type": "auth", "token": key})).await;
    assert_eq!(recv(&mut ws).await["type"], "auth_ok");
    let mut sub = json!({"type": "subscribe", "id": "s"});
    if let Some(f) = from {
        sub["from"] = json!(f);
    }
    send(&mut ws, sub).await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    let mut out = Vec::new();
    loop {
        let m = recv(&mut ws).await;
        assert_eq!(m["type"], "event", "{m}");
        let e = m["event"].clone();
        if e["type"] == "custom.done" {
            return out;
        }
        out.push(e);
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Row {
    tenant: String,
    owner: String,
    team: String,
    title: String,
}

#[derive(Debug, Clone)]
struct User {
    tenant: String,
    sub: String,
    /// Viewer (sees its teams' rows, three columns) or member (own rows).
    viewer: bool,
    teams: Vec<String>,
}

impl User {
    fn sees(&self, r: &Row) -> bool {
        r.tenant == self.tenant
            && if self.viewer {
                self.teams.contains(&r.team)
            } else {
                r.owner == self.sub
            }
    }

    fn shown(&self, id: i32, r: &Row) -> Value {
        if self.viewer {
            json!({"id": id, "team_id": r.team, "title": r.title})
        } else {
            json!({"id": id, "tenant": r.tenant, "owner_id": r.owner, "team_id": r.team, "title": r.title})
        }
    }
}

/// What a user's stream must hold for one change of row `id`.
fn expected(u: &User, id: i32, before: Option<&Row>, after: Option<&Row>) -> Option<Value> {
    let vb = before.is_some_and(|r| u.sees(r));
    let va = after.is_some_and(|r| u.sees(r));
    match (before, after) {
        (None, Some(a)) if va => Some(json!({"type": "row.inserted", "new": u.shown(id, a)})),
        (Some(b), None) if vb => Some(json!({"type": "row.deleted", "old": u.shown(id, b)})),
        (Some(b), Some(a)) => match (vb, va) {
            (true, true) => {
                Some(json!({"type": "row.updated", "new": u.shown(id, a), "old": u.shown(id, b)}))
            }
            (false, true) => Some(json!({"type": "row.entered", "new": u.shown(id, a)})),
            (true, false) => Some(json!({"type": "row.left", "old": u.shown(id, b)})),
            (false, false) => None,
        },
        _ => None,
    }
}

/// The comparable part of a received event.
fn essence(e: &Value) -> Value {
    let mut out = json!({"type": e["type"]});
    for image in ["new", "old"] {
        if let Some(v) = e["data"].get(image) {
            out[image] = v.clone();
        }
    }
    out
}

/// The rows a stream's events leave in a local view kept by key.
fn replay(events: &[Value]) -> BTreeMap<i64, Value> {
    let mut view = BTreeMap::new();
    for e in events {
        let id = e["data"]["key"]["id"].as_i64().expect("key id");
        match e["type"].as_str().expect("type") {
            "row.inserted" | "row.updated" | "row.entered" | "row.snapshot" => {
                view.insert(id, e["data"]["new"].clone());
            }
            "row.deleted" | "row.left" => {
                view.remove(&id);
            }
            other => panic!("unexpected type {other}"),
        }
    }
    view
}

/// 50 users in 5 tenants, random team memberships, random inserts,
/// updates moving rows between owners and teams, and deletes: every user,
/// over SSE (live from the start) and WebSocket (catch-up from seq 1, then
/// live), receives exactly the changes its policy allows, once, in order,
/// with `row.left`/`row.entered` at the moves and no hidden column; its
/// stream replayed is exactly the rows it may see.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_user_receives_exactly_what_its_policy_allows() {
    let seed: u64 = std::env::var("POLICY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("policy isolation seed: {seed} (POLICY_SEED={seed} to repeat)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let (db, server, token) = todos("pol_iso").await;
    let addr = server.addr;

    let teams = ["red", "green", "blue"];
    let mut users = Vec::new();
    for t in 0..5 {
        for i in 0..10 {
            let viewer = i >= 7;
            let mut mine: Vec<String> = teams
                .iter()
                .filter(|_| rng.gen_bool(0.5))
                .map(|s| (*s).to_owned())
                .collect();
            if viewer && mine.is_empty() {
                mine.push("red".into());
            }
            users.push(User {
                tenant: format!("t{t}"),
                sub: format!("u{t}_{i}"),
                viewer,
                teams: mine,
            });
        }
    }
    let mut keys = Vec::new();
    for u in &users {
        let key = if u.viewer {
            role_key(
                &db,
                &u.tenant,
                "viewer",
                json!({"sub": u.sub, "teams": u.teams}),
            )
            .await
        } else {
            role_key(&db, &u.tenant, "member", json!({"sub": u.sub})).await
        };
        keys.push(key);
    }

    // SSE: live from before the first write.
    let mut sse = Vec::new();
    for k in &keys {
        let path = format!("/v1/events/subscribe?apikey={k}");
        // The stream is open (200 and head read) before the task returns it.
        let mut s = stream(addr, &path, &[]).await;
        assert_eq!(s.status, 200);
        sse.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let e = s.expect_event(PATIENCE).await;
                let v: Value = serde_json::from_str(&e.data).expect("json");
                if v["type"] == "custom.done" {
                    return out;
                }
                out.push(v);
            }
        }));
    }

    // Random writes, one to four statements per transaction.
    let mut rows: BTreeMap<i32, Row> = BTreeMap::new();
    let mut want: Vec<Vec<Value>> = vec![Vec::new(); users.len()];
    let mut next_id = 1;
    let client = db.client().await;
    for _ in 0..120 {
        let statements = rng.gen_range(1..=4);
        let mut sql = String::from("BEGIN;");
        for _ in 0..statements {
            let existing: Vec<i32> = rows.keys().copied().collect();
            let choice = if existing.is_empty() {
                0
            } else {
                rng.gen_range(0..10)
            };
            let (id, before, after) = match choice {
                0..=3 => {
                    let t = rng.gen_range(0..5);
                    let row = Row {
                        tenant: format!("t{t}"),
                        owner: format!("u{t}_{}", rng.gen_range(0..10)),
                        team: teams[rng.gen_range(0..3)].to_owned(),
                        title: format!("todo {next_id}"),
                    };
                    let id = next_id;
                    next_id += 1;
                    sql.push_str(&format!(
                        "INSERT INTO todos VALUES ({id}, '{}', '{}', '{}', '{}', 's3cr3t-{id}');",
                        row.tenant, row.owner, row.team, row.title
                    ));
                    (id, None, Some(row))
                }
                4..=8 => {
                    let id = existing[rng.gen_range(0..existing.len())];
                    let before = rows[&id].clone();
                    let mut after = before.clone();
                    let t = &before.tenant[1..];
                    match rng.gen_range(0..3) {
                        0 => after.owner = format!("u{t}_{}", rng.gen_range(0..10)),
                        1 => after.team = teams[rng.gen_range(0..3)].to_owned(),
                        _ => after.title = format!("todo {id} v{}", rng.gen_range(0..1000)),
                    }
                    sql.push_str(&format!(
                        "UPDATE todos SET owner_id = '{}', team_id = '{}', title = '{}', secret = 's3cr3t-{id}-{}' WHERE id = {id};",
                        after.owner,
                        after.team,
                        after.title,
                        rng.gen_range(0..1000)
                    ));
                    (id, Some(before), Some(after))
                }
                _ => {
                    let id = existing[rng.gen_range(0..existing.len())];
                    sql.push_str(&format!("DELETE FROM todos WHERE id = {id};"));
                    (id, Some(rows[&id].clone()), None)
                }
            };
            for (u, w) in users.iter().zip(want.iter_mut()) {
                if let Some(e) = expected(u, id, before.as_ref(), after.as_ref()) {
                    w.push(e);
                }
            }
            match after {
                Some(r) => rows.insert(id, r),
                None => rows.remove(&id),
            };
        }
        sql.push_str("COMMIT;");
        client.batch_execute(&sql).await.expect("write");
    }
    // WebSocket: from seq 1 (catch-up from the log), then live.
    let mut ws = Vec::new();
    for k in &keys {
        ws.push(tokio::spawn(ws_until_done(addr, k.clone(), Some(1))));
    }
    // Forged and malformed credentials alongside.
    let forged = jwt(
        &json!({"tenant": "t0", "role": "member", "sub": "u0_1", "exp": exp()}),
        "not-the-configured-secret-not-the-configured",
    );
    let r = get(addr, &format!("/v1/events/subscribe?apikey={forged}"), &[]).await;
    assert_eq!(r.status, 401, "a JWT not signed by the configured key");
    // `sub` is a registered claim: one that is not a string makes the
    // token itself invalid.
    let bad_sub = jwt(
        &json!({"tenant": "t0", "role": "member", "sub": {"id": "u0_1"}, "exp": exp()}),
        JWT_SECRET,
    );
    let r = get(addr, &format!("/v1/events/subscribe?apikey={bad_sub}"), &[]).await;
    assert_eq!(r.status, 401, "a non-string sub");
    // Claims of the wrong type or missing: the predicate denies every row.
    let missing = jwt(
        &json!({"tenant": "t0", "role": "member", "exp": exp()}),
        JWT_SECRET,
    );
    let mistyped = jwt(
        &json!({"tenant": "t0", "role": "viewer", "teams": {"red": true}, "exp": exp()}),
        JWT_SECRET,
    );
    let nested = jwt(
        &json!({"tenant": "t0", "role": "viewer", "teams": [["red", "green", "blue"]], "exp": exp()}),
        JWT_SECRET,
    );
    let odd: Vec<_> = [missing, mistyped, nested]
        .into_iter()
        .map(|t| {
            tokio::spawn(sse_until_done(
                addr,
                format!("/v1/events/subscribe?from=1&apikey={t}"),
            ))
        })
        .collect();
    // A JWT member with a good `sub` sees what the key of that user sees.
    let good = jwt(
        &json!({"tenant": "t0", "role": "member", "sub": "u0_1", "exp": exp()}),
        JWT_SECRET,
    );
    let good = tokio::spawn(sse_until_done(
        addr,
        format!("/v1/events/subscribe?from=1&apikey={good}"),
    ));

    // The WebSocket subscriptions read from seq 1, so `done` reaches them
    // whether they registered before it was written or after.
    for t in 0..5 {
        done(&db, &format!("t{t}")).await;
    }

    let mut sse_got = Vec::new();
    for h in sse {
        sse_got.push(h.await.expect("sse task"));
    }
    let mut ws_got = Vec::new();
    for h in ws {
        ws_got.push(h.await.expect("ws task"));
    }
    let truth = db
        .client()
        .await
        .query(
            "SELECT id, tenant, owner_id, team_id, title FROM todos",
            &[],
        )
        .await
        .expect("rows");
    for (i, u) in users.iter().enumerate() {
        for (transport, got) in [("sse", &sse_got[i]), ("ws", &ws_got[i])] {
            for e in got {
                assert_eq!(e["tenant"], u.tenant.as_str(), "{transport} {}: {e}", u.sub);
                assert!(
                    !e.to_string().contains("s3cr3t"),
                    "{transport} {}: a hidden column leaked: {e}",
                    u.sub
                );
            }
            let essences: Vec<Value> = got.iter().map(essence).collect();
            assert_eq!(
                essences, want[i],
                "{transport} stream of {} (viewer: {}, teams {:?}), seed {seed}",
                u.sub, u.viewer, u.teams
            );
            let seqs: Vec<i64> = got
                .iter()
                .map(|e| e["seq"].as_i64().expect("seq"))
                .collect();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "{transport}: seq order"
            );
            // Replaying the stream gives exactly the rows this user may see.
            let view = replay(got);
            let mut visible = BTreeMap::new();
            for r in &truth {
                let row = Row {
                    tenant: r.get(1),
                    owner: r.get(2),
                    team: r.get(3),
                    title: r.get(4),
                };
                let id: i32 = r.get(0);
                if u.sees(&row) {
                    visible.insert(i64::from(id), u.shown(id, &row));
                }
            }
            assert_eq!(view, visible, "{transport} replay of {}", u.sub);
        }
    }
    for h in odd {
        assert_eq!(
            h.await.expect("task"),
            Vec::<Value>::new(),
            "a missing or mistyped claim sees no row"
        );
    }
    let u0_1 = users.iter().position(|u| u.sub == "u0_1").expect("u0_1");
    assert_eq!(
        good.await
            .expect("task")
            .iter()
            .map(essence)
            .collect::<Vec<_>>(),
        want[u0_1]
    );
    assert!(
        want.iter()
            .any(|w| w.iter().any(|e| e["type"] == "row.left"))
            && want
                .iter()
                .any(|w| w.iter().any(|e| e["type"] == "row.entered")),
        "the writes moved rows across predicates (seed {seed})"
    );
    common::stop_server(server, token).await;
}

/// Column masks and row predicates on webhooks (an endpoint with a role
/// and claims) and on NDJSON exports, JSON pages and single reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_and_exports_of_a_role_are_masked_and_scoped() {
    let (db, server, token) = todos("pol_out").await;
    let addr = server.addr;
    let service = common::key(&db, "acme", Role::Service).await;
    let rx = Receiver::ok().await;
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("http://{addr}/v1/webhooks"))
        .header("authorization", format!("Bearer {service}"))
        .header("content-type", "application/json")
        .body(
            json!({"url": rx.url("/hook"), "role": "member", "claims": {"sub": "u1"}}).to_string(),
        )
        .send()
        .await
        .expect("create")
        .text()
        .await
        .map(|t| serde_json::from_str(&t).expect("json"))
        .expect("body");
    assert_eq!(created["role"], "member", "{created}");
    assert_eq!(created["claims"], json!({"sub": "u1"}));
    // The same role, batched: each element of its arrays is what the
    // endpoint above gets alone.
    let batch_rx = Receiver::ok().await;
    let batched = http
        .post(format!("http://{addr}/v1/webhooks"))
        .header("authorization", format!("Bearer {service}"))
        .header("content-type", "application/json")
        .body(
            json!({"url": batch_rx.url("/batch"), "role": "member", "claims": {"sub": "u1"},
                "batch": {"max_events": 3, "max_wait_ms": 100}})
            .to_string(),
        )
        .send()
        .await
        .expect("create batched");
    assert_eq!(batched.status(), 201);
    let bad = http
        .post(format!("http://{addr}/v1/webhooks"))
        .header("authorization", format!("Bearer {service}"))
        .header("content-type", "application/json")
        .body(json!({"url": rx.url("/hook"), "role": "owner"}).to_string())
        .send()
        .await
        .expect("create");
    assert_eq!(bad.status(), 400);
    let body: Value = serde_json::from_str(&bad.text().await.expect("body")).expect("json");
    assert_eq!(body["error"]["param"], "role", "{body}");

    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO todos VALUES (1, 'acme', 'u1', 'red', 'mine', 's3cr3t-1');
         INSERT INTO todos VALUES (2, 'acme', 'u2', 'red', 'theirs', 's3cr3t-2');
         INSERT INTO todos VALUES (3, 'globex', 'u1', 'red', 'other tenant', 's3cr3t-3');
         UPDATE todos SET owner_id = 'u2' WHERE id = 1;
         UPDATE todos SET owner_id = 'u1' WHERE id = 2;
         UPDATE todos SET title = 'still mine' WHERE id = 2;
         DELETE FROM todos WHERE id = 2;",
    )
    .await
    .expect("writes");
    let types = |events: &[Value]| -> Vec<(i64, String)> {
        events
            .iter()
            .map(|e| {
                (
                    e["data"]["key"]["id"].as_i64().expect("id"),
                    e["type"].as_str().expect("type").to_owned(),
                )
            })
            .collect()
    };
    let expect = vec![
        (1, "row.inserted".to_owned()),
        (1, "row.left".to_owned()),
        (2, "row.entered".to_owned()),
        (2, "row.updated".to_owned()),
        (2, "row.deleted".to_owned()),
    ];
    rx.wait_until(PATIENCE, "u1's 5 deliveries", |r| r.len() >= 5)
        .await;
    let got = rx.received();
    let mut delivered: Vec<Value> = got
        .iter()
        .map(|r| serde_json::from_str(&r.body).expect("json"))
        .collect();
    delivered.sort_by_key(|e| e["seq"].as_i64());
    delivered.dedup_by_key(|e| e["seq"].as_i64());
    assert_eq!(types(&delivered), expect);
    for e in &delivered {
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        assert_eq!(e["tenant"], "acme");
    }
    assert_eq!(
        delivered[0]["data"]["new"],
        json!({"id": 1, "tenant": "acme", "owner_id": "u1", "team_id": "red", "title": "mine"})
    );
    batch_rx
        .wait_until(PATIENCE, "u1's 5 events, batched", |r| {
            r.iter().map(|x| x.seqs().len()).sum::<usize>() >= 5
        })
        .await;
    let mut in_batches: Vec<Value> = batch_rx
        .received()
        .iter()
        .flat_map(|r| {
            let body: Value = serde_json::from_str(&r.body).expect("json");
            body.as_array().expect("a batch is an array").clone()
        })
        .collect();
    in_batches.sort_by_key(|e| e["seq"].as_i64());
    in_batches.dedup_by_key(|e| e["seq"].as_i64());
    assert_eq!(in_batches, delivered);

    // NDJSON export and JSON page of the member u1, and of a viewer.
    let u1 = role_key(&db, "acme", "member", json!({"sub": "u1"})).await;
    let head = 7;
    let export = get(
        addr,
        &format!("/v1/events?format=ndjson&to={head}&apikey={u1}"),
        &[],
    )
    .await;
    assert_eq!(export.status, 200);
    let text = String::from_utf8(export.body.clone()).expect("utf8");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(types(&lines), expect);
    assert!(!text.contains("s3cr3t"));
    let page = get(addr, &format!("/v1/events?apikey={u1}"), &[])
        .await
        .json();
    let page_events = page["events"].as_array().expect("events").clone();
    assert_eq!(types(&page_events), expect);
    // Past the last row of this tenant the page read.
    assert_eq!(
        page["next_from"].as_i64(),
        page_events
            .last()
            .and_then(|e| e["seq"].as_i64())
            .map(|s| s + 1)
    );
    let viewer = role_key(&db, "acme", "viewer", json!({"teams": ["red"]})).await;
    let v = get(
        addr,
        &format!("/v1/events?format=ndjson&to={head}&apikey={viewer}"),
        &[],
    )
    .await;
    let vlines: Vec<Value> = String::from_utf8(v.body)
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(vlines.len(), 6, "every acme change of a red row");
    for e in &vlines {
        for image in ["new", "old"] {
            if let Some(row) = e["data"].get(image) {
                let cols: BTreeSet<&str> = row
                    .as_object()
                    .expect("row")
                    .keys()
                    .map(String::as_str)
                    .collect();
                assert_eq!(cols, BTreeSet::from(["id", "team_id", "title"]), "{e}");
            }
        }
        if let Some(changed) = e["data"].get("changed") {
            assert!(
                changed
                    .as_array()
                    .expect("list")
                    .iter()
                    .all(|c| c != "owner_id"),
                "{e}"
            );
        }
    }
    // A single read: another user's row is as absent as another tenant's.
    let seq_of_2 = lines[2]["seq"].as_i64().expect("seq");
    assert_eq!(
        get(addr, &format!("/v1/events/2?apikey={u1}"), &[])
            .await
            .status,
        404
    );
    let one = get(addr, &format!("/v1/events/{seq_of_2}?apikey={u1}"), &[]).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["type"], "row.entered");

    // Stats count every row: service only, once policies are on.
    assert_eq!(
        get(addr, &format!("/v1/stats?apikey={u1}"), &[])
            .await
            .status,
        403
    );
    common::stop_server(server, token).await;
}

/// Refusals: roles no policy grants, tables a role may not see, publishing
/// outside a publish policy; the admin view of the policies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_policy_does_not_grant_is_refused_with_a_reason() {
    let (db, server, token) = todos("pol_refuse").await;
    let addr = server.addr;
    let anon = common::key(&db, "acme", Role::Anon).await;
    let r = get(addr, &format!("/v1/events/subscribe?apikey={anon}"), &[]).await;
    assert_eq!(r.status, 403, "anon has no policy");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .expect("message")
            .contains("no access policy grants it"),
        "{}",
        r.json()
    );
    let member = role_key(&db, "acme", "member", json!({"sub": "u1"})).await;
    let ok = stream(
        addr,
        &format!("/v1/events/subscribe?table=public.todos&apikey={member}"),
        &[],
    )
    .await;
    assert_eq!(ok.status, 200);
    drop(ok);

    // WebSocket: publishing on a publish policy's topic only.
    let mut ws = connect(addr, "").await;
    send(&mut ws, json!({"type": "auth", "token": member})).await;
    assert_eq!(recv(&mut ws).await["type"], "auth_ok");
    send(
        &mut ws,
        json!({"type": "publish", "event": "chat.message", "data": {"text": "hi"}}),
    )
    .await;
    let m = recv(&mut ws).await;
    assert_eq!(m["type"], "published", "{m}");
    send(
        &mut ws,
        json!({"type": "publish", "event": "billing.paid", "data": {}}),
    )
    .await;
    let m = recv(&mut ws).await;
    assert_eq!(m["type"], "error", "{m}");
    assert_eq!(m["code"], "forbidden", "{m}");
    // POST /v1/events holds to the same policies: every event of a list
    // must be on a topic the role may publish on, or none is published.
    let http = reqwest::Client::new();
    let post = |body: Value| {
        http.post(format!("http://{addr}/v1/events"))
            .header("authorization", format!("Bearer {member}"))
            .body(body.to_string())
            .send()
    };
    let r = post(json!({"type": "chat.message", "data": {"text": "over http"}}))
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 201);
    let r = post(json!({"events": [
        {"type": "chat.message", "data": {}}, {"type": "billing.paid", "data": {}}
    ]}))
    .await
    .expect("post");
    assert_eq!(r.status().as_u16(), 403);
    let body: Value = serde_json::from_str(&r.text().await.expect("body")).expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("custom/billing.paid"),
        "{body}"
    );
    let viewer = role_key(&db, "acme", "viewer", json!({"teams": ["red"]})).await;
    let mut ws2 = connect(addr, "").await;
    send(&mut ws2, json!({"type": "auth", "token": viewer})).await;
    assert_eq!(recv(&mut ws2).await["type"], "auth_ok");
    send(
        &mut ws2,
        json!({"type": "subscribe", "id": "x", "table": "public.todos"}),
    )
    .await;
    assert_eq!(recv(&mut ws2).await["type"], "subscribed");

    let mut ws3 = connect(addr, "").await;
    send(&mut ws3, json!({"type": "auth", "token": anon})).await;
    assert_eq!(recv(&mut ws3).await["type"], "auth_ok");
    send(
        &mut ws3,
        json!({"type": "subscribe", "id": "y", "table": "public.todos"}),
    )
    .await;
    let m = recv(&mut ws3).await;
    assert_eq!(
        (m["type"].as_str(), m["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{m}"
    );

    // The admin view.
    let admin = create_key(
        &db.client().await,
        None,
        Role::Admin,
        None,
        &Map::new(),
        None,
    )
    .await
    .expect("admin key")
    .1;
    let p = get(
        addr,
        "/v1/policies",
        &[("authorization", &format!("Bearer {admin}"))],
    )
    .await;
    assert_eq!(p.status, 200);
    let p = p.json();
    assert_eq!(p["active"], true);
    let todos = &p["policies"][0];
    assert_eq!(todos["table"], "public.todos");
    assert_eq!(todos["roles"]["anon"]["subscribe"], false);
    assert_eq!(todos["roles"]["service"]["rows"], "all");
    assert_eq!(todos["roles"]["member"]["rows"]["claim"], "sub");
    assert_eq!(
        todos["roles"]["viewer"]["columns"]["only"],
        json!(["id", "team_id", "title"])
    );
    let p = get(
        addr,
        "/v1/policies",
        &[("authorization", &format!("Bearer {member}"))],
    )
    .await;
    assert_eq!(p.status, 403);
    common::stop_server(server, token).await;
}

/// Policies the captured database cannot honour stop `serve` and fail
/// `check`, naming the policy and the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_the_table_cannot_honour_are_refused_at_start() {
    let db = TestDb::new("pol_start");
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE todos (id int, tenant text NOT NULL, owner_id text, secret text, PRIMARY KEY (tenant, id));",
        )
        .await
        .expect("schema");
    let start = |policies: &'static str| {
        let config = db.config_with(
            &[("public.todos", "tenant")],
            &[
                ("SLUICE_HTTP_LISTEN", "127.0.0.1:0"),
                ("SLUICE_POLICIES", policies),
            ],
        );
        async move {
            let token = tokio_util::sync::CancellationToken::new();
            match sluice::server::start(config, token.clone()).await {
                Ok(s) => {
                    token.cancel();
                    let _ = s.wait().await;
                    panic!("serve started with a policy it cannot honour")
                }
                Err(e) => e.to_string(),
            }
        }
    };
    let e = start(
        r#"[{role="member", table="public.todos", rows={field="owner_id", op="eq", claim="sub"}}]"#,
    )
    .await;
    assert!(
        e.contains("policies[0]") && e.contains("ALTER TABLE public.todos REPLICA IDENTITY FULL"),
        "{e}"
    );
    let e = start(r#"[{role="member", table="public.todos", hide_columns=["salary"]}]"#).await;
    assert!(e.contains("policies[0]") && e.contains("\"salary\""), "{e}");
    // A predicate on the key alone needs no old row beyond the key.
    let dir = tempfile::tempdir().expect("dir");
    let path = common::proc::write_config(
        dir.path(),
        &db,
        "public.todos",
        "tenant",
        "[[policies]]\nrole = \"member\"\ntable = \"public.todos\"\nrows = { field = \"id\", op = \"eq\", claim = \"todo\" }\nhide_columns = [\"secret\"]\n",
    );
    let (code, out, err) = common::proc::run_cli(&path, &["check"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("policy table public.todos"), "{out}");
    assert!(out.contains("anon: denied"), "{out}");
    assert!(out.contains("service: all rows, all columns"), "{out}");
}

/// A consumer group reading as a role gets what that role may see: its
/// rows, without hidden columns, with `row.left`/`row.entered` at moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_of_a_role_gets_what_the_role_may_see() {
    let (db, server, token) = todos("pol_grp").await;
    let addr = server.addr;
    let service = common::key(&db, "acme", Role::Service).await;
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let (http, service) = (http.clone(), service.clone());
        let url = format!("http://{addr}{path}");
        async move {
            let r = http
                .post(url)
                .header("authorization", format!("Bearer {service}"))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .expect("request");
            let status = r.status().as_u16();
            let v: Value =
                serde_json::from_str(&r.text().await.expect("body")).unwrap_or(Value::Null);
            (status, v)
        }
    };
    let (s, v) = post(
        "/v1/groups",
        json!({"name": "u1", "start": "beginning", "role": "member", "claims": {"sub": "u1"}}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["role"], "member");
    db.client()
        .await
        .batch_execute(
            "INSERT INTO todos VALUES (1, 'acme', 'u1', 'red', 'mine', 's3cr3t-1');
             INSERT INTO todos VALUES (2, 'acme', 'u2', 'red', 'theirs', 's3cr3t-2');
             UPDATE todos SET owner_id = 'u2' WHERE id = 1;
             UPDATE todos SET owner_id = 'u1' WHERE id = 2;",
        )
        .await
        .expect("writes");
    let mut got: Vec<Value> = Vec::new();
    let start = std::time::Instant::now();
    while got.len() < 3 {
        assert!(start.elapsed() < PATIENCE, "{got:?}");
        let (s, v) = post("/v1/groups/u1/receive", json!({"wait_ms": 2000})).await;
        assert_eq!(s, 200, "{v}");
        got.extend(v["messages"].as_array().expect("messages").iter().cloned());
    }
    let kinds: Vec<(i64, &str)> = got
        .iter()
        .map(|m| {
            (
                m["event"]["data"]["key"]["id"].as_i64().expect("id"),
                m["event"]["type"].as_str().expect("type"),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![(1, "row.inserted"), (1, "row.left"), (2, "row.entered")]
    );
    assert!(!Value::Array(got.clone()).to_string().contains("s3cr3t"));
    let (s, _) = post("/v1/groups", json!({"name": "bad", "role": "owner"})).await;
    assert_eq!(s, 400, "an unknown role");
    common::stop_server(server, token).await;
}
