//! A backfill's `--where` predicate, parsed by the server on its own and
//! kept apart from the chunk query by construction.
//!
//! The predicate becomes the body of a temporary SQL-standard function
//! whose parameters are named and typed like the table's columns:
//!
//! ```sql
//! CREATE FUNCTION pg_temp.sluice_where_7("id" integer, "status" text, …)
//! RETURNS boolean LANGUAGE sql STABLE RETURN (
//! <predicate>
//! )
//! ```
//!
//! sent as one statement through the extended protocol (a `;` cannot add a
//! second one). A `RETURN` body is a single expression and the routine
//! body is the statement's last clause, so nothing in the predicate can
//! reach the query that calls the function: the chunk query's key bound
//! (`WHERE (key) > (…) AND pg_temp.sluice_where_7("id", …)`) always
//! applies, whatever the text hides in strings, comments or parentheses.
//!
//! The server parses and resolves the body at `CREATE` time; what it
//! stored (`pg_proc.prosqlbody`, its parse tree) and the dependencies it
//! recorded (`pg_depend`) are then inspected: a predicate may read no
//! relation (no subquery, no `regclass` of a table) and call no volatile
//! function (`pg_proc.provolatile = 'v'`, also behind an operator). The
//! parse tree is needed beside `pg_depend` because the server records no
//! dependency on built-in ("pinned") objects such as `pg_sleep`,
//! `nextval` or `pg_class`.
//!
//! **Invariant:** a chunk query only ever calls a function this module
//! created and inspected on the same session.
//! **Boundary:** it never inspects the predicate's text itself; the server
//! is the only parser.

use tokio_postgres::Client;

use super::TableInfo;
use crate::sql::quote_ident;

/// Longest predicate accepted, in bytes.
pub const MAX_BYTES: usize = 4096;
/// Most columns a table may have for a predicate (a function takes at most
/// 100 arguments: `FUNC_MAX_ARGS`).
pub const MAX_COLUMNS: usize = 100;
/// The first server version with SQL-standard function bodies.
const MIN_SERVER_VERSION: i32 = 140_000;

#[derive(Debug, thiserror::Error)]
pub enum PredicateError {
    /// The predicate is refused; the text says why (the server's message
    /// for a parse error).
    #[error("{0}")]
    Invalid(String),
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// The predicate's text, trimmed, if it may be sent to the server at all.
pub fn text(p: &str) -> Result<&str, PredicateError> {
    let p = p.trim();
    if p.is_empty() {
        return Err(PredicateError::Invalid(
            "the predicate is empty (leave `where` out to read every row)".into(),
        ));
    }
    if p.len() > MAX_BYTES {
        return Err(PredicateError::Invalid(format!(
            "the predicate is longer than {MAX_BYTES} bytes"
        )));
    }
    Ok(p)
}

/// `pg_temp.sluice_where_<tag>` (`tag`: digits, letters, underscores).
pub fn function_name(tag: &str) -> String {
    format!("pg_temp.sluice_where_{tag}")
}

/// The `CREATE FUNCTION` statement; the predicate sits on lines of its own
/// so a `--` comment in it ends at its line.
pub fn create_sql(info: &TableInfo, name: &str, predicate: &str) -> Result<String, PredicateError> {
    if info.relation.columns.len() > MAX_COLUMNS {
        return Err(PredicateError::Invalid(format!(
            "table {} has {} columns; a predicate can be used on tables of at most {MAX_COLUMNS}",
            info.qualified(),
            info.relation.columns.len()
        )));
    }
    let params: Vec<String> = info
        .relation
        .columns
        .iter()
        .zip(&info.type_names)
        .map(|(c, t)| format!("{} {t}", quote_ident(&c.name)))
        .collect();
    Ok(format!(
        "CREATE FUNCTION {name}({}) RETURNS boolean LANGUAGE sql STABLE RETURN (\n{predicate}\n)",
        params.join(", ")
    ))
}

/// The call of the function on the table's row: `name("c1", "c2", …)`.
pub fn call_sql(info: &TableInfo, name: &str) -> String {
    let args: Vec<String> = info
        .relation
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    format!("{name}({})", args.join(", "))
}

/// What a stored parse tree (`pg_proc.prosqlbody` as text) calls, and the
/// first construct in it that a predicate may not use.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TreeCalls {
    pub functions: Vec<u32>,
    pub operators: Vec<u32>,
    pub refused: Option<&'static str>,
}

