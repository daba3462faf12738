//! The pipeline against a real Postgres: type fidelity, TOAST, transactions,
//! truncate, schema changes, a large transaction, custom events, two-phase
//! commit, tenant tagging and the preflight refusal.

mod common;

use common::{all_events, of_type, same_json, wait_for_events, TestDb};
use serde_json::{json, Value};
use sluice::config::Config;
use sluice::event::{
    format_time_micros, Audience, JsonText, PendingEvent, SourcePosition, TenantId,
};
use sluice::log::{read_events, ReadScope};
use sluice::pipeline::{self, Pipeline, PipelineError};
use tokio_util::sync::CancellationToken;

async fn start(config: &Config) -> (Pipeline, CancellationToken) {
    let token = CancellationToken::new();
    let running = pipeline::start(config, token.clone(), None)
        .await
        .expect("pipeline starts");
    (running, token)
}

async fn stop(running: Pipeline, token: CancellationToken) {
    token.cancel();
    running.wait().await.expect("pipeline stops cleanly");
}

const TYPES_DDL: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
CREATE TABLE types (
    id int PRIMARY KEY, tenant text NOT NULL,
    b bool, i2 int2, i4 int4, i8 int8, n numeric, f4 float4, f8 float8,
    t text, vc varchar(40), u uuid, j json, jb jsonb, by bytea,
    d date, ts timestamp, tstz timestamptz, tm time, iv interval,
    m mood, dom posint, ia int4[], ia2 int4[], ta text[], ta2 text[], ip inet, mo money
);
ALTER TABLE types REPLICA IDENTITY FULL;
"#;

/// What Postgres says a row holds, under Sluice's documented mapping.
const EXPECTED_SQL: &str = r#"
SELECT jsonb_build_object(
  'id', id, 'tenant', tenant, 'b', b, 'i2', i2, 'i4', i4, 'i8', i8,
  'n', n::text,
  'f4', CASE WHEN f4::text IN ('NaN', 'Infinity', '-Infinity') THEN to_jsonb(f4::text) ELSE to_jsonb(f4) END,
  'f8', CASE WHEN f8::text IN ('NaN', 'Infinity', '-Infinity') THEN to_jsonb(f8::text) ELSE to_jsonb(f8) END,
  't', t, 'vc', vc, 'u', u::text, 'j', j::jsonb, 'jb', jb,
  'by', translate(encode(by, 'base64'), E'\n', ''),
  'd', d::text,
  'ts', replace(ts::text, ' ', 'T'),
  'tstz', regexp_replace(replace(tstz::text, ' ', 'T'), '\+00$', 'Z'),
  'tm', tm::text, 'iv', iv::text, 'm', m::text, 'dom', dom,
  'ia', ia, 'ia2', ia2, 'ta', ta, 'ta2', ta2, 'ip', CASE WHEN ip IS NOT NULL THEN format('%s', ip) END, 'mo', mo::numeric::text
)::text FROM types WHERE id = $1
"#;

async fn expected_row(client: &tokio_postgres::Client, id: i32) -> Value {
    let text: String = client
        .query_one(EXPECTED_SQL, &[&id])
        .await
        .expect("read back")
        .get(0);
    serde_json::from_str(&text).expect("json")
}

fn by_subject<'a>(events: &[&'a Value], subject: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["subject"] == subject)
        .unwrap_or_else(|| panic!("no event for {subject}"))
}

