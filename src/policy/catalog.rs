//! The policies checked against the captured database (by `sluice check`
//! and before `serve` starts capturing): every column a policy names
//! exists, and a row predicate can be checked against a row's old image,
//! which Postgres only sends whole under `REPLICA IDENTITY FULL` (without
//! it a delete carries the key columns only, so a predicate on any other
//! column could not tell whose row left). Also one line per table and role
//! with the effective policy, so an operator sees what each role gets.

use tokio_postgres::Client;

use super::{Columns, Target};
use crate::config::Config;
use crate::source::postgres::setup::{finding, Finding, Status};

/// Findings about the policies of `config`. `Fail` ones stop `serve`.
pub async fn check(
    client: &Client,
    config: &Config,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let Ok(policies) = config.compiled_policies() else {
        // Unreachable: a config is validated (policies compiled) when read.
        return Ok(Vec::new());
    };
    let tables = config.captured_tables();
    let mut out = Vec::new();
    if !policies.active() {
        out.push(finding(
            Status::Warn,
            "policies",
            "none configured: every credential of a tenant receives every captured table with every column",
            Some("add [[policies]] to scope what anon and custom roles see (README: Access policies)".into()),
        ));
        return Ok(out);
    }
    for rule in policies.rules() {
        let Target::Table(table) = &rule.target else {
            continue;
        };
        let subject = format!(
            "policies[{}] (role {}, table {table})",
            rule.index, rule.role
        );
        let Some(cat) = table_catalog(client, table).await? else {
            // `check` reports the missing table itself.
            continue;
        };
        let named: Vec<(&str, &str)> = match &rule.columns {
            Columns::All => Vec::new(),
            Columns::Only(c) => c.iter().map(|c| ("columns", c.as_str())).collect(),
            Columns::Hide(c) => c.iter().map(|c| ("hide_columns", c.as_str())).collect(),
        };
        let predicate: Vec<&str> = rule.rows.as_ref().map(|f| f.columns()).unwrap_or_default();
        let unknown: Vec<String> = named
            .iter()
            .map(|(k, c)| (*k, *c))
            .chain(predicate.iter().map(|c| ("rows", *c)))
            .filter(|(_, c)| !cat.columns.iter().any(|have| have == c))
            .map(|(k, c)| format!("{k} names {c:?}"))
            .collect();
        if !unknown.is_empty() {
            out.push(finding(
                Status::Fail,
                subject.clone(),
                format!(
                    "{}, which {table} does not have (its columns: {})",
                    unknown.join("; "),
                    cat.columns.join(", ")
                ),
                Some(format!(
                    "fix policies[{}] to name columns of {table}",
                    rule.index
                )),
            ));
            continue;
        }
        if !predicate.is_empty() && !cat.full {
            let outside: Vec<&str> = predicate
                .iter()
                .copied()
                .filter(|c| !cat.identity.iter().any(|k| k == c))
                .collect();
            if !outside.is_empty() {
                out.push(finding(
                    Status::Fail,
                    subject.clone(),
                    format!(
                        "its rows predicate reads {} beyond the replica identity ({}): a delete or an update would not say whether the row was visible before",
                        outside.join(", "),
                        if cat.identity.is_empty() { "none".to_owned() } else { cat.identity.join(", ") }
                    ),
                    Some(format!("ALTER TABLE {table} REPLICA IDENTITY FULL")),
                ));
                continue;
            }
        }
        out.push(finding(
            Status::Ok,
            subject,
            "names columns the table has",
            None,
        ));
    }
    // The effective policy of each table per role.
    let described = policies.describe(&tables, &config.captured_collections());
    if let Some(entries) = described["policies"].as_array() {
        for e in entries {
            let target = ["table", "collection"]
                .iter()
                .find_map(|k| e[*k].as_str().map(|n| format!("{k} {n}")))
                .unwrap_or_else(|| format!("topics {}", e["topics"]));
            if let Some(roles) = e["roles"].as_object() {
                let per: Vec<String> = roles
                    .iter()
                    .map(|(role, p)| format!("{role}: {}", summary(p)))
                    .collect();
                out.push(finding(
                    Status::Ok,
                    format!("policy {target}"),
                    per.join("; "),
                    None,
                ));
            }
        }
    }
    Ok(out)
}

/// One role's effective policy in a few words.
fn summary(p: &serde_json::Value) -> String {
    if p["subscribe"] == false {
        return format!("denied ({})", p["why"].as_str().unwrap_or(""));
    }
    let rows = match &p["rows"] {
        serde_json::Value::String(s) => s.clone(),
        other => format!("where {other}"),
    };
    let columns = match &p["columns"] {
        serde_json::Value::String(s) => format!("{s} columns"),
        other => format!("columns {other}"),
    };
    let publish = if p["publish"] == true {
        ", may publish"
    } else {
        ""
    };
    format!("{rows} rows, {columns}{publish}")
}

struct TableCatalog {
    columns: Vec<String>,
    /// The columns a delete's old image carries without FULL.
    identity: Vec<String>,
    full: bool,
}

async fn table_catalog(
    client: &Client,
    table: &str,
) -> Result<Option<TableCatalog>, tokio_postgres::Error> {
    let Some((schema, name)) = table.split_once('.') else {
        return Ok(None);
    };
    let Some(row) = client
        .query_opt(
            "SELECT c.oid, c.relreplident::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&schema, &name],
        )
        .await?
    else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let ident: String = row.get(1);
    let columns = client
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let identity = client
        .query(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[])
             WHERE i.indrelid = $1 AND (CASE WHEN $2 = 'i' THEN i.indisreplident ELSE i.indisprimary END)",
            &[&oid, &ident],
        )
        .await?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    Ok(Some(TableCatalog {
        columns,
        identity,
        full: ident == "f",
    }))
}
