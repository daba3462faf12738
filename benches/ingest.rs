//! Ingest benchmark: how fast Sluice drains a replication backlog into its
//! log, against `pg_recvlogical` draining the same backlog to /dev/null
//! (the raw limit R), on the same machine in the same run.
//!
//! `cargo bench --bench ingest -- [--rows N] [--runs N] [--separate-state] [--tuned]`
//! (`BENCH_SLUICE_<KEY>=v` passes `SLUICE_<KEY>=v` to the measured sluice;
//! `SLUICE_BENCH_EXE=path` measures that binary instead of this tree's, e.g.
//! an earlier commit's release build, to compare two versions run by run.)
//! (scripts/bench-ingest.sh installs Postgres if needed and runs this).
//! Prints rows/s for both, the ratio Sluice/R (target ≥ 0.6), and Sluice's
//! peak RSS (target ≤ 256 MiB whatever N is).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use localpg::LocalPg;

mod common;
use common::{arg, cpu_secs, flag, peak_rss_kib, psql, BENCH_TABLE};

/// One complete run on a fresh cluster.
fn run_once(rows: u64, separate_state: bool) -> Figures {
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
             SELECT pg_create_logical_replication_slot('sluice_slot', 'pgoutput');"
        ),
    );
    let state_db = if separate_state {
        pg.create_database("state").expect("state db")
    } else {
        db.clone()
    };

    eprintln!("building a backlog of {rows} rows…");
    let chunk = 10_000u64;
    let mut first = 1u64;
    while first <= rows {
        let last = (first + chunk - 1).min(rows);
        psql(
            &pg,
            &db,
            &format!(
                "INSERT INTO bench SELECT g, 'tenant' || (g % 100), md5(g::text) || md5((g + 1)::text),
                        (g % 100000) / 100.0, now(), jsonb_build_object('k', g, 'tag', 'x' || (g % 7), 'ok', true)
                 FROM generate_series({first}, {last}) g"
            ),
        );
        first = last + 1;
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

    // Both phases start right after a checkpoint, so neither pays for one
    // the other caused.
    psql(&pg, &db, "CHECKPOINT");
    // (a) the raw limit: pg_recvlogical decodes with pgoutput into /dev/null.
    let recv = pg.bin_dir().join("pg_recvlogical");
    let t = Instant::now();
    let status = Command::new(&recv)
        .args([
            "-d",
            &pg.url(&db),
            "--slot",
            "raw_slot",
            "--start",
            "--no-loop",
            "-f",
            "/dev/null",
        ])
        .args([
            "--endpos",
            &end_lsn,
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=bench_pub",
        ])
        .stdin(Stdio::null())
        .status()
        .expect("run pg_recvlogical");
    let raw_secs = t.elapsed().as_secs_f64();
    assert!(status.success(), "pg_recvlogical failed: {status}");

    psql(&pg, &db, "CHECKPOINT");
    // (b) Sluice drains the same backlog into its log.
    let exe =
        std::env::var("SLUICE_BENCH_EXE").unwrap_or_else(|_| env!("CARGO_BIN_EXE_sluice").into());
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
        &pg.url(&db),
        Some(&pg.url(&state_db)),
        "127.0.0.1:0",
    );
    let mut child = command.stdin(Stdio::null()).spawn().expect("spawn sluice");
    let pid = child.id();
    let mut peak = 0;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
        let n: u64 = pg
            .psql(&state_db, "SELECT coalesce(max(seq), 0) FROM sluice.events")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if n >= rows {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("sluice exited early: {status}");
        }
    }
    let sluice_secs = t.elapsed().as_secs_f64();
    peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
    let sluice_cpu = cpu_secs(pid).unwrap_or(0.0);
    let backend_cpu = |app: &str, db: &str| -> f64 {
        pg.psql(
            db,
            &format!("SELECT pid FROM pg_stat_activity WHERE application_name = '{app}'"),
        )
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
        .and_then(cpu_secs)
        .unwrap_or(f64::NAN)
    };
    let walsender_cpu = backend_cpu("sluice/main", &db);
    let appender_cpu = backend_cpu("sluice-appender", &state_db);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();

    Figures {
        raw_secs,
        sluice_secs,
        sluice_cpu,
        walsender_cpu,
        appender_cpu,
        peak_mib: peak as f64 / 1024.0,
        tuned,
    }
}

struct Figures {
    raw_secs: f64,
    sluice_secs: f64,
    sluice_cpu: f64,
    walsender_cpu: f64,
    appender_cpu: f64,
    peak_mib: f64,
    tuned: bool,
}

fn main() {
    let rows: u64 = arg("--rows")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let runs: usize = arg("--runs")
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    let separate_state = flag("--separate-state");
    let mut all = Vec::new();
    for run in 1..=runs {
        let f = run_once(rows, separate_state);
        let (raw_rate, sluice_rate) = (rows as f64 / f.raw_secs, rows as f64 / f.sluice_secs);
        println!(
            "run {run}: pg_recvlogical {:.2} s ({raw_rate:.0} rows/s), sluice {:.2} s ({sluice_rate:.0} rows/s), \
             ratio {:.2}, sluice CPU {:.2} s, walsender CPU {:.2} s, appender backend CPU {:.2} s, sluice peak RSS {:.1} MiB",
            f.raw_secs,
            f.sluice_secs,
            sluice_rate / raw_rate,
            f.sluice_cpu,
            f.walsender_cpu,
            f.appender_cpu,
            f.peak_mib
        );
        all.push(f);
    }
    let mut ratios: Vec<f64> = all.iter().map(|f| f.raw_secs / f.sluice_secs).collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    let peak = all.iter().map(|f| f.peak_mib).fold(0.0, f64::max);
    println!("rows: {rows}, runs: {runs}");
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
        "ratio sluice/R: median {median:.2}, min {:.2}, max {:.2} (target >= 0.6)",
        ratios[0],
        ratios[ratios.len() - 1]
    );
    println!("sluice peak RSS: {peak:.1} MiB, highest of all runs (target <= 256)");
}
