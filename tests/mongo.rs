//! The MongoDB source.
//!
//! There is no MongoDB server on the machines these tests run on, so:
//! - the parts that need only Postgres run always: change events in the
//!   documented shapes go through the real appender into the real log, with
//!   their resume tokens checkpointed in the same transaction; a source
//!   whose server cannot be reached, or whose checkpoint is unusable, is
//!   reported by `/readyz` while Postgres capture keeps flowing;
//! - the live tests run against a real replica set when `MONGODB_URI` is
//!   set (`docker compose -f docker/mongo-replica-set.yml up -d`, then
//!   `MONGODB_URI=mongodb://127.0.0.1:27017/?replicaSet=rs0`), and print
//!   that they were skipped otherwise.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bson::{doc, Document};
use common::http::get;
use common::stop_server as stop;
use common::{all_events, wait_for_events, TestDb, PATIENCE};
use serde_json::{json, Value};
use sluice::config::{AppenderConfig, CollectionConfig};
use sluice::event::TenantId;
use sluice::log::{self, checkpoint, AppendItem, Appender, ReadScope};
use sluice::server::Server;
use sluice::source::mongo::change_stream::decode_token;
use sluice::source::mongo::normalize::{Normalizer, Outcome};
use tokio_util::sync::CancellationToken;

const KEY: &str = "mongo/app";

fn collections() -> Vec<CollectionConfig> {
    vec![CollectionConfig {
        collection: "orders".into(),
        tenant_field: "tenantId".into(),
        fields_only: false,
    }]
}

/// A change event in the documented shape.
fn change(n: u32, op: &str, id: i32, body: Document) -> Document {
    let mut d = doc! {
        "_id": { "_data": format!("82{n:08X}000000012B022C0100296E5A1004") },
        "operationType": op,
        "clusterTime": bson::Timestamp { time: 1_800_000_000 + n, increment: 1 },
        "wallTime": bson::DateTime::from_millis(1_800_000_000_000 + i64::from(n)),
        "ns": { "db": "shop", "coll": "orders" },
        "documentKey": { "_id": id },
    };
    d.extend(body);
    d
}

