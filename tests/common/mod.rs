//! Shared harness for the integration tests: one throwaway Postgres cluster
//! per test binary (`localpg::shared`, torn down when the binary
//! exits), and per test its own database, publication and slot.

#![allow(dead_code)]

pub mod http;
pub mod proc;
pub mod receiver;
pub mod selection;
pub mod ws;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use localpg::LocalPg;
use serde_json::Value;
use sluice::auth::keys::create_key;
use sluice::auth::{KeyInfo, Role};
use sluice::config::Config;
use sluice::event::TenantId;
use sluice::log::{self, ReadScope};
use tokio_postgres::Client;

/// How long a test waits for events that must arrive. Reaching it fails the
/// test (the events never came); nothing asserts how fast they came.
pub const PATIENCE: Duration = Duration::from_secs(120);

pub fn cluster() -> &'static LocalPg {
    localpg::shared()
}

/// A fresh database on the shared cluster.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub fn new(prefix: &str) -> TestDb {
        let pg = cluster();
        let name = pg.create_database(prefix).expect("create test database");
        let url = pg.url(&name);
        TestDb { name, url }
    }

    pub async fn client(&self) -> Client {
        log::connect(&self.url)
            .await
            .expect("connect to test database")
    }

    /// A config capturing `tables` (`(table, tenant_column)`), with this
    /// database's own slot (slots are cluster-wide, so named after it).
    pub fn config(&self, tables: &[(&str, &str)]) -> Config {
        self.config_with(tables, &[])
    }

    pub fn config_with(&self, tables: &[(&str, &str)], extra: &[(&str, &str)]) -> Config {
        Config::load(None, &self.env(tables, extra)).expect("valid test config")
    }

    pub fn env(&self, tables: &[(&str, &str)], extra: &[(&str, &str)]) -> BTreeMap<String, String> {
        let list: Vec<String> = tables
            .iter()
            .map(|(t, c)| format!("{{table=\"{t}\", tenant_column=\"{c}\"}}"))
            .collect();
        let mut env: BTreeMap<String, String> = [
            ("SLUICE_SOURCE_POSTGRES_URL".to_owned(), self.url.clone()),
            (
                "SLUICE_SOURCE_POSTGRES_SLOT".to_owned(),
                format!("slot_{}", self.name),
            ),
            (
                "SLUICE_SOURCE_POSTGRES_TABLES".to_owned(),
                format!("[{}]", list.join(", ")),
            ),
        ]
        .into_iter()
        .collect();
        for (k, v) in extra {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        env
    }
}

/// Every event in the log, parsed, in seq order (operator scope).
pub async fn all_events(client: &Client) -> Vec<Value> {
    let mut out = Vec::new();
    let mut next = 1;
    loop {
        let batch = log::read_events(client, &ReadScope::Operator, next, 10_000)
            .await
            .expect("read log");
        if batch.is_empty() {
            return out;
        }
        for e in batch {
            next = e.seq + 1;
            out.push(serde_json::from_slice(&e.body).expect("stored envelope is JSON"));
        }
    }
}

