//! Live-query benchmark (issue "live queries"): `GET /v1/events/subscribe?
//! table=public.<t>&snapshot=true` on SSE with a service key of tenant
//! `acme`, whose answer is the tenant's current rows (`row.snapshot`
//! frames), then `synced`, then live changes.
//!
//! Setup: one throwaway cluster (`localpg`), one database, one table per
//! size N (`bench_<N>`, the columns of `BENCH_TABLE`), each filled before
//! Sluice starts by one `INSERT … SELECT generate_series(1, 2N)`: odd ids
//! are tenant `acme`, even ids tenant `other` (N rows each), a note of
//! about 60 characters, an amount, a timestamp and a small jsonb object;
//! then `VACUUM ANALYZE`. The tables are captured with the default
//! `snapshot = "never"`, and the replication slot is created (`sluice
//! setup`) after the rows are in, so Sluice neither backfills nor streams
//! them: the live query reads the table itself. `http.max_snapshot_rows`
//! is the largest N.
//!
//! 1. Time to `synced`, one subscriber at a time, against Sluice run with
//!    `SLUICE_HTTP_LIVE_SHARE_MS=0` (every round is a fresh read of the
//!    source). The reference: a tokio-postgres client on the same cluster,
//!    on a connection opened beforehand, running the prepared `SELECT *
//!    FROM bench_<N> WHERE tenant = $1 ORDER BY id` (extended protocol,
//!    binary results) and receiving every row, each column decoded: `id`
//!    as i64, `tenant` and `note` as `&str`, `at` as a chrono
//!    `DateTime<Utc>`, `meta` parsed into a `serde_json::Value`, `amount`
//!    taken as its raw binary bytes (no numeric type is a dependency).
//!    Timed from sending the query to the last row decoded. Sluice side: a
//!    raw TCP client (HTTP/1.1, chunked decoding and SSE parsing of
//!    benches/common) timed from connect to the `synced` frame; it counts
//!    the `row.snapshot` frames and warns when they are not N. Also
//!    reported, medians: the response head and the first row frame (the
//!    read is done before the first row goes out). Rows/s = N / time;
//!    ratio = Sluice rows/s ÷ raw rows/s (target ≥ 0.5), both medians of
//!    `--rounds` rounds after one warm-up of each, the order alternating
//!    (even rounds raw first, odd rounds Sluice first).
//! 2. Fan-out: Sluice restarted with the default share window; `--
//!    subscribers` tasks connect, made ready first and released together,
//!    each subscribing to the 10,000-row table (`--fanout-rows`) and
//!    reading until `synced` (the connections stay open until all have).
//!    Reported: wall time from the release to the last `synced`, p50/p99
//!    of each subscriber's connect → `synced`, the deltas of
//!    `sluice_live_reads_total`, `sluice_live_shared_reads_total`,
//!    `sluice_live_queries_total`, and Postgres's own count of scans of the
//!    table: the delta of `idx_scan + seq_scan` in `pg_stat_user_tables`.
//!    Postgres publishes a backend's counters asynchronously (at most once
//!    a second while it lives, always when it exits; PG15 has no
//!    `pg_stat_force_next_flush()`): the raw client's connection is closed
//!    before, Sluice's live reads use connections of their own that close
//!    after each read, and each sample is taken 2 s after the activity
//!    before it. A read of N rows is N / 2,500 + 1 keyset page queries,
//!    each one index scan. The bench client runs on the same 2 cores: its
//!    CPU and Sluice's are printed too. File descriptors: the open-files
//!    limits are raised as benches/sse_fanout.rs does (`connection_budget`,
//!    `serve_command`); when they force fewer subscribers the number used
//!    is printed.
//!
//! `cargo bench --bench live -- [--rows 10000,100000] [--rounds 5]
//!  [--subscribers 1000] [--fanout-rows 10000]` (scripts/bench-live.sh
//! installs Postgres if needed and runs this; `BENCH_SLUICE_<KEY>=v`
//! passes `SLUICE_<KEY>=v` to the measured sluice). Figures are printed,
//! never asserted. `--subscribers 0` skips the fan-out; `--pg-log FILE`
//! (diagnostics) logs every statement with its time and client and copies
//! the server log to FILE at the end; `--pg-settings name=value,…`
//! (diagnostics) changes cluster settings (`ALTER SYSTEM`) before anything
//! runs, and says so.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::types::{FromSql, Type};

