//! Policy routing benchmark (issue 18): N SSE subscribers of one tenant,
//! each a different user (`sub` = u_0 … u_{N-1}) under the row policy
//! `new.owner_id = claim sub`, so each change is for one subscriber only.
//! Measures whether routing a change costs the same with 10 and with N
//! subscribers open (the hub indexing subscribers by the claim value the
//! predicate compares, instead of evaluating every subscriber), checks that
//! every subscriber received exactly its own rows, and measures commit →
//! receipt latency at a steady rate with the N subscribers open.
//!
//! `cargo bench --bench sse_policy -- [--subscribers 10000] [--batch 1000]
//!  [--rounds 10] [--open-batch 500] [--rate 1000] [--seconds 10]
//!  [--writers 4] [--no-policy]`
//! (`BENCH_SLUICE_<KEY>=v` passes `SLUICE_<KEY>=v` to the measured sluice;
//! scripts/bench-sse-policy.sh installs Postgres if needed and runs this.)
//!
//! Setup: table `public.todos (id, tenant, owner_id, title, secret)`, full
//! replica identity, captured with tenant column `tenant`; every row is
//! tenant t0's. Sluice runs with `SLUICE_AUTH_JWT_HS256_SECRET` and
//! `SLUICE_POLICIES` (role `member` on public.todos: rows where
//! `new.owner_id` equals the `sub` claim, columns id, owner_id, title).
//! Subscriber i authenticates with an HS256 JWT this program signs,
//! `{"tenant":"t0","role":"member","sub":"u_<i>","exp":now+3600}`, as
//! `?apikey=` on `GET /v1/events/subscribe?table=public.todos`.
//! `--no-policy` leaves `SLUICE_POLICIES` out and signs role `anon`, for a
//! Sluice without policies: every subscriber then receives every change
//! (slow: it shows the unfiltered cost and proves the plumbing).
//!
//! 1. Routing cost, from outside the server: the probe is u_0. A round
//!    commits `--batch` rows in one transaction, each owned by a different
//!    user spread over u_1 … u_{N-1} (the owners move on each round), the
//!    last row owned by u_0; the figure is (receipt of the probe's event for
//!    that row − the commit time) / batch, the median over `--rounds` rounds
//!    after two warm-ups, once with 10 subscribers open (u_0 … u_9) and once
//!    with N. Each is run twice: with the other rows owned by users who have
//!    no subscription (u_N …: routing alone, what the index saves) and with
//!    them owned by open subscribers (routing plus 999 distinct deliveries,
//!    which 10 subscribers cannot receive, so that ratio also measures
//!    writing to 100 times more streams). Alongside, the hub's own figure: Δ`sluice_hub_publish_seconds_total`
//!    / Δ`sluice_hub_published_events_total` over each phase ("n/a" when the
//!    server does not export them). With N open, each subscriber's count of
//!    its own rows is compared with what was committed for it, and rows of
//!    other users it received are counted (both must be 0 off).
//! 2. Latency: `--rate` single-row transactions a second for `--seconds`
//!    from `--writers` connections, owners round robin over all N users;
//!    p50/p95/p99/max of commit → receipt over every subscriber's receipts
//!    of its own rows, the first second dropped.
//!
//! Everything runs on this machine, so the commit time (the events' `time`
//! member) and the receipt time come from the same clock. Targets (printed
//! as met/missed, never asserted): ≤ 20 µs per change with N open, ratio
//! N/10 ≤ 1.5, p99 ≤ 25 ms at 1000 changes/s.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use localpg::LocalPg;

mod common;
use common::{
    connection_budget, envelope_time, flag, free_port, http_get_async, metric_async, nofile,
    now_micros, num_arg, psql, read_head, serve_command, show, show_limit, stats, write_at_rate,
    ConnectionBudget, Dechunker, Guard, Sample, SseParser,
};

/// The HS256 secret Sluice verifies the subscribers' tokens with (≥ 32 bytes).
const JWT_SECRET: &str = "sluice-policy-bench-secret-0123456789abcdef";
/// The policy under test: a member sees the todos it owns, three columns.
const POLICIES: &str = r#"[{role="member", table="public.todos", rows={field="new.owner_id", op="eq", claim="sub"}, columns=["id","owner_id","title"]}]"#;
const TABLES: &str = r#"[{table="public.todos", tenant_column="tenant"}]"#;
const SUBSCRIBE: &str = "/v1/events/subscribe?table=public.todos";
/// One row of tenant t0: `$1` the id, `$2` its owner.
const INSERT: &str =
    "INSERT INTO todos (id, tenant, owner_id, title, secret) VALUES ($1, 't0', $2, 'todo', 's3cret')";
