//! A primary and a physical standby, each a real cluster of its own:
//!
//! - failover (Postgres 17+): Sluice streams under load from a connection
//!   string naming both (`target_session_attrs=read-write`); the primary is
//!   killed (`-m immediate`) and the standby promoted; the failover slot the
//!   standby kept lets Sluice go on from the new primary, and the log holds
//!   every committed row exactly once;
//! - logical decoding on a standby (Postgres 16+): Sluice captures from the
//!   standby, its log on the primary.
//!
//! On an older server each test prints that it was skipped and why.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{poll_until, start_pipeline, stop_pipeline, PATIENCE};
use localpg::LocalPg;
use sluice::config::Config;

fn version_num(pg: &LocalPg) -> u32 {
    pg.psql("postgres", "SHOW server_version_num")
        .expect("server version")
        .trim()
        .parse()
        .expect("a number")
}

fn config(source_url: &str, state_url: Option<&str>) -> Config {
    let mut env: BTreeMap<String, String> = [
        ("SLUICE_SOURCE_POSTGRES_URL", source_url),
        ("SLUICE_SOURCE_POSTGRES_SLOT", "sluice_failover"),
        (
            "SLUICE_SOURCE_POSTGRES_TABLES",
            "[{table=\"public.items\", tenant_column=\"tenant\"}]",
        ),
        ("SLUICE_SOURCE_POSTGRES_RECONNECT_MAX_BACKOFF_MS", "500"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    if let Some(s) = state_url {
        env.insert("SLUICE_STATE_URL".into(), s.to_owned());
    }
    Config::load(None, &env).expect("valid config")
}

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, tenant text NOT NULL, v text);
                     ALTER TABLE items REPLICA IDENTITY FULL";

/// The ids in the log, one per event, in seq order.
async fn logged_ids(c: &tokio_postgres::Client) -> Vec<i32> {
    c.query(
        "SELECT (data::jsonb->'new'->>'id')::int FROM sluice.event_log ORDER BY seq",
        &[],
    )
    .await
    .map(|rows| rows.iter().map(|r| r.get(0)).collect())
    .unwrap_or_default()
}

/// A client of whichever server is the primary now.
async fn connect(url: &str) -> tokio_postgres::Client {
    poll_until(PATIENCE, Duration::from_millis(100), || async {
        sluice::log::connect(url).await.map_err(|e| e.to_string())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_and_a_promoted_standby_lose_no_committed_row() {
    let primary = LocalPg::start().expect("primary");
    let num = version_num(&primary);
    if num < 170_000 {
        println!(
            "SKIPPED: failover slots need PostgreSQL 17 or newer; this server is {num} (run with SLUICE_PG_BIN set to a 17+ bin dir, scripts/install-postgres.sh 17)"
        );
        return;
    }
    let standby = LocalPg::start().expect("standby");
    standby
        .become_standby_of(&primary, "standby1", "sync_replication_slots = on")
        .expect("standby of the primary");
    // Logical walsenders wait for the standby (nothing Sluice reads can be
    // missing from it), and commits wait for it too (the log lives in the
    // same database, so what Sluice acknowledged is on the standby).
    primary
        .psql(
            "postgres",
            "ALTER SYSTEM SET synchronized_standby_slots = 'standby1'",
        )
        .expect("standby slots");
    primary
        .psql(
            "postgres",
            "ALTER SYSTEM SET synchronous_standby_names = 'standby1'",
        )
        .expect("sync standby");
    primary
        .psql("postgres", "SELECT pg_reload_conf()")
        .expect("reload");
    primary.psql("postgres", "CREATE DATABASE app").expect("db");
    primary.psql("app", ITEMS).expect("table");
    let url = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=app target_session_attrs=read-write sslmode=disable connect_timeout=5",
        primary.port(),
        standby.port()
    );
    let (running, token) = start_pipeline(&config(&url, None)).await;

    // One row per transaction, as fast as it goes; a commit whose answer
    // was lost with the primary is "uncertain" (it may or may not exist).
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<i32>::new()));
    let uncertain = Arc::new(Mutex::new(Vec::<i32>::new()));
    let writer = {
        let (url, stop, acked, uncertain) =
            (url.clone(), stop.clone(), acked.clone(), uncertain.clone());
        tokio::spawn(async move {
            let mut c = connect(&url).await;
            let mut id = 0;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                let tenant = format!("t{}", id % 3);
                match c
                    .execute("INSERT INTO items VALUES ($1, $2, 'x')", &[&id, &tenant])
                    .await
                {
                    Ok(_) => acked.lock().unwrap().push(id),
                    Err(_) => {
                        uncertain.lock().unwrap().push(id);
                        c = connect(&url).await;
                    }
                }
            }
        })
    };
    let sluice_client = connect(&url).await;
    // Sluice is streaming and the standby holds a persistent copy of the
    // slot that has moved.
    poll_until(PATIENCE, Duration::from_millis(100), || async {
        let n = logged_ids(&sluice_client).await.len();
        if n >= 300 {
            Ok(())
        } else {
            Err(format!("{n} events in the log"))
        }
    })
    .await;
    poll_until(PATIENCE, Duration::from_millis(200), || async {
        let synced = standby
            .psql(
                "postgres",
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'sluice_failover' AND synced AND NOT temporary AND confirmed_flush_lsn > '0/0'",
            )
            .unwrap_or_default();
        if synced.trim() == "1" {
            Ok(())
        } else {
            Err("the standby has no persistent synced copy of the slot yet".to_owned())
        }
    })
    .await;
    drop(sluice_client);

    primary.kill().expect("kill the primary");
    standby.promote().expect("promote the standby");
    let after_promotion = acked.lock().unwrap().len();
    // Load goes on against the new primary.
    poll_until(PATIENCE, Duration::from_millis(100), || async {
        let n = acked.lock().unwrap().len();
        if n >= after_promotion + 300 {
            Ok(())
        } else {
            Err(format!(
                "{} rows written since the promotion",
                n - after_promotion
            ))
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");

    let c = connect(&url).await;
    let mut rows: Vec<i32> = c
        .query("SELECT id FROM items ORDER BY id", &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    rows.sort_unstable();
    let acked = acked.lock().unwrap().clone();
    let uncertain = uncertain.lock().unwrap().clone();
    for id in &acked {
        assert!(
            rows.binary_search(id).is_ok(),
            "row {id} was committed (synchronously) but is not on the new primary"
        );
    }
    poll_until(PATIENCE, Duration::from_millis(200), || async {
        let n = logged_ids(&c).await.len();
        if n >= rows.len() {
            Ok(())
        } else {
            Err(format!("{n} of {} rows in the log", rows.len()))
        }
    })
    .await;
    stop_pipeline(running, token).await;
    let mut logged = logged_ids(&c).await;
    logged.sort_unstable();
    assert_eq!(
        logged, rows,
        "the log holds every row of the new primary exactly once ({} acknowledged, {} uncertain: {uncertain:?})",
        acked.len(),
        uncertain.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_captures_from_a_standby_with_its_log_on_the_primary() {
    let primary = LocalPg::start().expect("primary");
    let num = version_num(&primary);
    if num < 160_000 {
        println!(
            "SKIPPED: logical decoding on a standby needs PostgreSQL 16 or newer; this server is {num}"
        );
        return;
    }
    let standby = LocalPg::start().expect("standby");
    standby
        .become_standby_of(&primary, "standby1", "")
        .expect("standby of the primary");
    primary.psql("postgres", "CREATE DATABASE app").expect("db");
    primary
        .psql("postgres", "CREATE DATABASE state")
        .expect("state db");
    primary.psql("app", ITEMS).expect("table");
    // The publication is made on the primary; it reaches the standby.
    primary
        .psql("app", "CREATE PUBLICATION sluice_main FOR TABLE items")
        .expect("publication");
    poll_until(PATIENCE, Duration::from_millis(100), || async {
        match standby.psql(
            "app",
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'sluice_main'",
        ) {
            Ok(n) if n.trim() == "1" => Ok(()),
            other => Err(format!(
                "the publication has not reached the standby yet: {other:?}"
            )),
        }
    })
    .await;
    let source = format!(
        "host=127.0.0.1 port={} user=postgres dbname=app sslmode=disable",
        standby.port()
    );
    let state = primary.url("state");
    let app = primary.url("app");
    // Creating a slot on a standby waits for a running-transactions record
    // from the primary; make them often until Sluice is streaming.
    let nudging = Arc::new(AtomicBool::new(true));
    let nudger = {
        let (nudging, app) = (nudging.clone(), app.clone());
        tokio::spawn(async move {
            let c = connect(&app).await;
            while nudging.load(Ordering::Relaxed) {
                let _ = c.execute("SELECT pg_log_standby_snapshot()", &[]).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let (running, token) = start_pipeline(&config(&source, Some(&state))).await;
    nudging.store(false, Ordering::Relaxed);
    nudger.await.expect("nudger");
    let c = connect(&app).await;
    for id in 1..=50 {
        c.execute(
            "INSERT INTO items VALUES ($1, 'acme', 'from the primary')",
            &[&id],
        )
        .await
        .expect("insert");
    }
    c.execute("UPDATE items SET v = 'changed' WHERE id = 7", &[])
        .await
        .expect("update");
    let log = connect(&state).await;
    let ids = poll_until(PATIENCE, Duration::from_millis(100), || async {
        let ids = logged_ids(&log).await;
        if ids.len() >= 51 {
            Ok(ids)
        } else {
            Err(format!("{} of 51 events in the log", ids.len()))
        }
    })
    .await;
    let slot_on_standby = standby
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'sluice_failover'",
        )
        .expect("slots");
    stop_pipeline(running, token).await;
    assert_eq!(slot_on_standby.trim(), "1", "the slot lives on the standby");
    let want: Vec<i32> = (1..=50).chain([7]).collect();
    assert_eq!(ids, want, "every change once, in commit order");
}
