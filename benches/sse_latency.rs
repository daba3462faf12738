//! SSE latency benchmark: the time from a row's commit in the source
//! database to the arrival of its event on an SSE stream, at a steady rate of
//! single-row transactions, next to the raw floor measured in the same run
//! (`pg_recvlogical` with the `test_decoding` plugin on a second slot,
//! reading the commit timestamp from its `COMMIT … (at …)` lines).
//!
//! `cargo bench --bench sse_latency -- [--rates 1000,5000] [--seconds 10]
//!  [--writers 4] [--separate-state]`
//! `cargo bench --bench sse_latency -- --sustained [--fraction 0.8]
//!  [--probe-seconds 5] [--tenants 10] [--seconds 10] [--writers 8] [--separate-state]`
//! (`BENCH_SLUICE_<KEY>=v` passes `SLUICE_<KEY>=v` to the measured sluice;
//! `SLUICE_BENCH_EXE=path` measures that binary instead of this tree's;
//! scripts/bench-sse-latency.sh installs Postgres if needed and runs this.)
//!
//! Latency = receipt time − the commit time (the event's `time` member, the
//! source commit timestamp, or the floor's `(at …)`): everything runs on this
//! machine, so both come from the same clock. Both include the commit's own
//! WAL flush, because Postgres takes the commit timestamp before it. The
//! first second of each rate is dropped as warm-up. Prints p50/p95/p99/max
//! for Sluice and the floor, Sluice's p50/p99 over the floor's, and the
//! subscriber's fall-backs to the log during each rate (the difference of
//! `sluice_subscriber_catchups_total` on `/metrics`). Targets (printed,
//! never asserted): p50 ≤ 5 ms and p99 ≤ 25 ms at 1000/s.
//!
//! `--sustained` first measures the highest single-row commit rate: every
//! writer commits INSERTs as fast as it can for `--probe-seconds`, with
//! Sluice and the floor streaming (the machine as the measurement loads
//! it); committed rows / elapsed is the rate. Once both have delivered the
//! probe's rows, it measures `--fraction` of that rate (rounded) exactly
//! as a `--rates` rate. Its rows go round robin over `--tenants` tenants
//! (t1…tN, as a SaaS source's would) and latency is measured on t1's rows,
//! the subscriber's, for Sluice and the floor alike; the `--rates` runs
//! keep every row t1's. Targets there: p50 ≤ 5 ms, p99 ≤ 25 ms, and no
//! catch-up fall-back.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use localpg::LocalPg;
use sluice::auth::{create_key, Role};
use sluice::event::TenantId;

mod common;
#[path = "common/lean_floor.rs"]
mod lean_floor;
use common::{
    arg, count_in, envelope_time, flag, free_port, now_micros, num_arg, parse_timestamp, psql,
    show, stats, Dechunker, Guard, Sample, SseParser, Stats,
};

/// In test_decoding's line for a change: the row is tenant t1's.
const T1_ROW: &[u8] = b"tenant[text]:'t1'";

// ------------------------------------------------- HTTP/1.1 + SSE decoding

/// An open SSE response: the socket, and the decoders for what follows the
/// headers.
struct SseStream {
    sock: TcpStream,
    chunked: Option<Dechunker>,
    sse: SseParser,
    pending: Vec<u8>,
}

/// Sends `GET path` and reads the response head; Err unless it is 200.
fn open_sse(port: u16, path: &str) -> std::io::Result<SseStream> {
    let mut sock = TcpStream::connect(("127.0.0.1", port))?;
    sock.set_nodelay(true)?;
    write!(
        sock,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n"
    )?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        let n = sock.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other(
                "connection closed before the headers",
            ));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
    let status = text.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        let body = String::from_utf8_lossy(&head[end..]).into_owned();
        return Err(std::io::Error::other(format!(
            "GET {path}: status {status}: {body}"
        )));
    }
    let chunked = text.contains("transfer-encoding: chunked");
    Ok(SseStream {
        sock,
        chunked: chunked.then(Dechunker::default),
        sse: SseParser::new(true),
        pending: head[end..].to_vec(),
    })
}

