//! Query-string parsing shared by the endpoints: repeatable parameters,
//! unknown names refused, size bounded, and each value checked with an error
//! that names the parameter.

use std::collections::BTreeMap;

use super::ApiError;
use crate::subscription::{collection_glob, table_glob, Filter, Selector, TopicGlob, MAX_TOPICS};

/// A parsed query string: name → values in order.
#[derive(Debug, Default)]
pub struct Params(BTreeMap<String, Vec<String>>);

impl Params {
    /// Parses `raw`, refusing names not in `allowed` and strings longer than
    /// `max_bytes`.
    pub fn parse(
        raw: Option<&str>,
        allowed: &[&str],
        max_bytes: usize,
    ) -> Result<Params, ApiError> {
        let raw = raw.unwrap_or("");
        if raw.len() > max_bytes {
            return Err(ApiError::bad_param(
                "query",
                format!(
                    "the query string is {} bytes; at most {max_bytes} are accepted",
                    raw.len()
                ),
            ));
        }
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
            if !allowed.contains(&k.as_ref()) {
                return Err(ApiError::bad_param(
                    &k,
                    format!("unknown parameter; accepted: {}", allowed.join(", ")),
                ));
            }
            map.entry(k.into_owned()).or_default().push(v.into_owned());
        }
        Ok(Params(map))
    }

    pub fn all(&self, name: &str) -> &[String] {
        self.0.get(name).map_or(&[], |v| v.as_slice())
    }

    /// The one value of `name`; given twice is an error.
    pub fn one(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.all(name) {
            [] => Ok(None),
            [v] => Ok(Some(v.as_str())),
            _ => Err(ApiError::bad_param(name, "given more than once")),
        }
    }

    /// A seq position: a whole number ≥ 1.
    pub fn seq(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.one(name)? {
            None => Ok(None),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if n >= 1 => Ok(Some(n)),
                _ => Err(ApiError::bad_param(
                    name,
                    format!("expected a seq (a whole number >= 1), got {v:?}"),
                )),
            },
        }
    }

    /// A start position (`from`): a whole number >= 0, 0 and 1 both the
    /// start of the log (the rule of [`crate::log::position`]).
    pub fn from(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.one(name)?
            .map(|v| {
                crate::log::parse_from(v).map_err(|e| ApiError::bad_param(name, e.to_string()))
            })
            .transpose()
    }

    pub fn bool(&self, name: &str) -> Result<bool, ApiError> {
        match self.one(name)? {
            None => Ok(false),
            Some("true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(v) => Err(ApiError::bad_param(
                name,
                format!("expected true or false, got {v:?}"),
            )),
        }
    }

    /// Values of a list parameter, given repeated or comma-separated.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    pub fn time(&self, name: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
        match self.one(name)? {
            None => Ok(None),
            Some(v) => chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| Some(t.with_timezone(&chrono::Utc)))
                .map_err(|_| {
                    ApiError::bad_param(
                        name,
                        format!("expected an RFC 3339 time like 2026-11-22T10:15:30Z, got {v:?}"),
                    )
                }),
        }
    }

    /// The selector from `topic` (repeatable), `table` (one of `captured`),
    /// `collection` and `filter`.
    pub fn selector(&self, captured: &[String]) -> Result<Selector, ApiError> {
        let mut topics = Vec::new();
        for t in self.list("topic") {
            topics.push(
                TopicGlob::parse(&t).map_err(|e| ApiError::bad_param("topic", e.to_string()))?,
            );
        }
        for t in self.list("table") {
            if !captured.contains(&t) {
                return Err(ApiError::bad_param(
                    "table",
                    format!(
                        "unknown table {t:?}; captured tables: {}",
                        captured.join(", ")
                    ),
                ));
            }
            topics.push(table_glob(&t).map_err(|e| ApiError::bad_param("table", e.to_string()))?);
        }
        for c in self.list("collection") {
            topics.push(
                collection_glob(&c)
                    .map_err(|e| ApiError::bad_param("collection", e.to_string()))?,
            );
        }
        if topics.len() > MAX_TOPICS {
            return Err(ApiError::bad_param(
                "topic",
                format!(
                    "{} topic globs given; at most {MAX_TOPICS} per subscription",
                    topics.len()
                ),
            ));
        }
        let filter = match self.one("filter")? {
            None => None,
            Some(f) => Some(
                Filter::parse_str(f).map_err(|e| ApiError::bad_param("filter", e.to_string()))?,
            ),
        };
        Ok(Selector { topics, filter })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_oversized_queries_are_refused_with_the_parameter_named() {
        let e = Params::parse(Some("from=1&tenant_id=x"), &["from"], 100).expect_err("unknown");
        assert_eq!(e.param.as_deref(), Some("tenant_id"));
        let e = Params::parse(Some(&"a".repeat(101)), &["a"], 100).expect_err("too long");
        assert_eq!(e.param.as_deref(), Some("query"));
    }

    #[test]
    fn seqs_lists_and_bools_are_checked() {
        let p = Params::parse(
            Some("from=-1&to=abc&topic=a,b&topic=c&follow=yes"),
            &["from", "to", "topic", "follow"],
            1000,
        )
        .expect("parses");
        assert_eq!(
            p.from("from").expect_err("negative").param.as_deref(),
            Some("from")
        );
        let zero = Params::parse(Some("from=0"), &["from"], 1000).expect("parses");
        assert_eq!(zero.from("from").expect("0 is the start"), Some(0));
        assert_eq!(p.seq("to").expect_err("nan").param.as_deref(), Some("to"));
        assert_eq!(p.list("topic"), vec!["a", "b", "c"]);
        assert!(p.bool("follow").is_err());
        let p = Params::parse(Some("from=1&from=2"), &["from"], 1000).expect("parses");
        assert!(p.one("from").is_err());
    }
}