use localpg::LocalPg;
use sluice::auth::Role;

mod common;
use common::{
    arg, bench_key, cluster_cpu_secs, connection_budget, cpu_secs, free_port, http_get_async,
    metric_async, nofile, num_arg, psql, read_head, serve_command, show_limit, sluice_env_tables,
    Dechunker, Guard, SseParser, BENCH_TABLE,
};

const TENANT: &str = "acme";
/// File descriptors kept beyond one per connection, in each process.
const FD_SLACK: u64 = 200;
/// How long one subscriber may take to reach `synced`.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(180);

/// Rows per page of Sluice's initial read (`deliver::live`).
const LIVE_PAGE_ROWS: u64 = 2500;
fn table_of(rows: u64) -> String {
    format!("bench_{rows}")
}

/// `bench_<rows>` with `rows` rows of `acme` and as many of `other`.
fn create_table(pg: &LocalPg, db: &str, rows: u64) {
    let t = table_of(rows);
    let ddl = BENCH_TABLE
        .replace("CREATE TABLE bench ", &format!("CREATE TABLE {t} "))
        .replace("ALTER TABLE bench ", &format!("ALTER TABLE {t} "));
    assert!(ddl.contains(&t), "BENCH_TABLE changed shape: {BENCH_TABLE}");
    psql(pg, db, &ddl);
    psql(
        pg,
        db,
        &format!(
            "INSERT INTO {t} (id, tenant, note, amount, at, meta)
             SELECT g,
                    CASE WHEN g % 2 = 1 THEN 'acme' ELSE 'other' END,
                    'order ' || g || ' packed at depot ' || substr(md5(g::text), 1, 24) || ', ok',
                    round(((g * 7919) % 1000000) / 100.0 + 0.99, 2),
                    timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second',
                    jsonb_build_object('sku', 'SKU-' || (g % 997), 'qty', g % 7 + 1,
                                       'tags', jsonb_build_array('a', 'b'))
             FROM generate_series(1, {}) g;
             VACUUM ANALYZE {t};",
            rows * 2
        ),
    );
}

/// A served sluice and its port.
struct Served {
    guard: Guard,
    port: u16,
}

