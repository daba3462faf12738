//! Webhook delivery benchmark: how fast Sluice delivers a burst of events to
//! several endpoints, and the commit-to-first-attempt latency at a steady
//! rate of single-row transactions.
//!
//! `cargo bench --bench webhooks -- [--events 20000] [--endpoints 4]
//!  [--rate 200] [--seconds 10] [--batch 500] [--max-wait 600]
//!  [--separate-state] [--no-sample]`
//! (`BENCH_SLUICE_<KEY>=v` passes `SLUICE_<KEY>=v` to the measured sluice;
//! scripts/bench-webhooks.sh installs Postgres if needed and runs this.)
//!
//! A throwaway cluster, table `items` (REPLICA IDENTITY FULL), `sluice
//! setup`, then the release `sluice serve`. The receiver runs in this
//! process: a hyper HTTP/1.1 server on 127.0.0.1 (keep-alive) answering
//! every request `200` with an empty body and recording the receipt time,
//! the path (one per endpoint), `webhook-id`, and the event's `seq` and
//! `time` (its commit time) from the body. `--endpoints` endpoints of tenant
//! `t1`, each at its own path, all matching every event.
//!
//! Throughput: `--events` rows for t1 in multi-row transactions (`--batch`
//! rows each) as fast as one connection can commit them, with delivery
//! running live; deliveries/s = events × endpoints / (last delivery − first
//! commit), and the drain after the inserts finished alone.
//!
//! Latency: single-row transactions at `--rate`/s for `--seconds` s;
//! latency = receipt of the first request for an event on an endpoint − the
//! event's commit time (same machine, same clock), one sample per event and
//! endpoint, nothing dropped as warm-up.
//!
//! Also printed: CPU seconds per phase (sluice, the Postgres processes by
//! session, this process), duplicate deliveries (same `webhook-id` to the
//! same endpoint more than once; 0 expected, the receiver always answers
//! 200), and, unless `--no-sample`, what Sluice's database sessions were
//! doing (pg_stat_activity sampled every 25 ms). Targets (printed, never
//! asserted): >= 2000 deliveries/s with 4 endpoints; p99 <= 250 ms.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use localpg::LocalPg;
use serde_json::{json, Value};
use sluice::auth::{create_key, Role};
use sluice::event::TenantId;

mod common;
use common::{cpu_secs, envelope_time, flag, free_port, now_micros, num_arg, psql, Guard};

// ---------------------------------------------------------------- receiver

/// One request the receiver answered.
struct Rec {
    /// Index of the endpoint (from the path `/hook/<i>`).
    endpoint: usize,
    seq: i64,
    /// The event's commit time, µs since the epoch.
    commit: i64,
    /// Receipt time (headers parsed), µs since the epoch.
    recv: i64,
    /// The first request with this `webhook-id` on this endpoint.
    first: bool,
}

#[derive(Default)]
struct Recorder {
    recs: Vec<Rec>,
    seen: HashSet<(usize, String)>,
    unique: usize,
    dups: u64,
    /// Requests without a known path, `webhook-id`, `seq` or `time`.
    bad: u64,
}

type Shared = Arc<Mutex<Recorder>>;

/// The envelope's `seq` member (it precedes `data`, so the first match is it).
fn envelope_seq(body: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"seq\":";
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = body[at..].iter().take_while(|c| c.is_ascii_digit()).count();
    std::str::from_utf8(&body[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

async fn handle(
    req: Request<Incoming>,
    rec: Shared,
    endpoints: usize,
) -> Result<Response<String>, Infallible> {
    let recv = now_micros();
    let endpoint = req
        .uri()
        .path()
        .strip_prefix("/hook/")
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&i| i < endpoints);
    let id = req
        .headers()
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = req.into_body();
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        match frame {
            Ok(f) => {
                if let Ok(data) = f.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Err(_) => break,
        }
    }
    let parsed = (endpoint, id, envelope_seq(&buf), envelope_time(&buf));
    {
        let mut r = rec.lock().expect("recorder");
        match parsed {
            (Some(endpoint), Some(id), Some(seq), Some(commit)) => {
                let first = r.seen.insert((endpoint, id));
                if first {
                    r.unique += 1;
                } else {
                    r.dups += 1;
                }
                r.recs.push(Rec {
                    endpoint,
                    seq,
                    commit,
                    recv,
                    first,
                });
            }
            _ => r.bad += 1,
        }
    }
    Ok(Response::new(String::new()))
}

/// Accepts connections forever; each is served with keep-alive.
async fn receive(
    listener: tokio::net::TcpListener,
    rec: Shared,
    endpoints: usize,
    connections: Arc<AtomicU64>,
) {
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                eprintln!("receiver: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        connections.fetch_add(1, Ordering::Relaxed);
        let rec = rec.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, rec.clone(), endpoints));
            // Errors here are connections closed by the client.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(sock), service)
                .await;
        });
    }
}

