//! Streamed transactions (pgoutput protocol 2+ with `streaming`) against a
//! real Postgres: a large transaction arrives while it runs, is staged
//! (spilling to disk past `stream_memory_mb`) and appended whole at its
//! commit, in commit order; aborted transactions and rolled back
//! savepoints leave nothing; a restart in the middle loses and duplicates
//! nothing; prepared transactions appear at COMMIT PREPARED only.
//!
//! Each database sets `logical_decoding_work_mem = 64kB` (the minimum), so
//! the server streams any transaction past a few hundred rows.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{poll_until, start_pipeline, stop_pipeline, wait_for_events, TestDb, PATIENCE};
use sluice::config::Config;
use tokio_postgres::Client;

/// A database whose walsenders stream early, with table `big`.
async fn streaming_db(prefix: &str) -> (TestDb, Client) {
    let db = TestDb::new(prefix);
    let c = db.client().await;
    c.batch_execute(&format!(
        "ALTER DATABASE {} SET logical_decoding_work_mem = '64kB';
         CREATE TABLE big (id int PRIMARY KEY, tenant text NOT NULL, v text);
         ALTER TABLE big REPLICA IDENTITY FULL",
        db.name
    ))
    .await
    .expect("ddl");
    (db, c)
}

fn config(db: &TestDb, extra: &[(&str, &str)]) -> Config {
    db.config_with(&[("public.big", "tenant")], extra)
}

fn insert(from: i32, to: i32, tag: &str) -> String {
    format!(
        "INSERT INTO big SELECT g, 'tenant' || (g % 7), '{tag}' || md5(g::text) FROM generate_series({from}, {to}) g"
    )
}

