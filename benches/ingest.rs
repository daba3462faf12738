//! Ingest benchmark: how fast Sluice drains a replication backlog into its
//! log, against two references on the same backlog, on the same machine in
//! the same run, each from its own slot: `pg_recvlogical` into /dev/null,
//! and the null reader (`common/null_reader.rs`: the same replication crate
//! and decoder as Sluice, every message decoded and discarded, each commit
//! acknowledged at once), which is the real limit of reading the stream.
//! The order of the three turns with every run.
//!
//! `cargo bench --bench ingest -- [--rows N] [--tx-rows N] [--runs N] [--separate-state] [--tuned]`
//! (`--tx-rows`: rows per source transaction of the backlog, default 10,000;
//! 1: single-row transactions from 8 concurrent pgbench clients)
//! (`BENCH_SLUICE_<KEY>=v` passes `SLUICE_<KEY>=v` to the measured sluice;
//! `SLUICE_BENCH_EXE=path` measures that binary instead of this tree's, e.g.
//! an earlier commit's release build, to compare two versions run by run.)
//! (scripts/bench-ingest.sh installs Postgres if needed and runs this).
//! Prints, per run, each contender's wall time and rows/s, the null reader's
//! and Sluice's own CPU, the cluster's CPU during each (the postmaster and
//! every backend, reaped ones included), the appender backend's and the
//! walsender's CPU, Sluice's peak RSS, and the ratios Sluice / null reader and
//! Sluice / `pg_recvlogical`; then their medians. Also, per run and as a
//! median: the time from Sluice's log holding the backlog's last event to
//! its slot's `confirmed_flush_lsn` reaching the backlog's end (polled every
//! ~5 ms, at most 30 s; target ≤ 200 ms).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use localpg::LocalPg;

mod common;
use common::{arg, cluster_cpu_secs, cpu_secs, flag, peak_rss_kib, psql, BENCH_TABLE};
#[path = "common/null_reader.rs"]
mod null_reader;

/// One complete run on a fresh cluster.
fn run_once(rows: u64, tx_rows: u64, separate_state: bool, run: usize) -> Figures {
    eprintln!("starting a throwaway cluster…");
    let pg = LocalPg::start().expect("start Postgres");
    // The cluster both contenders read from has the stock settings, or with
    // --tuned those of a small production server.
    let tuned = flag("--tuned");
    if tuned {
        psql(
            &pg,
            "postgres",
            "ALTER SYSTEM SET shared_buffers = '1GB'; ALTER SYSTEM SET max_wal_size = '8GB';
             ALTER SYSTEM SET checkpoint_timeout = '30min'",
        );
        pg.restart().expect("restart with the benchmark settings");
    }
    let db = pg.create_database("bench").expect("db");
    psql(
        &pg,
        &db,
        &format!(
            "{BENCH_TABLE}
             CREATE PUBLICATION bench_pub FOR TABLE bench;
             SELECT pg_create_logical_replication_slot('raw_slot', 'pgoutput');
             SELECT pg_create_logical_replication_slot('null_slot', 'pgoutput');
             SELECT pg_create_logical_replication_slot('sluice_slot', 'pgoutput');"
        ),
    );
    let state_db = if separate_state {
        pg.create_database("state").expect("state db")
    } else {
        db.clone()
    };

    eprintln!("building a backlog of {rows} rows…");
    if tx_rows <= 1 {
        single_row_backlog(&pg, &db, rows);
    } else {
        batched_backlog(&pg, &db, rows, tx_rows);
    }
    let end_lsn = psql(&pg, &db, "SELECT pg_current_wal_lsn()")
        .trim()
        .to_owned();
    let row_bytes = psql(
        &pg,
        &db,
        "SELECT avg(pg_column_size(bench.*))::int FROM bench",
    );
    eprintln!(
        "backlog ends at {end_lsn}; average row {} bytes",
        row_bytes.trim()
    );

    // Each contender starts right after a checkpoint, so none pays for one
    // another caused; the order turns with every run.
    let order = [
        Contender::Recvlogical,
        Contender::NullReader,
        Contender::Sluice,
    ];
    let mut f = Figures {
        tuned,
        end_lsn: end_lsn.clone(),
        ..Figures::default()
    };
    for i in 0..3 {
        psql(&pg, &db, "CHECKPOINT");
        let before = cluster_cpu_secs(pg.data_dir()).unwrap_or(f64::NAN);
        let after = |pg: &LocalPg| {
            // A contender's backends exit as it disconnects; their CPU
            // counts once the postmaster has reaped them.
            std::thread::sleep(Duration::from_millis(500));
            cluster_cpu_secs(pg.data_dir()).unwrap_or(f64::NAN)
        };
        match order[(i + run) % 3] {
            Contender::Recvlogical => {
                f.raw_secs = recvlogical(&pg, &db, &end_lsn);
                f.raw_cluster = after(&pg) - before;
            }
            Contender::NullReader => {
                (f.null_secs, f.null_cpu) = null_reader(&pg, &db, &end_lsn);
                f.null_cluster = after(&pg) - before;
            }
            Contender::Sluice => {
                sluice(&pg, &db, &state_db, rows, &end_lsn, &mut f);
                f.sluice_cluster = after(&pg) - before;
            }
        }
    }
    f
}

