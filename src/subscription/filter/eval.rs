//! Evaluation of a [`Filter`] over an event's `data` (the semantics in the
//! module doc): a missing field reads as `null`, numbers and numeric
//! strings compare as exact decimals, timestamps chronologically.

use std::cmp::Ordering;

use serde_json::Value;

use super::ast::{Comparison, FieldPath, Filter, Image, Node, OrderOp, Test};
use super::decimal::Decimal;

impl Filter {
    /// Whether an event's `data` passes the filter.
    pub fn matches(&self, data: &Value) -> bool {
        let images = Images {
            new: data.get("new"),
            old: data.get("old"),
        };
        self.root.matches(&images)
    }

    /// Whether one row passes the filter, `new.` and `old.` paths both
    /// reading it (a policy's predicate, checked against the row before
    /// and after a change). `None` (no row) reads every field as missing.
    pub fn matches_row(&self, row: Option<&Value>) -> bool {
        self.root.matches(&Images { new: row, old: row })
    }
}

/// The row images paths read.
struct Images<'a> {
    new: Option<&'a Value>,
    old: Option<&'a Value>,
}

static NULL: Value = Value::Null;

impl Node {
    fn matches(&self, data: &Images<'_>) -> bool {
        match self {
            Node::Compare(c) => c.matches(data),
            Node::And(children) => children.iter().all(|c| c.matches(data)),
            Node::Or(children) => children.iter().any(|c| c.matches(data)),
            Node::Not(inner) => !inner.matches(data),
            // Never evaluated unbound: `bind` replaces every claim, and a
            // policy is only applied bound. Denying is the safe answer.
            Node::Claim(_) => false,
        }
    }
}

impl Comparison {
    fn matches(&self, data: &Images<'_>) -> bool {
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
    fn resolve<'a>(&self, data: &Images<'a>) -> Option<&'a Value> {
        let mut cur = match self.image {
            Image::New => data.new?,
            Image::Old => data.old?,
        };
        for step in &self.steps {
            cur = cur.as_object()?.get(step)?;
        }
        Some(cur)
    }
}

/// The decimal of a number or numeric string.
pub(super) fn numeric(v: &Value) -> Option<Decimal<'_>> {
    match v {
        Value::Number(n) => Decimal::parse(n.as_str()),
        Value::String(s) => Decimal::parse(s),
        _ => None,
    }
}

/// `eq`: exact decimal equality when both sides are numeric, else JSON
/// equality.
pub(super) fn json_eq(a: &Value, b: &Value) -> bool {
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
pub(super) fn compare_strings(a: &str, b: &str) -> Ordering {
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

#[cfg(test)]
#[path = "eval_tests.rs"]
mod tests;
