//! The event envelope: one JSON shape for every transport (CloudEvents 1.0
//! structured mode plus Sluice's `seq`, `tenant`, `topic`, `txid`, `lsn`),
//! as `docs/events.md` specifies it for users.
//!
//! A source builds a [`PendingEvent`] whose `data` is already serialized
//! (the expensive part, done once, off the appender's path). The appender
//! gives it a `seq` and calls [`PendingEvent::envelope_json`], which only
//! wraps the pre-serialized data in the small header. Nothing here does I/O.

pub mod committed;
pub mod json;
pub mod tenant;

use std::sync::Arc;

pub use committed::Committed;
use json::push_json_str;
pub use tenant::{TenantError, TenantId};

/// Where an event came from in its source, so an append can be made
/// idempotent: a source never re-sends a position at or before the last one
/// the log holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct SourcePosition {
    /// Postgres: the commit LSN of the transaction (or the LSN of a
    /// non-transactional message).
    pub commit_lsn: u64,
    /// 1-based index of the change within its transaction.
    pub ordinal: u64,
}

/// Who an event is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// The tenant read from the row or message itself.
    Tenant(TenantId),
    /// Every tenant that has had rows of this relation (`schema.table`):
    /// a TRUNCATE empties the table for all of them, and the row that would
    /// name a tenant does not exist. The appender expands it.
    TenantsOfRelation(Arc<str>),
}

/// An event as a source produced it, before the log gives it a `seq`.
#[derive(Debug, Clone)]
pub struct PendingEvent {
    pub audience: Audience,
    pub position: SourcePosition,
    /// `/sluice/pg/main`
    pub source: Arc<str>,
    /// `row.updated`, `custom.order.shipped`, …
    pub event_type: Arc<str>,
    /// `tables/public.orders/update`
    pub topic: Arc<str>,
    pub subject: Option<String>,
    /// Source commit time, microseconds since the Unix epoch.
    pub time_micros: i64,
    /// `format_time_micros(time_micros)`, formatted once per transaction
    /// rather than once per event.
    pub time: Arc<str>,
    pub txid: Option<u64>,
    pub lsn: Option<u64>,
    /// The serialized `data` member.
    pub data: JsonText,
    /// The Postgres relation (`schema.table`) of a row event; `None` for
    /// custom events and MongoDB. The log keeps its relation→tenant index
    /// (a TRUNCATE's audience) by it. Not part of the envelope.
    pub relation: Option<Arc<str>>,
    /// A custom event's extra envelope members (`correlation_id`,
    /// `attributes`), as the serialized JSON object that holds them
    /// ([`Extensions`]); `None` for nearly every event.
    pub ext: Option<Extensions>,
}

/// Extra envelope members of a custom event, validated and serialized
/// once: a JSON object with `correlation_id` (a string) and/or
/// `attributes` (an object of strings), in that order. Stored as the log's
/// `ext` column and written into the envelope before `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extensions(Arc<str>);

/// Longest `correlation_id`, in bytes.
pub const MAX_CORRELATION_ID: usize = 256;
/// Most `attributes`, longest attribute name and value (bytes).
pub const MAX_ATTRIBUTES: usize = 32;
pub const MAX_ATTRIBUTE_NAME: usize = 64;
pub const MAX_ATTRIBUTE_VALUE: usize = 1024;

