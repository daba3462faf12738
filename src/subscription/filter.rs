//! Subscription filters: the typed filter AST over an event's `data`, its
//! parsing and validation from a subscriber's JSON, and its evaluation
//! (including the exact decimal comparison of numbers and numeric strings).
//!
//! # Grammar
//!
//! A filter is a JSON object, either a comparison or a boolean combination:
//!
//! - comparison: `{"field": "<path>", "op": "<op>", "value": <json>}`
//!   - `<path>` picks a value in the row: `new.<column>` or `old.<column>`,
//!     then further `.`-separated steps into nested JSON objects
//!     (`new.meta.tier`). A path that does not start with `new.` or `old.`
//!     reads the new row: `status` means `new.status` (so a column named
//!     `new` is written `new.new`). 1 to 8 steps after `new`/`old`, each
//!     non-empty and at most 64 bytes.
//!   - `<op>` and its `value`:
//!     - `eq`, `neq`, `lt`, `lte`, `gt`, `gte`: a scalar (string, number,
//!       boolean or null);
//!     - `in`, `nin`: an array of 1 to 100 scalars;
//!     - `prefix`, `suffix`: a string;
//!     - `is_null`: `true` (the field is null or missing) or `false` (it is
//!       present and not null).
//! - boolean: `{"and": [<filter>, …]}`, `{"or": [<filter>, …]}` (1 to 32
//!   filters each), `{"not": <filter>}`.
//!
//! Limits: nesting depth at most 8 (a lone comparison has depth 1), at most
//! 64 nodes (comparisons plus `and`/`or`/`not`), at most 4 KiB of JSON.
//! Any other key, operator or value type is an error that names where it
//! is, e.g. `filter.and[1].op: unknown operator "like"; expected one of eq,
//! neq, lt, lte, gt, gte, in, nin, prefix, suffix, is_null`.
//!
//! # Semantics
//!
//! - A missing field (or a step into something that is not an object, or
//!   `old` on an event without an old row) reads as `null`.
//! - `eq`: JSON equality, except that numbers and numeric strings (Postgres
//!   `numeric` arrives as `"150.00"`) compare as exact decimals: `"150.00"`
//!   eq `150`, `"1e2"` eq `100`, and `"1.0"` eq `"1"` (so a text column of
//!   digits compares as a number too: `"007"` eq `"7"`). `neq` is `not eq`.
//! - `lt`, `lte`, `gt`, `gte`: exact decimal comparison when both sides are
//!   numbers or numeric strings; otherwise, when both are strings, byte-wise
//!   comparison, except that two timestamps of the shape
//!   `YYYY-MM-DDTHH:MM:SS[.fraction][Z]` (both with `Z` or both without)
//!   compare their fractions as digits padded with zeros, so Sluice's
//!   timestamps, whose fractions have trailing zeros trimmed
//!   (`…:30Z` < `…:30.5Z`), compare chronologically; otherwise false (so
//!   `null`, booleans and a missing field never compare). `eq` stays exact
//!   JSON equality for timestamps: write them as Sluice does, in UTC with
//!   no trailing zeros in the fraction.
//! - `in` is `eq` against any element; `nin` is `eq` against none.
//! - `prefix`, `suffix`: the field must be a string.
//!
//! A numeric string is an optional sign, digits with an optional fraction
//! (`12`, `-0.5`, `3.`, `.5`) and an optional exponent (`1e2`, `2E-3`) of at
//! most 1 000 000; `NaN`, `Infinity`, `0x10` or `" 1"` are plain strings.
//! The comparison works on the digit text, never through `f64`, so
//! `"12345678901234567890.000000000000000001"` and
//! `"12345678901234567890"` stay different.
//!
//! Example: paid orders of 100 or more, or any order of a gold customer:
//!
//! ```json
//! {"or": [
//!   {"and": [{"field": "status", "op": "eq", "value": "paid"},
//!            {"field": "new.total", "op": "gte", "value": 100}]},
//!   {"field": "new.meta.tier", "op": "eq", "value": "gold"}
//! ]}
//! ```

use std::cmp::Ordering;
use std::fmt;
use std::io;

use serde_json::{Map, Value};

