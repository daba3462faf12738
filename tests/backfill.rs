//! Snapshots and backfills against a real Postgres: existing rows become
//! `row.snapshot` events consistent with the change stream.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::proc::run_cli;
use common::{all_events, poll_until, start_pipeline, stop_pipeline, TestDb, PATIENCE};
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

/// The pipeline capturing `public.items`.
async fn start(db: &TestDb) -> (Pipeline, CancellationToken) {
    start_pipeline(&db.config(&[("public.items", "tenant")])).await
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
    let custom = format!("custom.{tag}");
    let custom = &custom;
    poll_until(PATIENCE, Duration::from_millis(100), || async move {
        let found: bool = c
            .query_one(
                "SELECT exists(SELECT 1 FROM sluice.events WHERE type = $1)",
                &[custom],
            )
            .await
            .expect("query")
            .get(0);
        found
            .then_some(())
            .ok_or("the log never caught up".to_owned())
    })
    .await
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
    poll_until(PATIENCE * 3, Duration::from_millis(100), || async move {
        let b = backfill::get(state, id).await.expect("backfill");
        if b.status != "running" {
            Ok(b)
        } else {
            Err(format!("backfill never finished: {b:?}"))
        }
    })
    .await
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
    stop_pipeline(running, token).await;
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
    stop_pipeline(running, token).await;
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
    let (running, token) = start_pipeline(&config).await;
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
    stop_pipeline(running, token).await;
}

