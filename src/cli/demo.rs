//! `sluice demo`: Sluice's main job on an embedded default. Starts a
//! throwaway Postgres, captures a demo `orders` table for two tenants,
//! makes a short scripted stream of changes (including a custom event and a
//! rolled-back transaction that must not appear), and prints each event from
//! the log as it is appended.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{cancel_on_signal, CliError};
use crate::config::Config;
use crate::localpg::LocalPg;
use crate::log::{self, ReadScope};
use crate::pipeline;

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

    let env: BTreeMap<String, String> = [
        ("SLUICE_SOURCE_POSTGRES_URL".to_owned(), url.clone()),
        (
            "SLUICE_SOURCE_POSTGRES_TABLES".to_owned(),
            r#"[{table="public.orders", tenant_column="tenant_id"}]"#.to_owned(),
        ),
    ]
    .into_iter()
    .collect();
    let config = Config::load(None, &env)?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let running = pipeline::start(&config, shutdown.clone(), None).await?;
    let mut durable = running.durable.clone();

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
    let mut next = 1i64;
    let reader = log::connect(&url).await?;
    loop {
        for e in log::read_events(&reader, &ReadScope::Operator, next, 1000).await? {
            println!("{}", e.body);
            next = e.seq + 1;
            printed += 1;
        }
        if (printed >= expected && !keep_running) || shutdown.is_cancelled() {
            break;
        }
        tokio::select! {
            _ = durable.changed() => {}
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    let _ = writer.await;
    shutdown.cancel();
    running.wait().await?;
    eprintln!("{printed} events appended and printed; stopping the demo cluster");
    drop((reader, client));
    drop(pg);
    Ok(())
}
