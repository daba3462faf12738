//! SSE latency benchmark: the time from a row's commit in the source
//! database to the arrival of its event on an SSE stream, at a steady rate of
//! single-row transactions, next to the raw floor measured in the same run
//! (`pg_recvlogical` with the `test_decoding` plugin on a second slot,
//! reading the commit timestamp from its `COMMIT … (at …)` lines).
//!
//! `cargo bench --bench sse_latency -- [--rates 1000,5000] [--seconds 10]
//!  [--writers 4] [--separate-state]`
//! (`BENCH_SLUICE_<KEY>=v` passes `SLUICE_<KEY>=v` to the measured sluice;
//! scripts/bench-sse-latency.sh installs Postgres if needed and runs this.)
//!
//! Latency = receipt time − the commit time (the event's `time` member, the
//! source commit timestamp, or the floor's `(at …)`): everything runs on this
//! machine, so both come from the same clock. Both include the commit's own
//! WAL flush, because Postgres takes the commit timestamp before it. The
//! first second of each rate is dropped as warm-up. Prints p50/p95/p99/max
//! for Sluice and the floor, and Sluice's p50/p99 over the floor's. Targets
//! (printed, never asserted): p50 ≤ 5 ms and p99 ≤ 25 ms at 1000/s.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use localpg::LocalPg;
use sluice::auth::{create_key, Role};
use sluice::event::TenantId;

mod common;
use common::{
    arg, count_in, envelope_time, flag, free_port, now_micros, parse_timestamp, psql, show, stats,
    Dechunker, Guard, Sample, SseParser,
};

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

// ------------------------------------------------------------------- main

fn main() {
    let rates: Vec<u64> = arg("--rates")
        .unwrap_or_else(|| "1000,5000".to_owned())
        .split(',')
        .map(|r| {
            r.trim()
                .parse()
                .expect("--rates: comma-separated rows per second")
        })
        .collect();
    let seconds: u64 = arg("--seconds")
        .map(|s| s.parse().expect("--seconds: a whole number"))
        .unwrap_or(10)
        .max(2);
    let writers: usize = arg("--writers")
        .map(|s| s.parse().expect("--writers: a whole number"))
        .unwrap_or(4)
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
         SELECT pg_create_logical_replication_slot('floor_slot', 'test_decoding');",
    );
    let state_db = if separate_state {
        pg.create_database("state").expect("state db")
    } else {
        db.clone()
    };

    // Sluice.
    let port = free_port();
    let exe = env!("CARGO_BIN_EXE_sluice");
    let mut command = Command::new(exe);
    command.arg("serve");
    common::sluice_env(
        &mut command,
        &pg.url(&db),
        Some(&pg.url(&state_db)),
        &format!("127.0.0.1:{port}"),
    );
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
        let (_, key) = create_key(&client, Some(&t1), Role::Anon, Some("sse-latency bench"))
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
        child: Command::new(pg.bin_dir().join("pg_recvlogical"))
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

    let mut next_id: i64 = 1;
    let mut results = Vec::new();
    for &rate in &rates {
        eprintln!("writing {rate} single-row transactions/s for {seconds} s…");
        let total = (rate * seconds) as i64;
        let first_id = next_id;
        next_id += total;
        let phase_start = now_micros();
        let started = Instant::now();
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
                &sse_samples.lock().expect("samples"),
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
        let sse = stats(&sse_samples.lock().expect("samples"), from, to);
        let floor = stats(&floor_samples.lock().expect("samples"), from, to);
        let got_sse = count_in(&sse_samples.lock().expect("samples"), phase_start, to);
        let got_floor = count_in(&floor_samples.lock().expect("samples"), phase_start, to);
        results.push((rate, achieved, total, got_sse, got_floor, sse, floor));
    }
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
    drop(clients);
    drop(rt);

    println!(
        "SSE commit-to-receipt latency: one SSE subscriber (tenant t1), single-row transactions from {writers} writer connections, \
         {seconds} s per rate, first second dropped; state database: {}",
        if separate_state { "separate database, same cluster" } else { "the source database" }
    );
    for (rate, achieved, total, got_sse, got_floor, sse, floor) in &results {
        println!(
            "rate {rate}/s (achieved {achieved:.0}/s): {total} rows committed, sluice received {got_sse}, floor received {got_floor}"
        );
        show("sluice SSE", sse);
        show("floor (pg_recvlogical, test_decoding)", floor);
        match (sse, floor) {
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
            if let Some(s) = sse {
                println!(
                    "  targets at 1000/s: p50 <= 5 ms ({}), p99 <= 25 ms ({})",
                    if s.p50 <= 5.0 { "met" } else { "missed" },
                    if s.p99 <= 25.0 { "met" } else { "missed" }
                );
            }
        }
    }
    if !rates.contains(&1000) {
        println!("targets (at 1000/s): p50 <= 5 ms, p99 <= 25 ms");
    }
    if let Some(cpu) = cpu {
        println!("sluice CPU over the whole run: {cpu:.2} s");
    }
}
