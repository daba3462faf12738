//! Consumer-group benchmark (issue 19), one Sluice process:
//!
//! 1. Throughput: `--events` changes already in the log (`--subjects` rows
//!    updated over and over, 1,000-row transactions); `--workers` workers
//!    each loop receive (`--batch` messages) and ack them all, over HTTP
//!    keep-alive, until the group has had every event; events/s from the
//!    first receive to the last ack. Once with `ordering = none`, once with
//!    `ordering = subject` (the rows are the subjects).
//! 2. Latency: a group at `now`, one worker long-polling (wait 20 s) and
//!    acking, `--rate` single-row transactions a second for `--seconds`:
//!    commit (the envelope's `time`) → the receive's answer, p50/p95/p99.
//!
//! `cargo bench --bench groups -- [--events 200000] [--subjects 1000]
//!  [--workers 4] [--batch 100] [--rate 1000] [--seconds 10]`
//! (scripts/bench-groups.sh installs Postgres if needed and runs this).
//! Targets (printed, never asserted): ≥ 20,000 events/s with ordering none,
//! ≥ 10,000 with ordering by subject over 1,000 subjects, p99 ≤ 25 ms.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use localpg::LocalPg;
use serde_json::{json, Value};
use sluice::auth::Role;

mod common;
use common::{cpu_secs, envelope_time, now_micros, num_arg, psql, show, stats};

#[derive(Clone)]
struct Api {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Api {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.key))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn create(&self, body: Value) {
        let (s, v) = self.post("/v1/groups", body).await;
        assert_eq!(s, 201, "create group: {v}");
    }
}