impl SseStream {
    /// Reads once (or takes what came with the headers) and hands every
    /// complete event to `on_event`; false at the end of the stream.
    fn read_events(&mut self, on_event: &mut impl FnMut(&[u8], &[u8])) -> bool {
        let mut buf = [0u8; 64 * 1024];
        let input: Vec<u8> = if self.pending.is_empty() {
            match self.sock.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf[..n].to_vec(),
            }
        } else {
            std::mem::take(&mut self.pending)
        };
        let sse = &mut self.sse;
        match &mut self.chunked {
            Some(d) => d.feed(&input, &mut |b| sse.feed(b, on_event)),
            None => sse.feed(&input, on_event),
        }
        true
    }
}

/// `GET path` with `Connection: close`: (status, body).
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut sock = TcpStream::connect(("127.0.0.1", port))?;
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

/// `sluice_subscriber_catchups_total`: the hub letting a subscriber go to
/// the log (its queue overflowed, `hub.stats.lagged`), counted at once,
/// plus each stream's own fall-backs, added when the stream ends. The
/// subscriber stays open throughout, so over a phase the difference is its
/// fall-backs to the log in that phase. `/metrics` needs no key.
fn catchups(port: u16) -> Option<f64> {
    metric(port, "sluice_subscriber_catchups_total")
}

/// The tenant of row `id` when rows go round robin over `tenants` tenants,
/// `t1` … `tN` (one tenant: every row is t1's).
fn tenant_of(id: i64, tenants: i64) -> String {
    format!("t{}", (id - 1).rem_euclid(tenants) + 1)
}

/// How many of the rows `first_id .. first_id + total` are t1's: the
/// multiples of `tenants` in `[first_id - 1, first_id - 1 + total)`.
fn t1_rows(first_id: i64, total: i64, tenants: i64) -> i64 {
    let multiples_below = |n: i64| (n + tenants - 1).div_euclid(tenants);
    multiples_below(first_id - 1 + total) - multiples_below(first_id - 1)
}

const INSERT: &str = "INSERT INTO bench (id, tenant, v) VALUES ($1, $2, 'x')";

/// What a phase's latencies and counts came to.
struct RateResult {
    rate: u64,
    achieved: f64,
    total: i64,
    /// Of `total`, tenant t1's rows: what the subscriber and the floor count.
    t1_total: i64,
    got_sse: usize,
    got_floor: usize,
    got_lean: usize,
    sse: Option<Stats>,
    floor: Option<Stats>,
    lean: Option<Stats>,
    /// Fall-backs to the log during the phase (None: /metrics unreadable).
    catchups: Option<(f64, f64)>,
}

/// What every phase uses: the writers' runtime and connections, Sluice's
/// port, the tenant mix, the receipts so far, and the next row id.
struct Bench<'a> {
    rt: &'a tokio::runtime::Runtime,
    clients: &'a [Arc<tokio_postgres::Client>],
    port: u16,
    tenants: i64,
    sse: Arc<Mutex<Vec<Sample>>>,
    floor: Arc<Mutex<Vec<Sample>>>,
    lean: Arc<Mutex<Vec<Sample>>>,
    next_id: i64,
}

