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

use std::fmt::Write as _;
use std::str::FromStr as _;

use base64::Engine as _;
use serde_json::{Number, Value};

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

/// The type for a built-in type OID: scalars and their array types.
///
/// `None` for OIDs that are not built in (user types start at 16384) or not
/// known here; the caller resolves those from the catalog (enum → Text,
/// domain → its base type, array of X → `Array { elem: X }`).
pub fn builtin_type(oid: u32) -> Option<PgType> {
    if let Some(t) = builtin_scalar(oid) {
        return Some(t);
    }
    let elem = builtin_array_elem(oid)?;
    Some(PgType::Array {
        elem: Box::new(builtin_scalar(elem)?),
        // box is the only built-in type whose typdelim is not ','.
        delim: if elem == 603 { b';' } else { b',' },
    })
}

fn builtin_scalar(oid: u32) -> Option<PgType> {
    Some(match oid {
        16 => PgType::Bool,
        17 => PgType::Bytea,
        // int8, int2, int4, oid, xid, cid, xid8
        20 | 21 | 23 | 26 | 28 | 29 | 5069 => PgType::Int,
        700 | 701 => PgType::Float,
        1700 => PgType::Numeric,
        790 => PgType::Money,
        // char, name, text, xml, unknown, inet, cidr, macaddr, macaddr8,
        // bpchar, varchar, bit, varbit, refcursor, uuid, pg_lsn, tsvector,
        // tsquery, jsonpath, cstring, and the reg* types (printed as names).
        18 | 19 | 25 | 142 | 705 | 869 | 650 | 829 | 774 | 1042 | 1043 | 1560 | 1562 | 1790
        | 2950 | 3220 | 3614 | 3615 | 4072 | 2275 | 24 | 2202 | 2203 | 2204 | 2205 | 2206
        | 4191 | 4096 | 4089 | 3734 | 3769 => PgType::Text,
        114 => PgType::Json,
        3802 => PgType::Jsonb,
        1082 => PgType::Date,
        1114 => PgType::Timestamp,
        1184 => PgType::Timestamptz,
        // time, timetz, interval; int2vector and oidvector (space-separated,
        // not array literals); tid; catalog row types; pg_node_tree and the
        // statistics types; geometry; aclitem; gtsvector; snapshots; ranges
        // and multiranges; record.
        1083 | 1266 | 1186 | 22 | 30 | 27 | 71 | 75 | 81 | 83 | 194 | 3361 | 3402 | 5017 | 600
        | 601 | 602 | 603 | 604 | 628 | 718 | 1033 | 3642 | 2970 | 5038 | 3904 | 3906 | 3908
        | 3910 | 3912 | 3926 | 4451 | 4532 | 4533 | 4534 | 4535 | 4536 | 2249 => PgType::Other,
        _ => return None,
    })
}

