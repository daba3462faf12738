use super::*;
use crate::source::postgres::value::test_support::*;

#[test]
fn write_json_agrees_with_to_json() {
    let cases: &[(PgType, &[u8])] = &[
        (PgType::Bool, b"t"),
        (PgType::Int, b"-9223372036854775808"),
        (PgType::Int, b"0"),
        (PgType::Int, b"-0"),
        (PgType::Float, b"1.5e+300"),
        (PgType::Float, b"-Infinity"),
        (PgType::Numeric, b"-12.50"),
        (PgType::Text, "h\u{e9}llo \"q\" \\ \n".as_bytes()),
        (
            PgType::Json,
            br#"{"a": [1, 2.50, {"b": null}], "n": 123456789012345678901234567890}"#,
        ),
        (PgType::Json, b"{\n  \"multi\": \"line\"\n}"),
        (PgType::Timestamptz, b"2026-11-22 10:15:30.5+05:30"),
        (PgType::Timestamptz, b"2026-11-22 10:15:30.123456+00"),
        (PgType::Timestamptz, b"0044-03-15 12:00:00+00 BC"),
        (PgType::Timestamptz, b"-infinity"),
        (PgType::Timestamp, b"2026-11-22 10:15:30.123456"),
        (PgType::Timestamp, b"infinity"),
        (PgType::Date, b"2026-11-22"),
        (PgType::Date, b"0001-02-29 BC"),
        (PgType::Bytea, b"\\x00ff"),
        (PgType::Money, b"-$1,234.56"),
    ];
    for (ty, text) in cases {
        let mut out = Vec::new();
        write_json(ty, text, &mut out).expect("valid");
        let written: Value = serde_json::from_slice(&out).expect("json");
        let expected = to_json(ty, text).expect("valid");
        assert_eq!(
            written,
            expected,
            "{ty:?} {}",
            String::from_utf8_lossy(text)
        );
        assert!(
            !out.contains(&b'\n'),
            "one line: {}",
            String::from_utf8_lossy(&out)
        );
    }
    let mut out = b"keep".to_vec();
    assert!(write_json(&PgType::Int, b"1x", &mut out).is_err());
    assert!(write_json(&PgType::Json, b"{nope", &mut out).is_err());
    assert!(write_json(&PgType::Timestamptz, b"2026-02-30 00:00:00+00", &mut out).is_err());
    assert!(write_json(&PgType::Timestamp, b"2026-01-01 24:00:00", &mut out).is_err());
    assert!(write_json(&PgType::Date, b"2026-1-01", &mut out).is_err());
    assert_eq!(out, b"keep");
}

#[test]
fn bool_t_and_f() {
    assert_eq!(ok(&PgType::Bool, "t"), json!(true));
    assert_eq!(ok(&PgType::Bool, "f"), json!(false));
    for t in ["", "true", "T", "1", "t "] {
        bad(&PgType::Bool, t);
    }
}

#[test]
fn text_like_types_are_strings() {
    for ty in [PgType::Text, PgType::Other] {
        for t in [
            "",
            "hello",
            "NULL",
            "héllo wörld ✓ 🌍 日本語",
            "a\"b\\c,{d}",
            "550e8400-e29b-41d4-a716-446655440000",
            "192.168.0.1/24",
            "08:00:2b:01:02:03",
        ] {
            assert_eq!(ok(&ty, t), json!(t));
        }
    }
}

#[test]
fn invalid_utf8_is_an_error() {
    for ty in [PgType::Text, PgType::Other] {
        let e = to_json(&ty, b"ab\xffcd").unwrap_err();
        assert!(matches!(e, ValueError::NotUtf8 { at: 2, .. }), "{e}");
    }
    assert!(to_json(&PgType::Json, b"\"\xff\"").is_err());
    assert!(to_json(&arr(PgType::Text), b"{a,\xff}").is_err());
    assert!(to_json(&PgType::Int, b"\xff").is_err());
}

#[test]
fn time_timetz_interval_stay_text() {
    let ty = builtin_type(1083).unwrap();
    assert_eq!(ok(&ty, "10:15:30.123456"), json!("10:15:30.123456"));
    let ty = builtin_type(1266).unwrap();
    assert_eq!(ok(&ty, "10:15:30+05:30"), json!("10:15:30+05:30"));
    let ty = builtin_type(1186).unwrap();
    let t = "1 year 2 mons 3 days 04:05:06.5";
    assert_eq!(ok(&ty, t), json!(t));
    assert_eq!(ok(&ty, "-00:00:01"), json!("-00:00:01"));
}

