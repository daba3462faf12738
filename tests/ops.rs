//! Operating Sluice: slot health and heartbeats, readiness, metrics.

mod common;

use std::time::{Duration, Instant};

use common::http::get;
use common::http::readyz_until;
use common::stop_server as stop;
use common::{all_events, TestDb, PATIENCE};
use serde_json::Value;
use sluice::server::Server;
use tokio_util::sync::CancellationToken;

const TABLES: &str = "CREATE TABLE items (id int PRIMARY KEY, tenant text NOT NULL, n int);
                      ALTER TABLE items REPLICA IDENTITY FULL;
                      CREATE TABLE noise (id bigserial PRIMARY KEY, payload text);";

async fn serve(db: &TestDb, extra: &[(&str, &str)]) -> (Server, CancellationToken) {
    common::serve_items(db, extra).await
}

async fn lsn(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.expect("lsn query").get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_move_the_slot_while_only_uncaptured_tables_change() {
    let db = TestDb::new("heartbeat");
    let c = db.client().await;
    c.batch_execute(TABLES).await.expect("ddl");
    let (server, token) = serve(&db, &[("SLUICE_SOURCE_POSTGRES_HEARTBEAT_SECS", "1")]).await;
    readyz_until(server.addr, "ready", |s, _| s == 200).await;
    let slot = format!("slot_{}", db.name);
    let confirmed = format!(
        "SELECT (confirmed_flush_lsn - '0/0')::int8 FROM pg_replication_slots WHERE slot_name = '{slot}'"
    );
    let before = lsn(&c, &confirmed).await;
    // Lots of WAL, none of it for a captured table: an uncaptured table of
    // this database, and another database of the cluster (whose records
    // the slot's decoder skips without a word to the client).
    let other = TestDb::new("heartbeat_other");
    let o = other.client().await;
    o.batch_execute("CREATE TABLE noise (id bigserial PRIMARY KEY, payload text)")
        .await
        .expect("ddl");
    for (i, client) in [&c, &o, &o, &o].into_iter().enumerate() {
        client
            .execute(
                "INSERT INTO noise (payload) SELECT repeat('x', 200) FROM generate_series(1, 5000)",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("noise {i}: {e}"));
    }
    let target = lsn(&c, "SELECT (pg_current_wal_lsn() - '0/0')::int8").await;
    assert!(target - before > 1_000_000, "the writes made WAL");
    let start = Instant::now();
    loop {
        let now = lsn(&c, &confirmed).await;
        if now >= target {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "the slot stayed at {now}, {} bytes behind the writes",
            target - now
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing was captured, and the heartbeats are counted.
    assert!(all_events(&c).await.is_empty());
    let start = Instant::now();
    loop {
        let m = String::from_utf8_lossy(&get(server.addr, "/metrics", &[]).await.body).to_string();
        let beats = m
            .lines()
            .find_map(|l| l.strip_prefix("sluice_source_heartbeats_total{source=\"postgres\"} "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if beats >= 2.0 {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "no heartbeats read back:\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Captured changes still flow after heartbeats.
    c.execute("INSERT INTO items VALUES (1, 'acme', 1)", &[])
        .await
        .expect("insert");
    common::wait_for_events(&c, 1).await;
    stop(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_slot_makes_readyz_fail_and_say_why() {
    let db = TestDb::new("slotgone");
    let c = db.client().await;
    c.batch_execute(TABLES).await.expect("ddl");
    let (server, token) = serve(
        &db,
        &[
            ("SLUICE_SOURCE_POSTGRES_HEARTBEAT_SECS", "1"),
            ("SLUICE_SOURCE_POSTGRES_RECONNECT_MAX_BACKOFF_MS", "2000"),
        ],
    )
    .await;
    let ready = readyz_until(server.addr, "ready", |s, _| s == 200).await;
    assert_eq!(ready["status"], "ready");
    let slot = format!("slot_{}", db.name);
    // The source reconnects at once, so terminate and drop until the drop wins.
    let start = Instant::now();
    loop {
        let _ = c
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active",
                &[&slot],
            )
            .await;
        if c.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
            .is_ok()
        {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "could not drop the slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = readyz_until(server.addr, "the missing slot", |s, b| {
        s == 503 && b["problems"].to_string().contains("does not exist")
    })
    .await;
    assert!(body["problems"].to_string().contains(&slot), "{body}");
    // Liveness is not readiness.
    assert_eq!(get(server.addr, "/livez", &[]).await.status, 200);
    stop(server, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarting_under_load_loses_nothing_and_subscribers_stay_connected() {
    // A cluster of its own: this test stops it.
    let pg = std::sync::Arc::new(localpg::LocalPg::start().expect("own cluster"));
    let name = pg.create_database("restart").expect("database");
    let db = TestDb {
        url: pg.url(&name),
        name,
    };
    let c = db.client().await;
    c.batch_execute(TABLES).await.expect("ddl");
    let (server, token) = serve(
        &db,
        &[("SLUICE_SOURCE_POSTGRES_RECONNECT_MAX_BACKOFF_MS", "1000")],
    )
    .await;
    readyz_until(server.addr, "ready", |s, _| s == 200).await;
    let anon = {
        sluice::auth::keys::create_key(
            &c,
            Some(&sluice::event::TenantId::new("acme").expect("valid")),
            sluice::auth::Role::Anon,
            None,
            &serde_json::Map::new(),
            None,
        )
        .await
        .expect("key")
        .1
    };
    let mut sse = common::http::stream(
        server.addr,
        &format!("/v1/events/subscribe?apikey={anon}"),
        &[],
    )
    .await;

    // The writer keeps committing through the outage (retrying while the
    // server is down); the table itself says what committed.
    let stop_writer = CancellationToken::new();
    let writer = {
        let url = db.url.clone();
        let stop = stop_writer.clone();
        tokio::spawn(async move {
            let mut next = 1;
            let mut client: Option<tokio_postgres::Client> = None;
            while !stop.is_cancelled() {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = sluice::log::connect(&url).await.ok();
                }
                if let Some(w) = &client {
                    let sql = format!(
                        "INSERT INTO items SELECT g, 'acme', g FROM generate_series({next}, {}) g ON CONFLICT DO NOTHING",
                        next + 4
                    );
                    if w.batch_execute(&sql).await.is_ok() {
                        next += 5;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut seqs: Vec<i64> = Vec::new();
    while seqs.len() < 100 {
        let e = sse.expect_event(PATIENCE).await;
        if e.event.as_deref() == Some("row.inserted") {
            seqs.push(e.id.expect("id").parse().expect("seq"));
        }
    }
    // Down for two seconds, then back on the same port.
    let restarting = pg.clone();
    tokio::task::spawn_blocking(move || {
        restarting.stop().expect("stop");
        std::thread::sleep(Duration::from_secs(2));
        restarting.start_again().expect("start again");
    })
    .await
    .expect("restart");
    // Capture resumes: more rows arrive after the restart.
    let c = db.client().await;
    let start = Instant::now();
    let before: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("count")
        .get(0);
    loop {
        let n: i64 = c
            .query_one("SELECT coalesce(max(seq), 0) FROM sluice.events", &[])
            .await
            .expect("head")
            .get(0);
        if n >= before + 200 {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "capture did not resume after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_writer.cancel();
    writer.await.expect("writer");
    let rows: Vec<i32> = c
        .query("SELECT id FROM items ORDER BY id", &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let events = common::wait_for_events(&c, rows.len()).await;
    let logged: Vec<i32> = events
        .iter()
        .map(|e| e["data"]["new"]["id"].as_i64().expect("id") as i32)
        .collect();
    assert_eq!(logged, rows, "every committed row once, in commit order");
    // The subscriber stayed on the same connection and got all of it.
    while seqs.len() < events.len() {
        let e = sse.expect_event(PATIENCE).await;
        match e.event.as_deref() {
            Some("row.inserted") => seqs.push(e.id.expect("id").parse().expect("seq")),
            other => panic!("unexpected frame {other:?}: {}", e.data),
        }
    }
    let all: Vec<i64> = events.iter().filter_map(|e| e["seq"].as_i64()).collect();
    assert_eq!(seqs, all);
    stop(server, token).await;
}

/// `/metrics` parsed by the official Python client's parser.
fn parse_metrics(text: &str) -> Value {
    use std::io::Write as _;
    let mut child = std::process::Command::new("python3")
        .arg("tests/clients/parse_metrics.py")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("parser");
    assert!(
        out.status.success(),
        "prometheus-client rejected the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn sample(families: &Value, family: &str, sample: &str, labels: Value) -> Option<f64> {
    families[family]["samples"]
        .as_array()?
        .iter()
        .find(|s| s[0] == sample && s[1] == labels)
        .and_then(|s| s[2].as_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_valid_prometheus_and_count_what_happened() {
    let db = TestDb::new("metrics");
    let c = db.client().await;
    c.batch_execute(TABLES).await.expect("ddl");
    let (server, token) = serve(&db, &[]).await;
    readyz_until(server.addr, "ready", |s, _| s == 200).await;
    let anon = sluice::auth::keys::create_key(
        &c,
        Some(&sluice::event::TenantId::new("acme").expect("valid")),
        sluice::auth::Role::Anon,
        None,
        &serde_json::Map::new(),
        None,
    )
    .await
    .expect("key")
    .1;
    let mut sse = common::http::stream(
        server.addr,
        &format!("/v1/events/subscribe?apikey={anon}"),
        &[],
    )
    .await;
    c.batch_execute(
        "INSERT INTO items SELECT g, 'acme', g FROM generate_series(1, 25) g;
         UPDATE items SET n = n + 1 WHERE id <= 5;
         SELECT pg_logical_emit_message(true, 'sluice', '{\"tenant\":\"acme\",\"type\":\"order.shipped\",\"data\":{}}');",
    )
    .await
    .expect("writes");
    for _ in 0..31 {
        sse.expect_event(PATIENCE).await;
    }
    let text = String::from_utf8_lossy(&get(server.addr, "/metrics", &[]).await.body).to_string();
    let m = parse_metrics(&text);

    // Conventions: the prefix, `_total` on counters, no tenant label.
    for (name, family) in m.as_object().expect("families") {
        assert!(name.starts_with("sluice_"), "{name}");
        if family["type"] == "counter" {
            // The parser strips `_total` from counter family names; the
            // samples carry it.
            for s in family["samples"].as_array().expect("samples") {
                assert!(s[0].as_str().is_some_and(|n| n.ends_with("_total")), "{s}");
            }
        }
        for s in family["samples"].as_array().expect("samples") {
            assert!(s[1].get("tenant").is_none(), "tenant label on {s}");
        }
    }
    let appended = |t: &str| {
        sample(
            &m,
            "sluice_events_appended",
            "sluice_events_appended_total",
            serde_json::json!({"source": "pg/main", "type": t}),
        )
    };
    assert_eq!(appended("row.inserted"), Some(25.0));
    assert_eq!(appended("row.updated"), Some(5.0));
    assert_eq!(
        appended("custom"),
        Some(1.0),
        "custom types share one label"
    );
    assert_eq!(
        sample(
            &m,
            "sluice_subscribers",
            "sluice_subscribers",
            serde_json::json!({"transport": "sse"})
        ),
        Some(1.0)
    );
    assert_eq!(m["sluice_delivery_latency_seconds"]["type"], "histogram");
    let delivered = sample(
        &m,
        "sluice_delivery_latency_seconds",
        "sluice_delivery_latency_seconds_count",
        serde_json::json!({"transport": "sse"}),
    );
    assert_eq!(delivered, Some(31.0));
    assert_eq!(
        sample(
            &m,
            "sluice_webhook_outbox_depth",
            "sluice_webhook_outbox_depth",
            serde_json::json!({})
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&m, "sluice_leader", "sluice_leader", serde_json::json!({})),
        Some(1.0)
    );
    for family in [
        "sluice_replication_lag_bytes",
        "sluice_replication_lag_seconds",
        "sluice_subscriber_catchups",
        "sluice_webhook_deliveries",
    ] {
        assert!(m.get(family).is_some(), "{family} missing:\n{text}");
    }
    stop(server, token).await;
}
