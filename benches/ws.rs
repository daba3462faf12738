//! WebSocket benchmark (`GET /v1/ws`), in two parts, each against its own
//! freshly started release `sluice serve` on one throwaway cluster:
//!
//! 1. Latency: one WebSocket subscriber of tenant t1 (`?apikey=` anon key,
//!    one subscription to `tables/public.bench/*`); single-row transactions
//!    at steady rates (1000/s and 5000/s); the time from each row's commit to
//!    the arrival of its `event` frame, next to the raw floor measured in
//!    the same run (`pg_recvlogical` with `test_decoding` on a second slot,
//!    reading the commit timestamp from its `COMMIT … (at …)` lines), as in
//!    the `sse_latency` bench. Targets (printed, never asserted): p50 ≤ 5 ms
//!    and p99 ≤ 25 ms at 1000/s.
//! 2. Memory: `--connections` idle WebSocket connections over 100 tenants,
//!    each authenticated (`?apikey=`, `auth_ok` received) and subscribed
//!    (one subscription, `subscribed` received, live in the hub). Prints the
//!    server's RSS before and after (and after each of the two stages), RSS
//!    per connection (target ≤ 16 KiB), and checks that the connections are
//!    live: one event for each of `--reach-tenants` tenants must reach every
//!    connection of those tenants and no other.
//!
//! With `--breakdown`, a third part (again on a fresh server) opens the same
//! number of connections one stage at a time — TCP connected with nothing
//! sent; WebSocket upgraded without a credential; authenticated by an `auth`
//! message; subscribed — and prints the server's RSS after each stage, to
//! show where the memory of a connection goes. That server runs with
//! `ws.auth_timeout_secs` = 3600, so unauthenticated connections stay open.
//!
//! `cargo bench --bench ws -- [--rate 1000 | --rates 1000,5000]
//!  [--seconds 10] [--writers 4] [--separate-state] [--connections 10000]
//!  [--open-batch 500] [--reach-tenants 5] [--breakdown] [--skip-latency]
//!  [--skip-memory]`
//! (`BENCH_SLUICE_<KEY>=v` passes `SLUICE_<KEY>=v` to the measured sluice;
//! scripts/bench-ws.sh installs Postgres if needed and runs this.)
//!
//! Latency = receipt time − the commit time (the envelope's `time` member,
//! the source commit timestamp, or the floor's `(at …)`): everything runs on
//! this machine, so both come from the same clock. Both include the
//! commit's own WAL flush, because Postgres takes the commit timestamp
//! before it. The first second of each rate is dropped as warm-up.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use localpg::LocalPg;
use sluice::auth::{create_key, Role};
use sluice::event::TenantId;

mod common;
use common::{
    arg, count_in, cpu_secs, envelope_time, flag, free_port, machine_cpu, nofile, now_micros,
    num_arg, open_fds, parse_timestamp, psql, show, show_limit, stats, status_kib, Dechunker,
    Guard, Sample,
};

const TENANTS: usize = 100;
/// File descriptors kept beyond one per connection, in each process.
const FD_SLACK: u64 = 200;
/// Connections opened (and sent events) before the "before" figure.
const WARM: usize = 10;
/// Bare TCP connects (`--breakdown`) admitted at once: well below any listen
/// backlog (Sluice's is 4096; it was tokio's default 128 until this bench
/// overflowed it: the server then drops the handshake's last ACK and the
/// client's socket is established on its side only).
const BARE_BATCH: usize = 64;
const TOPIC: &str = "tables/public.bench/*";
const SUBSCRIBE: &str = r#"{"type":"subscribe","id":"s1","topic":"tables/public.bench/*"}"#;

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ------------------------------------------------------------------ HTTP

