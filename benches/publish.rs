//! HTTP publish benchmark (issue 20), one Sluice process:
//!
//! 1. Throughput: `--clients` concurrent clients, each looping `POST
//!    /v1/events` (answered once the events are in the log) for
//!    `--seconds`, with one event per request and with `--batch` events per
//!    request; events/s. The reference is the floor of any durable publish
//!    through Postgres, measured on the same cluster in the same run: the
//!    same number of direct connections, each looping one transaction that
//!    emits the same messages (`pg_logical_emit_message`) and commits,
//!    while Sluice captures them. Ratio = Sluice / reference.
//! 2. Latency: an SSE subscriber on `custom/*`; `--rate` single-event
//!    publishes a second spread over the clients for `--seconds`: the
//!    request's start (stamped into the event's data) → the event's
//!    arrival on the SSE stream, p50/p95/p99.
//!
//! `cargo bench --bench publish -- [--clients 8] [--batch 100]
//!  [--seconds 10] [--rate 500]` (scripts/bench-publish.sh installs
//! Postgres if needed and runs this). Figures are printed, never asserted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use localpg::LocalPg;
use serde_json::{json, Value};
use sluice::auth::Role;

mod common;
use common::{bench_key, cpu_secs, now_micros, num_arg, psql, serve_ready, show, stats, SseParser};

/// One request's body: `batch` events (a single event when 1).
fn body(batch: u64, client: usize, n: u64) -> String {
    if batch == 1 {
        return json!({"type": "bench.one", "data": {"c": client, "n": n}}).to_string();
    }
    let events: Vec<Value> = (0..batch)
        .map(|i| json!({"type": "bench.many", "data": {"c": client, "n": n, "i": i}}))
        .collect();
    json!({ "events": events }).to_string()
}

/// `clients` loops POSTing for `seconds`; events/s.
fn sluice_rate(
    rt: &tokio::runtime::Runtime,
    base: &str,
    key: &str,
    clients: usize,
    batch: u64,
    seconds: u64,
) -> f64 {
    let events = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..clients {
            let http = reqwest::Client::new();
            let (events, url, key) = (events.clone(), format!("{base}/v1/events"), key.to_owned());
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                while Instant::now() < until {
                    let resp = http
                        .post(&url)
                        .header("authorization", format!("Bearer {key}"))
                        .header("content-type", "application/json")
                        .body(body(batch, c, n))
                        .send()
                        .await
                        .expect("publish");
                    let status = resp.status().as_u16();
                    let text = resp.text().await.unwrap_or_default();
                    assert_eq!(status, 201, "publish: {text}");
                    events.fetch_add(batch, Ordering::Relaxed);
                    n += 1;
                }
            }));
        }
        for t in tasks {
            t.await.expect("client");
        }
    });
    events.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// The reference: `clients` direct connections, each looping one
/// transaction emitting `batch` messages, for `seconds`; events/s.
fn reference_rate(
    rt: &tokio::runtime::Runtime,
    url: &str,
    clients: usize,
    batch: u64,
    seconds: u64,
) -> f64 {
    let events = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (mut client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(conn);
            let events = events.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                while Instant::now() < until {
                    let contents: Vec<String> = (0..batch)
                        .map(|i| {
                            json!({"tenant": "t1", "type": "ref", "data": {"c": c, "n": n, "i": i}})
                                .to_string()
                        })
                        .collect();
                    let tx = client.transaction().await.expect("begin");
                    tx.execute(
                        "SELECT pg_logical_emit_message(true, 'sluice', c)
                         FROM unnest($1::text[]) WITH ORDINALITY AS u(c, n) ORDER BY n",
                        &[&contents],
                    )
                    .await
                    .expect("emit");
                    tx.commit().await.expect("commit");
                    events.fetch_add(batch, Ordering::Relaxed);
                    n += 1;
                }
            }));
        }
        for t in tasks {
            t.await.expect("client");
        }
    });
    events.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Waits until the log's head stops moving (the pipeline caught up).
fn settle(rt: &tokio::runtime::Runtime, client: &tokio_postgres::Client) {
    let mut last = -1i64;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let head: i64 = rt.block_on(async {
            client
                .query_one("SELECT coalesce(max(seq), 0) FROM sluice.events", &[])
                .await
                .map(|r| r.get(0))
                .unwrap_or(0)
        });
        if head == last {
            return;
        }
        last = head;
    }
}