impl Extensions {
    /// Checks and serializes the members; `None` when there are none.
    /// Errors name the member and the bound.
    pub fn new(
        correlation_id: Option<&serde_json::Value>,
        attributes: Option<&serde_json::Value>,
    ) -> Result<Option<Extensions>, String> {
        use serde_json::Value;
        let mut obj = serde_json::Map::new();
        match correlation_id {
            None | Some(Value::Null) => {}
            Some(Value::String(c)) if !c.is_empty() && c.len() <= MAX_CORRELATION_ID => {
                obj.insert("correlation_id".into(), Value::String(c.clone()));
            }
            Some(Value::String(c)) => {
                return Err(format!(
                    "correlation_id: expected 1 to {MAX_CORRELATION_ID} bytes, found {}",
                    c.len()
                ))
            }
            Some(other) => {
                return Err(format!(
                    "correlation_id: expected a string, found {}",
                    json::kind_of(other)
                ))
            }
        }
        match attributes {
            None | Some(Value::Null) => {}
            Some(Value::Object(a)) => {
                if a.len() > MAX_ATTRIBUTES {
                    return Err(format!(
                        "attributes: at most {MAX_ATTRIBUTES} attributes, found {}",
                        a.len()
                    ));
                }
                for (name, value) in a {
                    if name.is_empty() || name.len() > MAX_ATTRIBUTE_NAME {
                        return Err(format!(
                            "attributes: a name must be 1 to {MAX_ATTRIBUTE_NAME} bytes, found {} ({name:?})",
                            name.len()
                        ));
                    }
                    match value {
                        Value::String(v) if v.len() <= MAX_ATTRIBUTE_VALUE => {}
                        Value::String(v) => {
                            return Err(format!(
                                "attributes.{name}: at most {MAX_ATTRIBUTE_VALUE} bytes, found {}",
                                v.len()
                            ))
                        }
                        other => {
                            return Err(format!(
                                "attributes.{name}: expected a string, found {}",
                                json::kind_of(other)
                            ))
                        }
                    }
                }
                if !a.is_empty() {
                    obj.insert("attributes".into(), Value::Object(a.clone()));
                }
            }
            Some(other) => {
                return Err(format!(
                    "attributes: expected an object of strings, found {}",
                    json::kind_of(other)
                ))
            }
        }
        Ok((!obj.is_empty()).then(|| Extensions(Value::Object(obj).to_string().into())))
    }

    /// As read back from the log's `ext` column (written by [`Extensions::new`]).
    pub fn stored(text: &str) -> Extensions {
        Extensions(text.into())
    }

    /// The serialized object.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The members without the object's braces (`"correlation_id":"…"`).
    fn members(&self) -> &str {
        let s = self.0.trim();
        s.strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .unwrap_or("")
            .trim()
    }
}

/// Serialized JSON, valid by construction: built from a `Value`, parsed,
/// or written by the normalizer's JSON writer (checked in debug builds).
/// Holding text rather than a `RawValue` spares re-parsing every event; a
/// `String` rather than a `Box<str>` spares shrinking (a copy) each one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText(String);

impl JsonText {
    pub fn from_value(v: &serde_json::Value) -> JsonText {
        JsonText(v.to_string())
    }

    /// Checks that `s` is one JSON value.
    pub fn parse(s: String) -> Result<JsonText, serde_json::Error> {
        serde_json::from_str::<serde::de::IgnoredAny>(&s)?;
        Ok(JsonText(s))
    }

    /// For writers that only ever produce valid JSON.
    pub(crate) fn from_trusted(s: String) -> JsonText {
        debug_assert!(
            serde_json::from_str::<serde::de::IgnoredAny>(&s).is_ok(),
            "invalid JSON from a trusted writer: {s}"
        );
        JsonText(s)
    }

    pub fn get(&self) -> &str {
        &self.0
    }
}

/// The parts of one envelope. [`Envelope::to_json`] is the only
/// serializer of envelopes, so a stored event read back and a live event are
/// the same bytes.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub seq: i64,
    pub source: &'a str,
    pub event_type: &'a str,
    pub subject: Option<&'a str>,
    /// As produced by [`format_time_micros`].
    pub time: &'a str,
    pub tenant: &'a str,
    pub topic: &'a str,
    pub txid: Option<u64>,
    pub lsn: Option<u64>,
    /// Extra members of a custom event, written before `data`.
    pub ext: Option<&'a Extensions>,
    /// Serialized JSON.
    pub data: &'a str,
}

impl Envelope<'_> {
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(self.data.len() + self.topic.len() * 2 + 200);
        out.push_str("{\"specversion\":\"1.0\",\"id\":\"");
        push_int(&mut out, self.seq);
        out.push_str("\",\"seq\":");
        push_int(&mut out, self.seq);
        out.push_str(",\"source\":");
        push_json_str(&mut out, self.source);
        out.push_str(",\"type\":");
        push_json_str(&mut out, self.event_type);
        if let Some(subject) = self.subject {
            out.push_str(",\"subject\":");
            push_json_str(&mut out, subject);
        }
        out.push_str(",\"time\":\"");
        out.push_str(self.time);
        out.push_str("\",\"tenant\":");
        push_json_str(&mut out, self.tenant);
        out.push_str(",\"topic\":");
        push_json_str(&mut out, self.topic);
        if let Some(txid) = self.txid {
            out.push_str(",\"txid\":");
            push_int(&mut out, i64::try_from(txid).unwrap_or(i64::MAX));
        }
        if let Some(lsn) = self.lsn {
            out.push_str(",\"lsn\":\"");
            out.push_str(&format_lsn(lsn));
            out.push('"');
        }
        if let Some(members) = self.ext.map(Extensions::members).filter(|m| !m.is_empty()) {
            out.push(',');
            out.push_str(members);
        }
        out.push_str(",\"data\":");
        out.push_str(self.data);
        out.push('}');
        out
    }
}

