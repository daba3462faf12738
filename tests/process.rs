//! The `sluice` binary as an operator runs it: crash safety under SIGKILL at
//! random moments, configuration errors, `check`, and `tail`.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::proc::{
    free_port, leader_and_standby, ready_as, serve, serve_on, sluice, write_config,
};
use common::receiver::{Answer, Receiver};
use common::{all_events, wait_for_events, TestDb};
use rand::{Rng, SeedableRng};
use serde_json::Value;

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run sluice")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_random_points_the_log_holds_every_commit_exactly_once() {
    let seed: u64 = std::env::var("SLUICE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("crash test seed {seed} (rerun with SLUICE_TEST_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let db = TestDb::new("crash");
    let c = db.client().await;
    c.batch_execute("CREATE TABLE numbers (n int PRIMARY KEY, tenant text NOT NULL); ALTER TABLE numbers REPLICA IDENTITY FULL")
        .await
        .expect("ddl");
    let dir = tempfile::tempdir().expect("tempdir");
    // Small batches so kills land between the appends of one transaction.
    let config = write_config(
        dir.path(),
        &db,
        "public.numbers",
        "tenant",
        "[appender]\nmax_batch_events = 300\n",
    );
    let out = run(sluice().arg("--config").arg(&config).arg("setup"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The writer commits numbered rows in transactions of varying size and
    // records a number only once its COMMIT succeeded.
    let committed: Arc<Mutex<Vec<i32>>> = Arc::default();
    // The first number of each committed transaction, in commit order.
    let tx_starts: Arc<Mutex<Vec<i32>>> = Arc::default();
    let stop_writer = tokio_util::sync::CancellationToken::new();
    let writer = {
        let committed = committed.clone();
        let tx_starts = tx_starts.clone();
        let stop = stop_writer.clone();
        let w = db.client().await;
        let mut wrng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
        tokio::spawn(async move {
            let mut next = 1;
            while !stop.is_cancelled() {
                let size = if wrng.gen_ratio(1, 15) {
                    wrng.gen_range(500..3000)
                } else {
                    wrng.gen_range(1..8)
                };
                let sql = format!(
                    "INSERT INTO numbers SELECT g, 't' || (g % 3) FROM generate_series({next}, {}) g",
                    next + size - 1
                );
                w.batch_execute(&sql).await.expect("writer insert");
                committed.lock().expect("lock").extend(next..next + size);
                tx_starts.lock().expect("lock").push(next);
                next += size;
                tokio::time::sleep(Duration::from_millis(wrng.gen_range(0..20))).await;
            }
        })
    };

    let spawn = || serve(&config);
    for round in 0..8 {
        let child = spawn();
        let alive_ms = rng.gen_range(300..2500);
        tokio::time::sleep(Duration::from_millis(alive_ms)).await;
        drop(child); // SIGKILL
        println!("round {round}: killed after {alive_ms} ms");
    }
    stop_writer.cancel();
    writer.await.expect("writer");
    let expected = committed.lock().expect("lock").clone();

    let child = spawn();
    wait_for_events(&c, expected.len()).await;
    drop(child);

    let events = all_events(&c).await;
    let got: Vec<i32> = events
        .iter()
        .map(|e| e["data"]["new"]["n"].as_i64().expect("n") as i32)
        .collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "events vs committed rows (duplicates or losses)"
    );
    // The log is commit order: transactions one after another, and in
    // each, every tenant's rows in statement order (a transaction's
    // tenants are grouped: appender.group_by_tenant).
    let tx_starts = tx_starts.lock().expect("lock").clone();
    let tx_of = |n: i32| tx_starts.partition_point(|&s| s <= n);
    assert!(
        got.windows(2).all(|w| tx_of(w[0]) <= tx_of(w[1])),
        "log order differs from the transactions' commit order"
    );
    for tenant in 0..3 {
        let of_tenant =
            |v: &[i32]| -> Vec<i32> { v.iter().copied().filter(|n| n % 3 == tenant).collect() };
        assert!(
            of_tenant(&got) == of_tenant(&expected),
            "tenant t{tenant}'s events differ from its commits (order, duplicates or losses)"
        );
    }
    let seqs: Vec<i64> = events.iter().filter_map(|e| e["seq"].as_i64()).collect();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]));
}