/// Largest filter accepted, in bytes of JSON.
pub const MAX_FILTER_BYTES: usize = 4096;
/// Deepest nesting: a lone comparison has depth 1.
pub const MAX_DEPTH: usize = 8;
/// Most nodes (comparisons plus `and`/`or`/`not`).
pub const MAX_NODES: usize = 64;
/// Most filters in one `and` or `or`.
pub const MAX_CHILDREN: usize = 32;
/// Most values in one `in` or `nin`.
pub const MAX_IN_VALUES: usize = 100;
/// Most steps in a path after `new`/`old`.
pub const MAX_PATH_STEPS: usize = 8;
/// Longest path step, in bytes.
pub const MAX_STEP_BYTES: usize = 64;
/// Largest exponent magnitude of a number or numeric string compared as a
/// decimal; beyond it the value is not numeric.
pub const MAX_DECIMAL_EXPONENT: i64 = 1_000_000;

const OPERATORS: &str = "eq, neq, lt, lte, gt, gte, in, nin, prefix, suffix, is_null";
const SCALAR: &str = "a scalar (string, number, boolean or null)";

/// A validated filter, ready to be matched against events' `data`.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    root: Node,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Compare(Comparison),
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
}

#[derive(Debug, Clone, PartialEq)]
struct Comparison {
    path: FieldPath,
    test: Test,
}

#[derive(Debug, Clone, PartialEq)]
struct FieldPath {
    image: Image,
    steps: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Image {
    New,
    Old,
}

#[derive(Debug, Clone, PartialEq)]
enum Test {
    Eq(Value),
    Neq(Value),
    Order(OrderOp, Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Prefix(String),
    Suffix(String),
    IsNull(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OrderOp {
    Lt,
    Lte,
    Gt,
    Gte,
}

/// Why a filter was rejected. `at` is where in the filter the problem is:
/// `filter`, `filter.and[1]`, `filter.not.op`, `filter.value[3]`, …
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("filter is not valid JSON: {reason}")]
    NotJson { reason: String },
    #[error("filter is larger than the limit of {MAX_FILTER_BYTES} bytes of JSON")]
    TooLarge,
    #[error(
        "{at}: expected a filter object (a comparison with \"field\", \"op\" and \"value\", or one of \"and\", \"or\", \"not\"), found {found}"
    )]
    NotAFilter { at: String, found: &'static str },
    #[error("{at}: unknown key {key:?}; {hint}")]
    UnknownKey {
        at: String,
        key: String,
        hint: &'static str,
    },
    #[error("{at}: missing key \"{key}\"; a comparison needs \"field\", \"op\" and \"value\"")]
    MissingKey { at: String, key: &'static str },
    #[error(
        "{at}: \"{first}\" cannot be combined with \"{second}\" in one object; nest them inside \"and\" or \"or\""
    )]
    ConflictingKeys {
        at: String,
        first: &'static str,
        second: &'static str,
    },
    #[error("{at}: expected {expected}, found {found}")]
    WrongType {
        at: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{at}: unknown operator {op:?}; expected one of {OPERATORS}")]
    UnknownOperator { at: String, op: String },
    #[error("{at}: {problem}")]
    InvalidPath { at: String, problem: PathProblem },
    #[error("{at}: \"{key}\" needs 1 to {max} {what}, found {count}")]
    ListLength {
        at: String,
        key: &'static str,
        what: &'static str,
        max: usize,
        count: usize,
    },
    #[error("{at}: filter is nested deeper than {MAX_DEPTH} levels")]
    TooDeep { at: String },
    #[error("{at}: filter has more than {MAX_NODES} nodes (comparisons plus and/or/not)")]
    TooManyNodes { at: String },
}

/// What is wrong with a `field` path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathProblem {
    #[error("path is empty; expected \"new.<column>\" or \"old.<column>\", e.g. \"new.status\"")]
    Empty,
    #[error("path {path:?} names no column; expected \"{path}.<column>\", e.g. \"{path}.status\"")]
    NoColumn { path: String },
    #[error(
        "path {path:?} has an empty step; steps are separated by a single \".\" and the path cannot start or end with \".\""
    )]
    EmptyStep { path: String },
    #[error("path step {step:?} is {len} bytes long; the limit is {MAX_STEP_BYTES} bytes")]
    StepTooLong { step: String, len: usize },
    #[error("path {path:?} has {count} steps after new/old; the limit is {MAX_PATH_STEPS}")]
    TooManySteps { path: String, count: usize },
}

impl Filter {
    /// Validates a filter already parsed as JSON (e.g. a member of a
    /// WebSocket subscribe message). The same limits apply as for
    /// [`Filter::parse_str`], the size being that of compact JSON.
    pub fn parse(v: &Value) -> Result<Filter, FilterError> {
        let mut limit = LimitWriter {
            left: MAX_FILTER_BYTES,
        };
        if serde_json::to_writer(&mut limit, v).is_err() {
            return Err(FilterError::TooLarge);
        }
        let mut nodes = 0;
        let root = parse_node(v, &Path::root(), 1, &mut nodes)?;
        Ok(Filter { root })
    }