/// The backlog committed `tx_rows` rows at a time, in one session: a DO
/// block commits after each transaction's rows, each call covering up to
/// 100,000 rows.
fn batched_backlog(pg: &LocalPg, db: &str, rows: u64, tx_rows: u64) {
    let mut first = 1u64;
    while first <= rows {
        let last = (first + 100_000 - 1).min(rows);
        psql(
            pg,
            db,
            &format!(
                "DO $$ BEGIN
                   FOR lo IN {first}..{last} BY {tx_rows} LOOP
                     INSERT INTO bench SELECT {ROW_EXPR}
                     FROM generate_series(lo, least(lo + {tx_rows} - 1, {last})) g;
                     COMMIT;
                   END LOOP;
                 END $$"
            ),
        );
        first = last + 1;
    }
}

/// The backlog as single-row transactions from 8 concurrent clients
/// (pgbench), as an OLTP application writes; `rows` must be a multiple of 8.
fn single_row_backlog(pg: &LocalPg, db: &str, rows: u64) {
    psql(pg, db, "CREATE SEQUENCE bench_id_seq");
    let script =
        std::env::temp_dir().join(format!("sluice-bench-ingest-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        format!(
            "INSERT INTO bench SELECT {ROW_EXPR} FROM (SELECT nextval('bench_id_seq') AS g) s;\n"
        ),
    )
    .expect("write the pgbench script");
    let status = Command::new(pg.client_bin_dir().join("pgbench"))
        .args([
            "-n",
            "-c",
            "8",
            "-j",
            "2",
            "-t",
            &(rows / 8).to_string(),
            "-f",
        ])
        .arg(&script)
        .arg(pg.url(db))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("run pgbench");
    let _ = std::fs::remove_file(&script);
    assert!(status.success(), "pgbench failed: {status}");
}

/// One bench row from its id `g` (about 176 bytes stored).
const ROW_EXPR: &str = "g, 'tenant' || (g % 100), md5(g::text) || md5((g + 1)::text),
    (g % 100000) / 100.0, now(), jsonb_build_object('k', g, 'tag', 'x' || (g % 7), 'ok', true)";

#[derive(Clone, Copy)]
enum Contender {
    Recvlogical,
    NullReader,
    Sluice,
}

/// `pg_recvlogical` decodes with pgoutput into /dev/null; its wall time.
fn recvlogical(pg: &LocalPg, db: &str, end_lsn: &str) -> f64 {
    let recv = pg.client_bin_dir().join("pg_recvlogical");
    let t = Instant::now();
    let status = Command::new(&recv)
        .args([
            "-d",
            &pg.url(db),
            "--slot",
            "raw_slot",
            "--start",
            "--no-loop",
            "-f",
            "/dev/null",
        ])
        .args([
            "--endpos",
            end_lsn,
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=bench_pub",
        ])
        .stdin(Stdio::null())
        .status()
        .expect("run pg_recvlogical");
    assert!(status.success(), "pg_recvlogical failed: {status}");
    t.elapsed().as_secs_f64()
}

