#![allow(dead_code)]
//! Helpers shared by the benchmark programs: argument parsing, psql, clocks
//! and ports, /proc readers, RFC 3339 timestamp parsing, chunked-encoding
//! and SSE decoding, async HTTP GETs and `/metrics` samples, open-files
//! limits for many connections, a child-process guard, single-row writers
//! at a steady rate, and latency percentiles.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use localpg::LocalPg;

// ---------------------------------------------------------------- arguments

pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

pub fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

pub fn num_arg(name: &str, default: u64) -> u64 {
    arg(name)
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("{name}: expected a whole number, got {s:?}"))
        })
        .unwrap_or(default)
}

/// The benchmarks' source table: text, numeric, timestamptz and jsonb
/// columns, a tenant, full replica identity.
pub const BENCH_TABLE: &str =
    "CREATE TABLE bench (id bigint PRIMARY KEY, tenant text NOT NULL, note text, amount numeric(12,2),
                         at timestamptz, meta jsonb);
     ALTER TABLE bench REPLICA IDENTITY FULL;";

pub fn psql(pg: &LocalPg, db: &str, sql: &str) -> String {
    pg.psql(db, sql)
        .unwrap_or_else(|e| panic!("psql failed: {e}\n{sql}"))
}

/// Microseconds since the Unix epoch, the clock Postgres stamps commits with.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as i64
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

// ------------------------------------------------------------------ /proc

/// A `/proc/<pid>/status` field in KiB (VmRSS, VmHWM, RssAnon, …).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Peak resident set size (VmHWM) in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM")
}

/// User + system CPU time of a process, in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU seconds (user + system) used so far by a Postgres cluster: the
/// postmaster, its live processes, and those already gone (the
/// postmaster's reaped children). Differences between two calls are the
/// cluster's CPU in between, approximately: they include autovacuum and
/// the checkpointer, and a backend that exits between the two samples
/// before it is reaped can be missed.
pub fn cluster_cpu_secs(data_dir: &std::path::Path) -> Option<f64> {
    let pidfile = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let postmaster: u32 = pidfile.lines().next()?.trim().parse().ok()?;
    let stat = |pid: &str| -> Option<Vec<f64>> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some(
            text.rsplit_once(')')?
                .1
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0.0))
                .collect(),
        )
    };
    let own = stat(&postmaster.to_string())?;
    // utime, stime, cutime, cstime (after the state field: 11..=14).
    let mut ticks: f64 = own.get(11..15)?.iter().sum();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Some(f) = stat(pid) {
            if f.get(1).copied() == Some(f64::from(postmaster)) {
                ticks += f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0);
            }
        }
    }
    Some(ticks / 100.0)
}

// ------------------------------------------------------------ time parsing

/// µs since the epoch of a civil UTC date and time.
pub fn civil_micros(y: i64, mo: u32, d: u32, h: u32, mi: u32, s: u32, us: u32) -> Option<i64> {
    let date = chrono::NaiveDate::from_ymd_opt(y as i32, mo, d)?;
    let t = date.and_hms_micro_opt(h, mi, s, us)?;
    Some(t.and_utc().timestamp_micros())
}

