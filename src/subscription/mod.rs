//! Subscriptions: what one subscriber asked to receive — topic globs and a
//! filter over the event's `data` — and the decision whether one event
//! matches it. The tenant is not part of a subscription: it comes from the
//! subscriber's credential and the hub matches it before anything here.
//!
//! Everything here is pure (no I/O) and total: subscriptions come from
//! untrusted HTTP and WebSocket clients, so every input is validated into a
//! precise error (returned as an HTTP 400 body) and nothing panics.

pub mod filter;
pub mod topic;

pub use filter::Filter;
pub use topic::{GlobError, TopicGlob};

/// Longest table or collection name accepted by [`table_glob`] and
/// [`collection_glob`], in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// Most topic globs (topic, table and collection together) in one
/// subscription, over HTTP or WebSocket: each is checked against every
/// event of the tenant.
pub const MAX_TOPICS: usize = 32;

/// What one subscriber asked for (the tenant is NOT here: it comes from the
/// credential and is matched by the hub before this).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Selector {
    /// Empty = every topic; otherwise an event's topic must match one glob.
    pub topics: Vec<TopicGlob>,
    /// Applied to the event's `data` after the topic matched.
    pub filter: Option<Filter>,
}

impl Selector {
    /// The selector stored topic globs and a stored filter describe (a
    /// webhook endpoint's, a consumer group's: both were validated when
    /// stored); `None` if one no longer parses.
    pub fn from_stored(topics: &[String], filter: Option<&serde_json::Value>) -> Option<Selector> {
        let topics = topics
            .iter()
            .map(|t| TopicGlob::parse(t))
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        let filter = match filter {
            Some(f) => Some(Filter::parse(f).ok()?),
            None => None,
        };
        Some(Selector { topics, filter })
    }

    /// Whether the topic is one the subscriber asked for.
    pub fn matches_topic(&self, topic: &str) -> bool {
        self.topics.is_empty() || self.topics.iter().any(|g| g.matches(topic))
    }

    /// Whether the event goes to this subscriber. `data` is parsed only
    /// when a filter needs it: the closure is called at most once (never
    /// when the topic does not match or there is no filter). `None` from it
    /// (data that could not be parsed) never passes a filter.
    pub fn matches(&self, topic: &str, data: impl FnOnce() -> Option<serde_json::Value>) -> bool {
        if !self.matches_topic(topic) {
            return false;
        }
        match &self.filter {
            None => true,
            Some(f) => data().is_some_and(|d| f.matches(&d)),
        }
    }

    /// [`Selector::matches`] over borrowed data.
    pub fn matches_ref<'a>(
        &self,
        topic: &str,
        data: impl FnOnce() -> Option<&'a serde_json::Value>,
    ) -> bool {
        if !self.matches_topic(topic) {
            return false;
        }
        match &self.filter {
            None => true,
            Some(f) => data().is_some_and(|d| f.matches(d)),
        }
    }
}

/// Shortcut used by the `table=` query parameter: `public.orders` → glob
/// `tables/public.orders/*` (every operation on that table). Validates the
/// name: `schema.table`, 1–128 bytes, no `/`, no wildcards, no control
/// characters.
pub fn table_glob(name: &str) -> Result<TopicGlob, GlobError> {
    name_glob(
        name,
        "tables",
        "table",
        "\"schema.table\", e.g. \"public.orders\"",
    )
}

/// Shortcut used by the `collection=` query parameter: `shop.orders` → glob
/// `collections/shop.orders/*`. Same rules as [`table_glob`], for
/// `database.collection`.
pub fn collection_glob(name: &str) -> Result<TopicGlob, GlobError> {
    name_glob(
        name,
        "collections",
        "collection",
        "\"database.collection\", e.g. \"shop.orders\"",
    )
}

