//! A group's settings as clients give them: validated into a
//! [`GroupSpec`] with errors that name the member at fault.

use serde_json::Value;

use crate::subscription::{Filter, Selector, TopicGlob, MAX_TOPICS};

/// Longest group name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Bounds of `ack_wait_ms`: 100 ms to 12 hours.
pub const ACK_WAIT_MS: (i32, i32) = (100, 12 * 3600 * 1000);
/// Bounds of `max_deliveries`.
pub const MAX_DELIVERIES: (i32, i32) = (1, 1000);
/// Bounds of `max_in_flight`.
pub const MAX_IN_FLIGHT: (i32, i32) = (1, 100_000);

/// Why a request was refused: the member and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct SpecError {
    pub param: String,
    pub message: String,
}

impl SpecError {
    pub fn new(param: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError {
            param: param.into(),
            message: message.into(),
        }
    }
}

/// Delivery order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderBy {
    /// As fast as workers take them.
    None,
    /// Per `subject`: one in flight at a time, in seq order.
    Subject,
}

impl OrderBy {
    pub fn parse(s: &str) -> Option<OrderBy> {
        match s {
            "none" => Some(OrderBy::None),
            "subject" => Some(OrderBy::Subject),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OrderBy::None => "none",
            OrderBy::Subject => "subject",
        }
    }
}

/// Where a new group starts reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The oldest event retention kept.
    Beginning,
    /// The next event appended.
    Now,
    /// This seq (inclusive).
    Seq(i64),
    /// The first event of this backfill (its snapshot, then what followed).
    Backfill(i64),
}

impl Start {
    /// `"beginning"`, `"now"`, `{"seq": N}` or `{"backfill": "<id>"}`.
    pub fn parse(v: Option<&Value>) -> Result<Start, SpecError> {
        let bad = || {
            SpecError::new(
                "start",
                "expected \"beginning\", \"now\", {\"seq\": N} or {\"backfill\": <id>}",
            )
        };
        match v {
            None | Some(Value::Null) => Ok(Start::Now),
            Some(Value::String(s)) if s == "beginning" => Ok(Start::Beginning),
            Some(Value::String(s)) if s == "now" => Ok(Start::Now),
            Some(Value::Object(o)) if o.len() == 1 => {
                if let Some(seq) = o.get("seq") {
                    return match seq.as_i64() {
                        Some(n) if n >= 1 => Ok(Start::Seq(n)),
                        _ => Err(SpecError::new(
                            "start.seq",
                            "expected a seq (a whole number >= 1)",
                        )),
                    };
                }
                match o.get("backfill") {
                    Some(v) => match v.as_i64() {
                        Some(id) if id >= 1 => Ok(Start::Backfill(id)),
                        _ => Err(SpecError::new(
                            "start.backfill",
                            "expected a backfill id (the id POST /v1/backfills answered)",
                        )),
                    },
                    None => Err(bad()),
                }
            }
            Some(_) => Err(bad()),
        }
    }
}

/// A group's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSpec {
    pub name: String,
    pub topics: Vec<String>,
    pub filter: Option<Value>,
    /// The access-policy role it reads as (None: service).
    pub role: Option<String>,
    pub claims: Value,
    pub ack_wait_ms: i32,
    pub max_deliveries: i32,
    pub max_in_flight: i32,
    pub ordering: OrderBy,
}

impl GroupSpec {
    /// The selector its topics and filter describe.
    pub fn selector(&self) -> Option<Selector> {
        Selector::from_stored(&self.topics, self.filter.as_ref())
    }

