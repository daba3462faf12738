//! A [`Filter`] as a parameterised SQL predicate to push down into a read
//! of a table's rows (a live query's keyset pages), so that fewer rows are
//! read.
//!
//! # Contract: implication
//!
//! For every row, if the filter matches the row's event then the predicate
//! is TRUE (not FALSE, not NULL). The predicate may let through rows the
//! filter rejects: the filter is still evaluated on every row read. So a
//! node is only pushed down when that is certain, and anything else is
//! left out: from an `and`, the children that cannot be pushed are dropped
//! (the rest still holds of every matching row); an `or` is pushed only if
//! each of its children is; a `not` or a claim is never pushed.
//!
//! The caller's side of the contract: the `columns` given are the row's
//! columns as the event's `new` carries them (same name, every one present,
//! the value being the normalizer's JSON of the column's text form). A
//! column an access policy hides or rewrites, or any column of a table
//! whose events carry no full `new` (`fields_only`), is given with
//! `visible: false` (or left out): a test on it is never pushed. Columns
//! are named unqualified (`"status"`): the statement reads the one table.
//!
//! # What is pushed
//!
//! Only comparisons on `new.<column>` (one step: a top-level column) whose
//! column is given and visible, by the column's type (`format_type`):
//!
//! - `is_null` (and `eq null`, an `in` element `null`): `IS NULL` /
//!   `IS NOT NULL` for the types listed in `family`, whose non-null
//!   values never read as JSON null. For `json`/`jsonb`, which do (a JSON
//!   `null` value), `is_null: true` is `(c IS NULL OR json[b]_typeof(c) =
//!   'null')`; `is_null: false` is `IS NOT NULL`.
//! - `smallint`, `integer`, `bigint`, `numeric[(p[,s])]`: `eq`, `in` and
//!   `lt`/`lte`/`gt`/`gte` with a number or a numeric string (the filter's
//!   own definition, `eval::numeric`) whose exponent is at most
//!   [`MAX_PUSHED_EXPONENT`] in magnitude and whose text is at most
//!   [`MAX_PUSHED_NUMBER_BYTES`] long (so that Postgres's `numeric` input
//!   accepts it): `c::numeric = $n::text::numeric` (exact decimal equality
//!   and order, as the filter's). A `numeric` column's `NaN`, `Infinity`
//!   and `-Infinity` arrive as strings, which the filter orders byte-wise
//!   against a numeric *string*: an order test with a string value also
//!   lets them through (`OR c::text IN ('NaN', 'Infinity', '-Infinity')`).
//! - `text`, `character varying[(n)]`: `eq`, `in` with strings that are not
//!   numeric strings (those compare as decimals: `"007"` eq `"7"`), and
//!   `prefix`, compared as bytes of UTF-8, as the filter does:
//!   `convert_to(c::text, 'UTF8') = decode($n::text, 'hex')`, the parameter
//!   being the value's UTF-8 in hex. That is exact whatever the server's
//!   encoding and collation (the client reads text as UTF-8), and a value
//!   the server could not represent (or a NUL) cannot make the statement
//!   fail. Values holding U+FFFD (what a non-UTF-8 byte reads as) are not
//!   pushed.
//! - `boolean`: `eq`, `in` with `true`/`false`: `c = $n::text::boolean`.
//!
//! Not pushed: `neq`, `nin`, `suffix`, `not` (a null or a missing field
//! makes them true where SQL would say NULL), order tests on strings (byte
//! order with timestamp special cases), any test on other types (`uuid`,
//! timestamps, floats, enums, arrays, `character(n)`, …) but `is_null`,
//! paths into JSON or into `old`, claims.

use serde_json::Value;

use super::ast::{Comparison, Filter, Image, Node, OrderOp, Test};
use super::eval::numeric;
use crate::sql::quote_ident;

/// Largest exponent magnitude of a pushed number (`1e1000`): older servers
/// refuse a larger one in `numeric` input.
pub const MAX_PUSHED_EXPONENT: i64 = 1000;
/// Longest text of a pushed number: with the exponent's bound, far within
/// `numeric`'s limits (131072 digits before the point, 16383 after).
pub const MAX_PUSHED_NUMBER_BYTES: usize = 1000;
/// Most parameters a Postgres statement may have.
const MAX_PARAMS: usize = 65_535;

/// A column of the table the predicate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushedColumn<'a> {
    /// The column's name, as in the event's `new`.
    pub name: &'a str,
    /// `format_type` of the column: `integer`, `character varying(20)`,
    /// `numeric(10,2)`, `timestamp with time zone`, …
    pub type_name: &'a str,
    /// False when an access policy hides or rewrites the column (or the
    /// event does not carry it as read): no test on it is pushed.
    pub visible: bool,
}

/// A predicate on the row, to add to a `WHERE` as `AND <sql>` (it is one
/// operand: parenthesised when it has an `OR` or several `AND`s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushdown {
    /// The predicate; values appear only as the parameters
    /// `$first_param`, `$first_param + 1`, … (each used as `$n::text`,
    /// possibly cast further).
    pub sql: String,
    /// The parameters' values, in order, to bind as text.
    pub params: Vec<String>,
}