/// File descriptors kept beyond one per connection, in each process.
const FD_SLACK: u64 = 200;
/// Routing rounds run before the measured ones.
const WARMUP_ROUNDS: usize = 2;
/// The small case of the routing comparison.
const SMALL: usize = 10;
const PUBLISH_SECONDS: &str = "sluice_hub_publish_seconds_total";
const PUBLISHED_EVENTS: &str = "sluice_hub_published_events_total";

fn user(i: usize) -> String {
    format!("u_{i}")
}

/// The `sub` of a row event: its `owner_id` (the first one in the
/// envelope is `data.new`'s; the policy keeps that column).
fn owner_of(data: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"\"owner_id\":\"";
    let at = data.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let end = data[at..].iter().position(|&c| c == b'"')? + at;
    Some(&data[at..end])
}

/// An HS256 token for user `sub` of tenant t0, valid for an hour.
fn sign_token(sub: &str, role: &str) -> String {
    let claims = serde_json::json!({
        "tenant": "t0",
        "role": role,
        "sub": sub,
        "exp": sluice::auth::jwt::now_unix() + 3600,
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("sign a bench JWT")
}

// ------------------------------------------------------------ connections

/// What all connection tasks share.
struct Shared {
    port: u16,
    /// Per connection (= per user): rows of its own user received.
    own: Vec<AtomicU64>,
    /// Per connection: rows of other users received (0 under the policy).
    foreign: Vec<AtomicU64>,
    /// Row events without a readable `owner_id` or `time`.
    unreadable: AtomicU64,
    /// While set, every own-row receipt is kept in `samples`.
    recording: AtomicBool,
    samples: Mutex<Vec<Sample>>,
    /// Connections whose stream ended, by reason.
    ended: Mutex<BTreeMap<String, usize>>,
    /// Control events (`event: error|gap|shutdown`) received, by type.
    controls: Mutex<BTreeMap<String, usize>>,
}

impl Shared {
    fn counts(counters: &[AtomicU64]) -> Vec<u64> {
        counters.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }

    /// Files one row event received by connection `index` at `received`.
    fn on_row(&self, index: usize, me: &[u8], data: &[u8], received: i64, probe: Option<&Probe>) {
        let (Some(owner), Some(commit)) = (owner_of(data), envelope_time(data)) else {
            self.unreadable.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if owner != me {
            self.foreign[index].fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.own[index].fetch_add(1, Ordering::Relaxed);
        if let Some(p) = probe {
            let _ = p.send((commit, received));
        }
        if self.recording.load(Ordering::Relaxed) {
            self.samples
                .lock()
                .expect("samples")
                .push((commit, received));
        }
    }

    fn count_control(&self, event: &[u8]) {
        *self
            .controls
            .lock()
            .expect("controls")
            .entry(String::from_utf8_lossy(event).into_owned())
            .or_default() += 1;
    }
}

/// The probe's (commit µs, receipt µs) of each of its own rows.
type Probe = mpsc::UnboundedSender<Sample>;

/// Opens the SSE subscription of `token`: the socket, whether the body is
/// chunked, and what came after the headers.
async fn subscribe(port: u16, token: &str) -> Result<(TcpStream, bool, Vec<u8>), String> {
    let mut sock = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = sock.set_nodelay(true);
    sock.write_all(
        format!("GET {SUBSCRIBE}&apikey={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes(),
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
}

/// Subscriber `index` (user u_<index>): opens its stream, reports the
/// response on `ready`, then files every event until the stream ends (or
/// the task is aborted).
async fn connection(
    shared: Arc<Shared>,
    index: usize,
    token: String,
    ready: oneshot::Sender<Result<(), String>>,
    probe: Option<Probe>,
) {
    let opened = tokio::time::timeout(Duration::from_secs(60), subscribe(shared.port, &token));
    let (mut sock, chunked, first) = match opened.await {
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
    let me = user(index).into_bytes();
    let mut dechunk = chunked.then(Dechunker::default);
    // The data is kept: the owner of each row is checked.
    let mut sse = SseParser::new(true);
    let mut buf = vec![0u8; 16 * 1024];
    let mut received = now_micros();
    let mut input = first;
    let reason = loop {
        let mut on_event = |event: &[u8], data: &[u8]| {
            if event.starts_with(b"row.") {
                shared.on_row(index, &me, data, received, probe.as_ref());
            } else if !event.is_empty() {
                shared.count_control(event);
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

/// What the routing rounds share: the connection they commit through, the
/// users, the next row id, the owner cursor, and the rows committed per
/// user since `expected` was last reset.
struct Writer<'a> {
    client: &'a tokio_postgres::Client,
    users: usize,
    next_id: i64,
    /// The next owner among u_1 … u_{users-1}, as an offset.
    cursor: usize,
    expected: Vec<u64>,
}

impl Writer<'_> {
    /// The owners of one round's `batch` rows: different users spread over
    /// u_1 … u_{users-1} (moving on each round), the last one u_0. With
    /// `absent`, the other rows' owners are users with no subscription
    /// (u_{users} …): the round measures routing alone, no delivery.
    fn round_owners(&mut self, batch: usize, absent: bool) -> Vec<usize> {
        let others = (self.users - 1).max(1);
        let mut owners: Vec<usize> = (0..batch - 1)
            .map(|j| {
                if absent {
                    self.users + j
                } else {
                    1 + (self.cursor + j) % others
                }
            })
            .collect();
        self.cursor = (self.cursor + batch - 1) % others;
        owners.push(0);
        owners
    }

    /// Commits one row per owner, in this order, in one transaction.
    async fn commit(&mut self, owners: &[usize]) {
        let ids: Vec<i64> = (0..owners.len() as i64).map(|k| self.next_id + k).collect();
        let names: Vec<String> = owners.iter().map(|&o| user(o)).collect();
        self.next_id += owners.len() as i64;
        self.client
            .execute(
                "INSERT INTO todos (id, tenant, owner_id, title, secret)
                 SELECT i, 't0', o, 'todo', 's3cret' FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS r(i, o, n) ORDER BY n",
                &[&ids, &names],
            )
            .await
            .expect("commit a round of todos");
        for &o in owners {
            if let Some(n) = self.expected.get_mut(o) {
                *n += 1;
            }
        }
    }
}

/// Commits one round and returns (receipt of the probe's row − commit) in
/// µs, None if the probe did not receive it within 120 s.
async fn round(
    writer: &mut Writer<'_>,
    batch: usize,
    absent: bool,
    probe: &mut mpsc::UnboundedReceiver<Sample>,
) -> Option<f64> {
    while probe.try_recv().is_ok() {}
    let owners = writer.round_owners(batch, absent);
    writer.commit(&owners).await;
    match tokio::time::timeout(Duration::from_secs(120), probe.recv()).await {
        Ok(Some((commit, receipt))) => Some((receipt - commit) as f64),
        _ => {
            eprintln!("the probe did not receive its row within 120 s");
            None
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One routing phase's figures.
struct Routing {
    per_change_us: f64,
    min_per_change_us: f64,
    max_per_change_us: f64,
    rounds: usize,
    /// Δseconds / Δevents of the hub's own counters, µs per event.
    hub_us: Option<f64>,
}

/// The hub's (publish seconds, published events) counters, if exported.
async fn hub_counters(port: u16) -> Option<(f64, f64)> {
    Some((
        metric_async(port, PUBLISH_SECONDS).await?,
        metric_async(port, PUBLISHED_EVENTS).await?,
    ))
}

async fn routing(
    writer: &mut Writer<'_>,
    port: u16,
    batch: usize,
    rounds: usize,
    absent: bool,
    probe: &mut mpsc::UnboundedReceiver<Sample>,
) -> Routing {
    let mut per_change = Vec::new();
    let mut hub_before = None;
    for r in 0..rounds + WARMUP_ROUNDS {
        if r == WARMUP_ROUNDS {
            hub_before = hub_counters(port).await;
        }
        let got = round(writer, batch, absent, probe).await;
        if r >= WARMUP_ROUNDS {
            per_change.extend(got.map(|us| us / batch as f64));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let hub_us = match (hub_before, hub_counters(port).await) {
        (Some((s0, e0)), Some((s1, e1))) if e1 > e0 => Some((s1 - s0) / (e1 - e0) * 1e6),
        _ => None,
    };
    Routing {
        per_change_us: median(per_change.clone()),
        min_per_change_us: per_change.iter().copied().fold(f64::INFINITY, f64::min),
        max_per_change_us: per_change.iter().copied().fold(0.0, f64::max),
        rounds: per_change.len(),
        hub_us,
    }
}

// ------------------------------------------------------------ own rows

/// How the N subscribers' own-row counts compare with what was committed
/// for them since the check began.
struct OwnCheck {
    /// (user, expected, received) of every subscriber that differs.
    mismatches: Vec<(usize, u64, u64)>,
    /// Rows of other users received, over all subscribers.
    foreign: u64,
    expected_total: u64,
    received_total: u64,
}

/// Waits (at most `within`) for the established subscribers' own-row
/// counts, taken from `own_base`, to reach `expected`, then compares.
fn check_own_rows(
    shared: &Shared,
    established: &[bool],
    own_base: &[u64],
    foreign_base: &[u64],
    expected: &[u64],
    within: Duration,
) -> OwnCheck {
    let received = || -> Vec<u64> {
        Shared::counts(&shared.own)
            .iter()
            .zip(own_base)
            .map(|(c, b)| c - b)
            .collect()
    };
    let wanted = |i: usize| if established[i] { expected[i] } else { 0 };
    let deadline = Instant::now() + within;
    let mut got = received();
    while Instant::now() < deadline && (0..got.len()).any(|i| got[i] < wanted(i)) {
        std::thread::sleep(Duration::from_millis(100));
        got = received();
    }
    let foreign_now = Shared::counts(&shared.foreign);
    OwnCheck {
        mismatches: (0..got.len())
            .filter(|&i| got[i] != wanted(i))
            .map(|i| (i, wanted(i), got[i]))
            .collect(),
        foreign: foreign_now
            .iter()
            .zip(foreign_base)
            .map(|(c, b)| c - b)
            .sum(),
        expected_total: (0..got.len()).map(wanted).sum(),
        received_total: got.iter().sum(),
    }
}

fn show_check(label: &str, c: &OwnCheck, policy: bool) {
    println!(
        "  {label}: own rows expected {}, received {}; subscribers with a wrong count: {}; rows of other users received: {}{}",
        c.expected_total,
        c.received_total,
        c.mismatches.len(),
        c.foreign,
        if policy { " (must be 0)" } else { " (expected without a policy: every subscriber gets every row)" }
    );
    for (u, want, got) in c.mismatches.iter().take(10) {
        println!("    u_{u}: expected {want}, received {got}");
    }
    if c.mismatches.len() > 10 {
        println!("    … and {} more", c.mismatches.len() - 10);
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "missed"
    }
}

fn show_us(v: Option<f64>) -> String {
    v.map_or("n/a".to_owned(), |us| format!("{us:.2} µs per event"))
}

// ------------------------------------------------------------------- main

fn main() {
    let requested = num_arg("--subscribers", 10_000).max(SMALL as u64);
    let batch = num_arg("--batch", 1000).max(2) as usize;
    let rounds = num_arg("--rounds", 10).max(1) as usize;
    let open_batch = num_arg("--open-batch", 500).max(1) as usize;
    let rate = num_arg("--rate", 1000).max(1);
    let seconds = num_arg("--seconds", 10).max(2);
    let writers = num_arg("--writers", 4).max(1) as usize;
    let policy = !flag("--no-policy");
    let role = if policy { "member" } else { "anon" };

    let ConnectionBudget {
        mut connections,
        soft,
        mut notes,
    } = connection_budget(requested, SMALL as u64, FD_SLACK);

    eprintln!("starting a throwaway cluster…");
    let pg = LocalPg::start().expect("start Postgres");
    let db = pg.create_database("bench").expect("db");
    psql(
        &pg,
        &db,
        "CREATE TABLE todos (id bigint PRIMARY KEY, tenant text NOT NULL, owner_id text NOT NULL,
                             title text, secret text);
         ALTER TABLE todos REPLICA IDENTITY FULL;
         CREATE PUBLICATION bench_pub FOR TABLE todos;
         SELECT pg_create_logical_replication_slot('sluice_slot', 'pgoutput');",
    );

    let port = free_port();
    let server_need = connections + FD_SLACK;
    let mut command = serve_command(env!("CARGO_BIN_EXE_sluice"), soft, server_need);
    common::sluice_env_tables(
        &mut command,
        &pg.url(&db),
        None,
        &format!("127.0.0.1:{port}"),
        TABLES,
    );
    command.env("SLUICE_AUTH_JWT_HS256_SECRET", JWT_SECRET);
    if policy {
        command.env("SLUICE_POLICIES", POLICIES);
    }
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
        connections = server_soft.saturating_sub(FD_SLACK).max(SMALL as u64);
        let why = format!(
            "sluice may open only {} files, so {connections} subscribers are opened instead of {before}",
            show_limit(server_soft)
        );
        println!("NOTE: {why}");
        notes.push(why);
    }
    let users = connections as usize;
    let small = SMALL.min(users);

    let shared = Arc::new(Shared {
        port,
        own: (0..users).map(|_| AtomicU64::new(0)).collect(),
        foreign: (0..users).map(|_| AtomicU64::new(0)).collect(),
        unreadable: AtomicU64::new(0),
        recording: AtomicBool::new(false),
        samples: Mutex::default(),
        ended: Mutex::default(),
        controls: Mutex::default(),
    });
    let (probe_tx, mut probe_rx) = mpsc::unbounded_channel();
    let mut tasks: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    let mut established = vec![false; users];
    // Opens subscribers `from..to` (users u_from …), `open_batch` at a
    // time, each batch answered before the next is sent.
    let mut open = |from: usize, to: usize, established: &mut [bool]| {
        let mut i = from;
        while i < to {
            let end = (i + open_batch).min(to);
            let readies: Vec<(usize, oneshot::Receiver<Result<(), String>>)> = (i..end)
                .map(|c| {
                    let (tx, rx) = oneshot::channel();
                    let probe = (c == 0).then(|| probe_tx.clone());
                    let token = sign_token(&user(c), role);
                    tasks.push(rt.spawn(connection(shared.clone(), c, token, tx, probe)));
                    (c, rx)
                })
                .collect();
            for (c, r) in readies {
                match rt.block_on(r) {
                    Ok(Ok(())) => established[c] = true,
                    Ok(Err(e)) => *failures.entry(e).or_default() += 1,
                    Err(_) => *failures.entry("task ended".to_owned()).or_default() += 1,
                }
            }
            i = end;
        }
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
    let open_count = |e: &[bool]| e.iter().filter(|&&x| x).count();

    let (client, conn) = rt
        .block_on(tokio_postgres::connect(&pg.url(&db), tokio_postgres::NoTls))
        .expect("connect to the database");
    rt.spawn(conn);
    let mut writer = Writer {
        client: &client,
        users,
        next_id: 1,
        cursor: 0,
        expected: vec![0; users],
    };

    // 1a. 10 subscribers: u_0 (the probe) … u_9.
    open(0, small, &mut established);
    assert!(
        established[0],
        "could not open the probe's subscription (u_0, role {role}): {failures:?}"
    );
    let live_small = wait_live(open_count(&established));
    eprintln!(
        "{} subscribers open ({live_small} live in the hub); routing {batch}-row rounds…",
        open_count(&established)
    );
    let alone_small = rt.block_on(routing(
        &mut writer,
        port,
        batch,
        rounds,
        true,
        &mut probe_rx,
    ));
    let with_small = rt.block_on(routing(
        &mut writer,
        port,
        batch,
        rounds,
        false,
        &mut probe_rx,
    ));

    // 1b. All N.
    eprintln!(
        "opening {} more subscribers in batches of {open_batch}…",
        users - small
    );
    let t = Instant::now();
    open(small, users, &mut established);
    let n_open = open_count(&established);
    let live_all = wait_live(n_open);
    let open_secs = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let own_base = Shared::counts(&shared.own);
    let foreign_base = Shared::counts(&shared.foreign);
    writer.expected = vec![0; users];
    eprintln!("routing {batch}-row rounds with {n_open} subscribers open…");
    let alone_all = rt.block_on(routing(
        &mut writer,
        port,
        batch,
        rounds,
        true,
        &mut probe_rx,
    ));
    let with_all = rt.block_on(routing(
        &mut writer,
        port,
        batch,
        rounds,
        false,
        &mut probe_rx,
    ));
    eprintln!("checking that every subscriber received exactly its own rows…");
    let routed_check = check_own_rows(
        &shared,
        &established,
        &own_base,
        &foreign_base,
        &writer.expected,
        Duration::from_secs(120),
    );

    // 2. Latency at `rate` with the N open: owners round robin over all.
    let clients: Vec<Arc<tokio_postgres::Client>> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..writers {
            let (c, conn) = tokio_postgres::connect(&pg.url(&db), tokio_postgres::NoTls)
                .await
                .expect("connect a writer");
            tokio::spawn(conn);
            v.push(Arc::new(c));
        }
        v
    });
    let total = (rate * seconds) as i64;
    let first_id = writer.next_id;
    let owner_index = move |id: i64| ((id - first_id) as usize) % users;
    for id in first_id..first_id + total {
        writer.expected[owner_index(id)] += 1;
    }
    eprintln!("writing {rate} single-row transactions/s for {seconds} s…");
    shared.recording.store(true, Ordering::Relaxed);
    let phase_start = now_micros();
    let achieved = write_at_rate(
        &rt,
        &clients,
        INSERT,
        rate,
        total,
        first_id,
        Arc::new(move |id| user(owner_index(id))),
    );
    let phase_end = now_micros() + 1;
    let total_check = check_own_rows(
        &shared,
        &established,
        &own_base,
        &foreign_base,
        &writer.expected,
        Duration::from_secs(60),
    );
    shared.recording.store(false, Ordering::Relaxed);
    let latency = stats(
        &shared.samples.lock().expect("samples"),
        phase_start + 1_000_000,
        phase_end,
    );
    let latency_samples = shared.samples.lock().expect("samples").len();

    for t in tasks.drain(..) {
        t.abort();
    }
    let ended = shared.ended.lock().expect("ended").clone();
    let controls = shared.controls.lock().expect("controls").clone();
    let unreadable = shared.unreadable.load(Ordering::Relaxed);
    drop(writer);
    drop(client);
    drop(clients);
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(sluice);
    drop(pg);

    // ------------------------------------------------------------ report
    println!(
        "policy routing: {} (role {role}); subscribers requested {requested}, attempted {users}, established {n_open} (HTTP 200), live in the hub {live_all}; opened in {open_secs:.1} s",
        if policy {
            "rows new.owner_id = claim sub"
        } else {
            "--no-policy: every subscriber receives every change"
        }
    );
    if n_open < requested as usize {
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
    if unreadable > 0 {
        println!("  row events without a readable owner_id or time: {unreadable}");
    }
    let mut ratios = Vec::new();
    for (title, small_r, all_r) in [
        (
            "rows of users with no open subscription (routing alone), the last the probe u_0's",
            &alone_small,
            &alone_all,
        ),
        (
            "one row per open subscriber (routing and delivery to 999 distinct streams), the last the probe u_0's",
            &with_small,
            &with_all,
        ),
    ] {
        println!(
            "{batch}-row transactions, {title}; median of {} rounds:",
            small_r.rounds.min(all_r.rounds)
        );
        for (label, r) in [
            (format!("{small} subscribers open"), small_r),
            (format!("{n_open} subscribers open"), all_r),
        ] {
            println!(
                "  {label:<24} {:>8.2} µs per change (range {:.2}..{:.2}); hub ({PUBLISH_SECONDS} / {PUBLISHED_EVENTS}): {}",
                r.per_change_us,
                r.min_per_change_us,
                r.max_per_change_us,
                show_us(r.hub_us)
            );
        }
        let ratio = all_r.per_change_us / small_r.per_change_us;
        let hub_ratio = match (all_r.hub_us, small_r.hub_us) {
            (Some(a), Some(b)) => format!("{:.2}", a / b),
            _ => "n/a".to_owned(),
        };
        println!("  ratio {n_open}/{small}: {ratio:.2} per change, {hub_ratio} in the hub");
        ratios.push((all_r.per_change_us, ratio));
    }
    let (alone_us, alone_ratio) = ratios[0];
    println!(
        "  targets (routing alone): <= 20 µs per change with {n_open} open ({}), ratio <= 1.5 ({})",
        met(alone_us <= 20.0),
        met(alone_ratio <= 1.5)
    );
    println!("own rows with {n_open} subscribers open:");
    show_check("after the routing rounds", &routed_check, policy);
    show_check(
        "after the routing rounds and the latency phase",
        &total_check,
        policy,
    );
    println!(
        "latency at {rate}/s (achieved {achieved:.0}/s) for {seconds} s, {writers} writers, owners round robin over {users} users; {latency_samples} own-row receipts, first second dropped:"
    );
    show("commit -> receipt, every subscriber", &latency);
    match &latency {
        Some(s) => println!("  target: p99 <= 25 ms ({})", met(s.p99 <= 25.0)),
        None => println!("  target: p99 <= 25 ms (missed: nothing received)"),
    }
}