/// Waits until the log's head reaches seq `n`; returns every event in it.
pub async fn wait_for_events(client: &Client, n: usize) -> Vec<Value> {
    let start = Instant::now();
    loop {
        // The log's head seq: one index entry to read (count(*) would scan
        // the whole log on every poll), and right after retention pruning.
        let count: i64 = match client
            .query_one("SELECT coalesce(max(seq), 0) FROM sluice.events", &[])
            .await
        {
            Ok(r) => r.get(0),
            Err(_) => 0, // the schema may not exist yet
        };
        if count as usize >= n {
            return all_events(client).await;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "only {count} of {n} events arrived within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Compares JSON values the way the mapping promises: numbers by exact
/// decimal value when both are integers, otherwise as floats; maps
/// regardless of key order.
pub fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (xs, ys) = (x.to_string(), y.to_string());
            if xs == ys {
                return true;
            }
            match (xs.parse::<i128>(), ys.parse::<i128>()) {
                (Ok(i), Ok(j)) => i == j,
                _ => match (xs.parse::<f64>(), ys.parse::<f64>()) {
                    (Ok(f), Ok(g)) => f == g,
                    _ => false,
                },
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_json(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// Events of one type, in order.
pub fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

/// `sluice serve` in this process, capturing `public.items` (tenant column
/// `tenant`), on a free port, with `extra` settings.
pub async fn serve_items(
    db: &TestDb,
    extra: &[(&str, &str)],
) -> (sluice::server::Server, tokio_util::sync::CancellationToken) {
    let mut env = vec![("SLUICE_HTTP_LISTEN", "127.0.0.1:0")];
    env.extend_from_slice(extra);
    let config = db.config_with(&[("public.items", "tenant")], &env);
    let token = tokio_util::sync::CancellationToken::new();
    let server = sluice::server::start(config, token.clone())
        .await
        .expect("server starts");
    (server, token)
}

/// Stops a server started by [`serve_items`]; it must stop cleanly.
pub async fn stop_server(
    server: sluice::server::Server,
    token: tokio_util::sync::CancellationToken,
) {
    token.cancel();
    server.wait().await.expect("server stops cleanly");
}

/// Creates an API key for `tenant` with `role`; returns its record and the
/// secret.
pub async fn key_and_info(db: &TestDb, tenant: &str, role: Role) -> (KeyInfo, String) {
    let c = db.client().await;
    create_key(
        &c,
        Some(&TenantId::new(tenant).expect("valid")),
        role,
        None,
        &serde_json::Map::new(),
        None,
    )
    .await
    .expect("create key")
}

/// The secret of a new API key for `tenant` with `role`.
pub async fn key(db: &TestDb, tenant: &str, role: Role) -> String {
    key_and_info(db, tenant, role).await.1
}

/// Calls `probe` every `every` until it answers `Ok`, and returns that.
/// `Err` says what is still not so; once `patience` has passed the test
/// fails with the last one.
pub async fn poll_until<T, F, Fut>(patience: Duration, every: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match probe().await {
            Ok(done) => return done,
            Err(not_yet) => assert!(start.elapsed() < patience, "after {patience:?}: {not_yet}"),
        }
        tokio::time::sleep(every).await;
    }
}

/// The capture pipeline (no HTTP) for `config`, with its shutdown token.
pub async fn start_pipeline(
    config: &Config,
) -> (
    sluice::pipeline::Pipeline,
    tokio_util::sync::CancellationToken,
) {
    let token = tokio_util::sync::CancellationToken::new();
    let running = sluice::pipeline::start(config, token.clone(), None)
        .await
        .expect("pipeline starts");
    (running, token)
}

/// Stops a pipeline started by [`start_pipeline`]; it must stop cleanly.
pub async fn stop_pipeline(
    running: sluice::pipeline::Pipeline,
    token: tokio_util::sync::CancellationToken,
) {
    token.cancel();
    running.wait().await.expect("pipeline stops cleanly");
}

/// The events of the log's rows (`data.new.id`) except tenant `except`:
/// (events, distinct ids, distinct txids, first seq, last seq, whether each
/// tenant's ids rise in seq order).
pub async fn rows_summary(c: &Client, except: &str) -> (i64, i64, i64, i64, i64, bool) {
    let row = c
        .query_one(
            "SELECT count(*), count(DISTINCT id), count(DISTINCT txid), min(seq), max(seq),
                    bool_and(prev IS NULL OR id > prev)
             FROM (SELECT seq, txid, (data::jsonb->'new'->>'id')::int AS id,
                          lag((data::jsonb->'new'->>'id')::int) OVER (PARTITION BY tenant ORDER BY seq) AS prev
                   FROM sluice.event_log WHERE tenant <> $1) e",
            &[&except],
        )
        .await
        .expect("summary");
    (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    )
}
