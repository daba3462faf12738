//! JSON → [`Filter`]: validation against the grammar and limits in the
//! module doc, with a [`FilterError`] that names the place in the filter.

use std::fmt;
use std::io;

use serde_json::{Map, Value};

use crate::event::json::kind_of;

use super::ast::{
    ClaimComparison, ClaimOp, Comparison, FieldPath, Filter, Image, Node, OrderOp, Test,
};
use super::{
    MAX_CHILDREN, MAX_DEPTH, MAX_FILTER_BYTES, MAX_IN_VALUES, MAX_NODES, MAX_PATH_STEPS,
    MAX_STEP_BYTES,
};

const OPERATORS: &str = "eq, neq, lt, lte, gt, gte, in, nin, prefix, suffix, is_null";
const SCALAR: &str = "a scalar (string, number, boolean or null)";

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
    #[error("{at}: \"claim\" compares with the subscriber's credential and only an access policy's `rows` may use it; a subscription's filter gives a \"value\"")]
    ClaimOutsidePolicy { at: String },
    #[error("{at}: give either \"value\" or \"claim\", not both")]
    ValueAndClaim { at: String },
    #[error("{at}: {problem}")]
    InvalidClaim { at: String, problem: String },
    #[error("{at}: operator \"is_null\" takes a value (true or false), not a claim")]
    IsNullClaim { at: String },
    #[error("{at}: a policy's row predicate is about the row as it is (after an insert or update, before a delete); write \"new.<column>\" or \"<column>\", not {path:?}")]
    OldInPolicy { at: String, path: String },
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
        Filter::parse_with(v, false)
    }

    /// Validates an access policy's row predicate: a filter whose
    /// comparisons may give `"claim": "<path>"` (a claim of the
    /// subscriber's credential) in place of `"value"`, and whose paths
    /// read the row (`new.`; `old.` is refused). [`Filter::bind`] gives it
    /// a credential's claims.
    pub fn parse_policy(v: &Value) -> Result<Filter, FilterError> {
        Filter::parse_with(v, true)
    }

    fn parse_with(v: &Value, policy: bool) -> Result<Filter, FilterError> {
        let mut limit = LimitWriter {
            left: MAX_FILTER_BYTES,
        };
        if serde_json::to_writer(&mut limit, v).is_err() {
            return Err(FilterError::TooLarge);
        }
        let mut cx = Cx { nodes: 0, policy };
        let root = parse_node(v, &Path::root(), 1, &mut cx)?;
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

/// What parsing carries along: the node count and whether this is a
/// policy (claims allowed, `old.` refused).
struct Cx {
    nodes: usize,
    policy: bool,
}

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

const BOOLEAN_KEYS: [&str; 3] = ["and", "or", "not"];
const COMPARISON_KEYS: [&str; 4] = ["field", "op", "value", "claim"];

fn parse_node(v: &Value, at: &Path, depth: usize, cx: &mut Cx) -> Result<Node, FilterError> {
    if depth > MAX_DEPTH {
        return Err(FilterError::TooDeep { at: at.0.clone() });
    }
    cx.nodes += 1;
    if cx.nodes > MAX_NODES {
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
        Some(&op) => parse_boolean(obj, op, at, depth, cx),
        None => parse_comparison(obj, at, cx.policy),
    }
}

fn parse_boolean(
    obj: &Map<String, Value>,
    op: &'static str,
    at: &Path,
    depth: usize,
    cx: &mut Cx,
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
        let inner = parse_node(arg, &child, depth + 1, cx)?;
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
        children.push(parse_node(item, &child, depth + 1, cx)?);
    }
    Ok(if op == "and" {
        Node::And(children)
    } else {
        Node::Or(children)
    })
}

