//! One large transaction, streamed (protocol 2+ with `streaming`) and not
//! (protocol 1), in one run, alternating: the time from its COMMIT until
//! the log holds its last event, and Sluice's peak RSS.
//!
//! Each round is a fresh cluster with the source database at
//! `logical_decoding_work_mem = 64kB`, the log in a database of its own,
//! and `sluice serve` as a child process. The transaction inserts `--rows`
//! rows (default 2,000,000) of the benchmarks' table in one INSERT; Sluice
//! is already streaming when it begins.
//!
//! Usage: scripts/bench-streaming.sh [--rows N] [--runs N]
//! (SLUICE_PG_BIN picks the server; streaming needs 14+, the figure in the
//! issue is for 16+.)

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{num_arg, peak_rss_kib, psql, status_kib, BENCH_TABLE};
use localpg::LocalPg;

struct Round {
    streaming: bool,
    proto: String,
    insert_secs: f64,
    commit_to_last_secs: f64,
    peak_mib: f64,
    /// The highest RSS sampled (every 100 ms) while the transaction ran.
    rss_at_commit_mib: f64,
}

fn round(rows: u64, streaming: bool) -> Round {
    let pg = LocalPg::start().expect("cluster");
    psql(&pg, "postgres", "CREATE DATABASE src");
    psql(&pg, "postgres", "CREATE DATABASE state");
    psql(&pg, "src", BENCH_TABLE);
    psql(
        &pg,
        "src",
        "ALTER DATABASE src SET logical_decoding_work_mem = '64kB'",
    );
    let exe = env!("CARGO_BIN_EXE_sluice");
    let mut cmd = Command::new(exe);
    cmd.arg("serve");
    common::sluice_env(
        &mut cmd,
        &pg.url("src"),
        Some(&pg.url("state")),
        "127.0.0.1:0",
    );
    cmd.env(
        "SLUICE_SOURCE_POSTGRES_STREAMING",
        if streaming { "true" } else { "false" },
    );
    let mut child = cmd.stdin(Stdio::null()).spawn().expect("spawn sluice");
    let pid = child.id();
    // Streaming: its walsender is up.
    let t = Instant::now();
    while psql(
        &pg,
        "postgres",
        "SELECT count(*) FROM pg_stat_replication WHERE application_name LIKE 'sluice/%'",
    )
    .trim()
        != "1"
    {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "sluice did not start"
        );
        if let Ok(Some(s)) = child.try_wait() {
            panic!("sluice exited: {s}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Sluice's resident set while the transaction runs, sampled.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut max = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                max = max.max(status_kib(pid, "VmRSS").unwrap_or(0));
                std::thread::sleep(Duration::from_millis(100));
            }
            max
        })
    };
    let stop_sampling = sampling.clone();
    let (insert_secs, committed) = rt.block_on(async {
        let c = sluice::log::connect(&pg.url("src")).await.expect("connect");
        let t = Instant::now();
        c.batch_execute(&format!(
            "BEGIN; INSERT INTO bench SELECT g, 'tenant' || (g % 16), md5(g::text), g % 100000 / 100.0, now(), jsonb_build_object('g', g) FROM generate_series(1, {rows}) g"
        ))
        .await
        .expect("insert");
        let insert_secs = t.elapsed().as_secs_f64();
        // The samples are of the running transaction only.
        stop_sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        c.batch_execute("COMMIT").await.expect("commit");
        (insert_secs, Instant::now())
    });
    let rss_at_commit = sampler.join().unwrap_or(0);
    let state_url = pg.url("state");
    let head = rt
        .block_on(sluice::log::connect(&state_url))
        .expect("state db");
    loop {
        let n: i64 = rt
            .block_on(head.query_one("SELECT coalesce(max(seq), 0) FROM sluice.events", &[]))
            .map(|r| r.get(0))
            .unwrap_or(0);
        if n as u64 >= rows {
            break;
        }
        if let Ok(Some(s)) = child.try_wait() {
            panic!("sluice exited: {s}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let commit_to_last = committed.elapsed().as_secs_f64();
    // Exact and contiguous: every row once, one transaction, no gap.
    let row = rt
        .block_on(head.query_one(
            "SELECT count(*), count(DISTINCT id), count(DISTINCT txid), max(seq) - min(seq) + 1
             FROM (SELECT seq, txid, (data::jsonb->'new'->>'id')::int8 AS id FROM sluice.event_log) e",
            &[],
        ))
        .expect("summary");
    let (n, ids, txids, span): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        (n, ids, txids, span),
        (rows as i64, rows as i64, 1, rows as i64),
        "the log holds the transaction exactly, contiguously"
    );
    let peak = peak_rss_kib(pid).unwrap_or(0);
    let proto = if streaming {
        let major: u32 = psql(&pg, "postgres", "SHOW server_version_num")
            .trim()
            .parse::<u32>()
            .unwrap_or(0)
            / 10_000;
        sluice::source::postgres::stream::protocol_version(major, true).to_string()
    } else {
        "1".to_owned()
    };
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    Round {
        streaming,
        proto,
        insert_secs,
        commit_to_last_secs: commit_to_last,
        peak_mib: peak as f64 / 1024.0,
        rss_at_commit_mib: rss_at_commit as f64 / 1024.0,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let rows = num_arg("--rows", 2_000_000);
    let runs = num_arg("--runs", 3) as usize;
    let version = LocalPg::start()
        .ok()
        .map(|pg| {
            psql(&pg, "postgres", "SHOW server_version")
                .trim()
                .to_owned()
        })
        .unwrap_or_default();
    println!(
        "one {rows}-row transaction, logical_decoding_work_mem=64kB, PostgreSQL {version}, {runs} rounds each, alternating"
    );
    let mut all = Vec::new();
    for run in 0..runs {
        // Alternate which goes first.
        let order = if run % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for streaming in order {
            let r = round(rows, streaming);
            println!(
                "  run {} {:<9} proto {}: insert {:6.1} s, COMMIT -> last event in the log {:6.2} s, max RSS while it ran {:5.0} MiB, peak {:5.0} MiB (exact, contiguous)",
                run + 1,
                if r.streaming { "streaming" } else { "whole" },
                r.proto,
                r.insert_secs,
                r.commit_to_last_secs,
                r.rss_at_commit_mib,
                r.peak_mib
            );
            all.push(r);
        }
    }
    let pick = |s: bool, f: fn(&Round) -> f64| {
        median(all.iter().filter(|r| r.streaming == s).map(f).collect())
    };
    let (ts, tw) = (
        pick(true, |r| r.commit_to_last_secs),
        pick(false, |r| r.commit_to_last_secs),
    );
    println!(
        "median COMMIT -> last event: streamed {ts:.2} s, whole (protocol 1) {tw:.2} s, ratio whole/streamed {:.2}",
        tw / ts
    );
    println!(
        "median peak RSS: streamed {:.0} MiB, whole {:.0} MiB",
        pick(true, |r| r.peak_mib),
        pick(false, |r| r.peak_mib)
    );
}
