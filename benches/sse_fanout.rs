//! SSE fan-out benchmark: many open SSE connections spread over 100
//! tenants. Prints the server's RSS before and after opening them (and RSS
//! per connection, target ≤ 16 KiB), and the cost of routing one tenant's
//! changes with 10 versus N subscribers open (target: flat, ratio ≈ 1).
//!
//! `cargo bench --bench sse_fanout -- [--connections 10000] [--batch 1000]
//!  [--rounds 10] [--open-batch 500]`
//! (`BENCH_SLUICE_<KEY>=v` passes `SLUICE_<KEY>=v` to the measured sluice;
//! scripts/bench-sse-fanout.sh installs Postgres if needed and runs this.)
//!
//! Routing cost, measured from outside the server: exactly one subscriber of
//! tenant t0 is open in both cases (the probe); the others subscribe to
//! t1…t99. A round commits `--batch` rows for t0 in one transaction; the
//! figure is (receipt of the probe's last event − the commit time) / batch,
//! the median over `--rounds` rounds after two warm-up rounds. Everything runs
//! on this machine, so the commit time (the events' `time` member) and the
//! receipt time come from the same clock.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use localpg::LocalPg;
use sluice::auth::{create_key, Role};
use sluice::event::TenantId;

mod common;
use common::{
    connection_budget, cpu_secs, envelope_time, free_port, http_get_async, machine_cpu,
    metric_async, nofile, now_micros, num_arg, open_fds, psql, read_head, serve_command,
    show_limit, status_kib, ConnectionBudget, Dechunker, Guard, SseParser,
};

const TENANTS: usize = 100;
/// File descriptors kept beyond one per connection, in each process.
const FD_SLACK: u64 = 200;
/// Routing rounds run before the measured ones.
const WARMUP_ROUNDS: usize = 2;

// ------------------------------------------------------------ connections

/// What all connection tasks share.
struct Shared {
    port: u16,
    /// Events received, per connection.
    counts: Vec<AtomicU64>,
    /// Connections whose stream ended, by reason.
    ended: Mutex<BTreeMap<String, usize>>,
    /// Control events (`event: error|gap|shutdown`) received, by type.
    controls: Mutex<BTreeMap<String, usize>>,
}

/// One SSE connection: opens it, reports the response on `ready`, then reads
/// and counts events until the stream ends (or the task is aborted). The
/// probe also sends (commit µs, receipt µs) of each event.
async fn connection(
    shared: Arc<Shared>,
    index: usize,
    key: Arc<str>,
    ready: oneshot::Sender<Result<(), String>>,
    probe: Option<mpsc::UnboundedSender<(i64, i64)>>,
) {
    let opened = async {
        let mut sock = TcpStream::connect(("127.0.0.1", shared.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = sock.set_nodelay(true);
        sock.write_all(
            format!("GET /v1/events/subscribe?apikey={key} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .as_bytes(),
        )
        .await
        .map_err(|e| format!("write: {e}"))?;
        let (status, chunked, rest) = read_head(&mut sock).await?;
        if status != 200 {
            return Err(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&rest)
            ));
        }
        Ok((sock, chunked, rest))
    };
    let (mut sock, chunked, first) =
        match tokio::time::timeout(Duration::from_secs(60), opened).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                let _ = ready.send(Err(e));
                return;
            }
            Err(_) => {
                let _ = ready.send(Err("no response within 60 s".to_owned()));
                return;
            }
        };
    let _ = ready.send(Ok(()));
    let mut dechunk = chunked.then(Dechunker::default);
    let mut sse = SseParser::new(probe.is_some());
    let mut buf = vec![0u8; if probe.is_some() { 64 * 1024 } else { 1024 }];
    let mut received = now_micros();
    let mut input = first;
    let reason = loop {
        let mut on_event = |event: &[u8], data: &[u8]| {
            if event.starts_with(b"row.") {
                shared.counts[index].fetch_add(1, Ordering::Relaxed);
                if let Some(p) = &probe {
                    if let Some(c) = envelope_time(data) {
                        let _ = p.send((c, received));
                    }
                }
            } else if !event.is_empty() {
                *shared
                    .controls
                    .lock()
                    .expect("controls")
                    .entry(String::from_utf8_lossy(event).into_owned())
                    .or_default() += 1;
            }
        };
        match &mut dechunk {
            Some(d) => {
                d.feed(&input, &mut |b| sse.feed(b, &mut on_event));
                if d.done {
                    break "the server ended the response".to_owned();
                }
            }
            None => sse.feed(&input, &mut on_event),
        }
        input.clear();
        match sock.read(&mut buf).await {
            Ok(0) => break "the server closed the connection".to_owned(),
            Ok(n) => {
                received = now_micros();
                input.extend_from_slice(&buf[..n]);
            }
            Err(e) => break format!("read error: {e}"),
        }
    };
    *shared
        .ended
        .lock()
        .expect("ended")
        .entry(reason)
        .or_default() += 1;
}

