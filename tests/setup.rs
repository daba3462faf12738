//! `sluice setup` and `sluice check` against a real Postgres, as a new
//! user runs them: setup never publishes a table whose writes that would
//! break, and check's privilege lines say whether setup will work.

mod common;

use std::path::Path;

use common::proc::run_cli;
use common::TestDb;

/// A config for `url` capturing `tables` (`schema.table`, `tenant`).
fn config(dir: &Path, db: &TestDb, url: &str, tables: &[&str]) -> std::path::PathBuf {
    let list: Vec<String> = tables
        .iter()
        .map(|t| format!("{{ table = \"{t}\", tenant_column = \"tenant\" }}"))
        .collect();
    let path = dir.join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n\n[source.postgres]\nurl = \"{url}\"\nslot = \"slot_{}\"\ntables = [{}]\n",
            db.name,
            list.join(", ")
        ),
    )
    .expect("config");
    path
}

async fn publications_and_slots(c: &tokio_postgres::Client, db: &TestDb) -> (i64, i64, i64) {
    let r = c
        .query_one(
            "SELECT (SELECT count(*) FROM pg_publication),
                    (SELECT count(*) FROM pg_publication_tables),
                    (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1)",
            &[&format!("slot_{}", db.name)],
        )
        .await
        .expect("state");
    (r.get(0), r.get(1), r.get(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_refuses_a_table_whose_updates_publishing_would_break_and_changes_nothing() {
    let db = TestDb::new("setup_nokey");
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, tenant text NOT NULL);
         ALTER TABLE items REPLICA IDENTITY FULL;
         CREATE TABLE nokey (id int, tenant text NOT NULL);
         INSERT INTO nokey VALUES (1, 'a');",
    )
    .await
    .expect("ddl");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config(dir.path(), &db, &db.url, &["public.items", "public.nokey"]);
    let (code, out, err) = run_cli(&path, &["setup"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(!out.contains("already set up"), "{out}");
    for want in [
        "refusing to add tables to the publication (nothing was changed)",
        "table public.nokey: has no primary key and REPLICA IDENTITY DEFAULT",
        "the application's own UPDATE and DELETE of it would fail",
        "fix: ALTER TABLE \"public\".\"nokey\" REPLICA IDENTITY FULL",
    ] {
        assert!(err.contains(want), "missing {want:?} in: {err}");
    }
    assert_eq!(
        publications_and_slots(&c, &db).await,
        (0, 0, 0),
        "nothing was created"
    );
    c.execute("UPDATE nokey SET tenant = 'b' WHERE id = 1", &[])
        .await
        .expect("the application's update still works");

    // `serve` refuses the same way, before publishing anything.
    let (code, out, err) = run_cli(&path, &["serve"]);
    assert_ne!(code, Some(0), "{out}{err}");
    assert!(err.contains("public.nokey: has no primary key"), "{err}");
    assert_eq!(publications_and_slots(&c, &db).await, (0, 0, 0));
    c.execute("DELETE FROM nokey WHERE id = 1", &[])
        .await
        .expect("the application's delete still works");

    // With the fix applied, setup goes through.
    c.batch_execute("ALTER TABLE nokey REPLICA IDENTITY FULL")
        .await
        .expect("fix");
    let (code, out, err) = run_cli(&path, &["setup"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(publications_and_slots(&c, &db).await, (1, 2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_the_privileges_setup_lacks_and_passes_once_they_are_granted() {
    let db = TestDb::new("setup_role");
    let c = db.client().await;
    let role = format!("weak_{}", db.name);
    c.batch_execute(&format!(
        "CREATE TABLE items (id int PRIMARY KEY, tenant text NOT NULL);
         ALTER TABLE items REPLICA IDENTITY FULL;
         DROP ROLE IF EXISTS {role};
         CREATE ROLE {role} LOGIN REPLICATION;"
    ))
    .await
    .expect("ddl");
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(url, db.url, "the test rewrites the user of {}", db.url);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config(dir.path(), &db, &url, &["public.items"]);

    let (code, out, err) = run_cli(&path, &["check"]);
    assert_eq!(code, Some(1), "{out}{err}");
    for want in [
        format!("[ok  ] privileges: role {role} may replicate (REPLICATION)"),
        format!(
            "[FAIL] privileges: role {role} cannot set up the publication: it lacks CREATE on database {} (to create publication sluice_main); ownership of public.items",
            db.name
        ),
        format!("[warn] privileges: role {role} may not SELECT from public.items: backfills of it fail"),
        format!(
            "[FAIL] state database {}: role {role} may not create the schema sluice (no CREATE on the database)",
            db.name
        ),
    ] {
        assert!(out.contains(&want), "missing {want:?} in:\n{out}");
    }
    // What check calls a problem is one: setup fails.
    let (code, out, err) = run_cli(&path, &["setup"]);
    assert_ne!(code, Some(0), "{out}{err}");

    c.batch_execute(&format!(
        "ALTER TABLE items OWNER TO {role}; GRANT CREATE ON DATABASE \"{}\" TO {role};",
        db.name
    ))
    .await
    .expect("grant");
    let (code, out, err) = run_cli(&path, &["check"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!(
            "[ok  ] privileges: role {role} may create the publication for every captured table"
        )),
        "{out}"
    );
    assert!(!out.contains("FAIL"), "{out}");
    let (code, out, err) = run_cli(&path, &["setup"]);
    assert_eq!(code, Some(0), "{out}{err}");
    // And once the publication covers the tables, ownership is not needed.
    c.batch_execute("ALTER TABLE items OWNER TO postgres; GRANT SELECT ON items TO PUBLIC")
        .await
        .expect("owner back");
    let (code, out, err) = run_cli(&path, &["check"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("already covers every captured table: no table ownership needed"),
        "{out}"
    );
}
