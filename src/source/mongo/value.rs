//! MongoDB value → JSON, as `docs/events.md` ("MongoDB value → JSON") fixes
//! it: plain JSON wherever plain JSON loses nothing, relaxed-mode Extended
//! JSON otherwise.
//!
//! | BSON | JSON |
//! |---|---|
//! | double | number; `NaN`, `Infinity`, `-Infinity` as strings (as for Postgres floats) |
//! | string, symbol | string |
//! | document, array | object (field order kept), array |
//! | binary (any subtype) | base64 string |
//! | ObjectId | 24-digit hex string |
//! | boolean, null | boolean, null (`undefined` → null) |
//! | date | RFC 3339 UTC with milliseconds; outside years 0–9999 `{"$date":{"$numberLong":"…"}}` |
//! | int32, int64 | number (exact) |
//! | decimal128 | string, exact digits |
//! | timestamp | `{"$timestamp":{"t":…,"i":…}}` |
//! | regex, JavaScript, DBPointer, MinKey, MaxKey | their relaxed Extended JSON form |
//!
//! Pure.

use base64::Engine as _;
use bson::{Bson, Document};
use serde_json::{Map, Number, Value};

/// One BSON value as JSON.
pub fn to_json(value: &Bson) -> Value {
    match value {
        Bson::Double(f) => double(*f),
        Bson::String(s) | Bson::Symbol(s) => Value::String(s.clone()),
        Bson::Document(d) => Value::Object(document(d)),
        Bson::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Bson::Binary(b) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(&b.bytes))
        }
        Bson::ObjectId(id) => Value::String(id.to_hex()),
        Bson::Boolean(b) => Value::Bool(*b),
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::DateTime(d) => date(*d),
        Bson::Int32(i) => Value::Number(Number::from(*i)),
        Bson::Int64(i) => Value::Number(Number::from(*i)),
        Bson::Decimal128(d) => Value::String(d.to_string()),
        Bson::Timestamp(ts) => single(
            "$timestamp",
            obj([
                ("t", Value::Number(ts.time.into())),
                ("i", Value::Number(ts.increment.into())),
            ]),
        ),
        Bson::RegularExpression(re) => single(
            "$regularExpression",
            obj([
                ("pattern", Value::String(re.pattern.clone())),
                ("options", Value::String(re.options.clone())),
            ]),
        ),
        Bson::JavaScriptCode(code) => single("$code", Value::String(code.clone())),
        Bson::JavaScriptCodeWithScope(c) => obj([
            ("$code", Value::String(c.code.clone())),
            ("$scope", Value::Object(document(&c.scope))),
        ]),
        Bson::DbPointer(_) => {
            // The fields are private in the bson crate; its own relaxed
            // Extended JSON rendering is the documented form.
            value.clone().into_relaxed_extjson()
        }
        Bson::MinKey => single("$minKey", Value::Number(1.into())),
        Bson::MaxKey => single("$maxKey", Value::Number(1.into())),
    }
}

/// A document as a JSON object, field order kept.
pub fn document(d: &Document) -> Map<String, Value> {
    d.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()
}

/// A value as the text of an event subject: strings and ObjectIds bare,
/// anything else as compact JSON.
pub fn subject_text(value: &Bson) -> String {
    match value {
        Bson::String(s) => s.clone(),
        other => match to_json(other) {
            Value::String(s) => s,
            v => v.to_string(),
        },
    }
}

