//! Postgres text-form values to JSON (pure, no I/O).
//!
//! pgoutput protocol 1 sends every column in its Postgres TEXT output form.
//! This module owns the mapping from that text to the project's JSON
//! contract (`docs/events.md`, "Postgres value → JSON"): [`PgType`] (the JSON mapping of a column type),
//! [`builtin_type`] (that mapping for built-in type OIDs; the catalog
//! resolves the rest) and [`to_json`] (the conversion itself, including
//! array literals of any dimension).
//!
//! The replication session pins `DateStyle=ISO`, `TimeZone=UTC`,
//! `IntervalStyle=postgres`, `extra_float_digits=1`, `bytea_output=hex` and
//! `lc_monetary=C`, so each type has exactly one output form to accept;
//! anything else is a [`ValueError`] (the caller decides on a fallback).
//! Scalars allocate nothing beyond the returned value.
//!
//! One file per family of output forms: `oids` (built-in type OIDs),
//! `numbers`, `bytea`, `time` (dates and timestamps) and `arrays` (array
//! literals); JSON string literals are `event::json`'s. This file holds the
//! type mapping, the error and the two entry points that dispatch to them.

use serde_json::Value;

mod arrays;
mod bytea;
mod numbers;
mod oids;
mod time;

use crate::event::json::write_json_string;
pub use oids::builtin_type;

use arrays::ArrayParser;
use bytea::bytea_value;
use numbers::{float_value, int_value, is_json_number, is_numeric, is_plain_int, money_value};
use time::{date_text, time_value, timestamp_text, timestamptz_text};

/// How a column type maps to JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgType {
    /// `bool`: JSON boolean.
    Bool,
    /// `int2`, `int4`, `int8`, `oid`, `xid`, `xid8`, `cid`: exact JSON number.
    Int,
    /// `float4`, `float8`: JSON number with the printed digits; `NaN`,
    /// `Infinity`, `-Infinity` as strings.
    Float,
    /// `numeric`: string with the exact digits.
    Numeric,
    /// `money`: string with the exact digits, no currency symbol or grouping.
    Money,
    /// String-like types (text, varchar, bpchar, char, name, citext, uuid,
    /// inet, cidr, macaddr, macaddr8, enums, xml, …): JSON string.
    Text,
    /// `json`: the JSON value itself.
    Json,
    /// `jsonb`: the JSON value itself (as Postgres prints it: one line,
    /// valid JSON by construction).
    Jsonb,
    /// `bytea`: base64 (standard alphabet, padded).
    Bytea,
    /// `date`: `YYYY-MM-DD`; infinities and BC dates as printed.
    Date,
    /// `timestamp`: `YYYY-MM-DDTHH:MM:SS[.f]`; infinities and BC as printed.
    Timestamp,
    /// `timestamptz`: RFC 3339 in UTC (`…Z`); infinities and BC as printed.
    Timestamptz,
    /// An array of `elem`, whose elements are separated by `delim` (`,`
    /// for every built-in type but `box`, which uses `;`).
    Array { elem: Box<PgType>, delim: u8 },
    /// Anything else (time, timetz, interval, ranges, geometry, …): the
    /// Postgres text form as a JSON string.
    Other,
}

impl PgType {
    /// Short name used in error messages.
    fn name(&self) -> &'static str {
        match self {
            PgType::Bool => "bool",
            PgType::Int => "integer",
            PgType::Float => "float",
            PgType::Numeric => "numeric",
            PgType::Money => "money",
            PgType::Text => "text",
            PgType::Json => "json",
            PgType::Jsonb => "jsonb",
            PgType::Bytea => "bytea",
            PgType::Date => "date",
            PgType::Timestamp => "timestamp",
            PgType::Timestamptz => "timestamptz",
            PgType::Array { .. } => "array",
            PgType::Other => "other",
        }
    }
}