impl Filter {
    /// A SQL predicate every row this filter matches satisfies (see the
    /// module doc), reading the table's `columns`, its parameters numbered
    /// from `first_param` (1 to 65535, and the last one at most 65535, as
    /// Postgres wants). `None`: nothing can be pushed.
    pub fn pushdown(&self, columns: &[PushedColumn<'_>], first_param: usize) -> Option<Pushdown> {
        if !(1..=MAX_PARAMS).contains(&first_param) {
            return None;
        }
        let mut b = Builder {
            columns,
            first_param,
            params: Vec::new(),
        };
        let sql = b.node(&self.root)?;
        if first_param + b.params.len() > MAX_PARAMS + 1 {
            return None;
        }
        Some(Pushdown {
            sql,
            params: b.params,
        })
    }
}

/// How a column's values read in the event, as far as pushing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// `smallint`, `integer`, `bigint`: an exact JSON number.
    Int,
    /// `numeric`: a string of the exact digits, or `NaN`, `Infinity`,
    /// `-Infinity`.
    Numeric,
    /// `text`, `character varying`: the string.
    Text,
    /// `boolean`: `true` or `false`.
    Bool,
    /// `json`: the value, which may be JSON `null`.
    Json,
    /// `jsonb`: likewise.
    Jsonb,
    /// Another type whose non-null values never read as JSON null: only
    /// `is_null` is pushed.
    Other,
}

/// The family of a `format_type` name; `None` for a type not known here
/// (a domain, an enum, an extension's type…: a domain over `jsonb` could
/// read as JSON null).
fn family(type_name: &str) -> Option<Family> {
    // Any array reads as a JSON array (or, failing that, a string).
    if type_name.ends_with("[]") {
        return Some(Family::Other);
    }
    let base = without_typmod(type_name)?;
    Some(match base.as_str() {
        "smallint" | "integer" | "bigint" => Family::Int,
        "numeric" => Family::Numeric,
        "text" | "character varying" => Family::Text,
        "boolean" => Family::Bool,
        "json" => Family::Json,
        "jsonb" => Family::Jsonb,
        "real"
        | "double precision"
        | "money"
        | "character"
        | "\"char\""
        | "name"
        | "uuid"
        | "bytea"
        | "date"
        | "timestamp with time zone"
        | "timestamp without time zone"
        | "time with time zone"
        | "time without time zone"
        | "interval"
        | "inet"
        | "cidr"
        | "macaddr"
        | "macaddr8"
        | "oid"
        | "xml"
        | "bit"
        | "bit varying" => Family::Other,
        _ => return None,
    })
}

/// `name` without its one type modifier `(digits[,digits])`, wherever it
/// is (`timestamp(3) with time zone`); `None` if it has some other
/// parenthesis.
fn without_typmod(name: &str) -> Option<String> {
    match (name.find('('), name.rfind(')')) {
        (None, None) => Some(name.to_owned()),
        (Some(open), Some(close)) if open < close => {
            let inner = &name[open + 1..close];
            let well_formed = !inner.is_empty()
                && inner.bytes().all(|b| b.is_ascii_digit() || b == b',')
                && name.matches(['(', ')']).count() == 2;
            well_formed.then(|| format!("{}{}", &name[..open], &name[close + 1..]))
        }
        _ => None,
    }
}

/// The text of a number or numeric string Postgres's `numeric` input
/// takes with the same value; `None` for anything else.
fn pushable_number(v: &Value) -> Option<&str> {
    // The filter's own definition of a numeric value.
    numeric(v)?;
    let s = match v {
        Value::Number(n) => n.as_str(),
        Value::String(s) => s.as_str(),
        _ => return None,
    };
    if s.len() > MAX_PUSHED_NUMBER_BYTES {
        return None;
    }
    if let Some(at) = s.find(['e', 'E']) {
        let exp = &s[at + 1..];
        let digits = exp
            .strip_prefix(['+', '-'])
            .unwrap_or(exp)
            .bytes()
            .try_fold(0i64, |acc, d| {
                let acc = acc * 10 + i64::from(d.wrapping_sub(b'0'));
                (d.is_ascii_digit() && acc <= MAX_PUSHED_EXPONENT).then_some(acc)
            });
        digits?;
    }
    Some(s)
}

/// `s`'s UTF-8 in lowercase hex.
fn hex(s: &str) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// A string value pushed as bytes: the filter compares it byte-wise, and a
/// U+FFFD may stand for other bytes (see the module doc).
fn pushable_string(s: &str) -> bool {
    !s.contains('\u{FFFD}')
}

/// `a OP b OP …`, parenthesised when more than one; `None` when empty.
fn join(parts: Vec<String>, op: &str) -> Option<String> {
    match parts.len() {
        0 => None,
        1 => parts.into_iter().next(),
        _ => Some(format!("({})", parts.join(op))),
    }
}

struct Builder<'c, 'a> {
    columns: &'c [PushedColumn<'a>],
    first_param: usize,
    params: Vec<String>,
}