// ----------------------------------------------------------------- figures

struct Stats {
    n: usize,
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

/// Nearest-rank percentiles of latencies in ms.
fn stats(mut ms: Vec<f64>) -> Option<Stats> {
    if ms.is_empty() {
        return None;
    }
    ms.sort_by(f64::total_cmp);
    let rank = |p: f64| ms[((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    Some(Stats {
        n: ms.len(),
        p50: rank(0.50),
        p95: rank(0.95),
        p99: rank(0.99),
        max: ms[ms.len() - 1],
    })
}

/// First deliveries of events committed in `[from, to)`.
fn unique_in(rec: &Shared, from: i64, to: i64) -> usize {
    rec.lock()
        .expect("recorder")
        .recs
        .iter()
        .filter(|r| r.first && r.commit >= from && r.commit < to)
        .count()
}

/// The throughput phase's figures (µs since the epoch).
struct Throughput {
    delivered: usize,
    /// Distinct events (seqs) among them.
    events: usize,
    first_commit: i64,
    last_commit: i64,
    first_delivery: i64,
    last_delivery: i64,
    per_endpoint: Vec<usize>,
    /// First deliveries per second since the first commit.
    per_second: Vec<usize>,
    /// Commit → first delivery.
    lag: Option<Stats>,
}

impl Throughput {
    fn of(r: &Recorder, endpoints: usize, t_start: i64) -> Throughput {
        let firsts: Vec<&Rec> = r.recs.iter().filter(|x| x.first).collect();
        let first_commit = firsts.iter().map(|x| x.commit).min().unwrap_or(t_start);
        let mut per_endpoint = vec![0usize; endpoints];
        let mut per_second: Vec<usize> = Vec::new();
        for x in &firsts {
            per_endpoint[x.endpoint] += 1;
            let s = ((x.recv - first_commit).max(0) / 1_000_000) as usize;
            if per_second.len() <= s {
                per_second.resize(s + 1, 0);
            }
            per_second[s] += 1;
        }
        Throughput {
            delivered: firsts.len(),
            events: firsts.iter().map(|x| x.seq).collect::<HashSet<_>>().len(),
            first_commit,
            last_commit: firsts.iter().map(|x| x.commit).max().unwrap_or(t_start),
            first_delivery: firsts.iter().map(|x| x.recv).min().unwrap_or(t_start),
            last_delivery: firsts.iter().map(|x| x.recv).max().unwrap_or(t_start),
            per_endpoint,
            per_second,
            lag: stats(
                firsts
                    .iter()
                    .map(|x| (x.recv - x.commit) as f64 / 1000.0)
                    .collect(),
            ),
        }
    }

    /// First deliveries received by `t`.
    fn by(r: &Recorder, t: i64) -> usize {
        r.recs.iter().filter(|x| x.first && x.recv <= t).count()
    }
}

// --------------------------------------------------------------------- CPU

/// (parent pid, own CPU s, reaped children's CPU s) from /proc/<pid>/stat.
fn proc_stat(pid: u32) -> Option<(u32, f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    let ppid = f.get(1)?.parse().ok()?;
    Some((ppid, (n(11)? + n(12)?) / 100.0, (n(13)? + n(14)?) / 100.0))
}

/// Machine-wide (busy, total) jiffies from /proc/stat.
fn machine_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// CPU use at one moment: sluice, this process, and the Postgres
/// processes (by pid, labelled with their session, plus the total
/// including exited children).
struct CpuSnap {
    at: Instant,
    sluice: f64,
    bench: f64,
    pg_by_pid: HashMap<u32, (String, f64)>,
    pg_total: f64,
    machine: (u64, u64),
}

async fn cpu_snap(mon: &tokio_postgres::Client, sluice_pid: u32, postmaster: u32) -> CpuSnap {
    let labels: HashMap<u32, String> = mon
        .query(
            "SELECT pid, CASE WHEN backend_type IN ('client backend', 'walsender')
                              THEN backend_type || ' ' || coalesce(nullif(application_name, ''), '(no application_name: sluice pools)')
                              ELSE backend_type END
             FROM pg_stat_activity",
            &[],
        )
        .await
        .map(|rows| {
            rows.iter()
                .map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, String>(1)))
                .collect()
        })
        .unwrap_or_default();
    let mut pg_by_pid = HashMap::new();
    let mut pg_total = 0.0;
    if let Some((_, own, reaped)) = proc_stat(postmaster) {
        pg_total += own + reaped;
    }
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((ppid, own, _)) = proc_stat(pid) {
                if ppid == postmaster {
                    pg_total += own;
                    let label = labels
                        .get(&pid)
                        .cloned()
                        .unwrap_or_else(|| "other".to_owned());
                    pg_by_pid.insert(pid, (label, own));
                }
            }
        }
    }
    CpuSnap {
        at: Instant::now(),
        sluice: cpu_secs(sluice_pid).unwrap_or(f64::NAN),
        bench: cpu_secs(std::process::id()).unwrap_or(f64::NAN),
        pg_by_pid,
        pg_total,
        machine: machine_jiffies(),
    }
}