/// `GET path` with `Connection: close`: (status, body).
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port))?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        sock,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut all = Vec::new();
    sock.read_to_end(&mut all)?;
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(all.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&all[..end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut body = Vec::new();
    if head.contains("transfer-encoding: chunked") {
        Dechunker::default().feed(&all[end..], &mut |b| body.extend_from_slice(b));
    } else {
        body.extend_from_slice(&all[end..]);
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A sample of the server's metrics (the line `name value`, no labels).
fn metric(port: u16, name: &str) -> Option<f64> {
    let (status, body) = http_get(port, "/metrics").ok()?;
    if status != 200 {
        return None;
    }
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn hub_live(port: u16) -> f64 {
    metric(port, "sluice_hub_live_subscribers").unwrap_or(0.0)
}

/// Waits until the hub holds at least `n` live subscribers (each
/// subscription registers from its own task after `subscribed` is sent);
/// returns what it reached.
fn wait_hub_live(port: u16, n: usize, within: Duration) -> f64 {
    let deadline = Instant::now() + within;
    let mut last = 0.0;
    while Instant::now() < deadline {
        last = hub_live(port);
        if last >= n as f64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    last
}

// ----------------------------------------------------------------- sluice

/// Starts `sluice serve` (the bench table of `db`, the log in `state_db`)
/// and waits for /readyz. With `raise_nofile`, its open-files soft limit is
/// raised to the hard limit through the shell. `env` is set before the
/// `BENCH_SLUICE_*` pass-through, which can override it.
fn start_sluice(
    pg: &LocalPg,
    db: &str,
    state_db: &str,
    raise_nofile: bool,
    env: &[(&str, &str)],
) -> (Guard, u16) {
    let port = free_port();
    let exe = env!("CARGO_BIN_EXE_sluice");
    let mut command = if raise_nofile {
        let mut c = Command::new("sh");
        c.args([
            "-c",
            r#"ulimit -n "$(ulimit -H -n)" 2>/dev/null; exec "$0" serve"#,
            exe,
        ]);
        c
    } else {
        let mut c = Command::new(exe);
        c.arg("serve");
        c
    };
    command.envs(env.iter().copied());
    common::sluice_env(
        &mut command,
        &pg.url(db),
        Some(&pg.url(state_db)),
        &format!("127.0.0.1:{port}"),
    );
    let mut sluice = Guard {
        child: command.stdin(Stdio::null()).spawn().expect("spawn sluice"),
        name: "sluice",
        grace: Duration::from_secs(20),
    };
    eprintln!("waiting for sluice (pid {}) to be ready…", sluice.pid());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = sluice.exited() {
            panic!("sluice exited early: {status}");
        }
        if matches!(http_get(port, "/readyz"), Ok((200, _))) {
            break;
        }
        assert!(Instant::now() < deadline, "sluice not ready within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    (sluice, port)
}

/// One anon key per tenant, created in the (migrated) state database.
async fn anon_keys(url: &str, tenants: &[String], label: &str) -> Vec<Arc<str>> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the state database");
    tokio::spawn(conn);
    let mut keys = Vec::new();
    for t in tenants {
        let tenant = TenantId::new(t).expect("tenant id");
        let (_, key) = create_key(
            &client,
            Some(&tenant),
            Role::Anon,
            Some(label),
            &serde_json::Map::new(),
            None,
        )
        .await
        .expect("create an anon key");
        keys.push(key.into());
    }
    keys
}

/// The `type` member of a server message (they all start with it).
fn frame_type(text: &str) -> &str {
    text.strip_prefix(r#"{"type":""#)
        .and_then(|r| r.split('"').next())
        .unwrap_or("?")
}

// ---------------------------------------------------------- part 1: latency

struct LatencyArgs {
    rates: Vec<u64>,
    seconds: u64,
    writers: usize,
    separate_state: bool,
}

/// Opens the subscriber: `?apikey=` (answered `auth_ok`), then one
/// subscription (answered `subscribed`). Blocking, on a std socket.
fn open_ws_blocking(
    port: u16,
    key: &str,
) -> Result<
    (
        tungstenite::WebSocket<std::net::TcpStream>,
        std::net::TcpStream,
    ),
    String,
> {
    let sock = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    sock.set_nodelay(true).map_err(|e| e.to_string())?;
    let clone = sock.try_clone().map_err(|e| e.to_string())?;
    let url = format!("ws://127.0.0.1:{port}/v1/ws?apikey={key}");
    let (mut ws, _) = tungstenite::client(url.as_str(), sock).map_err(|e| e.to_string())?;
    expect_blocking(&mut ws, "auth_ok")?;
    ws.send(Message::text(SUBSCRIBE))
        .map_err(|e| e.to_string())?;
    expect_blocking(&mut ws, "subscribed")?;
    Ok((ws, clone))
}

/// Reads until a frame arrives; Ok if it is a `want`.
fn expect_blocking(
    ws: &mut tungstenite::WebSocket<std::net::TcpStream>,
    want: &str,
) -> Result<(), String> {
    loop {
        match ws.read().map_err(|e| e.to_string())? {
            Message::Text(t) if frame_type(&t) == want => return Ok(()),
            Message::Text(t) => return Err(format!("expected {want}, got {t}")),
            Message::Close(c) => return Err(format!("closed: {c:?}")),
            _ => {}
        }
    }
}

fn latency(pg: &LocalPg, db: &str, a: &LatencyArgs) {
    let state_db = if a.separate_state {
        pg.create_database("state").expect("state db")
    } else {
        db.to_owned()
    };
    let (sluice, port) = start_sluice(pg, db, &state_db, false, &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let key = rt.block_on(anon_keys(
        &pg.url(&state_db),
        &["t1".to_owned()],
        "ws-latency bench",
    ))[0]
        .clone();

    // The subscriber, on its own thread with blocking reads, so the receipt
    // time is taken the moment a frame is read.
    let (mut ws, ws_sock) = open_ws_blocking(port, &key).expect("open the WebSocket subscriber");
    let live = wait_hub_live(port, 1, Duration::from_secs(30));
    assert!(live >= 1.0, "the subscription did not go live in the hub");
    let stop = Arc::new(AtomicBool::new(false));
    let ws_samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let ws_thread = {
        let (samples, stop) = (ws_samples.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut bad = 0u64;
            let mut others: BTreeMap<String, usize> = BTreeMap::new();
            while !stop.load(Ordering::Relaxed) {
                let msg = match ws.read() {
                    Ok(m) => m,
                    Err(e) => {
                        if !stop.load(Ordering::Relaxed) {
                            eprintln!("the WebSocket ended early: {e}");
                        }
                        break;
                    }
                };
                let recv = now_micros();
                match msg {
                    Message::Text(t) if frame_type(&t) == "event" => {
                        match envelope_time(t.as_bytes()) {
                            Some(c) => samples.lock().expect("samples").push((c, recv)),
                            None => bad += 1,
                        }
                    }
                    Message::Text(t) => {
                        eprintln!("ws: {t}");
                        *others.entry(frame_type(&t).to_owned()).or_default() += 1;
                    }
                    Message::Close(c) => {
                        if !stop.load(Ordering::Relaxed) {
                            eprintln!("the server closed the WebSocket: {c:?}");
                        }
                        break;
                    }
                    _ => {}
                }
            }
            if bad > 0 {
                eprintln!("ws: {bad} events without a readable `time`");
            }
            if !others.is_empty() {
                eprintln!("ws: other frames: {others:?}");
            }
        })
    };

    // The floor: pg_recvlogical with test_decoding on its own slot.
    let mut recv = Guard {
        child: Command::new(pg.client_bin_dir().join("pg_recvlogical"))
            .args([
                "-d",
                &pg.url(db),
                "--slot",
                "floor_slot",
                "--start",
                "-f",
                "-",
                "-o",
                "include-timestamp=1",
                "-o",
                "skip-empty-xacts=1",
            ])
            .env("PGOPTIONS", "-c TimeZone=UTC")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run pg_recvlogical"),
        name: "pg_recvlogical",
        grace: Duration::from_secs(15),
    };
    let floor_samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let floor_thread = {
        let mut out = recv.child.stdout.take().expect("pg_recvlogical stdout");
        let samples = floor_samples.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut line: Vec<u8> = Vec::new();
            // Whether the open transaction changed the benchmark table (the
            // log's own appends are in the same database by default).
            let mut ours = false;
            loop {
                let n = match out.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let at = now_micros();
                let mut got = Vec::new();
                for &c in &buf[..n] {
                    if c != b'\n' {
                        line.push(c);
                        continue;
                    }
                    if line.starts_with(b"BEGIN") {
                        ours = false;
                    } else if line.starts_with(b"table public.bench:") {
                        ours = true;
                    } else if line.starts_with(b"COMMIT") && ours {
                        let ts = line
                            .windows(4)
                            .position(|w| w == b"(at ")
                            .and_then(|p| parse_timestamp(&line[p + 4..]));
                        match ts {
                            Some(c) => got.push((c, at)),
                            None => eprintln!(
                                "floor: cannot read the commit time of {:?}",
                                String::from_utf8_lossy(&line)
                            ),
                        }
                    }
                    line.clear();
                }
                if !got.is_empty() {
                    samples.lock().expect("samples").extend(got);
                }
            }
        })
    };
    // Wait for pg_recvlogical to hold its slot.
    let deadline = Instant::now() + Duration::from_secs(30);
    while psql(
        pg,
        db,
        "SELECT active FROM pg_replication_slots WHERE slot_name = 'floor_slot'",
    ) != "t"
    {
        if let Some(status) = recv.exited() {
            panic!("pg_recvlogical exited early: {status}");
        }
        assert!(Instant::now() < deadline, "pg_recvlogical did not start");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The writers.
    let clients: Vec<Arc<tokio_postgres::Client>> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..a.writers {
            let (client, conn) = tokio_postgres::connect(&pg.url(db), tokio_postgres::NoTls)
                .await
                .expect("connect a writer");
            tokio::spawn(conn);
            v.push(Arc::new(client));
        }
        v
    });

    let mut next_id: i64 = 1;
    let mut results = Vec::new();
    for &rate in &a.rates {
        eprintln!(
            "writing {rate} single-row transactions/s for {} s…",
            a.seconds
        );
        let total = (rate * a.seconds) as i64;
        let first_id = next_id;
        next_id += total;
        let phase_start = now_micros();
        let started = Instant::now();
        let writers = a.writers;
        let achieved = rt.block_on(async {
            let mut tasks = Vec::new();
            for (w, client) in clients.iter().enumerate() {
                let client = client.clone();
                let (w, k) = (w as i64, writers as i64);
                tasks.push(tokio::spawn(async move {
                    let stmt = client
                        .prepare("INSERT INTO bench (id, tenant, v) VALUES ($1, 't1', 'x')")
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
            total as f64 / started.elapsed().as_secs_f64()
        });
        let phase_end = now_micros();
        // Wait until both receivers have everything committed in this phase.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = count_in(
                &ws_samples.lock().expect("samples"),
                phase_start,
                phase_end + 1,
            );
            let f = count_in(
                &floor_samples.lock().expect("samples"),
                phase_start,
                phase_end + 1,
            );
            if (s as i64 >= total && f as i64 >= total) || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let from = phase_start + 1_000_000;
        let to = phase_end + 1;
        let ws_stats = stats(&ws_samples.lock().expect("samples"), from, to);
        let floor = stats(&floor_samples.lock().expect("samples"), from, to);
        let got_ws = count_in(&ws_samples.lock().expect("samples"), phase_start, to);
        let got_floor = count_in(&floor_samples.lock().expect("samples"), phase_start, to);
        // Times a live subscriber overflowed its hub queue and read from the
        // log instead (cumulative; the subscriber here is the only one).
        let catchups = metric(port, "sluice_subscriber_catchups_total");
        results.push((
            rate, achieved, total, got_ws, got_floor, ws_stats, floor, catchups,
        ));
    }
    let cpu = cpu_secs(sluice.pid());

    stop.store(true, Ordering::Relaxed);
    let _ = ws_sock.shutdown(Shutdown::Both);
    drop(recv);
    drop(sluice);
    let _ = ws_thread.join();
    let _ = floor_thread.join();
    drop(clients);
    drop(rt);
    psql(pg, db, "SELECT pg_drop_replication_slot('floor_slot')");

    println!(
        "WebSocket commit-to-receipt latency: one WebSocket subscriber (tenant t1, ?apikey=, one subscription to {TOPIC}), \
         single-row transactions from {} writer connections, {} s per rate, first second dropped; state database: {}",
        a.writers,
        a.seconds,
        if a.separate_state { "separate database, same cluster" } else { "the source database" }
    );
    let mut catchups_before = 0.0;
    for (rate, achieved, total, got_ws, got_floor, ws_stats, floor, catchups) in &results {
        println!(
            "rate {rate}/s (achieved {achieved:.0}/s): {total} rows committed, sluice received {got_ws}, floor received {got_floor}; \
             subscriber catch-ups from the log: {}",
            catchups.map_or("?".to_owned(), |c| format!("{}", c - catchups_before))
        );
        catchups_before = catchups.unwrap_or(catchups_before);
        show("sluice WebSocket", ws_stats);
        show("floor (pg_recvlogical, test_decoding)", floor);
        match (ws_stats, floor) {
            (Some(s), Some(f)) => println!(
                "  ratio sluice/floor: p50 {:.1}x ({:+.2} ms), p99 {:.1}x ({:+.2} ms)",
                s.p50 / f.p50,
                s.p50 - f.p50,
                s.p99 / f.p99,
                s.p99 - f.p99
            ),
            _ => println!("  ratio sluice/floor: n/a"),
        }
        if *rate == 1000 {
            if let Some(s) = ws_stats {
                println!(
                    "  targets at 1000/s: p50 <= 5 ms ({}), p99 <= 25 ms ({})",
                    if s.p50 <= 5.0 { "met" } else { "missed" },
                    if s.p99 <= 25.0 { "met" } else { "missed" }
                );
            }
        }
    }
    if !a.rates.contains(&1000) {
        println!("targets (at 1000/s): p50 <= 5 ms, p99 <= 25 ms");
    }
    if let Some(cpu) = cpu {
        println!("sluice CPU over the latency part: {cpu:.2} s");
    }
}

// ----------------------------------------------------------- part 2: memory

/// How a set of connections is opened, stage by stage.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// 1: connect, upgrade with `?apikey=` and read `auth_ok`;
    /// 2: subscribe and read `subscribed`.
    Query,
    /// 1: TCP connect, nothing sent; 2: upgrade without a credential;
    /// 3: send `auth` and read `auth_ok`; 4: subscribe, read `subscribed`.
    Staged,
}

impl Plan {
    fn stages(self) -> &'static [&'static str] {
        match self {
            Plan::Query => &[
                "upgraded + authenticated (?apikey=, auth_ok)",
                "+ subscribed (1 subscription, live in hub)",
            ],
            Plan::Staged => &[
                "TCP connected, no request sent",
                "+ WebSocket upgraded, no credential",
                "+ authenticated by an auth message",
                "+ subscribed (1 subscription, live in hub)",
            ],
        }
    }
}

/// What all connection tasks share.
struct Shared {
    port: u16,
    /// Event frames received, per connection.
    counts: Vec<AtomicU64>,
    /// Connections that ended after their last stage, by reason.
    ended: Mutex<BTreeMap<String, usize>>,
    /// Frames other than events and the expected answers, by type.
    unexpected: Mutex<BTreeMap<String, usize>>,
    /// (stage, outcome) of each connection's stages.
    reports: mpsc::UnboundedSender<(usize, Result<(), String>)>,
    /// Bounds the stages in progress at once (connects, handshakes).
    gate: Semaphore,
}

type Ws = WebSocketStream<TcpStream>;

fn client_config() -> WebSocketConfig {
    // Small buffers: thousands of idle connections in this process.
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Resolves once the driver allows stage `n`.
async fn allowed(go: &mut watch::Receiver<usize>, n: usize) {
    loop {
        if *go.borrow_and_update() >= n {
            return;
        }
        if go.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Shared {
    /// Handles a frame that is not the answer awaited; Err when the
    /// connection is over.
    fn other(&self, index: usize, msg: Result<Message, tungstenite::Error>) -> Result<(), String> {
        match msg {
            Ok(Message::Text(t)) => {
                let ty = frame_type(&t);
                if ty == "event" {
                    self.counts[index].fetch_add(1, Ordering::Relaxed);
                } else {
                    let what = if ty == "error" {
                        format!("error {t}")
                    } else {
                        ty.to_owned()
                    };
                    *self
                        .unexpected
                        .lock()
                        .expect("unexpected")
                        .entry(what)
                        .or_default() += 1;
                }
                Ok(())
            }
            Ok(Message::Close(c)) => Err(match c {
                Some(c) => format!("closed by the server: {} {}", c.code, c.reason),
                None => "closed by the server".to_owned(),
            }),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("read error: {e}")),
        }
    }

    /// Reads until a `want` frame arrives (events are counted on the way).
    async fn expect(&self, index: usize, ws: &mut Ws, want: &str) -> Result<(), String> {
        let wait = async {
            loop {
                match ws.next().await {
                    None => return Err("the server closed the connection".to_owned()),
                    Some(Ok(Message::Text(t))) if frame_type(&t) == want => return Ok(()),
                    Some(Ok(Message::Text(t))) if frame_type(&t) == "error" => {
                        return Err(format!("expected {want}, got {t}"))
                    }
                    Some(m) => self.other(index, m)?,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| Err(format!("no {want} within 60 s")))
    }

    /// Reads (answering pings, counting events) until stage `n` is allowed.
    async fn idle_until(
        &self,
        index: usize,
        ws: &mut Ws,
        go: &mut watch::Receiver<usize>,
        n: usize,
    ) -> Result<(), String> {
        loop {
            tokio::select! {
                _ = allowed(go, n) => return Ok(()),
                m = ws.next() => match m {
                    None => return Err("the server closed the connection".to_owned()),
                    Some(m) => self.other(index, m)?,
                },
            }
        }
    }

    async fn handshake(&self, tcp: TcpStream, key: Option<&str>) -> Result<Ws, String> {
        let url = match key {
            Some(k) => format!("ws://127.0.0.1:{}/v1/ws?apikey={k}", self.port),
            None => format!("ws://127.0.0.1:{}/v1/ws", self.port),
        };
        let hs = tokio_tungstenite::client_async_with_config(url, tcp, Some(client_config()));
        match tokio::time::timeout(Duration::from_secs(60), hs).await {
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(e)) => Err(format!("handshake: {e}")),
            Err(_) => Err("no handshake within 60 s".to_owned()),
        }
    }

    async fn connect(&self) -> Result<TcpStream, String> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }
}

/// One connection through the stages of `plan`, each started when `go`
/// allows it and reported on `shared.reports`; then reads and counts events
/// until the connection ends or the task is aborted. A failure is reported
/// as the outcome of the stage it happened in (or the next one, when it
/// happened while idle between stages). The bare TCP connect of
/// `Plan::Staged` waits until `admit` exceeds `local` (the connection's
/// place in its set): the driver admits `BARE_BATCH` at a time, each once
/// the server has accepted the previous ones (nothing else paces connects
/// that send nothing).
async fn connection(
    shared: Arc<Shared>,
    index: usize,
    key: Arc<str>,
    plan: Plan,
    mut go: watch::Receiver<usize>,
    (mut admit, local): (watch::Receiver<usize>, usize),
) {
    let sh = &*shared;
    let last = plan.stages().len();
    let mut stage = 1;
    let run = async {
        allowed(&mut go, 1).await;
        if plan == Plan::Staged {
            allowed(&mut admit, local + 1).await;
        }
        let permit = sh.gate.acquire().await.map_err(|e| e.to_string())?;
        let mut ws = match plan {
            Plan::Query => {
                let tcp = sh.connect().await?;
                let mut ws = sh.handshake(tcp, Some(&key)).await?;
                sh.expect(index, &mut ws, "auth_ok").await?;
                drop(permit);
                ws
            }
            Plan::Staged => {
                let tcp = sh.connect().await?;
                drop(permit);
                let _ = sh.reports.send((stage, Ok(())));
                stage = 2;
                allowed(&mut go, 2).await;
                let permit = sh.gate.acquire().await.map_err(|e| e.to_string())?;
                let mut ws = sh.handshake(tcp, None).await?;
                drop(permit);
                let _ = sh.reports.send((stage, Ok(())));
                stage = 3;
                sh.idle_until(index, &mut ws, &mut go, 3).await?;
                let permit = sh.gate.acquire().await.map_err(|e| e.to_string())?;
                let auth = serde_json::json!({"type": "auth", "token": &*key}).to_string();
                ws.send(Message::text(auth))
                    .await
                    .map_err(|e| format!("send auth: {e}"))?;
                sh.expect(index, &mut ws, "auth_ok").await?;
                drop(permit);
                ws
            }
        };
        let _ = sh.reports.send((stage, Ok(())));
        stage = last;
        sh.idle_until(index, &mut ws, &mut go, last).await?;
        let permit = sh.gate.acquire().await.map_err(|e| e.to_string())?;
        ws.send(Message::text(SUBSCRIBE))
            .await
            .map_err(|e| format!("send subscribe: {e}"))?;
        sh.expect(index, &mut ws, "subscribed").await?;
        drop(permit);
        let _ = sh.reports.send((stage, Ok(())));
        stage = last + 1;
        loop {
            match ws.next().await {
                None => return Err("the server closed the connection".to_owned()),
                Some(m) => sh.other(index, m)?,
            }
        }
    };
    let result: Result<(), String> = run.await;
    if let Err(e) = result {
        if stage > last {
            *sh.ended.lock().expect("ended").entry(e).or_default() += 1;
        } else {
            let _ = sh.reports.send((stage, Err(e)));
        }
    }
}

/// A set of connections driven stage by stage.
struct ConnSet {
    plan: Plan,
    go: watch::Sender<usize>,
    /// Connections of the set allowed to make their bare TCP connect
    /// (`Plan::Staged`).
    admit: watch::Sender<usize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Connections still going after the last stage run.
    alive: usize,
}

/// Collects stage reports; reports can arrive ahead of their stage (a
/// connection that died while idle reports its next stage).
struct Reports {
    rx: mpsc::UnboundedReceiver<(usize, Result<(), String>)>,
    /// (ok, failures by reason) per stage, of reports not yet consumed.
    got: BTreeMap<usize, (usize, BTreeMap<String, usize>)>,
}

impl Reports {
    /// Waits for `expected` reports of `stage`; returns (ok, failures).
    fn collect(
        &mut self,
        rt: &tokio::runtime::Runtime,
        stage: usize,
        expected: usize,
    ) -> (usize, BTreeMap<String, usize>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            let (ok, failed) = self.got.entry(stage).or_default();
            let done = *ok + failed.values().sum::<usize>();
            if done >= expected {
                break;
            }
            let next =
                rt.block_on(async { tokio::time::timeout_at(deadline, self.rx.recv()).await });
            match next {
                Ok(Some((s, r))) => {
                    let (ok, failed) = self.got.entry(s).or_default();
                    match r {
                        Ok(()) => *ok += 1,
                        Err(e) => *failed.entry(e).or_default() += 1,
                    }
                }
                _ => {
                    let (ok, failed) = self.got.entry(stage).or_default();
                    let missing = expected - *ok - failed.values().sum::<usize>();
                    *failed
                        .entry("no report within 300 s".to_owned())
                        .or_default() += missing;
                }
            }
        }
        self.got.remove(&stage).unwrap_or_default()
    }
}

struct StageFigures {
    name: &'static str,
    ok: usize,
    failed: BTreeMap<String, usize>,
    secs: f64,
    rss: u64,
    anon: u64,
    fds: Option<usize>,
    hub: f64,
}

struct MemArgs {
    connections: usize,
    open_batch: usize,
    reach_tenants: usize,
}

/// Measures the server's RSS after a pause for things to settle.
fn settle_rss(pid: u32) -> (u64, u64) {
    std::thread::sleep(Duration::from_secs(2));
    (
        status_kib(pid, "VmRSS").unwrap_or(0),
        status_kib(pid, "RssAnon").unwrap_or(0),
    )
}

struct MemRun {
    rss_idle: u64,
    rss_before: (u64, u64),
    stages: Vec<StageFigures>,
    opened: usize,
    /// (tenants, reached, connections of those tenants, strays, seconds).
    reach: Option<(usize, usize, usize, usize, f64)>,
    idle_cpu: f64,
    machine_busy: f64,
    rss_closed: u64,
    /// (connections reopened, RSS with them open, RSS after closing them).
    again: Option<(usize, u64, u64)>,
    bench_rss: u64,
    ended: BTreeMap<String, usize>,
    unexpected: BTreeMap<String, usize>,
}

/// Starts a fresh sluice, warms it with `WARM` subscribed connections that
/// each receive an event, then opens `connections - WARM` more with `plan`,
/// one stage at a time, measuring the server's RSS after each.
fn memory(pg: &LocalPg, db: &str, a: &MemArgs, plan: Plan, env: &[(&str, &str)]) -> MemRun {
    let (sluice, port) = start_sluice(pg, db, db, true, env);
    let pid = sluice.pid();
    let (server_soft, server_hard) = nofile(&pid.to_string()).expect("read the server's limits");
    println!(
        "sluice (pid {pid}): open files limit soft {} hard {}",
        show_limit(server_soft),
        show_limit(server_hard)
    );
    let mut connections = a.connections;
    if (server_soft as usize) < connections + FD_SLACK as usize {
        connections = (server_soft as usize).saturating_sub(FD_SLACK as usize);
        println!(
            "NOTE: sluice may open only {} files, so {connections} connections are opened",
            show_limit(server_soft)
        );
    }
    let connections = connections.max(WARM + 1);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let tenants: Vec<String> = (0..TENANTS).map(|t| format!("t{t}")).collect();
    let keys = rt.block_on(anon_keys(&pg.url(db), &tenants, "ws bench"));
    let client = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&pg.url(db), tokio_postgres::NoTls)
            .await
            .expect("connect a writer");
        tokio::spawn(conn);
        client
    });
    let mut next_id: i64 = rt.block_on(async {
        let row = client
            .query_one("SELECT coalesce(max(id), 0) + 1 FROM bench", &[])
            .await
            .expect("read the next id");
        row.get::<_, i64>(0)
    });
    // One row for each of tenants t0..t<n-1>, in one transaction.
    let mut commit_rows = |n: usize| {
        rt.block_on(client.execute(
            "INSERT INTO bench (id, tenant, v) SELECT $1::bigint + g, 't' || g, 'x' FROM generate_series(0, $2::int - 1) g",
            &[&next_id, &(n as i32)],
        ))
        .expect("commit one row per tenant");
        next_id += n as i64;
    };

    let (reports_tx, reports_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        port,
        counts: (0..connections).map(|_| AtomicU64::new(0)).collect(),
        ended: Mutex::default(),
        unexpected: Mutex::default(),
        reports: reports_tx,
        gate: Semaphore::new(a.open_batch),
    });
    let mut reports = Reports {
        rx: reports_rx,
        got: BTreeMap::new(),
    };
    let tenant_of = |i: usize| i % TENANTS;
    let spawn_set = |from: usize, to: usize, plan: Plan| -> ConnSet {
        let (go, go_rx) = watch::channel(0usize);
        let (admit, admit_rx) = watch::channel(0usize);
        let tasks = (from..to)
            .map(|i| {
                rt.spawn(connection(
                    shared.clone(),
                    i,
                    keys[tenant_of(i)].clone(),
                    plan,
                    go_rx.clone(),
                    (admit_rx.clone(), i - from),
                ))
            })
            .collect();
        ConnSet {
            plan,
            go,
            admit,
            tasks,
            alive: to - from,
        }
    };
    let (rss_idle, _) = settle_rss(pid);
    let fds_idle = open_fds(pid).unwrap_or(0);
    // Runs stage `stage` of a set (`earlier` connections are open besides
    // it): waits for its reports, for the server to hold a socket for each
    // connection (a client's connect completes before the server accepts),
    // and after the subscribe stage for the hub to hold every subscriber.
    let fds_now = || open_fds(pid).unwrap_or(0);
    let mut run_stage = |set: &mut ConnSet, stage: usize, earlier: usize| {
        let t = Instant::now();
        set.go.send_replace(stage);
        if stage == 1 && set.plan == Plan::Staged {
            // Admit the bare connects a batch at a time, each once the
            // server holds the previous ones (or after 10 s).
            let n = set.tasks.len();
            let mut admitted = 0;
            while admitted < n {
                let base = fds_now();
                let batch = BARE_BATCH.min(a.open_batch).min(n - admitted);
                admitted += batch;
                set.admit.send_replace(admitted);
                let deadline = Instant::now() + Duration::from_secs(10);
                while fds_now() < base + batch && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        let (ok, failed) = reports.collect(&rt, stage, set.alive);
        set.alive = ok;
        let deadline = Instant::now() + Duration::from_secs(60);
        while open_fds(pid).is_some_and(|n| n < fds_idle + earlier + ok)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let last = stage == set.plan.stages().len();
        let hub = if last {
            wait_hub_live(port, earlier + ok, Duration::from_secs(120))
        } else {
            hub_live(port)
        };
        (ok, failed, t.elapsed().as_secs_f64(), hub)
    };

    // Warm-up: WARM connections of tenants t0..t9, each sent one event.
    let mut warm = spawn_set(0, WARM, Plan::Query);
    for stage in 1..=Plan::Query.stages().len() {
        let (ok, failed, _, _) = run_stage(&mut warm, stage, 0);
        assert!(
            ok == WARM,
            "warm-up connections failed at stage {stage}: {failed:?}"
        );
    }
    commit_rows(WARM);
    let deadline = Instant::now() + Duration::from_secs(30);
    while shared.counts[..WARM]
        .iter()
        .any(|c| c.load(Ordering::Relaxed) == 0)
    {
        assert!(
            Instant::now() < deadline,
            "the warm-up connections did not receive their events"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let rss_before = settle_rss(pid);
    let fds_before = open_fds(pid).unwrap_or(0);

    // The measured connections, stage by stage.
    let n = connections - WARM;
    eprintln!(
        "opening {n} connections ({} stages) in batches of {}…",
        plan.stages().len(),
        a.open_batch
    );
    let mut set = spawn_set(WARM, connections, plan);
    let mut stages = Vec::new();
    for (i, name) in plan.stages().iter().enumerate() {
        let (ok, failed, secs, hub) = run_stage(&mut set, i + 1, WARM);
        let (rss, anon) = settle_rss(pid);
        eprintln!(
            "  stage {}: {name}: {ok} ok in {secs:.1} s; sluice RSS {:.1} MiB",
            i + 1,
            mib(rss)
        );
        if !failed.is_empty() {
            eprintln!("    failed: {failed:?}");
        }
        stages.push(StageFigures {
            name,
            ok,
            failed,
            secs,
            rss,
            anon,
            fds: open_fds(pid),
            hub,
        });
    }
    let opened = WARM + set.alive;
    let bench_rss = status_kib(std::process::id(), "VmRSS").unwrap_or(0);

    // Idle cost of the open connections (pings, credential re-checks).
    let cpu0 = cpu_secs(pid).unwrap_or(0.0);
    let machine0 = machine_cpu();
    let idle = Duration::from_secs(6);
    std::thread::sleep(idle);
    let idle_cpu = (cpu_secs(pid).unwrap_or(0.0) - cpu0) / idle.as_secs_f64();
    let machine_busy = match (machine0, machine_cpu()) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0) as f64 / (t1 - t0) as f64,
        _ => f64::NAN,
    };

    // Reach: one event for each of tenants t0..t<r-1>; every connection of
    // those tenants must receive it, and no other connection anything.
    let r = a.reach_tenants.clamp(1, TENANTS);
    let before: Vec<u64> = shared
        .counts
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let targets: Vec<usize> = (0..connections).filter(|&i| tenant_of(i) < r).collect();
    eprintln!(
        "one event for each of tenants t0..t{}; counting the connections that receive it…",
        r - 1
    );
    let t = Instant::now();
    commit_rows(r);
    let mut reached = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        reached = targets
            .iter()
            .filter(|&&i| shared.counts[i].load(Ordering::Relaxed) > before[i])
            .count();
        if reached >= targets.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let reach_secs = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let strays = (0..connections)
        .filter(|&i| tenant_of(i) >= r && shared.counts[i].load(Ordering::Relaxed) > before[i])
        .count();
    let reach = Some((r, reached, targets.len(), strays, reach_secs));

    // Close everything and see what the server gives back; then (main
    // pass) open as many again and close them again: flat RSS means the
    // memory is kept for reuse, not leaked.
    let close_all = |tasks: Vec<tokio::task::JoinHandle<()>>| {
        for t in tasks {
            t.abort();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            // (The database pool may have grown meanwhile: up to 16 more.)
            if open_fds(pid).is_some_and(|n| n + WARM <= fds_before + 16) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        settle_rss(pid).0
    };
    let tasks: Vec<_> = set.tasks.drain(..).chain(warm.tasks.drain(..)).collect();
    let rss_closed = close_all(tasks);
    let mut again = None;
    if plan == Plan::Query {
        eprintln!("closed them all; opening {connections} again…");
        let mut set = spawn_set(0, connections, Plan::Query);
        for stage in 1..=Plan::Query.stages().len() {
            run_stage(&mut set, stage, 0);
        }
        let reopened = set.alive;
        let rss_reopened = settle_rss(pid).0;
        let rss_closed_again = close_all(std::mem::take(&mut set.tasks));
        again = Some((reopened, rss_reopened, rss_closed_again));
    }
    let ended = shared.ended.lock().expect("ended").clone();
    let unexpected = shared.unexpected.lock().expect("unexpected").clone();

    drop(client);
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(sluice);
    MemRun {
        rss_idle,
        rss_before,
        stages,
        opened,
        reach,
        idle_cpu,
        machine_busy,
        rss_closed,
        again,
        bench_rss,
        ended,
        unexpected,
    }
}

fn report_memory(title: &str, plan: Plan, m: &MemRun) {
    println!("{title}");
    let measured = m.stages.last().map_or(0, |s| s.ok);
    println!(
        "  connections: {} open at the end ({WARM} warm-up + {measured} measured), {} tenants, one subscription each",
        m.opened, TENANTS
    );
    for (i, s) in m.stages.iter().enumerate() {
        if !s.failed.is_empty() {
            println!("  stage {} failures: {:?}", i + 1, s.failed);
        }
    }
    if !m.ended.is_empty() {
        println!("  connections the server ended while open: {:?}", m.ended);
    }
    if !m.unexpected.is_empty() {
        println!("  unexpected frames: {:?}", m.unexpected);
    }
    println!("  sluice RSS:");
    println!(
        "    {:<52} {:>7.1} MiB",
        "idle, no connection:",
        mib(m.rss_idle)
    );
    println!(
        "    {:<52} {:>7.1} MiB (anon {:.1} MiB)",
        format!("before ({WARM} open, pipeline warmed):"),
        mib(m.rss_before.0),
        mib(m.rss_before.1)
    );
    let mut prev = m.rss_before.0;
    for (i, s) in m.stages.iter().enumerate() {
        // Signed: memory a stage frees (and the allocator gives back during
        // it) can outweigh what it adds.
        let per = |from: u64| (s.rss as f64 - from as f64) / s.ok.max(1) as f64;
        println!(
            "    {:<52} {:>7.1} MiB (anon {:.1} MiB), {} ok in {:.1} s, {} fds, hub {}: {:+.1} KiB/conn over the previous stage, {:.1} KiB/conn over before",
            format!("stage {}: {}:", i + 1, s.name),
            mib(s.rss),
            mib(s.anon),
            s.ok,
            s.secs,
            s.fds.map_or("?".to_owned(), |n| n.to_string()),
            s.hub,
            per(prev),
            per(m.rss_before.0)
        );
        prev = s.rss;
    }
    println!(
        "    {:<52} {:>7.1} MiB",
        "after closing them all:",
        mib(m.rss_closed)
    );
    if let Some((n, open, closed)) = m.again {
        println!(
            "    {:<52} {:>7.1} MiB",
            format!("after opening {n} again:"),
            mib(open)
        );
        println!(
            "    {:<52} {:>7.1} MiB",
            "after closing them again:",
            mib(closed)
        );
    }
    if let Some(last) = m.stages.last() {
        let per = last.rss.saturating_sub(m.rss_before.0) as f64 / last.ok.max(1) as f64;
        let per_idle = last.rss.saturating_sub(m.rss_idle) as f64 / m.opened.max(1) as f64;
        if plan == Plan::Query {
            println!(
                "  RSS per connection: (after - before) / {} = {per:.1} KiB (target <= 16 KiB: {}); (after - idle) / {} = {per_idle:.1} KiB",
                last.ok,
                if per <= 16.0 { "met" } else { "missed" },
                m.opened
            );
        } else {
            println!(
                "  RSS per connection at the end: (after - before) / {} = {per:.1} KiB; (after - idle) / {} = {per_idle:.1} KiB",
                last.ok, m.opened
            );
        }
    }
    if let Some((tenants, reached, of, strays, secs)) = m.reach {
        println!(
            "  live check: one event for each of {tenants} tenants reached {reached} of their {of} connections in {secs:.2} s; connections of other tenants that received anything: {strays} (must be 0)"
        );
    }
    println!(
        "  idle with {} connections open (6 s): sluice CPU {:.1}% of one core; whole machine {:.1}% busy ({} cores)",
        m.opened,
        m.idle_cpu * 100.0,
        m.machine_busy * 100.0,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  bench client RSS with all open: {:.1} MiB",
        mib(m.bench_rss)
    );
}

// ------------------------------------------------------------------- main

fn main() {
    let rates: Vec<u64> = arg("--rate")
        .or_else(|| arg("--rates"))
        .unwrap_or_else(|| "1000,5000".to_owned())
        .split(',')
        .map(|r| {
            r.trim()
                .parse()
                .expect("--rate/--rates: comma-separated rows per second")
        })
        .collect();
    let latency_args = LatencyArgs {
        rates,
        seconds: num_arg("--seconds", 10).max(2),
        writers: num_arg("--writers", 4).max(1) as usize,
        separate_state: flag("--separate-state"),
    };
    let requested = num_arg("--connections", 10_000).max((WARM + 1) as u64);
    let open_batch = num_arg("--open-batch", 500).max(1) as usize;
    let reach_tenants = num_arg("--reach-tenants", 5).max(1) as usize;
    let breakdown = flag("--breakdown");
    let skip_latency = flag("--skip-latency");
    let skip_memory = flag("--skip-memory");

    // File descriptors: one per connection in this process and in the server.
    let mut connections = requested;
    if !skip_memory || breakdown {
        let need = requested + FD_SLACK;
        let (mut soft, hard) = nofile("self").expect("read /proc/self/limits");
        println!(
            "bench process: open files limit soft {} hard {} (need about {need})",
            show_limit(soft),
            show_limit(hard)
        );
        if soft < need && hard > soft {
            // No libc here: let util-linux's prlimit raise ours to the hard limit.
            let pid = std::process::id().to_string();
            let h = show_limit(hard);
            let ok = Command::new("prlimit")
                .args(["--pid", &pid, &format!("--nofile={h}:{h}")])
                .status()
                .is_ok_and(|s| s.success());
            soft = nofile("self").map_or(soft, |l| l.0);
            println!(
                "bench process: raised the soft limit to the hard limit with prlimit: {} (now {})",
                if ok { "done" } else { "failed" },
                show_limit(soft)
            );
        }
        if soft < need {
            connections = soft.saturating_sub(FD_SLACK).max((WARM + 1) as u64);
            println!(
                "NOTE: this process may open only {} files (hard limit {}), so {connections} connections are opened instead of {requested}",
                show_limit(soft),
                show_limit(hard)
            );
        }
    }
    let mem_args = MemArgs {
        connections: connections as usize,
        open_batch,
        reach_tenants,
    };

    eprintln!("starting a throwaway cluster…");
    let pg = LocalPg::start().expect("start Postgres");
    let db = pg.create_database("bench").expect("db");
    psql(
        &pg,
        &db,
        "CREATE TABLE bench (id bigint PRIMARY KEY, tenant text NOT NULL, v text);
         ALTER TABLE bench REPLICA IDENTITY FULL;
         CREATE PUBLICATION bench_pub FOR TABLE bench;
         SELECT pg_create_logical_replication_slot('sluice_slot', 'pgoutput');
         SELECT pg_create_logical_replication_slot('floor_slot', 'test_decoding');",
    );

    if !skip_latency {
        latency(&pg, &db, &latency_args);
    } else {
        psql(&pg, &db, "SELECT pg_drop_replication_slot('floor_slot')");
    }
    if !skip_memory {
        let m = memory(&pg, &db, &mem_args, Plan::Query, &[]);
        report_memory(
            &format!(
                "WebSocket memory: {} requested connections over {TENANTS} tenants, each ?apikey= authenticated and subscribed to {TOPIC}",
                mem_args.connections
            ),
            Plan::Query,
            &m,
        );
    }
    if breakdown {
        let m = memory(
            &pg,
            &db,
            &mem_args,
            Plan::Staged,
            &[("SLUICE_WS_AUTH_TIMEOUT_SECS", "3600")],
        );
        report_memory(
            &format!(
                "WebSocket memory breakdown (fresh sluice, ws.auth_timeout_secs=3600): {} connections opened one stage at a time",
                mem_args.connections
            ),
            Plan::Staged,
            &m,
        );
    }
    drop(pg);
}