/// Workers drain `total` events from `group`; returns (events/s, events
/// delivered more than once).
fn drain(
    rt: &tokio::runtime::Runtime,
    api: &Api,
    group: &str,
    total: u64,
    workers: usize,
    batch: u64,
) -> (f64, u64) {
    let acked = Arc::new(AtomicU64::new(0));
    let repeats = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let (api, acked, repeats, group) = (
                api.clone(),
                acked.clone(),
                repeats.clone(),
                group.to_owned(),
            );
            tasks.push(tokio::spawn(async move {
                while acked.load(Ordering::Relaxed) < total {
                    let (s, v) = api
                        .post(
                            &format!("/v1/groups/{group}/receive"),
                            json!({"max_messages": batch, "wait_ms": 200}),
                        )
                        .await;
                    assert_eq!(s, 200, "receive: {v}");
                    let msgs = v["messages"].as_array().cloned().unwrap_or_default();
                    if msgs.is_empty() {
                        continue;
                    }
                    repeats.fetch_add(
                        msgs.iter().filter(|m| m["attempt"] != 1).count() as u64,
                        Ordering::Relaxed,
                    );
                    let tokens: Vec<&str> =
                        msgs.iter().filter_map(|m| m["delivery"].as_str()).collect();
                    let (s, v) = api
                        .post(
                            &format!("/v1/groups/{group}/ack"),
                            json!({"deliveries": tokens}),
                        )
                        .await;
                    assert_eq!(s, 200, "ack: {v}");
                    acked.fetch_add(msgs.len() as u64, Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            t.await.expect("worker");
        }
    });
    (
        acked.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(),
        repeats.load(Ordering::Relaxed),
    )
}

fn main() {
    let events = num_arg("--events", 200_000).max(1000);
    let subjects = num_arg("--subjects", 1000).max(1);
    let workers = num_arg("--workers", 4).max(1) as usize;
    let batch = num_arg("--batch", 100).clamp(1, 1000);
    let rate = num_arg("--rate", 1000).max(1);
    let seconds = num_arg("--seconds", 10).max(2);

    eprintln!("starting a throwaway cluster…");
    let pg = LocalPg::start().expect("start Postgres");
    let db = pg.create_database("bench").expect("db");
    psql(
        &pg,
        &db,
        "CREATE TABLE items (id bigint PRIMARY KEY, tenant text NOT NULL, n bigint NOT NULL DEFAULT 0);
         ALTER TABLE items REPLICA IDENTITY FULL;",
    );
    let url = pg.url(&db);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    let (sluice, base) = common::serve_ready(
        &rt,
        &http,
        &url,
        r#"[{table="public.items", tenant_column="tenant"}]"#,
    );
    let sluice_pid = sluice.pid();
    let key = common::bench_key(&rt, &url, "t1", Role::Service);
    let api = Api { base, key, http };

    // The backlog: `subjects` rows, then updates of all of them.
    eprintln!("writing {events} changes over {subjects} rows…");
    psql(
        &pg,
        &db,
        &format!(
            "INSERT INTO items (id, tenant) SELECT i, 't1' FROM generate_series(1, {subjects}) i;"
        ),
    );
    let rounds = events / subjects;
    let total = subjects * (rounds.max(1));
    let (client, conn) = rt
        .block_on(tokio_postgres::connect(&url, tokio_postgres::NoTls))
        .expect("connect");
    rt.spawn(conn);
    rt.block_on(async {
        for _ in 1..rounds.max(1) {
            client
                .batch_execute("UPDATE items SET n = n + 1")
                .await
                .expect("update");
        }
    });
    // Wait until the log holds them all.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let head: i64 = rt.block_on(async {
            client
                .query_one("SELECT coalesce(max(seq), 0) FROM sluice.events", &[])
                .await
                .map(|r| r.get(0))
                .unwrap_or(0)
        });
        if head as u64 >= total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the log holds only {head} of {total}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut results = Vec::new();
    for ordering in ["none", "subject"] {
        let name = format!("drain-{ordering}");
        rt.block_on(api.create(
            json!({"name": name, "start": "beginning", "ordering": ordering,
            "ack_wait_ms": 60000, "max_in_flight": 100000}),
        ));
        let cpu0 = cpu_secs(sluice_pid).unwrap_or(f64::NAN);
        eprintln!(
            "draining {total} events, ordering {ordering}, {workers} workers, batches of {batch}…"
        );
        let t = Instant::now();
        let (per_sec, repeats) = drain(&rt, &api, &name, total, workers, batch);
        let wall = t.elapsed().as_secs_f64();
        let cpu = cpu_secs(sluice_pid).unwrap_or(f64::NAN) - cpu0;
        results.push((ordering, per_sec, repeats, wall, cpu));
    }

    // Latency with a waiting long poll.
    rt.block_on(api.create(json!({"name": "live", "start": "now", "ack_wait_ms": 60000})));
    let samples: Arc<Mutex<Vec<(i64, i64)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (api, samples, stop) = (api.clone(), samples.clone(), stop.clone());
        rt.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (s, v) = api
                    .post(
                        "/v1/groups/live/receive",
                        json!({"max_messages": 1000, "wait_ms": 1000}),
                    )
                    .await;
                let now = now_micros();
                assert_eq!(s, 200, "{v}");
                let msgs = v["messages"].as_array().cloned().unwrap_or_default();
                if msgs.is_empty() {
                    continue;
                }
                {
                    let mut out = samples.lock().expect("samples");
                    for m in &msgs {
                        if let Some(at) = envelope_time(m["event"].to_string().as_bytes()) {
                            out.push((at, now));
                        }
                    }
                }
                let tokens: Vec<&str> =
                    msgs.iter().filter_map(|m| m["delivery"].as_str()).collect();
                api.post("/v1/groups/live/ack", json!({"deliveries": tokens}))
                    .await;
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let writers: Vec<Arc<tokio_postgres::Client>> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..4 {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect a writer");
            tokio::spawn(conn);
            v.push(Arc::new(c));
        }
        v
    });
    eprintln!("writing {rate} single-row transactions/s for {seconds} s with a long poll waiting…");
    let phase_start = now_micros();
    let achieved = common::write_at_rate(
        &rt,
        &writers,
        "INSERT INTO items (id, tenant) VALUES ($1, 't1') ON CONFLICT (id) DO UPDATE SET n = items.n + 1 WHERE $2 <> ''",
        rate,
        (rate * seconds) as i64,
        10_000_000,
        Arc::new(|id| id.to_string()),
    );
    let phase_end = now_micros();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let _ = rt.block_on(poller);
    let latency = stats(
        &samples.lock().expect("samples"),
        phase_start + 1_000_000,
        phase_end,
    );

    println!(
        "consumer groups: {total} events in the log over {subjects} subjects; {workers} workers, receive {batch} + ack {batch} a round, one sluice process"
    );
    for (ordering, per_sec, repeats, wall, cpu) in &results {
        let target = if *ordering == "none" {
            20_000.0
        } else {
            10_000.0
        };
        println!(
            "  ordering {ordering:<8} {per_sec:>9.0} events/s ({wall:.1} s; sluice CPU {cpu:.1} s; redeliveries {repeats}); target >= {target:.0} ({})",
            if *per_sec >= target { "met" } else { "missed" }
        );
    }
    println!("latency at {rate}/s (achieved {achieved:.0}/s) for {seconds} s, one long poll waiting, first second dropped:");
    show("commit -> receive answer", &latency);
    match &latency {
        Some(s) => println!(
            "  target: p99 <= 25 ms ({})",
            if s.p99 <= 25.0 { "met" } else { "missed" }
        ),
        None => println!("  target: p99 <= 25 ms (missed: nothing received)"),
    }
    drop(sluice);
    drop(pg);
}