    /// Parses and validates a filter from its JSON text (e.g. a query
    /// parameter); rejects text over 4 KiB before parsing it.
    pub fn parse_str(s: &str) -> Result<Filter, FilterError> {
        if s.len() > MAX_FILTER_BYTES {
            return Err(FilterError::TooLarge);
        }
        let v: Value = serde_json::from_str(s).map_err(|e| FilterError::NotJson {
            reason: e.to_string(),
        })?;
        Filter::parse(&v)
    }

    /// Whether an event's `data` passes the filter.
    pub fn matches(&self, data: &Value) -> bool {
        self.root.matches(data)
    }
}

/// Counts serialized bytes and fails once more than the limit were written.
struct LimitWriter {
    left: usize,
}

impl io::Write for LimitWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.left.checked_sub(buf.len()) {
            Some(left) => {
                self.left = left;
                Ok(buf.len())
            }
            None => Err(io::Error::other("filter too large")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// The location inside the filter, for error messages.
struct Path(String);

impl Path {
    fn root() -> Path {
        Path("filter".to_owned())
    }

    fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.0)
    }

    fn child(&self, key: &str) -> Path {
        Path(self.key(key))
    }

    fn index(&self, key: &str, i: usize) -> Path {
        Path(format!("{}.{key}[{i}]", self.0))
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

const BOOLEAN_KEYS: [&str; 3] = ["and", "or", "not"];
const COMPARISON_KEYS: [&str; 3] = ["field", "op", "value"];

fn parse_node(v: &Value, at: &Path, depth: usize, nodes: &mut usize) -> Result<Node, FilterError> {
    if depth > MAX_DEPTH {
        return Err(FilterError::TooDeep { at: at.0.clone() });
    }
    *nodes += 1;
    if *nodes > MAX_NODES {
        return Err(FilterError::TooManyNodes { at: at.0.clone() });
    }
    let obj = match v {
        Value::Object(o) if !o.is_empty() => o,
        Value::Object(_) => {
            return Err(FilterError::NotAFilter {
                at: at.0.clone(),
                found: "an empty object",
            })
        }
        other => {
            return Err(FilterError::NotAFilter {
                at: at.0.clone(),
                found: kind_of(other),
            })
        }
    };
    let boolean = BOOLEAN_KEYS.iter().find(|k| obj.contains_key(**k));
    match boolean {
        Some(&op) => parse_boolean(obj, op, at, depth, nodes),
        None => parse_comparison(obj, at),
    }
}

fn parse_boolean(
    obj: &Map<String, Value>,
    op: &'static str,
    at: &Path,
    depth: usize,
    nodes: &mut usize,
) -> Result<Node, FilterError> {
    for key in obj.keys() {
        if key == op {
            continue;
        }
        let known = BOOLEAN_KEYS
            .iter()
            .chain(COMPARISON_KEYS.iter())
            .find(|k| **k == key.as_str())
            .copied();
        return Err(match known {
            Some(second) => FilterError::ConflictingKeys {
                at: at.0.clone(),
                first: op,
                second,
            },
            None => FilterError::UnknownKey {
                at: at.0.clone(),
                key: key.clone(),
                hint: match op {
                    "and" => "an \"and\" object has no other key",
                    "or" => "an \"or\" object has no other key",
                    _ => "a \"not\" object has no other key",
                },
            },
        });
    }
    let Some(arg) = obj.get(op) else {
        // Unreachable: `op` was found among the keys.
        return Err(FilterError::MissingKey {
            at: at.0.clone(),
            key: op,
        });
    };
    if op == "not" {
        let child = at.child("not");
        let inner = parse_node(arg, &child, depth + 1, nodes)?;
        return Ok(Node::Not(Box::new(inner)));
    }
    let Value::Array(items) = arg else {
        return Err(FilterError::WrongType {
            at: at.key(op),
            expected: "an array of 1 to 32 filters",
            found: kind_of(arg),
        });
    };
    if items.is_empty() || items.len() > MAX_CHILDREN {
        return Err(FilterError::ListLength {
            at: at.key(op),
            key: op,
            what: "filters",
            max: MAX_CHILDREN,
            count: items.len(),
        });
    }
    let mut children = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let child = at.index(op, i);
        children.push(parse_node(item, &child, depth + 1, nodes)?);
    }
    Ok(if op == "and" {
        Node::And(children)
    } else {
        Node::Or(children)
    })
}

fn parse_comparison(obj: &Map<String, Value>, at: &Path) -> Result<Node, FilterError> {
    if let Some(key) = obj.keys().find(|k| !COMPARISON_KEYS.contains(&k.as_str())) {
        return Err(FilterError::UnknownKey {
            at: at.0.clone(),
            key: key.clone(),
            hint: "expected \"field\", \"op\" and \"value\", or one of \"and\", \"or\", \"not\"",
        });
    }
    let get = |key: &'static str| {
        obj.get(key).ok_or_else(|| FilterError::MissingKey {
            at: at.0.clone(),
            key,
        })
    };
    let (field, op, value) = (get("field")?, get("op")?, get("value")?);