impl Builder<'_, '_> {
    /// The predicate of `n`; on `None`, no parameter was added.
    fn node(&mut self, n: &Node) -> Option<String> {
        let mark = self.params.len();
        let sql = match n {
            Node::Compare(c) => self.compare(c),
            Node::And(children) => {
                let parts: Vec<String> = children.iter().filter_map(|c| self.node(c)).collect();
                join(parts, " AND ")
            }
            Node::Or(children) => children
                .iter()
                .map(|c| self.node(c))
                .collect::<Option<Vec<String>>>()
                .and_then(|parts| join(parts, " OR ")),
            Node::Not(_) | Node::Claim(_) => None,
        };
        if sql.is_none() {
            self.params.truncate(mark);
        }
        sql
    }

    /// `$n` for a new parameter of value `v`.
    fn param(&mut self, v: String) -> String {
        self.params.push(v);
        format!("${}", self.first_param + self.params.len() - 1)
    }

    fn compare(&mut self, c: &Comparison) -> Option<String> {
        if c.path.image != Image::New {
            return None;
        }
        let [name] = c.path.steps.as_slice() else {
            return None;
        };
        let mut named = self.columns.iter().filter(|k| k.name == name);
        let column = named.next()?;
        if !column.visible || named.next().is_some() {
            return None;
        }
        let fam = family(column.type_name)?;
        let col = quote_ident(column.name);
        match &c.test {
            Test::IsNull(want) => Some(is_null(&col, fam, *want)),
            Test::Eq(v) => self.any_eq(&col, fam, std::slice::from_ref(v)),
            Test::In(vs) => self.any_eq(&col, fam, vs),
            Test::Order(op, v) => self.order(&col, fam, *op, v),
            Test::Prefix(p) if fam == Family::Text && pushable_string(p) => {
                let p = self.param(hex(p));
                let bytes = format!("decode({p}::text, 'hex')");
                Some(format!(
                    "substr(convert_to({col}::text, 'UTF8'), 1, length({bytes})) = {bytes}"
                ))
            }
            Test::Neq(_) | Test::Nin(_) | Test::Prefix(_) | Test::Suffix(_) => None,
        }
    }

    /// `eq` against any of `values` (`eq` is `in` with one value).
    fn any_eq(&mut self, col: &str, fam: Family, values: &[Value]) -> Option<String> {
        let mut null = false;
        let mut rhs = Vec::new();
        for v in values {
            if v.is_null() {
                null = true;
                continue;
            }
            rhs.push(match (fam, v) {
                (Family::Int | Family::Numeric, _) => {
                    let n = pushable_number(v)?.to_owned();
                    format!("{}::text::numeric", self.param(n))
                }
                // A numeric string compares as a decimal (`"007"` eq `"7"`).
                (Family::Text, Value::String(s)) if numeric(v).is_none() && pushable_string(s) => {
                    let p = self.param(hex(s));
                    format!("decode({p}::text, 'hex')")
                }
                (Family::Bool, Value::Bool(b)) => {
                    format!("{}::text::boolean", self.param(b.to_string()))
                }
                _ => return None,
            });
        }
        let lhs = match fam {
            Family::Int | Family::Numeric => format!("{col}::numeric"),
            Family::Text => format!("convert_to({col}::text, 'UTF8')"),
            _ => col.to_owned(),
        };
        let mut parts = Vec::new();
        match rhs.as_slice() {
            [] => {}
            [one] => parts.push(format!("{lhs} = {one}")),
            many => parts.push(format!("{lhs} IN ({})", many.join(", "))),
        }
        if null {
            parts.push(is_null(col, fam, true));
        }
        join(parts, " OR ")
    }

    fn order(&mut self, col: &str, fam: Family, op: OrderOp, v: &Value) -> Option<String> {
        if !matches!(fam, Family::Int | Family::Numeric) {
            return None;
        }
        let n = pushable_number(v)?.to_owned();
        let p = self.param(n);
        let op = match op {
            OrderOp::Lt => "<",
            OrderOp::Lte => "<=",
            OrderOp::Gt => ">",
            OrderOp::Gte => ">=",
        };
        let cmp = format!("{col}::numeric {op} {p}::text::numeric");
        // Against a numeric string, the filter orders a numeric column's
        // NaN, Infinity and -Infinity (strings in the event) byte-wise.
        Some(if fam == Family::Numeric && v.is_string() {
            format!("({cmp} OR {col}::text IN ('NaN', 'Infinity', '-Infinity'))")
        } else {
            cmp
        })
    }
}

/// `is_null: want` on a column of family `fam`.
fn is_null(col: &str, fam: Family, want: bool) -> String {
    match (fam, want) {
        (_, false) => format!("{col} IS NOT NULL"),
        (Family::Json, true) => format!("({col} IS NULL OR json_typeof({col}) = 'null')"),
        (Family::Jsonb, true) => format!("({col} IS NULL OR jsonb_typeof({col}) = 'null')"),
        (_, true) => format!("{col} IS NULL"),
    }
}

#[cfg(test)]
#[path = "sql_tests.rs"]
mod tests;