/// The element type OID of a built-in array type OID.
fn builtin_array_elem(oid: u32) -> Option<u32> {
    Some(match oid {
        1000 => 16,
        1001 => 17,
        1002 => 18,
        1003 => 19,
        1016 => 20,
        1005 => 21,
        1006 => 22,
        1007 => 23,
        1008 => 24,
        1009 => 25,
        1028 => 26,
        1010 => 27,
        1011 => 28,
        1012 => 29,
        1013 => 30,
        210 => 71,
        270 => 75,
        272 => 81,
        273 => 83,
        199 => 114,
        143 => 142,
        271 => 5069,
        1017 => 600,
        1018 => 601,
        1019 => 602,
        1020 => 603,
        1027 => 604,
        629 => 628,
        1021 => 700,
        1022 => 701,
        719 => 718,
        791 => 790,
        1040 => 829,
        1041 => 869,
        651 => 650,
        775 => 774,
        1034 => 1033,
        1014 => 1042,
        1015 => 1043,
        1182 => 1082,
        1183 => 1083,
        1115 => 1114,
        1185 => 1184,
        1187 => 1186,
        1270 => 1266,
        1561 => 1560,
        1563 => 1562,
        1231 => 1700,
        2201 => 1790,
        2207 => 2202,
        2208 => 2203,
        2209 => 2204,
        2210 => 2205,
        4192 => 4191,
        2211 => 2206,
        4097 => 4096,
        4090 => 4089,
        2951 => 2950,
        3221 => 3220,
        3643 => 3614,
        3644 => 3642,
        3645 => 3615,
        3735 => 3734,
        3770 => 3769,
        3807 => 3802,
        4073 => 4072,
        2949 => 2970,
        5039 => 5038,
        3905 => 3904,
        3907 => 3906,
        3909 => 3908,
        3911 => 3910,
        3913 => 3912,
        3927 => 3926,
        6150 => 4451,
        6151 => 4532,
        6152 => 4533,
        6153 => 4534,
        6155 => 4535,
        6157 => 4536,
        2287 => 2249,
        1263 => 2275,
        _ => return None,
    })
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

/// Writes `s` as a JSON string literal, escaped as serde_json does (`\"`,
/// `\\`, `\b \f \n \r \t`, other controls as `\u00xx`; nothing else).
/// Runs of bytes that need no escape, the usual case, are copied whole;
/// they are found eight bytes at a time.
pub fn write_json_string(s: &str, out: &mut Vec<u8>) {
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        if let Some(word) = b.get(i..i + 8) {
            let w = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
            if !needs_escape(w) {
                i += 8;
                continue;
            }
        }
        let end = (i + 8).min(b.len());
        while i < end {
            let c = b[i];
            if c < 0x20 || c == b'"' || c == b'\\' {
                out.extend_from_slice(&b[start..i]);
                match c {
                    b'"' => out.extend_from_slice(b"\\\""),
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    0x08 => out.extend_from_slice(b"\\b"),
                    0x0c => out.extend_from_slice(b"\\f"),
                    _ => {
                        const HEX: &[u8; 16] = b"0123456789abcdef";
                        out.extend_from_slice(b"\\u00");
                        out.push(HEX[usize::from(c >> 4)]);
                        out.push(HEX[usize::from(c & 0xf)]);
                    }
                }
                start = i + 1;
            }
            i += 1;
        }
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

/// Whether any byte of `w` is a control character, `"` or `\`.
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte below `n` (n ≤ 0x80), and a zero byte, flagged in its high bit.
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH;
    below(w, 0x20) != 0 || below(w ^ (ONES * 0x22), 1) != 0 || below(w ^ (ONES * 0x5c), 1) != 0
}

/// `-?(0|[1-9][0-9]*)` and not `-0`.
fn is_plain_int(text: &[u8]) -> bool {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    match digits {
        [] => false,
        [b'0'] => text.len() == 1,
        [b'0', ..] => false,
        _ => digits.iter().all(u8::is_ascii_digit),
    }
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

// ---------------------------------------------------------------------------
// Numbers

/// `-?(0|[1-9][0-9]*)`, as an exact JSON number.
fn int_value(text: &[u8]) -> Option<Number> {
    let (neg, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    match digits {
        [] => return None,
        [b'0', _, ..] => return None,
        _ if !digits.iter().all(u8::is_ascii_digit) => return None,
        _ => {}
    }
    let mut acc: u64 = 0;
    for &d in digits {
        match acc
            .checked_mul(10)
            .and_then(|a| a.checked_add(u64::from(d - b'0')))
        {
            Some(a) => acc = a,
            // Wider than 64 bits: still exact, via serde_json's own parser.
            None => return Number::from_str(std::str::from_utf8(text).ok()?).ok(),
        }
    }
    if !neg {
        Some(Number::from(acc))
    } else if acc != 0 && acc <= 1 << 63 {
        // 1 << 63 as i64 is i64::MIN, and its wrapping negation is itself.
        Some(Number::from((acc as i64).wrapping_neg()))
    } else {
        // "-0" (a float's negative zero) and below i64::MIN, kept as printed.
        Number::from_str(std::str::from_utf8(text).ok()?).ok()
    }
}

fn float_value(text: &[u8]) -> Option<Value> {
    match text {
        b"NaN" | b"Infinity" | b"-Infinity" => Some(Value::String(ascii_string(text))),
        _ if !is_json_number(text) => None,
        _ => {
            if let Some(n) = int_value(text) {
                return Some(Value::Number(n));
            }
            // Validated ASCII; with arbitrary_precision the digits are kept
            // as printed (no f32 -> f64 widening).
            let n = Number::from_str(std::str::from_utf8(text).ok()?).ok()?;
            Some(Value::Number(n))
        }
    }
}

/// The JSON number grammar (which every finite Postgres float output obeys).
fn is_json_number(t: &[u8]) -> bool {
    let mut i = usize::from(t.first() == Some(&b'-'));
    let digits_from = |mut i: usize| {
        while t.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    match t.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits_from(i + 1),
        _ => return false,
    }
    if t.get(i) == Some(&b'.') {
        let end = digits_from(i + 1);
        if end == i + 1 {
            return false;
        }
        i = end;
    }
    if matches!(t.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(t.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let end = digits_from(i);
        if end == i {
            return false;
        }
        i = end;
    }
    i == t.len()
}

/// numeric_out's forms: `-?[0-9]+(\.[0-9]+)?`, `NaN`, `Infinity`, `-Infinity`.
fn is_numeric(text: &[u8]) -> bool {
    if matches!(text, b"NaN" | b"Infinity" | b"-Infinity") {
        return true;
    }
    let t = text.strip_prefix(b"-").unwrap_or(text);
    let (int, frac) = match t.iter().position(|&b| b == b'.') {
        Some(p) => (&t[..p], Some(&t[p + 1..])),
        None => (t, None),
    };
    let all_digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    all_digits(int) && frac.is_none_or(all_digits)
}

/// cash_out in the C locale: `-?$d,ddd.cc` → `-?dddd.cc`.
fn money_value(text: &[u8]) -> Result<Value, &'static str> {
    const SHAPE: &str = "expected [-]$d,ddd.cc";
    let (mut neg, mut rest) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    rest = rest.strip_prefix(b"$").ok_or(SHAPE)?;
    if !neg {
        if let [b'-', r @ ..] = rest {
            neg = true;
            rest = r;
        }
    }
    let (int, frac) = match rest.iter().position(|&b| b == b'.') {
        Some(p) => (&rest[..p], Some(&rest[p + 1..])),
        None => (rest, None),
    };
    // Groups: the first 1..=3 digits (any number without separators), then
    // exactly 3 after each ','.
    let mut groups = int.split(|&b| b == b',');
    let first = groups.next().unwrap_or_default();
    let grouped = int.contains(&b',');
    if first.is_empty()
        || (grouped && first.len() > 3)
        || !first.iter().all(u8::is_ascii_digit)
        || !groups.all(|g| g.len() == 3 && g.iter().all(u8::is_ascii_digit))
    {
        return Err(SHAPE);
    }
    if frac.is_some_and(|f| f.is_empty() || !f.iter().all(u8::is_ascii_digit)) {
        return Err(SHAPE);
    }
    let mut out = String::with_capacity(text.len());
    if neg {
        out.push('-');
    }
    out.extend(int.iter().filter(|&&b| b != b',').map(|&b| char::from(b)));
    if let Some(f) = frac {
        out.push('.');
        out.extend(f.iter().map(|&b| char::from(b)));
    }
    Ok(Value::String(out))
}

// ---------------------------------------------------------------------------
// bytea

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `\x` + hex pairs → base64, decoding through a stack buffer.
fn bytea_value(text: &[u8]) -> Result<Value, &'static str> {
    // A multiple of 3, so every chunk but the last encodes without padding.
    const CHUNK: usize = 768;
    let hex = text
        .strip_prefix(b"\\x")
        .ok_or("expected hex format (\\x followed by hex digits)")?;
    if hex.len() % 2 != 0 {
        return Err("odd number of hex digits");
    }
    let mut out = String::with_capacity((hex.len() / 2).div_ceil(3) * 4);
    let mut buf = [0u8; CHUNK];
    for chunk in hex.chunks(CHUNK * 2) {
        let mut n = 0;
        for (slot, pair) in buf.iter_mut().zip(chunk.chunks_exact(2)) {
            match (hex_val(pair[0]), hex_val(pair[1])) {
                (Some(hi), Some(lo)) => *slot = (hi << 4) | lo,
                _ => return Err("invalid hex digit"),
            }
            n += 1;
        }
        base64::engine::general_purpose::STANDARD.encode_string(&buf[..n], &mut out);
    }
    Ok(Value::String(out))
}

// ---------------------------------------------------------------------------
// Dates and timestamps (DateStyle=ISO)

const DATE_SHAPE: &str = "expected YYYY-MM-DD[ BC], infinity or -infinity";
const TS_SHAPE: &str = "expected YYYY-MM-DD HH:MM:SS[.f][ BC], infinity or -infinity";
const TSTZ_SHAPE: &str =
    "expected YYYY-MM-DD HH:MM:SS[.f]±HH[:MM[:SS]][ BC], infinity or -infinity";

fn two_digits(t: &[u8], at: usize) -> Option<u32> {
    match (t.get(at), t.get(at + 1)) {
        (Some(a @ b'0'..=b'9'), Some(b @ b'0'..=b'9')) => {
            Some(u32::from(a - b'0') * 10 + u32::from(b - b'0'))
        }
        _ => None,
    }
}

fn is_leap(astronomical_year: i64) -> bool {
    astronomical_year % 4 == 0 && (astronomical_year % 100 != 0 || astronomical_year % 400 == 0)
}

fn days_in_month(astronomical_year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(astronomical_year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A parsed `YYYY-MM-DD` (year as printed, 4 to 9 digits, ≥ 1).
struct Ymd {
    year: i64,
    month: u32,
    day: u32,
    /// Index just past the date.
    end: usize,
}

fn parse_date(t: &[u8]) -> Option<Ymd> {
    let ylen = t.iter().take_while(|b| b.is_ascii_digit()).count();
    if !(4..=9).contains(&ylen) || t.get(ylen) != Some(&b'-') || t.get(ylen + 3) != Some(&b'-') {
        return None;
    }
    let year = t[..ylen]
        .iter()
        .fold(0i64, |a, &b| a * 10 + i64::from(b - b'0'));
    let month = two_digits(t, ylen + 1)?;
    let day = two_digits(t, ylen + 4)?;
    (year >= 1 && (1..=12).contains(&month) && day >= 1).then_some(Ymd {
        year,
        month,
        day,
        end: ylen + 6,
    })
}

/// Checks the day against its month once the era is known (1 BC is the
/// astronomical year 0, a leap year).
fn valid_day(d: &Ymd, bc: bool) -> bool {
    let astronomical = if bc { 1 - d.year } else { d.year };
    d.day <= days_in_month(astronomical, d.month)
}

/// A parsed ` HH:MM:SS[.f]` starting at the separator after the date.
struct Hms {
    secs: i64,
    /// Index of the `.` of the fraction (or `end` if none).
    frac: usize,
    end: usize,
}

fn parse_time(t: &[u8], at: usize) -> Option<Hms> {
    if t.get(at) != Some(&b' ') || t.get(at + 3) != Some(&b':') || t.get(at + 6) != Some(&b':') {
        return None;
    }
    let (h, m, s) = (
        two_digits(t, at + 1)?,
        two_digits(t, at + 4)?,
        two_digits(t, at + 7)?,
    );
    if h > 23 || m > 59 || s > 59 {
        return None;
    }
    let frac = at + 9;
    let mut end = frac;
    if t.get(frac) == Some(&b'.') {
        let n = t[frac + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if !(1..=9).contains(&n) {
            return None;
        }
        end = frac + 1 + n;
    }
    Some(Hms {
        secs: i64::from(h * 3600 + m * 60 + s),
        frac,
        end,
    })
}

/// `±HH[:MM[:SS]]` → (seconds east of UTC, index past it).
fn parse_offset(t: &[u8], at: usize) -> Option<(i64, usize)> {
    let sign = match t.get(at) {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return None,
    };
    let mut secs = i64::from(two_digits(t, at + 1)?) * 3600;
    let mut end = at + 3;
    for unit in [60, 1] {
        if t.get(end) != Some(&b':') {
            break;
        }
        let v = two_digits(t, end + 1).filter(|&v| v <= 59)?;
        secs += i64::from(v) * unit;
        end += 3;
    }
    Some((sign * secs, end))
}

/// Whether the rest is nothing (AD) or ` BC`.
fn era(rest: &[u8]) -> Option<bool> {
    match rest {
        b"" => Some(false),
        b" BC" => Some(true),
        _ => None,
    }
}

/// The text of a date, timestamp or timestamptz as a JSON string value:
/// what `write` puts inside the quotes (ASCII with nothing to escape).
fn time_value(
    write: fn(&[u8], &mut Vec<u8>) -> Result<(), &'static str>,
    text: &[u8],
) -> Result<Value, &'static str> {
    let mut out = Vec::with_capacity(text.len() + 2);
    write(text, &mut out)?;
    Ok(Value::String(String::from_utf8_lossy(&out).into_owned()))
}

/// Writes a date's JSON string contents: as printed, once checked.
fn date_text(text: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    if !matches!(text, b"infinity" | b"-infinity") {
        let d = parse_date(text).ok_or(DATE_SHAPE)?;
        let bc = era(&text[d.end..]).ok_or(DATE_SHAPE)?;
        if !valid_day(&d, bc) {
            return Err("day out of range for month");
        }
    }
    out.extend_from_slice(text);
    Ok(())
}

/// Writes a timestamp's JSON string contents: `YYYY-MM-DDTHH:MM:SS[.f]`;
/// infinities and BC as printed.
fn timestamp_text(text: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    if matches!(text, b"infinity" | b"-infinity") {
        out.extend_from_slice(text);
        return Ok(());
    }
    let d = parse_date(text).ok_or(TS_SHAPE)?;
    let t = parse_time(text, d.end).ok_or(TS_SHAPE)?;
    let bc = era(&text[t.end..]).ok_or(TS_SHAPE)?;
    if !valid_day(&d, bc) {
        return Err("day out of range for month");
    }
    if bc {
        out.extend_from_slice(text);
        return Ok(());
    }
    out.extend_from_slice(&text[..d.end]);
    out.push(b'T');
    out.extend_from_slice(&text[d.end + 1..t.end]);
    Ok(())
}

/// Writes a timestamptz's JSON string contents: RFC 3339 in UTC
/// (`YYYY-MM-DDTHH:MM:SS[.f]Z`); infinities and BC as printed.
fn timestamptz_text(text: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    if matches!(text, b"infinity" | b"-infinity") {
        out.extend_from_slice(text);
        return Ok(());
    }
    let d = parse_date(text).ok_or(TSTZ_SHAPE)?;
    let t = parse_time(text, d.end).ok_or(TSTZ_SHAPE)?;
    let (offset, end) = parse_offset(text, t.end).ok_or(TSTZ_SHAPE)?;
    let bc = era(&text[end..]).ok_or(TSTZ_SHAPE)?;
    if !valid_day(&d, bc) {
        return Err("day out of range for month");
    }
    if bc {
        out.extend_from_slice(text);
        return Ok(());
    }
    if offset == 0 {
        out.extend_from_slice(&text[..d.end]);
        out.push(b'T');
        out.extend_from_slice(&text[d.end + 1..t.frac]);
    } else {
        let local = t.secs - offset;
        let days = days_from_civil(d.year, d.month, d.day) + local.div_euclid(86_400);
        let secs = local.rem_euclid(86_400);
        let (y, m, day) = civil_from_days(days);
        if y < 1 {
            // The UTC instant is BC: keep the Postgres text, as for BC input.
            out.extend_from_slice(text);
            return Ok(());
        }
        let mut utc = String::with_capacity(20);
        let _ = write!(
            utc,
            "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        );
        out.extend_from_slice(utc.as_bytes());
    }
    out.extend_from_slice(&text[t.frac..t.end]);
    out.push(b'Z');
    Ok(())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical year).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // Both fit: day in 1..=31, month in 1..=12.
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

// ---------------------------------------------------------------------------
// Arrays (array_out's output, read with array_in's rules)

/// Postgres' MAXDIM.
const MAXDIM: usize = 6;

/// array_isspace: the whitespace array_in trims.
fn is_array_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

struct ArrayParser<'a> {
    src: &'a [u8],
    pos: usize,
    elem: &'a PgType,
    delim: u8,
    /// Unescaped text of the current element when it cannot be borrowed.
    scratch: Vec<u8>,
    /// The depth at which elements sit, once one has been seen.
    leaf_depth: Option<usize>,
    /// The deepest `{` seen so far.
    deepest: usize,
    /// The length of every (sub-)array at each depth, once known.
    lens: [Option<usize>; MAXDIM],
}

impl<'a> ArrayParser<'a> {
    fn new(elem: &'a PgType, delim: u8, src: &'a [u8]) -> Self {
        ArrayParser {
            src,
            pos: 0,
            elem,
            delim,
            scratch: Vec::new(),
            leaf_depth: None,
            deepest: 0,
            lens: [None; MAXDIM],
        }
    }

    fn err(&self, at: usize, reason: &'static str) -> ValueError {
        ValueError::Array {
            text: snippet(self.src),
            at,
            reason,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(is_array_space) {
            self.pos += 1;
        }
    }

    fn parse(mut self) -> Result<Value, ValueError> {
        self.skip_space();
        let dims = if self.peek() == Some(b'[') {
            Some(self.parse_dims()?)
        } else {
            None
        };
        if self.peek() != Some(b'{') {
            return Err(self.err(self.pos, "expected '{'"));
        }
        let value = self.parse_level(1)?;
        self.skip_space();
        if self.pos != self.src.len() {
            return Err(self.err(self.pos, "junk after closing '}'"));
        }
        if let Some((n, lens)) = dims {
            let ndim = self.leaf_depth.unwrap_or(self.deepest);
            let matches = ndim == n
                && lens[..n]
                    .iter()
                    .zip(&self.lens)
                    .all(|(&want, &got)| u64::try_from(got.unwrap_or(0)).ok() == Some(want));
            if !matches {
                return Err(self.err(0, "dimensions do not match the array's contents"));
            }
        }
        Ok(value)
    }

    /// `[lb:ub]…=` (or `[ub]`) → (number of dimensions, their lengths).
    fn parse_dims(&mut self) -> Result<(usize, [u64; MAXDIM]), ValueError> {
        let mut lens = [0u64; MAXDIM];
        let mut n = 0;
        while self.peek() == Some(b'[') {
            if n == MAXDIM {
                return Err(self.err(self.pos, "more than 6 dimensions"));
            }
            self.pos += 1;
            let first = self.parse_bound()?;
            let (lower, upper) = if self.peek() == Some(b':') {
                self.pos += 1;
                (first, self.parse_bound()?)
            } else {
                (1, first)
            };
            if self.peek() != Some(b']') {
                return Err(self.err(self.pos, "expected ']' in dimensions"));
            }
            self.pos += 1;
            let len = i128::from(upper) - i128::from(lower) + 1;
            lens[n] = u64::try_from(len)
                .ok()
                .filter(|&l| l > 0)
                .ok_or_else(|| self.err(self.pos, "upper bound below lower bound"))?;
            n += 1;
        }
        self.skip_space();
        if self.peek() != Some(b'=') {
            return Err(self.err(self.pos, "expected '=' after dimensions"));
        }
        self.pos += 1;
        self.skip_space();
        Ok((n, lens))
    }

    fn parse_bound(&mut self) -> Result<i64, ValueError> {
        let start = self.pos;
        let neg = match self.peek() {
            Some(b'-') => {
                self.pos += 1;
                true
            }
            Some(b'+') => {
                self.pos += 1;
                false
            }
            _ => false,
        };
        let digits_at = self.pos;
        let mut v: i64 = 0;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_add(i64::from(d - b'0')))
                .ok_or_else(|| self.err(start, "array bound out of range"))?;
            self.pos += 1;
        }
        if self.pos == digits_at {
            return Err(self.err(self.pos, "expected an array bound"));
        }
        Ok(if neg { -v } else { v })
    }

    /// One `{…}` at `depth` (1 for the outermost), with `pos` on the `{`.
    fn parse_level(&mut self, depth: usize) -> Result<Value, ValueError> {
        if depth > MAXDIM {
            return Err(self.err(self.pos, "more than 6 dimensions"));
        }
        if self.leaf_depth.is_some_and(|leaf| depth > leaf) {
            return Err(self.err(self.pos, "sub-array where an element was expected"));
        }
        self.deepest = self.deepest.max(depth);
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_space();
        if self.peek() == Some(b'}') {
            self.pos += 1;
        } else {
            loop {
                self.skip_space();
                match self.peek() {
                    None => return Err(self.err(self.pos, "unterminated array")),
                    Some(b'{') => items.push(self.parse_level(depth + 1)?),
                    Some(_) => {
                        if self.leaf_depth.is_some_and(|leaf| leaf != depth) || self.deepest > depth
                        {
                            return Err(
                                self.err(self.pos, "element where a sub-array was expected")
                            );
                        }
                        self.leaf_depth = Some(depth);
                        items.push(self.parse_element()?);
                    }
                }
                self.skip_space();
                match self.peek() {
                    Some(b) if b == self.delim => self.pos += 1,
                    Some(b'}') => {
                        self.pos += 1;
                        break;
                    }
                    None => return Err(self.err(self.pos, "unterminated array")),
                    Some(_) => {
                        return Err(self.err(self.pos, "expected a delimiter or '}'"));
                    }
                }
            }
        }
        match &mut self.lens[depth - 1] {
            slot @ None => *slot = Some(items.len()),
            Some(n) if *n == items.len() => {}
            Some(_) => return Err(self.err(self.pos, "sub-arrays must have matching dimensions")),
        }
        Ok(Value::Array(items))
    }

    /// One element, `pos` on its first (non-space) byte; leaves `pos` on the
    /// delimiter or `}` that ends it.
    fn parse_element(&mut self) -> Result<Value, ValueError> {
        let src = self.src;
        let start = self.pos;
        let delim = self.delim;
        let ends = |b: u8| b == delim || b == b'}';

        // Fast paths: the element is a slice of the input.
        if src[start] == b'"' {
            let close = src[start + 1..]
                .iter()
                .position(|&b| b == b'"' || b == b'\\')
                .map(|p| start + 1 + p);
            if let Some(close) = close.filter(|&c| src[c] == b'"') {
                let mut after = close + 1;
                while src.get(after).copied().is_some_and(is_array_space) {
                    after += 1;
                }
                if src.get(after).copied().is_some_and(ends) {
                    self.pos = after;
                    return self.convert(start, &src[start + 1..close]);
                }
            }
        } else {
            let stop = src[start..]
                .iter()
                .position(|&b| ends(b) || matches!(b, b'{' | b'"' | b'\\'))
                .map(|p| start + p);
            if let Some(stop) = stop.filter(|&s| ends(src[s])) {
                let mut end = stop;
                while end > start && is_array_space(src[end - 1]) {
                    end -= 1;
                }
                let raw = &src[start..end];
                if raw.is_empty() {
                    return Err(self.err(start, "empty unquoted element"));
                }
                self.pos = stop;
                if raw.eq_ignore_ascii_case(b"NULL") {
                    return Ok(Value::Null);
                }
                return self.convert(start, raw);
            }
        }

        // General case: quoted parts, backslash escapes, mixed.
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let mut keep = 0; // length without trailing unquoted whitespace
        let mut literal = false; // saw quotes or escapes: never NULL
        let mut in_quotes = false;
        let mut i = start;
        loop {
            let Some(&c) = src.get(i) else {
                return Err(self.err(start, "unterminated element"));
            };
            if !in_quotes && ends(c) {
                break;
            }
            match c {
                b'\\' => {
                    i += 1;
                    let Some(&next) = src.get(i) else {
                        return Err(self.err(start, "unterminated element"));
                    };
                    buf.push(next);
                    keep = buf.len();
                    literal = true;
                }
                b'"' => {
                    in_quotes = !in_quotes;
                    keep = buf.len();
                    literal = true;
                }
                _ if in_quotes => {
                    buf.push(c);
                    keep = buf.len();
                }
                b'{' => return Err(self.err(i, "unexpected '{' in element")),
                _ if is_array_space(c) => buf.push(c),
                _ => {
                    buf.push(c);
                    keep = buf.len();
                }
            }
            i += 1;
        }
        buf.truncate(keep);
        self.pos = i;
        let result = if literal {
            self.convert(start, &buf)
        } else if buf.is_empty() {
            Err(self.err(start, "empty unquoted element"))
        } else if buf.eq_ignore_ascii_case(b"NULL") {
            Ok(Value::Null)
        } else {
            self.convert(start, &buf)
        };
        self.scratch = buf;
        result
    }

    fn convert(&self, at: usize, raw: &[u8]) -> Result<Value, ValueError> {
        to_json(self.elem, raw).map_err(|e| ValueError::Element {
            text: snippet(self.src),
            at,
            source: Box::new(e),
        })
    }
}

#[cfg(test)]
#[path = "value_tests.rs"]
mod tests;
