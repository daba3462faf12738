//! `sluice setup` and `sluice check`: creating the publication and slot
//! (idempotent), and the preflight that says whether this database can be
//! captured as configured, with the fix for each problem.

use std::fmt;

use tokio_postgres::Client;

use crate::config::{PgSourceConfig, TableConfig};
use crate::sql::quote_ident;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One line of the preflight report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub status: Status,
    pub subject: String,
    pub detail: String,
    pub fix: Option<String>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        write!(f, "[{tag}] {}: {}", self.subject, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n       fix: {fix}")?;
        }
        Ok(())
    }
}

pub(crate) fn finding(
    status: Status,
    subject: impl Into<String>,
    detail: impl Into<String>,
    fix: Option<String>,
) -> Finding {
    Finding {
        status,
        subject: subject.into(),
        detail: detail.into(),
        fix,
    }
}

/// Why `setup` (or `serve`) did not set up the publication and slot.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Db(#[from] crate::pgconn::PgError),
    /// Publishing these tables would break the application's own writes;
    /// nothing was changed.
    #[error("refusing to add tables to the publication (nothing was changed):\n{}", lines(.0))]
    Refused(Vec<Finding>),
    /// The source is a standby, where nothing can be created but the slot.
    #[error("{0}")]
    Standby(String),
}

impl From<tokio_postgres::Error> for SetupError {
    fn from(e: tokio_postgres::Error) -> SetupError {
        SetupError::Db(e.into())
    }
}

/// Findings one per line, as `check` prints them.
pub fn lines(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn qualified(t: &TableConfig) -> String {
    let (s, n) = t.schema_and_name();
    format!("{}.{}", quote_ident(s), quote_ident(n))
}

/// Creates the publication (or sets its table list to the configured one)
/// and the slot, if missing. Returns what it did, one line each.
pub async fn setup(client: &Client, cfg: &PgSourceConfig) -> Result<Vec<String>, SetupError> {
    let mut done = publication(client, cfg).await?;
    let slot = cfg.slot();
    let slot_exists = client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?
        .is_some();
    if !slot_exists {
        let row = client
            .query_one(
                "SELECT current_setting('server_version_num')::int, pg_is_in_recovery()",
                &[],
            )
            .await?;
        let (num, standby): (i32, bool) = (row.get(0), row.get(1));
        if num >= 170_000 && !standby {
            // A failover slot: a standby with `sync_replication_slots`
            // keeps a copy, so a promoted standby has it (Postgres 17+).
            client
                .query_one(
                    "SELECT pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)",
                    &[&slot],
                )
                .await?;
            done.push(format!(
                "created replication slot {slot} (pgoutput, failover: standbys with sync_replication_slots keep it)"
            ));
        } else {
            client
                .query_one(
                    "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&slot],
                )
                .await?;
            done.push(format!("created replication slot {slot} (pgoutput)"));
        }
    }
    Ok(done)
}

/// The replication command that creates `slot` and exports a snapshot of
/// its consistent point; with `failover` on Postgres 17 and later, a
/// failover slot (kept by standbys that sync slots).
pub fn create_slot_command(slot: &str, major: u32, failover: bool) -> String {
    let name = quote_ident(slot);
    if major >= 17 && failover {
        format!(
            "CREATE_REPLICATION_SLOT {name} LOGICAL pgoutput (SNAPSHOT 'export', FAILOVER true)"
        )
    } else {
        format!("CREATE_REPLICATION_SLOT {name} LOGICAL pgoutput EXPORT_SNAPSHOT")
    }
}

/// Creates the publication (or sets its table list to the configured one).
/// It must exist before the slot: pgoutput looks it up as of each change.
/// Refuses, changing nothing, when a table would make the application's
/// UPDATE and DELETE fail once published ([`breaking_tables`]).
pub async fn publication(client: &Client, cfg: &PgSourceConfig) -> Result<Vec<String>, SetupError> {
    let breaking = breaking_tables(client, cfg).await?;
    if !breaking.is_empty() {
        return Err(SetupError::Refused(breaking));
    }
    let mut done = Vec::new();
    let publication = cfg.publication();
    let tables: Vec<String> = cfg.tables.iter().map(qualified).collect();
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .is_some();
    let standby: bool = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await?
        .get(0);
    if standby {
        // A standby replays the primary's catalog: the publication is made
        // there, and arrives here by replication.
        let covered = if exists {
            publication_tables(client, &publication).await?
        } else {
            Default::default()
        };
        let wanted: std::collections::BTreeSet<String> =
            cfg.tables.iter().map(|t| t.table.clone()).collect();
        if covered != wanted {
            return Err(SetupError::Standby(format!(
                "the source is a standby, where publication {publication} cannot be {}: run `sluice setup` once against the primary (same configuration, the primary's URL), or on the primary: {} {}",
                if exists { "changed" } else { "created" },
                if exists { format!("ALTER PUBLICATION {} SET TABLE", quote_ident(&publication)) } else { format!("CREATE PUBLICATION {} FOR TABLE", quote_ident(&publication)) },
                tables.join(", ")
            )));
        }
        return Ok(done);
    }
    if !exists {
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                quote_ident(&publication),
                tables.join(", ")
            ))
            .await?;
        done.push(format!(
            "created publication {publication} for {}",
            tables.join(", ")
        ));
    } else {
        let covered = publication_tables(client, &publication).await?;
        let wanted: std::collections::BTreeSet<String> =
            cfg.tables.iter().map(|t| t.table.clone()).collect();
        if covered != wanted {
            client
                .batch_execute(&format!(
                    "ALTER PUBLICATION {} SET TABLE {}",
                    quote_ident(&publication),
                    tables.join(", ")
                ))
                .await?;
            done.push(format!(
                "set publication {publication} to {}",
                tables.join(", ")
            ));
        }
    }
    Ok(done)
}

