//! Snapshots and backfills against a real Postgres: existing rows become
//! `row.snapshot` events consistent with the change stream.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{all_events, TestDb, PATIENCE};
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sluice::backfill::{self, Request};
use sluice::pipeline::{self, Pipeline};
use tokio_util::sync::CancellationToken;

pub const ITEMS: &str =
    "CREATE TABLE items (id int PRIMARY KEY, tenant text NOT NULL, n int NOT NULL, note text);
                         ALTER TABLE items REPLICA IDENTITY FULL;";

/// Creates `items` with rows 1..=n (tenants t0..t2, `n` = 0).
async fn seed_items(c: &tokio_postgres::Client, n: i32) {
    c.batch_execute(ITEMS).await.expect("ddl");
    c.execute(
        "INSERT INTO items SELECT g, 't' || (g % 3), 0, 'seed' FROM generate_series(1, $1) g",
        &[&n],
    )
    .await
    .expect("seed");
}

/// The writer's seed: `SLUICE_TEST_SEED` to replay a failure, else random.
fn seed() -> u64 {
    let seed = std::env::var("SLUICE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("writer seed {seed} (rerun with SLUICE_TEST_SEED={seed})");
    seed
}

async fn start(db: &TestDb) -> (Pipeline, CancellationToken) {
    let config = db.config(&[("public.items", "tenant")]);
    let token = CancellationToken::new();
    let running = pipeline::start(&config, token.clone(), None)
        .await
        .expect("pipeline starts");
    (running, token)
}

/// Random updates (`n` only grows), deletes and inserts of new ids, until
/// stopped; ids are never reused, so a row that comes back after its delete
/// is a bug.
fn writer(
    client: tokio_postgres::Client,
    first_new_id: i32,
    stop: CancellationToken,
    seed: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut next_id = first_new_id;
        while !stop.is_cancelled() {
            let id = rng.gen_range(1..next_id);
            let sql = match rng.gen_range(0..12) {
                0 => format!("DELETE FROM items WHERE id = {id}"),
                // The row moves to a new primary key.
                11 => {
                    next_id += 1;
                    format!(
                        "UPDATE items SET id = {}, n = n + 1 WHERE id = {id}",
                        next_id - 1
                    )
                }
                1 => {
                    next_id += 1;
                    format!(
                        "INSERT INTO items VALUES ({}, 't{}', 0, 'new')",
                        next_id - 1,
                        next_id % 3
                    )
                }
                _ => format!(
                    "UPDATE items SET n = n + 1, note = 'u' WHERE id BETWEEN {id} AND {}",
                    id + 3
                ),
            };
            client.batch_execute(&sql).await.expect("writer");
        }
    })
}