async fn stored_token(db: &TestDb) -> Option<Vec<u8>> {
    let c = db.client().await;
    checkpoint::load(&c, KEY)
        .await
        .expect("load checkpoint")
        .token
        .map(|t| t.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_tokens_are_checkpointed_in_the_transaction_of_their_events() {
    let db = TestDb::new("mongotok");
    let mut c = db.client().await;
    log::migrate::migrate(&mut c).await.expect("migrate");

    let events = [
        change(
            1,
            "insert",
            1,
            doc! { "fullDocument": { "_id": 1, "tenantId": "acme", "n": 1 } },
        ),
        change(
            2,
            "insert",
            2,
            doc! { "fullDocument": { "_id": 2, "tenantId": "globex" } },
        ),
        // A delete without a pre-image: no event, but the token moves on.
        change(3, "delete", 9, doc! {}),
        change(
            4,
            "update",
            1,
            doc! {
                "updateDescription": { "updatedFields": { "n": 2 }, "removedFields": [] },
                "fullDocument": { "_id": 1, "tenantId": "acme", "n": 2 },
            },
        ),
    ];
    let mut normalizer = Normalizer::new("/sluice/mongo/app", "shop", &collections());
    let (mut appender, handle) = Appender::start(&db.url, &AppenderConfig::default(), None)
        .await
        .expect("appender");
    let start = appender.checkpoint(&KEY.into()).await.expect("checkpoint");
    assert_eq!(start.token, None, "a new source has no token");
    let run = tokio::spawn(appender.run(CancellationToken::new()));
    let mut tokens = Vec::new();
    for e in &events {
        let n = normalizer.normalize(e).expect("documented shape");
        tokens.push(n.token.clone());
        let item = match n.outcome {
            Outcome::Event(mut ev) => {
                ev.position = n.position;
                AppendItem::Event {
                    source: KEY.into(),
                    event: *ev,
                    token: Some(n.token),
                }
            }
            _ => AppendItem::Progress {
                source: KEY.into(),
                position: n.position,
                token: n.token,
            },
        };
        handle.send(item).await.expect("send");
    }
    drop(handle);
    run.await
        .expect("join")
        .expect("appender flushes and stops");

    let log = all_events(&c).await;
    let summary: Vec<(String, String, String)> = log
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or("").to_owned(),
                e["tenant"].as_str().unwrap_or("").to_owned(),
                e["subject"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("doc.inserted".into(), "acme".into(), "shop.orders/1".into()),
            (
                "doc.inserted".into(),
                "globex".into(),
                "shop.orders/2".into()
            ),
            ("doc.updated".into(), "acme".into(), "shop.orders/1".into()),
        ]
    );
    assert_eq!(log[2]["source"], json!("/sluice/mongo/app"));
    assert_eq!(log[2]["topic"], json!("collections/shop.orders/update"));
    assert_eq!(log[2]["data"]["changed"], json!(["n"]));
    assert_eq!(
        log[2]["data"]["new"],
        json!({"_id": 1, "tenantId": "acme", "n": 2})
    );
    assert_eq!(
        stored_token(&db).await.as_deref(),
        Some(tokens[3].as_ref()),
        "the checkpoint is the token of the last event appended"
    );

    // Tenant reads see only their own documents' changes.
    let acme = TenantId::new("acme").expect("valid");
    let mine = log::read_events(&c, &ReadScope::Tenant(acme), 1, 100)
        .await
        .expect("read");
    assert_eq!(mine.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 3]);

    // Progress alone (an idle stream's post-batch token) moves the
    // checkpoint and appends nothing; a restarted appender finds it.
    let idle =
        bson::to_vec(&doc! { "_data": "82FFFFFFFF000000012B022C0100296E5A1004" }).expect("bson");
    let (mut appender, handle) = Appender::start(&db.url, &AppenderConfig::default(), None)
        .await
        .expect("appender restarts");
    let resumed = appender.checkpoint(&KEY.into()).await.expect("checkpoint");
    assert_eq!(resumed.token.as_deref(), Some(tokens[3].as_ref()));
    decode_token(resumed.token.as_deref().expect("token")).expect("a usable resume token");
    let run = tokio::spawn(appender.run(CancellationToken::new()));
    handle
        .send(AppendItem::Progress {
            source: KEY.into(),
            position: resumed.position,
            token: idle.clone().into(),
        })
        .await
        .expect("send");
    drop(handle);
    run.await.expect("join").expect("appender stops");
    assert_eq!(all_events(&c).await.len(), 3);
    assert_eq!(stored_token(&db).await, Some(idle));
}

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, tenant text NOT NULL);
                     ALTER TABLE items REPLICA IDENTITY FULL;";

async fn serve(db: &TestDb, mongo: &str) -> (Server, CancellationToken) {
    common::serve_items(db, &[("SLUICE_SOURCE_MONGO", mongo)]).await
}

/// Polls `/readyz` until `done` holds for its body.
async fn readyz_until(addr: SocketAddr, done: impl Fn(u16, &Value) -> bool) -> Value {
    common::http::readyz_until(addr, "the expected state", done).await
}