/// The captured tables whose UPDATE and DELETE the server refuses once
/// they are in a publication that publishes them (`cannot update table …
/// because it does not have a replica identity and publishes updates`):
/// no primary key with `REPLICA IDENTITY DEFAULT`, `REPLICA IDENTITY
/// NOTHING`, or `USING INDEX` of an index that is gone.
pub async fn breaking_tables(
    client: &Client,
    cfg: &PgSourceConfig,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for t in &cfg.tables {
        let (schema, name) = t.schema_and_name();
        let row = client
            .query_opt(
                "SELECT c.relreplident::text,
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&schema, &name],
            )
            .await?;
        let Some(row) = row else { continue };
        let (ident, has_pk, has_index): (String, bool, bool) = (row.get(0), row.get(1), row.get(2));
        let why = match ident.as_str() {
            "d" if !has_pk => "has no primary key and REPLICA IDENTITY DEFAULT",
            "n" => "has REPLICA IDENTITY NOTHING",
            "i" if !has_index => {
                "has REPLICA IDENTITY USING INDEX of an index that no longer exists"
            }
            _ => continue,
        };
        out.push(finding(
            Status::Fail,
            format!("table {}", t.table),
            format!(
                "{why}: once published, the application's own UPDATE and DELETE of it would fail \
                 (\"cannot update table … because it does not have a replica identity and publishes updates\")"
            ),
            Some(format!(
                "ALTER TABLE {} REPLICA IDENTITY FULL (or add a primary key); then run `sluice setup` again",
                qualified(t)
            )),
        ));
    }
    Ok(out)
}

