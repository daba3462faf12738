//! The WebSocket endpoint against a real Postgres and server, driven by the
//! PyPI `websockets` client: auth, multiplexed subscriptions with filters,
//! unsubscribe, publish in order with row changes, a forged tenant ignored.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::TestDb;
use sluice::auth::keys::create_key;
use sluice::auth::Role;
use sluice::event::TenantId;
use sluice::server::{self, Server};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

const ITEMS: &str =
    "CREATE TABLE items (id int PRIMARY KEY, tenant text NOT NULL, color text, n int);
                     ALTER TABLE items REPLICA IDENTITY FULL;";

async fn serve(db: &TestDb) -> (Server, CancellationToken) {
    let config = db.config_with(
        &[("public.items", "tenant")],
        &[("SLUICE_HTTP_LISTEN", "127.0.0.1:0")],
    );
    let token = CancellationToken::new();
    let server = server::start(config, token.clone())
        .await
        .expect("server starts");
    (server, token)
}

async fn key(db: &TestDb, tenant: &str, role: Role) -> String {
    let c = db.client().await;
    create_key(&c, Some(&TenantId::new(tenant).expect("valid")), role, None)
        .await
        .expect("key")
        .1
}

async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .expect("python client answers in time")
        .expect("read")
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websockets_client_subscribes_filters_unsubscribes_and_publishes() {
    let db = TestDb::new("ws_py");
    let c = db.client().await;
    c.batch_execute(ITEMS).await.expect("ddl");
    let (server, token) = serve(&db).await;
    let service = key(&db, "acme", Role::Service).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/ws_client.py");
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .arg(format!("ws://{}/v1/ws", server.addr))
        .arg(&service)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let l = next_line(&mut lines).await;
    assert_eq!(l, "READY", "python client: {l}");
    c.batch_execute(
        "INSERT INTO items VALUES (1, 'acme', 'red', 1), (2, 'acme', 'blue', 2), (3, 'acme', 'red', 3), (4, 'acme', 'blue', 4), (9, 'globex', 'red', 9)",
    )
    .await
    .expect("write");
    stdin.write_all(b"go\n").await.expect("stdin");
    let l = next_line(&mut lines).await;
    assert_eq!(l, "PUBLISHED", "python client: {l}");
    c.batch_execute("INSERT INTO items VALUES (5, 'acme', 'red', 5)")
        .await
        .expect("write");
    stdin.write_all(b"go\n").await.expect("stdin");
    let l = next_line(&mut lines).await;
    let out = child.wait_with_output().await.expect("python exits");
    assert_eq!(
        l,
        "OK",
        "python client: {l} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
    token.cancel();
    server.wait().await.expect("server stops");
}
