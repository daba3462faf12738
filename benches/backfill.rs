//! Backfill benchmark: how fast a running `sluice serve` turns an existing
//! table into `row.snapshot` events, against `COPY (SELECT … ORDER BY id)
//! TO STDOUT` reading the same table raw into /dev/null (R), in turns on
//! the same cluster (`--rounds`, median reported); then how a running
//! backfill affects the latency of live changes (source commit → appended
//! to the log) compared with no backfill.
//!
//! `cargo bench --bench backfill -- [--rows N] [--chunk N] [--rate R]
//! [--rounds N] [--own-state-db]` (scripts/bench-backfill.sh installs
//! Postgres if needed and runs both log placements).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use localpg::LocalPg;

mod common;
use common::{cluster_cpu_secs, cpu_secs, free_port, num_arg, psql, Guard, BENCH_TABLE};

/// Commits one row per transaction into `live` at `rate` rows/s until
/// `stop`; returns how many.
fn live_writer(
    url: String,
    rate: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let c = sluice::log::connect(&url).await.expect("writer connects");
            let every = Duration::from_micros(1_000_000 / rate.max(1));
            let mut tick = tokio::time::interval(every);
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                c.execute("INSERT INTO live (tenant) VALUES ('acme')", &[])
                    .await
                    .expect("live insert");
                n += 1;
            }
            n
        })
    })
}

/// p50, p99 and max (ms) of commit → appended for `live` rows appended
/// after `from_seq` (and up to `to_seq`).
fn latency(pg: &LocalPg, db: &str, from_seq: i64, to_seq: i64) -> String {
    psql(
        pg,
        db,
        &format!(
            "SELECT count(*) || ' rows: p50 ' || round((percentile_cont(0.5) WITHIN GROUP (ORDER BY d))::numeric, 2)
                 || ' ms, p99 ' || round((percentile_cont(0.99) WITHIN GROUP (ORDER BY d))::numeric, 2)
                 || ' ms, max ' || round(max(d)::numeric, 2) || ' ms'
             FROM (SELECT extract(epoch FROM appended_at - commit_time) * 1000 AS d
                   FROM sluice.events WHERE seq > {from_seq} AND seq <= {to_seq}
                   AND topic = 'tables/public.live/insert') x"
        ),
    )
    .trim()
    .to_owned()
}