#[test]
fn json_is_embedded_not_stringified() {
    let ty = PgType::Json;
    let v = ok(&ty, r#"{"a": [1, {"b": null}, [[]]], "c": "x", "d": true}"#);
    assert_eq!(v, json!({"a": [1, {"b": null}, [[]]], "c": "x", "d": true}));
    assert_eq!(ok(&ty, "null"), Value::Null);
    assert_eq!(ok(&ty, r#""s""#), json!("s"));
    assert_eq!(ok(&ty, "[]"), json!([]));
    // Key order as printed (preserve_order).
    assert_eq!(ser(&ty, r#"{"z": 1, "a": 2}"#), r#"{"z":1,"a":2}"#);
    // Huge and precise numbers stay exact.
    assert_eq!(
        ser(
            &ty,
            r#"{"n": 123456789012345678901234567890, "f": 0.1000000000000000000001, "x": 1.0}"#
        ),
        r#"{"n":123456789012345678901234567890,"f":0.1000000000000000000001,"x":1.0}"#
    );
    assert_eq!(
        ser(&ty, "-123456789012345678901234567890"),
        "-123456789012345678901234567890"
    );
    for t in ["", "{", "{'a': 1}", "[1,]", "nul", "{} x"] {
        assert!(matches!(bad(&ty, t), ValueError::Json { .. }));
    }
}

#[test]
fn jsonb_is_copied_as_printed() {
    let text = br#"{"k": 1, "tags": ["a", "b"], "n": 123456789012345678901234567890.50}"#;
    let mut out = Vec::new();
    write_json(&PgType::Jsonb, text, &mut out).expect("jsonb");
    assert_eq!(out, text);
    // Not UTF-8 (a SQL_ASCII database passes bytes through): refused,
    // `out` untouched, for json and jsonb.
    for ty in [PgType::Jsonb, PgType::Json] {
        assert!(write_json(&ty, b"\"\xff\"", &mut out).is_err());
        assert!(write_json(&ty, b"{\"a\": \"\xc3\"}", &mut out).is_err());
        assert_eq!(out, text);
    }
}

#[test]
fn json_nesting_beyond_recursion_limit_is_an_error() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(matches!(bad(&PgType::Json, &deep), ValueError::Json { .. }));
    let ok_depth = format!("{}{}", "[".repeat(100), "]".repeat(100));
    assert!(to_json(&PgType::Json, ok_depth.as_bytes()).is_ok());
}

#[test]
fn error_text_is_truncated() {
    let long = "x".repeat(1000);
    let e = bad(&PgType::Int, &long);
    let ValueError::Invalid { ty, text, reason } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(*ty, "integer");
    assert_eq!(text.chars().count(), SNIPPET_CHARS + 1);
    assert!(text.ends_with('…'));
    assert_eq!(*reason, "expected an integer");
    let e = bad(&PgType::Int, &"é".repeat(200));
    let ValueError::Invalid { text, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(text.chars().count(), SNIPPET_CHARS + 1);
    assert_eq!(snippet(b"short"), "short");
    assert_eq!(snippet(b"\xff"), "\u{fffd}");
}

// -----------------------------------------------------------------------
// Properties

fn leaf_type() -> impl Strategy<Value = PgType> {
    prop_oneof![
        Just(PgType::Bool),
        Just(PgType::Int),
        Just(PgType::Float),
        Just(PgType::Numeric),
        Just(PgType::Money),
        Just(PgType::Text),
        Just(PgType::Json),
        Just(PgType::Jsonb),
        Just(PgType::Bytea),
        Just(PgType::Date),
        Just(PgType::Timestamp),
        Just(PgType::Timestamptz),
        Just(PgType::Other),
    ]
}

fn any_type() -> impl Strategy<Value = PgType> {
    leaf_type().prop_recursive(3, 8, 1, |inner| {
        (inner, prop_oneof![Just(b','), Just(b';'), any::<u8>()]).prop_map(|(elem, delim)| {
            PgType::Array {
                elem: Box::new(elem),
                delim,
            }
        })
    })
}

/// Arbitrary bytes, and bytes drawn from the characters the parsers
/// care about (so the deep paths get exercised too).
fn any_text() -> impl Strategy<Value = Vec<u8>> {
    const ALPHABET: &[u8] = b"{}[]\"\\,; \t:=-+.0123456789eEtfxNULnaIy$TZBC\xff\xc3\xa9";
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        proptest::collection::vec(proptest::sample::select(ALPHABET), 0..200),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics(ty in any_type(), text in any_text()) {
        let _ = to_json(&ty, &text);
    }

    #[test]
    fn never_panics_on_every_leaf_type(text in any_text()) {
        for ty in [
            PgType::Bool, PgType::Int, PgType::Float, PgType::Numeric, PgType::Money,
            PgType::Text, PgType::Json, PgType::Bytea, PgType::Date, PgType::Timestamp,
            PgType::Timestamptz, PgType::Other, arr(PgType::Text), arr(PgType::Json),
        ] {
            let _ = to_json(&ty, &text);
        }
    }
}
