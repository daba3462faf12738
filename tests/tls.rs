//! Postgres over TLS, as managed services require it: a cluster with
//! `ssl = on` whose `pg_hba.conf` has only `hostssl` lines, a CA and server
//! certificate made here (SAN `localhost` and `127.0.0.1`), and the
//! `sluice` binary run against it with libpq's `sslmode`s.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use common::proc::{free_port, ready_as, serve_on, sluice};
use localpg::{LocalPg, ServerTls};

/// The TLS cluster of this test binary, and where its CA files are.
struct Tls {
    pg: LocalPg,
    /// The CA that signed the server's certificate.
    ca: PathBuf,
    /// A CA that did not.
    other_ca: PathBuf,
    /// A client certificate (CN `cert_user`, signed by `ca`) and its key;
    /// the server accepts `cert_user` only with it (`cert` lines).
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn ca_params(name: &str) -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, name.to_owned());
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn tls() -> &'static Tls {
    static TLS: OnceLock<Tls> = OnceLock::new();
    TLS.get_or_init(|| {
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let ca = ca_params("sluice test CA")
            .self_signed(&ca_key)
            .expect("ca cert");
        let other_key = rcgen::KeyPair::generate().expect("other ca key");
        let other = ca_params("some other CA")
            .self_signed(&other_key)
            .expect("other ca cert");
        let mut server =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        server
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let server_key = rcgen::KeyPair::generate().expect("server key");
        let server = server
            .signed_by(&server_key, &ca, &ca_key)
            .expect("server cert");
        let pg = LocalPg::start_tls(ServerTls {
            cert_pem: server.pem(),
            key_pem: server_key.serialize_pem(),
        })
        .expect("start a cluster with ssl=on and hostssl only");
        // Beside the data directory: removed with the cluster.
        let dir = pg.data_dir().parent().expect("cluster root").to_owned();
        let ca_path = dir.join("ca.pem");
        let other_path = dir.join("other-ca.pem");
        std::fs::write(&ca_path, ca.pem()).expect("write ca");
        std::fs::write(&other_path, other.pem()).expect("write other ca");

        let mut client = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        client
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cert_user");
        let client_key = rcgen::KeyPair::generate().expect("client key");
        let client = client
            .signed_by(&client_key, &ca, &ca_key)
            .expect("client cert");
        let (cert_path, key_path) = (dir.join("client.pem"), dir.join("client.key"));
        std::fs::write(&cert_path, client.pem()).expect("write client cert");
        std::fs::write(&key_path, client_key.serialize_pem()).expect("write client key");
        // The server checks client certificates against the same CA, and
        // lets cert_user in only with one.
        let hba = pg.data_dir().join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        std::fs::write(
            &hba,
            format!(
                "hostssl all cert_user 127.0.0.1/32 cert\n\
                 hostssl replication cert_user 127.0.0.1/32 cert\n\
                 hostssl all plain_user 127.0.0.1/32 reject\n\
                 hostnossl all plain_user 127.0.0.1/32 trust\n{old}"
            ),
        )
        .expect("write pg_hba.conf");
        pg.psql(
            "postgres",
            &format!(
                "CREATE ROLE cert_user LOGIN SUPERUSER;
                 CREATE ROLE plain_user LOGIN;
                 ALTER SYSTEM SET ssl_ca_file = '{}';
                 SELECT pg_reload_conf();",
                ca_path.display()
            ),
        )
        .expect("client certificates");
        Tls {
            pg,
            ca: ca_path,
            other_ca: other_path,
            client_cert: cert_path,
            client_key: key_path,
        }
    })
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run sluice")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A config capturing `public.items` of the database at `url`.
fn write_config(dir: &Path, db: &str, url: &str) -> PathBuf {
    let path = dir.join("sluice.toml");
    let text = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n\n[source.postgres]\nurl = {url:?}\nslot = \"slot_{db}\"\n\
         tables = [{{ table = \"public.items\", tenant_column = \"tenant\" }}]\n"
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// A fresh database with `items` holding three rows of tenant acme.
fn items_db(prefix: &str) -> String {
    let pg = &tls().pg;
    let db = pg.create_database(prefix).expect("create database");
    pg.psql(
        &db,
        "CREATE TABLE items (id int PRIMARY KEY, tenant text NOT NULL, v text);
         ALTER TABLE items REPLICA IDENTITY FULL;
         INSERT INTO items VALUES (1, 'acme', 'a'), (2, 'acme', 'b'), (3, 'acme', 'c')",
    )
    .expect("ddl");
    db
}

/// check, setup, serve with capture, a backfill, JSON pages and SSE, all
/// through `url` to the hostssl-only cluster; every session of Sluice's is
/// encrypted.
async fn everything_works_over(db: &str, url: &str) {
    let pg = &tls().pg;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), db, url);

    let out = run(sluice().arg("--config").arg(&config).arg("setup"));
    assert!(out.status.success(), "setup: {}", stderr(&out));
    let out = run(sluice().arg("--config").arg(&config).arg("check"));
    assert!(
        out.status.success(),
        "check: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("wal_level: logical"),
        "{}",
        stdout(&out)
    );
    let out = run(sluice()
        .arg("--config")
        .arg(&config)
        .args(["keys", "create", "--tenant", "acme", "--role", "anon"]));
    assert!(out.status.success(), "keys: {}", stderr(&out));
    let key = stdout(&out)
        .lines()
        .find(|l| l.starts_with("sk_anon_"))
        .expect("the key is printed")
        .to_owned();

    let port = free_port();
    let _server = serve_on(&config, port);
    let addr = ready_as(port, "leader").await;
    let mut sse =
        common::http::stream(addr, &format!("/v1/events/subscribe?apikey={key}"), &[]).await;
    assert_eq!(sse.status, 200);
    pg.psql(db, "INSERT INTO items VALUES (100, 'acme', 'live')")
        .expect("insert");
    let e = sse.expect_event(common::PATIENCE).await;
    assert_eq!(e.event.as_deref(), Some("row.inserted"), "{}", e.data);
    let body: serde_json::Value = serde_json::from_str(&e.data).expect("envelope");
    assert_eq!(body["data"]["new"]["id"], 100);

    let out =
        run(sluice()
            .arg("--config")
            .arg(&config)
            .args(["backfill", "--table", "public.items"]));
    assert!(
        out.status.success(),
        "backfill: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("done"), "{}", stdout(&out));

    let page = common::http::get(addr, &format!("/v1/events?apikey={key}"), &[]).await;
    assert_eq!(page.status, 200);
    let events = page.json()["events"].as_array().expect("events").clone();
    let snapshot_ids: std::collections::BTreeSet<i64> = events
        .iter()
        .filter(|e| e["type"] == "row.snapshot")
        .map(|e| e["data"]["new"]["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(snapshot_ids, [1, 2, 3, 100].into_iter().collect());
    assert!(events
        .iter()
        .any(|e| e["type"] == "row.inserted" && e["data"]["new"]["id"] == 100));

    // Every session Sluice holds, the walsender included, is encrypted.
    let plain = pg
        .psql(
            db,
            "SELECT count(*) FILTER (WHERE NOT s.ssl),
                    count(*) FILTER (WHERE a.backend_type = 'walsender' AND s.ssl)
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name LIKE 'sluice%' AND a.datname = current_database()",
        )
        .expect("pg_stat_ssl");
    let (plain, walsenders) = plain.split_once('|').expect("two columns");
    assert_eq!(plain, "0", "sessions without TLS");
    assert_ne!(walsenders, "0", "no encrypted replication session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_encrypts_every_connection_check_setup_serve_backfill_and_reads_work() {
    let db = items_db("tls_require");
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{db}?sslmode=require",
        tls().pg.port()
    );
    everything_works_over(&db, &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_in_key_value_form_check_setup_serve_backfill_and_reads_work() {
    let db = items_db("tls_verify_full");
    let url = format!(
        "host=localhost port={} user=postgres dbname={db} sslmode=verify-full sslrootcert='{}'",
        tls().pg.port(),
        tls().ca.display()
    );
    everything_works_over(&db, &url).await;
}

/// `sluice check` against the TLS cluster through `url`; its output.
fn check_with(url: &str, db: &str) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), db, url);
    run(sluice().arg("--config").arg(&config).arg("check"))
}

/// `sluice check` through `url` must exit with `code`; returns its stderr.
fn check_exits(url: &str, db: &str, code: i32) -> String {
    let out = check_with(url, db);
    let err = stderr(&out);
    println!("{err}");
    assert_eq!(out.status.code(), Some(code), "{err}");
    err
}

/// `sluice check` through `url` gets as far as reading the server's
/// settings: the connection works (check may still fail on the missing
/// publication).
fn check_connects(url: &str, db: &str) {
    let out = check_with(url, db);
    assert!(
        stdout(&out).contains("wal_level: logical"),
        "{url}: {}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn verify_full_against_the_wrong_ca_fails_saying_certificate_verification() {
    let db = items_db("tls_wrong_ca");
    let url = format!(
        "postgres://postgres@localhost:{}/{db}?sslmode=verify-full&sslrootcert={}",
        tls().pg.port(),
        tls().other_ca.display()
    );
    let err = check_exits(&url, &db, 1);
    assert!(
        err.contains("certificate failed verification") && err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(err.contains(&tls().other_ca.display().to_string()), "{err}");
}

#[test]
fn verify_full_with_a_host_name_the_certificate_does_not_name_fails_saying_so() {
    let db = items_db("tls_wrong_host");
    // Connects to the server's address, checks the name given as host.
    let url = format!(
        "postgres://postgres@not-the-server.example:{}/{db}?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}",
        tls().pg.port(),
        tls().ca.display()
    );
    let err = check_exits(&url, &db, 1);
    assert!(
        err.contains("certificate failed verification")
            && err.contains("not valid for name")
            && err.contains("not-the-server.example"),
        "{err}"
    );
}

#[test]
fn verify_ca_accepts_a_host_name_the_certificate_does_not_name() {
    let db = items_db("tls_verify_ca");
    let url = format!(
        "postgres://postgres@not-the-server.example:{}/{db}?hostaddr=127.0.0.1&sslmode=verify-ca&sslrootcert={}",
        tls().pg.port(),
        tls().ca.display()
    );
    // The connection works; check fails only on the missing publication.
    check_connects(&url, &db);
}

#[test]
fn disable_against_a_hostssl_only_server_fails_with_the_servers_no_encryption_message() {
    let db = items_db("tls_disable");
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
        tls().pg.port()
    );
    let err = check_exits(&url, &db, 1);
    assert!(
        err.contains("no pg_hba.conf entry for host") && err.contains("no encryption"),
        "{err}"
    );
}

#[test]
fn prefer_and_the_default_use_tls_when_the_server_offers_it() {
    let db = items_db("tls_prefer");
    for url in [
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=prefer",
            tls().pg.port()
        ),
        format!("postgres://postgres@127.0.0.1:{}/{db}", tls().pg.port()),
    ] {
        check_connects(&url, &db);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_logs_in_where_the_server_demands_one_replication_included() {
    let t = tls();
    let db = items_db("tls_client_cert");
    let base = format!(
        "postgres://cert_user@localhost:{}/{db}?sslmode=verify-full&sslrootcert={}",
        t.pg.port(),
        t.ca.display()
    );
    // Without it the server refuses, in its own words.
    let err = check_exits(&base, &db, 1);
    assert!(
        err.contains("connection requires a valid client certificate"),
        "{err}"
    );

    let url = format!(
        "{base}&sslcert={}&sslkey={}",
        t.client_cert.display(),
        t.client_key.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &db, &url);
    let out = run(sluice().arg("--config").arg(&config).arg("setup"));
    assert!(out.status.success(), "setup: {}", stderr(&out));
    // A ready leader streams: its replication session logged in with the
    // certificate too.
    let port = free_port();
    let _server = serve_on(&config, port);
    ready_as(port, "leader").await;
    let walsenders =
        t.pg.psql(
            &db,
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.backend_type = 'walsender' AND a.usename = 'cert_user'
               AND s.client_dn = '/CN=cert_user' AND a.datname = current_database()",
        )
        .expect("pg_stat_ssl");
    assert_eq!(walsenders, "1");
}

#[tokio::test]
async fn a_unix_socket_string_connects_without_tls_under_the_default_prefer() {
    let pg = &tls().pg;
    let socket_dir = pg.data_dir().parent().expect("cluster root");
    let conninfo = format!(
        "host={} port={} user=postgres dbname=postgres",
        socket_dir.display(),
        pg.port()
    );
    let client = sluice::log::connect(&conninfo)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("query")
        .get(0);
    assert!(!ssl);
}

#[test]
fn verify_full_without_sslrootcert_checks_against_the_systems_ca_bundle() {
    let t = tls();
    let db = items_db("tls_system_roots");
    let url = format!(
        "postgres://postgres@localhost:{}/{db}?sslmode=verify-full",
        t.pg.port()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &db, &url);
    // The test CA is in no system bundle: refused, naming the bundle.
    let out = run(sluice()
        .env("SSL_CERT_FILE", &t.other_ca)
        .arg("--config")
        .arg(&config)
        .arg("check"));
    let err = stderr(&out);
    assert!(
        err.contains("UnknownIssuer")
            && err.contains(&format!("system's CA bundle {}", t.other_ca.display())),
        "{err}"
    );
    // A system bundle holding it (SSL_CERT_FILE, as OpenSSL reads it).
    let out = run(sluice()
        .env("SSL_CERT_FILE", &t.ca)
        .arg("--config")
        .arg(&config)
        .arg("setup"));
    assert!(out.status.success(), "setup: {}", stderr(&out));
}

#[test]
fn an_unknown_sslmode_is_a_config_error_naming_the_key_and_the_modes() {
    let err = check_exits(
        "postgres://postgres@127.0.0.1:1/app?sslmode=verify",
        "app",
        2,
    );
    assert!(
        err.contains("source.postgres.url")
            && err.contains("expected disable, prefer, require, verify-ca or verify-full"),
        "{err}"
    );
}

#[test]
fn a_missing_sslrootcert_file_is_named() {
    let db = items_db("tls_missing_root");
    let url = format!(
        "postgres://postgres@localhost:{}/{db}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        tls().pg.port()
    );
    let err = check_exits(&url, &db, 1);
    assert!(
        err.contains("sslrootcert /nonexistent/ca.pem: cannot read PEM certificates"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_snapshot_over_verify_full_reads_the_rows_through_the_exported_snapshot() {
    let t = tls();
    let db = items_db("tls_initial");
    let url = format!(
        "postgres://postgres@localhost:{}/{db}?sslmode=verify-full&sslrootcert={}",
        t.pg.port(),
        t.ca.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[source.postgres]\nurl = {url:?}\nslot = \"slot_{db}\"\n\
             tables = [{{ table = \"public.items\", tenant_column = \"tenant\", snapshot = \"initial\" }}]\n"
        ),
    )
    .expect("write config");
    // No setup: serve creates the slot on a replication session, with an
    // exported snapshot, and reads the rows inside it.
    let port = free_port();
    let _server = serve_on(&config, port);
    ready_as(port, "leader").await;
    let c = sluice::log::connect(&url).await.expect("connect");
    let events = common::wait_for_events(&c, 3).await;
    let ids: Vec<i64> = events
        .iter()
        .filter(|e| e["type"] == "row.snapshot")
        .map(|e| e["data"]["new"]["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids, [1, 2, 3]);
}

#[test]
fn prefer_connects_in_plain_where_pg_hba_turns_tls_away_and_require_does_not() {
    // plain_user: `hostssl … reject`, `hostnossl … trust`.
    let db = items_db("tls_hostnossl");
    let port = tls().pg.port();
    check_connects(
        &format!("postgres://plain_user@127.0.0.1:{port}/{db}?sslmode=prefer"),
        &db,
    );
    let err = check_exits(
        &format!("postgres://plain_user@127.0.0.1:{port}/{db}?sslmode=require"),
        &db,
        1,
    );
    assert!(
        err.contains("pg_hba.conf rejects connection") && err.contains("SSL encryption"),
        "{err}"
    );
}