    let Value::String(field) = field else {
        return Err(FilterError::WrongType {
            at: at.key("field"),
            expected: "a path string such as \"new.status\"",
            found: kind_of(field),
        });
    };
    let path = parse_path(field).map_err(|problem| FilterError::InvalidPath {
        at: at.key("field"),
        problem,
    })?;

    let Value::String(op) = op else {
        return Err(FilterError::WrongType {
            at: at.key("op"),
            expected: "an operator name such as \"eq\"",
            found: kind_of(op),
        });
    };
    let value_at = at.child("value");
    let test = match op.as_str() {
        "eq" => Test::Eq(scalar(value, &value_at)?),
        "neq" => Test::Neq(scalar(value, &value_at)?),
        "lt" => Test::Order(OrderOp::Lt, scalar(value, &value_at)?),
        "lte" => Test::Order(OrderOp::Lte, scalar(value, &value_at)?),
        "gt" => Test::Order(OrderOp::Gt, scalar(value, &value_at)?),
        "gte" => Test::Order(OrderOp::Gte, scalar(value, &value_at)?),
        "in" => Test::In(scalar_list(value, &value_at, "in")?),
        "nin" => Test::Nin(scalar_list(value, &value_at, "nin")?),
        "prefix" | "suffix" => {
            let Value::String(s) = value else {
                return Err(FilterError::WrongType {
                    at: value_at.0,
                    expected: "a string",
                    found: kind_of(value),
                });
            };
            if op == "prefix" {
                Test::Prefix(s.clone())
            } else {
                Test::Suffix(s.clone())
            }
        }
        "is_null" => match value {
            Value::Bool(b) => Test::IsNull(*b),
            other => {
                return Err(FilterError::WrongType {
                    at: value_at.0,
                    expected: "true (null or missing) or false (present and not null)",
                    found: kind_of(other),
                })
            }
        },
        _ => {
            return Err(FilterError::UnknownOperator {
                at: at.key("op"),
                op: op.clone(),
            })
        }
    };
    Ok(Node::Compare(Comparison { path, test }))
}

fn scalar(v: &Value, at: &Path) -> Result<Value, FilterError> {
    match v {
        Value::Array(_) | Value::Object(_) => Err(FilterError::WrongType {
            at: at.0.clone(),
            expected: SCALAR,
            found: kind_of(v),
        }),
        _ => Ok(v.clone()),
    }
}

fn scalar_list(v: &Value, at: &Path, op: &'static str) -> Result<Vec<Value>, FilterError> {
    let Value::Array(items) = v else {
        return Err(FilterError::WrongType {
            at: at.0.clone(),
            expected: "an array of 1 to 100 scalars",
            found: kind_of(v),
        });
    };
    if items.is_empty() || items.len() > MAX_IN_VALUES {
        return Err(FilterError::ListLength {
            at: at.0.clone(),
            key: op,
            what: "values",
            max: MAX_IN_VALUES,
            count: items.len(),
        });
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| scalar(item, &Path(format!("{at}[{i}]"))))
        .collect()
}

fn parse_path(s: &str) -> Result<FieldPath, PathProblem> {
    if s.is_empty() {
        return Err(PathProblem::Empty);
    }
    let mut parts = s.split('.');
    let (image, first) = match parts.next() {
        Some("new") => (Image::New, None),
        Some("old") => (Image::Old, None),
        first => (Image::New, first),
    };
    let mut steps = Vec::new();
    for step in first.into_iter().chain(parts) {
        if step.is_empty() {
            return Err(PathProblem::EmptyStep { path: s.to_owned() });
        }
        if step.len() > MAX_STEP_BYTES {
            return Err(PathProblem::StepTooLong {
                step: step.to_owned(),
                len: step.len(),
            });
        }
        if steps.len() == MAX_PATH_STEPS {
            let count = s.split('.').count() - usize::from(first.is_none());
            return Err(PathProblem::TooManySteps {
                path: s.to_owned(),
                count,
            });
        }
        steps.push(step.to_owned());
    }
    if steps.is_empty() {
        return Err(PathProblem::NoColumn { path: s.to_owned() });
    }
    Ok(FieldPath { image, steps })
}