/// The CPU used between two snapshots, as report lines.
fn cpu_report(a: &CpuSnap, b: &CpuSnap) -> Vec<String> {
    let wall = b.at.duration_since(a.at).as_secs_f64();
    let pg = b.pg_total - a.pg_total;
    let mut groups: BTreeMap<String, f64> = BTreeMap::new();
    for (pid, (label, cpu)) in &b.pg_by_pid {
        let before = a.pg_by_pid.get(pid).map_or(0.0, |(_, c)| *c);
        *groups.entry(label.clone()).or_default() += cpu - before;
    }
    let named: f64 = groups.values().sum();
    let mut groups: Vec<(String, f64)> = groups.into_iter().filter(|(_, c)| *c >= 0.01).collect();
    if pg - named >= 0.01 {
        groups.push((
            "exited processes (autovacuum workers, psql, …)".to_owned(),
            pg - named,
        ));
    }
    groups.sort_by(|x, y| y.1.total_cmp(&x.1));
    let (busy, total) = (
        b.machine.0.saturating_sub(a.machine.0),
        b.machine.1.saturating_sub(a.machine.1),
    );
    let sluice = b.sluice - a.sluice;
    let bench = b.bench - a.bench;
    let mut lines = vec![format!(
        "CPU over {wall:.1} s of wall time ({} cores; % of one core): sluice {sluice:.2} s ({:.0}%), \
         postgres {pg:.2} s ({:.0}%), this process (receiver + writers) {bench:.2} s ({:.0}%); \
         machine busy {:.0}% of all cores",
        cores(),
        100.0 * sluice / wall,
        100.0 * pg / wall,
        100.0 * bench / wall,
        if total > 0 {
            100.0 * busy as f64 / total as f64
        } else {
            f64::NAN
        }
    )];
    for (label, cpu) in groups {
        lines.push(format!("  postgres {label}: {cpu:.2} s"));
    }
    lines
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

// ----------------------------------------------------------- DB sampling

/// What Sluice's database sessions were doing, sampled from
/// pg_stat_activity.
#[derive(Default)]
struct Activity {
    samples: u64,
    /// (session, state, query start) → samples.
    busy: HashMap<(String, String, String), u64>,
    /// Wait events of those busy samples.
    waits: HashMap<String, u64>,
}

async fn sample_activity(url: String, stop: Arc<AtomicBool>) -> Activity {
    let mut out = Activity::default();
    let client = match connect(&url, "bench-monitor").await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("activity sampler: cannot connect: {e}");
            return out;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(25));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let Ok(rows) = client
            .query(
                "SELECT coalesce(nullif(application_name, ''), '(no application_name: sluice pools)'),
                        state,
                        coalesce(wait_event_type || ':' || wait_event, 'CPU'),
                        left(query, 120)
                 FROM pg_stat_activity
                 WHERE backend_type = 'client backend'
                   AND pid <> pg_backend_pid()
                   AND application_name NOT LIKE 'bench-%'
                   AND state IS NOT NULL AND state <> 'idle'",
                &[],
            )
            .await
        else {
            break;
        };
        out.samples += 1;
        for r in rows {
            let (who, state, wait, query): (String, String, String, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            *out.waits.entry(wait).or_default() += 1;
            let query: String = query
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .take(72)
                .collect();
            *out.busy.entry((who, state, query)).or_default() += 1;
        }
    }
    out
}