async fn slot_active(c: &tokio_postgres::Client, db: &TestDb) {
    let slot = format!("slot_{}", db.name);
    let slot = &slot;
    poll_until(PATIENCE, Duration::from_millis(100), || async move {
        let active = c
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[slot],
            )
            .await
            .expect("slot")
            .is_some_and(|r| r.get::<_, bool>(0));
        active
            .then_some(())
            .ok_or("the source never streamed".to_owned())
    })
    .await
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
    poll_until(PATIENCE, Duration::from_millis(20), || async {
        let b = backfill::get(&c, id).await.expect("get");
        if b.chunks >= 8 {
            Ok(())
        } else {
            Err(format!("no progress: {b:?}"))
        }
    })
    .await;
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
            "invalid predicate: syntax error at or near \";\"",
        ),
        (
            vec!["--table", "public.items", "--where", "pg_sleep(1) is null"],
            "may call no volatile or side-effecting function (it calls pg_sleep(double precision))",
        ),
        (
            vec!["--table", "public.items", "--where", "  "],
            "invalid predicate: the predicate is empty",
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
        (
            vec!["--table", "public.items", "--chunk-size", "-1"],
            "chunk_size: expected 1 to 100000, got -1",
        ),
        (
            vec!["--table", "public.items", "--throttle-ms", "-5"],
            "throttle_ms: expected 0 to 60000, got -5",
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
    let admin = sluice::auth::keys::create_key(
        &c,
        None,
        sluice::auth::Role::Admin,
        None,
        &serde_json::Map::new(),
        None,
    )
    .await
    .expect("admin key")
    .1;
    let service = sluice::auth::keys::create_key(
        &c,
        Some(&sluice::event::TenantId::new("a").expect("valid")),
        sluice::auth::Role::Service,
        None,
        &serde_json::Map::new(),
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
            serde_json::json!({"table": "public.items", "where": ""}),
            "where",
        ),
        (
            serde_json::json!({"table": "public.items", "where": "(select count(*) from other) > 0"}),
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

/// Creates a backfill of `table` with `predicate`, as the API and the CLI do.
async fn backfill_where(
    db: &TestDb,
    c: &tokio_postgres::Client,
    table: &str,
    tenant: &str,
    predicate: &str,
    chunk: i32,
) -> Result<backfill::Backfill, backfill::BackfillError> {
    let config = db.config(&[(table, tenant)]);
    backfill::create(
        c,
        c,
        config.postgres().expect("pg"),
        &Request {
            table: table.into(),
            predicate: Some(predicate.into()),
            chunk_size: Some(chunk),
            ..Request::default()
        },
        "backfill",
    )
    .await
}

/// How many `row.snapshot` events of `table` the log holds per key `id`.
async fn snapshots_per_id(c: &tokio_postgres::Client, table: &str) -> BTreeMap<i64, usize> {
    let mut per_id = BTreeMap::new();
    for e in all_events(c).await {
        if e["type"] == "row.snapshot" && e["topic"] == format!("tables/{table}/snapshot") {
            let id = e["data"]["key"]["id"].as_i64().expect("key id");
            *per_id.entry(id).or_insert(0) += 1;
        }
    }
    per_id
}

pub const ORDERS: &str = "CREATE TABLE orders (id int PRIMARY KEY, tenant text NOT NULL, status text NOT NULL,
                                               created_at timestamptz NOT NULL DEFAULT now());
                          ALTER TABLE orders REPLICA IDENTITY FULL;
                          INSERT INTO orders SELECT g, 't' || (g % 3), CASE WHEN g % 4 = 0 THEN 'archived' ELSE 'open' END,
                                                    CASE WHEN g % 5 = 0 THEN now() - interval '3 days' ELSE now() END
                          FROM generate_series(1, 300) g;
                          CREATE TABLE other (id int PRIMARY KEY);
                          CREATE SEQUENCE s;";

/// A predicate is the body of a function the chunk query calls beside its
/// key bound: text that tries to close the parentheses it was once pasted
/// in (the `E''` string that hid a `)` and made the first chunk come back
/// without end, `true) or (true`, comments, dollar quotes) is either
/// refused or just an expression, and every backfill reads each row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predicates_that_try_to_escape_are_refused_or_harmless_and_never_escape_the_key_bound() {
    let db = TestDb::new("backfill_where");
    let c = db.client().await;
    c.batch_execute(ORDERS).await.expect("ddl");
    let config = db.config(&[("public.orders", "tenant")]);
    let (running, token) = start_pipeline(&config).await;

    // Harmless: whatever they say, they are one boolean expression.
    let mut expected_snapshots: BTreeMap<i64, usize> = BTreeMap::new();
    for (predicate, rows) in [
        (r"E'\'' = '' ) or (true --'", 300),
        ("true) or (true", 300),
        ("1=1 --", 300),
        ("$q$ ) or (true $q$ <> ''", 300),
        ("id > 0 /* ) or (true */", 300),
        ("status <> 'archived'", 225),
        ("created_at > now() - interval '1 day'", 240),
    ] {
        let b = backfill_where(&db, &c, "public.orders", "tenant", predicate, 50)
            .await
            .unwrap_or_else(|e| panic!("{predicate}: {e}"));
        let done = wait_done(&c, b.id).await;
        assert_eq!(done.status, "done", "{predicate}: {done:?}");
        assert_eq!(
            done.rows_read, rows,
            "{predicate}: every matching row once: {done:?}"
        );
        let matching = c
            .query(
                &format!(
                    "SELECT id FROM orders WHERE {}",
                    match predicate {
                        "status <> 'archived'" | "created_at > now() - interval '1 day'" =>
                            predicate,
                        _ => "true",
                    }
                ),
                &[],
            )
            .await
            .expect("rows");
        for r in matching {
            *expected_snapshots
                .entry(i64::from(r.get::<_, i32>(0)))
                .or_insert(0) += 1;
        }
    }
    drained(&c).await;
    assert_eq!(
        snapshots_per_id(&c, "public.orders").await,
        expected_snapshots,
        "each backfill gave each matching row exactly one snapshot event"
    );

    // Refused, naming the problem; nothing is recorded.
    let before = backfill::list(&c).await.expect("list").len();
    for (predicate, why) in [
        ("/*", "unterminated /* comment"),
        ("; delete from orders", "syntax error at or near \";\""),
        ("true; delete from orders", "syntax error at or near \";\""),
        (
            "true) ; delete from orders; select (true",
            "cannot insert multiple commands into a prepared statement",
        ),
        ("$q$ open", "unterminated dollar-quoted string"),
        (
            "(select count(*) from other) >= 0",
            "subqueries are not allowed",
        ),
        (
            "exists (select 1 from pg_class)",
            "subqueries are not allowed",
        ),
        (
            "'other'::regclass is not null",
            "may not refer to another relation (it refers to other)",
        ),
        ("pg_sleep(1) is null", "it calls pg_sleep(double precision)"),
        ("nextval('s') > 0", "nextval(regclass)"),
        ("random() < 2", "it calls random()"),
        (
            "pg_terminate_backend(1)",
            "pg_terminate_backend(integer,bigint)",
        ),
        ("id", "return type mismatch"),
        (
            "no_such_column = 1",
            "column \"no_such_column\" does not exist",
        ),
        ("", "the predicate is empty"),
        (" \n ", "the predicate is empty"),
    ] {
        match backfill_where(&db, &c, "public.orders", "tenant", predicate, 50).await {
            Err(backfill::BackfillError::InvalidPredicate(m)) => {
                assert!(m.contains(why), "{predicate:?}: {m}")
            }
            other => panic!("{predicate:?} was not refused: {other:?}"),
        }
    }
    // A function takes at most 100 arguments: a wider table is told so.
    let columns: Vec<String> = (1..=100).map(|i| format!("c{i} int")).collect();
    c.batch_execute(&format!(
        "CREATE TABLE wide (id int PRIMARY KEY, tenant text, {})",
        columns.join(", ")
    ))
    .await
    .expect("wide");
    match backfill_where(&db, &c, "public.wide", "tenant", "id > 0", 50).await {
        Err(backfill::BackfillError::InvalidPredicate(m)) => assert!(
            m.contains("has 102 columns; a predicate can be used on tables of at most 100"),
            "{m}"
        ),
        other => panic!("a predicate on 102 columns: {other:?}"),
    }
    assert_eq!(backfill::list(&c).await.expect("list").len(), before);
    let rows: i64 = c
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 300, "the table is intact");
    let next: i64 = c
        .query_one("SELECT nextval('s')", &[])
        .await
        .expect("nextval")
        .get(0);
    assert_eq!(next, 1, "no predicate ran");
    stop_pipeline(running, token).await;
}