/// Why a text form could not be converted. `text` is the offending input,
/// lossily decoded and cut to [`SNIPPET_CHARS`] characters (`…` marks a cut).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ValueError {
    /// The input is not UTF-8 (string-like types).
    #[error("{ty} value {text:?} is not valid UTF-8 (invalid byte at offset {at})")]
    NotUtf8 {
        ty: &'static str,
        text: String,
        at: usize,
    },
    /// The input is not an output form of the type.
    #[error("invalid {ty} value {text:?}: {reason}")]
    Invalid {
        ty: &'static str,
        text: String,
        reason: &'static str,
    },
    /// json/jsonb text the JSON parser rejected (including nesting deeper
    /// than serde_json's recursion limit).
    #[error("invalid {ty} value {text:?}: {reason}")]
    Json {
        ty: &'static str,
        text: String,
        reason: String,
    },
    /// A malformed array literal.
    #[error("malformed array literal {text:?} at byte {at}: {reason}")]
    Array {
        text: String,
        at: usize,
        reason: &'static str,
    },
    /// An array element (starting at byte `at` of the literal) that did not
    /// convert.
    #[error("array literal {text:?}, element at byte {at}: {source}")]
    Element {
        text: String,
        at: usize,
        #[source]
        source: Box<ValueError>,
    },
}

/// How many characters of the input an error keeps.
pub const SNIPPET_CHARS: usize = 64;

fn snippet(text: &[u8]) -> String {
    // A char is at most 4 bytes, so this prefix holds SNIPPET_CHARS chars.
    let head = &text[..text.len().min(SNIPPET_CHARS * 4)];
    let lossy = String::from_utf8_lossy(head);
    let mut chars = lossy.char_indices();
    match chars.nth(SNIPPET_CHARS) {
        Some((cut, _)) => format!("{}…", &lossy[..cut]),
        None if head.len() < text.len() => format!("{lossy}…"),
        None => lossy.into_owned(),
    }
}

fn invalid(ty: &PgType, text: &[u8], reason: &'static str) -> ValueError {
    ValueError::Invalid {
        ty: ty.name(),
        text: snippet(text),
        reason,
    }
}

/// Converts the text form of a value of type `ty` to JSON.
///
/// Never panics, whatever the bytes.
pub fn to_json(ty: &PgType, text: &[u8]) -> Result<Value, ValueError> {
    match ty {
        PgType::Bool => match text {
            b"t" => Ok(Value::Bool(true)),
            b"f" => Ok(Value::Bool(false)),
            _ => Err(invalid(ty, text, "expected 't' or 'f'")),
        },
        PgType::Int => int_value(text)
            .map(Value::Number)
            .ok_or_else(|| invalid(ty, text, "expected an integer")),
        PgType::Float => float_value(text).ok_or_else(|| {
            invalid(
                ty,
                text,
                "expected a decimal number, NaN, Infinity or -Infinity",
            )
        }),
        PgType::Numeric => {
            if is_numeric(text) {
                Ok(Value::String(ascii_string(text)))
            } else {
                Err(invalid(
                    ty,
                    text,
                    "expected [-]digits[.digits], NaN, Infinity or -Infinity",
                ))
            }
        }
        PgType::Money => money_value(text).map_err(|reason| invalid(ty, text, reason)),
        PgType::Text | PgType::Other => utf8_string(ty, text),
        PgType::Json | PgType::Jsonb => {
            serde_json::from_slice(text).map_err(|e| ValueError::Json {
                ty: ty.name(),
                text: snippet(text),
                reason: e.to_string(),
            })
        }
        PgType::Bytea => bytea_value(text).map_err(|reason| invalid(ty, text, reason)),
        PgType::Date => time_value(date_text, text).map_err(|reason| invalid(ty, text, reason)),
        PgType::Timestamp => {
            time_value(timestamp_text, text).map_err(|reason| invalid(ty, text, reason))
        }
        PgType::Timestamptz => {
            time_value(timestamptz_text, text).map_err(|reason| invalid(ty, text, reason))
        }
        PgType::Array { elem, delim } => ArrayParser::new(elem, *delim, text).parse(),
    }
}