/// `sluice setup`, then `sluice serve` (open-files soft limit raised to the
/// hard limit when `soft` is below `need`) with `extra` env; waits for
/// `/readyz`.
fn serve(
    rt: &tokio::runtime::Runtime,
    url: &str,
    tables: &str,
    extra: &[(&str, String)],
    soft: u64,
    need: u64,
) -> Served {
    let exe = env!("CARGO_BIN_EXE_sluice");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut setup = Command::new(exe);
    setup.arg("setup");
    sluice_env_tables(&mut setup, url, None, &listen, tables);
    let out = setup
        .stdin(Stdio::null())
        .output()
        .expect("run sluice setup");
    assert!(
        out.status.success(),
        "sluice setup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut command = serve_command(exe, soft, need);
    sluice_env_tables(&mut command, url, None, &listen, tables);
    for (k, v) in extra {
        command.env(k, v);
    }
    let mut guard = Guard {
        child: command.stdin(Stdio::null()).spawn().expect("spawn sluice"),
        name: "sluice",
        grace: Duration::from_secs(20),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = guard.exited() {
            panic!("sluice exited early: {status}");
        }
        if matches!(rt.block_on(http_get_async(port, "/readyz")), Ok((200, _))) {
            break;
        }
        assert!(Instant::now() < deadline, "sluice not ready within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    Served { guard, port }
}

// ------------------------------------------------------------ raw SELECT

/// A column's binary value, undecoded (for `numeric`).
struct RawBytes<'a>(&'a [u8]);

impl<'a> FromSql<'a> for RawBytes<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawBytes(raw))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// The reference: (time, rows).
async fn raw_select(
    client: &tokio_postgres::Client,
    stmt: &tokio_postgres::Statement,
) -> (Duration, u64) {
    let t0 = Instant::now();
    let rows = client.query(stmt, &[&TENANT]).await.expect("raw SELECT");
    let mut n = 0u64;
    let mut sink = 0usize;
    for row in &rows {
        let id: i64 = row.get(0);
        let tenant: &str = row.get(1);
        let note: Option<&str> = row.get(2);
        let amount: Option<RawBytes<'_>> = row.get(3);
        let at: Option<chrono::DateTime<chrono::Utc>> = row.get(4);
        let meta: Option<serde_json::Value> = row.get(5);
        sink = sink
            .wrapping_add(id as usize)
            .wrapping_add(tenant.len())
            .wrapping_add(note.map_or(0, str::len))
            .wrapping_add(amount.map_or(0, |a| a.0.len()))
            .wrapping_add(at.map_or(0, |t| t.timestamp() as usize))
            .wrapping_add(meta.map_or(0, |m| m.as_object().map_or(0, |o| o.len())));
        n += 1;
    }
    std::hint::black_box(sink);
    (t0.elapsed(), n)
}

// ------------------------------------------------------- a live query

/// One live query's way to `synced`.
struct LiveRun {
    /// Connect → response head.
    head: Duration,
    /// Connect → first `row.snapshot` frame.
    first_row: Option<Duration>,
    /// Connect → `synced`.
    synced: Duration,
    rows: u64,
    changes: u64,
    /// Other events before `synced`, by type.
    others: BTreeMap<String, usize>,
    /// Held open until dropped.
    _sock: TcpStream,
}

/// Opens a live query on `table` and reads it until `synced`.
async fn live_query(port: u16, key: &str, table: &str, buf_size: usize) -> Result<LiveRun, String> {
    let t0 = Instant::now();
    let mut sock = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = sock.set_nodelay(true);
    sock.write_all(
        format!(
            "GET /v1/events/subscribe?table=public.{table}&snapshot=true HTTP/1.1\r\n\
             Host: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\
             Authorization: Bearer {key}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .map_err(|e| format!("write: {e}"))?;
    let (status, chunked, first) = read_head(&mut sock).await?;
    let head = t0.elapsed();
    if status != 200 {
        let mut body = first;
        let _ = tokio::time::timeout(Duration::from_secs(2), sock.read_to_end(&mut body)).await;
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(300)
                .collect::<String>()
        ));
    }
    let mut dechunk = chunked.then(Dechunker::default);
    let mut sse = SseParser::new(false);
    let mut rows = 0u64;
    let mut changes = 0u64;
    let mut first_row = None;
    let mut others: BTreeMap<String, usize> = BTreeMap::new();
    let mut synced = false;
    let mut buf = vec![0u8; buf_size];
    let mut input: &[u8] = &first;
    loop {
        let mut on_event = |event: &[u8], _: &[u8]| match event {
            b"row.snapshot" => {
                if rows == 0 {
                    first_row = Some(t0.elapsed());
                }
                rows += 1;
            }
            b"synced" => synced = true,
            e if e.starts_with(b"row.") => changes += 1,
            e => {
                *others
                    .entry(String::from_utf8_lossy(e).into_owned())
                    .or_default() += 1
            }
        };
        let ended = match &mut dechunk {
            Some(d) => {
                d.feed(input, &mut |b| sse.feed(b, &mut on_event));
                d.done
            }
            None => {
                sse.feed(input, &mut on_event);
                false
            }
        };
        if synced {
            return Ok(LiveRun {
                head,
                first_row,
                synced: t0.elapsed(),
                rows,
                changes,
                others,
                _sock: sock,
            });
        }
        if ended {
            return Err(format!(
                "the server ended the response before synced ({rows} rows, other events {others:?})"
            ));
        }
        match sock.read(&mut buf).await {
            Ok(0) => {
                return Err(format!(
                    "the server closed the connection before synced ({rows} rows, other events {others:?})"
                ))
            }
            Ok(n) => input = &buf[..n],
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

async fn live_query_timed(
    port: u16,
    key: &str,
    table: &str,
    buf_size: usize,
) -> Result<LiveRun, String> {
    match tokio::time::timeout(SUBSCRIBE_TIMEOUT, live_query(port, key, table, buf_size)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no synced within {} s",
            SUBSCRIBE_TIMEOUT.as_secs()
        )),
    }
}

// --------------------------------------------------------------- figures

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile of sorted values.
fn rank(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// 812345.6 → "812,346".
fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "?".to_owned();
    }
    let s = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

async fn scans(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(
            "SELECT (coalesce(idx_scan, 0) + coalesce(seq_scan, 0))::bigint
               FROM pg_stat_user_tables WHERE relname = $1",
            &[&table],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1)
}

struct SizeResult {
    rows: u64,
    raw: Vec<f64>,
    sluice: Vec<f64>,
    head_ms: Vec<f64>,
    first_row_ms: Vec<f64>,
    synced_ms: Vec<f64>,
    raw_ms: Vec<f64>,
    sluice_cpu: f64,
    cluster_cpu_sluice: f64,
    cluster_cpu_raw: f64,
}

fn main() {
    let sizes: Vec<u64> = arg("--rows")
        .unwrap_or_else(|| "10000,100000".to_owned())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("--rows: expected whole numbers, got {s:?}"))
        })
        .collect();
    let rounds = num_arg("--rounds", 5).max(1) as usize;
    let requested = num_arg("--subscribers", 1000);
    let fanout_rows = num_arg("--fanout-rows", 10_000).max(1);

    let budget = connection_budget(requested, 0, FD_SLACK);
    let mut subscribers = budget.connections;

    eprintln!("starting a throwaway cluster…");
    let pg = LocalPg::start().expect("start Postgres");
    let db = pg.create_database("bench").expect("db");
    let url = pg.url(&db);
    let pg_log = arg("--pg-log");
    let pg_settings = arg("--pg-settings");
    if let Some(list) = &pg_settings {
        // Diagnostics only: `name=value,…` set on the cluster.
        let sql: String = list
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| format!("ALTER SYSTEM SET {} = '{}'; ", k.trim(), v.trim()))
            .collect();
        psql(&pg, &db, &format!("{sql} SELECT pg_reload_conf();"));
        println!("NOTE: cluster settings changed for diagnostics: {list}");
    }
    if pg_log.is_some() {
        // Diagnostics only: every statement, with its time and client.
        psql(
            &pg,
            &db,
            "ALTER SYSTEM SET log_min_duration_statement = 0;
             ALTER SYSTEM SET log_line_prefix = '%m [%p] %a: ';
             SELECT pg_reload_conf();",
        );
    }
    let mut all_sizes = sizes.clone();
    if subscribers > 0 && !all_sizes.contains(&fanout_rows) {
        all_sizes.push(fanout_rows);
    }
    for &n in &all_sizes {
        eprintln!(
            "filling {} ({n} rows of {TENANT}, {n} of other)…",
            table_of(n)
        );
        create_table(&pg, &db, n);
    }
    let tables = format!(
        "[{}]",
        all_sizes
            .iter()
            .map(|&n| format!(
                r#"{{table="public.{}", tenant_column="tenant"}}"#,
                table_of(n)
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let max_rows = all_sizes.iter().copied().max().unwrap_or(0).to_string();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    // ------------------------------------------------ 1. one subscriber
    let sluice = serve(
        &rt,
        &url,
        &tables,
        &[
            ("SLUICE_HTTP_MAX_SNAPSHOT_ROWS", max_rows.clone()),
            ("SLUICE_HTTP_LIVE_SHARE_MS", "0".to_owned()),
        ],
        budget.soft,
        FD_SLACK,
    );
    let key = bench_key(&rt, &url, TENANT, Role::Service);
    let pid = sluice.guard.pid();
    let (raw_client, raw_conn) = rt
        .block_on(tokio_postgres::connect(&url, tokio_postgres::NoTls))
        .expect("connect");
    let raw_conn = rt.spawn(raw_conn);

    let mut results = Vec::new();
    let mut warnings = Vec::new();
    for &n in &sizes {
        let table = table_of(n);
        let stmt = rt
            .block_on(raw_client.prepare(&format!(
                "SELECT * FROM {table} WHERE tenant = $1 ORDER BY id"
            )))
            .expect("prepare");
        let mut r = SizeResult {
            rows: n,
            raw: Vec::new(),
            sluice: Vec::new(),
            head_ms: Vec::new(),
            first_row_ms: Vec::new(),
            synced_ms: Vec::new(),
            raw_ms: Vec::new(),
            sluice_cpu: 0.0,
            cluster_cpu_sluice: 0.0,
            cluster_cpu_raw: 0.0,
        };
        eprintln!("{n} rows: warm-up, then {rounds} rounds…");
        let run_raw = |r: &mut SizeResult, measured: bool, warnings: &mut Vec<String>| {
            let c0 = cluster_cpu_secs(pg.data_dir()).unwrap_or(f64::NAN);
            let (t, got) = rt.block_on(raw_select(&raw_client, &stmt));
            let c1 = cluster_cpu_secs(pg.data_dir()).unwrap_or(f64::NAN);
            if got != n {
                warnings.push(format!(
                    "WARNING: raw SELECT of {table} returned {got} rows, not {n}"
                ));
            }
            if measured {
                r.raw.push(got as f64 / t.as_secs_f64());
                r.raw_ms.push(t.as_secs_f64() * 1000.0);
                r.cluster_cpu_raw += c1 - c0;
            }
        };
        let run_sluice = |r: &mut SizeResult, measured: bool, warnings: &mut Vec<String>| {
            let c0 = cluster_cpu_secs(pg.data_dir()).unwrap_or(f64::NAN);
            let s0 = cpu_secs(pid).unwrap_or(f64::NAN);
            let run = rt.block_on(live_query_timed(sluice.port, &key, &table, 64 * 1024));
            let s1 = cpu_secs(pid).unwrap_or(f64::NAN);
            let c1 = cluster_cpu_secs(pg.data_dir()).unwrap_or(f64::NAN);
            match run {
                Ok(run) => {
                    if run.rows != n {
                        warnings.push(format!(
                            "WARNING: live query of {table} sent {} row.snapshot frames, not {n}",
                            run.rows
                        ));
                    }
                    if run.changes > 0 || !run.others.is_empty() {
                        warnings.push(format!(
                            "note: live query of {table}: {} change frames, other events {:?}",
                            run.changes, run.others
                        ));
                    }
                    if measured {
                        r.sluice.push(run.rows as f64 / run.synced.as_secs_f64());
                        r.head_ms.push(run.head.as_secs_f64() * 1000.0);
                        r.first_row_ms
                            .push(run.first_row.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0));
                        r.synced_ms.push(run.synced.as_secs_f64() * 1000.0);
                        r.sluice_cpu += s1 - s0;
                        r.cluster_cpu_sluice += c1 - c0;
                    }
                }
                Err(e) => warnings.push(format!("WARNING: live query of {table} failed: {e}")),
            }
        };
        run_raw(&mut r, false, &mut warnings);
        run_sluice(&mut r, false, &mut warnings);
        for round in 0..rounds {
            if round % 2 == 0 {
                run_raw(&mut r, true, &mut warnings);
                run_sluice(&mut r, true, &mut warnings);
            } else {
                run_sluice(&mut r, true, &mut warnings);
                run_raw(&mut r, true, &mut warnings);
            }
        }
        results.push(r);
    }
    drop(raw_client);
    let _ = rt.block_on(raw_conn);
    drop(sluice);

    // ------------------------------------------------------ 2. fan-out
    let mut fanout_lines = Vec::new();
    if subscribers > 0 {
        let server_need = subscribers + FD_SLACK;
        let sluice = serve(
            &rt,
            &url,
            &tables,
            &[("SLUICE_HTTP_MAX_SNAPSHOT_ROWS", max_rows.clone())],
            budget.soft,
            server_need,
        );
        let pid = sluice.guard.pid();
        let port = sluice.port;
        let (server_soft, server_hard) =
            nofile(&pid.to_string()).expect("read the server's limits");
        println!(
            "sluice (pid {pid}): open files limit soft {} hard {}",
            show_limit(server_soft),
            show_limit(server_hard)
        );
        let mut notes = budget.notes.clone();
        if server_soft < server_need {
            let before = subscribers;
            subscribers = server_soft.saturating_sub(FD_SLACK).max(1);
            notes.push(format!(
                "sluice may open only {} files, so {subscribers} subscribers instead of {before}",
                show_limit(server_soft)
            ));
        }
        let table = table_of(fanout_rows);
        let (stats, stats_conn) = rt
            .block_on(tokio_postgres::connect(&url, tokio_postgres::NoTls))
            .expect("connect");
        rt.spawn(stats_conn);
        let key: Arc<str> = key.into();
        std::thread::sleep(Duration::from_secs(2));
        let metric = |name: &str| rt.block_on(metric_async(port, name)).unwrap_or(f64::NAN);
        let reads0 = metric("sluice_live_reads_total");
        let shared0 = metric("sluice_live_shared_reads_total");
        let queries0 = metric("sluice_live_queries_total");
        let rows0 = metric("sluice_live_rows_read_total");
        let scans0 = rt.block_on(scans(&stats, &table));

        eprintln!("{subscribers} subscribers starting at once on {table}…");
        let (go_tx, go_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..subscribers {
            let (key, table, mut go) = (key.clone(), table.clone(), go_rx.clone());
            tasks.push(rt.spawn(async move {
                let _ = go.wait_for(|v| *v).await;
                let r = live_query_timed(port, &key, &table, 16 * 1024).await;
                (r, Instant::now())
            }));
        }
        std::thread::sleep(Duration::from_millis(500));
        let s0 = cpu_secs(pid).unwrap_or(f64::NAN);
        let b0 = cpu_secs(std::process::id()).unwrap_or(f64::NAN);
        let c0 = cluster_cpu_secs(pg.data_dir()).unwrap_or(f64::NAN);
        let released = Instant::now();
        go_tx.send(true).expect("release the subscribers");
        let outcomes: Vec<(Result<LiveRun, String>, Instant)> = rt.block_on(async {
            let mut v = Vec::new();
            for t in tasks {
                v.push(t.await.expect("subscriber task"));
            }
            v
        });
        let wall = outcomes
            .iter()
            .filter(|(r, _)| r.is_ok())
            .map(|(_, at)| at.duration_since(released).as_secs_f64())
            .fold(0.0, f64::max);
        let s1 = cpu_secs(pid).unwrap_or(f64::NAN);
        let b1 = cpu_secs(std::process::id()).unwrap_or(f64::NAN);
        let c1 = cluster_cpu_secs(pg.data_dir()).unwrap_or(f64::NAN);
        let reads = metric("sluice_live_reads_total") - reads0;
        let shared = metric("sluice_live_shared_reads_total") - shared0;
        let queries = metric("sluice_live_queries_total") - queries0;
        let rows_read = metric("sluice_live_rows_read_total") - rows0;

        let mut times = Vec::new();
        let mut failures: BTreeMap<String, usize> = BTreeMap::new();
        let mut wrong_rows = 0usize;
        let mut changes = 0u64;
        let mut runs = Vec::new();
        for (r, _) in outcomes {
            match r {
                Ok(run) => {
                    times.push(run.synced.as_secs_f64());
                    if run.rows != fanout_rows {
                        wrong_rows += 1;
                    }
                    changes += run.changes;
                    runs.push(run);
                }
                Err(e) => *failures.entry(e).or_default() += 1,
            }
        }
        let synced_n = times.len();
        drop(runs);
        std::thread::sleep(Duration::from_secs(2));
        let scans1 = rt.block_on(scans(&stats, &table));
        times.sort_by(f64::total_cmp);
        drop(stats);
        drop(sluice);

        fanout_lines.push(format!(
            "live {subscribers} subscribers x {} rows: all synced in {wall:.1} s (p50 {:.1} s, p99 {:.1} s); source reads: sluice_live_reads_total +{reads}, shared +{shared}, pg idx_scan+seq_scan +{}",
            thousands(fanout_rows as f64),
            rank(&times, 0.50),
            rank(&times, 0.99),
            scans1 - scans0
        ));
        fanout_lines.push(format!(
            "  {synced_n} of {subscribers} reached synced; sluice_live_queries_total +{queries}, sluice_live_rows_read_total +{rows_read}; {} row frames delivered; first synced after {:.2} s; CPU during the fan-out: sluice {:.1} s, bench client {:.1} s, postgres {:.1} s (2 cores, {wall:.1} s wall)",
            thousands((synced_n as u64 * fanout_rows) as f64),
            times.first().copied().unwrap_or(f64::NAN),
            s1 - s0,
            b1 - b0,
            c1 - c0
        ));
        if reads > 0.0 && scans1 >= scans0 {
            fanout_lines.push(format!(
                "  pg scans per sluice read: {:.1} (a read of {fanout_rows} rows is {} keyset pages)",
                (scans1 - scans0) as f64 / reads,
                fanout_rows / LIVE_PAGE_ROWS + 1
            ));
        }
        if subscribers < requested {
            fanout_lines.push(format!(
                "  NOTE: {subscribers} subscribers used instead of {requested}: {}",
                notes.join("; ")
            ));
        }
        if wrong_rows > 0 {
            fanout_lines.push(format!(
                "  WARNING: {wrong_rows} subscribers did not get exactly {fanout_rows} row.snapshot frames"
            ));
        }
        if changes > 0 {
            fanout_lines.push(format!(
                "  note: {changes} change frames before synced in all"
            ));
        }
        for (e, k) in &failures {
            fanout_lines.push(format!("  FAILED {k}x: {e}"));
        }
    }
    rt.shutdown_timeout(Duration::from_secs(5));
    if let Some(path) = &pg_log {
        let _ = std::fs::copy(pg.data_dir().join("postgres.log"), path);
        eprintln!("the server log is in {path}");
    }
    drop(pg);

    // ------------------------------------------------------------ report
    for w in &warnings {
        println!("{w}");
    }
    println!("live queries, one subscriber at a time (SLUICE_HTTP_LIVE_SHARE_MS=0), tenant {TENANT}, rows/s = rows / time, medians of {rounds} rounds, raw = prepared SELECT on an open tokio-postgres connection");
    for r in &results {
        let raw = median(r.raw.clone());
        let sl = median(r.sluice.clone());
        let ratios: Vec<f64> = r.raw.iter().zip(&r.sluice).map(|(a, b)| b / a).collect();
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(0.0, f64::max);
        println!(
            "live {} rows: raw SELECT {} rows/s (median of {}), sluice to synced {} rows/s, ratio {:.2} (target >= 0.5; per round {lo:.2}..{hi:.2})",
            r.rows,
            thousands(raw),
            r.raw.len(),
            thousands(sl),
            sl / raw
        );
        println!(
            "  raw SELECT {:.1} ms; sluice: response head {:.1} ms, first row {:.1} ms, synced {:.1} ms; per round CPU: sluice {:.0} ms, postgres {:.0} ms during sluice's, {:.0} ms during raw",
            median(r.raw_ms.clone()),
            median(r.head_ms.clone()),
            median(r.first_row_ms.clone()),
            median(r.synced_ms.clone()),
            r.sluice_cpu * 1000.0 / r.sluice.len().max(1) as f64,
            r.cluster_cpu_sluice * 1000.0 / r.sluice.len().max(1) as f64,
            r.cluster_cpu_raw * 1000.0 / r.raw.len().max(1) as f64,
        );
    }
    for l in &fanout_lines {
        println!("{l}");
    }
}