/// The ids of the rows in the log, in seq order, and the seqs.
async fn logged(c: &Client) -> Vec<(i64, i32, String)> {
    c.query(
        "SELECT seq, (data::jsonb->'new'->>'id')::int, coalesce(data::jsonb->'new'->>'v', '')
         FROM sluice.event_log ORDER BY seq",
        &[],
    )
    .await
    .expect("read the log")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// Waits until Sluice has received at least `n` streamed messages.
async fn streamed(stats: &sluice::source::postgres::stats::SourceStats, n: u64) {
    poll_until(PATIENCE, Duration::from_millis(50), || async {
        let got = stats.streamed_messages.load(Ordering::Relaxed);
        if got >= n {
            Ok(())
        } else {
            Err(format!("{got} of {n} streamed messages received"))
        }
    })
    .await
}

/// The log's head seq.
async fn head(c: &Client) -> i64 {
    c.query_one("SELECT coalesce(max(seq), 0) FROM sluice.events", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transaction_arrives_while_it_runs_and_is_appended_whole_at_its_commit() {
    let (db, c) = streaming_db("stream_big").await;
    // 1 MiB of memory for staged transactions: this one spills to disk.
    let (running, token) = start_pipeline(&config(
        &db,
        &[("SLUICE_SOURCE_POSTGRES_STREAM_MEMORY_MB", "1")],
    ))
    .await;
    let proto = poll_until(PATIENCE, Duration::from_millis(50), || async {
        match running.stats.protocol.load(Ordering::Relaxed) {
            0 => Err("not connected yet".to_owned()),
            p => Ok(p),
        }
    })
    .await;
    assert!(
        proto >= 2,
        "a server of 14 or later is read at protocol 2 or higher, got {proto}"
    );
    let writer = db.client().await;
    writer.batch_execute("BEGIN").await.expect("begin");
    writer
        .batch_execute(&insert(1, 30_000, "a"))
        .await
        .expect("big insert");
    // Received while it runs...
    streamed(&running.stats, 10_000).await;
    // ...and a transaction committed meanwhile is appended before it.
    c.batch_execute("INSERT INTO big VALUES (0, 'other', 'meanwhile')")
        .await
        .expect("small");
    let _ = wait_for_events(&c, 1).await;
    let early = logged(&c).await;
    assert_eq!(
        early.len(),
        1,
        "nothing of the open transaction is in the log: {:?}",
        &early[..early.len().min(12)]
    );
    // Over stream_memory_mb, the staged transaction spills to disk (the
    // 30,000 rows are about 2.5 MiB of messages).
    poll_until(PATIENCE, Duration::from_millis(50), || async {
        match running.stats.streamed_spills.load(Ordering::Relaxed) {
            0 => Err("the staged transaction has not spilled yet".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
    assert_eq!(head(&c).await, 1, "still nothing of the open transaction");
    writer
        .batch_execute(&format!("{}; COMMIT", insert(30_001, 40_000, "a")))
        .await
        .expect("rest and commit");
    let _ = wait_for_events(&c, 40_001).await;
    assert_eq!(
        running.stats.streamed_transactions.load(Ordering::Relaxed),
        1,
        "one streamed transaction with captured changes"
    );
    stop_pipeline(running, token).await;

    let (n, ids, txids, min, max, ordered) = common::rows_summary(&c, "other").await;
    assert_eq!(
        (n, ids, txids),
        (40_000, 40_000, 1),
        "every row once, one transaction"
    );
    assert_eq!(
        (min, max),
        (2, 40_001),
        "contiguous, after the one committed meanwhile"
    );
    assert!(ordered, "each tenant's events in statement order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_streamed_transactions_and_rolled_back_savepoints_leave_nothing() {
    let (db, c) = streaming_db("stream_abort").await;
    let (running, token) = start_pipeline(&config(&db, &[])).await;
    let w = db.client().await;
    // A whole streamed transaction rolled back.
    w.batch_execute(&format!("BEGIN; {}", insert(1, 20_000, "rolled back")))
        .await
        .expect("insert");
    streamed(&running.stats, 5_000).await;
    w.batch_execute("ROLLBACK").await.expect("rollback");
    // Savepoints: A kept, B rolled back, C released, D and its nested E
    // rolled back together, F kept.
    let before = running.stats.streamed_messages.load(Ordering::Relaxed);
    w.batch_execute(&format!(
        "BEGIN;
         {a};
         SAVEPOINT s1; {b}; ROLLBACK TO SAVEPOINT s1;
         SAVEPOINT s2; {cc}; RELEASE SAVEPOINT s2;
         SAVEPOINT s3; {d}; SAVEPOINT s4; {e}; ROLLBACK TO SAVEPOINT s3;
         {f};
         COMMIT",
        a = insert(100_001, 104_000, "A"),
        b = insert(200_001, 204_000, "B"),
        cc = insert(300_001, 304_000, "C"),
        d = insert(400_001, 404_000, "D"),
        e = insert(500_001, 504_000, "E"),
        f = insert(600_001, 604_000, "F"),
    ))
    .await
    .expect("savepoints");
    c.batch_execute("INSERT INTO big VALUES (0, 'marker', 'end')")
        .await
        .expect("marker");
    let _ = wait_for_events(&c, 12_001).await;
    // Everything before the marker has been received by now.
    assert!(
        running.stats.streamed_messages.load(Ordering::Relaxed) > before + 10_000,
        "the savepoint transaction was streamed"
    );
    // The rolled back transaction is not kept (Sluice's own appends may
    // be streamed too, so wait for those to commit).
    poll_until(PATIENCE, Duration::from_millis(50), || async {
        match running.stats.streamed_open.load(Ordering::Relaxed) {
            0 => Ok(()),
            n => Err(format!("{n} streamed transactions still staged")),
        }
    })
    .await;
    stop_pipeline(running, token).await;
    let rows = logged(&c).await;
    let want: Vec<i32> = (100_001..=104_000)
        .chain(300_001..=304_000)
        .chain(600_001..=604_000)
        .collect();
    let mut got: Vec<i32> = rows.iter().map(|r| r.1).filter(|id| *id != 0).collect();
    assert_eq!(got.len(), 12_000, "A, C and F only");
    assert!(rows.iter().all(|r| !r.2.starts_with("rolled back")
        && !r.2.starts_with('B')
        && !r.2.starts_with('D')
        && !r.2.starts_with('E')));
    got.sort_unstable();
    assert_eq!(got, want);
    assert_eq!(rows.last().map(|r| r.1), Some(0), "the marker comes last");
    assert_eq!(rows.len(), 12_001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_streamed_transactions_are_appended_in_commit_order() {
    let (db, c) = streaming_db("stream_order").await;
    let (running, token) = start_pipeline(&config(&db, &[])).await;
    let t1 = db.client().await;
    let t2 = db.client().await;
    t1.batch_execute("BEGIN").await.expect("begin 1");
    t2.batch_execute("BEGIN").await.expect("begin 2");
    for round in 0..4 {
        let base = round * 5_000;
        t1.batch_execute(&insert(base + 1, base + 5_000, "one"))
            .await
            .expect("t1");
        t2.batch_execute(&insert(100_000 + base + 1, 100_000 + base + 5_000, "two"))
            .await
            .expect("t2");
    }
    streamed(&running.stats, 20_000).await;
    t2.batch_execute("COMMIT").await.expect("commit 2");
    t1.batch_execute("COMMIT").await.expect("commit 1");
    let _ = wait_for_events(&c, 40_000).await;
    stop_pipeline(running, token).await;
    let rows = logged(&c).await;
    assert_eq!(rows.len(), 40_000);
    let (second, first) = rows.split_at(20_000);
    assert!(
        second.iter().all(|r| r.2.starts_with("two")),
        "the first commit first"
    );
    assert!(first.iter().all(|r| r.2.starts_with("one")));
    assert!(
        rows.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "contiguous seqs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_of_a_streamed_transaction_loses_and_duplicates_nothing() {
    let (db, c) = streaming_db("stream_restart").await;
    let cfg = config(&db, &[]);
    let (running, token) = start_pipeline(&cfg).await;
    let w = db.client().await;
    w.batch_execute(&format!("BEGIN; {}", insert(1, 15_000, "x")))
        .await
        .expect("first half");
    streamed(&running.stats, 5_000).await;
    // Committed before the restart, appended before it.
    c.batch_execute("INSERT INTO big VALUES (0, 'other', 'before')")
        .await
        .expect("small");
    let _ = wait_for_events(&c, 1).await;
    stop_pipeline(running, token).await;
    let (running, token) = start_pipeline(&cfg).await;
    w.batch_execute(&format!("{}; COMMIT", insert(15_001, 30_000, "x")))
        .await
        .expect("second half");
    let _ = wait_for_events(&c, 30_001).await;
    // A later commit, so a duplicate would have had time to land.
    c.batch_execute("INSERT INTO big VALUES (-1, 'other', 'after')")
        .await
        .expect("after");
    let _ = wait_for_events(&c, 30_002).await;
    stop_pipeline(running, token).await;
    let rows = logged(&c).await;
    assert_eq!(rows.len(), 30_002);
    let mut ids: Vec<i32> = rows.iter().map(|r| r.1).collect();
    assert_eq!(ids[0], 0);
    assert_eq!(ids[30_001], -1);
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 30_002, "no row twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_transactions_appear_at_commit_prepared_and_never_after_rollback_prepared() {
    let (db, c) = streaming_db("stream_2pc").await;
    let (running, token) = start_pipeline(&config(&db, &[])).await;
    let w = db.client().await;
    let gid = |s: &str| format!("{}_{s}", db.name);
    // Large (streamed) and small prepared transactions.
    w.batch_execute(&format!(
        "BEGIN; {}; PREPARE TRANSACTION '{}'",
        insert(1, 10_000, "big kept"),
        gid("a")
    ))
    .await
    .expect("prepare a");
    w.batch_execute(&format!(
        "BEGIN; {}; PREPARE TRANSACTION '{}'",
        insert(20_001, 30_000, "big dropped"),
        gid("b")
    ))
    .await
    .expect("prepare b");
    w.batch_execute(&format!(
        "BEGIN; INSERT INTO big VALUES (40001, 't', 'small kept'); PREPARE TRANSACTION '{}'",
        gid("c")
    ))
    .await
    .expect("prepare c");
    // Prepared is not committed: nothing yet, even after a later commit.
    c.batch_execute("INSERT INTO big VALUES (0, 'other', 'first')")
        .await
        .expect("first");
    let _ = wait_for_events(&c, 1).await;
    assert_eq!(head(&c).await, 1);
    for (what, g) in [("ROLLBACK", "b"), ("COMMIT", "c"), ("COMMIT", "a")] {
        w.batch_execute(&format!("{what} PREPARED '{}'", gid(g)))
            .await
            .expect("finish a prepared transaction");
    }
    let _ = wait_for_events(&c, 10_002).await;
    c.batch_execute("INSERT INTO big VALUES (-1, 'other', 'last')")
        .await
        .expect("last");
    let _ = wait_for_events(&c, 10_003).await;
    stop_pipeline(running, token).await;
    let rows = logged(&c).await;
    assert_eq!(rows.len(), 10_003);
    assert_eq!(rows[0].2, "first");
    assert_eq!(rows[1].2, "small kept", "in COMMIT PREPARED order");
    assert!(rows[2..10_002].iter().all(|r| r.2.starts_with("big kept")));
    assert_eq!(rows[10_002].2, "last");
}