    /// The values of `$1` (tenant) to `$10` of the statements that store a
    /// group: name, topics, filter, role, claims, ack_wait_ms,
    /// max_deliveries, max_in_flight, ordering.
    pub fn params<'a>(
        &'a self,
        tenant: &'a &'a str,
        ordering: &'a &'a str,
    ) -> [&'a (dyn tokio_postgres::types::ToSql + Sync); 10] {
        [
            tenant,
            &self.name,
            &self.topics,
            &self.filter,
            &self.role,
            &self.claims,
            &self.ack_wait_ms,
            &self.max_deliveries,
            &self.max_in_flight,
            ordering,
        ]
    }

    /// Checks every member; the name is `[A-Za-z0-9_.-]{1,64}`.
    pub fn validate(&self) -> Result<(), SpecError> {
        check_name(&self.name)?;
        if self.topics.len() > MAX_TOPICS {
            return Err(SpecError::new(
                "topics",
                format!(
                    "at most {MAX_TOPICS} topic globs, got {}",
                    self.topics.len()
                ),
            ));
        }
        for (i, t) in self.topics.iter().enumerate() {
            TopicGlob::parse(t)
                .map_err(|e| SpecError::new(format!("topics[{i}]"), e.to_string()))?;
        }
        if let Some(f) = &self.filter {
            Filter::parse(f).map_err(|e| SpecError::new("filter", e.to_string()))?;
        }
        for (param, v, (lo, hi)) in [
            ("ack_wait_ms", self.ack_wait_ms, ACK_WAIT_MS),
            ("max_deliveries", self.max_deliveries, MAX_DELIVERIES),
            ("max_in_flight", self.max_in_flight, MAX_IN_FLIGHT),
        ] {
            if v < lo || v > hi {
                return Err(SpecError::new(
                    param,
                    format!("expected {lo} to {hi}, got {v}"),
                ));
            }
        }
        if !self.claims.is_object() {
            return Err(SpecError::new("claims", "expected an object of claims"));
        }
        Ok(())
    }
}

pub fn check_name(name: &str) -> Result<(), SpecError> {
    let shaped = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if shaped {
        Ok(())
    } else {
        Err(SpecError::new(
            "name",
            format!("{name:?}: expected 1 to {MAX_NAME_BYTES} of A-Z a-z 0-9 _ . -"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> GroupSpec {
        GroupSpec {
            name: "billing".into(),
            topics: vec!["tables/public.orders/*".into()],
            filter: None,
            role: None,
            claims: json!({}),
            ack_wait_ms: 30_000,
            max_deliveries: 5,
            max_in_flight: 1000,
            ordering: OrderBy::Subject,
        }
    }

    #[test]
    fn specs_are_checked_member_by_member() {
        assert!(spec().validate().is_ok());
        let cases: Vec<(GroupSpec, &str)> = vec![
            (
                GroupSpec {
                    name: "".into(),
                    ..spec()
                },
                "name",
            ),
            (
                GroupSpec {
                    name: "a b".into(),
                    ..spec()
                },
                "name",
            ),
            (
                GroupSpec {
                    name: "x".repeat(65),
                    ..spec()
                },
                "name",
            ),
            (
                GroupSpec {
                    topics: vec!["a/**/b/c*".into()],
                    ..spec()
                },
                "topics[0]",
            ),
            (
                GroupSpec {
                    filter: Some(json!({"field": "a", "op": "like", "value": 1})),
                    ..spec()
                },
                "filter",
            ),
            (
                GroupSpec {
                    ack_wait_ms: 10,
                    ..spec()
                },
                "ack_wait_ms",
            ),
            (
                GroupSpec {
                    max_deliveries: 0,
                    ..spec()
                },
                "max_deliveries",
            ),
            (
                GroupSpec {
                    max_in_flight: 0,
                    ..spec()
                },
                "max_in_flight",
            ),
            (
                GroupSpec {
                    claims: json!([1]),
                    ..spec()
                },
                "claims",
            ),
        ];
        for (s, param) in cases {
            assert_eq!(s.validate().expect_err(param).param, param);
        }
    }

    #[test]
    fn starts_parse() {
        assert_eq!(Start::parse(None), Ok(Start::Now));
        assert_eq!(
            Start::parse(Some(&json!("beginning"))),
            Ok(Start::Beginning)
        );
        assert_eq!(Start::parse(Some(&json!({"seq": 5}))), Ok(Start::Seq(5)));
        assert_eq!(
            Start::parse(Some(&json!({"backfill": 7}))),
            Ok(Start::Backfill(7))
        );
        assert_eq!(
            Start::parse(Some(&json!({"backfill": "x"})))
                .unwrap_err()
                .param,
            "start.backfill"
        );
        assert_eq!(
            Start::parse(Some(&json!({"seq": 0}))).unwrap_err().param,
            "start.seq"
        );
        assert_eq!(
            Start::parse(Some(&json!("later"))).unwrap_err().param,
            "start"
        );
        assert_eq!(
            Start::parse(Some(&json!({"seq": 1, "x": 2})))
                .unwrap_err()
                .param,
            "start"
        );
    }
}