async fn publication_tables(
    client: &Client,
    publication: &str,
) -> Result<std::collections::BTreeSet<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT schemaname::text || '.' || tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// The preflight. `Fail` findings mean `serve` must not start.
pub async fn check(
    client: &Client,
    cfg: &PgSourceConfig,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let mut out = Vec::new();
    let wal_level: String = client.query_one("SHOW wal_level", &[]).await?.get(0);
    out.push(if wal_level == "logical" {
        finding(Status::Ok, "wal_level", "logical", None)
    } else {
        finding(
            Status::Fail,
            "wal_level",
            format!("is {wal_level}; logical replication needs logical"),
            Some("ALTER SYSTEM SET wal_level = logical; then restart Postgres".into()),
        )
    });

    let role = client
        .query_one(
            "SELECT current_user::text, rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    let (user, sup, repl): (String, bool, bool) = (role.get(0), role.get(1), role.get(2));
    out.push(if sup || repl {
        finding(
            Status::Ok,
            "privileges",
            format!(
                "role {user} may replicate ({})",
                if sup { "superuser" } else { "REPLICATION" }
            ),
            None,
        )
    } else {
        finding(
            Status::Fail,
            "privileges",
            format!("role {user} has neither REPLICATION nor SUPERUSER"),
            Some(format!(
                "ALTER ROLE {} WITH REPLICATION",
                quote_ident(&user)
            )),
        )
    });

    out.extend(source_privileges(client, cfg, &user, sup).await?);

    let publication = cfg.publication();
    let pubrow = client
        .query_opt(
            "SELECT pubinsert, pubupdate, pubdelete, pubtruncate, puballtables FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?;
    match pubrow {
        None => out.push(finding(
            Status::Warn,
            format!("publication {publication}"),
            "does not exist yet; `sluice setup` or `sluice serve` creates it",
            None,
        )),
        Some(r) => {
            let (i, u, d, t, all): (bool, bool, bool, bool, bool) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            let covered = publication_tables(client, &publication).await?;
            let missing: Vec<&str> = cfg
                .tables
                .iter()
                .map(|t| t.table.as_str())
                .filter(|t| !covered.contains(*t))
                .collect();
            if all && covered.iter().any(|t| t.starts_with("sluice.")) {
                out.push(finding(
                    Status::Fail,
                    format!("publication {publication}"),
                    "is FOR ALL TABLES and so includes Sluice's own log: every append would be captured again",
                    Some(format!("DROP PUBLICATION {}; then run `sluice setup`", quote_ident(&publication))),
                ));
            } else if !missing.is_empty() {
                out.push(finding(
                    Status::Warn,
                    format!("publication {publication}"),
                    format!(
                        "does not cover {} yet; `sluice setup` or `sluice serve` adds them",
                        missing.join(", ")
                    ),
                    None,
                ));
            } else if !(i && u && d && t) {
                out.push(finding(
                    Status::Warn,
                    format!("publication {publication}"),
                    "does not publish every operation (insert, update, delete, truncate); those left out are not captured",
                    Some(format!(
                        "ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate')",
                        quote_ident(&publication)
                    )),
                ));
            } else {
                out.push(finding(
                    Status::Ok,
                    format!("publication {publication}"),
                    "covers every captured table",
                    None,
                ));
            }
        }
    }

    let slot = cfg.slot();
    let slotrow = client
        .query_opt(
            "SELECT plugin::text, database::text, wal_status::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    let db: String = client
        .query_one("SELECT current_database()::text", &[])
        .await?
        .get(0);
    out.push(match slotrow {
        None => finding(
            Status::Warn,
            format!("slot {slot}"),
            "does not exist yet; `sluice setup` or `sluice serve` creates it",
            None,
        ),
        Some(r) => {
            let (plugin, sdb, wal_status): (Option<String>, Option<String>, Option<String>) = (r.get(0), r.get(1), r.get(2));
            if plugin.as_deref() != Some("pgoutput") || sdb.as_deref() != Some(db.as_str()) {
                finding(
                    Status::Fail,
                    format!("slot {slot}"),
                    format!("uses plugin {plugin:?} on database {sdb:?}; expected pgoutput on {db}"),
                    Some("choose another source.postgres.slot, or drop this slot".into()),
                )
            } else if wal_status.as_deref() == Some("lost") {
                finding(
                    Status::Fail,
                    format!("slot {slot}"),
                    "was invalidated (the WAL it needed is gone); changes since then cannot be read",
                    Some(format!(
                        "SELECT pg_drop_replication_slot('{slot}'); then `sluice setup` (changes made meanwhile are not in the log)"
                    )),
                )
            } else {
                finding(Status::Ok, format!("slot {slot}"), "pgoutput", None)
            }
        }
    });

    out.extend(server_findings(client, cfg).await?);
    for t in &cfg.tables {
        out.extend(check_table(client, t).await?);
    }
    Ok(out)
}

/// What the server supports (its version), and what a failover or a
/// standby source needs of the operator.
async fn server_findings(
    client: &Client,
    cfg: &PgSourceConfig,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version'), pg_is_in_recovery()",
            &[],
        )
        .await?;
    let (num, version, standby): (i32, String, bool) = (row.get(0), row.get(1), row.get(2));
    let major = u32::try_from(num / 10_000).unwrap_or(0);
    let mut out = Vec::new();
    if major < 14 {
        out.push(finding(
            Status::Fail,
            "server",
            format!("PostgreSQL {version}: Sluice supports 14 to 18"),
            Some("upgrade the server".into()),
        ));
        return Ok(out);
    }
    let proto = super::stream::protocol_version(major, cfg.streaming);
    let mut supports = vec![format!("pgoutput protocol {proto}")];
    supports.push(if proto >= 2 {
        "large transactions streamed while they run".to_owned()
    } else if cfg.streaming {
        "no streaming of large transactions".to_owned()
    } else {
        "streaming off (source.postgres.streaming = false)".to_owned()
    });
    if major >= 16 {
        supports.push("logical decoding on a standby".into());
    }
    if major >= 17 {
        supports.push("failover slots".into());
    }
    out.push(finding(
        Status::Ok,
        "server",
        format!("PostgreSQL {version}: {}", supports.join(", ")),
        None,
    ));
    let setting = |name: &'static str| async move {
        client
            .query_one("SELECT coalesce(current_setting($1, true), '')", &[&name])
            .await
            .map(|r| r.get::<_, String>(0))
    };
    if standby {
        if major < 16 {
            out.push(finding(
                Status::Fail,
                "standby",
                "the source URL names a standby, and logical decoding on a standby needs PostgreSQL 16 or newer",
                Some("point source.postgres.url at the primary".into()),
            ));
            return Ok(out);
        }
        let feedback = setting("hot_standby_feedback").await?;
        let primary_slot = setting("primary_slot_name").await?;
        let ok = feedback == "on" && !primary_slot.is_empty();
        out.push(finding(
            if ok { Status::Ok } else { Status::Warn },
            "standby",
            format!(
                "the source is a standby (hot_standby_feedback={feedback}, primary_slot_name={primary_slot:?}): \
                 the slot lives here and the publication comes from the primary; no heartbeat can be written, \
                 so the slot moves with the primary's writes; the log (state.url) must be a writable database; \
                 creating the slot waits for a running-transactions record from the primary (SELECT pg_log_standby_snapshot() there makes one at once)"
            ),
            (!ok).then(|| {
                "on this standby: ALTER SYSTEM SET hot_standby_feedback = on, and set primary_slot_name to a physical slot on the primary \
                 (without them the primary may remove rows the slot still needs, and the slot is invalidated); then reload"
                    .to_owned()
            }),
        ));
        return Ok(out);
    }
    if major >= 17 {
        let slot = cfg.slot();
        let failover: Option<bool> = client
            .query_opt(
                "SELECT failover FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await?
            .map(|r| r.get(0));
        let standby_slots = setting("synchronized_standby_slots").await?;
        match failover {
            Some(false) => out.push(finding(
                Status::Warn,
                "failover",
                format!("slot {slot} is not a failover slot: a promoted standby will not have it"),
                Some(format!(
                    "while Sluice is stopped, on a replication connection: ALTER_REPLICATION_SLOT {} (FAILOVER true)",
                    quote_ident(&slot)
                )),
            )),
            _ => {
                let created = if failover.is_some() { "is" } else { "will be created as" };
                let detail = format!(
                    "slot {slot} {created} a failover slot; a standby keeps a copy when it has \
                     sync_replication_slots = on, hot_standby_feedback = on, primary_slot_name set and dbname in primary_conninfo{}",
                    if standby_slots.is_empty() {
                        String::new()
                    } else {
                        format!("; synchronized_standby_slots = {standby_slots:?}")
                    }
                );
                let physical: i64 = client
                    .query_one(
                        "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'physical'",
                        &[],
                    )
                    .await?
                    .get(0);
                if standby_slots.is_empty() && physical > 0 {
                    out.push(finding(
                        Status::Warn,
                        "failover",
                        format!("{detail}; synchronized_standby_slots is empty, so Sluice may read changes a standby has not received, which a failover to it loses from the database (the log keeps them)"),
                        Some("on the primary: ALTER SYSTEM SET synchronized_standby_slots = '<physical slot of each failover standby>'; SELECT pg_reload_conf()".into()),
                    ));
                } else {
                    out.push(finding(Status::Ok, "failover", detail, None));
                }
            }
        }
    }
    Ok(out)
}

/// What `setup` and `serve` need beyond replicating: to create or change
/// the publication (CREATE on the database and ownership of every table,
/// unless a publication already covers them all), SELECT on each table
/// (backfills, the initial snapshot) and TEMPORARY (backfill predicates).
async fn source_privileges(
    client: &Client,
    cfg: &PgSourceConfig,
    user: &str,
    superuser: bool,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let mut out = Vec::new();
    if superuser {
        out.push(finding(
            Status::Ok,
            "privileges",
            format!(
                "role {user} is a superuser: it may create the publication and read every table"
            ),
            None,
        ));
        return Ok(out);
    }
    let publication = cfg.publication();
    let pubrow = client
        .query_opt(
            "SELECT pg_has_role(pubowner, 'USAGE') FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?;
    let covered = match &pubrow {
        Some(_) => publication_tables(client, &publication).await?,
        None => Default::default(),
    };
    let all_covered = pubrow.is_some() && cfg.tables.iter().all(|t| covered.contains(&t.table));
    let db = client
        .query_one(
            "SELECT current_database()::text,
                    has_database_privilege(current_database(), 'CREATE'),
                    has_database_privilege(current_database(), 'TEMPORARY')",
            &[],
        )
        .await?;
    let (dbname, create, temp): (String, bool, bool) = (db.get(0), db.get(1), db.get(2));
    let mut not_owned = Vec::new();
    let mut unreadable = Vec::new();
    for t in &cfg.tables {
        let (schema, name) = t.schema_and_name();
        let row = client
            .query_opt(
                "SELECT pg_has_role(c.relowner, 'USAGE'), has_table_privilege(c.oid, 'SELECT')
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&schema, &name],
            )
            .await?;
        // A missing table has a finding of its own.
        let Some(row) = row else { continue };
        if !row.get::<_, bool>(0) {
            not_owned.push(t);
        }
        if !row.get::<_, bool>(1) {
            unreadable.push(t);
        }
    }
    let names = |ts: &[&TableConfig]| {
        ts.iter()
            .map(|t| t.table.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let tables: Vec<String> = cfg.tables.iter().map(qualified).collect();
    if all_covered {
        out.push(finding(
            Status::Ok,
            "privileges",
            format!("publication {publication} already covers every captured table: no table ownership needed"),
            None,
        ));
    } else {
        let mut missing = Vec::new();
        match pubrow {
            None if !create => missing.push(format!(
                "CREATE on database {dbname} (to create publication {publication})"
            )),
            Some(r) if !r.get::<_, bool>(0) => missing.push(format!(
                "ownership of publication {publication} (to add tables to it)"
            )),
            _ => {}
        }
        if !not_owned.is_empty() {
            missing.push(format!(
                "ownership of {} (a publication FOR TABLE needs the table's owner)",
                names(&not_owned)
            ));
        }
        out.push(if missing.is_empty() {
            finding(
                Status::Ok,
                "privileges",
                format!("role {user} may create the publication for every captured table"),
                None,
            )
        } else {
            finding(
                Status::Fail,
                "privileges",
                format!(
                    "role {user} cannot set up the publication: it lacks {}",
                    missing.join("; ")
                ),
                Some(format!(
                    "as the tables' owner (or a superuser): CREATE PUBLICATION {} FOR TABLE {}; \
                     or GRANT CREATE ON DATABASE {} TO {} and make it the tables' owner",
                    quote_ident(&publication),
                    tables.join(", "),
                    quote_ident(&dbname),
                    quote_ident(user)
                )),
            )
        });
    }
    if !unreadable.is_empty() {
        let initial = unreadable
            .iter()
            .any(|t| t.snapshot.as_deref() == Some("initial"));
        out.push(finding(
            if initial { Status::Fail } else { Status::Warn },
            "privileges",
            format!(
                "role {user} may not SELECT from {}: backfills{} of it fail",
                names(&unreadable),
                if initial {
                    " and the initial snapshot"
                } else {
                    ""
                }
            ),
            Some(format!(
                "GRANT SELECT ON {} TO {}",
                unreadable
                    .iter()
                    .map(|t| qualified(t))
                    .collect::<Vec<_>>()
                    .join(", "),
                quote_ident(user)
            )),
        ));
    }
    if !temp {
        out.push(finding(
            Status::Warn,
            "privileges",
            format!("role {user} may not create temporary objects: backfills with a `where` predicate fail"),
            Some(format!(
                "GRANT TEMPORARY ON DATABASE {} TO {}",
                quote_ident(&dbname),
                quote_ident(user)
            )),
        ));
    }
    Ok(out)
}

/// The state database: the log's schema `sluice` is created by migrations
/// (CREATE on the database), or an existing one is used (CREATE and USAGE
/// on it).
pub async fn check_state(client: &Client) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT current_user::text, current_database()::text,
                    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
                    EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'sluice'),
                    has_database_privilege(current_database(), 'CREATE'),
                    CASE WHEN EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'sluice')
                         THEN has_schema_privilege('sluice', 'CREATE') AND has_schema_privilege('sluice', 'USAGE')
                    END",
            &[],
        )
        .await?;
    let (user, db, sup, exists, create_db, schema_ok): (
        String,
        String,
        bool,
        bool,
        bool,
        Option<bool>,
    ) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    );
    let subject = format!("state database {db}");
    Ok(vec![if sup {
        finding(
            Status::Ok,
            subject,
            format!("role {user} is a superuser"),
            None,
        )
    } else if exists && schema_ok == Some(true) {
        finding(
            Status::Ok,
            subject,
            format!("role {user} may use the existing schema sluice"),
            None,
        )
    } else if exists {
        finding(
            Status::Fail,
            subject,
            format!("schema sluice exists but role {user} lacks CREATE or USAGE on it"),
            Some(format!(
                "GRANT USAGE, CREATE ON SCHEMA sluice TO {}",
                quote_ident(&user)
            )),
        )
    } else if create_db {
        finding(
            Status::Ok,
            subject,
            format!("role {user} may create the schema sluice"),
            None,
        )
    } else {
        finding(
            Status::Fail,
            subject,
            format!("role {user} may not create the schema sluice (no CREATE on the database)"),
            Some(format!(
                "GRANT CREATE ON DATABASE {} TO {}",
                quote_ident(&db),
                quote_ident(&user)
            )),
        )
    }])
}