fn parse_comparison(
    obj: &Map<String, Value>,
    at: &Path,
    policy: bool,
) -> Result<Node, FilterError> {
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
    if let Some(claim) = obj.get("claim") {
        if !policy {
            return Err(FilterError::ClaimOutsidePolicy {
                at: at.key("claim"),
            });
        }
        if obj.contains_key("value") {
            return Err(FilterError::ValueAndClaim { at: at.0.clone() });
        }
        return parse_claim_comparison(get("field")?, get("op")?, claim, at);
    }
    let (field, op, value) = (get("field")?, get("op")?, get("value")?);

    let path = parse_field(field, at, policy)?;
    let op = op_name(op, at)?;
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

/// A comparison's `field`: a path; in a policy, not of the old row.
fn parse_field(field: &Value, at: &Path, policy: bool) -> Result<FieldPath, FilterError> {
    let Value::String(text) = field else {
        return Err(FilterError::WrongType {
            at: at.key("field"),
            expected: "a path string such as \"new.status\"",
            found: kind_of(field),
        });
    };
    let path = parse_path(text).map_err(|problem| FilterError::InvalidPath {
        at: at.key("field"),
        problem,
    })?;
    if policy && path.image == Image::Old {
        return Err(FilterError::OldInPolicy {
            at: at.key("field"),
            path: text.clone(),
        });
    }
    Ok(path)
}

/// A comparison's `op`, as text (checked against the operators by the
/// caller).
fn op_name<'a>(op: &'a Value, at: &Path) -> Result<&'a String, FilterError> {
    match op {
        Value::String(op) => Ok(op),
        other => Err(FilterError::WrongType {
            at: at.key("op"),
            expected: "an operator name such as \"eq\"",
            found: kind_of(other),
        }),
    }
}

/// `{"field": …, "op": …, "claim": "<path>"}` of a policy.
fn parse_claim_comparison(
    field: &Value,
    op: &Value,
    claim: &Value,
    at: &Path,
) -> Result<Node, FilterError> {
    let path = parse_field(field, at, true)?;
    let op_text = op_name(op, at)?;
    let op = match op_text.as_str() {
        "eq" => ClaimOp::Eq,
        "neq" => ClaimOp::Neq,
        "lt" => ClaimOp::Order(OrderOp::Lt),
        "lte" => ClaimOp::Order(OrderOp::Lte),
        "gt" => ClaimOp::Order(OrderOp::Gt),
        "gte" => ClaimOp::Order(OrderOp::Gte),
        "in" => ClaimOp::In,
        "nin" => ClaimOp::Nin,
        "prefix" => ClaimOp::Prefix,
        "suffix" => ClaimOp::Suffix,
        "is_null" => return Err(FilterError::IsNullClaim { at: at.key("op") }),
        _ => {
            return Err(FilterError::UnknownOperator {
                at: at.key("op"),
                op: op_text.clone(),
            })
        }
    };
    let Value::String(claim_text) = claim else {
        return Err(FilterError::WrongType {
            at: at.key("claim"),
            expected: "a claim path string such as \"sub\" or \"app_metadata.teams\"",
            found: kind_of(claim),
        });
    };
    let claim = parse_claim_path(claim_text).map_err(|problem| FilterError::InvalidClaim {
        at: at.key("claim"),
        problem,
    })?;
    Ok(Node::Claim(ClaimComparison { path, op, claim }))
}

/// A claim path: 1 to 8 `.`-separated non-empty steps of at most 64 bytes.
fn parse_claim_path(s: &str) -> Result<Vec<String>, String> {
    if s.is_empty() {
        return Err("claim path is empty; expected a claim name such as \"sub\"".into());
    }
    let steps: Vec<&str> = s.split('.').collect();
    if steps.len() > MAX_PATH_STEPS {
        return Err(format!(
            "claim path {s:?} has {} steps; the limit is {MAX_PATH_STEPS}",
            steps.len()
        ));
    }
    for step in &steps {
        if step.is_empty() {
            return Err(format!(
                "claim path {s:?} has an empty step; steps are separated by a single \".\""
            ));
        }
        if step.len() > MAX_STEP_BYTES {
            return Err(format!(
                "claim path step {step:?} is {} bytes long; the limit is {MAX_STEP_BYTES} bytes",
                step.len()
            ));
        }
    }
    Ok(steps.into_iter().map(str::to_owned).collect())
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

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