/// Reads the function and operator OIDs out of a node tree's text form.
///
/// The text is the server's own output: node names are `{NAME`, fields
/// `:name value`. A name or string inside it has its spaces and braces
/// escaped with a backslash, so it can add a false match (which only
/// refuses more), never hide a real one.
pub fn tree_calls(tree: &str) -> TreeCalls {
    let mut out = TreeCalls::default();
    for (node, why) in [
        ("{SUBLINK", "subqueries are not allowed in a predicate"),
        (
            "{RANGETBLENTRY",
            "a predicate may not read a table or function result",
        ),
        (
            "{AGGREF",
            "aggregate functions are not allowed in a predicate",
        ),
        (
            "{WINDOWFUNC",
            "window functions are not allowed in a predicate",
        ),
        (
            "{COERCETODOMAIN",
            "casts to a domain are not allowed in a predicate",
        ),
    ] {
        if tree.contains(node) {
            out.refused = Some(why);
            break;
        }
    }
    for field in [
        ":funcid ",
        ":opfuncid ",
        ":aggfnoid ",
        ":winfnoid ",
        ":hashfuncid ",
        ":negfuncid ",
    ] {
        out.functions.extend(numbers_after(tree, field));
    }
    out.operators.extend(numbers_after(tree, ":opno "));
    // RowCompareExpr: `:opnos (o 96 97)`.
    let mut rest = tree;
    while let Some(at) = rest.find(":opnos (o ") {
        rest = &rest[at + ":opnos (o ".len()..];
        let end = rest.find(')').unwrap_or(rest.len());
        out.operators.extend(
            rest[..end]
                .split_ascii_whitespace()
                .filter_map(|n| n.parse::<u32>().ok()),
        );
    }
    out.functions.sort_unstable();
    out.functions.dedup();
    out.operators.sort_unstable();
    out.operators.dedup();
    out
}

fn numbers_after<'a>(tree: &'a str, field: &'a str) -> impl Iterator<Item = u32> + 'a {
    tree.match_indices(field).filter_map(move |(at, _)| {
        let digits: String = tree[at + field.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse::<u32>().ok().filter(|&n| n != 0)
    })
}

/// Creates the predicate's function on `client`'s session as `name` and
/// inspects it; a refused one is dropped again. The session keeps it until
/// it ends (temporary objects are per session).
pub async fn install(
    client: &Client,
    info: &TableInfo,
    name: &str,
    predicate: &str,
) -> Result<(), PredicateError> {
    let predicate = text(predicate)?;
    let sql = create_sql(info, name, predicate)?;
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0);
    if version < MIN_SERVER_VERSION {
        return Err(PredicateError::Invalid(
            "a predicate needs PostgreSQL 14 or later (SQL-standard function bodies)".into(),
        ));
    }
    // One statement through the extended protocol (Parse/Bind/Execute):
    // a second statement is refused by the server.
    if let Err(e) = client.execute(sql.as_str(), &[]).await {
        return match e.as_db_error() {
            Some(db) => Err(PredicateError::Invalid(db.message().to_owned())),
            None => Err(e.into()),
        };
    }
    let refused = inspect(client, name).await;
    if !matches!(refused, Ok(None)) {
        client
            .batch_execute(&format!("DROP FUNCTION IF EXISTS {name}"))
            .await?;
    }
    match refused? {
        None => Ok(()),
        Some(why) => Err(PredicateError::Invalid(why)),
    }
}

/// Validates a predicate on `client` without leaving anything behind.
pub async fn validate(
    client: &Client,
    info: &TableInfo,
    predicate: &str,
) -> Result<(), PredicateError> {
    let name = function_name(&format!("check_{:016x}", rand::random::<u64>()));
    install(client, info, &name, predicate).await?;
    client
        .batch_execute(&format!("DROP FUNCTION IF EXISTS {name}"))
        .await?;
    Ok(())
}