/// Publish → SSE receipt at `rate`/s for `seconds`; the samples.
fn latency(
    rt: &tokio::runtime::Runtime,
    base: &str,
    key: &str,
    clients: usize,
    rate: u64,
    seconds: u64,
) -> Vec<(i64, i64)> {
    let samples: Arc<Mutex<Vec<(i64, i64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (samples, stop) = (samples.clone(), stop.clone());
        let url = format!("{base}/v1/events/subscribe?topic=custom/bench.live");
        let key = key.to_owned();
        rt.spawn(async move {
            let resp = reqwest::Client::new()
                .get(url)
                .header("accept", "text/event-stream")
                .header("authorization", format!("Bearer {key}"))
                .send()
                .await
                .expect("subscribe");
            assert_eq!(resp.status().as_u16(), 200, "subscribe");
            let mut resp = resp;
            let mut sse = SseParser::new(true);
            while !stop.load(Ordering::Relaxed) {
                let Ok(Ok(Some(chunk))) =
                    tokio::time::timeout(Duration::from_millis(500), resp.chunk()).await
                else {
                    continue;
                };
                let now = now_micros();
                let mut out = samples.lock().expect("samples");
                sse.feed(&chunk, &mut |_event, data| {
                    let t = serde_json::from_slice::<Value>(data)
                        .ok()
                        .and_then(|v| v["data"]["t"].as_i64());
                    if let Some(t) = t {
                        out.push((t, now));
                    }
                });
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(clients as f64 / rate as f64);
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..clients {
            let http = reqwest::Client::new();
            let (url, key) = (format!("{base}/v1/events"), key.to_owned());
            let per_client = total / clients as u64;
            tasks.push(tokio::spawn(async move {
                // Each client's requests on its own schedule, offset.
                let offset = interval.mul_f64(c as f64 / clients as f64);
                let start = tokio::time::Instant::now() + offset;
                for n in 0..per_client {
                    tokio::time::sleep_until(start + interval.mul_f64(n as f64)).await;
                    let body = json!({"type": "bench.live", "data": {"t": now_micros(), "c": c}});
                    let resp = http
                        .post(&url)
                        .header("authorization", format!("Bearer {key}"))
                        .header("content-type", "application/json")
                        .body(body.to_string())
                        .send()
                        .await
                        .expect("publish");
                    assert_eq!(resp.status().as_u16(), 201);
                }
            }));
        }
        for t in tasks {
            t.await.expect("client");
        }
    });
    let _ = started;
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let _ = rt.block_on(reader);
    let v = samples.lock().expect("samples").clone();
    v
}

fn main() {
    let clients = num_arg("--clients", 8).max(1) as usize;
    let batch = num_arg("--batch", 100).clamp(2, 1000);
    let seconds = num_arg("--seconds", 10).max(2);
    let rate = num_arg("--rate", 500).max(1);

    eprintln!("starting a throwaway cluster…");
    let pg = LocalPg::start().expect("start Postgres");
    let db = pg.create_database("bench").expect("db");
    psql(
        &pg,
        &db,
        "CREATE TABLE items (id bigint PRIMARY KEY, tenant text NOT NULL);
         ALTER TABLE items REPLICA IDENTITY FULL;",
    );
    let url = pg.url(&db);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let http = reqwest::Client::new();
    let (sluice, base) = serve_ready(
        &rt,
        &http,
        &url,
        r#"[{table="public.items", tenant_column="tenant"}]"#,
    );
    let pid = sluice.pid();
    let key = bench_key(&rt, &url, "t1", Role::Service);
    let (client, conn) = rt
        .block_on(tokio_postgres::connect(&url, tokio_postgres::NoTls))
        .expect("connect");
    rt.spawn(conn);

    let mut rows = Vec::new();
    for b in [1, batch] {
        eprintln!("reference: {clients} connections emitting {b} message(s) per transaction for {seconds} s…");
        let reference = reference_rate(&rt, &url, clients, b, seconds);
        settle(&rt, &client);
        eprintln!("sluice: {clients} clients publishing {b} event(s) per request for {seconds} s…");
        let cpu0 = cpu_secs(pid).unwrap_or(f64::NAN);
        let published = sluice_rate(&rt, &base, &key, clients, b, seconds);
        let cpu = cpu_secs(pid).unwrap_or(f64::NAN) - cpu0;
        settle(&rt, &client);
        rows.push((b, published, reference, cpu));
    }
    eprintln!(
        "latency: {rate} publishes/s over {clients} clients for {seconds} s, one SSE subscriber…"
    );
    let phase_start = now_micros();
    let samples = latency(&rt, &base, &key, clients, rate, seconds);
    let lat = stats(&samples, phase_start + 1_000_000, i64::MAX);

    println!("HTTP publish: {clients} concurrent clients, {seconds} s each, one sluice process; reference = direct emit+commit transactions on the same Postgres");
    for (b, published, reference, cpu) in &rows {
        println!(
            "  batch {b:<4} sluice {published:>9.0} events/s   reference {reference:>9.0} events/s   ratio {:.2}   (sluice CPU {cpu:.1} s)",
            published / reference
        );
    }
    println!("publish -> SSE receipt at {rate}/s, first second dropped:");
    show("POST start -> SSE event", &lat);
    drop(sluice);
    drop(pg);
}
