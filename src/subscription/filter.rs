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
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn filter(v: Value) -> Filter {
        Filter::parse(&v).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    fn cmp(field: &str, op: &str, value: Value) -> Filter {
        filter(json!({"field": field, "op": op, "value": value}))
    }

    fn err(v: Value) -> String {
        Filter::parse(&v)
            .expect_err("filter should be rejected")
            .to_string()
    }

    fn order_event() -> Value {
        serde_json::from_str(
            r#"{"op":"update","schema":"public","table":"orders","key":{"id":42},
                "new":{"id":42,"status":"paid","total":"150.00","qty":3,"note":null,
                       "paid_at":"2026-11-22T10:15:30.123456Z","vip":true,
                       "big":"123456789012345678901234567890.5",
                       "meta":{"tier":"gold","score":{"value":7}}},
                "old":{"id":42,"status":"pending","total":"150.00"}}"#,
        )
        .expect("valid JSON")
    }

    fn dec_cmp(a: &str, b: &str) -> Option<Ordering> {
        Some(Decimal::parse(a)?.cmp(&Decimal::parse(b)?))
    }

    // --- operators -------------------------------------------------------

    #[test]
    fn eq_and_neq_on_strings_numbers_booleans_and_null() {
        let d = order_event();
        assert!(cmp("new.status", "eq", json!("paid")).matches(&d));
        assert!(!cmp("new.status", "eq", json!("pending")).matches(&d));
        assert!(cmp("old.status", "eq", json!("pending")).matches(&d));
        assert!(cmp("new.id", "eq", json!(42)).matches(&d));
        assert!(cmp("new.vip", "eq", json!(true)).matches(&d));
        assert!(!cmp("new.vip", "eq", json!("true")).matches(&d));
        assert!(cmp("new.note", "eq", Value::Null).matches(&d));
        assert!(cmp("new.status", "neq", json!("pending")).matches(&d));
        assert!(!cmp("new.status", "neq", json!("paid")).matches(&d));
        assert!(!cmp("new.id", "eq", json!("forty-two")).matches(&d));
        // A missing field is null.
        assert!(cmp("new.nope", "eq", Value::Null).matches(&d));
        assert!(!cmp("new.nope", "neq", Value::Null).matches(&d));
        assert!(cmp("new.nope", "neq", json!("x")).matches(&d));
        assert!(!cmp("new.nope", "eq", json!(0)).matches(&d));
    }

    #[test]
    fn eq_compares_numbers_and_numeric_strings_as_exact_decimals() {
        let d = order_event();
        for v in [
            json!(150),
            json!("150"),
            json!("150.0000"),
            json!("1.5e2"),
            json!("+150"),
        ] {
            assert!(cmp("new.total", "eq", v.clone()).matches(&d), "{v}");
            assert!(!cmp("new.total", "neq", v.clone()).matches(&d), "{v}");
        }
        let n: Value = serde_json::from_str("150.00").expect("number");
        assert!(cmp("new.total", "eq", n).matches(&d));
        assert!(!cmp("new.total", "eq", json!(150.01)).matches(&d));
        assert!(!cmp("new.total", "eq", json!("150.000000000000000000001")).matches(&d));
        let data = json!({"new": {"n": "1e2", "z": "-0.0", "i": 3}});
        assert!(cmp("n", "eq", json!(100)).matches(&data));
        assert!(cmp("z", "eq", json!(0)).matches(&data));
        assert!(cmp("i", "eq", json!("3.0")).matches(&data));
        // Big numerics stay exact.
        let big: Value = serde_json::from_str("123456789012345678901234567890.5").expect("number");
        assert!(cmp("new.big", "eq", big).matches(&d));
        assert!(!cmp(
            "new.big",
            "eq",
            json!("123456789012345678901234567890.50001")
        )
        .matches(&d));
        // Non-numeric strings compare as strings.
        let data = json!({"new": {"s": "NaN"}});
        assert!(cmp("s", "eq", json!("NaN")).matches(&data));
        assert!(!cmp("s", "eq", json!(0)).matches(&data));
    }

    #[test]
    fn ordering_operators_on_numbers_and_numeric_strings() {
        let d = order_event();
        let t = |op: &str, v: Value| cmp("new.total", op, v).matches(&d);
        assert!(t("gt", json!(100)));
        assert!(t("gte", json!(150)));
        assert!(!t("gt", json!(150)));
        assert!(t("lte", json!("150.0")));
        assert!(!t("lt", json!("150.0")));
        assert!(t("lt", json!("150.001")));
        assert!(t("gt", json!(-1e9)));
        assert!(!t("lt", json!("1e2")));
        assert!(t("lt", json!("1e3")));
        let q = |op: &str, v: Value| cmp("new.qty", op, v).matches(&d);
        assert!(q("gt", json!("2.99999999999999999999999")));
        assert!(q("lt", json!(3.000000001)));
        assert!(!q("lt", json!(3)));
        assert!(q("lte", json!(3)));
        // Beyond f64 precision.
        assert!(cmp(
            "new.big",
            "gt",
            json!("123456789012345678901234567890.4999999")
        )
        .matches(&d));
        assert!(cmp("new.big", "lt", json!("123456789012345678901234567891")).matches(&d));
    }

    #[test]
    fn ordering_operators_on_strings_and_timestamps() {
        let d = order_event();
        let t = |op: &str, v: &str| cmp("new.paid_at", op, json!(v)).matches(&d);
        assert!(t("gt", "2026-11-22T10:15:30Z"));
        assert!(t("gte", "2026-11-22T10:15:30.123456Z"));
        assert!(t("lt", "2026-11-22T10:15:31Z"));
        assert!(t("lt", "2027-01-01T00:00:00Z"));
        assert!(!t("lt", "2025-12-31T23:59:59Z"));
        // Trimmed fractions still compare chronologically.
        let ts = |field: &str, op: &str, v: &str| {
            cmp("t", op, json!(v)).matches(&json!({"new": {"t": field}}))
        };
        assert!(ts("2026-11-22T10:15:30.5Z", "gt", "2026-11-22T10:15:30Z"));
        assert!(ts(
            "2026-11-22T10:15:30Z",
            "lt",
            "2026-11-22T10:15:30.000001Z"
        ));
        assert!(ts(
            "2026-11-22T10:15:30.5Z",
            "lte",
            "2026-11-22T10:15:30.50Z"
        ));
        assert!(ts(
            "2026-11-22T10:15:30.5Z",
            "gte",
            "2026-11-22T10:15:30.50Z"
        ));
        assert!(ts(
            "2026-11-22T10:15:30.123Z",
            "lt",
            "2026-11-22T10:15:30.2Z"
        ));
        assert!(ts(
            "2026-11-22T10:15:30.999999Z",
            "lt",
            "2026-11-22T10:15:31Z"
        ));
        // Timestamps without a zone (Postgres `timestamp`) too.
        assert!(ts("2026-11-22T00:00:00.5", "gt", "2026-11-22T00:00:00"));
        // Dates are plain strings and already compare by bytes.
        assert!(ts("2026-11-22", "lt", "2026-11-23"));
        assert!(ts("2026-11-22", "gt", "2026-01-30"));
        assert!(cmp("status", "gt", json!("p")).matches(&d));
        assert!(cmp("status", "lt", json!("pb")).matches(&d));
        // A numeric string against a non-numeric one: bytes.
        assert!(cmp("total", "lt", json!("abc")).matches(&d));
    }

    #[test]
    fn ordering_operators_never_match_mixed_or_null_operands() {
        let d = order_event();
        for op in ["lt", "lte", "gt", "gte"] {
            assert!(!cmp("new.nope", op, json!(1)).matches(&d), "{op} missing");
            assert!(!cmp("new.nope", op, Value::Null).matches(&d), "{op} null");
            assert!(
                !cmp("new.note", op, json!("a")).matches(&d),
                "{op} null field"
            );
            assert!(!cmp("new.vip", op, json!(true)).matches(&d), "{op} bool");
            assert!(!cmp("new.status", op, json!(1)).matches(&d), "{op} mixed");
            assert!(!cmp("new.id", op, json!("x")).matches(&d), "{op} mixed");
            assert!(!cmp("new.meta", op, json!("a")).matches(&d), "{op} object");
        }
    }

    #[test]
    fn in_and_nin() {
        let d = order_event();
        assert!(cmp("status", "in", json!(["paid", "shipped"])).matches(&d));
        assert!(!cmp("status", "in", json!(["pending", "shipped"])).matches(&d));
        assert!(cmp("status", "nin", json!(["pending", "shipped"])).matches(&d));
        assert!(!cmp("status", "nin", json!(["paid"])).matches(&d));
        assert!(cmp("total", "in", json!([1, 150])).matches(&d));
        assert!(cmp("id", "in", json!(["42.0"])).matches(&d));
        assert!(cmp("nope", "in", json!([1, null])).matches(&d));
        assert!(cmp("nope", "nin", json!([1, 2])).matches(&d));
        assert!(!cmp("nope", "nin", json!([null])).matches(&d));
    }

    #[test]
    fn prefix_and_suffix_need_a_string_field() {
        let d = order_event();
        assert!(cmp("status", "prefix", json!("pa")).matches(&d));
        assert!(cmp("status", "prefix", json!("")).matches(&d));
        assert!(!cmp("status", "prefix", json!("aid")).matches(&d));
        assert!(cmp("status", "suffix", json!("aid")).matches(&d));
        assert!(!cmp("status", "suffix", json!("pa")).matches(&d));
        assert!(cmp("paid_at", "prefix", json!("2026-11")).matches(&d));
        assert!(!cmp("id", "prefix", json!("4")).matches(&d));
        assert!(!cmp("nope", "prefix", json!("")).matches(&d));
        assert!(!cmp("note", "suffix", json!("")).matches(&d));
    }

    #[test]
    fn is_null_both_ways() {
        let d = order_event();
        let t = |field: &str, want: bool| cmp(field, "is_null", json!(want)).matches(&d);
        assert!(t("note", true));
        assert!(!t("note", false));
        assert!(t("nope", true));
        assert!(!t("nope", false));
        assert!(t("old.note", true));
        assert!(!t("status", true));
        assert!(t("status", false));
        assert!(t("meta", false));
    }

    #[test]
    fn nested_paths_and_images() {
        let d = order_event();
        assert!(cmp("new.meta.tier", "eq", json!("gold")).matches(&d));
        assert!(cmp("meta.tier", "eq", json!("gold")).matches(&d));
        assert!(cmp("meta.score.value", "gte", json!(7)).matches(&d));
        assert!(cmp("meta.score.value.deeper", "is_null", json!(true)).matches(&d));
        assert!(cmp("meta.tier.x", "is_null", json!(true)).matches(&d));
        assert!(cmp("old.meta.tier", "is_null", json!(true)).matches(&d));
        assert!(cmp("old.total", "eq", json!(150)).matches(&d));
        // A column named `new` is `new.new`.
        let data = json!({"new": {"new": 1, "old": 2}});
        assert!(cmp("new.new", "eq", json!(1)).matches(&data));
        assert!(cmp("new.old", "eq", json!(2)).matches(&data));
        // No old row (insert): old.* is missing.
        let insert = json!({"op": "insert", "new": {"a": 1}});
        assert!(cmp("old.a", "is_null", json!(true)).matches(&insert));
        // Data that is not an object.
        for d in [Value::Null, json!([1]), json!("x"), json!({"new": 5})] {
            assert!(cmp("a", "is_null", json!(true)).matches(&d));
            assert!(!cmp("a", "eq", json!(1)).matches(&d));
        }
    }

    #[test]
    fn and_or_not() {
        let d = order_event();
        let paid = json!({"field": "status", "op": "eq", "value": "paid"});
        let big = json!({"field": "total", "op": "gt", "value": 1000});
        let gold = json!({"field": "meta.tier", "op": "eq", "value": "gold"});
        assert!(!filter(json!({"and": [paid, big]})).matches(&d));
        assert!(filter(json!({"and": [paid, gold]})).matches(&d));
        assert!(filter(json!({"and": [paid]})).matches(&d));
        assert!(filter(json!({"or": [big, gold]})).matches(&d));
        assert!(!filter(json!({"or": [big]})).matches(&d));
        assert!(filter(json!({"not": big})).matches(&d));
        assert!(!filter(json!({"not": {"not": big}})).matches(&d));
        assert!(filter(json!({"or": [{"and": [paid, big]}, {"not": {"or": [big]}}]})).matches(&d));
    }

    #[test]
    fn readme_example_parses_and_matches() {
        let f = Filter::parse_str(
            r#"{"or": [
                 {"and": [{"field": "status", "op": "eq", "value": "paid"},
                          {"field": "new.total", "op": "gte", "value": 100}]},
                 {"field": "new.meta.tier", "op": "eq", "value": "gold"}
               ]}"#,
        )
        .expect("valid");
        assert!(f.matches(&order_event()));
        assert!(f.matches(&json!({"new": {"status": "paid", "total": "100.00"}})));
        assert!(!f.matches(&json!({"new": {"status": "paid", "total": "99.99"}})));
    }

    // --- limits ----------------------------------------------------------

    fn leaf() -> Value {
        json!({"field": "a", "op": "eq", "value": 1})
    }

    fn nested_not(levels: usize) -> Value {
        (0..levels).fold(leaf(), |f, _| json!({ "not": f }))
    }

    #[test]
    fn depth_limit() {
        assert!(Filter::parse(&nested_not(7)).is_ok()); // depth 8
        assert_eq!(
            Filter::parse(&nested_not(8)),
            Err(FilterError::TooDeep {
                at: format!("filter{}", ".not".repeat(8))
            })
        );
        assert_eq!(
            err(nested_not(8)),
            "filter.not.not.not.not.not.not.not.not: filter is nested deeper than 8 levels"
        );
    }

    #[test]
    fn node_limit() {
        let ok = json!({"and": [
            {"and": vec![leaf(); 31]},
            {"and": vec![leaf(); 30]},
        ]});
        assert!(Filter::parse(&ok).is_ok()); // 1 + (1 + 31) + (1 + 30) = 64
        let too_many = json!({"and": [
            {"and": vec![leaf(); 31]},
            {"and": vec![leaf(); 31]},
        ]});
        assert_eq!(
            err(too_many),
            "filter.and[1].and[30]: filter has more than 64 nodes (comparisons plus and/or/not)"
        );
    }

    #[test]
    fn size_limit() {
        let long = "x".repeat(MAX_FILTER_BYTES);
        let v = json!({"field": "a", "op": "eq", "value": long});
        assert_eq!(Filter::parse(&v), Err(FilterError::TooLarge));
        assert_eq!(
            Filter::parse_str(&v.to_string()),
            Err(FilterError::TooLarge)
        );
        assert_eq!(
            FilterError::TooLarge.to_string(),
            "filter is larger than the limit of 4096 bytes of JSON"
        );
        // Whitespace counts in text.
        let padded = format!("{}{}", " ".repeat(4090), leaf());
        assert_eq!(Filter::parse_str(&padded), Err(FilterError::TooLarge));
        let fits = json!({"field": "a", "op": "eq", "value": "x".repeat(4000)});
        assert!(Filter::parse_str(&fits.to_string()).is_ok());
    }

    #[test]
    fn list_limits() {
        let many = json!({"or": vec![leaf(); 33]});
        assert_eq!(
            err(many),
            "filter.or: \"or\" needs 1 to 32 filters, found 33"
        );
        assert!(Filter::parse(&json!({"or": vec![leaf(); 32]})).is_ok());
        let values: Vec<u32> = (0..101).collect();
        assert_eq!(
            err(json!({"field": "a", "op": "in", "value": values})),
            "filter.value: \"in\" needs 1 to 100 values, found 101"
        );
        let values: Vec<u32> = (0..100).collect();
        assert!(Filter::parse(&json!({"field": "a", "op": "nin", "value": values})).is_ok());
    }

    // --- errors ----------------------------------------------------------

    #[test]
    fn error_not_json() {
        let e = Filter::parse_str("{\"field\": ").expect_err("not JSON");
        assert!(matches!(e, FilterError::NotJson { .. }));
        assert!(
            e.to_string().starts_with("filter is not valid JSON: "),
            "{e}"
        );
        assert!(Filter::parse_str("").is_err());
    }

    #[test]
    fn error_not_a_filter() {
        assert_eq!(
            err(json!([1])),
            "filter: expected a filter object (a comparison with \"field\", \"op\" and \"value\", or one of \"and\", \"or\", \"not\"), found an array"
        );
        assert_eq!(
            Filter::parse(&json!({})),
            Err(FilterError::NotAFilter {
                at: "filter".into(),
                found: "an empty object"
            })
        );
        assert_eq!(
            Filter::parse(&json!({"and": [leaf(), "x"]})),
            Err(FilterError::NotAFilter {
                at: "filter.and[1]".into(),
                found: "a string"
            })
        );
        assert_eq!(
            Filter::parse(&json!({"not": null})),
            Err(FilterError::NotAFilter {
                at: "filter.not".into(),
                found: "null"
            })
        );
    }

    #[test]
    fn error_unknown_operator() {
        let v = json!({"and": [leaf(), {"field": "a", "op": "like", "value": "x%"}]});
        assert_eq!(
            err(v),
            "filter.and[1].op: unknown operator \"like\"; expected one of eq, neq, lt, lte, gt, gte, in, nin, prefix, suffix, is_null"
        );
    }

    #[test]
    fn error_unknown_keys() {
        assert_eq!(
            err(json!({"field": "a", "op": "eq", "value": 1, "case": "insensitive"})),
            "filter: unknown key \"case\"; expected \"field\", \"op\" and \"value\", or one of \"and\", \"or\", \"not\""
        );
        assert_eq!(
            err(json!({"not": {"and": [leaf()], "comment": "x"}})),
            "filter.not: unknown key \"comment\"; an \"and\" object has no other key"
        );
        assert_eq!(
            err(json!({"or": [leaf()], "x": 1})),
            "filter: unknown key \"x\"; an \"or\" object has no other key"
        );
        assert_eq!(
            err(json!({"not": leaf(), "x": 1})),
            "filter: unknown key \"x\"; a \"not\" object has no other key"
        );
    }

    #[test]
    fn error_conflicting_keys() {
        assert_eq!(
            err(json!({"and": [leaf()], "or": [leaf()]})),
            "filter: \"and\" cannot be combined with \"or\" in one object; nest them inside \"and\" or \"or\""
        );
        assert_eq!(
            Filter::parse(&json!({"field": "a", "op": "eq", "value": 1, "not": leaf()})),
            Err(FilterError::ConflictingKeys {
                at: "filter".into(),
                first: "not",
                second: "field"
            })
        );
    }

    #[test]
    fn error_missing_keys() {
        assert_eq!(
            err(json!({"op": "eq", "value": 1})),
            "filter: missing key \"field\"; a comparison needs \"field\", \"op\" and \"value\""
        );
        assert_eq!(
            Filter::parse(&json!({"or": [{"field": "a", "value": 1}]})),
            Err(FilterError::MissingKey {
                at: "filter.or[0]".into(),
                key: "op"
            })
        );
        assert_eq!(
            Filter::parse(&json!({"field": "a", "op": "is_null"})),
            Err(FilterError::MissingKey {
                at: "filter".into(),
                key: "value"
            })
        );
    }

    #[test]
    fn error_wrong_types() {
        let cases = [
            (
                json!({"field": 1, "op": "eq", "value": 1}),
                "filter.field: expected a path string such as \"new.status\", found a number",
            ),
            (
                json!({"field": "a", "op": ["eq"], "value": 1}),
                "filter.op: expected an operator name such as \"eq\", found an array",
            ),
            (
                json!({"field": "a", "op": "eq", "value": [1]}),
                "filter.value: expected a scalar (string, number, boolean or null), found an array",
            ),
            (
                json!({"field": "a", "op": "gt", "value": {"x": 1}}),
                "filter.value: expected a scalar (string, number, boolean or null), found an object",
            ),
            (
                json!({"field": "a", "op": "in", "value": 1}),
                "filter.value: expected an array of 1 to 100 scalars, found a number",
            ),
            (
                json!({"field": "a", "op": "nin", "value": [1, 2, [3]]}),
                "filter.value[2]: expected a scalar (string, number, boolean or null), found an array",
            ),
            (
                json!({"field": "a", "op": "prefix", "value": 1}),
                "filter.value: expected a string, found a number",
            ),
            (
                json!({"field": "a", "op": "suffix", "value": null}),
                "filter.value: expected a string, found null",
            ),
            (
                json!({"field": "a", "op": "is_null", "value": "yes"}),
                "filter.value: expected true (null or missing) or false (present and not null), found a string",
            ),
            (
                json!({"and": {"field": "a"}}),
                "filter.and: expected an array of 1 to 32 filters, found an object",
            ),
            (
                json!({"not": [leaf()]}),
                "filter.not: expected a filter object (a comparison with \"field\", \"op\" and \"value\", or one of \"and\", \"or\", \"not\"), found an array",
            ),
        ];
        for (v, msg) in cases {
            assert_eq!(err(v.clone()), msg, "{v}");
        }
    }

    #[test]
    fn error_empty_lists() {
        assert_eq!(
            err(json!({"and": []})),
            "filter.and: \"and\" needs 1 to 32 filters, found 0"
        );
        assert_eq!(
            err(json!({"not": {"or": []}})),
            "filter.not.or: \"or\" needs 1 to 32 filters, found 0"
        );
        assert_eq!(
            err(json!({"field": "a", "op": "in", "value": []})),
            "filter.value: \"in\" needs 1 to 100 values, found 0"
        );
    }

    #[test]
    fn error_invalid_paths() {
        let e = |path: &str| err(json!({"field": path, "op": "eq", "value": 1}));
        assert_eq!(
            e(""),
            "filter.field: path is empty; expected \"new.<column>\" or \"old.<column>\", e.g. \"new.status\""
        );
        assert_eq!(
            e("old"),
            "filter.field: path \"old\" names no column; expected \"old.<column>\", e.g. \"old.status\""
        );
        assert_eq!(
            e("new"),
            "filter.field: path \"new\" names no column; expected \"new.<column>\", e.g. \"new.status\""
        );
        for p in ["new..a", ".a", "a.", "new.", "old.a..b"] {
            assert_eq!(
                e(p),
                format!("filter.field: path {p:?} has an empty step; steps are separated by a single \".\" and the path cannot start or end with \".\""),
            );
        }
        let long = "x".repeat(65);
        assert_eq!(
            e(&format!("new.{long}")),
            format!("filter.field: path step \"{long}\" is 65 bytes long; the limit is 64 bytes")
        );
        assert!(Filter::parse(&json!({"field": "x".repeat(64), "op": "eq", "value": 1})).is_ok());
        assert_eq!(
            e("new.a.b.c.d.e.f.g.h.i"),
            "filter.field: path \"new.a.b.c.d.e.f.g.h.i\" has 9 steps after new/old; the limit is 8"
        );
        assert_eq!(
            e("a.b.c.d.e.f.g.h.i"),
            "filter.field: path \"a.b.c.d.e.f.g.h.i\" has 9 steps after new/old; the limit is 8"
        );
        assert!(
            Filter::parse(&json!({"field": "old.a.b.c.d.e.f.g.h", "op": "eq", "value": 1})).is_ok()
        );
        assert!(
            Filter::parse(&json!({"field": "a.b.c.d.e.f.g.h", "op": "eq", "value": 1})).is_ok()
        );
        // Inside a combinator.
        assert_eq!(
            Filter::parse(&json!({"or": [leaf(), {"not": {"field": "", "op": "eq", "value": 1}}]})),
            Err(FilterError::InvalidPath {
                at: "filter.or[1].not.field".into(),
                problem: PathProblem::Empty
            })
        );
    }

    // --- decimals --------------------------------------------------------

    #[test]
    fn decimal_parsing() {
        for s in [
            "0", "-0", "+1", "1.", ".5", "-.5", "1e5", "1E+5", "1e-5", "007", "0.000",
        ] {
            assert!(Decimal::parse(s).is_some(), "{s}");
        }
        for s in [
            "",
            "-",
            "+",
            ".",
            "e5",
            "1e",
            "1e+",
            "1.2.3",
            " 1",
            "1 ",
            "0x10",
            "NaN",
            "Infinity",
            "-Infinity",
            "1_000",
            "١",
            "1e1000001",
            "--1",
        ] {
            assert!(Decimal::parse(s).is_none(), "{s}");
        }
        assert!(Decimal::parse("1e1000000").is_some());
    }

    #[test]
    fn decimal_comparison() {
        use Ordering::*;
        let cases = [
            ("150.00", "150", Equal),
            ("1e2", "100", Equal),
            ("0.1e3", "100.0", Equal),
            ("-0", "0.000", Equal),
            ("0", "-0e5", Equal),
            ("0.001", "1e-3", Equal),
            ("0.0010", "0.001", Equal),
            ("-1", "0", Less),
            ("-1", "-2", Greater),
            ("-1.5", "-1.25", Less),
            ("0.5", "0.25", Greater),
            ("99", "100", Less),
            ("100", "99.9999999999999999999", Greater),
            ("1e1000000", "9e999999", Greater),
            ("1e-1000000", "0", Greater),
            ("-1e-1000000", "0", Less),
            (
                "12345678901234567890.000000000000000001",
                "12345678901234567890",
                Greater,
            ),
            ("9007199254740993", "9007199254740992", Greater),
            ("1.10", "1.1", Equal),
            ("1.101", "1.1", Greater),
        ];
        for (a, b, want) in cases {
            assert_eq!(dec_cmp(a, b), Some(want), "{a} vs {b}");
            assert_eq!(dec_cmp(b, a), Some(want.reverse()), "{b} vs {a}");
        }
    }

    // --- properties ------------------------------------------------------

    fn scalar_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-3i64..4).prop_map(|n| json!(n)),
            prop::sample::select(vec!["1", "1.0", "-2", "a", "b", "ab", "", "2e0", "0.5"])
                .prop_map(|s| json!(s)),
            Just(json!(0.5)),
        ]
    }

    fn leaf_filter() -> impl Strategy<Value = Value> {
        let field = prop::sample::select(vec!["a", "new.b", "old.a", "m.x", "new.m", "c"]);
        let op = prop::sample::select(vec![
            "eq", "neq", "lt", "lte", "gt", "gte", "in", "nin", "prefix", "suffix", "is_null",
        ]);
        (
            field,
            op,
            scalar_value(),
            prop::collection::vec(scalar_value(), 1..4),
        )
            .prop_map(|(field, op, v, list)| {
                let value = match op {
                    "in" | "nin" => Value::Array(list),
                    "prefix" | "suffix" => json!(v.as_str().unwrap_or("a")),
                    "is_null" => json!(v.is_null()),
                    _ => v,
                };
                json!({"field": field, "op": op, "value": value})
            })
    }

    /// Valid filters of depth ≤ 4 and at most 40 nodes.
    fn valid_filter() -> impl Strategy<Value = Value> {
        leaf_filter().prop_recursive(3, 40, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 1..=3).prop_map(|v| json!({ "and": v })),
                prop::collection::vec(inner.clone(), 1..=3).prop_map(|v| json!({ "or": v })),
                inner.prop_map(|f| json!({ "not": f })),
            ]
        })
    }

    fn row() -> impl Strategy<Value = Value> {
        let maybe = || prop::option::of(scalar_value());
        (maybe(), maybe(), maybe(), maybe()).prop_map(|(a, b, x, c)| {
            let mut row = Map::new();
            for (k, v) in [("a", a), ("b", b), ("c", c)] {
                if let Some(v) = v {
                    row.insert(k.into(), v);
                }
            }
            if let Some(x) = x {
                row.insert("m".into(), json!({ "x": x }));
            }
            Value::Object(row)
        })
    }

    fn event_data() -> impl Strategy<Value = Value> {
        (row(), prop::option::of(row())).prop_map(|(new, old)| match old {
            Some(old) => json!({"op": "update", "new": new, "old": old}),
            None => json!({"op": "insert", "new": new}),
        })
    }

    fn any_json() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            prop::sample::select(vec![
                "field", "op", "value", "and", "or", "not", "x", "eq", "in",
            ])
            .prop_map(String::from),
            ".{0,6}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            prop::sample::select(vec![
                "eq", "neq", "lt", "gte", "in", "nin", "prefix", "is_null", "new.a", "old", "a..b",
                "1e5", "-0.5", "",
            ])
            .prop_map(|s| json!(s)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(10, 200, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..5)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn parse_str_never_panics_on_arbitrary_strings(s in ".{0,200}") {
            let _ = Filter::parse_str(&s);
        }

        #[test]
        fn parse_str_never_panics_on_json_like_strings(
            s in r#"[{}\[\]":,. a-z0-9eE+-]{0,120}"#,
        ) {
            if let Ok(f) = Filter::parse_str(&s) {
                let _ = f.matches(&json!({"new": {"a": 1}}));
            }
        }

        #[test]
        fn parse_never_panics_on_arbitrary_json(v in any_json(), d in any_json()) {
            if let Ok(f) = Filter::parse(&v) {
                let _ = f.matches(&d);
            }
            let _ = Filter::parse_str(&v.to_string());
        }

        #[test]
        fn valid_filters_parse_and_round_trip_through_text(f in valid_filter(), d in event_data()) {
            let parsed = Filter::parse(&f).expect("generated filter is valid");
            let again = Filter::parse_str(&f.to_string()).expect("text form is valid");
            prop_assert_eq!(parsed.matches(&d), again.matches(&d));
        }

        #[test]
        fn not_negates(f in valid_filter(), d in event_data()) {
            let plain = Filter::parse(&f).expect("generated filter is valid");
            let negated = Filter::parse(&json!({ "not": f })).expect("still within limits");
            prop_assert_eq!(negated.matches(&d), !plain.matches(&d));
        }

        #[test]
        fn neq_is_not_eq_and_nin_is_not_in(
            v in scalar_value(), list in prop::collection::vec(scalar_value(), 1..4), d in event_data(),
        ) {
            for field in ["a", "m.x", "old.b"] {
                let eq = cmp(field, "eq", v.clone()).matches(&d);
                prop_assert_eq!(cmp(field, "neq", v.clone()).matches(&d), !eq);
                let isin = cmp(field, "in", Value::Array(list.clone())).matches(&d);
                prop_assert_eq!(cmp(field, "nin", Value::Array(list.clone())).matches(&d), !isin);
            }
        }

        #[test]
        fn timestamps_compare_chronologically(
            a in 0u64..86_400 * 1_000_000, b in 0u64..86_400 * 1_000_000, zone in any::<bool>(),
        ) {
            // As Sluice writes them: trailing zeros of the fraction trimmed.
            let text = |micros: u64| {
                let secs = micros / 1_000_000;
                let mut frac = format!("{:06}", micros % 1_000_000);
                while frac.ends_with('0') {
                    frac.pop();
                }
                let dot = if frac.is_empty() { "" } else { "." };
                let z = if zone { "Z" } else { "" };
                format!(
                    "2026-11-22T{:02}:{:02}:{:02}{dot}{frac}{z}",
                    secs / 3600, secs / 60 % 60, secs % 60,
                )
            };
            let (ta, tb) = (text(a), text(b));
            prop_assert_eq!(compare(&json!(ta), &json!(tb)), Some(a.cmp(&b)), "{} vs {}", ta, tb);
        }

        #[test]
        fn decimal_agrees_with_i128(a in any::<i64>(), b in any::<i64>(), scale in 0u32..20, zeros in 0usize..4) {
            // Wide integers, also written with a fraction of zeros or an
            // exponent.
            let (x, y) = (i128::from(a) * 10i128.pow(scale), i128::from(b));
            let want = x.cmp(&y);
            let forms = |n: i128| vec![
                n.to_string(),
                format!("{n}.{}", "0".repeat(zeros)),
                format!("{n}e0"),
                format!("{n}0e-1"),
            ];
            for fx in forms(x) {
                for fy in forms(y) {
                    prop_assert_eq!(dec_cmp(&fx, &fy), Some(want), "{} vs {}", fx, fy);
                }
            }
            let sx = format!("{a}e{scale}");
            prop_assert_eq!(dec_cmp(&sx, &y.to_string()), Some(want), "{}", sx);
        }

        #[test]
        fn decimal_agrees_with_f64_on_small_decimals(
            ma in -999_999i64..1_000_000, sa in 0usize..7,
            mb in -999_999i64..1_000_000, sb in 0usize..7,
        ) {
            let text = |m: i64, s: usize| {
                let digits = format!("{:0>width$}", m.unsigned_abs(), width = s + 1);
                let (int, frac) = digits.split_at(digits.len() - s);
                let sign = if m < 0 { "-" } else { "" };
                if s == 0 { format!("{sign}{int}") } else { format!("{sign}{int}.{frac}") }
            };
            let (ta, tb) = (text(ma, sa), text(mb, sb));
            let fa: f64 = ta.parse().expect("decimal text");
            let fb: f64 = tb.parse().expect("decimal text");
            prop_assert_eq!(dec_cmp(&ta, &tb), fa.partial_cmp(&fb), "{} vs {}", ta, tb);
            let na: Value = serde_json::from_str(&ta).expect("JSON number");
            prop_assert_eq!(compare(&na, &json!(tb)), fa.partial_cmp(&fb));
        }
    }
}