/// Writes the JSON for the text form of a value of type `ty` to `out`:
/// the same JSON as [`to_json`], without building a `Value` for the common
/// scalar types (this runs for every column of every row). On error `out`
/// is left as it was.
pub fn write_json(ty: &PgType, text: &[u8], out: &mut Vec<u8>) -> Result<(), ValueError> {
    match ty {
        PgType::Bool => match text {
            b"t" => out.extend_from_slice(b"true"),
            b"f" => out.extend_from_slice(b"false"),
            _ => return Err(invalid(ty, text, "expected 't' or 'f'")),
        },
        // Postgres prints integers as -?digits without leading zeros, which
        // is already the exact JSON number.
        PgType::Int if is_plain_int(text) => out.extend_from_slice(text),
        PgType::Float if matches!(text, b"NaN" | b"Infinity" | b"-Infinity") => {
            out.push(b'"');
            out.extend_from_slice(text);
            out.push(b'"');
        }
        PgType::Float if is_json_number(text) => out.extend_from_slice(text),
        PgType::Numeric if is_numeric(text) => {
            out.push(b'"');
            out.extend_from_slice(text);
            out.push(b'"');
        }
        PgType::Text | PgType::Other => match std::str::from_utf8(text) {
            Ok(s) => write_json_string(s, out),
            Err(e) => {
                return Err(ValueError::NotUtf8 {
                    ty: ty.name(),
                    text: snippet(text),
                    at: e.valid_up_to(),
                })
            }
        },
        // jsonb prints valid JSON on one line: copied as it is.
        PgType::Jsonb if std::str::from_utf8(text).is_ok() => {
            out.extend_from_slice(text);
        }
        // json keeps the input's text, which may span lines (an NDJSON line
        // must not), so only single-line text is copied as it is, once
        // checked to be JSON and UTF-8 (a SQL_ASCII database passes any
        // bytes through; serde_json does not check skipped strings).
        PgType::Json
            if !text.iter().any(|&b| b == b'\n' || b == b'\r')
                && std::str::from_utf8(text).is_ok() =>
        {
            serde_json::from_slice::<serde::de::IgnoredAny>(text).map_err(|e| {
                ValueError::Json {
                    ty: ty.name(),
                    text: snippet(text),
                    reason: e.to_string(),
                }
            })?;
            out.extend_from_slice(text);
        }
        PgType::Date | PgType::Timestamp | PgType::Timestamptz => {
            let write = match ty {
                PgType::Date => date_text,
                PgType::Timestamp => timestamp_text,
                _ => timestamptz_text,
            };
            let at = out.len();
            out.push(b'"');
            if let Err(reason) = write(text, out) {
                out.truncate(at);
                return Err(invalid(ty, text, reason));
            }
            out.push(b'"');
        }
        _ => {
            let v = to_json(ty, text)?;
            serde_json::to_writer(&mut *out, &v).expect("writing a Value to a Vec cannot fail");
        }
    }
    Ok(())
}

fn utf8_string(ty: &PgType, text: &[u8]) -> Result<Value, ValueError> {
    match std::str::from_utf8(text) {
        Ok(s) => Ok(Value::String(s.to_owned())),
        Err(e) => Err(ValueError::NotUtf8 {
            ty: ty.name(),
            text: snippet(text),
            at: e.valid_up_to(),
        }),
    }
}

/// A `String` of text already checked to be ASCII (one allocation).
fn ascii_string(text: &[u8]) -> String {
    String::from_utf8_lossy(text).into_owned()
}

#[cfg(test)]
mod test_support;

#[cfg(test)]
#[path = "mod_tests.rs"]
mod tests;