fn activity_report(a: &Activity) -> Vec<String> {
    if a.samples == 0 {
        return vec!["no pg_stat_activity samples".to_owned()];
    }
    let n = a.samples as f64;
    let mut busy: Vec<_> = a.busy.iter().collect();
    busy.sort_by(|x, y| y.1.cmp(x.1));
    let mut lines = vec![format!(
        "Sluice's database sessions, share of {} pg_stat_activity samples (25 ms apart) in each non-idle state:",
        a.samples
    )];
    for ((who, state, query), c) in busy.into_iter().take(12) {
        lines.push(format!(
            "  {:>5.1}%  {who} [{state}] {query}",
            100.0 * *c as f64 / n
        ));
    }
    let mut waits: Vec<_> = a.waits.iter().collect();
    waits.sort_by(|x, y| y.1.cmp(x.1));
    let waits: Vec<String> = waits
        .into_iter()
        .take(8)
        .map(|(w, c)| format!("{w} {:.1}%", 100.0 * *c as f64 / n))
        .collect();
    lines.push(format!(
        "  wait events of those (CPU = none): {}",
        waits.join(", ")
    ));
    lines
}

// ------------------------------------------------------------------ helpers

async fn connect(url: &str, application_name: &str) -> Result<tokio_postgres::Client, String> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
    config.application_name(application_name);
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("{e}"))?;
    tokio::spawn(conn);
    Ok(client)
}

/// The environment of `sluice setup` and `sluice serve`.
fn sluice_command(exe: &str, sub: &str, source: &str, state: &str, listen: &str) -> Command {
    let mut command = Command::new(exe);
    command
        .arg(sub)
        .env("SLUICE_WEBHOOKS_ALLOW_PRIVATE_ADDRESSES", "true");
    // (BENCH_SLUICE_<KEY> may override the line above.)
    common::sluice_env(&mut command, source, Some(state), listen);
    command.env(
        "SLUICE_SOURCE_POSTGRES_TABLES",
        r#"[{table="public.items", tenant_column="tenant"}]"#,
    );
    command
}

