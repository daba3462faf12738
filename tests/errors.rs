//! What an operator reads when Postgres says no: every command prints the
//! server's own message (and DETAIL), what Sluice was doing, and for a
//! refused connection the address; and operator commands print no server
//! NOTICEs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use common::proc::{free_port, sluice};
use common::TestDb;

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run sluice")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The role `pw_user` (password `right-password`), which must log in with
/// SCRAM over TCP (the cluster trusts everyone else), once per binary.
fn password_role() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let pg = common::cluster();
        pg.psql(
            "postgres",
            "CREATE ROLE pw_user LOGIN PASSWORD 'right-password'",
        )
        .expect("create role");
        let hba = pg.data_dir().join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        std::fs::write(
            &hba,
            format!("host all pw_user 127.0.0.1/32 scram-sha-256\n{old}"),
        )
        .expect("write pg_hba.conf");
        pg.psql("postgres", "SELECT pg_reload_conf()")
            .expect("reload");
    });
}

/// A config whose source (and so state) database is `url`.
fn config_for(dir: &Path, url: &str) -> PathBuf {
    let path = dir.join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            "[source.postgres]\nurl = {url:?}\n\
             tables = [{{ table = \"public.todos\", tenant_column = \"tenant\" }}]\n"
        ),
    )
    .expect("write config");
    path
}

/// Runs `sluice <args>` with the config for `url`; it must fail with exit
/// code 1. Returns its stderr.
fn fails(url: &str, args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_for(dir.path(), url);
    let out = run(sluice().arg("--config").arg(&config).args(args));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "sluice {args:?}: {err}");
    assert!(!err.contains("db error"), "sluice {args:?}: {err}");
    err
}

/// Creates the login role `role` unless the cluster has it, runs `sql` in
/// `db` as the superuser, and returns the URL that logs in to `db` as
/// `role` over TCP.
fn url_as_role(db: &TestDb, role: &str, sql: &str) -> String {
    let pg = common::cluster();
    pg.psql(
        &db.name,
        &format!(
            "DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             {sql}"
        ),
    )
    .expect("ddl");
    format!("postgres://{role}@127.0.0.1:{}/{}", pg.port(), db.name)
}

#[test]
fn a_wrong_password_is_reported_in_the_servers_words_by_check_setup_keys_and_serve() {
    password_role();
    let db = TestDb::new("err_password");
    let url = format!(
        "postgres://pw_user:wrong@127.0.0.1:{}/{}",
        common::cluster().port(),
        db.name
    );
    for (args, doing) in [
        (&["check"][..], "source database"),
        (&["setup"][..], "source database"),
        (&["keys", "list"][..], "state database"),
        (&["serve"][..], "state database"),
    ] {
        let err = fails(&url, args);
        assert!(
            err.contains("password authentication failed for user \"pw_user\"")
                && err.contains(doing),
            "sluice {args:?}: {err}"
        );
    }
}

#[test]
fn a_missing_database_is_named_by_setup_and_keys() {
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/no_such_database",
        common::cluster().port()
    );
    for args in [&["setup"][..], &["keys", "create", "--role", "admin"][..]] {
        let err = fails(&url, args);
        assert!(
            err.contains("database \"no_such_database\" does not exist"),
            "sluice {args:?}: {err}"
        );
    }
}

#[test]
fn setup_as_a_role_that_does_not_own_the_table_says_it_must_be_owner() {
    let db = TestDb::new("err_owner");
    let url = url_as_role(
        &db,
        "not_owner",
        &format!(
            "CREATE TABLE todos (id int PRIMARY KEY, tenant text);
             GRANT CREATE ON DATABASE {} TO not_owner",
            db.name
        ),
    );
    let err = fails(&url, &["setup"]);
    assert!(
        err.contains("must be owner of table todos") && err.contains("publication"),
        "{err}"
    );
}

#[test]
fn a_role_without_connect_privilege_gets_the_servers_message_and_detail() {
    let db = TestDb::new("err_connect");
    let url = url_as_role(
        &db,
        "no_connect",
        &format!("REVOKE CONNECT ON DATABASE {} FROM PUBLIC", db.name),
    );
    let err = fails(&url, &["keys", "list"]);
    assert!(
        err.contains(&format!("permission denied for database \"{}\"", db.name))
            && err.contains("DETAIL: User does not have CONNECT privilege"),
        "{err}"
    );
}

