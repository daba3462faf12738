//! `sluice demo`: Sluice's main job on an embedded default. Starts a
//! throwaway Postgres and the whole service on it (capture of a demo
//! `orders` table for two tenants, the log, the HTTP API), creates an anon
//! key per tenant, subscribes over SSE with each key as a browser would, makes
//! a short scripted stream of changes (including a custom event and a
//! rolled-back transaction that must not appear), and prints each event as
//! its tenant's subscriber receives it. It prints a ready-to-paste `curl`
//! command and writes a small `EventSource` page, so a person can watch the
//! same stream.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{cancel_on_signal, CliError};
use crate::auth::{keys, Role};
use crate::config::Config;
use crate::event::TenantId;
use crate::log;
use crate::server;
use localpg::LocalPg;

const SCHEMA: &str = "
CREATE TABLE public.orders (
    id         bigserial PRIMARY KEY,
    tenant_id  text NOT NULL,
    status     text NOT NULL,
    total      numeric(10,2) NOT NULL,
    items      jsonb NOT NULL DEFAULT '[]',
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE public.orders REPLICA IDENTITY FULL;";

/// The scripted changes, one transaction each, and how many events each
/// produces.
const SCRIPT: &[(&str, usize)] = &[
    ("INSERT INTO orders (tenant_id, status, total, items) VALUES ('acme', 'pending', 150.00, '[{\"sku\":\"A-1\",\"qty\":2}]')", 1),
    ("INSERT INTO orders (tenant_id, status, total) VALUES ('globex', 'pending', 99.90)", 1),
    ("UPDATE orders SET status = 'paid', updated_at = now() WHERE id = 1", 1),
    ("BEGIN; INSERT INTO orders (tenant_id, status, total) VALUES ('acme', 'pending', 1.00); ROLLBACK", 0),
    ("SELECT pg_logical_emit_message(true, 'sluice', '{\"tenant\":\"acme\",\"type\":\"order.shipped\",\"data\":{\"order\":1,\"carrier\":\"ups\"}}')", 1),
    ("BEGIN; UPDATE orders SET status = 'shipped' WHERE id = 1; DELETE FROM orders WHERE id = 2; COMMIT", 2),
];

/// The demo's tenants; each gets an anon key and a subscriber.
const TENANTS: [&str; 2] = ["acme", "globex"];

/// How long the demo waits for the scripted events before it gives up.
const PATIENCE: Duration = Duration::from_secs(60);

/// The port the demo's API prefers; a free one is taken when it is busy.
const PREFERRED_LISTEN: &str = "127.0.0.1:8787";

pub async fn demo(keep_running: bool) -> Result<(), CliError> {
    eprintln!("starting a throwaway PostgreSQL cluster (wal_level=logical)…");
    let pg = tokio::task::spawn_blocking(LocalPg::start)
        .await
        .map_err(|e| CliError::Demo(e.to_string()))?
        .map_err(|e| CliError::Demo(format!("cannot start the demo Postgres: {e} (run scripts/ensure-postgres.sh to install it)")))?;
    let url = pg.url("postgres");
    let client = log::connect(&url)
        .await
        .map_err(|e| CliError::Demo(format!("cannot reach the demo Postgres: {e}")))?;
    client.batch_execute(SCHEMA).await?;
    eprintln!("demo database: {url}  (table public.orders, tenants acme and globex)");

    let listen = if std::net::TcpListener::bind(PREFERRED_LISTEN).is_ok() {
        PREFERRED_LISTEN
    } else {
        "127.0.0.1:0"
    };
    let env: BTreeMap<String, String> = [
        ("SLUICE_SOURCE_POSTGRES_URL", url.as_str()),
        (
            "SLUICE_SOURCE_POSTGRES_TABLES",
            r#"[{table="public.orders", tenant_column="tenant_id"}]"#,
        ),
        ("SLUICE_HTTP_LISTEN", listen),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config = Config::load(None, &env)?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let server = server::start(config, shutdown.clone()).await?;
    let addr = server.addr;

    let mut keys_by_tenant = Vec::new();
    for t in TENANTS {
        let tenant = TenantId::new(t)?;
        let (_, key) = keys::create_key(
            &client,
            Some(&tenant),
            Role::Anon,
            Some("demo"),
            &serde_json::Map::new(),
            None,
        )
        .await?;
        keys_by_tenant.push((t, key));
    }
    let (acme_key, page) = (&keys_by_tenant[0].1, write_page(addr, &keys_by_tenant[0].1));
    eprintln!("\nthe HTTP API listens on http://{addr}");
    eprintln!("anon key for tenant acme (browser-safe, read only): {acme_key}");
    eprintln!("watch acme's events from another terminal:");
    eprintln!("  curl -N 'http://{addr}/v1/events/subscribe?apikey={acme_key}&from=1'");
    match &page {
        Ok(path) => eprintln!(
            "or open file://{} in a browser (EventSource)",
            path.display()
        ),
        Err(e) => eprintln!("(could not write the browser page: {e})"),
    }
    eprintln!();

    // One subscriber per tenant, over HTTP with its anon key, as a client
    // would; each must receive only its own tenant's events.
    let (tx, mut received) = mpsc::channel::<Received>(64);
    let mut readers = Vec::new();
    for (tenant, key) in &keys_by_tenant {
        let (opened_tx, opened) = tokio::sync::oneshot::channel();
        readers.push(tokio::spawn(subscribe(
            addr,
            tenant.to_string(),
            key.clone(),
            tx.clone(),
            opened_tx,
        )));
        opened
            .await
            .map_err(|_| CliError::Demo(format!("the {tenant} subscriber ended before it opened")))?
            .map_err(CliError::Demo)?;
    }
    drop(tx);

    let writer_client = log::connect(&url)
        .await
        .map_err(|e| CliError::Demo(format!("cannot reach the demo Postgres: {e}")))?;
    let writer = tokio::spawn(async move {
        for (sql, _) in SCRIPT {
            tokio::time::sleep(Duration::from_millis(400)).await;
            eprintln!("-- {sql}");
            if let Err(e) = writer_client.batch_execute(sql).await {
                eprintln!("demo statement failed: {e}");
            }
        }
    });

    let expected: usize = SCRIPT.iter().map(|(_, n)| n).sum();
    let mut printed = 0usize;
    let mut failure = None;
    let deadline = tokio::time::sleep(PATIENCE);
    tokio::pin!(deadline);
    loop {
        if printed >= expected && !keep_running {
            break;
        }
        if printed == expected && keep_running {
            eprintln!(
                "\nthe scripted changes are done; Sluice keeps capturing. Change rows with\n  \
                 psql '{url}' -c \"UPDATE orders SET status = 'refunded' WHERE id = 1\"\n\
                 and watch them arrive here and in the curl above; Ctrl-C stops the demo."
            );
        }
        tokio::select! {
            r = received.recv() => match r {
                Some(Received::Event { subscriber, tenant, frame }) => {
                    if tenant != subscriber {
                        failure = Some(format!("the {subscriber} subscriber received an event of {tenant}"));
                        break;
                    }
                    println!("{frame}");
                    printed += 1;
                }
                Some(Received::Ended { subscriber, why }) => {
                    if !shutdown.is_cancelled() {
                        failure = Some(format!("the {subscriber} subscription ended: {why}"));
                    }
                    break;
                }
                None => break,
            },
            _ = shutdown.cancelled() => break,
            _ = &mut deadline, if !keep_running => {
                failure = Some(format!("only {printed} of {expected} events arrived within {}s", PATIENCE.as_secs()));
                break;
            }
        }
    }
    let _ = writer.await;
    shutdown.cancel();
    server.wait().await?;
    for r in readers {
        r.abort();
    }
    eprintln!(
        "{printed} events received by the tenants' SSE subscribers; stopping the demo cluster"
    );
    drop(client);
    drop(pg);
    match failure {
        Some(f) => Err(CliError::Demo(f)),
        None => Ok(()),
    }
}

/// What a subscriber task reports.
enum Received {
    /// An event's envelope, as the subscriber of `subscriber` received it.
    Event {
        subscriber: String,
        tenant: String,
        frame: String,
    },
    Ended {
        subscriber: String,
        why: String,
    },
}

/// Subscribes to `GET /v1/events/subscribe` with `key` and forwards each
/// event's `data:` line; `opened` is told once the stream answered.
async fn subscribe(
    addr: SocketAddr,
    subscriber: String,
    key: String,
    out: mpsc::Sender<Received>,
    opened: tokio::sync::oneshot::Sender<Result<(), String>>,
) {
    let url = format!("http://{addr}/v1/events/subscribe?apikey={key}&from=1");
    let ended = |why: String| Received::Ended {
        subscriber: subscriber.clone(),
        why,
    };
    let mut response = match reqwest::get(&url).await {
        Ok(r) if r.status().is_success() => {
            let _ = opened.send(Ok(()));
            r
        }
        Ok(r) => {
            let _ = opened.send(Err(format!("subscribing answered {}", r.status())));
            return;
        }
        Err(e) => {
            let _ = opened.send(Err(format!("cannot subscribe: {e}")));
            return;
        }
    };
    let mut pending = String::new();
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => {
                let _ = out.send(ended("the stream closed".to_owned())).await;
                return;
            }
            Err(e) => {
                let _ = out.send(ended(e.to_string())).await;
                return;
            }
        };
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let frame: String = pending.drain(..end + 2).collect();
            let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let tenant = serde_json::from_str::<serde_json::Value>(data)
                .ok()
                .and_then(|v| v.get("tenant").and_then(|t| t.as_str()).map(str::to_owned));
            let Some(tenant) = tenant else {
                // An end-of-stream frame (shutdown, revoked, expired, gap,
                // closed) names itself; the server closes the stream next.
                if let Some(end) = frame.lines().find_map(|l| l.strip_prefix("event: ")) {
                    let _ = out.send(ended(format!("{end} {data}"))).await;
                    return;
                }
                continue;
            };
            let event = Received::Event {
                subscriber: subscriber.clone(),
                tenant,
                frame: data.to_owned(),
            };
            if out.send(event).await.is_err() {
                return;
            }
        }
    }
}

