use super::*;

#[test]
fn json_strings_are_escaped_as_serde_json_escapes_them() {
    let mut cases: Vec<String> = vec![
        String::new(),
        "plain ascii, longer than one word".into(),
        "\"quoted\" and \\ back\\slash".into(),
        "tab\tnew\nline\rcr\u{8}\u{c}\u{1}\u{1f}\u{7f} end".into(),
        "ünïcödé — 日本語 \u{10ffff}\"".into(),
    ];
    // Every byte position within and across 8-byte words.
    for pos in 0..20 {
        for special in ['"', '\\', '\n', '\u{0}', '\u{1f}', ' ', '~', 'é'] {
            let mut s: String = "abcdefghijklmnopqrstu".chars().take(pos).collect();
            s.push(special);
            s.push_str("xyz0123456789");
            cases.push(s);
        }
    }
    for s in cases {
        let mut out = Vec::new();
        write_json_string(&s, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(&s).unwrap(),
            "{s:?}"
        );
    }
}

proptest::proptest! {
    #[test]
    fn any_string_is_escaped_as_serde_json_escapes_it(s in "\\PC*|[\\x00-\\x7f]*") {
        let mut out = Vec::new();
        write_json_string(&s, &mut out);
        proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&s).unwrap());
    }
}

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
use proptest::prelude::*;
use serde_json::json;

fn ok(ty: &PgType, text: &str) -> Value {
    match to_json(ty, text.as_bytes()) {
        Ok(v) => v,
        Err(e) => panic!("{ty:?} {text:?}: {e}"),
    }
}

/// The serialized JSON, to check exact digits.
fn ser(ty: &PgType, text: &str) -> String {
    serde_json::to_string(&ok(ty, text)).unwrap()
}

fn bad(ty: &PgType, text: &str) -> ValueError {
    match to_json(ty, text.as_bytes()) {
        Ok(v) => panic!("{ty:?} {text:?} unexpectedly gave {v}"),
        Err(e) => e,
    }
}

