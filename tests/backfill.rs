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
            let sql = match rng.gen_range(0..10) {
                0 => format!("DELETE FROM items WHERE id = {id}"),
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
    c.batch_execute(ITEMS).await.expect("ddl");
    c.batch_execute(
        "INSERT INTO items SELECT g, 't' || (g % 3), 0, 'seed' FROM generate_series(1, 100000) g",
    )
    .await
    .expect("seed");
    let (running, token) = start(&db).await;
    let stop = CancellationToken::new();
    let seed: u64 = rand::random();
    println!("writer seed {seed}");
    let w = writer(db.client().await, 100_001, stop.clone(), seed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let config = db.config(&[("public.items", "tenant")]);
    let b = backfill::create(
        &c,
        &c,
        config.postgres().expect("pg"),
        &Request {
            table: "public.items".into(),
            chunk_size: Some(5000),
            ..Request::default()
        },
        "backfill",
    )
    .await
    .expect("create");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_snapshot_precedes_every_change_and_replays_to_the_tables_content() {
    let db = TestDb::new("initial");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    c.batch_execute(
        "INSERT INTO items SELECT g, 't' || (g % 3), 0, 'seed' FROM generate_series(1, 100000) g",
    )
    .await
    .expect("seed");
    // The writer is busy before the slot exists and while it is read.
    let stop = CancellationToken::new();
    let seed: u64 = rand::random();
    println!("writer seed {seed}");
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