/// Why the function `name` (just created) may not serve as a predicate.
async fn inspect(client: &Client, name: &str) -> Result<Option<String>, PredicateError> {
    let proname = name.trim_start_matches("pg_temp.");
    let row = client
        .query_one(
            "SELECT p.oid, p.prosqlbody::text FROM pg_catalog.pg_proc p
             WHERE p.proname = $1 AND p.pronamespace = pg_catalog.pg_my_temp_schema()",
            &[&proname],
        )
        .await?;
    let oid: u32 = row.get(0);
    let tree: Option<String> = row.get(1);
    let Some(tree) = tree else {
        return Ok(Some("the predicate has no parsed body".into()));
    };
    let calls = tree_calls(&tree);
    if let Some(why) = calls.refused {
        return Ok(Some(why.to_owned()));
    }
    let volatile: Vec<String> = client
        .query(
            "WITH called(oid) AS (
                 SELECT unnest($2::oid[])
                 UNION SELECT o.oprcode::oid FROM pg_catalog.pg_operator o WHERE o.oid = ANY($3::oid[])
                 UNION SELECT d.refobjid FROM pg_catalog.pg_depend d
                       WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = $1
                         AND d.refclassid = 'pg_catalog.pg_proc'::regclass
                 UNION SELECT o.oprcode::oid FROM pg_catalog.pg_depend d
                       JOIN pg_catalog.pg_operator o ON o.oid = d.refobjid
                       WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = $1
                         AND d.refclassid = 'pg_catalog.pg_operator'::regclass)
             SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p JOIN called c ON c.oid = p.oid
             WHERE p.provolatile = 'v' ORDER BY 1",
            &[&oid, &calls.functions, &calls.operators],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !volatile.is_empty() {
        return Ok(Some(format!(
            "a predicate may call no volatile or side-effecting function (it calls {})",
            volatile.join(", ")
        )));
    }
    let relations: Vec<String> = client
        .query(
            "SELECT refobjid::regclass::text FROM pg_catalog.pg_depend
             WHERE classid = 'pg_catalog.pg_proc'::regclass AND objid = $1
               AND refclassid = 'pg_catalog.pg_class'::regclass
             ORDER BY 1",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !relations.is_empty() {
        return Ok(Some(format!(
            "a predicate may not refer to another relation (it refers to {})",
            relations.join(", ")
        )));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_whitespace_predicates_are_refused() {
        for p in ["", "   ", "\n\t"] {
            assert!(matches!(text(p), Err(PredicateError::Invalid(m)) if m.contains("empty")));
        }
        assert_eq!(text("  id > 1 ").ok(), Some("id > 1"));
        assert!(text(&"x".repeat(MAX_BYTES + 1)).is_err());
    }

    #[test]
    fn tree_calls_finds_functions_operators_and_subqueries() {
        let tree = "{QUERY :targetList ({TARGETENTRY :expr {BOOLEXPR :args ({NULLTEST :arg {FUNCEXPR :funcid 2626 :args ({FUNCEXPR :funcid 316})}} {OPEXPR :opno 419 :opfuncid 477} {ROWCOMPAREEXPR :opnos (o 96 97) :opfamilies (o 1976)})}})}";
        let calls = tree_calls(tree);
        assert_eq!(calls.functions, vec![316, 477, 2626]);
        assert_eq!(calls.operators, vec![96, 97, 419]);
        assert_eq!(calls.refused, None);
        let sub = tree_calls("{QUERY :targetList ({SUBLINK :subselect {QUERY :rtable ({RANGETBLENTRY :relid 1259})}})}");
        assert_eq!(
            sub.refused,
            Some("subqueries are not allowed in a predicate")
        );
        // An escaped name in the tree can only add matches, never hide one.
        let escaped = tree_calls("{QUERY :resname a\\ :funcid\\ 5 :x {FUNCEXPR :funcid 7}}");
        assert_eq!(escaped.functions, vec![7]);
    }
}
