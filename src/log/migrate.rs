//! Schema migrations for `sluice`, embedded from `sql/`, applied in order,
//! each in its own transaction under an advisory lock so concurrent starts
//! do not race.

use tokio_postgres::Client;

use super::LogError;

/// (version, name, SQL) in order. Append only: never edit a shipped one.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "log", include_str!("../../sql/001_log.sql")),
    (2, "keys", include_str!("../../sql/002_keys.sql")),
    (3, "retention", include_str!("../../sql/003_retention.sql")),
    (4, "webhooks", include_str!("../../sql/004_webhooks.sql")),
    (
        5,
        "resume_tokens",
        include_str!("../../sql/005_resume_tokens.sql"),
    ),
    (6, "backfills", include_str!("../../sql/006_backfills.sql")),
    (
        7,
        "record_batches",
        include_str!("../../sql/007_record_batches.sql"),
    ),
    (
        8,
        "backfill_notify",
        include_str!("../../sql/008_backfill_notify.sql"),
    ),
    (
        9,
        "key_claims",
        include_str!("../../sql/009_key_claims.sql"),
    ),
    (
        10,
        "webhook_role",
        include_str!("../../sql/010_webhook_role.sql"),
    ),
    (11, "groups", include_str!("../../sql/011_groups.sql")),
    (12, "publish", include_str!("../../sql/012_publish.sql")),
    (
        13,
        "webhook_options",
        include_str!("../../sql/013_webhook_options.sql"),
    ),
    (
        14,
        "declared_webhooks",
        include_str!("../../sql/014_declared_webhooks.sql"),
    ),
];

const MIGRATE_LOCK_KEY: i64 = 0x51_75_1C_E0_00_02;

/// Applies the migrations that are missing; returns the versions applied.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, LogError> {
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS sluice;
             CREATE TABLE IF NOT EXISTS sluice.schema_migrations (
                 version int PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .or_else(|e| {
            // Two processes creating the schema at once: one wins, and the
            // other's duplicate-object error is harmless.
            if e.code()
                .is_some_and(|c| c.code() == "23505" || c.code() == "42P07")
            {
                Ok(())
            } else {
                Err(e)
            }
        })?;
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK_KEY])
            .await?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM sluice.schema_migrations WHERE version = $1",
                &[version],
            )
            .await?
            .is_some();
        if !done {
            tx.batch_execute(sql)
                .await
                .map_err(|source| LogError::Migration {
                    version: *version,
                    name,
                    source: source.into(),
                })?;
            tx.execute(
                "INSERT INTO sluice.schema_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await?;
            applied.push(*version);
        }
        tx.commit().await?;
    }
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM sluice.schema_migrations",
            &[],
        )
        .await?;
    let found: i32 = row.get(0);
    if found > known {
        return Err(LogError::TooNew { found, known });
    }
    Ok(applied)
}