/// The runner applies the same rules to a backfill recorded without
/// `create` (SQL into sluice.backfills): a volatile predicate fails the
/// backfill with the reason, and an escaping one still reads each row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_recorded_by_sql_is_checked_by_the_runner_too() {
    let db = TestDb::new("backfill_sql");
    let c = db.client().await;
    c.batch_execute(ORDERS).await.expect("ddl");
    let config = db.config(&[("public.orders", "tenant")]);
    let (running, token) = start_pipeline(&config).await;
    let insert = |predicate: &'static str| {
        let c = &c;
        async move {
            c.query_one(
                "INSERT INTO sluice.backfills (table_name, predicate, chunk_size, start_seq)
                 VALUES ('public.orders', $1, 40, 0) RETURNING id",
                &[&predicate],
            )
            .await
            .expect("insert")
            .get::<_, i64>(0)
        }
    };
    let volatile = insert("pg_sleep(0.01) is not null").await;
    let failed = wait_done(&c, volatile).await;
    assert_eq!(failed.status, "failed", "{failed:?}");
    let error = failed.error.unwrap_or_default();
    assert!(
        error.contains("invalid predicate") && error.contains("pg_sleep"),
        "{error}"
    );
    assert_eq!(failed.rows_read, 0);
    let escaping = insert(r"E'\'' = '' ) or (true --'").await;
    let done = wait_done(&c, escaping).await;
    assert_eq!(done.status, "done", "{done:?}");
    assert_eq!(done.rows_read, 300, "{done:?}");
    stop_pipeline(running, token).await;
}

/// A STABLE function that sleeps: a predicate calling it makes a chunk
/// query that runs until something stops it.
const SLOW: &str = "CREATE FUNCTION slow(int) RETURNS boolean LANGUAGE plpgsql STABLE AS
                    $$ BEGIN PERFORM pg_sleep(600); RETURN true; END $$;";