#[test]
fn a_refused_connection_names_the_address() {
    let port = free_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/app");
    for args in [&["check"][..], &["keys", "list"][..]] {
        let err = fails(&url, args);
        assert!(
            err.contains(&format!("127.0.0.1:{port}")) && err.contains("Connection refused"),
            "sluice {args:?}: {err}"
        );
    }
}

#[test]
fn setup_twice_and_keys_create_print_no_server_notices() {
    let db = TestDb::new("err_notices");
    common::cluster()
        .psql(
            &db.name,
            "CREATE TABLE todos (id int PRIMARY KEY, tenant text);
             ALTER TABLE todos REPLICA IDENTITY FULL",
        )
        .expect("ddl");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_for(dir.path(), &db.url);
    // The default log level, as an operator runs the commands.
    let cmd = |args: &[&str]| {
        let out = run(sluice()
            .env("SLUICE_LOG", "info")
            .arg("--config")
            .arg(&config)
            .args(args));
        assert!(out.status.success(), "sluice {args:?}: {}", stderr(&out));
        stderr(&out)
    };
    // The log's schema exists already when the key is created.
    cmd(&["migrate"]);
    for args in [
        &["setup"][..],
        &["setup"][..],
        &["keys", "create", "--tenant", "acme", "--role", "anon"][..],
    ] {
        let err = cmd(args);
        assert!(
            !err.contains("NOTICE") && !err.contains("already exists") && !err.contains("skipping"),
            "sluice {args:?} printed: {err}"
        );
    }
}

/// The replication client logs in with SCRAM-SHA-256 and with MD5 (and
/// with neither when the password is wrong, in the server's words), and
/// runs replication commands on the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replication_client_logs_in_with_scram_and_md5_and_reports_a_wrong_password() {
    use sluice::pgrepl::{ReplConn, ReplTarget, Session};
    let pg = common::cluster();
    let db = TestDb::new("repl_auth");
    pg.psql(
        "postgres",
        "DO $$ BEGIN CREATE ROLE repl_scram LOGIN REPLICATION PASSWORD 'scram-pw';
                     EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         SET password_encryption = 'md5';
         DO $$ BEGIN CREATE ROLE repl_md5 LOGIN REPLICATION PASSWORD 'md5-pw';
                     EXCEPTION WHEN duplicate_object THEN NULL; END $$;",
    )
    .expect("roles");
    let hba = pg.data_dir().join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    if !old.contains("repl_scram") {
        std::fs::write(
            &hba,
            format!(
                "host all repl_scram 127.0.0.1/32 scram-sha-256\n\
                 host all repl_md5 127.0.0.1/32 md5\n{old}"
            ),
        )
        .expect("write pg_hba.conf");
        pg.psql("postgres", "SELECT pg_reload_conf()")
            .expect("reload");
    }
    let session = Session {
        application_name: "auth-test".into(),
        options: None,
    };
    for (user, pw) in [("repl_scram", "scram-pw"), ("repl_md5", "md5-pw")] {
        let url = format!(
            "postgres://{user}:{pw}@127.0.0.1:{}/{}?sslmode=disable",
            pg.port(),
            db.name
        );
        let target = ReplTarget::parse(&url).expect("url");
        let mut conn = ReplConn::connect(&target, &session)
            .await
            .unwrap_or_else(|e| panic!("{user} logs in: {e}"));
        assert!(conn.major() >= 14, "{}", conn.server_version);
        let rows = conn
            .simple_query("IDENTIFY_SYSTEM")
            .await
            .expect("identify");
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0][3].as_deref(),
            Some(db.name.as_bytes()),
            "a replication session of the database"
        );
        conn.close().await;
        let wrong = format!(
            "postgres://{user}:nope@127.0.0.1:{}/{}?sslmode=disable",
            pg.port(),
            db.name
        );
        let e = ReplConn::connect(&ReplTarget::parse(&wrong).unwrap(), &session)
            .await
            .err()
            .expect("a wrong password is refused");
        let text = e.to_string();
        assert!(
            text.contains("password authentication failed") && text.contains("28P01"),
            "{user}: {text}"
        );
    }
}