fn name_glob(
    name: &str,
    root: &str,
    kind: &'static str,
    expected: &'static str,
) -> Result<TopicGlob, GlobError> {
    if name.is_empty() {
        return Err(GlobError::NameEmpty { kind, expected });
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(GlobError::NameTooLong {
            kind,
            len: name.len(),
        });
    }
    if let Some((at, _)) = name.char_indices().find(|(_, c)| c.is_control()) {
        return Err(GlobError::NameControlCharacter { kind, at, expected });
    }
    if let Some(found) = name.chars().find(|c| matches!(c, '/' | '*')) {
        return Err(GlobError::NameInvalidCharacter {
            kind,
            name: name.to_owned(),
            found,
            expected,
        });
    }
    // A `.` with something on both sides (the part after the first dot may
    // itself contain dots: quoted identifiers can).
    let qualified = match name.split_once('.') {
        Some((schema, rest)) => !schema.is_empty() && !rest.is_empty(),
        None => false,
    };
    if !qualified {
        return Err(GlobError::NameNotQualified {
            kind,
            name: name.to_owned(),
            expected,
        });
    }
    TopicGlob::parse(&format!("{root}/{name}/*"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::cell::Cell;

    fn globs(list: &[&str]) -> Vec<TopicGlob> {
        list.iter()
            .map(|g| TopicGlob::parse(g).expect("valid glob"))
            .collect()
    }

    fn paid() -> Filter {
        Filter::parse(&json!({"field": "status", "op": "eq", "value": "paid"})).expect("valid")
    }

    #[test]
    fn empty_topics_match_every_topic() {
        let s = Selector::default();
        assert!(s.matches_topic("tables/public.orders/update"));
        assert!(s.matches_topic("custom/order.shipped"));
        assert!(s.matches("anything", || panic!("no filter: data not needed")));
    }

    #[test]
    fn topics_match_if_any_glob_matches() {
        let s = Selector {
            topics: globs(&["tables/public.orders/*", "custom/**"]),
            filter: None,
        };
        assert!(s.matches_topic("tables/public.orders/insert"));
        assert!(s.matches_topic("custom/order.shipped"));
        assert!(!s.matches_topic("tables/public.invoices/insert"));
        assert!(!s.matches_topic("collections/shop.orders/insert"));
    }

    #[test]
    fn data_is_parsed_at_most_once_and_only_when_needed() {
        let calls = Cell::new(0);
        let data = || {
            calls.set(calls.get() + 1);
            Some(json!({"new": {"status": "paid"}}))
        };
        let s = Selector {
            topics: globs(&["tables/**"]),
            filter: Some(paid()),
        };
        // Topic mismatch: the data is not parsed.
        assert!(!s.matches("custom/x", data));
        assert_eq!(calls.get(), 0);
        assert!(s.matches("tables/public.orders/update", data));
        assert_eq!(calls.get(), 1);
        // No filter: the data is not parsed.
        let s = Selector {
            topics: Vec::new(),
            filter: None,
        };
        assert!(s.matches("tables/public.orders/update", data));
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn filter_applies_to_data_and_unparsable_data_never_passes() {
        let s = Selector {
            topics: Vec::new(),
            filter: Some(paid()),
        };
        assert!(s.matches("t", || Some(json!({"new": {"status": "paid"}}))));
        assert!(!s.matches("t", || Some(json!({"new": {"status": "pending"}}))));
        assert!(!s.matches("t", || None));
        let not_null = Selector {
            topics: Vec::new(),
            filter: Some(
                Filter::parse(&json!({"not": {"field": "a", "op": "is_null", "value": false}}))
                    .expect("valid"),
            ),
        };
        // Even a filter that an empty row passes.
        assert!(not_null.matches("t", || Some(Value::Null)));
        assert!(!not_null.matches("t", || None));
    }

    #[test]
    fn table_and_collection_shortcuts() {
        let g = table_glob("public.orders").expect("valid");
        assert_eq!(g.as_str(), "tables/public.orders/*");
        assert!(g.matches("tables/public.orders/update"));
        assert!(g.matches("tables/public.orders/truncate"));
        assert!(!g.matches("tables/public.orders_archive/update"));
        assert!(!g.matches("collections/public.orders/update"));
        let g = collection_glob("shop.orders").expect("valid");
        assert_eq!(g.as_str(), "collections/shop.orders/*");
        assert!(g.matches("collections/shop.orders/insert"));
        assert!(!g.matches("tables/shop.orders/insert"));
        // Dotted table names (quoted identifiers) are kept whole.
        assert_eq!(
            table_glob("public.my.table").expect("valid").as_str(),
            "tables/public.my.table/*"
        );
        assert!(table_glob(&format!("s.{}", "t".repeat(126))).is_ok());
    }

    #[test]
    fn table_glob_errors() {
        assert_eq!(
            table_glob("").unwrap_err().to_string(),
            "table name is empty; expected \"schema.table\", e.g. \"public.orders\""
        );
        assert_eq!(
            collection_glob("").unwrap_err().to_string(),
            "collection name is empty; expected \"database.collection\", e.g. \"shop.orders\""
        );
        assert_eq!(
            table_glob(&format!("s.{}", "t".repeat(127))),
            Err(GlobError::NameTooLong {
                kind: "table",
                len: 129
            })
        );
        assert_eq!(
            GlobError::NameTooLong {
                kind: "table",
                len: 129
            }
            .to_string(),
            "table name is 129 bytes long; the limit is 128 bytes"
        );
        assert_eq!(
            table_glob("orders").unwrap_err().to_string(),
            "table name \"orders\" is not qualified; expected \"schema.table\", e.g. \"public.orders\""
        );
        for name in [".orders", "public.", "."] {
            assert!(
                matches!(table_glob(name), Err(GlobError::NameNotQualified { .. })),
                "{name}"
            );
        }
        assert_eq!(
            table_glob("public/orders").unwrap_err().to_string(),
            "table name \"public/orders\" contains \"/\"; expected \"schema.table\", e.g. \"public.orders\" (no \"/\" and no wildcards; to match several, use a topic glob)"
        );
        assert_eq!(
            collection_glob("shop.*"),
            Err(GlobError::NameInvalidCharacter {
                kind: "collection",
                name: "shop.*".into(),
                found: '*',
                expected: "\"database.collection\", e.g. \"shop.orders\""
            })
        );
        assert_eq!(
            table_glob("public.or\u{0}ders").unwrap_err().to_string(),
            "table name contains a control character at byte 9; expected \"schema.table\", e.g. \"public.orders\""
        );
    }
}