fn assert_same(actual: &Value, expected: &Value, what: &str) {
    let (Value::Object(a), Value::Object(e)) = (actual, expected) else {
        panic!("{what}: not objects: {actual} vs {expected}");
    };
    for (k, ev) in e {
        let av = a.get(k).unwrap_or(&Value::Null);
        assert!(
            same_json(av, ev),
            "{what}: column {k}: event has {av}, Postgres holds {ev}"
        );
    }
    assert_eq!(
        a.len(),
        e.len(),
        "{what}: column sets differ: {actual} vs {expected}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_fidelity_events_equal_what_postgres_holds() {
    let db = TestDb::new("types");
    let c = db.client().await;
    c.batch_execute(TYPES_DDL).await.expect("ddl");
    c.batch_execute("SET TimeZone = 'UTC'; SET IntervalStyle = 'postgres'; SET DateStyle = 'ISO'")
        .await
        .expect("session");
    let (running, token) = start(&db.config(&[("public.types", "tenant")])).await;

    c.batch_execute(
        r#"
INSERT INTO types VALUES (1, 'acme', true, -32768, 2147483647, 9223372036854775807,
  '12345678901234567890.123456789012345678901', 1.1, 'NaN', 'héllo "quoted" \ back', 'varchar ✓',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a":[1,2,{"b":null}],"big":123456789012345678901234567890, "z": "é"}',
  '{"nested":{"deep":[true,false,null,1.5e300]},"n":-0.000001}', '\x00010203feff',
  '2000-02-29', '2026-11-22 10:15:30.123456', '2026-11-22 10:15:30.5+05:30', '23:59:59.999999',
  '1 year 2 mons 3 days 04:05:06.789', 'happy', 7, '{1,2,3}', '{{1,NULL},{3,4}}',
  ARRAY['a,b', 'c"d', 'NULL', NULL, '', 'x y', 'back\slash', '{braces}'],
  ARRAY[ARRAY['r1 c1', NULL], ARRAY['"q"', 'NULL']], '192.168.0.1/24', '1234.56');
INSERT INTO types (id, tenant) VALUES (2, 'acme');
INSERT INTO types VALUES (3, 'globex', false, 0, -2147483648, -9223372036854775808,
  'NaN', '-Infinity', 1e-7, '', '', '00000000-0000-0000-0000-000000000000', '[]', '"just a string"',
  ''::bytea, 'infinity', '-infinity', 'infinity', '00:00', '-1 days -00:00:01', 'sad', 1, '{}', '{{{1},{2}},{{3},{4}}}',
  '{}', '{{NULL,NULL},{NULL,NULL}}', '::1', '-1234.56');
"#,
    )
    .await
    .expect("inserts");
    let mut inserted = Vec::new();
    for id in 1..=3 {
        inserted.push(expected_row(&c, id).await);
    }
    c.batch_execute(
        r#"
UPDATE types SET b = false, i8 = -1, n = '-0.5', f4 = 'Infinity', f8 = 3.141592653589793, t = E'line\nbreak\ttab',
  jb = '{"k": [1, {"x": "y"}]}', by = decode(repeat('ff', 300), 'hex'), ts = '1999-12-31 23:59:59',
  tstz = '2026-01-01 00:00:00-08', ia2 = '{{NULL,NULL},{NULL,5}}', ta = '{"only one"}', m = 'ok' WHERE id = 1;
UPDATE types SET i2 = 5, d = '0044-03-15 BC' WHERE id = 3;
"#,
    )
    .await
    .expect("updates");
    let updated = [expected_row(&c, 1).await, expected_row(&c, 3).await];
    c.batch_execute("DELETE FROM types WHERE id IN (2, 3)")
        .await
        .expect("deletes");

    wait_for_events(&c, 7).await;
    stop(running, token).await;
    let events = all_events(&c).await;

    let ins = of_type(&events, "row.inserted");
    let upd = of_type(&events, "row.updated");
    let del = of_type(&events, "row.deleted");
    assert_eq!((ins.len(), upd.len(), del.len()), (3, 2, 2));
    for (i, exp) in inserted.iter().enumerate() {
        let e = by_subject(&ins, &format!("public.types/{}", i + 1));
        assert_same(&e["data"]["new"], exp, &format!("insert {}", i + 1));
    }
    let u1 = by_subject(&upd, "public.types/1");
    assert_same(&u1["data"]["new"], &updated[0], "update 1 new");
    assert_same(&u1["data"]["old"], &inserted[0], "update 1 old");
    let u3 = by_subject(&upd, "public.types/3");
    assert_same(&u3["data"]["new"], &updated[1], "update 3 new");
    assert_eq!(u3["data"]["changed"], json!(["i2", "d"]));
    assert_same(
        &by_subject(&del, "public.types/2")["data"]["old"],
        &inserted[1],
        "delete 2",
    );
    assert_same(
        &by_subject(&del, "public.types/3")["data"]["old"],
        &updated[1],
        "delete 3",
    );
    for e in &events {
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["id"], e["seq"].to_string());
        assert!(e["lsn"].as_str().is_some_and(|l| l.contains('/')), "{e}");
        assert!(
            e["time"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z') && t.len() == 27),
            "{e}"
        );
        assert_eq!(e["source"], "/sluice/pg/main");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_is_never_sent_as_a_wrong_value() {
    let db = TestDb::new("toast");
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE plain (tenant text, id int, note text, blob text, PRIMARY KEY (tenant, id));
         CREATE TABLE full_ident (tenant text, id int, note text, blob text, PRIMARY KEY (tenant, id));
         ALTER TABLE full_ident REPLICA IDENTITY FULL;
         ALTER TABLE plain ALTER COLUMN blob SET STORAGE EXTERNAL;
         ALTER TABLE full_ident ALTER COLUMN blob SET STORAGE EXTERNAL;",
    )
    .await
    .expect("ddl");
    let (running, token) =
        start(&db.config(&[("public.plain", "tenant"), ("public.full_ident", "tenant")])).await;
    c.batch_execute(
        "INSERT INTO plain SELECT 'acme', 1, 'a', string_agg(md5(g::text), '') FROM generate_series(1, 3000) g;
         INSERT INTO full_ident SELECT 'acme', 1, 'a', string_agg(md5(g::text), '') FROM generate_series(1, 3000) g;
         UPDATE plain SET note = 'b';
         UPDATE full_ident SET note = 'b';",
    )
    .await
    .expect("writes");
    let blob: String = c
        .query_one("SELECT blob FROM full_ident", &[])
        .await
        .expect("blob")
        .get(0);
    assert!(blob.len() > 90_000);
    wait_for_events(&c, 4).await;
    stop(running, token).await;
    let events = all_events(&c).await;
    let upd = of_type(&events, "row.updated");
    let plain = upd
        .iter()
        .find(|e| e["data"]["table"] == "plain")
        .expect("plain update");
    assert_eq!(
        plain["data"]["new"],
        json!({"tenant": "acme", "id": 1, "note": "b"})
    );
    assert_eq!(plain["data"]["unchanged"], json!(["blob"]));
    let full = upd
        .iter()
        .find(|e| e["data"]["table"] == "full_ident")
        .expect("full update");
    assert_eq!(full["data"]["new"]["blob"].as_str(), Some(blob.as_str()));
    assert_eq!(full["data"]["changed"], json!(["note"]));
    assert!(full["data"].get("unchanged").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_contiguous_in_statement_order_and_rollbacks_vanish() {
    let db = TestDb::new("tx");
    let a = db.client().await;
    let b = db.client().await;
    a.batch_execute("CREATE TABLE t (id int PRIMARY KEY, tenant text NOT NULL, v text); ALTER TABLE t REPLICA IDENTITY FULL")
        .await
        .expect("ddl");
    let (running, token) = start(&db.config(&[("public.t", "tenant")])).await;
    a.batch_execute("BEGIN; INSERT INTO t VALUES (1, 'acme', 'a1')")
        .await
        .expect("a1");
    b.batch_execute("INSERT INTO t VALUES (100, 'globex', 'b1')")
        .await
        .expect("b1");
    b.batch_execute("BEGIN; INSERT INTO t VALUES (200, 'globex', 'rolled back'); ROLLBACK")
        .await
        .expect("rollback");
    a.batch_execute("INSERT INTO t VALUES (2, 'acme', 'a2'); UPDATE t SET v = 'a1x' WHERE id = 1; DELETE FROM t WHERE id = 2; COMMIT")
        .await
        .expect("a commit");
    b.batch_execute("INSERT INTO t VALUES (101, 'globex', 'b2')")
        .await
        .expect("b2");
    wait_for_events(&a, 6).await;
    stop(running, token).await;
    let events = all_events(&a).await;
    let subjects: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or(""),
                e["subject"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        subjects,
        vec![
            ("row.inserted", "public.t/100"),
            ("row.inserted", "public.t/1"),
            ("row.inserted", "public.t/2"),
            ("row.updated", "public.t/1"),
            ("row.deleted", "public.t/2"),
            ("row.inserted", "public.t/101"),
        ]
    );
    let a_events = &events[1..5];
    assert!(a_events
        .iter()
        .all(|e| e["txid"] == a_events[0]["txid"] && e["time"] == a_events[0]["time"]));
    assert_ne!(events[0]["txid"], a_events[0]["txid"]);
    let seqs: Vec<i64> = events.iter().filter_map(|e| e["seq"].as_i64()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert!(!events
        .iter()
        .any(|e| e["data"]["new"]["v"] == "rolled back"));
    assert_eq!(events[0]["tenant"], "globex");
    assert_eq!(events[1]["tenant"], "acme");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_is_announced_to_each_tenant_of_the_table() {
    let db = TestDb::new("trunc");
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE t1 (id int PRIMARY KEY, tenant text); ALTER TABLE t1 REPLICA IDENTITY FULL;
         CREATE TABLE t2 (id int PRIMARY KEY, tenant text); ALTER TABLE t2 REPLICA IDENTITY FULL;",
    )
    .await
    .expect("ddl");
    let (running, token) =
        start(&db.config(&[("public.t1", "tenant"), ("public.t2", "tenant")])).await;
    c.batch_execute(
        "INSERT INTO t1 VALUES (1, 'acme'), (2, 'globex'), (3, 'acme');
         INSERT INTO t2 VALUES (1, 'initech');
         TRUNCATE t1, t2 RESTART IDENTITY;",
    )
    .await
    .expect("writes");
    wait_for_events(&c, 7).await;
    stop(running, token).await;
    let events = all_events(&c).await;
    let tr = of_type(&events, "row.truncated");
    let mut seen: Vec<(String, String)> = tr
        .iter()
        .map(|e| {
            (
                e["data"]["table"].as_str().unwrap_or("").to_owned(),
                e["tenant"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("t1".to_owned(), "acme".to_owned()),
            ("t1".to_owned(), "globex".to_owned()),
            ("t2".to_owned(), "initech".to_owned())
        ]
    );
    assert!(tr.iter().all(|e| e["data"]["restart_identity"] == true
        && e["topic"]
            .as_str()
            .is_some_and(|t| t.ends_with("/truncate"))));
    // Truncates come after the rows they remove.
    let first_trunc = events
        .iter()
        .position(|e| e["type"] == "row.truncated")
        .expect("truncate");
    assert_eq!(first_trunc, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_mid_stream_are_followed() {
    let db = TestDb::new("schema");
    let c = db.client().await;
    c.batch_execute("CREATE TABLE s (id int PRIMARY KEY, tenant text, note text); ALTER TABLE s REPLICA IDENTITY FULL")
        .await
        .expect("ddl");
    let (running, token) = start(&db.config(&[("public.s", "tenant")])).await;
    c.batch_execute(
        "INSERT INTO s VALUES (1, 'acme', 'n1');
         ALTER TABLE s ADD COLUMN extra int;
         INSERT INTO s VALUES (2, 'acme', 'n2', 42);
         ALTER TABLE s DROP COLUMN note;
         INSERT INTO s VALUES (3, 'acme', 43);
         UPDATE s SET extra = 44 WHERE id = 1;",
    )
    .await
    .expect("writes");
    wait_for_events(&c, 4).await;
    stop(running, token).await;
    let events = all_events(&c).await;
    assert_eq!(
        events[0]["data"]["new"],
        json!({"id": 1, "tenant": "acme", "note": "n1"})
    );
    assert_eq!(
        events[1]["data"]["new"],
        json!({"id": 2, "tenant": "acme", "note": "n2", "extra": 42})
    );
    assert_eq!(
        events[2]["data"]["new"],
        json!({"id": 3, "tenant": "acme", "extra": 43})
    );
    assert_eq!(
        events[3]["data"]["new"],
        json!({"id": 1, "tenant": "acme", "extra": 44})
    );
    assert_eq!(events[3]["data"]["changed"], json!(["extra"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200k_row_transaction_is_appended_whole_and_in_order() {
    let db = TestDb::new("big");
    let c = db.client().await;
    c.batch_execute("CREATE TABLE big (id int PRIMARY KEY, tenant text NOT NULL, v text); ALTER TABLE big REPLICA IDENTITY FULL")
        .await
        .expect("ddl");
    let (running, token) = start(&db.config(&[("public.big", "tenant")])).await;
    c.batch_execute("INSERT INTO big SELECT g, 'tenant' || (g % 10), md5(g::text) FROM generate_series(1, 200000) g")
        .await
        .expect("big insert");
    c.batch_execute("INSERT INTO big VALUES (0, 'after', 'x')")
        .await
        .expect("after");
    let _ = wait_for_events(&c, 200_001).await;
    stop(running, token).await;
    // Each tenant's events in statement order (the transaction's events
    // are grouped by tenant: appender.group_by_tenant).
    let (n, ids, txids, min, max, ordered) = common::rows_summary(&c, "after").await;
    assert_eq!(n, 200_000);
    assert_eq!(ids, 200_000, "every row once");
    assert_eq!(txids, 1, "one transaction");
    assert_eq!(max - min + 1, 200_000, "contiguous seqs");
    assert!(ordered, "each tenant's events in statement order");
    let last: i64 = c
        .query_one("SELECT seq FROM sluice.events WHERE tenant = 'after'", &[])
        .await
        .expect("after")
        .get(0);
    assert_eq!(last, max + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_events_are_ordered_with_rows_and_only_if_committed() {
    let db = TestDb::new("custom");
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE o (id int PRIMARY KEY, tenant text); ALTER TABLE o REPLICA IDENTITY FULL",
    )
    .await
    .expect("ddl");
    let (running, token) = start(&db.config(&[("public.o", "tenant")])).await;
    c.batch_execute(
        r#"
BEGIN;
INSERT INTO o VALUES (1, 'acme');
SELECT pg_logical_emit_message(true, 'sluice', '{"tenant":"acme","type":"order.shipped","data":{"id":1}}');
INSERT INTO o VALUES (2, 'acme');
COMMIT;
BEGIN;
SELECT pg_logical_emit_message(true, 'sluice', '{"tenant":"acme","type":"never","data":{}}');
ROLLBACK;
SELECT pg_logical_emit_message(true, 'sluice', 'not json at all');
SELECT pg_logical_emit_message(true, 'sluice', '{"tenant":"acme","type":"bad type!"}');
SELECT pg_logical_emit_message(true, 'other-prefix', '{"tenant":"acme","type":"ignored"}');
SELECT pg_logical_emit_message(false, 'sluice', '{"tenant":"globex","type":"ping","data":[1,2]}');
INSERT INTO o VALUES (3, 'acme');
"#,
    )
    .await
    .expect("writes");
    wait_for_events(&c, 5).await;
    stop(running, token).await;
    let events = all_events(&c).await;
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        kinds,
        vec![
            "row.inserted",
            "custom.order.shipped",
            "row.inserted",
            "custom.ping",
            "row.inserted"
        ]
    );
    assert_eq!(events[1]["txid"], events[0]["txid"]);
    assert_eq!(events[1]["data"], json!({"id": 1}));
    assert_eq!(events[1]["topic"], "custom/order.shipped");
    assert_eq!(events[3]["tenant"], "globex");
    assert_eq!(events[3]["data"], json!([1, 2]));
}

/// Two-phase commit, as a transaction manager drives it: a transaction
/// prepared in one session (PREPARE TRANSACTION) and committed from another
/// (COMMIT PREPARED) is captured whole, as one transaction, where it
/// committed in the log's order; one rolled back (ROLLBACK PREPARED) never
/// appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_transactions_are_captured_when_committed_and_never_when_rolled_back() {
    let db = TestDb::new("twophase");
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE p (id int PRIMARY KEY, tenant text NOT NULL); ALTER TABLE p REPLICA IDENTITY FULL",
    )
    .await
    .expect("ddl");
    let (running, token) = start(&db.config(&[("public.p", "tenant")])).await;
    // Transaction identifiers are cluster-wide: named after the database.
    let (kept, dropped) = (format!("{}_kept", db.name), format!("{}_dropped", db.name));
    c.batch_execute(&format!(
        "BEGIN; INSERT INTO p VALUES (1, 'acme'), (2, 'globex'); PREPARE TRANSACTION '{kept}';
         BEGIN; INSERT INTO p VALUES (3, 'acme'); PREPARE TRANSACTION '{dropped}';
         INSERT INTO p VALUES (4, 'acme');"
    ))
    .await
    .expect("prepare");
    // Finished from another session, as a transaction manager does; each
    // statement on its own (COMMIT/ROLLBACK PREPARED refuse to run inside a
    // transaction block, which a multi-statement query is).
    let manager = db.client().await;
    for sql in [
        format!("ROLLBACK PREPARED '{dropped}'"),
        format!("COMMIT PREPARED '{kept}'"),
        "INSERT INTO p VALUES (5, 'acme')".to_owned(),
    ] {
        manager.batch_execute(&sql).await.expect(&sql);
    }
    wait_for_events(&c, 4).await;
    stop(running, token).await;
    let events = all_events(&c).await;
    let ids: Vec<i64> = events
        .iter()
        .filter_map(|e| e["data"]["new"]["id"].as_i64())
        .collect();
    assert_eq!(ids, vec![4, 1, 2, 5], "commit order, and row 3 never");
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(events[1]["txid"], events[2]["txid"], "one transaction");
    assert_ne!(events[0]["txid"], events[1]["txid"]);
    assert_ne!(events[3]["txid"], events[1]["txid"]);
    assert_eq!(
        (&events[1]["tenant"], &events[2]["tenant"]),
        (&json!("acme"), &json!("globex"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_without_a_tenant_are_given_to_no_one() {
    let db = TestDb::new("notenant");
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE n (id int PRIMARY KEY, tenant text); ALTER TABLE n REPLICA IDENTITY FULL",
    )
    .await
    .expect("ddl");
    let (running, token) = start(&db.config(&[("public.n", "tenant")])).await;
    c.batch_execute("INSERT INTO n VALUES (1, NULL); INSERT INTO n VALUES (2, ''); INSERT INTO n VALUES (3, 'acme')")
        .await
        .expect("writes");
    wait_for_events(&c, 1).await;
    let dropped = running
        .stats
        .dropped_no_tenant
        .load(std::sync::atomic::Ordering::Relaxed);
    stop(running, token).await;
    let events = all_events(&c).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["subject"], "public.n/3");
    assert_eq!(dropped, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_table_whose_deletes_cannot_be_attributed() {
    let db = TestDb::new("refuse");
    let c = db.client().await;
    c.batch_execute("CREATE TABLE r (id int PRIMARY KEY, tenant text)")
        .await
        .expect("ddl");
    let err = pipeline::start(
        &db.config(&[("public.r", "tenant")]),
        CancellationToken::new(),
        None,
    )
    .await
    .err()
    .expect("must refuse");
    let msg = err.to_string();
    assert!(matches!(err, PipelineError::Preflight(_)), "{msg}");
    assert!(
        msg.contains("public.r") && msg.contains("REPLICA IDENTITY FULL"),
        "{msg}"
    );
    // With the fix applied it starts.
    c.batch_execute("ALTER TABLE r REPLICA IDENTITY FULL")
        .await
        .expect("fix");
    let (running, token) = start(&db.config(&[("public.r", "tenant")])).await;
    stop(running, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_restart_resumes_without_loss_or_duplicates() {
    let db = TestDb::new("restart");
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE r (id int PRIMARY KEY, tenant text); ALTER TABLE r REPLICA IDENTITY FULL",
    )
    .await
    .expect("ddl");
    let config = db.config(&[("public.r", "tenant")]);
    let (running, token) = start(&config).await;
    c.batch_execute("INSERT INTO r SELECT g, 'acme' FROM generate_series(1, 100) g")
        .await
        .expect("w1");
    wait_for_events(&c, 100).await;
    stop(running, token).await;
    c.batch_execute("INSERT INTO r SELECT g, 'acme' FROM generate_series(101, 150) g")
        .await
        .expect("w2");
    let (running, token) = start(&config).await;
    c.batch_execute("INSERT INTO r SELECT g, 'acme' FROM generate_series(151, 200) g")
        .await
        .expect("w3");
    wait_for_events(&c, 200).await;
    stop(running, token).await;
    let events = all_events(&c).await;
    let ids: Vec<i64> = events
        .iter()
        .filter_map(|e| e["data"]["new"]["id"].as_i64())
        .collect();
    assert_eq!(ids, (1..=200).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_reads_never_return_a_tenant_with_the_same_index_hash() {
    // "tenant-97018" and "tenant-180400" share their FNV-1a hash, the key of
    // the log's tenant index: only the recheck of the id keeps them apart.
    let (a, b) = ("tenant-97018", "tenant-180400");
    assert_eq!(
        TenantId::new(a).expect("valid").hash32(),
        TenantId::new(b).expect("valid").hash32()
    );
    let db = TestDb::new("collide");
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE h (id int PRIMARY KEY, tenant text); ALTER TABLE h REPLICA IDENTITY FULL",
    )
    .await
    .expect("ddl");
    let (running, token) = start(&db.config(&[("public.h", "tenant")])).await;
    c.batch_execute(&format!(
        "INSERT INTO h SELECT g, CASE WHEN g % 3 = 0 THEN '{a}' ELSE '{b}' END FROM generate_series(1, 30) g"
    ))
    .await
    .expect("writes");
    wait_for_events(&c, 30).await;
    stop(running, token).await;
    for (tenant, n) in [(a, 10), (b, 20)] {
        let scope = ReadScope::Tenant(TenantId::new(tenant).expect("valid"));
        let events = read_events(&c, &scope, 1, 1000).await.expect("read");
        assert_eq!(events.len(), n, "{tenant}");
        assert!(events.iter().all(|e| e.tenant.as_str() == tenant));
        // From the middle of the log, too.
        let later = read_events(&c, &scope, 16, 1000).await.expect("read");
        assert!(later
            .iter()
            .all(|e| e.tenant.as_str() == tenant && e.seq >= 16));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_state_database_holds_the_log() {
    let source = TestDb::new("srcdb");
    let state = TestDb::new("statedb");
    let c = source.client().await;
    c.batch_execute(
        "CREATE TABLE s (id int PRIMARY KEY, tenant text); ALTER TABLE s REPLICA IDENTITY FULL",
    )
    .await
    .expect("ddl");
    let config = source.config_with(
        &[("public.s", "tenant")],
        &[("SLUICE_STATE_URL", &state.url)],
    );
    let (running, token) = start(&config).await;
    c.batch_execute("INSERT INTO s SELECT g, 'acme' FROM generate_series(1, 5) g")
        .await
        .expect("writes");
    let sc = state.client().await;
    wait_for_events(&sc, 5).await;
    stop(running, token).await;
    assert_eq!(all_events(&sc).await.len(), 5);
    let in_source: Option<String> = c
        .query_one("SELECT to_regclass('sluice.events')::text", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(in_source, None, "the source database gets no log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_batch_rows_read_back_as_their_events() {
    use sluice::event::{format_time_micros, Committed, Envelope};
    use sluice::log::{self, LogQuery};

    let db = TestDb::new("recbatch");
    let mut c = db.client().await;
    log::migrate::migrate(&mut c).await.expect("migrate");
    // (seq, first_seq, tenant, subject, data): ordinary rows and record
    // batches of two tenants, interleaved.
    type S = &'static str;
    type LogRow = (i64, Option<i64>, S, Option<S>, S);
    let rows: &[LogRow] = &[
        (1, None, "acme", Some("s1"), r#"{"a": 1}"#),
        (2, None, "globex", Some("s2"), r#"{"b":2}"#),
        (
            6,
            Some(3),
            "acme",
            None,
            r#"[["b3", {"x": 1.50, "big": 12345678901234567890}], [null, [1, 2]], ["b\"5 \u00e9 ü", "str"], ["b6",{"y":  true}]]"#,
        ),
        (7, None, "acme", None, "null"),
        (
            9,
            Some(8),
            "globex",
            None,
            r#"[["g8", {"g": 8}], ["g9", 9]]"#,
        ),
        (10, None, "acme", Some("s10"), r#"{"z": [] }"#),
    ];
    // Every event: (seq, tenant, subject, data text).
    let expected: Vec<(i64, &str, Option<&str>, &str)> = vec![
        (1, "acme", Some("s1"), r#"{"a": 1}"#),
        (2, "globex", Some("s2"), r#"{"b":2}"#),
        (
            3,
            "acme",
            Some("b3"),
            r#"{"x": 1.50, "big": 12345678901234567890}"#,
        ),
        (4, "acme", None, "[1, 2]"),
        (5, "acme", Some("b\"5 é ü"), r#""str""#),
        (6, "acme", Some("b6"), r#"{"y":  true}"#),
        (7, "acme", None, "null"),
        (8, "globex", Some("g8"), r#"{"g": 8}"#),
        (9, "globex", Some("g9"), "9"),
        (10, "acme", Some("s10"), r#"{"z": [] }"#),
    ];
    let commit_micros = 1_704_164_645_123_456_i64;
    let commit_time = chrono::DateTime::from_timestamp_micros(commit_micros).expect("time");
    for (seq, first_seq, tenant, subject, data) in rows {
        let hash = TenantId::new(tenant).expect("valid").hash32();
        c.execute(
            "INSERT INTO sluice.events (seq, first_seq, tenant, tenant_hash, type, topic, source,
                                        subject, txid, lsn, commit_time, data)
             VALUES ($1, $2, $3, $4, 'row.insert', 'public.items', 'pg', $5, 77, 4096, $6, $7)",
            &[seq, first_seq, tenant, &hash, subject, &commit_time, data],
        )
        .await
        .expect("insert");
    }
    let time = format_time_micros(commit_micros);
    let body = |seq: i64| -> String {
        let (_, tenant, subject, data) = expected.iter().find(|e| e.0 == seq).expect("known");
        Envelope {
            seq,
            source: "pg",
            event_type: "row.insert",
            subject: *subject,
            time: &time,
            tenant,
            topic: "public.items",
            txid: Some(77),
            lsn: Some(4096),
            ext: None,
            data,
        }
        .to_json()
    };
    let check = |events: Vec<Committed>, want: &[i64], what: &str| {
        let got: Vec<i64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(got, want, "{what}");
        for e in &events {
            assert_eq!(e.body, body(e.seq), "{what}: body of {}", e.seq);
            let tenant = expected[(e.seq - 1) as usize].1;
            assert_eq!(e.tenant.as_str(), tenant, "{what}");
            assert_eq!(e.commit_micros, commit_micros, "{what}");
            let parsed: Value = serde_json::from_slice(&e.body).expect("envelope is JSON");
            assert_eq!(parsed["seq"], e.seq, "{what}");
        }
    };
    let acme = ReadScope::Tenant(TenantId::new("acme").expect("valid"));
    let globex = ReadScope::Tenant(TenantId::new("globex").expect("valid"));
    let op = ReadScope::Operator;
    let q = |from: i64, to: Option<i64>, limit: i64| LogQuery {
        from,
        to,
        limit,
        ..LogQuery::default()
    };
    let read = |scope: &ReadScope, from, limit| {
        let (c, scope) = (&c, scope.clone());
        async move { read_events(c, &scope, from, limit).await.expect("read") }
    };
    let query = |scope: &ReadScope, q: LogQuery| {
        let (c, scope) = (&c, scope.clone());
        async move { log::query_events(c, &scope, &q).await.expect("query") }
    };

    check(
        read(&op, 1, 100).await,
        &(1..=10).collect::<Vec<_>>(),
        "operator, all",
    );
    check(
        read(&acme, 1, 100).await,
        &[1, 3, 4, 5, 6, 7, 10],
        "acme, all",
    );
    check(read(&globex, 1, 100).await, &[2, 8, 9], "globex, all");
    // `from` inside a batch.
    check(read(&acme, 5, 100).await, &[5, 6, 7, 10], "acme from 5");
    check(
        read(&op, 4, 100).await,
        &[4, 5, 6, 7, 8, 9, 10],
        "operator from 4",
    );
    check(read(&globex, 9, 100).await, &[9], "globex from 9");
    check(read(&acme, 11, 100).await, &[], "acme past the head");
    // A limit smaller than a batch.
    check(read(&op, 3, 2).await, &[3, 4], "operator from 3, limit 2");
    check(read(&acme, 4, 1).await, &[4], "acme from 4, limit 1");
    check(read(&acme, 1, 3).await, &[1, 3, 4], "acme limit 3");
    check(
        read(&op, 5, 3).await,
        &[5, 6, 7],
        "operator from 5, limit 3",
    );
    // `to` inside a batch.
    check(
        query(&acme, q(1, Some(4), 100)).await,
        &[1, 3, 4],
        "acme to 4",
    );
    check(
        query(&op, q(4, Some(5), 100)).await,
        &[4, 5],
        "operator 4..=5",
    );
    check(
        query(&op, q(5, Some(8), 100)).await,
        &[5, 6, 7, 8],
        "operator 5..=8",
    );
    check(query(&acme, q(5, Some(5), 1)).await, &[5], "acme 5..=5");
    check(
        query(&globex, q(1, Some(8), 100)).await,
        &[2, 8],
        "globex to 8",
    );
    check(
        query(&globex, q(3, Some(7), 100)).await,
        &[],
        "globex 3..=7",
    );
    check(query(&acme, q(2, Some(2), 100)).await, &[], "acme 2..=2");
    check(
        query(&op, q(4, Some(9), 3)).await,
        &[4, 5, 6],
        "operator 4..=9 limit 3",
    );
    check(
        query(&op, q(1, Some(100), 100)).await,
        &(1..=10).collect::<Vec<_>>(),
        "to past the head",
    );
    // Filters on the shared header columns.
    let typed = LogQuery {
        types: Some(vec!["row.insert".into()]),
        ..q(4, None, 100)
    };
    check(query(&acme, typed).await, &[4, 5, 6, 7, 10], "acme, typed");
    let untyped = LogQuery {
        types: Some(vec!["row.delete".into()]),
        ..q(1, None, 100)
    };
    check(query(&op, untyped).await, &[], "no such type");

    // Seqs inside batches, in seq order, once each; missing ones left out.
    let found = log::events_by_seq(&c, &[9, 4, 1, 5, 4, 99, 6, 0])
        .await
        .expect("by seq");
    check(found, &[1, 4, 5, 6, 9], "events_by_seq");

    // The view: one row per event, data byte for byte.
    let view: Vec<(i64, Option<String>, String, String)> = c
        .query(
            "SELECT seq, subject, data, tenant FROM sluice.event_log ORDER BY seq",
            &[],
        )
        .await
        .expect("view")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let want: Vec<(i64, Option<String>, String, String)> = expected
        .iter()
        .map(|(seq, tenant, subject, data)| {
            (
                *seq,
                subject.map(str::to_owned),
                (*data).to_owned(),
                (*tenant).to_owned(),
            )
        })
        .collect();
    assert_eq!(view, want);
    let cols: Vec<String> = c
        .query(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = 'sluice' AND table_name = 'event_log' ORDER BY ordinal_position",
            &[],
        )
        .await
        .expect("columns")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        cols,
        [
            "seq",
            "tenant",
            "tenant_hash",
            "type",
            "topic",
            "source",
            "subject",
            "txid",
            "lsn",
            "commit_time",
            "appended_at",
            "data",
            "ext"
        ]
    );
}

/// Live changes of one source transaction are stored as record batches
/// (one row per tenant and run of one type and table), and every reader
/// still sees single events: each tenant's in its source order, every
/// event once, seqs contiguous, the same bytes through every read path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_transactions_are_stored_as_record_batches_and_read_as_events() {
    use sluice::log::{self, LogQuery};

    let db = TestDb::new("livebatch");
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, tenant text NOT NULL, v text);
         ALTER TABLE t REPLICA IDENTITY FULL;
         CREATE TABLE u (id int PRIMARY KEY, tenant text NOT NULL);
         ALTER TABLE u REPLICA IDENTITY FULL;",
    )
    .await
    .expect("ddl");
    let (running, token) =
        start(&db.config(&[("public.t", "tenant"), ("public.u", "tenant")])).await;
    let tenants = ["acme", "globex", "initech"];
    // One transaction: 300 inserts with the tenants interleaved row by row,
    // an insert into another table in the middle, updates, a delete.
    let mut sql = String::from("BEGIN;");
    for id in 0..300 {
        sql.push_str(&format!(
            "INSERT INTO t VALUES ({id}, '{}', 'v{id}');",
            tenants[id % 3]
        ));
        if id == 150 {
            sql.push_str("INSERT INTO u VALUES (1, 'acme');");
        }
    }
    sql.push_str("UPDATE t SET v = 'w' WHERE id < 30; DELETE FROM t WHERE id = 299; COMMIT;");
    c.batch_execute(&sql).await.expect("the big transaction");
    // A lone change after it: an ordinary row.
    c.batch_execute("INSERT INTO t VALUES (1000, 'globex', 'lone')")
        .await
        .expect("lone insert");
    let total = 300 + 1 + 30 + 1 + 1;
    wait_for_events(&c, total).await;
    stop(running, token).await;

    // What each tenant's source order is: (type, subject) per change.
    let mut want: std::collections::BTreeMap<&str, Vec<(String, String)>> = Default::default();
    for id in 0..300 {
        want.entry(tenants[id % 3])
            .or_default()
            .push(("row.inserted".into(), format!("public.t/{id}")));
        if id == 150 {
            want.entry("acme")
                .or_default()
                .push(("row.inserted".into(), "public.u/1".into()));
        }
    }
    for id in 0..30 {
        want.entry(tenants[id % 3])
            .or_default()
            .push(("row.updated".into(), format!("public.t/{id}")));
    }
    want.entry(tenants[299 % 3])
        .or_default()
        .push(("row.deleted".into(), "public.t/299".into()));
    want.entry("globex")
        .or_default()
        .push(("row.inserted".into(), "public.t/1000".into()));

    // Stored as batches: far fewer rows than events, each batch row one
    // tenant's run of one type and table.
    let rows: i64 = c
        .query_one("SELECT count(*) FROM sluice.events", &[])
        .await
        .expect("count rows")
        .get(0);
    let batch_rows: i64 = c
        .query_one(
            "SELECT count(*) FROM sluice.events WHERE first_seq IS NOT NULL",
            &[],
        )
        .await
        .expect("count batch rows")
        .get(0);
    // How many rows the events took depends on how the appender's
    // transactions fell (the appender takes what is waiting): the
    // appender-level test below pins the layout; here every read path is
    // checked over whatever batches formed.
    eprintln!("{total} events in {rows} rows, {batch_rows} of them record batches");
    let lone: i64 = c
        .query_one(
            "SELECT count(*) FROM sluice.events WHERE first_seq IS NULL AND subject = 'public.t/1000'",
            &[],
        )
        .await
        .expect("lone row")
        .get(0);
    assert_eq!(lone, 1, "a lone change is an ordinary row");

    // The operator's view: every event once, seqs contiguous; per tenant,
    // the source order.
    let events = all_events(&c).await;
    assert_eq!(events.len(), total);
    let seqs: Vec<i64> = events.iter().filter_map(|e| e["seq"].as_i64()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let per_tenant = |events: &[Value], tenant: &str| -> Vec<(String, String)> {
        events
            .iter()
            .filter(|e| e["tenant"] == tenant)
            .map(|e| {
                (
                    e["type"].as_str().unwrap_or("").to_owned(),
                    e["subject"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    };
    for (tenant, changes) in &want {
        assert_eq!(
            &per_tenant(&events, tenant),
            changes,
            "operator read, {tenant}"
        );
    }
    // A tenant's own read: the same events, in the same order, same bytes.
    for (tenant, changes) in &want {
        let scope = ReadScope::Tenant(TenantId::new(tenant).expect("valid"));
        let own = read_events(&c, &scope, 1, 10_000)
            .await
            .expect("tenant read");
        let own: Vec<Value> = own
            .iter()
            .map(|e| serde_json::from_slice(&e.body).expect("json"))
            .collect();
        assert_eq!(&per_tenant(&own, tenant), changes, "{tenant}'s read");
        assert_eq!(own.len(), changes.len(), "{tenant} sees only its own");
        let operator: Vec<&Value> = events.iter().filter(|e| e["tenant"] == *tenant).collect();
        assert!(own.iter().zip(&operator).all(|(a, b)| a == *b));
        // `from` inside a batch, by page.
        let from = own[7]["seq"].as_i64().expect("seq");
        let page = log::query_events(
            &c,
            &scope,
            &LogQuery {
                from,
                to: None,
                limit: 3,
                ..LogQuery::default()
            },
        )
        .await
        .expect("page");
        let page: Vec<Value> = page
            .iter()
            .map(|e| serde_json::from_slice(&e.body).expect("json"))
            .collect();
        assert_eq!(page, own[7..10].to_vec(), "{tenant} from inside a batch");
    }
    // By seq, and through the event_log view: the same events.
    let by_seq = log::events_by_seq(&c, &seqs).await.expect("by seq");
    assert_eq!(by_seq.len(), total);
    for (e, want) in by_seq.iter().zip(&events) {
        let got: Value = serde_json::from_slice(&e.body).expect("json");
        assert_eq!(&got, want);
    }
    let view = c
        .query(
            "SELECT seq, tenant, type, subject, data FROM sluice.event_log ORDER BY seq",
            &[],
        )
        .await
        .expect("event_log");
    assert_eq!(view.len(), total);
    for (r, e) in view.iter().zip(&events) {
        assert_eq!(r.get::<_, i64>(0), e["seq"].as_i64().expect("seq"));
        assert_eq!(r.get::<_, &str>(1), e["tenant"]);
        assert_eq!(r.get::<_, &str>(2), e["type"]);
        assert_eq!(r.get::<_, &str>(3), e["subject"]);
        let data: Value = serde_json::from_str(r.get::<_, &str>(4)).expect("data");
        assert_eq!(data, e["data"]);
    }
}

/// With `appender.group_by_tenant = false` a transaction keeps its exact
/// statement order across tenants; a tenant's consecutive changes of one
/// type and table still share record batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ungrouped_transactions_keep_their_exact_order_across_tenants() {
    let db = TestDb::new("ungrouped");
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, tenant text NOT NULL);
         ALTER TABLE t REPLICA IDENTITY FULL;",
    )
    .await
    .expect("ddl");
    let config = db.config_with(
        &[("public.t", "tenant")],
        &[("SLUICE_APPENDER_GROUP_BY_TENANT", "false")],
    );
    assert!(!config.appender.group_by_tenant);
    let (running, token) = start(&config).await;
    // acme ×20, globex ×20, acme ×21 (40..=60), then alternating.
    let tenant_of = |id: usize| match id {
        0..20 | 40..60 => "acme",
        20..40 => "globex",
        _ if id % 2 == 0 => "acme",
        _ => "globex",
    };
    let mut sql = String::from("BEGIN;");
    for id in 0..70 {
        sql.push_str(&format!(
            "INSERT INTO t VALUES ({id}, '{}');",
            tenant_of(id)
        ));
    }
    sql.push_str("COMMIT;");
    c.batch_execute(&sql).await.expect("transaction");
    wait_for_events(&c, 70).await;
    stop(running, token).await;

    let events = all_events(&c).await;
    let got: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["tenant"].as_str().unwrap_or("").to_owned(),
                e["subject"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = (0..70)
        .map(|id| (tenant_of(id).to_owned(), format!("public.t/{id}")))
        .collect();
    assert_eq!(got, want, "statement order across tenants");
    // Every batch row lies inside one of the three runs of one tenant
    // (where the appender's transactions cut them depends on timing).
    let first = events[0]["seq"].as_i64().expect("seq");
    let batches = c
        .query(
            "SELECT first_seq, seq FROM sluice.events WHERE first_seq IS NOT NULL",
            &[],
        )
        .await
        .expect("batch rows");
    for r in &batches {
        let (lo, hi) = (r.get::<_, i64>(0) - first, r.get::<_, i64>(1) - first);
        assert!(
            [(0, 19), (20, 39), (40, 60)]
                .iter()
                .any(|(a, b)| *a <= lo && hi <= *b),
            "batch {lo}..={hi} spans tenants"
        );
    }
}

fn appended_event(
    tenant: &str,
    txid: Option<u64>,
    ordinal: u64,
    kind: &str,
    id: u64,
) -> PendingEvent {
    let time_micros = 1_767_000_000_000_000 + txid.unwrap_or(ordinal) as i64;
    PendingEvent {
        audience: Audience::Tenant(TenantId::new(tenant).expect("valid")),
        position: SourcePosition {
            commit_lsn: txid.map_or(ordinal, |t| t * 1000),
            ordinal,
        },
        source: "/sluice/pg/main".into(),
        event_type: format!("row.{kind}").into(),
        topic: format!("tables/public.t/{kind}").into(),
        subject: Some(format!("public.t/{id}")),
        time_micros,
        time: format_time_micros(time_micros).into(),
        txid,
        lsn: txid.map(|t| t * 1000),
        data: JsonText::parse(format!(r#"{{"id":{id},"tenant":"{tenant}"}}"#)).expect("json"),
        relation: Some("public.t".into()),
        ext: None,
    }
}

/// The appender's layout, pinned: every item is queued before the appender
/// runs, so it appends them in one transaction. A 600-event transaction of
/// three interleaved tenants becomes one record batch per tenant and run
/// of one type (a tenant's events in their order); a lone event is an
/// ordinary row. Ungrouped, the exact order is kept and only consecutive
/// runs of one tenant are batched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_appender_stores_a_transaction_as_record_batches_per_tenant() {
    use sluice::config::AppenderConfig;
    use sluice::log::{self, AppendItem, Appender};

    let db = TestDb::new("appendbatch");
    let mut c = db.client().await;
    log::migrate::migrate(&mut c).await.expect("migrate");
    let source: std::sync::Arc<str> = "pg/main".into();
    let tenants = ["a", "b", "c"];
    let items = || {
        let event = |e: PendingEvent| AppendItem::Event {
            source: source.clone(),
            event: e,
            token: None,
        };
        let mut items = Vec::new();
        let mut ordinal = 0;
        for id in 0..600u64 {
            ordinal += 1;
            let tenant = tenants[id as usize % 3];
            items.push(event(appended_event(
                tenant,
                Some(7),
                ordinal,
                "inserted",
                id,
            )));
        }
        for id in (0..30u64).step_by(3) {
            ordinal += 1;
            items.push(event(appended_event("a", Some(7), ordinal, "updated", id)));
        }
        items.push(AppendItem::TxEnd {
            source: source.clone(),
            commit_lsn: 7000,
            end_lsn: 7008,
        });
        items.push(event(appended_event("b", Some(8), 1, "inserted", 1000)));
        items.push(AppendItem::TxEnd {
            source: source.clone(),
            commit_lsn: 8000,
            end_lsn: 8008,
        });
        items
    };
    let append = |group_by_tenant: bool| {
        let url = db.url.clone();
        let items = items();
        let source = source.clone();
        async move {
            let config = AppenderConfig {
                group_by_tenant,
                ..AppenderConfig::default()
            };
            let (mut appender, handle) = Appender::start(&url, &config, None)
                .await
                .expect("appender");
            appender.checkpoint(&source).await.expect("checkpoint");
            for item in items {
                handle.send(item).await.expect("send");
            }
            drop(handle);
            appender
                .run(CancellationToken::new())
                .await
                .expect("appends and stops");
        }
    };
    type Layout = Vec<(i64, i64, String, String)>;
    async fn layout(c: &tokio_postgres::Client) -> Layout {
        c.query(
            "SELECT coalesce(first_seq, seq), seq, tenant, type FROM sluice.events ORDER BY seq",
            &[],
        )
        .await
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
    }
    let row = |lo: i64, hi: i64, t: &str, ty: &str| (lo, hi, t.to_owned(), format!("row.{ty}"));
    let subjects = |events: &[Value], tenant: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["tenant"] == tenant)
            .map(|e| {
                format!(
                    "{} {}",
                    e["type"].as_str().unwrap_or(""),
                    e["subject"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    let a_order: Vec<String> = (0..600)
        .step_by(3)
        .map(|id| format!("row.inserted public.t/{id}"))
        .chain(
            (0..30)
                .step_by(3)
                .map(|id| format!("row.updated public.t/{id}")),
        )
        .collect();

    append(true).await;
    assert_eq!(
        layout(&c).await,
        vec![
            row(1, 200, "a", "inserted"),
            row(201, 210, "a", "updated"),
            row(211, 410, "b", "inserted"),
            row(411, 610, "c", "inserted"),
            row(611, 611, "b", "inserted"),
        ]
    );
    let events = all_events(&c).await;
    assert_eq!(subjects(&events, "a"), a_order, "a's events in its order");
    let seqs: Vec<i64> = events.iter().filter_map(|e| e["seq"].as_i64()).collect();
    assert_eq!(seqs, (1..=611).collect::<Vec<_>>());
    let checkpoint: (i64, bool) = c
        .query_one(
            "SELECT commit_lsn, complete FROM sluice.checkpoints WHERE source = 'pg/main'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .expect("checkpoint");
    assert_eq!(checkpoint, (8000, true));

    // Ungrouped, on a fresh log: the exact order, one row per event but
    // for a's run of ten updates.
    c.batch_execute("DROP SCHEMA sluice CASCADE")
        .await
        .expect("drop");
    log::migrate::migrate(&mut c).await.expect("migrate again");
    append(false).await;
    let rows = layout(&c).await;
    assert_eq!(rows.len(), 600 + 1 + 1);
    assert_eq!(rows[600], row(601, 610, "a", "updated"));
    let events = all_events(&c).await;
    let order: Vec<String> = events
        .iter()
        .take(600)
        .map(|e| e["subject"].as_str().unwrap_or("").to_owned())
        .collect();
    let statements: Vec<String> = (0..600).map(|id| format!("public.t/{id}")).collect();
    assert_eq!(order, statements);
    assert_eq!(subjects(&events, "a"), a_order);
}

/// A transaction whose commit record comes right after a non-transactional
/// message (a heartbeat, or a custom event of its own) was written while it
/// was open: its `commit_lsn` is the message's end LSN. Each such
/// transaction must be in the log (a checkpoint at the message's end once
/// counted it as appended, and it was lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_right_after_a_heartbeat_or_custom_message_is_not_lost() {
    let db = TestDb::new("hb_commit");
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE o (id int PRIMARY KEY, tenant text); ALTER TABLE o REPLICA IDENTITY FULL",
    )
    .await
    .expect("ddl");
    let (running, token) = start(&db.config(&[("public.o", "tenant")])).await;
    let mut open = db.client().await;
    for i in 0..40 {
        let tx = open.transaction().await.expect("begin");
        tx.execute("INSERT INTO o VALUES ($1, 'acme')", &[&i])
            .await
            .expect("insert");
        // The message, from another session, while the transaction is open.
        let (prefix, content) = if i % 2 == 0 {
            ("sluice-heartbeat", String::new())
        } else {
            (
                "sluice",
                format!(r#"{{"tenant":"acme","type":"ping","data":{{"i":{i}}}}}"#),
            )
        };
        c.execute(
            "SELECT pg_logical_emit_message(false, $1::text, $2::text)",
            &[&prefix, &content],
        )
        .await
        .expect("message");
        // On an idle cluster this commit record starts exactly where the
        // message's record ends.
        tx.commit().await.expect("commit");
    }
    // Every row and every custom event is in the log.
    let events = wait_for_events(&c, 60).await;
    stop(running, token).await;
    let rows: Vec<i64> = of_type(&events, "row.inserted")
        .iter()
        .map(|e| e["data"]["key"]["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(rows, (0..40).collect::<Vec<i64>>());
    assert_eq!(of_type(&events, "custom.ping").len(), 20);
}