/// Waits until the receiver has `expected` first deliveries of events
/// committed in `[from, to)`; gives up after `stall` without progress or at
/// `cap`. Returns whether everything came.
fn wait_for(
    rec: &Shared,
    sluice: &mut Guard,
    (from, to): (i64, i64),
    expected: usize,
    stall: Duration,
    cap: Duration,
    mut each: impl FnMut(),
) -> bool {
    let start = Instant::now();
    let mut last = (0, Instant::now());
    let mut shown = Instant::now();
    loop {
        let got = unique_in(rec, from, to);
        if got >= expected {
            return true;
        }
        if let Some(status) = sluice.exited() {
            panic!("sluice exited: {status}");
        }
        if got != last.0 {
            last = (got, Instant::now());
        }
        if last.1.elapsed() > stall {
            eprintln!("no progress for {} s: {got} of {expected}", stall.as_secs());
            return false;
        }
        if start.elapsed() > cap {
            eprintln!("gave up after {} s: {got} of {expected}", cap.as_secs());
            return false;
        }
        if shown.elapsed() > Duration::from_secs(5) {
            eprintln!("  … {got} of {expected} deliveries");
            shown = Instant::now();
        }
        each();
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn show(label: &str, s: &Option<Stats>) {
    match s {
        Some(s) => println!(
            "  {label:<28} n={:<6} p50 {:>8.2} ms  p95 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms",
            s.n, s.p50, s.p95, s.p99, s.max
        ),
        None => println!("  {label:<28} no deliveries received"),
    }
}

// --------------------------------------------------------------------- main

fn main() {
    let events = num_arg("--events", 20_000).max(1);
    let endpoints = num_arg("--endpoints", 4).clamp(1, 1000) as usize;
    let rate = num_arg("--rate", 200).max(1);
    let seconds = num_arg("--seconds", 10).max(1);
    let batch = num_arg("--batch", 500).max(1);
    let max_wait = Duration::from_secs(num_arg("--max-wait", 600).max(10));
    let separate_state = flag("--separate-state");
    let sample = !flag("--no-sample");

    eprintln!("starting a throwaway cluster…");
    let pg = LocalPg::start().expect("start Postgres");
    let db = pg.create_database("bench").expect("db");
    psql(
        &pg,
        &db,
        "CREATE TABLE items (id bigint PRIMARY KEY, tenant text NOT NULL, payload text);
         ALTER TABLE items REPLICA IDENTITY FULL;",
    );
    let state_db = if separate_state {
        pg.create_database("state").expect("state db")
    } else {
        db.clone()
    };
    let (source_url, state_url) = (pg.url(&db), pg.url(&state_db));

    let exe = env!("CARGO_BIN_EXE_sluice");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let setup = sluice_command(exe, "setup", &source_url, &state_url, &listen)
        .stdin(Stdio::null())
        .output()
        .expect("run sluice setup");
    eprint!(
        "{}{}",
        String::from_utf8_lossy(&setup.stdout),
        String::from_utf8_lossy(&setup.stderr)
    );
    assert!(
        setup.status.success(),
        "sluice setup failed: {}",
        setup.status
    );

    let mut sluice = Guard {
        child: sluice_command(exe, "serve", &source_url, &state_url, &listen)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sluice"),
        name: "sluice",
        grace: Duration::from_secs(15),
    };
    let sluice_pid = sluice.pid();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let http = reqwest::Client::new();
    let base = format!("http://{listen}");

    eprintln!("waiting for sluice (pid {sluice_pid}) to be ready…");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = sluice.exited() {
            panic!("sluice exited early: {status}");
        }
        let ready = rt.block_on(async {
            matches!(
                http.get(format!("{base}/readyz")).send().await,
                Ok(r) if r.status().as_u16() == 200
            )
        });
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "sluice not ready within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The receiver.
    let recorder: Shared = Arc::default();
    let connections = Arc::new(AtomicU64::new(0));
    let receiver_port = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let port = listener.local_addr().expect("receiver address").port();
        tokio::spawn(receive(
            listener,
            recorder.clone(),
            endpoints,
            connections.clone(),
        ));
        port
    });

    // A service key of t1, and the endpoints.
    let (mon, postmaster) = rt.block_on(async {
        let state = connect(&state_url, "bench-setup")
            .await
            .expect("connect to the state database");
        let t1 = TenantId::new("t1").expect("tenant id");
        let (_, key) = create_key(
            &state,
            Some(&t1),
            Role::Service,
            Some("webhooks bench"),
            &serde_json::Map::new(),
            None,
        )
        .await
        .expect("create a service key");
        for i in 0..endpoints {
            let body = json!({
                "url": format!("http://127.0.0.1:{receiver_port}/hook/{i}"),
                "topics": ["tables/public.items/*"],
                "description": format!("bench endpoint {i}"),
            });
            let resp = http
                .post(format!("{base}/v1/webhooks"))
                .header("authorization", format!("Bearer {key}"))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .expect("POST /v1/webhooks");
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            assert_eq!(status, 201, "POST /v1/webhooks: {text}");
            let v: Value = serde_json::from_str(&text).expect("JSON answer");
            assert!(
                v["id"].is_string() && v["secret"].is_string(),
                "POST /v1/webhooks: {v}"
            );
        }
        let mon = connect(&state_url, "bench-monitor")
            .await
            .expect("connect the monitor");
        let backend: i32 = mon
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("backend pid")
            .get(0);
        let postmaster = proc_stat(backend as u32).map_or(0, |(ppid, _, _)| ppid);
        (mon, postmaster)
    });
    let writers: Vec<Arc<tokio_postgres::Client>> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..2 {
            v.push(Arc::new(
                connect(&source_url, "bench-writer")
                    .await
                    .expect("connect a writer"),
            ));
        }
        v
    });
    let max_seq = |mon: &tokio_postgres::Client| -> i64 {
        rt.block_on(mon.query_one("SELECT coalesce(max(seq), 0) FROM sluice.events", &[]))
            .map_or(-1, |r| r.get(0))
    };
    let seq_before = max_seq(&mon);

    // ------------------------------------------------------- throughput
    let expected = events as usize * endpoints;
    eprintln!(
        "throughput: {events} rows in transactions of {batch}, {endpoints} endpoints ({expected} deliveries)…"
    );
    let stop_sampler = Arc::new(AtomicBool::new(false));
    let sampler =
        sample.then(|| rt.spawn(sample_activity(state_url.clone(), stop_sampler.clone())));
    let cpu0 = rt.block_on(cpu_snap(&mon, sluice_pid, postmaster));
    let t_start = now_micros();
    let transactions = rt.block_on(async {
        let w = &writers[0];
        let stmt = w
            .prepare(
                "INSERT INTO items (id, tenant, payload)
                 SELECT g, 't1', md5(g::text) || md5((g + 1)::text)
                 FROM generate_series($1::bigint, $2::bigint) g",
            )
            .await
            .expect("prepare the insert");
        let mut n = 0u64;
        let mut id = 1i64;
        while id <= events as i64 {
            let last = (id + batch as i64 - 1).min(events as i64);
            w.execute(&stmt, &[&id, &last]).await.expect("insert rows");
            id = last + 1;
            n += 1;
        }
        n
    });
    let t_inserted = now_micros();
    let insert_secs = (t_inserted - t_start) as f64 / 1e6;
    eprintln!("inserted in {insert_secs:.2} s; waiting for {expected} deliveries…");
    let mut logged_at: Option<i64> = None;
    let complete = wait_for(
        &recorder,
        &mut sluice,
        (i64::MIN, i64::MAX),
        expected,
        Duration::from_secs(60),
        max_wait,
        || {
            if logged_at.is_none() && max_seq(&mon) >= seq_before + events as i64 {
                logged_at = Some(now_micros());
            }
        },
    );
    let cpu1 = rt.block_on(cpu_snap(&mon, sluice_pid, postmaster));
    stop_sampler.store(true, Ordering::Relaxed);
    let activity = sampler.map(|s| rt.block_on(s).expect("sampler task"));

    // Throughput figures.
    let (tp, by_insert_end) = {
        let r = recorder.lock().expect("recorder");
        (
            Throughput::of(&r, endpoints, t_start),
            Throughput::by(&r, t_inserted),
        )
    };
    let conns_after_throughput = connections.load(Ordering::Relaxed);

    // ---------------------------------------------------------- latency
    let total = (rate * seconds) as i64;
    eprintln!("latency: {rate} single-row transactions/s for {seconds} s…");
    let cpu2 = rt.block_on(cpu_snap(&mon, sluice_pid, postmaster));
    let stop_sampler = Arc::new(AtomicBool::new(false));
    let sampler =
        sample.then(|| rt.spawn(sample_activity(state_url.clone(), stop_sampler.clone())));
    let phase_start = now_micros();
    let started = Instant::now();
    let first_id = events as i64 + 1;
    rt.block_on(async {
        let mut tasks = Vec::new();
        let k = writers.len() as i64;
        for (w, client) in writers.iter().enumerate() {
            let client = client.clone();
            let w = w as i64;
            tasks.push(tokio::spawn(async move {
                let stmt = client
                    .prepare(
                        "INSERT INTO items (id, tenant, payload)
                         VALUES ($1::bigint, 't1', md5($1::bigint::text) || md5(($1::bigint + 1)::text))",
                    )
                    .await
                    .expect("prepare the insert");
                let t0 = tokio::time::Instant::now();
                let mut i = w;
                while i < total {
                    let due = t0 + Duration::from_secs_f64(i as f64 / rate as f64);
                    tokio::time::sleep_until(due).await;
                    client
                        .execute(&stmt, &[&(first_id + i)])
                        .await
                        .expect("insert a row");
                    i += k;
                }
            }));
        }
        for t in tasks {
            t.await.expect("writer task");
        }
    });
    let achieved = total as f64 / started.elapsed().as_secs_f64();
    let phase_end = now_micros();
    let latency_complete = wait_for(
        &recorder,
        &mut sluice,
        (phase_start, phase_end + 1),
        total as usize * endpoints,
        Duration::from_secs(30),
        Duration::from_secs(120),
        || {},
    );
    let cpu3 = rt.block_on(cpu_snap(&mon, sluice_pid, postmaster));
    stop_sampler.store(true, Ordering::Relaxed);
    let latency_activity = sampler.map(|s| rt.block_on(s).expect("sampler task"));
    let (latency_got, latency, over) = {
        let r = recorder.lock().expect("recorder");
        let ms: Vec<f64> = r
            .recs
            .iter()
            .filter(|x| x.first && x.commit >= phase_start && x.commit <= phase_end)
            .map(|x| (x.recv - x.commit) as f64 / 1000.0)
            .collect();
        let over = ms.iter().filter(|&&m| m > 250.0).count();
        (ms.len(), stats(ms), over)
    };
    let (dups, bad, requests) = {
        let r = recorder.lock().expect("recorder");
        (r.dups, r.bad, r.recs.len() as u64 + r.bad)
    };
    let sluice_cpu = cpu_secs(sluice_pid);
    let conns = connections.load(Ordering::Relaxed);

    drop(sluice);
    drop(writers);
    drop(mon);
    drop(rt);

    // ----------------------------------------------------------- report
    let secs = |us: i64| us as f64 / 1e6;
    println!(
        "Webhook delivery: {endpoints} endpoints of tenant t1 on one local receiver (hyper HTTP/1.1, answers 200 at once), \
         every endpoint matching every event; state database: {}; {} cores",
        if separate_state { "separate database, same cluster" } else { "the source database" },
        cores()
    );
    println!(
        "throughput: {events} rows in {transactions} transactions of up to {batch} rows, inserted in {insert_secs:.2} s ({:.0} rows/s)",
        events as f64 / insert_secs
    );
    println!(
        "  deliveries: {} of {expected}, of {} distinct events{}",
        tp.delivered,
        tp.events,
        if complete {
            ""
        } else {
            " (INCOMPLETE: gave up waiting)"
        }
    );
    let span = secs(tp.last_delivery - tp.first_commit);
    let rate_all = tp.delivered as f64 / span;
    println!(
        "  first commit -> last delivery: {span:.2} s => {rate_all:.0} deliveries/s   (target: >= 2000/s with 4 endpoints{})",
        if endpoints == 4 {
            if rate_all >= 2000.0 { ": met" } else { ": missed" }
        } else {
            ""
        }
    );
    let drained = tp.delivered.saturating_sub(by_insert_end);
    let drain_secs = secs(tp.last_delivery - t_inserted);
    println!(
        "  drain after the inserts finished: {drained} deliveries in {drain_secs:.2} s => {:.0} deliveries/s \
         ({by_insert_end} delivered while inserting, {:.0}/s)",
        drained as f64 / drain_secs,
        by_insert_end as f64 / secs(t_inserted - tp.first_commit)
    );
    println!(
        "  first commit -> first delivery {:.0} ms; last commit -> last delivery {:.2} s; \
         all events in the log {}",
        (tp.first_delivery - tp.first_commit) as f64 / 1000.0,
        secs(tp.last_delivery - tp.last_commit),
        match logged_at {
            Some(at) => format!("{:.2} s after the inserts finished", secs(at - t_inserted)),
            None => "n/a".to_owned(),
        }
    );
    show("commit -> delivery lag", &tp.lag);
    println!("  per endpoint: {:?}", tp.per_endpoint);
    println!(
        "  deliveries per second since the first commit: {:?}",
        tp.per_second
    );
    for line in cpu_report(&cpu0, &cpu1) {
        println!("  {line}");
    }
    if let Some(a) = &activity {
        for line in activity_report(a) {
            println!("  {line}");
        }
    }
    println!(
        "latency: {total} single-row transactions at {rate}/s (achieved {achieved:.0}/s) from 2 writer connections; \
         {latency_got} of {} first attempts received{}",
        total as usize * endpoints,
        if latency_complete { "" } else { " (INCOMPLETE)" }
    );
    show("commit -> first attempt", &latency);
    if let Some(s) = &latency {
        println!(
            "  target: p99 <= 250 ms: {} ({over} of {} over 250 ms)",
            if s.p99 <= 250.0 { "met" } else { "missed" },
            s.n
        );
    }
    for line in cpu_report(&cpu2, &cpu3) {
        println!("  {line}");
    }
    if let Some(a) = &latency_activity {
        for line in activity_report(a) {
            println!("  {line}");
        }
    }
    println!(
        "receiver: {requests} requests, {dups} duplicate deliveries (same webhook-id to the same endpoint again), \
         {bad} unreadable; {conns} TCP connections accepted ({conns_after_throughput} by the end of the throughput phase)"
    );
    match sluice_cpu {
        Some(cpu) => println!("sluice CPU over the whole run: {cpu:.2} s"),
        None => println!("sluice CPU over the whole run: n/a"),
    }
}