/// Waits until `sluice-backfill`'s chunk query on the source is running
/// (`true`) or gone (`false`).
async fn chunk_query_running(c: &tokio_postgres::Client, db: &TestDb, running: bool) {
    let not_yet = if running {
        "the chunk query is not running"
    } else {
        "the chunk query is still running"
    };
    poll_until(PATIENCE, Duration::from_millis(100), || async move {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1
                 AND application_name = 'sluice-backfill' AND state = 'active' AND query LIKE 'COPY (%'",
                &[&db.name],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        ((n > 0) == running).then_some(()).ok_or(not_yet.to_owned())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_backfill_cancels_its_slow_chunk_query_and_the_next_backfill_completes() {
    let db = TestDb::new("backfill_cancel");
    let c = db.client().await;
    seed_items(&c, 100).await;
    c.batch_execute(SLOW).await.expect("slow");
    let (running, token) = start(&db).await;
    let slow = backfill_where(&db, &c, "public.items", "tenant", "slow(id)", 10)
        .await
        .expect("create");
    chunk_query_running(&c, &db, true).await;
    let cancelled = backfill::cancel(&c, slow.id)
        .await
        .expect("cancel")
        .expect("it was running");
    assert_eq!(cancelled.status, "cancelled");
    chunk_query_running(&c, &db, false).await;
    let next = backfill_items(&db, &c, 30).await;
    let done = wait_done(&c, next.id).await;
    assert_eq!(done.status, "done", "{done:?}");
    assert_eq!(done.rows_read, 100, "{done:?}");
    assert_eq!(
        backfill::get(&c, slow.id).await.expect("get").status,
        "cancelled",
        "the cancelled backfill stays cancelled"
    );
    stop_pipeline(running, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cancels_a_slow_chunk_query_on_the_source() {
    let db = TestDb::new("backfill_term");
    let c = db.client().await;
    seed_items(&c, 100).await;
    c.batch_execute(SLOW).await.expect("slow");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::proc::write_config(dir.path(), &db, "public.items", "tenant", "");
    let mut child = common::proc::serve(&config);
    slot_active(&c, &db).await;
    let slow = backfill_where(&db, &c, "public.items", "tenant", "slow(id)", 10)
        .await
        .expect("create");
    chunk_query_running(&c, &db, true).await;
    let pid = child.0.id().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(kill.success());
    let start = Instant::now();
    while child.0.try_wait().expect("wait").is_none() {
        assert!(start.elapsed() < PATIENCE, "still running after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    chunk_query_running(&c, &db, false).await;
    // Shutdown is not a cancel: the backfill resumes at the next start.
    let after = backfill::get(&c, slow.id).await.expect("get");
    assert_eq!(after.status, "running", "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_query_past_the_statement_timeout_fails_its_backfill_saying_so() {
    let db = TestDb::new("backfill_timeout");
    let c = db.client().await;
    seed_items(&c, 100).await;
    c.batch_execute(SLOW).await.expect("slow");
    let config = db.config_with(
        &[("public.items", "tenant")],
        &[(
            "SLUICE_SOURCE_POSTGRES_BACKFILL_STATEMENT_TIMEOUT_MS",
            "300",
        )],
    );
    let (running, token) = start_pipeline(&config).await;
    let slow = backfill_where(&db, &c, "public.items", "tenant", "slow(id)", 10)
        .await
        .expect("create");
    let failed = wait_done(&c, slow.id).await;
    assert_eq!(failed.status, "failed", "{failed:?}");
    let error = failed.error.unwrap_or_default();
    assert!(
        error.contains("source.postgres.backfill_statement_timeout_ms (300 ms)"),
        "{error}"
    );
    chunk_query_running(&c, &db, false).await;
    stop_pipeline(running, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_estimated_is_filled_for_a_table_never_analysed() {
    let db = TestDb::new("backfill_estimate");
    let c = db.client().await;
    seed_items(&c, 500).await;
    let reltuples: f32 = c
        .query_one(
            "SELECT reltuples FROM pg_class WHERE relname = 'items'",
            &[],
        )
        .await
        .expect("reltuples")
        .get(0);
    if reltuples >= 0.0 {
        // Autovacuum analysed it first; the estimate is then the catalog's.
        println!("items was analysed already (reltuples {reltuples})");
    }
    pipeline::migrate(&db.config(&[("public.items", "tenant")]))
        .await
        .expect("migrate");
    let b = backfill_items(&db, &c, 100).await;
    assert_eq!(b.rows_estimated, Some(500), "{b:?}");
    // A table too large to count gets the planner's estimate from its size.
    let info = backfill::table_info(&c, "public", "items")
        .await
        .expect("table_info")
        .expect("items exists");
    if reltuples < 0.0 {
        let planned = backfill::estimate_rows_counting_below(&c, &info, 0)
            .await
            .expect("estimate");
        assert!(planned.is_some_and(|n| n > 0), "{planned:?}");
    }
}

/// The README's order, `check` → `setup` → `serve`, with a table
/// configured `snapshot = "initial"`: `setup` made the slot without a
/// snapshot, so `serve` reads the table as a backfill of kind `initial`;
/// every row arrives as `row.snapshot` once, and a restart reads nothing
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_setup_serve_takes_the_initial_snapshot_once() {
    let db = TestDb::new("initial_setup");
    let c = db.client().await;
    seed_items(&c, 1000).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n\n[source.postgres]\nurl = \"{}\"\nslot = \"slot_{}\"\n\
             tables = [{{ table = \"public.items\", tenant_column = \"tenant\", snapshot = \"initial\" }}]\n",
            db.url, db.name
        ),
    )
    .expect("config");
    let (code, out, err) = run_cli(&config, &["check"]);
    assert_eq!(code, Some(0), "check before setup: {out}{err}");
    assert!(
        out.contains("`sluice setup` or `sluice serve` creates it"),
        "{out}"
    );
    let (code, out, err) = run_cli(&config, &["setup"]);
    assert_eq!(code, Some(0), "setup: {out}{err}");
    let child = common::proc::serve(&config);
    slot_active(&c, &db).await;
    let initial = poll_until(PATIENCE, Duration::from_millis(100), || async {
        backfill::list(&c)
            .await
            .expect("list")
            .into_iter()
            .find(|b| b.kind == "initial")
            .filter(|b| b.status != "running")
            .ok_or("no initial snapshot ran".to_owned())
    })
    .await;
    assert_eq!(initial.status, "done", "{initial:?}");
    drained(&c).await;
    let once: BTreeMap<i64, usize> = (1..=1000).map(|id| (id, 1)).collect();
    assert_eq!(snapshots_per_id(&c, "public.items").await, once);
    drop(child);
    let _child = common::proc::serve(&config);
    slot_active(&c, &db).await;
    drained(&c).await;
    assert_eq!(
        snapshots_per_id(&c, "public.items").await,
        once,
        "a restart snapshots nothing again"
    );
    let initials = backfill::list(&c)
        .await
        .expect("list")
        .into_iter()
        .filter(|b| b.kind == "initial")
        .count();
    assert_eq!(initials, 1);
}

/// A text key whose collation is not the database's: chunks follow the
/// column's order, and the check that a chunk's rows are past the last key
/// compares as the column does (it would call `B` after `a` already read
/// under the database's "C" order and stop the backfill).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_key_with_its_own_collation_is_read_once_in_its_order() {
    let db = TestDb::new("backfill_collate");
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE words (id text COLLATE \"und-x-icu\" PRIMARY KEY, tenant text NOT NULL);
         ALTER TABLE words REPLICA IDENTITY FULL;
         INSERT INTO words SELECT w, 't' FROM unnest(ARRAY['a', 'B', 'c', 'D', 'e', 'F', 'g', 'H']) w;",
    )
    .await
    .expect("ddl");
    let config = db.config(&[("public.words", "tenant")]);
    let (running, token) = start_pipeline(&config).await;
    let b = backfill_where(&db, &c, "public.words", "tenant", "id <> 'zzz'", 3)
        .await
        .expect("create");
    let done = wait_done(&c, b.id).await;
    assert_eq!(done.status, "done", "{done:?}");
    assert_eq!(done.rows_read, 8, "{done:?}");
    drained(&c).await;
    let order: Vec<String> = all_events(&c)
        .await
        .iter()
        .filter(|e| e["type"] == "row.snapshot")
        .filter_map(|e| e["data"]["key"]["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(order, ["a", "B", "c", "D", "e", "F", "g", "H"]);
    stop_pipeline(running, token).await;
}

/// A table added to the config later with `snapshot = "initial"` (the slot
/// exists already) is read once as a backfill of kind `initial`; the table
/// captured before is not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_configured_initial_later_is_snapshotted_once() {
    let db = TestDb::new("initial_later");
    let c = db.client().await;
    seed_items(&c, 50).await;
    c.batch_execute(
        "CREATE TABLE more (id int PRIMARY KEY, tenant text NOT NULL);
         ALTER TABLE more REPLICA IDENTITY FULL;
         INSERT INTO more SELECT g, 't' FROM generate_series(1, 200) g;",
    )
    .await
    .expect("ddl");
    let (running, token) = start(&db).await;
    stop_pipeline(running, token).await;
    let config = db.config_with(
        &[("public.items", "tenant")],
        &[(
            "SLUICE_SOURCE_POSTGRES_TABLES",
            r#"[{table="public.items", tenant_column="tenant"},
                {table="public.more", tenant_column="tenant", snapshot="initial"}]"#,
        )],
    );
    for _ in 0..2 {
        let (running, token) = start_pipeline(&config).await;
        let start = Instant::now();
        loop {
            let initial: Vec<_> = backfill::list(&c)
                .await
                .expect("list")
                .into_iter()
                .filter(|b| b.kind == "initial")
                .collect();
            assert!(initial.len() <= 1, "{initial:?}");
            if initial.first().is_some_and(|b| b.status == "done") {
                assert_eq!(initial[0].table, "public.more");
                break;
            }
            assert!(start.elapsed() < PATIENCE, "{initial:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drained(&c).await;
        let once: BTreeMap<i64, usize> = (1..=200).map(|id| (id, 1)).collect();
        assert_eq!(snapshots_per_id(&c, "public.more").await, once);
        assert!(snapshots_per_id(&c, "public.items").await.is_empty());
        stop_pipeline(running, token).await;
    }
}