#[test]
fn config_errors_name_the_key_and_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[source.postgres]\nurl = \"postgres://u@127.0.0.1:1/x\"\ntables = [{ table = \"public.orders\" }]\n",
    )
    .expect("write");
    let out = run(sluice().arg("--config").arg(&path).arg("check"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("source.postgres.tables[0]") && stderr.contains("tenant_column"),
        "{stderr}"
    );

    let out = run(sluice()
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .arg("serve"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));

    let out = run(sluice()
        .arg("serve")
        .env("SLUICE_APPENDER_MAX_BATCH_EVENTS", "many"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("SLUICE_APPENDER_MAX_BATCH_EVENTS"),
        "{stderr}"
    );
}

#[test]
fn check_reports_each_problem_with_its_fix() {
    let db = TestDb::new("check");
    common::cluster()
        .psql(&db.name, "CREATE TABLE acct (id int PRIMARY KEY, org text)")
        .expect("ddl");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &db, "public.acct", "org", "");
    let out = run(sluice().arg("--config").arg(&config).arg("check"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("[ok  ] wal_level: logical"), "{stdout}");
    // The server's version and what Sluice uses of it.
    let major: u32 = common::cluster()
        .psql("postgres", "SHOW server_version_num")
        .expect("version")
        .trim()
        .parse::<u32>()
        .expect("a number")
        / 10_000;
    let proto = sluice::source::postgres::stream::protocol_version(major, true);
    assert!(
        stdout.contains(&format!("[ok  ] server: PostgreSQL {major}"))
            && stdout.contains(&format!(
                "pgoutput protocol {proto}, large transactions streamed while they run"
            )),
        "{stdout}"
    );
    assert_eq!(stdout.contains("failover slots"), major >= 17, "{stdout}");
    assert!(
        stdout.contains("publication sluice_main: does not exist"),
        "{stdout}"
    );
    assert!(stdout.contains("deletes cannot be attributed"), "{stdout}");
    assert!(
        stdout.contains("ALTER TABLE \"public\".\"acct\" REPLICA IDENTITY FULL"),
        "{stdout}"
    );

    common::cluster()
        .psql(&db.name, "ALTER TABLE acct REPLICA IDENTITY FULL")
        .expect("fix");
    let out = run(sluice().arg("--config").arg(&config).arg("setup"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(sluice().arg("--config").arg(&config).arg("setup"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("already set up"));
    let out = run(sluice().arg("--config").arg(&config).arg("check"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_one_tenants_ndjson_and_resumes_from_a_seq() {
    let db = TestDb::new("tail");
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, tenant text); ALTER TABLE t REPLICA IDENTITY FULL",
    )
    .await
    .expect("ddl");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &db, "public.t", "tenant", "");
    // The slot must exist (past its consistent point) before the rows are
    // written, or they are not captured: set up first, then serve.
    let out = run(sluice().arg("--config").arg(&config).arg("setup"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = serve(&config);
    c.batch_execute("INSERT INTO t SELECT g, CASE WHEN g % 2 = 0 THEN 'acme' ELSE 'globex' END FROM generate_series(1, 10) g")
        .await
        .expect("writes");
    wait_for_events(&c, 10).await;
    drop(server);

    let out = run(sluice()
        .arg("--config")
        .arg(&config)
        .args(["tail", "--tenant", "acme"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON envelope"))
        .collect();
    assert_eq!(lines.len(), 5);
    assert!(lines.iter().all(|e| e["tenant"] == "acme"));
    let third_seq = lines[2]["seq"].as_i64().expect("seq");
    let out = run(sluice().arg("--config").arg(&config).args([
        "tail",
        "--tenant",
        "acme",
        "--from",
        &third_seq.to_string(),
    ]));
    let resumed: Vec<&str> = std::str::from_utf8(&out.stdout)
        .expect("utf8")
        .lines()
        .collect();
    assert_eq!(resumed.len(), 3);
    let all = run(sluice().arg("--config").arg(&config).arg("tail"));
    assert_eq!(String::from_utf8_lossy(&all.stdout).lines().count(), 10);
}

#[test]
fn keys_cli_creates_lists_and_revokes() {
    let db = TestDb::new("keyscli");
    let dir = tempfile::tempdir().expect("tempdir");
    common::cluster()
        .psql(&db.name, "CREATE TABLE t (id int PRIMARY KEY, tenant text)")
        .expect("ddl");
    let config = write_config(dir.path(), &db, "public.t", "tenant", "");
    let out = run(sluice().arg("--config").arg(&config).args([
        "keys", "create", "--tenant", "acme", "--role", "anon", "--name", "web",
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = stdout
        .lines()
        .find(|l| l.starts_with("sk_anon_"))
        .expect("the key is printed once");
    let out = run(sluice().arg("--config").arg(&config).args(["keys", "list"]));
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        listing.contains(&key[..12]) && listing.contains("acme") && listing.contains("web"),
        "{listing}"
    );
    assert!(
        !listing.contains(key),
        "a listing never shows the key itself"
    );
    let id = listing
        .lines()
        .find(|l| l.contains(&key[..12]))
        .and_then(|l| l.split_whitespace().next())
        .expect("id column")
        .to_owned();
    let out = run(sluice()
        .arg("--config")
        .arg(&config)
        .args(["keys", "revoke", &id]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not a built-in role and not shaped like a custom one.
    let out = run(sluice()
        .arg("--config")
        .arg(&config)
        .args(["keys", "create", "--tenant", "acme", "--role", "Owner"]));
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(sluice()
        .arg("--config")
        .arg(&config)
        .args(["keys", "create", "--role", "anon"]));
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn keys_cli_creates_keys_with_claims_and_custom_roles() {
    let db = TestDb::new("keyscli_claims");
    let dir = tempfile::tempdir().expect("tempdir");
    common::cluster()
        .psql(&db.name, "CREATE TABLE t (id int PRIMARY KEY, tenant text)")
        .expect("ddl");
    // Custom roles are those the access policies name.
    let config = write_config(
        dir.path(),
        &db,
        "public.t",
        "tenant",
        "[[policies]]\nrole = \"member\"\ntable = \"public.t\"\n",
    );
    let keys = |args: &[&str]| run(sluice().arg("--config").arg(&config).arg("keys").args(args));
    let out = keys(&[
        "create",
        "--tenant",
        "acme",
        "--role",
        "member",
        "--claim",
        "sub=u_42",
        "--claim",
        "teams=t1,t2",
        "--claim",
        "note=",
        "--claim-json",
        "level=3",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // As stored: jsonb orders an object's keys (shorter first).
    let expected_claims = r#"{"sub":"u_42","note":"","level":3,"teams":["t1","t2"]}"#;
    assert!(
        stdout.starts_with("created member (anon) key ")
            && stdout.contains(&format!("with claims {expected_claims}")),
        "{stdout}"
    );
    let key = stdout
        .lines()
        .find(|l| l.starts_with("sk_anon_"))
        .expect("a custom-role key is an anon key");
    let listing = String::from_utf8_lossy(&keys(&["list", "--tenant", "acme"]).stdout).to_string();
    let row = listing
        .lines()
        .find(|l| l.contains(&key[..12]))
        .unwrap_or_else(|| panic!("{listing}"));
    assert!(
        row.contains("member (anon)") && row.ends_with(expected_claims),
        "{listing}"
    );
    assert!(listing
        .lines()
        .next()
        .is_some_and(|h| h.ends_with("claims")));

    for (args, message) in [
        (
            &["--role", "anon", "--claim", "sub"][..],
            r#"--claim "sub": expected name=value"#,
        ),
        (
            &["--role", "anon", "--claim", "a b=1"][..],
            r#"claim name "a b" contains ' '"#,
        ),
        (
            &["--role", "anon", "--claim-json", "n={x"][..],
            "--claim-json n: not JSON",
        ),
        (
            &[
                "--role",
                "anon",
                "--claim",
                "sub=a",
                "--claim-json",
                "sub=1",
            ][..],
            r#"claim "sub" is given twice"#,
        ),
        (
            &["--role", "viewer"][..],
            r#"--role "viewer": no access policy names this custom role (the config's policies name: member)"#,
        ),
    ] {
        let out = keys(&[&["create", "--tenant", "acme"][..], args].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

/// Webhooks survive crashes: SIGKILLed while deliveries are in flight and
/// events are being appended, then restarted, Sluice still delivers every
/// matching committed event at least once (the outbox rows commit with the
/// events; an attempt cut short is retried when its lease runs out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_delivery_every_matching_event_is_still_delivered() {
    let seed: u64 = std::env::var("SLUICE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("webhook crash test seed {seed} (rerun with SLUICE_TEST_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let db = TestDb::new("wh_crash");
    let c = db.client().await;
    c.batch_execute("CREATE TABLE numbers (n int PRIMARY KEY, tenant text NOT NULL); ALTER TABLE numbers REPLICA IDENTITY FULL")
        .await
        .expect("ddl");
    // Answers take a while, so kills land on requests in flight.
    let rx = Receiver::start(Arc::new(|r, _| {
        let n = serde_json::from_str::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v["data"]["new"]["n"].as_u64())
            .unwrap_or(0);
        Answer::Slow(Duration::from_millis(n % 40), 200)
    }))
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &db,
        "public.numbers",
        "tenant",
        "[appender]\nmax_batch_events = 200\n\n[webhooks]\nallow_private_addresses = true\nretry_schedule = \"0s,200ms\"\ntimeout_ms = 1000\npoll_interval_ms = 50\nendpoint_concurrency = 4\n",
    );
    let out = run(sluice().arg("--config").arg(&config).arg("setup"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(sluice().arg("--config").arg(&config).arg("migrate"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.execute(
        "INSERT INTO sluice.webhooks (id, tenant, url, max_attempts, secret) VALUES ('wh_crash', 't0', $1, 100, $2)",
        &[&rx.url("/crash"), &sluice::webhooks::sign::generate_secret()],
    )
    .await
    .expect("endpoint");

    let committed: Arc<Mutex<Vec<i32>>> = Arc::default();
    let stop_writer = tokio_util::sync::CancellationToken::new();
    let writer = {
        let committed = committed.clone();
        let stop = stop_writer.clone();
        let w = db.client().await;
        let mut wrng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
        tokio::spawn(async move {
            let mut next = 1;
            while !stop.is_cancelled() {
                let size = wrng.gen_range(1..20);
                let sql = format!(
                    "INSERT INTO numbers SELECT g, 't' || (g % 2) FROM generate_series({next}, {}) g",
                    next + size - 1
                );
                w.batch_execute(&sql).await.expect("writer insert");
                committed.lock().expect("lock").extend(next..next + size);
                next += size;
                tokio::time::sleep(Duration::from_millis(wrng.gen_range(5..30))).await;
            }
        })
    };
    for round in 0..5 {
        let child = serve(&config);
        let alive_ms = rng.gen_range(500..2500);
        tokio::time::sleep(Duration::from_millis(alive_ms)).await;
        drop(child); // SIGKILL
        println!(
            "round {round}: killed after {alive_ms} ms, {} requests so far",
            rx.received().len()
        );
    }
    stop_writer.cancel();
    writer.await.expect("writer");
    let expected: BTreeSet<i64> = committed
        .lock()
        .expect("lock")
        .iter()
        .filter(|n| *n % 2 == 0)
        .map(|n| i64::from(*n))
        .collect();
    let child = serve(&config);
    let delivered_ns = |rx: &Receiver| -> BTreeSet<i64> {
        rx.delivered()
            .iter()
            .filter_map(|r| {
                serde_json::from_str::<serde_json::Value>(&r.body)
                    .ok()
                    .and_then(|v| v["data"]["new"]["n"].as_i64())
            })
            .collect()
    };
    let start = std::time::Instant::now();
    loop {
        let got = delivered_ns(&rx);
        if expected.is_subset(&got) {
            assert!(
                got.iter().all(|n| n % 2 == 0),
                "only t0's events reach t0's endpoint"
            );
            break;
        }
        let missing: Vec<_> = expected.difference(&got).take(10).collect();
        assert!(
            start.elapsed() < common::PATIENCE,
            "{} of {} matching events never delivered, e.g. {missing:?}",
            expected.difference(&got).count(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(child);
    let dups = rx.delivered().len() - delivered_ns(&rx).len();
    println!(
        "{} events delivered, {dups} duplicate deliveries after kills (at least once)",
        expected.len()
    );
}

/// Commits numbered rows of tenant `acme` until stopped; returns what
/// committed.
fn numbers_writer(
    client: tokio_postgres::Client,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Vec<i32>> {
    tokio::spawn(async move {
        let mut committed = Vec::new();
        let mut next = 1;
        while !stop.is_cancelled() {
            let size = 1 + next % 7;
            let sql = format!(
                "INSERT INTO numbers SELECT g, 'acme' FROM generate_series({next}, {}) g",
                next + size - 1
            );
            client.batch_execute(&sql).await.expect("writer insert");
            committed.extend(next..next + size);
            next += size;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        committed
    })
}

/// The log holds exactly `expected`, in commit order.
async fn log_holds_exactly(c: &tokio_postgres::Client, expected: &[i32]) -> Vec<Value> {
    let events = wait_for_events(c, expected.len()).await;
    let got: Vec<i32> = events
        .iter()
        .map(|e| e["data"]["new"]["n"].as_i64().expect("n") as i32)
        .collect();
    assert_eq!(got.len(), expected.len(), "duplicates or losses");
    assert!(got == expected, "log order differs from commit order");
    events
}

/// Reads SSE events until `n` row events arrived (or a `shutdown` frame);
/// returns their seqs and the shutdown frame's data, if one came.
async fn read_sse(s: &mut common::http::Stream, n: usize, seqs: &mut Vec<i64>) -> Option<Value> {
    while seqs.len() < n {
        let e = s.expect_event(common::PATIENCE).await;
        match e.event.as_deref() {
            Some("shutdown") => {
                return Some(serde_json::from_str(&e.data).expect("shutdown data"));
            }
            Some("row.inserted") => {
                seqs.push(e.id.expect("id").parse().expect("seq"));
            }
            other => panic!("unexpected frame {other:?}: {}", e.data),
        }
    }
    None
}

const NUMBERS: &str = "CREATE TABLE numbers (n int PRIMARY KEY, tenant text NOT NULL);
                       ALTER TABLE numbers REPLICA IDENTITY FULL";

async fn anon_key(db: &TestDb) -> String {
    let c = db.client().await;
    sluice::auth::keys::create_key(
        &c,
        Some(&sluice::event::TenantId::new("acme").expect("valid")),
        sluice::auth::Role::Anon,
        None,
        &serde_json::Map::new(),
        None,
    )
    .await
    .expect("create key")
    .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_flushes_tells_subscribers_where_to_resume_and_exits_0() {
    let db = TestDb::new("sigterm");
    let c = db.client().await;
    c.batch_execute(NUMBERS).await.expect("ddl");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &db, "public.numbers", "tenant", "");
    let port = free_port();
    let mut child = serve_on(&config, port);
    let addr = ready_as(port, "leader").await;
    let key = anon_key(&db).await;
    let path = format!("/v1/events/subscribe?apikey={key}");
    let mut sse = common::http::stream(addr, &path, &[]).await;

    let stop = tokio_util::sync::CancellationToken::new();
    let writer = numbers_writer(db.client().await, stop.clone());
    let mut seqs = Vec::new();
    // Under load: at least 200 events delivered before the signal.
    assert!(read_sse(&mut sse, 200, &mut seqs).await.is_none());
    let pid = child.0.id().to_string();
    let kill = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(kill.success());
    // The stream ends with its resume position, after everything it sent.
    let shutdown = read_sse(&mut sse, usize::MAX, &mut seqs)
        .await
        .expect("a shutdown frame");
    let resume_from = shutdown["resume_from"].as_i64().expect("resume_from");
    assert_eq!(Some(resume_from - 1), seqs.last().copied(), "{shutdown}");
    // The process exits 0, well within its flush deadline.
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "still running 60 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    stop.cancel();
    let committed = writer.await.expect("writer");

    // A new process appends the rest, once; the subscriber resumes where
    // it was told and gets every event exactly once.
    let port = free_port();
    let _child = serve_on(&config, port);
    let addr = ready_as(port, "leader").await;
    let events = log_holds_exactly(&c, &committed).await;
    let mut resumed = common::http::stream(addr, &format!("{path}&from={resume_from}"), &[]).await;
    assert!(read_sse(&mut resumed, events.len(), &mut seqs)
        .await
        .is_none());
    let all: Vec<i64> = events.iter().filter_map(|e| e["seq"].as_i64()).collect();
    assert_eq!(seqs, all, "the subscriber saw every event once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_the_standby_takes_over_and_its_subscribers_miss_nothing() {
    let db = TestDb::new("failover");
    let c = db.client().await;
    c.batch_execute(NUMBERS).await.expect("ddl");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &db, "public.numbers", "tenant", "");
    let (leader, a, _standby, b) = leader_and_standby(&config).await;
    let key = anon_key(&db).await;
    let path = format!("/v1/events/subscribe?apikey={key}");
    // One subscriber on each; the standby's is fed from the log.
    let mut on_standby = common::http::stream(b, &path, &[]).await;
    let mut on_leader = common::http::stream(a, &path, &[]).await;

    let stop = tokio_util::sync::CancellationToken::new();
    let writer = numbers_writer(db.client().await, stop.clone());
    let mut seen_b = Vec::new();
    assert!(read_sse(&mut on_standby, 200, &mut seen_b).await.is_none());
    let mut seen_a = Vec::new();
    assert!(read_sse(&mut on_leader, 1, &mut seen_a).await.is_none());
    drop(leader); // SIGKILL, under load
    ready_as(b.port(), "leader").await;
    // Keep writing through the new leader for a while.
    let head = all_events(&c).await.len();
    let start = std::time::Instant::now();
    while all_events(&c).await.len() < head + 300 {
        assert!(
            start.elapsed() < common::PATIENCE,
            "the new leader appends nothing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let committed = writer.await.expect("writer");
    let events = log_holds_exactly(&c, &committed).await;
    // The standby's subscriber never reconnected and missed nothing.
    assert!(read_sse(&mut on_standby, events.len(), &mut seen_b)
        .await
        .is_none());
    let all: Vec<i64> = events.iter().filter_map(|e| e["seq"].as_i64()).collect();
    assert_eq!(
        seen_b, all,
        "every event once, in order, across the failover"
    );
}