/// Writes a page that subscribes with `EventSource` and lists each event.
fn write_page(addr: SocketAddr, key: &str) -> std::io::Result<PathBuf> {
    let path = std::env::temp_dir().join("sluice-demo.html");
    let html = PAGE.replace(
        "{{url}}",
        &format!("http://{addr}/v1/events/subscribe?apikey={key}&from=1"),
    );
    std::fs::write(&path, html)?;
    Ok(path)
}

/// The browser page: one listener per event type (each SSE frame names its
/// type), and the end-of-stream frames told apart from transport errors.
const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>Sluice demo: tenant acme</title>
<h1>Events of tenant acme</h1>
<p id="state">connecting…</p>
<ol id="events"></ol>
<script>
const source = new EventSource("{{url}}");
const list = document.getElementById("events");
const state = document.getElementById("state");
function show(e) {
  const item = document.createElement("li");
  const env = JSON.parse(e.data);
  item.textContent = `${e.lastEventId} ${e.type} ${env.subject || ""} ${JSON.stringify(env.data)}`;
  list.appendChild(item);
}
for (const type of ["row.inserted", "row.updated", "row.deleted", "row.truncated", "row.snapshot",
                    "custom.order.shipped"]) {
  source.addEventListener(type, show);
}
source.onopen = () => { state.textContent = "connected"; };
source.onerror = () => { state.textContent = "connection lost; the browser reconnects and resumes"; };
for (const end of ["shutdown", "revoked", "expired", "closed", "gap"]) {
  source.addEventListener(end, (e) => { state.textContent = `stream ended: ${end} ${e.data}`; source.close(); });
}
</script>
"#;