pub fn num(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// `YYYY-MM-DD?HH:MM:SS[.ffffff]` followed by a zone (`Z`, `+00`, `+05:30`,
/// `-03`): the envelope's RFC 3339 `time` and test_decoding's
/// `2026-01-01 10:00:00.12+00` alike. Returns µs since the epoch.
pub fn parse_timestamp(s: &[u8]) -> Option<i64> {
    if s.len() < 19 {
        return None;
    }
    let (y, mo, d) = (num(&s[0..4])?, num(&s[5..7])?, num(&s[8..10])?);
    let (h, mi, sec) = (num(&s[11..13])?, num(&s[14..16])?, num(&s[17..19])?);
    let mut i = 19;
    let mut us = 0u32;
    if s.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < s.len() && s[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &s[start..i];
        let mut v = 0u32;
        for k in 0..6 {
            v = v * 10 + frac.get(k).map_or(0, |c| u32::from(c - b'0'));
        }
        us = v;
    }
    let base = civil_micros(i64::from(y), mo, d, h, mi, sec, us)?;
    let offset_secs: i64 = match s.get(i) {
        Some(b'Z') | None => 0,
        Some(&sign @ (b'+' | b'-')) => {
            let rest = &s[i + 1..];
            let oh = i64::from(num(rest.get(0..2)?)?);
            let om = match rest.get(2) {
                Some(b':') => i64::from(num(rest.get(3..5)?)?),
                _ => 0,
            };
            let o = oh * 3600 + om * 60;
            if sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    Some(base - offset_secs * 1_000_000)
}

/// The envelope's `time` member (it precedes `data`, so the first match is it).
pub fn envelope_time(data: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"time\":\"";
    let at = data.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let end = data[at..].iter().position(|&c| c == b'"')? + at;
    parse_timestamp(&data[at..end])
}

// ------------------------------------------------- HTTP/1.1 + SSE decoding

/// Undoes `Transfer-Encoding: chunked` incrementally.
#[derive(Default)]
pub struct Dechunker {
    /// Bytes left in the current chunk's data.
    remaining: usize,
    /// Bytes of the CRLF after the chunk's data still to skip.
    crlf: usize,
    /// The size line being read.
    line: Vec<u8>,
    /// The terminating zero-size chunk has been read.
    pub done: bool,
}

impl Dechunker {
    pub fn feed(&mut self, mut input: &[u8], out: &mut impl FnMut(&[u8])) {
        while !input.is_empty() && !self.done {
            if self.remaining > 0 {
                let n = self.remaining.min(input.len());
                out(&input[..n]);
                self.remaining -= n;
                input = &input[n..];
                if self.remaining == 0 {
                    self.crlf = 2;
                }
            } else if self.crlf > 0 {
                let n = self.crlf.min(input.len());
                self.crlf -= n;
                input = &input[n..];
            } else {
                match input.iter().position(|&c| c == b'\n') {
                    None => {
                        self.line.extend_from_slice(input);
                        input = &[];
                    }
                    Some(p) => {
                        self.line.extend_from_slice(&input[..p]);
                        input = &input[p + 1..];
                        let hex: String = self
                            .line
                            .iter()
                            .take_while(|c| c.is_ascii_hexdigit())
                            .map(|&c| c as char)
                            .collect();
                        self.line.clear();
                        match usize::from_str_radix(&hex, 16).unwrap_or(0) {
                            0 => self.done = true,
                            size => self.remaining = size,
                        }
                    }
                }
            }
        }
    }
}

/// Splits an SSE byte stream into events (`event:` type, `data:` lines).
/// `keep_data` false: the data is not kept (the event is still reported).
pub struct SseParser {
    keep_data: bool,
    line: Vec<u8>,
    event: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
}

impl SseParser {
    pub fn new(keep_data: bool) -> SseParser {
        SseParser {
            keep_data,
            line: Vec::new(),
            event: Vec::new(),
            data: Vec::new(),
            has_data: false,
        }
    }

    pub fn feed(&mut self, mut input: &[u8], on_event: &mut impl FnMut(&[u8], &[u8])) {
        while let Some(p) = input.iter().position(|&c| c == b'\n') {
            let line: &[u8] = if self.line.is_empty() {
                &input[..p]
            } else {
                self.line.extend_from_slice(&input[..p]);
                &self.line
            };
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                if self.has_data {
                    on_event(&self.event, &self.data);
                }
                self.event.clear();
                self.data.clear();
                self.has_data = false;
            } else if let Some(v) = line.strip_prefix(b"data:") {
                if self.keep_data {
                    if self.has_data {
                        self.data.push(b'\n');
                    }
                    self.data
                        .extend_from_slice(v.strip_prefix(b" ").unwrap_or(v));
                }
                self.has_data = true;
            } else if let Some(v) = line.strip_prefix(b"event:") {
                let v = v.strip_prefix(b" ").unwrap_or(v).to_vec();
                self.event = v;
            }
            self.line.clear();
            input = &input[p + 1..];
        }
        self.line.extend_from_slice(input);
    }
}

// -------------------------------------------------------------- processes

/// A child process stopped (TERM, then KILL after `grace`) when dropped,
/// also on panic.
pub struct Guard {
    pub child: Child,
    pub name: &'static str,
    pub grace: Duration,
}

impl Guard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "{} did not stop within {} s of SIGTERM; killing it",
            self.name,
            self.grace.as_secs()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sets the environment of a measured `sluice serve`: the `bench` table of
/// `source_url` through slot `sluice_slot` and publication `bench_pub`, the
/// log in `state_url` (default: the source), the API on `listen`, warnings
/// only, and every `BENCH_SLUICE_<KEY>=v` passed on as `SLUICE_<KEY>=v`.
pub fn sluice_env(
    cmd: &mut std::process::Command,
    source_url: &str,
    state_url: Option<&str>,
    listen: &str,
) {
    sluice_env_tables(
        cmd,
        source_url,
        state_url,
        listen,
        r#"[{table="public.bench", tenant_column="tenant"}]"#,
    );
}

/// [`sluice_env`] capturing `tables` (the `source.postgres.tables` TOML
/// array) instead of the `bench` table.
pub fn sluice_env_tables(
    cmd: &mut std::process::Command,
    source_url: &str,
    state_url: Option<&str>,
    listen: &str,
    tables: &str,
) {
    cmd.env("SLUICE_SOURCE_POSTGRES_URL", source_url)
        .env("SLUICE_SOURCE_POSTGRES_SLOT", "sluice_slot")
        .env("SLUICE_SOURCE_POSTGRES_PUBLICATION", "bench_pub")
        .env("SLUICE_SOURCE_POSTGRES_TABLES", tables)
        .env("SLUICE_HTTP_LISTEN", listen)
        .env("SLUICE_LOG", "warn")
        .envs(
            std::env::vars()
                .filter(|(k, _)| k.starts_with("BENCH_SLUICE_"))
                .map(|(k, v)| (k["BENCH_".len()..].to_owned(), v)),
        );
    if let Some(url) = state_url {
        cmd.env("SLUICE_STATE_URL", url);
    }
}

// ------------------------------------------------------- latency figures

/// (commit µs, receipt µs) of one event.
pub type Sample = (i64, i64);

pub struct Stats {
    pub n: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// Nearest-rank percentiles of the latencies (ms) of the samples committed
/// in `[from, to)`.
pub fn stats(samples: &[Sample], from: i64, to: i64) -> Option<Stats> {
    let mut ms: Vec<f64> = samples
        .iter()
        .filter(|(c, _)| *c >= from && *c < to)
        .map(|(c, r)| (r - c) as f64 / 1000.0)
        .collect();
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

pub fn show(label: &str, s: &Option<Stats>) {
    match s {
        Some(s) => println!(
            "  {label:<44} n={:<6} p50 {:>7.2} ms  p95 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms",
            s.n, s.p50, s.p95, s.p99, s.max
        ),
        None => println!("  {label:<44} no events received"),
    }
}

pub fn count_in(samples: &[Sample], from: i64, to: i64) -> usize {
    samples
        .iter()
        .filter(|(c, _)| *c >= from && *c < to)
        .count()
}

// ------------------------------------------------------ /proc, per process

/// (soft, hard) "Max open files" of a process (`self` or a pid).
pub fn nofile(pid: &str) -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut f = line["Max open files".len()..].split_whitespace();
    let parse = |s: Option<&str>| -> Option<u64> {
        match s? {
            "unlimited" => Some(u64::MAX),
            v => v.parse().ok(),
        }
    };
    Some((parse(f.next())?, parse(f.next())?))
}

pub fn show_limit(v: u64) -> String {
    if v == u64::MAX {
        "unlimited".to_owned()
    } else {
        v.to_string()
    }
}

/// (busy, total) jiffies of the whole machine, from /proc/stat.
pub fn machine_cpu() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

// ------------------------------------------------------- HTTP over tokio

/// Reads a response head: (status, chunked?, the bytes after the head).
pub async fn read_head(sock: &mut TcpStream) -> Result<(u16, bool, Vec<u8>), String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        let n = sock
            .read(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed before the response headers".to_owned());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&head[..p + 4]).to_ascii_lowercase();
            let status = text
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let chunked = text.contains("transfer-encoding: chunked");
            return Ok((status, chunked, head[p + 4..].to_vec()));
        }
    }
}

/// `GET path` with `Connection: close`: (status, body).
pub async fn http_get_async(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut sock = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    sock.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .map_err(|e| format!("write: {e}"))?;
    let (status, chunked, mut rest) = read_head(&mut sock).await?;
    sock.read_to_end(&mut rest)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let body = if chunked {
        let mut body = Vec::new();
        Dechunker::default().feed(&rest, &mut |b| body.extend_from_slice(b));
        body
    } else {
        rest
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A sample of the server's metrics (the line `name value`, no labels);
/// None when `/metrics` does not answer within 10 s or has no such line.
pub async fn metric_async(port: u16, name: &str) -> Option<f64> {
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(10), http_get_async(port, "/metrics"))
            .await
            .ok()?
            .ok()?;
    if status != 200 {
        return None;
    }
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

// ------------------------------------------- open files for many sockets

/// How many connections a benchmark can open, and why fewer than asked.
pub struct ConnectionBudget {
    pub connections: u64,
    /// This process's soft open-files limit, after raising it.
    pub soft: u64,
    pub notes: Vec<String>,
}

/// Raises this process's open-files soft limit to the hard limit when
/// `requested + slack` files need it (util-linux's prlimit: there is no
/// libc here), then caps `requested` (at least `floor`) by that limit and
/// by the ephemeral port range. Prints what it found and did.
pub fn connection_budget(requested: u64, floor: u64, slack: u64) -> ConnectionBudget {
    let mut notes = Vec::new();
    let need = requested + slack;
    let (mut soft, hard) = nofile("self").expect("read /proc/self/limits");
    println!(
        "bench process: open files limit soft {} hard {} (need about {need})",
        show_limit(soft),
        show_limit(hard)
    );
    if soft < need && hard > soft {
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
    let mut connections = requested;
    if soft < need {
        connections = soft.saturating_sub(slack).max(floor);
        let why = format!(
            "this process may open only {} files (hard limit {}), so {connections} connections are opened instead of {requested}",
            show_limit(soft),
            show_limit(hard)
        );
        println!("NOTE: {why}");
        notes.push(why);
    }
    if let Some(p) = ephemeral_ports() {
        if connections + 100 > p {
            connections = p.saturating_sub(100);
            let why = format!(
                "only {p} ephemeral ports (net.ipv4.ip_local_port_range), so {connections} connections"
            );
            println!("NOTE: {why}");
            notes.push(why);
        }
    }
    ConnectionBudget {
        connections,
        soft,
        notes,
    }
}

/// The size of net.ipv4.ip_local_port_range.
pub fn ephemeral_ports() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let v: Vec<u64> = s
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    Some(v.get(1)? - v.first()? + 1)
}

/// `exe serve`, with its open-files soft limit raised to the hard limit
/// through the shell when `soft` (ours, which it inherits) is below `need`.
pub fn serve_command(exe: &str, soft: u64, need: u64) -> Command {
    if soft < need {
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
    }
}

// ---------------------------------------------------------------- writers

/// Commits rows `first_id .. first_id + total` at `rate` a second, one
/// single-row transaction each: `insert` with `$1` the row id and `$2`
/// `text_of(id)`. The writers (one per client) take the rows in turn.
/// Returns the rate achieved.
pub fn write_at_rate(
    rt: &tokio::runtime::Runtime,
    clients: &[Arc<tokio_postgres::Client>],
    insert: &str,
    rate: u64,
    total: i64,
    first_id: i64,
    text_of: Arc<dyn Fn(i64) -> String + Send + Sync>,
) -> f64 {
    let writers = clients.len() as i64;
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for (w, client) in clients.iter().enumerate() {
            let (client, insert, text_of) = (client.clone(), insert.to_owned(), text_of.clone());
            tasks.push(tokio::spawn(async move {
                let stmt = client.prepare(&insert).await.expect("prepare the insert");
                let t0 = tokio::time::Instant::now();
                let mut i = w as i64;
                while i < total {
                    let due = t0 + Duration::from_secs_f64(i as f64 / rate as f64);
                    tokio::time::sleep_until(due).await;
                    let id = first_id + i;
                    client
                        .execute(&stmt, &[&id, &text_of(id)])
                        .await
                        .expect("insert a row");
                    i += writers;
                }
            }));
        }
        for t in tasks {
            t.await.expect("writer task");
        }
    });
    total as f64 / started.elapsed().as_secs_f64()
}

// ------------------------------------------------- a served sluice process

/// `sluice setup` then `sluice serve` on a free port for database `db` of
/// `pg`, capturing `tables` ([`sluice_env_tables`]); returns once
/// `/readyz` answers 200. The process stops when the guard drops.
pub fn serve_ready(
    rt: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    url: &str,
    tables: &str,
) -> (Guard, String) {
    let exe = env!("CARGO_BIN_EXE_sluice");
    let listen = format!("127.0.0.1:{}", free_port());
    let command = |sub: &str| {
        let mut c = Command::new(exe);
        c.arg(sub);
        sluice_env_tables(&mut c, url, None, &listen, tables);
        c.stdin(Stdio::null());
        c
    };
    let setup = command("setup").output().expect("run sluice setup");
    assert!(
        setup.status.success(),
        "sluice setup: {}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let mut guard = Guard {
        child: command("serve").spawn().expect("spawn sluice"),
        name: "sluice",
        grace: Duration::from_secs(15),
    };
    let base = format!("http://{listen}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = guard.exited() {
            panic!("sluice exited early: {status}");
        }
        let ready = rt.block_on(async {
            matches!(http.get(format!("{base}/readyz")).send().await, Ok(r) if r.status().as_u16() == 200)
        });
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "sluice not ready within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    (guard, base)
}

/// A new API key of `tenant` with `role`, written to the state database at
/// `url`; returns its secret.
pub fn bench_key(
    rt: &tokio::runtime::Runtime,
    url: &str,
    tenant: &str,
    role: sluice::auth::Role,
) -> String {
    rt.block_on(async {
        let state = sluice::log::connect(url).await.expect("connect");
        sluice::auth::create_key(
            &state,
            Some(&sluice::event::TenantId::new(tenant).expect("tenant")),
            role,
            Some("bench"),
            &serde_json::Map::new(),
            None,
        )
        .await
        .expect("key")
        .1
    })
}