// ---------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------

static NULL: Value = Value::Null;

impl Node {
    fn matches(&self, data: &Value) -> bool {
        match self {
            Node::Compare(c) => c.matches(data),
            Node::And(children) => children.iter().all(|c| c.matches(data)),
            Node::Or(children) => children.iter().any(|c| c.matches(data)),
            Node::Not(inner) => !inner.matches(data),
        }
    }
}

impl Comparison {
    fn matches(&self, data: &Value) -> bool {
        let field = self.path.resolve(data);
        match &self.test {
            Test::Eq(v) => json_eq(field.unwrap_or(&NULL), v),
            Test::Neq(v) => !json_eq(field.unwrap_or(&NULL), v),
            Test::Order(op, v) => match compare(field.unwrap_or(&NULL), v) {
                Some(ord) => match op {
                    OrderOp::Lt => ord == Ordering::Less,
                    OrderOp::Lte => ord != Ordering::Greater,
                    OrderOp::Gt => ord == Ordering::Greater,
                    OrderOp::Gte => ord != Ordering::Less,
                },
                None => false,
            },
            Test::In(vs) => {
                let f = field.unwrap_or(&NULL);
                vs.iter().any(|v| json_eq(f, v))
            }
            Test::Nin(vs) => {
                let f = field.unwrap_or(&NULL);
                !vs.iter().any(|v| json_eq(f, v))
            }
            Test::Prefix(p) => matches!(field, Some(Value::String(s)) if s.starts_with(p.as_str())),
            Test::Suffix(p) => matches!(field, Some(Value::String(s)) if s.ends_with(p.as_str())),
            Test::IsNull(want) => matches!(field, None | Some(Value::Null)) == *want,
        }
    }
}

impl FieldPath {
    fn resolve<'a>(&self, data: &'a Value) -> Option<&'a Value> {
        let image = match self.image {
            Image::New => "new",
            Image::Old => "old",
        };
        let mut cur = data.as_object()?.get(image)?;
        for step in &self.steps {
            cur = cur.as_object()?.get(step)?;
        }
        Some(cur)
    }
}

/// The decimal of a number or numeric string.
fn numeric(v: &Value) -> Option<Decimal<'_>> {
    match v {
        Value::Number(n) => Decimal::parse(n.as_str()),
        Value::String(s) => Decimal::parse(s),
        _ => None,
    }
}

/// `eq`: exact decimal equality when both sides are numeric, else JSON
/// equality.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (numeric(a), numeric(b)) {
        (Some(x), Some(y)) => x.cmp(&y) == Ordering::Equal,
        _ => a == b,
    }
}

/// The order of `lt`/`lte`/`gt`/`gte`: decimal if both are numeric, bytes
/// if both are strings, none otherwise.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (numeric(a), numeric(b)) {
        return Some(x.cmp(&y));
    }
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(compare_strings(x, y)),
        _ => None,
    }
}