/// A Mongo source pointing at a port where nothing listens.
const UNREACHABLE: &str = r#"[{name="app", uri="mongodb://127.0.0.1:1/?replicaSet=rs0&serverSelectionTimeoutMS=200&connectTimeoutMS=200", database="shop", collections=[{collection="orders", tenant_field="tenantId"}], reconnect_max_backoff_ms=300}]"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_mongo_source_is_reported_while_postgres_keeps_flowing() {
    let db = TestDb::new("mongodown");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db, UNREACHABLE).await;
    let addr = server.addr;

    c.execute("INSERT INTO items VALUES (1, 'acme')", &[])
        .await
        .expect("insert");
    let events = wait_for_events(&c, 1).await;
    assert_eq!(events[0]["type"], json!("row.inserted"));

    let body = readyz_until(addr, |status, b| {
        status == 503 && !b["sources"]["mongo/app"]["last_error"].is_null()
    })
    .await;
    let problems = body["problems"].to_string();
    assert!(
        problems.contains("mongo source app is not streaming"),
        "{body}"
    );
    assert_eq!(body["sources"]["mongo/app"]["streaming"], json!(false));
    assert!(body["sources"]["mongo/app"]["stuck"].is_null(), "{body}");

    // It keeps retrying: reconnections are counted.
    let start = Instant::now();
    loop {
        let m = String::from_utf8_lossy(&get(addr, "/metrics", &[]).await.body).to_string();
        assert!(
            m.contains("sluice_source_streaming{source=\"mongo/app\"} 0"),
            "{m}"
        );
        let retries = m
            .lines()
            .find_map(|l| l.strip_prefix("sluice_source_reconnects_total{source=\"mongo/app\"} "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if retries >= 2.0 {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "no retries counted:\n{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Postgres capture was never held up.
    c.execute("INSERT INTO items VALUES (2, 'acme')", &[])
        .await
        .expect("insert");
    wait_for_events(&c, 2).await;
    // Nothing was checkpointed for a source that never streamed.
    assert_eq!(stored_token(&db).await, None);
    stop(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_checkpoint_stops_the_source_loudly_and_never_restarts_from_now() {
    let db = TestDb::new("mongobadtok");
    let mut c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    log::migrate::migrate(&mut c).await.expect("migrate");
    c.execute(
        "INSERT INTO sluice.checkpoints (source, commit_lsn, ordinal, complete, ack_lsn, resume_token)
         VALUES ($1, 0, 0, true, 0, $2)",
        &[&KEY, &b"not a token".as_slice()],
    )
    .await
    .expect("seed checkpoint");
    let (server, token) = serve(&db, UNREACHABLE).await;
    let body = readyz_until(server.addr, |_, b| {
        !b["sources"]["mongo/app"]["stuck"].is_null()
    })
    .await;
    let stuck = body["sources"]["mongo/app"]["stuck"].as_str().unwrap_or("");
    assert!(stuck.contains("unusable resume token"), "{body}");
    assert!(stuck.contains("MongoDB: resume point lost"), "{body}");
    assert!(body["problems"]
        .to_string()
        .contains("mongo source app is stopped"));
    // The checkpoint is left for the operator, not replaced by "now".
    assert_eq!(
        stored_token(&db).await.as_deref(),
        Some(b"not a token".as_slice())
    );
    stop(server, token).await;
}

// ---------------------------------------------------------------------
// Live tests: a real replica set at MONGODB_URI.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_connection_string_stops_only_that_source() {
    let db = TestDb::new("mongobaduri");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let bad = r#"[{name="app", uri="mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=banana", database="shop", collections=[{collection="orders", tenant_field="tenantId"}]}]"#;
    let (server, token) = serve(&db, bad).await;
    let body = readyz_until(server.addr, |_, b| {
        !b["sources"]["mongo/app"]["stuck"].is_null()
    })
    .await;
    let stuck = body["sources"]["mongo/app"]["stuck"].as_str().unwrap_or("");
    assert!(
        stuck.contains("invalid MongoDB connection string"),
        "{body}"
    );
    c.execute("INSERT INTO items VALUES (1, 'acme')", &[])
        .await
        .expect("insert");
    wait_for_events(&c, 1).await;
    stop(server, token).await;
}

fn live_uri(test: &str) -> Option<String> {
    match std::env::var("MONGODB_URI") {
        Ok(uri) if !uri.is_empty() => Some(uri),
        _ => {
            // Written to the process's stderr directly: the test harness
            // captures eprintln! of passing tests, and a skip must be seen.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: live MongoDB test; set MONGODB_URI to a replica set \
                 (docker compose -f docker/mongo-replica-set.yml up -d; \
                 MONGODB_URI=mongodb://127.0.0.1:27017/?replicaSet=rs0)"
            );
            None
        }
    }
}

fn live_sources(uri: &str, database: &str) -> String {
    format!(
        r#"[{{name="app", uri="{uri}", database="{database}", collections=[{{collection="orders", tenant_field="tenantId"}}]}},
            {{name="raw", uri="{uri}", database="{database}", collections=[{{collection="plain", tenant_field="tenantId"}}], enable_pre_images=false}}]"#
    )
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name_and_labels} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_changes_are_captured_isolated_and_resumed_exactly_once() {
    let Some(uri) = live_uri("live_changes_are_captured_isolated_and_resumed_exactly_once") else {
        return;
    };
    let database = format!(
        "sluice_test_{}_{}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    );
    let mongo = mongodb::Client::with_uri_str(&uri)
        .await
        .expect("mongo client");
    let mdb = mongo.database(&database);
    mdb.create_collection("orders")
        .await
        .expect("create orders");
    mdb.create_collection("plain").await.expect("create plain");
    let orders = mdb.collection::<Document>("orders");
    let plain = mdb.collection::<Document>("plain");

    let pg = TestDb::new("mongolive");
    let c = pg.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let sources = live_sources(&uri, &database);
    let (server, token) = serve(&pg, &sources).await;
    readyz_until(server.addr, |status, _| status == 200).await;

    orders
        .insert_one(doc! { "_id": 1, "tenantId": "acme", "n": 1, "x": true })
        .await
        .expect("insert");
    orders
        .insert_one(doc! { "_id": 2, "tenantId": "globex", "n": 1 })
        .await
        .expect("insert");
    // No tenant: filtered at the source, never in the log.
    orders
        .insert_one(doc! { "_id": 3, "n": 1 })
        .await
        .expect("insert");
    orders
        .update_one(
            doc! { "_id": 1 },
            doc! { "$set": { "n": 2 }, "$unset": { "x": "" } },
        )
        .await
        .expect("update");
    orders
        .replace_one(doc! { "_id": 2 }, doc! { "tenantId": "globex", "n": 9 })
        .await
        .expect("replace");
    // Pre-images are enabled on orders: the delete reaches its tenant.
    orders.delete_one(doc! { "_id": 1 }).await.expect("delete");
    plain
        .insert_one(doc! { "_id": 1, "tenantId": "acme" })
        .await
        .expect("insert");
    // No pre-images on plain: the delete cannot be attributed.
    plain.delete_one(doc! { "_id": 1 }).await.expect("delete");

    let events = wait_for_events(&c, 6).await;
    let seen: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or("").to_owned(),
                e["tenant"].as_str().unwrap_or("").to_owned(),
                e["subject"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let s =
        |t: &str, ten: &str, sub: &str| (t.to_owned(), ten.to_owned(), format!("{database}.{sub}"));
    // The two sources interleave; each one's own order is kept.
    let orders_seen: Vec<_> = seen
        .iter()
        .filter(|e| e.2.contains(".orders/"))
        .cloned()
        .collect();
    assert_eq!(
        orders_seen,
        [
            s("doc.inserted", "acme", "orders/1"),
            s("doc.inserted", "globex", "orders/2"),
            s("doc.updated", "acme", "orders/1"),
            s("doc.replaced", "globex", "orders/2"),
            s("doc.deleted", "acme", "orders/1"),
        ]
    );
    assert!(
        seen.contains(&s("doc.inserted", "acme", "plain/1")),
        "{seen:?}"
    );
    assert_eq!(seen.len(), 6, "{seen:?}");
    let update = events
        .iter()
        .find(|e| e["type"] == "doc.updated")
        .expect("update");
    assert_eq!(update["data"]["changed"], json!(["n", "x"]));
    assert_eq!(update["data"]["update"]["updated_fields"], json!({"n": 2}));
    assert_eq!(update["data"]["update"]["removed_fields"], json!(["x"]));
    // `new` is the updateLookup post-image: the document when the event
    // was read, absent if the delete below came first (then the pre-image
    // named the tenant).
    if let Some(new) = update["data"].get("new") {
        assert_eq!(new, &json!({"_id": 1, "tenantId": "acme", "n": 2}));
    } else {
        assert_eq!(update["data"]["old"]["tenantId"], json!("acme"));
    }
    let delete = events
        .iter()
        .find(|e| e["type"] == "doc.deleted")
        .expect("delete");
    assert_eq!(delete["data"]["old"]["tenantId"], json!("acme"));

    // Tenant isolation in the log.
    let globex = TenantId::new("globex").expect("valid");
    let theirs = log::read_events(&c, &ReadScope::Tenant(globex), 1, 100)
        .await
        .expect("read");
    assert_eq!(theirs.len(), 2);
    assert!(theirs
        .iter()
        .all(|e| String::from_utf8_lossy(&e.body).contains("\"tenant\":\"globex\"")));

    // The unattributable delete was counted, not delivered.
    let start = Instant::now();
    loop {
        let m = String::from_utf8_lossy(&get(server.addr, "/metrics", &[]).await.body).to_string();
        let n = metric(
            &m,
            "sluice_source_changes_dropped_total{reason=\"delete_without_pre_image\",source=\"mongo/raw\"}",
        );
        if n >= 1.0 {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "delete not counted:\n{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(server, token).await;

    // Changes made while Sluice is down arrive after a restart, once.
    orders
        .insert_one(doc! { "_id": 4, "tenantId": "acme" })
        .await
        .expect("insert");
    let (server, token) = serve(&pg, &sources).await;
    let events = wait_for_events(&c, 7).await;
    assert_eq!(events[6]["subject"], json!(format!("{database}.orders/4")));
    // Nothing more arrives: a restart re-reads nothing already in the log.
    orders
        .insert_one(doc! { "_id": 5, "tenantId": "acme" })
        .await
        .expect("insert");
    let events = wait_for_events(&c, 8).await;
    assert_eq!(events.len(), 8, "no duplicates after the restart");
    assert_eq!(events[7]["subject"], json!(format!("{database}.orders/5")));
    stop(server, token).await;
    mdb.drop().await.expect("drop test database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_dropping_a_captured_collection_is_reported_and_capture_continues() {
    let Some(uri) =
        live_uri("live_dropping_a_captured_collection_is_reported_and_capture_continues")
    else {
        return;
    };
    let database = format!(
        "sluice_drop_{}_{}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    );
    let mongo = mongodb::Client::with_uri_str(&uri)
        .await
        .expect("mongo client");
    let mdb = mongo.database(&database);
    mdb.create_collection("orders").await.expect("create");
    mdb.create_collection("plain").await.expect("create");
    let pg = TestDb::new("mongodrop");
    let c = pg.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&pg, &live_sources(&uri, &database)).await;
    readyz_until(server.addr, |status, _| status == 200).await;
    mdb.collection::<Document>("orders")
        .drop()
        .await
        .expect("drop");
    let body = readyz_until(server.addr, |_, b| {
        b["sources"]["mongo/app"]["conditions"]
            .to_string()
            .contains("was dropped")
    })
    .await;
    // A database-level stream survives the drop of one collection.
    assert_eq!(
        body["sources"]["mongo/app"]["streaming"],
        json!(true),
        "{body}"
    );
    // A collection of that name is captured again.
    mdb.collection::<Document>("orders")
        .insert_one(doc! { "_id": 1, "tenantId": "acme" })
        .await
        .expect("insert");
    let events = wait_for_events(&c, 1).await;
    assert_eq!(events[0]["type"], json!("doc.inserted"));
    stop(server, token).await;
    mdb.drop().await.expect("drop test database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_reset_gives_up_the_resume_point_only_when_told_to() {
    let db = TestDb::new("mongoreset");
    let mut c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    log::migrate::migrate(&mut c).await.expect("migrate");
    let token = bson::to_vec(&doc! { "_data": "8263501000" }).expect("bson");
    c.execute(
        "INSERT INTO sluice.checkpoints (source, commit_lsn, ordinal, complete, ack_lsn, resume_token)
         VALUES ($1, 0, 0, true, 0, $2)",
        &[&KEY, &token],
    )
    .await
    .expect("seed checkpoint");
    let env = db.env(
        &[("public.items", "tenant")],
        &[("SLUICE_SOURCE_MONGO", UNREACHABLE)],
    );
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .env_clear()
            .envs(&env)
            .output()
            .expect("run sluice");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, _, err) = run(&["mongo-reset", "app"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--accept-gap"), "{err}");
    let (code, _, err) = run(&["mongo-reset", "nope", "--accept-gap"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no MongoDB source named \"nope\""), "{err}");
    assert_eq!(
        stored_token(&db).await,
        Some(token),
        "refusals change nothing"
    );

    let (code, out, err) = run(&["mongo-reset", "app", "--accept-gap"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("removed the checkpoint of mongo/app (resume token 8263501000"),
        "{out}"
    );
    assert!(out.contains("not in the log"), "{out}");
    let left = c
        .query_opt(
            "SELECT 1 FROM sluice.checkpoints WHERE source = $1",
            &[&KEY],
        )
        .await
        .expect("query");
    assert!(left.is_none());
}