async fn check_table(
    client: &Client,
    t: &TableConfig,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let (schema, name) = t.schema_and_name();
    let subject = format!("table {}", t.table);
    let row = client
        .query_opt(
            "SELECT c.oid, c.relreplident::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&schema, &name],
        )
        .await?;
    let Some(row) = row else {
        return Ok(vec![finding(
            Status::Fail,
            subject,
            "does not exist",
            Some("create it, or remove it from source.postgres.tables".into()),
        )]);
    };
    let oid: u32 = row.get(0);
    let ident: String = row.get(1);
    let has_col = client
        .query_opt(
            "SELECT 1 FROM pg_attribute WHERE attrelid = $1 AND attname = $2 AND attnum > 0 AND NOT attisdropped",
            &[&oid, &t.tenant_column],
        )
        .await?
        .is_some();
    if !has_col {
        return Ok(vec![finding(
            Status::Fail,
            subject,
            format!("has no column {:?} (its tenant_column)", t.tenant_column),
            Some("set tenant_column to the column holding the tenant id".into()),
        )]);
    }
    let in_index = |primary: bool| async move {
        client
            .query_opt(
                "SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[])
                 WHERE i.indrelid = $1 AND a.attname = $2 AND (CASE WHEN $3 THEN i.indisprimary ELSE i.indisreplident END)",
                &[&oid, &t.tenant_column, &primary],
            )
            .await
            .map(|r| r.is_some())
    };
    let has_pk = client
        .query_opt(
            "SELECT 1 FROM pg_index WHERE indrelid = $1 AND indisprimary",
            &[&oid],
        )
        .await?
        .is_some();
    let fix_full = format!("ALTER TABLE {} REPLICA IDENTITY FULL", qualified(t));
    let attributable = match ident.as_str() {
        "f" => Ok("REPLICA IDENTITY FULL: deletes carry the whole old row"),
        "d" if !has_pk => Err("has no primary key and REPLICA IDENTITY DEFAULT: deletes carry no old row at all"),
        "d" if in_index(true).await? => Ok("the tenant column is part of the primary key"),
        "d" => Err("the tenant column is not in the primary key, so a delete does not say whose row it was"),
        "i" if in_index(false).await? => Ok("the tenant column is part of the replica identity index"),
        "i" => Err("the tenant column is not in the replica identity index"),
        _ => Err("REPLICA IDENTITY NOTHING: deletes carry no old row"),
    };
    let mut out = Vec::new();
    out.push(match attributable {
        Ok(why) => finding(
            Status::Ok,
            subject.clone(),
            format!("deletes can be attributed to a tenant ({why})"),
            None,
        ),
        Err(why) => finding(
            Status::Fail,
            subject.clone(),
            format!("deletes cannot be attributed to a tenant: {why}"),
            Some(format!(
                "{fix_full}; or put {:?} in the primary key",
                t.tenant_column
            )),
        ),
    });
    if !has_pk {
        out.push(finding(
            Status::Warn,
            subject.clone(),
            "has no primary key: events' `key` is the replica identity columns",
            None,
        ));
    }
    if ident != "f" {
        out.push(finding(
            Status::Warn,
            subject,
            if t.fields_only {
                "is fields_only without REPLICA IDENTITY FULL: updates cannot say which fields changed"
            } else {
                "REPLICA IDENTITY is not FULL: updates carry no old row (`old`, `changed` left out) and unchanged TOASTed values are listed in `unchanged` instead of sent"
            },
            Some(fix_full),
        ));
    }
    Ok(out)
}

/// Whether a report lets `serve` start.
pub fn blocking(findings: &[Finding]) -> Vec<&Finding> {
    findings
        .iter()
        .filter(|f| f.status == Status::Fail)
        .collect()
}