fn double(f: f64) -> Value {
    if f.is_nan() {
        Value::String("NaN".to_owned())
    } else if f.is_infinite() {
        Value::String(if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned())
    } else {
        Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
}

fn date(d: bson::DateTime) -> Value {
    let millis = d.timestamp_millis();
    // Years 0 to 9999, as RFC 3339 allows (and relaxed Extended JSON uses
    // the ISO form for 1970..9999 only; a plain string reads better and is
    // still exact for the years before).
    const MIN: i64 = -62_167_219_200_000; // 0000-01-01T00:00:00Z
    const MAX: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    if (MIN..=MAX).contains(&millis) {
        if let Some(t) = chrono::DateTime::from_timestamp_millis(millis) {
            return Value::String(t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
        }
    }
    single(
        "$date",
        single("$numberLong", Value::String(millis.to_string())),
    )
}

fn single(key: &str, v: Value) -> Value {
    obj([(key, v)])
}

fn obj<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::oid::ObjectId;
    use bson::spec::BinarySubtype;
    use bson::{doc, Binary, Decimal128, Regex, Timestamp};
    use serde_json::json;
    use std::str::FromStr;

    #[test]
    fn object_ids_are_hex_strings() {
        let id = ObjectId::parse_str("507f1f77bcf86cd799439011").expect("valid");
        assert_eq!(
            to_json(&Bson::ObjectId(id)),
            json!("507f1f77bcf86cd799439011")
        );
    }

    #[test]
    fn dates_are_rfc3339_utc_with_milliseconds() {
        let d = bson::DateTime::from_millis(1_795_342_530_123);
        assert_eq!(
            to_json(&Bson::DateTime(d)),
            json!("2026-11-22T10:15:30.123Z")
        );
        let epoch = bson::DateTime::from_millis(0);
        assert_eq!(
            to_json(&Bson::DateTime(epoch)),
            json!("1970-01-01T00:00:00.000Z")
        );
        let before = bson::DateTime::from_millis(-1);
        assert_eq!(
            to_json(&Bson::DateTime(before)),
            json!("1969-12-31T23:59:59.999Z")
        );
        // Outside what RFC 3339 can write: the exact Extended JSON form.
        let far = bson::DateTime::from_millis(i64::MAX);
        assert_eq!(
            to_json(&Bson::DateTime(far)),
            json!({"$date": {"$numberLong": i64::MAX.to_string()}})
        );
    }

    #[test]
    fn decimal128_keeps_its_exact_digits() {
        for text in [
            "150.00",
            "0.1",
            "-3.14159265358979323846264338327950",
            "1E+10",
        ] {
            let d = Decimal128::from_str(text).expect("valid decimal");
            assert_eq!(to_json(&Bson::Decimal128(d)), json!(text), "{text}");
        }
    }

    #[test]
    fn integers_are_exact_numbers() {
        assert_eq!(
            to_json(&Bson::Int64(i64::MAX)).to_string(),
            "9223372036854775807"
        );
        assert_eq!(
            to_json(&Bson::Int64(i64::MIN)).to_string(),
            "-9223372036854775808"
        );
        assert_eq!(to_json(&Bson::Int32(-7)), json!(-7));
    }

    #[test]
    fn doubles_are_numbers_and_non_finite_ones_strings() {
        assert_eq!(to_json(&Bson::Double(1.5)), json!(1.5));
        assert_eq!(to_json(&Bson::Double(f64::NAN)), json!("NaN"));
        assert_eq!(to_json(&Bson::Double(f64::INFINITY)), json!("Infinity"));
        assert_eq!(
            to_json(&Bson::Double(f64::NEG_INFINITY)),
            json!("-Infinity")
        );
    }

    #[test]
    fn binary_of_every_subtype_is_base64() {
        for subtype in [
            BinarySubtype::Generic,
            BinarySubtype::Uuid,
            BinarySubtype::Md5,
        ] {
            let b = Binary {
                subtype,
                bytes: vec![0, 1, 2, 250, 255],
            };
            assert_eq!(to_json(&Bson::Binary(b)), json!("AAEC+v8="));
        }
    }

    #[test]
    fn nested_documents_and_arrays_keep_order_and_types() {
        let id = ObjectId::parse_str("64b7f0c2a1b2c3d4e5f60718").expect("valid");
        let d = doc! {
            "z": 1_i32,
            "a": { "when": bson::DateTime::from_millis(0), "ids": [id, Bson::Null, [2_i64, "x"]] },
            "m": true,
        };
        let v = Value::Object(document(&d));
        assert_eq!(
            v.to_string(),
            r#"{"z":1,"a":{"when":"1970-01-01T00:00:00.000Z","ids":["64b7f0c2a1b2c3d4e5f60718",null,[2,"x"]]},"m":true}"#
        );
    }

    #[test]
    fn other_types_use_relaxed_extended_json() {
        let ts = Bson::Timestamp(Timestamp {
            time: 1_700_000_000,
            increment: 3,
        });
        assert_eq!(
            to_json(&ts),
            json!({"$timestamp": {"t": 1_700_000_000u32, "i": 3}})
        );
        let re = Bson::RegularExpression(Regex {
            pattern: "^a.*".into(),
            options: "i".into(),
        });
        assert_eq!(
            to_json(&re),
            json!({"$regularExpression": {"pattern": "^a.*", "options": "i"}})
        );
        assert_eq!(
            to_json(&Bson::JavaScriptCode("f()".into())),
            json!({"$code": "f()"})
        );
        assert_eq!(to_json(&Bson::MinKey), json!({"$minKey": 1}));
        assert_eq!(to_json(&Bson::MaxKey), json!({"$maxKey": 1}));
        assert_eq!(to_json(&Bson::Undefined), Value::Null);
        assert_eq!(to_json(&Bson::Symbol("s".into())), json!("s"));
    }

    #[test]
    fn subjects_are_bare_for_strings_and_object_ids() {
        let id = ObjectId::parse_str("507f1f77bcf86cd799439011").expect("valid");
        assert_eq!(
            subject_text(&Bson::ObjectId(id)),
            "507f1f77bcf86cd799439011"
        );
        assert_eq!(subject_text(&Bson::String("a/b".into())), "a/b");
        assert_eq!(subject_text(&Bson::Int64(42)), "42");
        assert_eq!(subject_text(&Bson::Document(doc! {"k": 1})), r#"{"k":1}"#);
    }
}