impl PendingEvent {
    /// The parts of this event's envelope for `tenant` at `seq`.
    pub fn envelope<'a>(&'a self, seq: i64, tenant: &'a TenantId) -> Envelope<'a> {
        Envelope {
            seq,
            source: &self.source,
            event_type: &self.event_type,
            subject: self.subject.as_deref(),
            time: &self.time,
            tenant: tenant.as_str(),
            topic: &self.topic,
            txid: self.txid,
            lsn: self.lsn,
            ext: self.ext.as_ref(),
            data: self.data.get(),
        }
    }

    /// The envelope as it is stored and sent, for `tenant` at `seq`.
    pub fn envelope_json(&self, seq: i64, tenant: &TenantId) -> String {
        self.envelope(seq, tenant).to_json()
    }

    /// Size used for memory bounds on queues and batches.
    pub fn approx_bytes(&self) -> usize {
        self.data.get().len()
            + self.topic.len()
            + self.subject.as_ref().map_or(0, |s| s.len())
            + self.ext.as_ref().map_or(0, |e| e.0.len())
            + 256
    }
}

fn push_int(out: &mut String, v: i64) {
    use std::fmt::Write as _;
    let _ = write!(out, "{v}");
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (RFC 3339, UTC, microseconds).
pub fn format_time_micros(micros: i64) -> String {
    match chrono::DateTime::from_timestamp_micros(micros) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        None => "1970-01-01T00:00:00.000000Z".to_owned(),
    }
}

/// Microseconds between the Unix epoch and the Postgres epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Converts a Postgres wire timestamp (µs since 2000-01-01) to µs since 1970.
pub fn pg_micros_to_unix(pg: i64) -> i64 {
    pg.saturating_add(PG_EPOCH_OFFSET_MICROS)
}

/// An LSN the way Postgres prints it: `16/B374D848`.
/// `X/Y` (hex halves, as Postgres prints an LSN) → the LSN.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    (hi <= u64::from(u32::MAX) && lo <= u64::from(u32::MAX)).then_some((hi << 32) | lo)
}

pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// The type names of row events.
pub mod types {
    pub const INSERTED: &str = "row.inserted";
    pub const UPDATED: &str = "row.updated";
    pub const DELETED: &str = "row.deleted";
    pub const TRUNCATED: &str = "row.truncated";
    pub const SNAPSHOT: &str = "row.snapshot";
    /// A row an update made visible to a subscriber (policies, live queries).
    pub const ENTERED: &str = "row.entered";
    /// A row an update took out of a subscriber's view.
    pub const LEFT: &str = "row.left";
    pub const CUSTOM_PREFIX: &str = "custom.";
    pub const DOC_INSERTED: &str = "doc.inserted";
    pub const DOC_UPDATED: &str = "doc.updated";
    pub const DOC_REPLACED: &str = "doc.replaced";
    pub const DOC_DELETED: &str = "doc.deleted";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse_as_postgres_prints_them() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn(&format_lsn(0x1_0000_0002)), Some(0x1_0000_0002));
        assert_eq!(parse_lsn("0/0"), Some(0));
        for bad in ["", "16", "x/1", "1/100000000"] {
            assert_eq!(parse_lsn(bad), None, "{bad}");
        }
    }

    fn pending(data: &str) -> PendingEvent {
        PendingEvent {
            audience: Audience::Tenant(TenantId::new("acme").expect("valid")),
            position: SourcePosition::default(),
            source: "/sluice/pg/main".into(),
            event_type: types::UPDATED.into(),
            topic: "tables/public.orders/update".into(),
            subject: Some("public.orders/42".into()),
            time_micros: 1_795_342_530_123_456,
            time: format_time_micros(1_795_342_530_123_456).into(),
            txid: Some(7731),
            lsn: Some(0x16B3748),
            data: JsonText::parse(data.to_owned()).expect("valid json"),
            relation: None,
            ext: None,
        }
    }

    #[test]
    fn envelope_has_the_documented_members_in_order() {
        let e = pending(r#"{"op":"update","key":{"id":42}}"#);
        let json = e.envelope_json(184467, &TenantId::new("acme").expect("valid"));
        assert_eq!(
            json,
            concat!(
                r#"{"specversion":"1.0","id":"184467","seq":184467,"source":"/sluice/pg/main","#,
                r#""type":"row.updated","subject":"public.orders/42","time":"2026-11-22T10:15:30.123456Z","#,
                r#""tenant":"acme","topic":"tables/public.orders/update","txid":7731,"lsn":"0/16B3748","#,
                r#""data":{"op":"update","key":{"id":42}}}"#
            )
        );
        let v: serde_json::Value = serde_json::from_str(&json).expect("parses");
        assert_eq!(v["data"]["key"]["id"], 42);
    }

    #[test]
    fn extensions_come_before_data_and_are_checked() {
        use serde_json::json;
        let mut e = pending("{}");
        e.ext = Extensions::new(
            Some(&json!("c-\"1")),
            Some(&json!({"region": "eu", "k\n": "v"})),
        )
        .expect("valid");
        let json = e.envelope_json(1, &TenantId::new("acme").expect("valid"));
        assert!(
            json.ends_with(
                r#","correlation_id":"c-\"1","attributes":{"region":"eu","k\n":"v"},"data":{}}"#
            ),
            "{json}"
        );
        let v: serde_json::Value = serde_json::from_str(&json).expect("parses");
        assert_eq!(v["correlation_id"], "c-\"1");
        assert_eq!(Extensions::new(None, Some(&json!({}))), Ok(None));
        assert_eq!(Extensions::new(Some(&json!(null)), None), Ok(None));
        let bad = [
            (
                json!(""),
                json!(null),
                "correlation_id: expected 1 to 256 bytes, found 0",
            ),
            (
                json!(7),
                json!(null),
                "correlation_id: expected a string, found a number",
            ),
            (
                json!(null),
                json!([]),
                "attributes: expected an object of strings, found an array",
            ),
            (
                json!(null),
                json!({"a": 1}),
                "attributes.a: expected a string, found a number",
            ),
            (
                json!(null),
                json!({"": "x"}),
                "attributes: a name must be 1 to 64 bytes, found 0 (\"\")",
            ),
        ];
        for (c, a, want) in bad {
            assert_eq!(Extensions::new(Some(&c), Some(&a)), Err(want.to_owned()));
        }
        let many: serde_json::Map<String, serde_json::Value> =
            (0..33).map(|i| (format!("a{i}"), json!("v"))).collect();
        assert!(
            Extensions::new(None, Some(&serde_json::Value::Object(many)))
                .expect_err("too many")
                .starts_with("attributes: at most 32")
        );
    }

    #[test]
    fn strings_needing_escapes_are_escaped() {
        let mut e = pending("{}");
        e.subject = Some("public.t/a\"b\\c\n".into());
        let json = e.envelope_json(1, &TenantId::new("t\"x").expect("valid"));
        let v: serde_json::Value = serde_json::from_str(&json).expect("parses");
        assert_eq!(v["subject"], "public.t/a\"b\\c\n");
        assert_eq!(v["tenant"], "t\"x");
    }

    #[test]
    fn optional_members_are_left_out_not_null() {
        let mut e = pending("{}");
        e.subject = None;
        e.txid = None;
        e.lsn = None;
        let json = e.envelope_json(1, &TenantId::new("t").expect("valid"));
        assert!(!json.contains("subject") && !json.contains("txid") && !json.contains("lsn"));
    }

    #[test]
    fn lsn_and_time_formats_match_postgres_and_rfc3339() {
        assert_eq!(format_lsn(0), "0/0");
        assert_eq!(format_lsn((0x16 << 32) | 0xB374D848), "16/B374D848");
        assert_eq!(format_time_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(pg_micros_to_unix(0), PG_EPOCH_OFFSET_MICROS);
        assert_eq!(
            format_time_micros(pg_micros_to_unix(0)),
            "2000-01-01T00:00:00.000000Z"
        );
    }
}