impl Bench<'_> {
    /// `rate` single-row transactions a second for `seconds`, then the
    /// latencies of t1's rows committed after the first second.
    fn measure_rate(&mut self, rate: u64, seconds: u64) -> RateResult {
        eprintln!("writing {rate} single-row transactions/s for {seconds} s…");
        let total = (rate * seconds) as i64;
        let first_id = self.next_id;
        self.next_id += total;
        let t1_total = t1_rows(first_id, total, self.tenants);
        let before = catchups(self.port);
        let phase_start = now_micros();
        let achieved = self.write_at_rate(rate, total, first_id);
        let phase_end = now_micros();
        let to = phase_end + 1;
        self.wait_for_receipts(phase_start, to, t1_total, Duration::from_secs(30));
        let after = catchups(self.port);
        let from = phase_start + 1_000_000;
        let (sse, floor, lean) = (
            self.sse.lock().expect("samples"),
            self.floor.lock().expect("samples"),
            self.lean.lock().expect("samples"),
        );
        RateResult {
            rate,
            achieved,
            total,
            t1_total,
            got_sse: count_in(&sse, phase_start, to),
            got_floor: count_in(&floor, phase_start, to),
            got_lean: count_in(&lean, phase_start, to),
            sse: stats(&sse, from, to),
            floor: stats(&floor, from, to),
            lean: stats(&lean, from, to),
            catchups: before.zip(after),
        }
    }

    /// Commits rows `first_id ..` at `rate` a second, spread over the
    /// writers in turn; the rate achieved.
    fn write_at_rate(&self, rate: u64, total: i64, first_id: i64) -> f64 {
        let tenants = self.tenants;
        common::write_at_rate(
            self.rt,
            self.clients,
            INSERT,
            rate,
            total,
            first_id,
            Arc::new(move |id| tenant_of(id, tenants)),
        )
    }

    /// Every writer commits single-row INSERTs as fast as it can for
    /// `seconds`: (rows committed, seconds until the last one finished).
    fn write_flat_out(&mut self, seconds: u64) -> (i64, f64) {
        let tenants = self.tenants;
        let next = Arc::new(AtomicI64::new(self.next_id));
        let (rows, secs) = self.rt.block_on(async {
            let mut prepared = Vec::new();
            for client in self.clients {
                let stmt = client.prepare(INSERT).await.expect("prepare the insert");
                prepared.push((client.clone(), stmt));
            }
            let started = Instant::now();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
            let mut tasks = Vec::new();
            for (client, stmt) in prepared {
                let next = next.clone();
                tasks.push(tokio::spawn(async move {
                    let mut rows = 0i64;
                    while tokio::time::Instant::now() < deadline {
                        let id = next.fetch_add(1, Ordering::Relaxed);
                        client
                            .execute(&stmt, &[&id, &tenant_of(id, tenants)])
                            .await
                            .expect("insert a row");
                        rows += 1;
                    }
                    rows
                }));
            }
            let mut rows = 0;
            for t in tasks {
                rows += t.await.expect("writer task");
            }
            (rows, started.elapsed().as_secs_f64())
        });
        // Every id taken was inserted (a failed insert panics).
        self.next_id = next.load(Ordering::Relaxed);
        (rows, secs)
    }

    /// Waits (at most `within`) until the subscriber and both floors each
    /// hold `want` rows committed in `[from, to)`; what Sluice and the
    /// slower of the floors hold then.
    fn wait_for_receipts(&self, from: i64, to: i64, want: i64, within: Duration) -> (usize, usize) {
        let deadline = Instant::now() + within;
        loop {
            let s = count_in(&self.sse.lock().expect("samples"), from, to);
            let f = count_in(&self.floor.lock().expect("samples"), from, to).min(count_in(
                &self.lean.lock().expect("samples"),
                from,
                to,
            ));
            if (s as i64 >= want && f as i64 >= want) || Instant::now() > deadline {
                return (s, f);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The sustained-load probe's outcome: the highest single-row commit rate
/// with Sluice and the floor streaming, and the rate measured from it.
struct Probe {
    rows: i64,
    secs: f64,
    max_rate: f64,
    fraction: f64,
    rate: u64,
    catchups: Option<(f64, f64)>,
}

/// Measures the highest single-row commit rate (every writer flat out for
/// `seconds`), then waits until Sluice and the floor have delivered the
/// probe's rows, so the measured rate starts without a backlog.
fn probe_max_rate(bench: &mut Bench, seconds: u64, fraction: f64) -> Probe {
    eprintln!(
        "probing the highest single-row commit rate: {} writers flat out for {seconds} s…",
        bench.clients.len()
    );
    let first_id = bench.next_id;
    let before = catchups(bench.port);
    let start = now_micros();
    let (rows, secs) = bench.write_flat_out(seconds);
    let end = now_micros() + 1;
    let want = t1_rows(first_id, rows, bench.tenants);
    let (s, f) = bench.wait_for_receipts(start, end, want, Duration::from_secs(60));
    if (s as i64) < want || (f as i64) < want {
        eprintln!(
            "the probe's t1 rows were not all delivered within 60 s (sluice {s}, floor {f} of {want}); measuring anyway"
        );
    }
    let after = catchups(bench.port);
    let max_rate = rows as f64 / secs;
    Probe {
        rows,
        secs,
        max_rate,
        fraction,
        rate: ((fraction * max_rate).round() as u64).max(1),
        catchups: before.zip(after),
    }
}

/// `+d (before -> after)` of a catch-up counter over a phase.
fn show_catchups(c: Option<(f64, f64)>) -> String {
    match c {
        Some((before, after)) => format!("+{} ({before} -> {after})", after - before),
        None => "unknown (/metrics unreadable)".to_owned(),
    }
}

// ------------------------------------------------------------------- main

fn main() {
    let sustained = flag("--sustained");
    for only_sustained in ["--fraction", "--probe-seconds", "--tenants"] {
        assert!(
            sustained || arg(only_sustained).is_none(),
            "{only_sustained} applies to --sustained only"
        );
    }
    assert!(
        !(sustained && arg("--rates").is_some()),
        "--sustained measures one rate of its own: leave out --rates"
    );
    let rates: Vec<u64> = arg("--rates")
        .unwrap_or_else(|| "1000,5000".to_owned())
        .split(',')
        .map(|r| {
            r.trim()
                .parse()
                .expect("--rates: comma-separated rows per second")
        })
        .collect();
    let fraction: f64 = arg("--fraction")
        .map(|s| s.parse().expect("--fraction: a number, e.g. 0.8"))
        .unwrap_or(0.8);
    assert!(fraction > 0.0, "--fraction must be above 0");
    let probe_seconds = num_arg("--probe-seconds", 5).max(1);
    // Rows go round robin over the tenants in the sustained mode only: the
    // --rates runs stay all t1's, as their earlier figures were.
    let tenants = if sustained {
        num_arg("--tenants", 10).max(1) as i64
    } else {
        1
    };
    let seconds: u64 = arg("--seconds")
        .map(|s| s.parse().expect("--seconds: a whole number"))
        .unwrap_or(10)
        .max(2);
    let writers: usize = arg("--writers")
        .map(|s| s.parse().expect("--writers: a whole number"))
        .unwrap_or(if sustained { 8 } else { 4 })
        .max(1);
    let separate_state = flag("--separate-state");

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
         SELECT pg_create_logical_replication_slot('floor_slot', 'test_decoding');
         SELECT pg_create_logical_replication_slot('lean_slot', 'pgoutput');",
    );
    let state_db = if separate_state {
        pg.create_database("state").expect("state db")
    } else {
        db.clone()
    };

    // Sluice.
    let port = free_port();
    // SLUICE_BENCH_EXE measures another build (an earlier commit's, say).
    let exe =
        std::env::var("SLUICE_BENCH_EXE").unwrap_or_else(|_| env!("CARGO_BIN_EXE_sluice").into());
    let mut command = Command::new(&exe);
    command.arg("serve");
    common::sluice_env(
        &mut command,
        &pg.url(&db),
        Some(&pg.url(&state_db)),
        &format!("127.0.0.1:{port}"),
    );
    // Sluice refuses SLUICE_* variables it does not know.
    command.env_remove("SLUICE_BENCH_EXE");
    let mut sluice = Guard {
        child: command.stdin(Stdio::null()).spawn().expect("spawn sluice"),
        name: "sluice",
        grace: Duration::from_secs(15),
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

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    // An anon key of tenant t1, created in the (migrated) state database.
    let key = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&pg.url(&state_db), tokio_postgres::NoTls)
            .await
            .expect("connect to the state database");
        tokio::spawn(conn);
        let t1 = TenantId::new("t1").expect("tenant id");
        let (_, key) = create_key(
            &client,
            Some(&t1),
            Role::Anon,
            Some("sse-latency bench"),
            &serde_json::Map::new(),
            None,
        )
        .await
        .expect("create an anon key");
        key
    });

    // The SSE subscriber, on its own thread with blocking reads, so the
    // receipt time is taken the moment the bytes arrive.
    let stop = Arc::new(AtomicBool::new(false));
    let sse_samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let mut stream = open_sse(port, &format!("/v1/events/subscribe?apikey={key}"))
        .expect("open the SSE subscription");
    let sse_sock = stream.sock.try_clone().expect("clone the SSE socket");
    let sse_thread = {
        let (samples, stop) = (sse_samples.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut bad = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut got: Vec<Sample> = Vec::new();
                let mut recv = 0;
                let alive = stream.read_events(&mut |event, data| {
                    if recv == 0 {
                        recv = now_micros();
                    }
                    if event.starts_with(b"row.") {
                        match envelope_time(data) {
                            Some(c) => got.push((c, recv)),
                            None => bad += 1,
                        }
                    } else if !event.is_empty() {
                        eprintln!(
                            "sse: {} {}",
                            String::from_utf8_lossy(event),
                            String::from_utf8_lossy(data)
                        );
                    }
                });
                if !got.is_empty() {
                    samples.lock().expect("samples").extend(got);
                }
                if !alive {
                    if !stop.load(Ordering::Relaxed) {
                        eprintln!("the SSE stream ended early");
                    }
                    break;
                }
            }
            if bad > 0 {
                eprintln!("sse: {bad} events without a readable `time`");
            }
        })
    };
    // `read_events` takes the receipt time before parsing the first event of
    // each read; one read carries every event that arrived together.

    // The floor: pg_recvlogical with test_decoding on its own slot.
    let mut recv = Guard {
        child: Command::new(pg.client_bin_dir().join("pg_recvlogical"))
            .args([
                "-d",
                &pg.url(&db),
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
            // Whether the open transaction wrote a t1 row of the benchmark
            // table (the log's own appends are in the same database by
            // default; other tenants' rows are not the subscriber's).
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
                    } else if line.starts_with(b"table public.bench:")
                        && line.windows(T1_ROW.len()).any(|w| w == T1_ROW)
                    {
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
        &pg,
        &db,
        "SELECT active FROM pg_replication_slots WHERE slot_name = 'floor_slot'",
    ) != "t"
    {
        if let Some(status) = recv.exited() {
            panic!("pg_recvlogical exited early: {status}");
        }
        assert!(Instant::now() < deadline, "pg_recvlogical did not start");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The lean floor: the null reader's session on its own pgoutput slot.
    let lean_samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let lean_thread = {
        let (url, samples, stop) = (pg.url(&db), lean_samples.clone(), stop.clone());
        std::thread::spawn(move || {
            lean_floor::run(
                &url,
                "lean_slot",
                "bench_pub",
                ("bench", 1, b"t1"),
                stop,
                samples,
            )
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while psql(
        &pg,
        &db,
        "SELECT active FROM pg_replication_slots WHERE slot_name = 'lean_slot'",
    ) != "t"
    {
        assert!(!lean_thread.is_finished(), "the lean floor exited early");
        assert!(Instant::now() < deadline, "the lean floor did not start");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The writers.
    let clients: Vec<Arc<tokio_postgres::Client>> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..writers {
            let (client, conn) = tokio_postgres::connect(&pg.url(&db), tokio_postgres::NoTls)
                .await
                .expect("connect a writer");
            tokio::spawn(conn);
            v.push(Arc::new(client));
        }
        v
    });

    let mut bench = Bench {
        rt: &rt,
        clients: &clients,
        port,
        tenants,
        sse: sse_samples.clone(),
        floor: floor_samples.clone(),
        lean: lean_samples.clone(),
        next_id: 1,
    };
    let probe = sustained.then(|| probe_max_rate(&mut bench, probe_seconds, fraction));
    let rates = match &probe {
        Some(p) => vec![p.rate],
        None => rates,
    };
    let results: Vec<RateResult> = rates
        .iter()
        .map(|&rate| bench.measure_rate(rate, seconds))
        .collect();
    let cpu = std::fs::read_to_string(format!("/proc/{}/stat", sluice.pid()))
        .ok()
        .and_then(|stat| {
            let f: Vec<String> = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        });

    stop.store(true, Ordering::Relaxed);
    let _ = sse_sock.shutdown(Shutdown::Both);
    drop(recv);
    drop(sluice);
    let _ = sse_thread.join();
    let _ = floor_thread.join();
    let _ = lean_thread.join();
    drop(clients);
    drop(rt);

    println!(
        "SSE commit-to-receipt latency: one SSE subscriber (tenant t1), single-row transactions from {writers} writer connections, \
         {seconds} s per rate, first second dropped; state database: {}",
        if separate_state { "separate database, same cluster" } else { "the source database" }
    );
    if let Some(p) = &probe {
        println!(
            "sustained load: highest single-row commit rate {:.0}/s ({} rows in {:.2} s, {writers} writers flat out, sluice and the floor streaming; \
             catch-up fall-backs meanwhile {}); measured at {} x that = {}/s",
            p.max_rate,
            p.rows,
            p.secs,
            show_catchups(p.catchups),
            p.fraction,
            p.rate
        );
        println!(
            "tenant mix: rows round robin over {tenants} tenants (t1..t{tenants}); latency is measured on t1's rows, the subscriber's ({:.1} % of all rows)",
            100.0 / tenants as f64
        );
    }
    for r in &results {
        let (rate, achieved, total) = (r.rate, r.achieved, r.total);
        let (got_sse, got_floor, got_lean) = (r.got_sse, r.got_floor, r.got_lean);
        if tenants > 1 {
            println!(
                "rate {rate}/s (achieved {achieved:.0}/s): {total} rows committed, {} of them t1's; sluice received {got_sse}, floor received {got_floor}, lean floor {got_lean} (t1's)",
                r.t1_total
            );
        } else {
            println!(
                "rate {rate}/s (achieved {achieved:.0}/s): {total} rows committed, sluice received {got_sse}, floor received {got_floor}, lean floor {got_lean}"
            );
        }
        show("sluice SSE", &r.sse);
        show("floor (pg_recvlogical, test_decoding)", &r.floor);
        show("lean floor (null reader session, pgoutput)", &r.lean);
        for (name, floor) in [("floor", &r.floor), ("lean floor", &r.lean)] {
            match (&r.sse, floor) {
                (Some(s), Some(f)) => println!(
                    "  ratio sluice/{name}: p50 {:.1}x ({:+.2} ms), p99 {:.1}x ({:+.2} ms)",
                    s.p50 / f.p50,
                    s.p50 - f.p50,
                    s.p99 / f.p99,
                    s.p99 - f.p99
                ),
                _ => println!("  ratio sluice/{name}: n/a"),
            }
        }
        println!(
            "  catch-up fall-backs during the rate (sluice_subscriber_catchups_total): {}",
            show_catchups(r.catchups)
        );
        let met = |ok: bool| if ok { "met" } else { "missed" };
        if let (Some(p), Some(s)) = (&probe, &r.sse) {
            let no_fallback = match r.catchups {
                Some((before, after)) => met(after == before),
                None => "unknown",
            };
            println!(
                "  targets at {:.0} % of the highest rate ({rate}/s): p50 <= 5 ms ({}), p99 <= 25 ms ({}), no catch-up fall-back: {no_fallback}",
                p.fraction * 100.0,
                met(s.p50 <= 5.0),
                met(s.p99 <= 25.0)
            );
        } else if rate == 1000 {
            if let Some(s) = &r.sse {
                println!(
                    "  targets at 1000/s: p50 <= 5 ms ({}), p99 <= 25 ms ({})",
                    met(s.p50 <= 5.0),
                    met(s.p99 <= 25.0)
                );
            }
        }
    }
    if let Some(p) = &probe {
        if results.iter().all(|r| r.sse.is_none()) {
            println!(
                "targets (at {:.0} % of the highest rate): p50 <= 5 ms, p99 <= 25 ms, no catch-up fall-back",
                p.fraction * 100.0
            );
        }
    } else if !rates.contains(&1000) {
        println!("targets (at 1000/s): p50 <= 5 ms, p99 <= 25 ms");
    }
    if let Some(cpu) = cpu {
        println!("sluice CPU over the whole run: {cpu:.2} s");
    }
}