fn arr(elem: PgType) -> PgType {
    PgType::Array {
        elem: Box::new(elem),
        delim: b',',
    }
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
fn int_edges_are_exact() {
    let ty = PgType::Int;
    for t in [
        "0",
        "1",
        "-1",
        "32767",
        "-32768",
        "2147483647",
        "-2147483648",
    ] {
        assert_eq!(ser(&ty, t), t);
    }
    assert_eq!(ser(&ty, &i64::MAX.to_string()), i64::MAX.to_string());
    assert_eq!(ser(&ty, &i64::MIN.to_string()), i64::MIN.to_string());
    assert_eq!(ok(&ty, &i64::MIN.to_string()).as_i64(), Some(i64::MIN));
    // xid8 and oid are unsigned.
    assert_eq!(ok(&ty, &u64::MAX.to_string()).as_u64(), Some(u64::MAX));
    assert_eq!(ser(&ty, "4294967295"), "4294967295");
    // Beyond 64 bits stays exact.
    assert_eq!(ser(&ty, "-18446744073709551617"), "-18446744073709551617");
    assert_eq!(
        ser(&ty, "123456789012345678901234567890"),
        "123456789012345678901234567890"
    );
}

#[test]
fn int_rejects_non_integers() {
    for t in [
        "", "-", "+1", "01", "-01", " 1", "1 ", "1.0", "1e3", "0x10", "NaN", "١",
    ] {
        let e = bad(&PgType::Int, t);
        assert!(
            matches!(e, ValueError::Invalid { ty: "integer", .. }),
            "{e}"
        );
    }
}

#[test]
fn float_keeps_printed_digits() {
    let ty = PgType::Float;
    for t in [
        "1.1",
        "0",
        "-0",
        "100",
        "1e-07",
        "1.5e+20",
        "-2.5e-308",
        "3.4028235e+38",
        "1.7976931348623157e+308",
        "5e-324",
        "0.30000000000000004",
        "123456789012345680000",
    ] {
        assert_eq!(ser(&ty, t), t);
    }
    assert_eq!(ok(&ty, "1.1").as_f64(), Some(1.1));
    assert_eq!(ok(&ty, "-0").as_f64(), Some(-0.0));
}

#[test]
fn float_specials_are_strings() {
    for t in ["NaN", "Infinity", "-Infinity"] {
        assert_eq!(ok(&PgType::Float, t), json!(t));
    }
    for t in [
        "", "nan", "inf", "+1", "1.", ".5", "1e", "1e+", "01", "1,5", "--1",
    ] {
        bad(&PgType::Float, t);
    }
}

#[test]
fn numeric_is_an_exact_string() {
    let ty = PgType::Numeric;
    let forty = "1234567890123456789012345678901234567890";
    assert_eq!(ok(&ty, forty), json!(forty));
    let t = "-9876543210987654321098765432109876543210.0000000000000000000001";
    assert_eq!(ok(&ty, t), json!(t));
    for t in [
        "0",
        "-1.50",
        "123.4500",
        "0.000000001",
        "NaN",
        "Infinity",
        "-Infinity",
    ] {
        assert_eq!(ok(&ty, t), json!(t));
    }
    for t in ["", "-", "1e5", "1.", ".5", "+1", "nan", "1.2.3", " 1"] {
        bad(&ty, t);
    }
}

#[test]
fn money_drops_symbol_and_grouping() {
    let ty = PgType::Money;
    assert_eq!(ok(&ty, "$1,234.56"), json!("1234.56"));
    assert_eq!(ok(&ty, "-$1,234.56"), json!("-1234.56"));
    assert_eq!(ok(&ty, "$0.00"), json!("0.00"));
    assert_eq!(ok(&ty, "-$0.01"), json!("-0.01"));
    assert_eq!(ok(&ty, "$999.99"), json!("999.99"));
    assert_eq!(
        ok(&ty, "$92,233,720,368,547,758.07"),
        json!("92233720368547758.07")
    );
    assert_eq!(
        ok(&ty, "-$92,233,720,368,547,758.08"),
        json!("-92233720368547758.08")
    );
    for t in [
        "",
        "$",
        "1.00",
        "$1,23.00",
        "$1234,567.00",
        "$,123.00",
        "$1.",
        "€1.00",
        "$1.2a",
        "--$1.00",
    ] {
        bad(&ty, t);
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
fn bytea_is_base64() {
    let ty = PgType::Bytea;
    assert_eq!(ok(&ty, "\\x"), json!(""));
    assert_eq!(ok(&ty, "\\x0a0b"), json!("Cgs="));
    assert_eq!(ok(&ty, "\\x00"), json!("AA=="));
    assert_eq!(ok(&ty, "\\xDEADbeef"), json!("3q2+7w=="));
    let all: Vec<u8> = (0..=255).collect();
    let hex: String = all.iter().map(|b| format!("{b:02x}")).collect();
    let want = base64::engine::general_purpose::STANDARD.encode(&all);
    assert_eq!(ok(&ty, &format!("\\x{hex}")), json!(want));
    for t in [
        "", "\\x0", "\\xzz", "\\x0g", "abc", "\\001", "\\X00", "\\x 00",
    ] {
        bad(&ty, t);
    }
}

#[test]
fn date_forms() {
    let ty = PgType::Date;
    for t in [
        "2026-11-22",
        "0001-01-01",
        "2024-02-29",
        "infinity",
        "-infinity",
        "0044-03-15 BC",
        "0001-02-29 BC", // 1 BC is a leap year
        "4713-11-24 BC",
        "5874897-12-31",
    ] {
        assert_eq!(ok(&ty, t), json!(t));
    }
    for t in [
        "",
        "2026-13-01",
        "2026-00-10",
        "2026-02-29",
        "2026-04-31",
        "0000-01-01",
        "26-01-01",
        "2026-1-01",
        "2026-01-01 AD",
        "2026-01-01 ",
    ] {
        bad(&ty, t);
    }
}

#[test]
fn timestamp_forms() {
    let ty = PgType::Timestamp;
    assert_eq!(
        ok(&ty, "2026-11-22 10:15:30.123456"),
        json!("2026-11-22T10:15:30.123456")
    );
    assert_eq!(ok(&ty, "2026-11-22 10:15:30"), json!("2026-11-22T10:15:30"));
    assert_eq!(
        ok(&ty, "2026-11-22 00:00:00.5"),
        json!("2026-11-22T00:00:00.5")
    );
    assert_eq!(
        ok(&ty, "294276-12-31 23:59:59.999999"),
        json!("294276-12-31T23:59:59.999999")
    );
    for t in [
        "infinity",
        "-infinity",
        "0044-03-15 10:00:00 BC",
        "4714-11-24 00:00:00.25 BC",
    ] {
        assert_eq!(ok(&ty, t), json!(t));
    }
    for t in [
        "",
        "2026-11-22",
        "2026-11-22T10:15:30",
        "2026-11-22 24:00:00",
        "2026-11-22 10:60:00",
        "2026-11-22 10:15:30.",
        "2026-11-22 10:15:30+00",
        "2026-11-31 10:15:30",
    ] {
        bad(&ty, t);
    }
}

#[test]
fn timestamptz_utc_becomes_z() {
    let ty = PgType::Timestamptz;
    assert_eq!(
        ok(&ty, "2026-11-22 10:15:30.123456+00"),
        json!("2026-11-22T10:15:30.123456Z")
    );
    assert_eq!(
        ok(&ty, "2026-11-22 10:15:30+00"),
        json!("2026-11-22T10:15:30Z")
    );
    assert_eq!(
        ok(&ty, "2026-11-22 10:15:30+00:00"),
        json!("2026-11-22T10:15:30Z")
    );
    for t in ["infinity", "-infinity", "0044-03-15 10:00:00+00 BC"] {
        assert_eq!(ok(&ty, t), json!(t));
    }
}

#[test]
fn timestamptz_offsets_convert_to_utc() {
    let ty = PgType::Timestamptz;
    let cases = [
        (
            "2026-11-22 10:15:30.123456+05:30",
            "2026-11-22T04:45:30.123456Z",
        ),
        ("2026-11-22 10:15:30-08", "2026-11-22T18:15:30Z"),
        ("2026-11-22 20:15:30.5-08", "2026-11-23T04:15:30.5Z"),
        ("2026-11-22 10:15:30+05:30:15", "2026-11-22T04:45:15Z"),
        ("1883-11-18 12:00:00-04:56:02", "1883-11-18T16:56:02Z"),
        ("2027-01-01 02:00:00+05", "2026-12-31T21:00:00Z"),
        ("2026-12-31 23:00:00-02", "2027-01-01T01:00:00Z"),
        ("2024-03-01 01:00:00+02", "2024-02-29T23:00:00Z"),
        ("2023-03-01 01:00:00+02", "2023-02-28T23:00:00Z"),
        ("2024-02-29 23:30:00-01", "2024-03-01T00:30:00Z"),
        (
            "2000-01-01 00:00:00.000001+14",
            "1999-12-31T10:00:00.000001Z",
        ),
    ];
    for (t, want) in cases {
        assert_eq!(ok(&ty, t), json!(want), "{t}");
    }
    // A UTC instant before year 1 keeps the Postgres text.
    assert_eq!(
        ok(&ty, "0001-01-01 01:00:00+05"),
        json!("0001-01-01 01:00:00+05")
    );
    for t in [
        "",
        "2026-11-22 10:15:30",
        "2026-11-22 10:15:30+5",
        "2026-11-22 10:15:30+05:60",
        "2026-11-22 10:15:30 +00",
        "2026-11-22 10:15:30+00 AD",
    ] {
        bad(&ty, t);
    }
}

#[test]
fn int_array_two_dimensional_with_nulls() {
    let ty = builtin_type(1007).unwrap();
    assert_eq!(ok(&ty, "{{1,NULL},{3,4}}"), json!([[1, null], [3, 4]]));
    assert_eq!(ok(&ty, "{1,2,3}"), json!([1, 2, 3]));
    assert_eq!(ok(&ty, "{null,Null}"), json!([null, null]));
    assert_eq!(ok(&ty, "{}"), json!([]));
    assert_eq!(ok(&ty, " { 1 , 2 } "), json!([1, 2]));
    assert_eq!(ok(&ty, "{ {1 ,2} , {3, 4 } }"), json!([[1, 2], [3, 4]]));
    let ty = builtin_type(1016).unwrap();
    assert_eq!(
        ser(&ty, "{-9223372036854775808,9223372036854775807}"),
        "[-9223372036854775808,9223372036854775807]"
    );
}

#[test]
fn text_array_quoting() {
    let ty = builtin_type(1009).unwrap();
    let v = ok(
        &ty,
        r#"{plain,"with space","a,b","{braces}","quote\"d","back\\slash",NULL,"NULL","null","",ünï,"\\\"",x\yz}"#,
    );
    assert_eq!(
        v,
        json!([
            "plain",
            "with space",
            "a,b",
            "{braces}",
            "quote\"d",
            "back\\slash",
            null,
            "NULL",
            "null",
            "",
            "ünï",
            "\\\"",
            "xyz"
        ])
    );
    // array_in's rules: trimmed unquoted whitespace, kept quoted or
    // escaped whitespace, mixed quoted and unquoted parts.
    assert_eq!(
        ok(&ty, r#"{  a b  ," c ", d\ ,a"b c"d}"#),
        json!(["a b", " c ", "d ", "ab cd"])
    );
    assert_eq!(ok(&ty, r#"{"a" , "b"}"#), json!(["a", "b"]));
    assert_eq!(
        ok(&ty, r#"{\NULL,NUL\L,"NULL" }"#),
        json!(["NULL", "NULL", "NULL"])
    );
    assert_eq!(
        ok(&ty, "{{a,b},{c,NULL}}"),
        json!([["a", "b"], ["c", null]])
    );
}

#[test]
fn array_decoration_is_dropped() {
    let ty = builtin_type(1007).unwrap();
    assert_eq!(ok(&ty, "[0:1]={1,2}"), json!([1, 2]));
    assert_eq!(ok(&ty, "[-3:-2]={1,2}"), json!([1, 2]));
    assert_eq!(ok(&ty, "[1:2][1:1]={{1},{2}}"), json!([[1], [2]]));
    assert_eq!(ok(&ty, "[2][0:0] = {{1},{2}}"), json!([[1], [2]]));
    for t in [
        "[0:2]={1,2}",
        "[1:2]={{1},{2}}",
        "[1:0]={}",
        "[1:1]={}",
        "[0:1={1,2}",
        "[0:1]{1,2}",
        "[a:1]={1}",
        "[99999999999999999999:1]={1}",
    ] {
        assert!(matches!(bad(&ty, t), ValueError::Array { .. }), "{t}");
    }
}

#[test]
fn array_element_types() {
    let jsonb = builtin_type(3807).unwrap();
    assert_eq!(
        ok(
            &jsonb,
            r#"{"{\"a\": [1, 2]}","[1, {\"b\": null}]",NULL,"null",5,"\"s\""}"#
        ),
        json!([{"a": [1, 2]}, [1, {"b": null}], null, null, 5, "s"])
    );
    assert_eq!(
        ser(
            &builtin_type(199).unwrap(),
            r#"{123456789012345678901234567890}"#
        ),
        "[123456789012345678901234567890]"
    );
    let ts = builtin_type(1185).unwrap();
    assert_eq!(
        ok(
            &ts,
            r#"{"2026-11-22 10:15:30+00","2026-11-22 10:15:30.5+05:30",infinity}"#
        ),
        json!(["2026-11-22T10:15:30Z", "2026-11-22T04:45:30.5Z", "infinity"])
    );
    assert_eq!(
        ok(&builtin_type(1115).unwrap(), r#"{"2026-11-22 10:15:30"}"#),
        json!(["2026-11-22T10:15:30"])
    );
    assert_eq!(
        ok(
            &builtin_type(1182).unwrap(),
            "{2026-11-22,\"0044-03-15 BC\"}"
        ),
        json!(["2026-11-22", "0044-03-15 BC"])
    );
    assert_eq!(
        ok(&builtin_type(1001).unwrap(), r#"{"\\x0a0b","\\x",NULL}"#),
        json!(["Cgs=", "", null])
    );
    assert_eq!(
        ok(&builtin_type(1000).unwrap(), "{t,f,NULL}"),
        json!([true, false, null])
    );
    assert_eq!(
        ser(&builtin_type(1021).unwrap(), "{1.1,NaN,-Infinity,1e-07}"),
        r#"[1.1,"NaN","-Infinity",1e-07]"#
    );
    assert_eq!(
        ok(&builtin_type(1231).unwrap(), "{1.50,NaN}"),
        json!(["1.50", "NaN"])
    );
    assert_eq!(
        ok(&builtin_type(791).unwrap(), r#"{"$1,234.56","-$0.50"}"#),
        json!(["1234.56", "-0.50"])
    );
    assert_eq!(
        ok(
            &builtin_type(2951).unwrap(),
            "{550e8400-e29b-41d4-a716-446655440000}"
        ),
        json!(["550e8400-e29b-41d4-a716-446655440000"])
    );
    assert_eq!(
        ok(
            &builtin_type(1187).unwrap(),
            r#"{"1 day 02:00:00",00:00:01}"#
        ),
        json!(["1 day 02:00:00", "00:00:01"])
    );
}

#[test]
fn box_array_uses_semicolon() {
    let ty = builtin_type(1020).unwrap();
    assert_eq!(
        ok(&ty, "{(1,1),(0,0);(3,3),(2,2)}"),
        json!(["(1,1),(0,0)", "(3,3),(2,2)"])
    );
    // With ';' as delimiter, a ',' is ordinary text.
    let ty = PgType::Array {
        elem: Box::new(PgType::Text),
        delim: b';',
    };
    assert_eq!(ok(&ty, r#"{a,b;"c;d"}"#), json!(["a,b", "c;d"]));
}

#[test]
fn array_of_domain_over_array_nests() {
    let ty = arr(arr(PgType::Int));
    assert_eq!(
        ok(&ty, r#"{"{1,2}","{3}",NULL}"#),
        json!([[1, 2], [3], null])
    );
}

#[test]
fn array_dimension_limit() {
    let ty = arr(PgType::Int);
    let six = format!("{}1{}", "{".repeat(6), "}".repeat(6));
    assert_eq!(ok(&ty, &six), json!([[[[[[1]]]]]]));
    let seven = format!("{}1{}", "{".repeat(7), "}".repeat(7));
    assert!(matches!(bad(&ty, &seven), ValueError::Array { .. }));
    let deep = "{".repeat(100_000);
    assert!(matches!(bad(&ty, &deep), ValueError::Array { .. }));
}

#[test]
fn malformed_arrays_are_errors() {
    let ty = arr(PgType::Text);
    for t in [
        "",
        "1,2",
        "{",
        "{1,2",
        "{1,,2}",
        "{1,}",
        "{,1}",
        "{{1},2}",
        "{1,{2}}",
        "{{1,2},{3}}",
        "{{1},{}}",
        "{1} x",
        "{1}}",
        r#"{"a}"#,
        r#"{a\"#,
        "{a{b}",
        "{{{1}},{2}}",
        "[1:1]",
        "{1 2\"x}",
    ] {
        assert!(matches!(bad(&ty, t), ValueError::Array { .. }), "{t}");
    }
}

#[test]
fn element_errors_name_the_element() {
    let e = bad(&arr(PgType::Int), "{1,x2}");
    match &e {
        ValueError::Element { at, source, .. } => {
            assert_eq!(*at, 3);
            assert!(matches!(
                **source,
                ValueError::Invalid { ty: "integer", .. }
            ));
        }
        other => panic!("{other:?}"),
    }
    let msg = e.to_string();
    assert!(msg.contains("{1,x2}") && msg.contains("\"x2\""), "{msg}");
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

#[test]
fn builtin_types() {
    use PgType::*;
    let cases = [
        (16, Bool),
        (17, Bytea),
        (20, Int),
        (21, Int),
        (23, Int),
        (26, Int),
        (28, Int),
        (5069, Int),
        (700, Float),
        (701, Float),
        (1700, Numeric),
        (790, Money),
        (25, Text),
        (1043, Text),
        (1042, Text),
        (18, Text),
        (19, Text),
        (2950, Text),
        (869, Text),
        (650, Text),
        (829, Text),
        (774, Text),
        (142, Text),
        (114, Json),
        (3802, Jsonb),
        (1082, Date),
        (1114, Timestamp),
        (1184, Timestamptz),
        (1083, Other),
        (1266, Other),
        (1186, Other),
        (22, Other),
        (30, Other),
        (603, Other),
        (3904, Other),
    ];
    for (oid, want) in cases {
        assert_eq!(builtin_type(oid), Some(want.clone()), "oid {oid}");
    }
    let arrays = [
        (1000, Bool),
        (1001, Bytea),
        (1005, Int),
        (1007, Int),
        (1016, Int),
        (1028, Int),
        (1009, Text),
        (1015, Text),
        (1014, Text),
        (2951, Text),
        (1041, Text),
        (199, Json),
        (3807, Jsonb),
        (1021, Float),
        (1022, Float),
        (1231, Numeric),
        (791, Money),
        (1182, Date),
        (1115, Timestamp),
        (1185, Timestamptz),
        (1183, Other),
        (1187, Other),
        (1006, Other),
    ];
    for (oid, elem) in arrays {
        assert_eq!(builtin_type(oid), Some(arr(elem)), "oid {oid}");
    }
    assert_eq!(
        builtin_type(1020),
        Some(PgType::Array {
            elem: Box::new(Other),
            delim: b';'
        })
    );
    for oid in [0, 1, 16384, 16385, 99999, u32::MAX] {
        assert_eq!(builtin_type(oid), None, "oid {oid}");
    }
}

#[test]
fn civil_day_arithmetic_round_trips() {
    for days in (-3_000_000..110_000_000i64).step_by(997) {
        let (y, m, d) = civil_from_days(days);
        assert_eq!(days_from_civil(y, m, d), days);
        assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
    }
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(civil_from_days(-1), (1969, 12, 31));
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

/// Quotes an element the way array_out does.
fn pg_quote(s: &str, delim: u8, out: &mut String) {
    let needs = s.is_empty()
        || s.eq_ignore_ascii_case("NULL")
        || s.bytes()
            .any(|b| matches!(b, b'{' | b'}' | b'"' | b'\\') || b == delim || is_array_space(b));
    if !needs {
        out.push_str(s);
        return;
    }
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

fn pg_text_array(items: &[Option<String>], delim: u8) -> String {
    let mut out = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(char::from(delim));
        }
        match item {
            None => out.push_str("NULL"),
            Some(s) => pg_quote(s, delim, &mut out),
        }
    }
    out.push('}');
    out
}

fn element_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9{}\",;\\\\ \t\n]{0,8}",
        "(?i)null",
        Just(String::new()),
    ]
}

/// Rust's `1.5e20` in Postgres' style: `1.5e+20` (signed, at least two
/// exponent digits).
fn pg_exp(rust: String) -> String {
    let (mantissa, exp) = rust.split_once('e').unwrap();
    let exp: i32 = exp.parse().unwrap();
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
}

/// Postgres' timestamptz offset form: ±HH, ±HH:MM or ±HH:MM:SS.
fn pg_offset(secs: i32) -> String {
    let sign = if secs < 0 { '-' } else { '+' };
    let a = secs.unsigned_abs();
    let (h, m, s) = (a / 3600, a / 60 % 60, a % 60);
    match (m, s) {
        (0, 0) => format!("{sign}{h:02}"),
        (_, 0) => format!("{sign}{h:02}:{m:02}"),
        _ => format!("{sign}{h:02}:{m:02}:{s:02}"),
    }
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

    #[test]
    fn text_array_round_trips(
        items in proptest::collection::vec(proptest::option::of(element_string()), 0..8),
        delim in prop_oneof![Just(b','), Just(b';')],
    ) {
        let literal = pg_text_array(&items, delim);
        let ty = PgType::Array { elem: Box::new(PgType::Text), delim };
        let want = Value::Array(items.iter().map(|i| i.as_ref().map_or(Value::Null, |s| json!(s))).collect());
        prop_assert_eq!(to_json(&ty, literal.as_bytes()), Ok(want), "{}", literal);
    }

    #[test]
    fn int_2d_array_round_trips(
        rows in (1usize..4, 1usize..4).prop_flat_map(|(r, c)| {
            proptest::collection::vec(proptest::collection::vec(proptest::option::of(any::<i64>()), c), r)
        }),
        lower in proptest::option::of((-5i64..5, -5i64..5)),
    ) {
        let mut literal = String::new();
        if let Some((l1, l2)) = lower {
            literal = format!("[{}:{}][{}:{}]=", l1, l1 + rows.len() as i64 - 1, l2, l2 + rows[0].len() as i64 - 1);
        }
        let fmt = |r: &Vec<Option<i64>>| {
            r.iter().map(|v| v.map_or("NULL".to_string(), |n| n.to_string())).collect::<Vec<_>>().join(",")
        };
        literal.push_str(&format!("{{{}}}", rows.iter().map(|r| format!("{{{}}}", fmt(r))).collect::<Vec<_>>().join(",")));
        let want = json!(rows);
        prop_assert_eq!(to_json(&arr(PgType::Int), literal.as_bytes()), Ok(want), "{}", literal);
    }

    #[test]
    fn ints_are_exact(n in any::<i64>(), u in any::<u64>()) {
        prop_assert_eq!(ser(&PgType::Int, &n.to_string()), n.to_string());
        prop_assert_eq!(ser(&PgType::Int, &u.to_string()), u.to_string());
    }

    #[test]
    fn floats_keep_digits(f in any::<f64>().prop_filter("finite", |f| f.is_finite()), single in any::<f32>().prop_filter("finite", |f| f.is_finite())) {
        for text in [pg_exp(format!("{f:e}")), format!("{f}"), pg_exp(format!("{single:e}"))] {
            let v = to_json(&PgType::Float, text.as_bytes()).unwrap();
            prop_assert_eq!(serde_json::to_string(&v).unwrap(), text.clone());
        }
        let v = to_json(&PgType::Float, pg_exp(format!("{f:e}")).as_bytes()).unwrap();
        prop_assert_eq!(v.as_f64(), Some(f));
        let v = to_json(&PgType::Float, pg_exp(format!("{single:e}")).as_bytes()).unwrap();
        prop_assert_eq!(v.as_f64().map(|x| x as f32), Some(single));
    }

    #[test]
    fn bytea_matches_base64(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let want = base64::engine::general_purpose::STANDARD.encode(&bytes);
        prop_assert_eq!(to_json(&PgType::Bytea, format!("\\x{hex}").as_bytes()), Ok(json!(want)));
    }

    #[test]
    fn timestamptz_matches_chrono(
        secs in -62_135_596_800i64 + 86_400..253_402_300_799 - 86_400,
        micros in 0u32..1_000_000,
        offset in -(16 * 3600 - 1)..16 * 3600i32,
    ) {
        use chrono::{DateTime, FixedOffset, SecondsFormat};
        let utc = DateTime::from_timestamp(secs, micros * 1000).unwrap();
        let local = utc.with_timezone(&FixedOffset::east_opt(offset).unwrap());
        let mut frac = format!("{:06}", micros);
        while frac.ends_with('0') {
            frac.pop();
        }
        let dot = if frac.is_empty() { "" } else { "." };
        let text = format!("{}{dot}{frac}{}", local.format("%Y-%m-%d %H:%M:%S"), pg_offset(offset));
        let want = format!("{}{dot}{frac}Z", utc.to_rfc3339_opts(SecondsFormat::Secs, true).trim_end_matches('Z'));
        prop_assert_eq!(to_json(&PgType::Timestamptz, text.as_bytes()), Ok(json!(want)), "{}", text);
    }
}