fn head(pg: &LocalPg, db: &str) -> i64 {
    psql(pg, db, "SELECT coalesce(max(seq), 0) FROM sluice.events")
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Runs one backfill of `public.bench` to its end; its duration. Created
/// and polled over one connection: a new psql process and backend every
/// poll would take CPU from the backfill being measured.
fn backfill(state_url: &str, chunk: u64) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let c = sluice::log::connect(state_url)
            .await
            .expect("bench connects to the state database");
        let t = Instant::now();
        let id: i64 = c
            .query_one(
                "INSERT INTO sluice.backfills (table_name, chunk_size, start_seq)
                 VALUES ('public.bench', $1, (SELECT coalesce(max(seq), 0) FROM sluice.events))
                 RETURNING id",
                &[&(chunk as i32)],
            )
            .await
            .expect("create backfill")
            .get(0);
        loop {
            let status: String = c
                .query_one("SELECT status FROM sluice.backfills WHERE id = $1", &[&id])
                .await
                .expect("backfill status")
                .get(0);
            match status.as_str() {
                "done" => break,
                "running" => {}
                other => panic!("backfill {other}"),
            }
            assert!(t.elapsed() < Duration::from_secs(3600), "backfill too slow");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        t.elapsed().as_secs_f64()
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    let rows = num_arg("--rows", 1_000_000);
    let chunk = num_arg("--chunk", 10_000);
    let rate = num_arg("--rate", 200);
    let rounds = num_arg("--rounds", 3).max(1);
    // The log in a database of its own (state.url) rather than in the
    // captured one: logical decoding then never decodes the log's writes.
    let own_state = common::flag("--own-state-db");
    eprintln!("starting a throwaway cluster…");
    let pg = LocalPg::start().expect("start Postgres");
    let db = pg.create_database("bench").expect("db");
    let state_db = if own_state {
        pg.create_database("sluice_state").expect("state db")
    } else {
        db.clone()
    };
    psql(
        &pg,
        &db,
        &format!(
            "{BENCH_TABLE}
             CREATE TABLE live (id bigserial PRIMARY KEY, tenant text NOT NULL);
             ALTER TABLE live REPLICA IDENTITY FULL;"
        ),
    );
    eprintln!("filling {rows} rows…");
    psql(
        &pg,
        &db,
        &format!(
            "INSERT INTO bench SELECT g, 't' || (g % 50), repeat('n', 40) || g, g * 1.25,
                    now() - g * interval '1 second', jsonb_build_object('k', g, 'tags', jsonb_build_array('a', 'b'))
             FROM generate_series(1, {rows}) g;
             VACUUM ANALYZE bench;"
        ),
    );

    // R: the same rows in key order, read raw by psql into /dev/null.
    let raw = || {
        let t = Instant::now();
        let status = Command::new(pg.client_bin_dir().join("psql"))
            .args([
                "-X",
                "-q",
                "-d",
                &pg.url(&db),
                "-c",
                "COPY (SELECT * FROM bench ORDER BY id) TO STDOUT",
            ])
            .stdout(Stdio::null())
            .status()
            .expect("psql");
        assert!(status.success());
        t.elapsed().as_secs_f64()
    };
    raw();

    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .arg("serve")
        .env("SLUICE_SOURCE_POSTGRES_URL", pg.url(&db))
        .env(
            "SLUICE_SOURCE_POSTGRES_TABLES",
            r#"[{table="public.bench", tenant_column="tenant"}, {table="public.live", tenant_column="tenant"}]"#,
        )
        .env("SLUICE_HTTP_LISTEN", format!("127.0.0.1:{port}"))
        .env("SLUICE_LOG", "warn");
    if own_state {
        command.env("SLUICE_STATE_URL", pg.url(&state_db));
    }
    let _sluice = Guard {
        child: command.stdin(Stdio::null()).spawn().expect("spawn sluice"),
        name: "sluice",
        grace: Duration::from_secs(30),
    };
    // Streaming once the slot is active.
    let start = Instant::now();
    while psql(
        &pg,
        &db,
        "SELECT count(*) FROM pg_replication_slots WHERE active",
    )
    .trim()
        != "1"
    {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "sluice never streamed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Throughput: R and a backfill in turns, no other load.
    let mut ratios = Vec::new();
    let pid = _sluice.child.id();
    for round in 1..=rounds {
        let pg_cpu = || cluster_cpu_secs(pg.data_dir()).unwrap_or(0.0);
        let pg_before = pg_cpu();
        let raw_secs = raw();
        let raw_pg = pg_cpu() - pg_before;
        let cpu_before = cpu_secs(pid).unwrap_or(0.0);
        let pg_before = pg_cpu();
        let secs = backfill(&pg.url(&state_db), chunk);
        let cpu = cpu_secs(pid).unwrap_or(0.0) - cpu_before;
        let backfill_pg = pg_cpu() - pg_before;
        let (rate_r, rate_s) = (rows as f64 / raw_secs, rows as f64 / secs);
        println!(
            "round {round}: raw COPY read (R) {raw_secs:.2} s = {rate_r:.0} rows/s (Postgres CPU ~{raw_pg:.2} s); \
             sluice backfill {secs:.2} s = {rate_s:.0} rows/s (sluice CPU {cpu:.2} s, Postgres CPU ~{backfill_pg:.2} s); ratio {:.2}",
            rate_s / rate_r
        );
        ratios.push(rate_s / rate_r);
    }
    let all: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    let med = median(&mut ratios);
    println!(
        "rows: {rows}, chunk: {chunk}, log in {}: snapshot rate / raw read rate, median of {rounds}: {med:.2} (rounds: {}; target >= 0.5)",
        if own_state { "its own database" } else { "the captured database" },
        all.join(", ")
    );

    // Live changes alone, then with a backfill running.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let before = head(&pg, &state_db);
    let w = live_writer(pg.url(&db), rate, stop.clone());
    std::thread::sleep(Duration::from_secs(10));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = w.join().expect("writer");
    std::thread::sleep(Duration::from_secs(1));
    let quiet_to = head(&pg, &state_db);
    let quiet = latency(&pg, &state_db, before, quiet_to);
    eprintln!("{n} live rows at {rate}/s without a backfill: {quiet}");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = live_writer(pg.url(&db), rate, stop.clone());
    let secs = backfill(&pg.url(&state_db), chunk);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = w.join().expect("writer");
    std::thread::sleep(Duration::from_secs(1));
    let busy = latency(&pg, &state_db, quiet_to, head(&pg, &state_db));
    println!("live changes, commit to appended, {rate}/s: without a backfill {quiet}");
    println!(
        "live changes, commit to appended, {rate}/s: during a backfill ({secs:.2} s, {n} live rows) {busy}"
    );
}
