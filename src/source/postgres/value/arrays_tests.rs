use super::*;
use crate::source::postgres::value::test_support::*;

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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

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
}