/// The null reader (this binary in `--null-reader` mode) on its own slot;
/// its wall time and its own CPU.
fn null_reader(pg: &LocalPg, db: &str, end_lsn: &str) -> (f64, f64) {
    let exe = std::env::current_exe().expect("own path");
    let t = Instant::now();
    let out = Command::new(exe)
        .args([
            "--null-reader",
            &pg.url(db),
            "null_slot",
            "bench_pub",
            end_lsn,
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run the null reader");
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "the null reader failed: {}",
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let cpu = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("cpu_secs="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    (secs, cpu)
}

/// Sluice drains the backlog into its log; fills its figures in `f`.
fn sluice(pg: &LocalPg, db: &str, state_db: &str, rows: u64, end_lsn: &str, f: &mut Figures) {
    let exe =
        std::env::var("SLUICE_BENCH_EXE").unwrap_or_else(|_| env!("CARGO_BIN_EXE_sluice").into());
    let poll = Poller::connect(&pg.url(state_db));
    let t = Instant::now();
    // SLUICE_BENCH_WRAP="perf record -g -o /tmp/sluice.perf --" profiles the run
    // (the RSS and CPU figures are then the wrapper's).
    let wrap: Vec<String> = std::env::var("SLUICE_BENCH_WRAP")
        .map(|w| w.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let mut command = match wrap.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    command
        .arg("serve")
        .env_remove("SLUICE_BENCH_WRAP")
        .env_remove("SLUICE_BENCH_EXE");
    common::sluice_env(
        &mut command,
        &pg.url(db),
        Some(&pg.url(state_db)),
        "127.0.0.1:0",
    );
    let mut child = command.stdin(Stdio::null()).spawn().expect("spawn sluice");
    let pid = child.id();
    loop {
        let n = poll.log_head();
        if n >= rows {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("sluice exited early: {status}");
        }
        // Every 100 ms while the end is far; every 5 ms once it is due
        // within half a second at the rate so far, so the moment the log
        // holds the backlog is seen within a few ms (the slot's figure
        // starts there, and so the wall time is exact too).
        let rate = n as f64 / t.elapsed().as_secs_f64();
        let near = n > 0 && (rows - n) as f64 / rate < 0.5;
        std::thread::sleep(Duration::from_millis(if near { 5 } else { 100 }));
    }
    let caught_up = Instant::now();
    let sluice_secs = t.elapsed().as_secs_f64();
    let sluice_cpu = cpu_secs(pid).unwrap_or(0.0);
    // pg_stat_activity lists the whole cluster's backends, the walsender
    // (source database) and the appender (state database) alike.
    let backend_cpu = |app: &str| -> f64 {
        poll.text(&format!(
            "SELECT pid FROM pg_stat_activity WHERE application_name = '{app}'"
        ))
        .and_then(|s| s.trim().parse::<u32>().ok())
        .and_then(cpu_secs)
        .unwrap_or(f64::NAN)
    };
    let walsender_cpu = backend_cpu("sluice/main");
    let appender_cpu = backend_cpu("sluice-appender");
    let slot = poll.wait_for_slot("sluice_slot", end_lsn, caught_up, SLOT_WAIT);
    // VmHWM is the kernel's own high-water mark of the resident set (kept
    // as pages are unmapped, and taken against the current RSS on every
    // read), not a sample: one read while the process lives sees a peak
    // however briefly it lasted.
    let peak = peak_rss_kib(pid).unwrap_or(0);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();

    f.sluice_secs = sluice_secs;
    f.sluice_cpu = sluice_cpu;
    f.walsender_cpu = walsender_cpu;
    f.appender_cpu = appender_cpu;
    f.peak_mib = peak as f64 / 1024.0;
    f.slot = Some(slot);
}

/// How long the slot may take to confirm the backlog once the log holds it.
const SLOT_WAIT: Duration = Duration::from_secs(30);

/// One session with the cluster for Sluice's run: polling the log's head
/// every few ms costs a query, not a psql process and a backend each time.
struct Poller {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Poller {
    fn connect(url: &str) -> Poller {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .expect("connect to the state database");
            tokio::spawn(conn);
            client
                .batch_execute("SET application_name = 'bench-ingest-poll'")
                .await
                .expect("name the polling session");
            client
        });
        Poller { rt, client }
    }

    /// The first row's columns as text (None: no row, or the query failed).
    fn row(&self, sql: &str) -> Option<Vec<Option<String>>> {
        let messages = self.rt.block_on(self.client.simple_query(sql)).ok()?;
        messages.into_iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
    }

    fn text(&self, sql: &str) -> Option<String> {
        self.row(sql)?.into_iter().next().flatten()
    }

    /// The log's highest seq (0 before the log exists).
    fn log_head(&self) -> u64 {
        self.text("SELECT coalesce(max(seq), 0) FROM sluice.events")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// Polls `slot`'s confirmed_flush_lsn every ~5 ms until it reaches
    /// `end_lsn`: Ok(ms since `since`), or Err(the last confirmed_flush_lsn
    /// seen) once `within` has passed.
    fn wait_for_slot(
        &self,
        slot: &str,
        end_lsn: &str,
        since: Instant,
        within: Duration,
    ) -> Result<f64, String> {
        let sql = format!(
            "SELECT confirmed_flush_lsn::text, confirmed_flush_lsn >= '{end_lsn}'::pg_lsn
             FROM pg_replication_slots WHERE slot_name = '{slot}'"
        );
        let mut last = String::from("unknown");
        loop {
            if let Some(row) = self.row(&sql) {
                if let Some(Some(lsn)) = row.first() {
                    last.clone_from(lsn);
                }
                if row.get(1).is_some_and(|v| v.as_deref() == Some("t")) {
                    return Ok(since.elapsed().as_secs_f64() * 1000.0);
                }
            }
            if since.elapsed() >= within {
                return Err(last);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[derive(Default)]
struct Figures {
    raw_secs: f64,
    raw_cluster: f64,
    null_secs: f64,
    null_cpu: f64,
    null_cluster: f64,
    sluice_secs: f64,
    sluice_cpu: f64,
    sluice_cluster: f64,
    walsender_cpu: f64,
    appender_cpu: f64,
    peak_mib: f64,
    /// From the log holding the backlog to the slot's confirmed_flush_lsn
    /// reaching its end: Ok(ms), or Err(the last confirmed_flush_lsn) when
    /// it did not within SLOT_WAIT (None: Sluice's run has not happened).
    slot: Option<Result<f64, String>>,
    /// Where the backlog ends (pg_current_wal_lsn() once it is written).
    end_lsn: String,
    tuned: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--null-reader") {
        let a = |k: usize| {
            args.get(i + k)
                .map(String::as_str)
                .expect("--null-reader URL SLOT PUBLICATION END_LSN")
        };
        let messages = null_reader::run(a(1), a(2), a(3), a(4));
        let cpu = cpu_secs(std::process::id()).unwrap_or(f64::NAN);
        println!("null-reader messages={messages} cpu_secs={cpu:.2}");
        return;
    }
    let rows: u64 = arg("--rows")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let runs: usize = arg("--runs")
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    let tx_rows: u64 = arg("--tx-rows")
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000)
        .max(1);
    // Single-row transactions come from 8 clients with as many each.
    let rows = if tx_rows == 1 { rows / 8 * 8 } else { rows };
    let separate_state = flag("--separate-state");
    let mut all = Vec::new();
    for run in 1..=runs {
        let f = run_once(rows, tx_rows, separate_state, run);
        let rate = |secs: f64| rows as f64 / secs;
        println!(
            "run {run}: pg_recvlogical {:.2} s ({:.0} rows/s, cluster CPU {:.2} s), \
             null reader {:.2} s ({:.0} rows/s, CPU {:.2} s, cluster CPU {:.2} s), \
             sluice {:.2} s ({:.0} rows/s, CPU {:.2} s, cluster CPU {:.2} s), \
             ratio sluice/null {:.2}, ratio sluice/pg_recvlogical {:.2}, \
             walsender CPU {:.2} s, appender backend CPU {:.2} s, sluice peak RSS {:.1} MiB",
            f.raw_secs,
            rate(f.raw_secs),
            f.raw_cluster,
            f.null_secs,
            rate(f.null_secs),
            f.null_cpu,
            f.null_cluster,
            f.sluice_secs,
            rate(f.sluice_secs),
            f.sluice_cpu,
            f.sluice_cluster,
            f.null_secs / f.sluice_secs,
            f.raw_secs / f.sluice_secs,
            f.walsender_cpu,
            f.appender_cpu,
            f.peak_mib
        );
        println!("run {run}: {}", show_slot(&f));
        all.push(f);
    }
    let mut vs_null: Vec<f64> = all.iter().map(|f| f.null_secs / f.sluice_secs).collect();
    vs_null.sort_by(f64::total_cmp);
    let mut ratios: Vec<f64> = all.iter().map(|f| f.raw_secs / f.sluice_secs).collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    let peak = all.iter().map(|f| f.peak_mib).fold(0.0, f64::max);
    println!("rows: {rows} in transactions of {tx_rows}, runs: {runs}");
    println!(
        "state database: {}",
        if separate_state {
            "separate database, same cluster"
        } else {
            "the source database"
        }
    );
    println!(
        "cluster settings: {}",
        if all[0].tuned {
            "shared_buffers=1GB, max_wal_size=8GB, checkpoint_timeout=30min"
        } else {
            "stock"
        }
    );
    println!(
        "ratio sluice/pg_recvlogical: median {median:.2}, min {:.2}, max {:.2}",
        ratios[0],
        ratios[ratios.len() - 1]
    );
    println!(
        "ratio sluice/null reader: median {:.2}, min {:.2}, max {:.2}",
        vs_null[vs_null.len() / 2],
        vs_null[0],
        vs_null[vs_null.len() - 1]
    );
    println!("{}", slot_summary(&all));
    println!("sluice peak RSS: {peak:.1} MiB, highest of all runs (target <= 256)");
}

/// One run's slot figure, as printed.
fn show_slot(f: &Figures) -> String {
    let end = &f.end_lsn;
    match &f.slot {
        Some(Ok(ms)) => format!(
            "slot confirmed_flush_lsn reached the backlog's end ({end}) {ms:.0} ms after sluice's log held the backlog (target <= 200 ms)"
        ),
        Some(Err(last)) => format!(
            "slot confirmed_flush_lsn did NOT reach the backlog's end ({end}) within {} s of sluice's log holding the backlog: timed out at {last} (target <= 200 ms)",
            SLOT_WAIT.as_secs()
        ),
        None => "slot confirmed_flush_lsn: not measured".to_owned(),
    }
}

/// The median (a timed-out run counts as slower than any other), min and
/// max over the runs of the slot figure.
fn slot_summary(all: &[Figures]) -> String {
    let mut ms: Vec<f64> = all
        .iter()
        .map(|f| match &f.slot {
            Some(Ok(ms)) => *ms,
            _ => f64::INFINITY,
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let show = |v: f64| {
        if v.is_finite() {
            format!("{v:.0} ms")
        } else {
            "timed out".to_owned()
        }
    };
    let timeouts = ms.iter().filter(|v| v.is_infinite()).count();
    format!(
        "slot confirmed_flush after the log caught up: median {}, min {}, max {} over {} runs{} (target <= 200 ms)",
        show(ms[ms.len() / 2]),
        show(ms[0]),
        show(ms[ms.len() - 1]),
        ms.len(),
        if timeouts > 0 {
            format!(", {timeouts} timed out after {} s", SLOT_WAIT.as_secs())
        } else {
            String::new()
        }
    )
}