/// Waits until a marker committed now is in the log: everything committed
/// before it is too.
async fn drained(c: &tokio_postgres::Client) {
    let tag = format!("drain-{}", rand::random::<u32>());
    c.execute(
        "SELECT pg_logical_emit_message(true, 'sluice', $1::text)",
        &[&format!(r#"{{"tenant":"ops","type":"{tag}","data":{{}}}}"#)],
    )
    .await
    .expect("marker");
    let start = Instant::now();
    loop {
        let found: bool = c
            .query_one(
                "SELECT exists(SELECT 1 FROM sluice.events WHERE type = $1)",
                &[&format!("custom.{tag}")],
            )
            .await
            .expect("query")
            .get(0);
        if found {
            return;
        }
        assert!(start.elapsed() < PATIENCE, "the log never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Replays the log's events of `items` in seq order and checks it against
/// the table: the same rows with the same values, no row back after its
/// delete, `n` never going down for a key.
async fn replay_matches_table(c: &tokio_postgres::Client) -> usize {
    let events = all_events(c).await;
    let mut state: BTreeMap<i64, Value> = BTreeMap::new();
    let mut deleted: BTreeMap<i64, i64> = BTreeMap::new();
    let mut last_n: BTreeMap<i64, i64> = BTreeMap::new();
    let mut snapshots = 0;
    for e in &events {
        let Some(topic) = e["topic"].as_str() else {
            continue;
        };
        if !topic.starts_with("tables/public.items/") {
            continue;
        }
        let data = &e["data"];
        let id = data["key"]["id"].as_i64().expect("key");
        if let Some(seq) = deleted.get(&id) {
            panic!(
                "{topic} of id {id} at seq {} after its delete at seq {seq}",
                e["seq"]
            );
        }
        match data["op"].as_str().expect("op") {
            "delete" => {
                state.remove(&id);
                deleted.insert(id, e["seq"].as_i64().unwrap_or(0));
            }
            op => {
                if op == "snapshot" {
                    snapshots += 1;
                }
                // An update that moved the row: its old key is gone.
                if let Some(old) = data["old"]["id"].as_i64().filter(|old| *old != id) {
                    state.remove(&old);
                    deleted.insert(old, e["seq"].as_i64().unwrap_or(0));
                }
                let n = data["new"]["n"].as_i64().expect("n");
                if let Some(prev) = last_n.get(&id) {
                    assert!(
                        n >= *prev,
                        "id {id}: {op} at seq {} has n = {n} after n = {prev}",
                        e["seq"]
                    );
                }
                last_n.insert(id, n);
                state.insert(id, data["new"].clone());
            }
        }
    }
    let rows = c
        .query(
            "SELECT id, row_to_json(items)::text FROM items ORDER BY id",
            &[],
        )
        .await
        .expect("table");
    let table: BTreeMap<i64, Value> = rows
        .iter()
        .map(|r| {
            (
                i64::from(r.get::<_, i32>(0)),
                serde_json::from_str(r.get::<_, &str>(1)).expect("json"),
            )
        })
        .collect();
    assert_eq!(state.len(), table.len(), "row count after replay");
    for (id, row) in &table {
        assert_eq!(state.get(id), Some(row), "row {id} after replay");
    }
    snapshots
}

/// Creates an on-demand backfill of `items` in `chunk`-row chunks.
async fn backfill_items(db: &TestDb, c: &tokio_postgres::Client, chunk: i32) -> backfill::Backfill {
    let config = db.config(&[("public.items", "tenant")]);
    backfill::create(
        c,
        c,
        config.postgres().expect("pg"),
        &Request {
            table: "public.items".into(),
            chunk_size: Some(chunk),
            ..Request::default()
        },
        "backfill",
    )
    .await
    .expect("create")
}

async fn wait_done(state: &tokio_postgres::Client, id: i64) -> backfill::Backfill {
    let start = Instant::now();
    loop {
        let b = backfill::get(state, id).await.expect("backfill");
        if b.status != "running" {
            return b;
        }
        assert!(
            start.elapsed() < PATIENCE * 3,
            "backfill never finished: {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_under_concurrent_writes_replays_to_the_tables_content() {
    let db = TestDb::new("backfill");
    let c = db.client().await;
    seed_items(&c, 100000).await;
    let (running, token) = start(&db).await;
    let stop = CancellationToken::new();
    let seed = seed();
    let w = writer(db.client().await, 100_001, stop.clone(), seed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = backfill_items(&db, &c, 5000).await;
    let done = wait_done(&c, b.id).await;
    assert_eq!(done.status, "done", "{done:?}");
    stop.cancel();
    w.await.expect("writer");
    drained(&c).await;
    let snapshots = replay_matches_table(&c).await;
    assert!(snapshots > 90_000, "{snapshots} snapshot events");
    assert!(done.rows_read >= 90_000, "{done:?}");
    assert!(done.first_seq.is_some());
    token.cancel();
    running.wait().await.expect("stops");
}

/// A chunk's snapshot waits for every writer in flight, Sluice's own
/// appender excepted; a client that merely calls itself like the appender
/// is waited for (its change must precede the row's snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_waits_for_a_writer_that_names_itself_like_the_appender() {
    let db = TestDb::new("backfill");
    let c = db.client().await;
    seed_items(&c, 100).await;
    let (running, token) = start(&db).await;
    let spoof = sluice::log::connect_as(&db.url, sluice::log::APPENDER_APPLICATION)
        .await
        .expect("connect");
    spoof
        .batch_execute("BEGIN; UPDATE items SET n = 5 WHERE id = 7")
        .await
        .expect("open a writing transaction");
    let b = backfill_items(&db, &c, 10).await;
    // Not a speed check: no chunk may be read while the writer is open,
    // however long it stays open.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = backfill::get(&c, b.id).await.expect("backfill");
    assert_eq!(
        held.rows_read, 0,
        "a chunk was read past an open writer: {held:?}"
    );
    spoof.batch_execute("COMMIT").await.expect("commit");
    let done = wait_done(&c, b.id).await;
    assert_eq!(done.status, "done", "{done:?}");
    assert_eq!(done.rows_read, 100, "{done:?}");
    drained(&c).await;
    // Row 7's update committed inside its chunk's window, so its change
    // event stands for it and the chunk leaves its snapshot out.
    assert_eq!(replay_matches_table(&c).await, 99);
    token.cancel();
    running.wait().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_snapshot_precedes_every_change_and_replays_to_the_tables_content() {
    let db = TestDb::new("initial");
    let c = db.client().await;
    seed_items(&c, 100000).await;
    // The writer is busy before the slot exists and while it is read.
    let stop = CancellationToken::new();
    let seed = seed();
    let w = writer(db.client().await, 100_001, stop.clone(), seed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let config = db.config_with(
        &[("public.items", "tenant")],
        &[(
            "SLUICE_SOURCE_POSTGRES_TABLES",
            r#"[{table="public.items", tenant_column="tenant", snapshot="initial"}]"#,
        )],
    );
    let token = CancellationToken::new();
    let running = pipeline::start(&config, token.clone(), None)
        .await
        .expect("pipeline starts");
    let initial = backfill::list(&c)
        .await
        .expect("list")
        .into_iter()
        .find(|b| b.kind == "initial")
        .expect("the initial snapshot is recorded");
    assert_eq!(initial.status, "done", "{initial:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    w.await.expect("writer");
    drained(&c).await;
    let snapshots = replay_matches_table(&c).await;
    assert!(snapshots >= 99_000, "{snapshots}");
    // Every snapshot row comes before the first change of the table.
    let events = all_events(&c).await;
    let last_snapshot = events
        .iter()
        .filter(|e| e["type"] == "row.snapshot")
        .filter_map(|e| e["seq"].as_i64())
        .max()
        .expect("snapshot events");
    let first_change = events
        .iter()
        .filter(|e| {
            e["topic"]
                .as_str()
                .is_some_and(|t| t.starts_with("tables/public.items/"))
        })
        .filter(|e| e["type"] != "row.snapshot")
        .filter_map(|e| e["seq"].as_i64())
        .min()
        .expect("changes");
    assert!(
        last_snapshot < first_change,
        "{last_snapshot} vs {first_change}"
    );
    assert_eq!(
        last_snapshot, snapshots as i64,
        "the snapshot is the log's beginning"
    );
    token.cancel();
    running.wait().await.expect("stops");
}

fn run_cli(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = common::proc::sluice()
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run sluice");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn slot_active(c: &tokio_postgres::Client, db: &TestDb) {
    let slot = format!("slot_{}", db.name);
    let start = Instant::now();
    loop {
        let active = c
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .expect("slot")
            .is_some_and(|r| r.get::<_, bool>(0));
        if active {
            return;
        }
        assert!(start.elapsed() < PATIENCE, "the source never streamed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_a_backfill_it_resumes_and_completes() {
    let db = TestDb::new("backfill_kill");
    let c = db.client().await;
    seed_items(&c, 60000).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::proc::write_config(dir.path(), &db, "public.items", "tenant", "");
    let child = common::proc::serve(&config);
    slot_active(&c, &db).await;
    let stop = CancellationToken::new();
    let seed = seed();
    let w = writer(db.client().await, 60_001, stop.clone(), seed);
    let (code, out, err) = run_cli(
        &config,
        &[
            "backfill",
            "--table",
            "public.items",
            "--chunk-size",
            "1000",
            "--no-wait",
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let id: i64 = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no id in {out:?}"));
    // Kill it part-way.
    let start = Instant::now();
    loop {
        let b = backfill::get(&c, id).await.expect("get");
        if b.chunks >= 8 {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "no progress: {b:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(child); // SIGKILL
    let part = backfill::get(&c, id).await.expect("get");
    assert_eq!(part.status, "running");
    assert!(part.rows_read < 60_000, "killed part-way: {part:?}");
    let _child = common::proc::serve(&config);
    let done = wait_done(&c, id).await;
    assert_eq!(done.status, "done", "{done:?}");
    stop.cancel();
    w.await.expect("writer");
    drained(&c).await;
    let snapshots = replay_matches_table(&c).await;
    assert!(snapshots >= 50_000, "{snapshots}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_backfill_requests_get_clear_errors_and_nothing_runs() {
    let db = TestDb::new("backfill_bad");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    c.batch_execute(
        "CREATE TABLE other (id int PRIMARY KEY, tenant text);
         CREATE TABLE nokey (id int, tenant text);
         INSERT INTO items VALUES (1, 'a', 0, 'x');",
    )
    .await
    .expect("ddl");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::proc::write_config(dir.path(), &db, "public.items", "tenant", "");
    for (args, want) in [
        (
            vec!["--table", "public.nope"],
            "table public.nope does not exist",
        ),
        (
            vec!["--table", "public.other"],
            "table public.other is not captured",
        ),
        (vec!["--table", "items"], "expected schema.table"),
        (
            vec![
                "--table",
                "public.items",
                "--where",
                "id > 1; DROP TABLE items",
            ],
            "';' is not allowed",
        ),
        (
            vec!["--table", "public.items", "--where", "true) OR (true"],
            "a ')' without its '('",
        ),
        (
            vec!["--table", "public.items", "--where", "no_such_column = 1"],
            "no_such_column",
        ),
        (
            vec!["--table", "public.items", "--where", "id >"],
            "invalid predicate",
        ),
        (
            vec!["--table", "public.items", "--chunk-size", "0"],
            "chunk_size: expected 1 to",
        ),
    ] {
        let mut all = vec!["backfill"];
        all.extend(args.iter());
        all.push("--no-wait");
        let (code, out, err) = run_cli(&config, &all);
        assert_eq!(code, Some(2), "{args:?}: {out}{err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // Nothing was recorded, and the table is intact.
    let n: i64 = c
        .query_one("SELECT count(*) FROM sluice.backfills", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0);
    let rows: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("items still exists")
        .get(0);
    assert_eq!(rows, 1);

    // The HTTP API: admin only; the same checks, naming the parameter.
    let server_config = db.config_with(
        &[("public.items", "tenant")],
        &[("SLUICE_HTTP_LISTEN", "127.0.0.1:0")],
    );
    let token = CancellationToken::new();
    let server = sluice::server::start(server_config, token.clone())
        .await
        .expect("server");
    let admin = sluice::auth::keys::create_key(&c, None, sluice::auth::Role::Admin, None)
        .await
        .expect("admin key")
        .1;
    let service = sluice::auth::keys::create_key(
        &c,
        Some(&sluice::event::TenantId::new("a").expect("valid")),
        sluice::auth::Role::Service,
        None,
    )
    .await
    .expect("service key")
    .1;
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/backfills", server.addr);
    let post = |key: String, body: Value| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let r = http
                .post(&url)
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .expect("request");
            let status = r.status().as_u16();
            let bytes = r.bytes().await.expect("body");
            (
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    let (status, _) = post(
        service.clone(),
        serde_json::json!({"table": "public.items"}),
    )
    .await;
    assert_eq!(status, 403, "a service key may not backfill");
    for (body, param) in [
        (serde_json::json!({"table": "public.other"}), "table"),
        (
            serde_json::json!({"table": "public.items", "where": "1=1; select 1"}),
            "where",
        ),
        (
            serde_json::json!({"table": "public.items", "chunk_size": -1}),
            "chunk_size",
        ),
        (
            serde_json::json!({"table": "public.items", "bogus": 1}),
            "bogus",
        ),
    ] {
        let (status, v) = post(admin.clone(), body.clone()).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
    }
    let (status, v) = post(
        admin.clone(),
        serde_json::json!({"table": "public.items", "where": "id >= 1"}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_i64().expect("id");
    let start = Instant::now();
    loop {
        let r = http
            .get(format!("{url}/{id}"))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("get");
        let v: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
        if v["status"] == "done" {
            assert_eq!(v["rows_read"], 1, "{v}");
            break;
        }
        assert!(start.elapsed() < PATIENCE, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cancel = |id: i64| {
        let http = http.clone();
        let url = format!("{url}/{id}/cancel");
        let admin = admin.clone();
        async move {
            let r = http
                .post(url)
                .bearer_auth(admin)
                .send()
                .await
                .expect("cancel");
            let status = r.status().as_u16();
            let v: Value =
                serde_json::from_slice(&r.bytes().await.expect("body")).unwrap_or(Value::Null);
            (status, v)
        }
    };
    let (status, v) = cancel(id).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (409, &Value::from("not_running")),
        "{v}"
    );
    assert_eq!(cancel(987_654).await.0, 404);
    // A throttled backfill, cancelled while it runs, ends as cancelled.
    c.batch_execute("INSERT INTO items SELECT g, 'a', 0, 'x' FROM generate_series(2, 50) g")
        .await
        .expect("rows");
    let (status, v) = post(
        admin.clone(),
        serde_json::json!({"table": "public.items", "chunk_size": 1, "throttle_ms": 60000}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let slow = v["id"].as_i64().expect("id");
    let start = Instant::now();
    while backfill::get(&c, slow).await.expect("get").chunks < 1 {
        assert!(start.elapsed() < PATIENCE, "no chunk");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, v) = cancel(slow).await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("cancelled")),
        "{v}"
    );
    let after = backfill::get(&c, slow).await.expect("get");
    assert_eq!(after.status, "cancelled");
    assert!(after.rows_read < 50, "{after:?}");
    token.cancel();
    server.wait().await.expect("stops");
}