// ---------------------------------------------------------------- routing

/// Routing figures of one round.
struct Round {
    /// Receipt of the last event − commit time, µs.
    last_us: f64,
    /// Receipt of the first event − commit time, µs.
    first_us: f64,
}

/// Commits `batch` rows of tenant t0 in one transaction and times their
/// arrival at the probe.
async fn round(
    client: &tokio_postgres::Client,
    first_id: i64,
    batch: i64,
    probe: &mut mpsc::UnboundedReceiver<(i64, i64)>,
) -> Option<Round> {
    while probe.try_recv().is_ok() {}
    client
        .execute(
            "INSERT INTO bench (id, tenant, v) SELECT g, 't0', 'x' FROM generate_series($1::bigint, $2::bigint) g",
            &[&first_id, &(first_id + batch - 1)],
        )
        .await
        .expect("commit a batch for t0");
    let mut got = Vec::with_capacity(batch as usize);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while (got.len() as i64) < batch {
        match tokio::time::timeout_at(deadline, probe.recv()).await {
            Ok(Some(s)) => got.push(s),
            _ => {
                eprintln!(
                    "the probe received {} of {batch} events within 60 s",
                    got.len()
                );
                return None;
            }
        }
    }
    let commit = got.iter().map(|s| s.0).min()?;
    let first = got.iter().map(|s| s.1).min()?;
    let last = got.iter().map(|s| s.1).max()?;
    Some(Round {
        last_us: (last - commit) as f64,
        first_us: (first - commit) as f64,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Routing {
    per_change_us: f64,
    min_per_change_us: f64,
    max_per_change_us: f64,
    first_ms: f64,
    last_ms: f64,
    rounds: usize,
}

async fn routing(
    client: &tokio_postgres::Client,
    next_id: &mut i64,
    batch: i64,
    rounds: usize,
    probe: &mut mpsc::UnboundedReceiver<(i64, i64)>,
) -> Routing {
    let mut all = Vec::new();
    // The first WARMUP_ROUNDS warm up and are not counted.
    for r in 0..rounds + WARMUP_ROUNDS {
        let got = round(client, *next_id, batch, probe).await;
        *next_id += batch;
        if r >= WARMUP_ROUNDS {
            all.extend(got);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Routing {
        per_change_us: median(all.iter().map(|r| r.last_us / batch as f64).collect()),
        min_per_change_us: all
            .iter()
            .map(|r| r.last_us / batch as f64)
            .fold(f64::INFINITY, f64::min),
        max_per_change_us: all
            .iter()
            .map(|r| r.last_us / batch as f64)
            .fold(0.0, f64::max),
        first_ms: median(all.iter().map(|r| r.first_us / 1000.0).collect()),
        last_ms: median(all.iter().map(|r| r.last_us / 1000.0).collect()),
        rounds: all.len(),
    }
}

// ------------------------------------------------------------------- main

fn main() {
    let requested = num_arg("--connections", 10_000).max(TENANTS as u64);
    let batch = num_arg("--batch", 1000).max(1) as i64;
    let rounds = num_arg("--rounds", 10).max(1) as usize;
    let open_batch = num_arg("--open-batch", 500).max(1) as usize;

    // File descriptors: one per connection in this process and in the server.
    let ConnectionBudget {
        mut connections,
        soft,
        mut notes,
    } = connection_budget(requested, TENANTS as u64, FD_SLACK);

    eprintln!("starting a throwaway cluster…");
    let pg = LocalPg::start().expect("start Postgres");
    let db = pg.create_database("bench").expect("db");
    psql(
        &pg,
        &db,
        "CREATE TABLE bench (id bigint PRIMARY KEY, tenant text NOT NULL, v text);
         ALTER TABLE bench REPLICA IDENTITY FULL;
         CREATE PUBLICATION bench_pub FOR TABLE bench;
         SELECT pg_create_logical_replication_slot('sluice_slot', 'pgoutput');",
    );

    // Sluice, with its open-files soft limit raised to the hard limit
    // through the shell when ours is not enough for it.
    let port = free_port();
    let exe = env!("CARGO_BIN_EXE_sluice");
    let server_need = connections + FD_SLACK;
    let mut command = serve_command(exe, soft, server_need);
    common::sluice_env(
        &mut command,
        &pg.url(&db),
        None,
        &format!("127.0.0.1:{port}"),
    );
    let mut sluice = Guard {
        child: command.stdin(Stdio::null()).spawn().expect("spawn sluice"),
        name: "sluice",
        grace: Duration::from_secs(20),
    };
    let pid = sluice.child.id();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    eprintln!("waiting for sluice (pid {pid}) to be ready…");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = sluice.exited() {
            panic!("sluice exited early: {status}");
        }
        if matches!(rt.block_on(http_get_async(port, "/readyz")), Ok((200, _))) {
            break;
        }
        assert!(Instant::now() < deadline, "sluice not ready within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (server_soft, server_hard) = nofile(&pid.to_string()).expect("read the server's limits");
    println!(
        "sluice (pid {pid}): open files limit soft {} hard {}",
        show_limit(server_soft),
        show_limit(server_hard)
    );
    if server_soft < server_need {
        let before = connections;
        connections = server_soft.saturating_sub(FD_SLACK).max(TENANTS as u64);
        let why = format!(
            "sluice may open only {} files, so {connections} connections are opened instead of {before}",
            show_limit(server_soft)
        );
        println!("NOTE: {why}");
        notes.push(why);
    }
    let connections = connections as usize;

    // One anon key per tenant.
    let (client, keys) = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&pg.url(&db), tokio_postgres::NoTls)
            .await
            .expect("connect to the database");
        tokio::spawn(conn);
        let mut keys: Vec<Arc<str>> = Vec::new();
        for t in 0..TENANTS {
            let tenant = TenantId::new(&format!("t{t}")).expect("tenant id");
            let (_, key) = create_key(
                &client,
                Some(&tenant),
                Role::Anon,
                Some("sse-fanout bench"),
                &serde_json::Map::new(),
                None,
            )
            .await
            .expect("create an anon key");
            keys.push(key.into());
        }
        (client, keys)
    });

    let shared = Arc::new(Shared {
        port,
        counts: (0..connections).map(|_| AtomicU64::new(0)).collect(),
        ended: Mutex::default(),
        controls: Mutex::default(),
    });
    let (probe_tx, mut probe_rx) = mpsc::unbounded_channel();
    let mut tasks: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    // Connection 0 is the probe (tenant t0); connection i > 0 subscribes to
    // tenant 1 + (i - 1) % 99, so t0 has exactly one subscriber throughout.
    let tenant_of = |i: usize| {
        if i == 0 {
            0
        } else {
            1 + (i - 1) % (TENANTS - 1)
        }
    };
    let mut open =
        |from: usize, to: usize, tasks: &mut Vec<tokio::task::JoinHandle<()>>| -> usize {
            let mut established = 0;
            let mut i = from;
            while i < to {
                let end = (i + open_batch).min(to);
                let readies: Vec<oneshot::Receiver<Result<(), String>>> = (i..end)
                    .map(|c| {
                        let (tx, rx) = oneshot::channel();
                        let probe = (c == 0).then(|| probe_tx.clone());
                        tasks.push(rt.spawn(connection(
                            shared.clone(),
                            c,
                            keys[tenant_of(c)].clone(),
                            tx,
                            probe,
                        )));
                        rx
                    })
                    .collect();
                for r in readies {
                    match rt.block_on(r) {
                        Ok(Ok(())) => established += 1,
                        Ok(Err(e)) => *failures.entry(e).or_default() += 1,
                        Err(_) => *failures.entry("task ended".to_owned()).or_default() += 1,
                    }
                }
                i = end;
            }
            established
        };
    // Waits until the hub holds `n` live subscribers (each stream first
    // reads the log, then registers); returns what it reached.
    let wait_live = |n: usize| -> f64 {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = 0.0;
        while Instant::now() < deadline {
            last = rt
                .block_on(metric_async(port, "sluice_hub_live_subscribers"))
                .unwrap_or(0.0);
            if last >= n as f64 {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        last
    };
    let settle = || std::thread::sleep(Duration::from_secs(2));

    settle();
    let rss_idle = status_kib(pid, "VmRSS").unwrap_or(0);

    // 10 subscribers: the probe and 9 others.
    let small = 10.min(connections);
    let t = Instant::now();
    let mut established = open(0, small, &mut tasks);
    assert!(
        shared.counts.len() >= small && established >= 1,
        "could not open the first connections: {failures:?}"
    );
    let live_small = wait_live(established);
    eprintln!(
        "{established} connections open ({live_small} live in the hub) in {:.1} s; routing {batch}-row batches for t0…",
        t.elapsed().as_secs_f64()
    );
    let mut next_id: i64 = 1;
    let with_small = rt.block_on(routing(&client, &mut next_id, batch, rounds, &mut probe_rx));
    settle();
    let rss_before = status_kib(pid, "VmRSS").unwrap_or(0);
    let anon_before = status_kib(pid, "RssAnon").unwrap_or(0);

    // All N.
    eprintln!(
        "opening {} more connections in batches of {open_batch}…",
        connections - small
    );
    let t = Instant::now();
    established += open(small, connections, &mut tasks);
    let open_secs = t.elapsed().as_secs_f64();
    let live_all = wait_live(established);
    let live_secs = t.elapsed().as_secs_f64();
    settle();
    let rss_after = status_kib(pid, "VmRSS").unwrap_or(0);
    let anon_after = status_kib(pid, "RssAnon").unwrap_or(0);
    let server_fds = open_fds(pid);
    let bench_rss = status_kib(std::process::id(), "VmRSS").unwrap_or(0);

    // Idle cost of N open streams (heartbeats, credential re-checks).
    let cpu0 = cpu_secs(pid).unwrap_or(0.0);
    let machine0 = machine_cpu();
    let idle = Duration::from_secs(6);
    std::thread::sleep(idle);
    let idle_cpu = (cpu_secs(pid).unwrap_or(0.0) - cpu0) / idle.as_secs_f64();
    let machine_busy = match (machine0, machine_cpu()) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0) as f64 / (t1 - t0) as f64,
        _ => f64::NAN,
    };

    eprintln!("routing {batch}-row batches for t0 with {established} connections open…");
    let with_all = rt.block_on(routing(&client, &mut next_id, batch, rounds, &mut probe_rx));
    let others_after: u64 = shared.counts[1..]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum();

    // Reach: one row for each of t1…t99; every open stream must see one.
    eprintln!("one event for each other tenant; counting the streams that receive it…");
    let before: Vec<u64> = shared
        .counts
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let reach_start = Instant::now();
    rt.block_on(client.execute(
        "INSERT INTO bench (id, tenant, v) SELECT $1::bigint + g, 't' || g, 'x' FROM generate_series(1, 99) g",
        &[&next_id],
    ))
    .expect("commit one row per tenant");
    let mut reached = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        reached = shared.counts[1..]
            .iter()
            .zip(&before[1..])
            .filter(|(c, b)| c.load(Ordering::Relaxed) > **b)
            .count();
        if reached + 1 >= established {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let reach_secs = reach_start.elapsed().as_secs_f64();

    // Close every stream and see what the server gives back; then open as
    // many again: flat RSS means the memory is kept for reuse, not leaked.
    let close_all = |tasks: &mut Vec<tokio::task::JoinHandle<()>>| {
        for t in tasks.drain(..) {
            t.abort();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let open = rt
                .block_on(metric_async(port, "sluice_subscribers{transport=\"sse\"}"))
                .unwrap_or(f64::NAN);
            if open == 0.0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        settle();
        status_kib(pid, "VmRSS").unwrap_or(0)
    };
    let rss_closed = close_all(&mut tasks);
    eprintln!("opening {established} connections again…");
    let reopened = open(0, connections, &mut tasks);
    wait_live(reopened);
    settle();
    let rss_reopened = status_kib(pid, "VmRSS").unwrap_or(0);
    let rss_closed_again = close_all(&mut tasks);
    let ended = shared.ended.lock().expect("ended").clone();
    let controls = shared.controls.lock().expect("controls").clone();

    drop(client);
    drop(tasks);
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(sluice);
    drop(pg);

    // ------------------------------------------------------------ report
    println!("connections: requested {requested}, attempted {connections}, established {established} (HTTP 200), live in the hub {live_all}");
    if established < requested as usize {
        if !failures.is_empty() {
            println!("  failed to open: {failures:?}");
        }
        for n in &notes {
            println!("  because {n}");
        }
    }
    if !ended.is_empty() {
        println!("  streams the server ended while open: {ended:?}");
    }
    if !controls.is_empty() {
        println!("  control events received: {controls:?}");
    }
    println!(
        "  opened {} in {open_secs:.1} s, all live in the hub after {live_secs:.1} s; sluice holds {} fds",
        connections - small,
        server_fds.map_or("?".to_owned(), |n| n.to_string())
    );
    println!(
        "  reach: one event per tenant t1..t99 arrived on {reached} of {} other streams in {reach_secs:.2} s",
        established.saturating_sub(1)
    );
    println!("sluice RSS:");
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "  {:<36} {:>7.1} MiB",
        "idle, no connection:",
        mib(rss_idle)
    );
    println!(
        "  {:<36} {:>7.1} MiB (anon {:.1} MiB)",
        "before (10 open, pipeline warmed):",
        mib(rss_before),
        mib(anon_before)
    );
    println!(
        "  {:<36} {:>7.1} MiB (anon {:.1} MiB)",
        format!("after ({established} open):"),
        mib(rss_after),
        mib(anon_after)
    );
    println!(
        "  {:<36} {:>7.1} MiB",
        "after closing them all:",
        mib(rss_closed)
    );
    println!(
        "  {:<36} {:>7.1} MiB",
        format!("after opening {reopened} again:"),
        mib(rss_reopened)
    );
    println!(
        "  {:<36} {:>7.1} MiB",
        "after closing them again:",
        mib(rss_closed_again)
    );
    let added = (established - small.min(established)).max(1);
    println!(
        "  RSS per connection: (after - before) / {added} = {:.1} KiB (target <= 16 KiB); (after - idle) / {established} = {:.1} KiB",
        rss_after.saturating_sub(rss_before) as f64 / added as f64,
        rss_after.saturating_sub(rss_idle) as f64 / established.max(1) as f64
    );
    println!(
        "idle with {established} streams open ({:.0} s): sluice CPU {:.1}% of one core; whole machine {:.1}% busy ({} cores)",
        idle.as_secs_f64(),
        idle_cpu * 100.0,
        machine_busy * 100.0,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  bench client RSS with all open: {:.1} MiB",
        bench_rss as f64 / 1024.0
    );
    println!(
        "routing {batch} changes of tenant t0 (1 subscriber of t0 in both cases), median of {} rounds:",
        with_small.rounds.min(with_all.rounds)
    );
    for (label, r) in [
        (format!("{small} subscribers open"), &with_small),
        (format!("{established} subscribers open"), &with_all),
    ] {
        println!(
            "  {label:<24} {:>7.1} µs per change (range {:.1}..{:.1}); commit -> first event {:.1} ms, -> last event {:.1} ms",
            r.per_change_us, r.min_per_change_us, r.max_per_change_us, r.first_ms, r.last_ms
        );
    }
    println!(
        "  ratio {established}/{small}: {:.2} (target: flat, about 1)",
        with_all.per_change_us / with_small.per_change_us
    );
    println!(
        "  events of t0 received by the other subscribers: {} (must be 0)",
        others_after
    );
}