/// Byte-wise, except for two timestamps of the same shape, whose fractions
/// of a second compare as digits padded with zeros (`30Z` < `30.5Z`, where
/// bytes would put `.` before `Z`).
fn compare_strings(a: &str, b: &str) -> Ordering {
    match (timestamp_parts(a), timestamp_parts(b)) {
        (Some((ha, fa, za)), Some((hb, fb, zb))) if za == zb => ha.cmp(hb).then_with(|| {
            (0..fa.len().max(fb.len()))
                .map(|i| {
                    let da = fa.get(i).copied().unwrap_or(b'0');
                    da.cmp(&fb.get(i).copied().unwrap_or(b'0'))
                })
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal)
        }),
        _ => a.as_bytes().cmp(b.as_bytes()),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.digits][Z]` → (the first 19 bytes, the fraction's
/// digits, whether it ends in `Z`).
fn timestamp_parts(s: &str) -> Option<(&[u8], &[u8], bool)> {
    const SHAPE: &[u8; 19] = b"0000-00-00T00:00:00";
    let b = s.as_bytes();
    let head = b.get(..19)?;
    let shaped = head.iter().zip(SHAPE).all(|(c, p)| {
        if *p == b'0' {
            c.is_ascii_digit()
        } else {
            c == p
        }
    });
    if !shaped {
        return None;
    }
    let mut rest = b.get(19..)?;
    let zoned = rest.last() == Some(&b'Z');
    if zoned {
        rest = rest.get(..rest.len() - 1)?;
    }
    match rest {
        [] => Some((head, &[], zoned)),
        [b'.', digits @ ..] if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => {
            Some((head, digits, zoned))
        }
        _ => None,
    }
}

/// An exact decimal viewed in its text: `±0.d₁d₂…dₙ × 10^adjusted`, where
/// the significant digits `d₁…dₙ` (no leading or trailing zeros) are
/// `digits[start..end]` of `int ++ frac`.
#[derive(Debug, Clone, Copy)]
struct Decimal<'a> {
    /// -1, 0 (the value is zero, whatever its sign) or 1.
    sign: i8,
    int: &'a [u8],
    frac: &'a [u8],
    start: usize,
    end: usize,
    adjusted: i64,
}

/// Reads an optional `+` or `-` at `b[*i]`, moving past it; true for `-`.
fn sign(b: &[u8], i: &mut usize) -> bool {
    match b.get(*i) {
        Some(b'-') => {
            *i += 1;
            true
        }
        Some(b'+') => {
            *i += 1;
            false
        }
        _ => false,
    }
}

impl<'a> Decimal<'a> {
    /// `[+-]? (digits [. digits?] | . digits) ([eE] [+-]? digits)?`, with an
    /// exponent of at most [`MAX_DECIMAL_EXPONENT`] in magnitude.
    fn parse(s: &'a str) -> Option<Decimal<'a>> {
        let b = s.as_bytes();
        let mut i = 0;
        let neg = sign(b, &mut i);
        let int_start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let int = b.get(int_start..i)?;
        let mut frac: &[u8] = &[];
        if b.get(i) == Some(&b'.') {
            i += 1;
            let frac_start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            frac = b.get(frac_start..i)?;
        }
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let mut exp: i64 = 0;
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            let exp_neg = sign(b, &mut i);
            let exp_start = i;
            while let Some(d) = b.get(i).filter(|d| d.is_ascii_digit()) {
                exp = exp * 10 + i64::from(d - b'0');
                if exp > MAX_DECIMAL_EXPONENT {
                    return None;
                }
                i += 1;
            }
            if i == exp_start {
                return None;
            }
            if exp_neg {
                exp = -exp;
            }
        }
        if i != b.len() {
            return None;
        }
        let mut d = Decimal {
            sign: 0,
            int,
            frac,
            start: 0,
            end: 0,
            adjusted: 0,
        };
        let len = int.len() + frac.len();
        let Some(start) = (0..len).find(|&k| d.digit(k) != b'0') else {
            return Some(d); // zero
        };
        let end = (start..len).rev().find(|&k| d.digit(k) != b'0')? + 1;
        d.sign = if neg { -1 } else { 1 };
        d.start = start;
        d.end = end;
        // Lengths are bounded by memory, far below i64::MAX.
        let int_len = i64::try_from(int.len()).ok()?;
        let start = i64::try_from(start).ok()?;
        d.adjusted = int_len - start + exp;
        Some(d)
    }

    /// Digit `k` of `int ++ frac`, as an ASCII byte.
    fn digit(&self, k: usize) -> u8 {
        match k.checked_sub(self.int.len()) {
            None => self.int.get(k).copied().unwrap_or(b'0'),
            Some(f) => self.frac.get(f).copied().unwrap_or(b'0'),
        }
    }

    fn cmp(&self, other: &Decimal<'_>) -> Ordering {
        if self.sign != other.sign {
            return self.sign.cmp(&other.sign);
        }
        if self.sign == 0 {
            return Ordering::Equal;
        }
        let magnitude = self.adjusted.cmp(&other.adjusted).then_with(|| {
            let (la, lb) = (self.end - self.start, other.end - other.start);
            (0..la.min(lb))
                .map(|k| {
                    self.digit(self.start + k)
                        .cmp(&other.digit(other.start + k))
                })
                .find(|o| o.is_ne())
                // Trailing zeros are trimmed: more digits is larger.
                .unwrap_or_else(|| la.cmp(&lb))
        });
        if self.sign < 0 {
            magnitude.reverse()
        } else {
            magnitude
        }
    }
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
