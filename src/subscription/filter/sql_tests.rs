use super::*;
use crate::subscription::filter::test_support::*;

const fn col(name: &'static str, type_name: &'static str) -> PushedColumn<'static> {
    PushedColumn {
        name,
        type_name,
        visible: true,
    }
}

const COLUMNS: &[PushedColumn<'static>] = &[
    col("id", "bigint"),
    col("qty", "integer"),
    col("small", "smallint"),
    col("total", "numeric(10,2)"),
    col("amount", "numeric"),
    col("status", "text"),
    col("code", "character varying(20)"),
    col("label", "character varying"),
    col("pad", "character(4)"),
    col("vip", "boolean"),
    col("meta", "jsonb"),
    col("doc", "json"),
    col("uid", "uuid"),
    col("paid_at", "timestamp(3) with time zone"),
    col("ratio", "double precision"),
    col("tags", "text[]"),
    col("mood", "mood"),
    col("jdom", "public.jsonb_domain"),
    col("we\"ird", "integer"),
    PushedColumn {
        name: "secret",
        type_name: "text",
        visible: false,
    },
];

/// The pushdown of `f` with parameters from `$3`, as (sql, params).
fn push(f: Value) -> Option<(String, Vec<String>)> {
    filter(f).pushdown(COLUMNS, 3).map(|p| (p.sql, p.params))
}

fn push_cmp(field: &str, op: &str, value: Value) -> Option<(String, Vec<String>)> {
    push(json!({"field": field, "op": op, "value": value}))
}

fn pushed(sql: &str, params: &[&str]) -> Option<(String, Vec<String>)> {
    Some((
        sql.to_owned(),
        params.iter().map(|p| (*p).to_owned()).collect(),
    ))
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

// --- numbers ---------------------------------------------------------

#[test]
fn integer_columns_compare_as_exact_numerics() {
    assert_eq!(
        push_cmp("qty", "eq", json!(3)),
        pushed(r#""qty"::numeric = $3::text::numeric"#, &["3"])
    );
    // A numeric string compares as its decimal, as the filter does.
    assert_eq!(
        push_cmp("new.id", "eq", json!("7.0")),
        pushed(r#""id"::numeric = $3::text::numeric"#, &["7.0"])
    );
    assert_eq!(
        push_cmp("small", "eq", json!("-.5e1")),
        pushed(r#""small"::numeric = $3::text::numeric"#, &["-.5e1"])
    );
    // The number's text as written, never through f64.
    assert_eq!(
        push(
            serde_json::from_str(
                r#"{"field":"id","op":"eq","value":12345678901234567890.000000000000000001}"#
            )
            .unwrap()
        ),
        pushed(
            r#""id"::numeric = $3::text::numeric"#,
            &["12345678901234567890.000000000000000001"]
        )
    );
    for (op, sql) in [("lt", "<"), ("lte", "<="), ("gt", ">"), ("gte", ">=")] {
        assert_eq!(
            push_cmp("qty", op, json!(5)),
            pushed(
                &format!(r#""qty"::numeric {sql} $3::text::numeric"#),
                &["5"]
            )
        );
        // No NaN or infinity in an integer column: a string value too.
        assert_eq!(
            push_cmp("qty", op, json!("5")),
            pushed(
                &format!(r#""qty"::numeric {sql} $3::text::numeric"#),
                &["5"]
            )
        );
    }
}

#[test]
fn numeric_columns_let_nan_and_infinities_through_order_against_strings() {
    assert_eq!(
        push_cmp("total", "eq", json!("150.00")),
        pushed(r#""total"::numeric = $3::text::numeric"#, &["150.00"])
    );
    // Against a number, the filter never orders "NaN" (a plain string).
    assert_eq!(
        push_cmp("total", "gte", json!(100)),
        pushed(r#""total"::numeric >= $3::text::numeric"#, &["100"])
    );
    // Against a numeric string, it orders "NaN", "Infinity" and
    // "-Infinity" byte-wise: they are let through.
    assert_eq!(
        push_cmp("amount", "gt", json!("-5")),
        pushed(
            r#"("amount"::numeric > $3::text::numeric OR "amount"::text IN ('NaN', 'Infinity', '-Infinity'))"#,
            &["-5"]
        )
    );
    // eq "NaN" matches a NaN (as strings): not a number, not pushed.
    assert_eq!(push_cmp("amount", "eq", json!("NaN")), None);
    assert_eq!(push_cmp("amount", "gt", json!("Infinity")), None);
}

#[test]
fn only_numbers_postgres_accepts_are_pushed() {
    for ok in [
        "1e1000",
        "1E-1000",
        "1e+1000",
        "1e0001000",
        "-0",
        "+3.",
        ".5",
    ] {
        assert_eq!(
            push_cmp("amount", "eq", json!(ok)),
            pushed(r#""amount"::numeric = $3::text::numeric"#, &[ok]),
            "{ok}"
        );
    }
    for refused in ["1e1001", "1e-1001", "1e1000000", "5e-999999"] {
        assert_eq!(push_cmp("amount", "eq", json!(refused)), None, "{refused}");
        assert_eq!(push_cmp("qty", "lt", json!(refused)), None, "{refused}");
    }
    let json_number: Value =
        serde_json::from_str(r#"{"field":"qty","op":"gt","value":1e1001}"#).unwrap();
    assert_eq!(push(json_number), None);
    let long = "1".repeat(MAX_PUSHED_NUMBER_BYTES + 1);
    assert_eq!(push_cmp("amount", "eq", json!(long)), None);
    let longest = "1".repeat(MAX_PUSHED_NUMBER_BYTES);
    assert!(push_cmp("amount", "eq", json!(longest)).is_some());
}

#[test]
fn non_numbers_on_number_columns_are_not_pushed() {
    for v in [
        json!("abc"),
        json!(true),
        json!("0x10"),
        json!(" 1"),
        json!("Infinity"),
    ] {
        assert_eq!(push_cmp("qty", "eq", v.clone()), None, "{v}");
        assert_eq!(push_cmp("total", "lt", v.clone()), None, "{v}");
        assert_eq!(push_cmp("qty", "in", json!([1, v])), None);
    }
    assert_eq!(push_cmp("qty", "lt", Value::Null), None);
}

#[test]
fn in_lists_with_null() {
    assert_eq!(
        push_cmp("qty", "in", json!([1, "2", null])),
        pushed(
            r#"("qty"::numeric IN ($3::text::numeric, $4::text::numeric) OR "qty" IS NULL)"#,
            &["1", "2"]
        )
    );
    assert_eq!(
        push_cmp("qty", "in", json!([null])),
        pushed(r#""qty" IS NULL"#, &[])
    );
    assert_eq!(
        push_cmp("qty", "eq", Value::Null),
        pushed(r#""qty" IS NULL"#, &[])
    );
}

// --- strings ---------------------------------------------------------

#[test]
fn text_equality_is_on_utf8_bytes() {
    let eq = r#"convert_to("status"::text, 'UTF8') = decode($3::text, 'hex')"#;
    assert_eq!(
        push_cmp("status", "eq", json!("paid")),
        pushed(eq, &["70616964"])
    );
    for s in [
        "é",
        "",
        "a\u{0}b",
        "NaN",
        "Infinity",
        "1 ",
        "0x10",
        "1e",
        "'; DROP TABLE t; --",
    ] {
        assert_eq!(
            push_cmp("status", "eq", json!(s)),
            pushed(eq, &[&hex_of(s)]),
            "{s:?}"
        );
    }
    assert_eq!(
        push_cmp("code", "in", json!(["a", "b", null])),
        pushed(
            r#"(convert_to("code"::text, 'UTF8') IN (decode($3::text, 'hex'), decode($4::text, 'hex')) OR "code" IS NULL)"#,
            &["61", "62"]
        )
    );
    assert_eq!(
        push_cmp("label", "eq", json!("x")),
        pushed(
            r#"convert_to("label"::text, 'UTF8') = decode($3::text, 'hex')"#,
            &["78"]
        )
    );
}

#[test]
fn numeric_strings_and_non_strings_on_text_are_not_pushed() {
    // "007" eq "7" (decimals) and eq 7: no byte test says that.
    for v in [
        json!("007"),
        json!("7"),
        json!("1e2"),
        json!(".5"),
        json!(7),
        json!(true),
    ] {
        assert_eq!(push_cmp("status", "eq", v.clone()), None, "{v}");
        assert_eq!(push_cmp("status", "in", json!(["paid", v])), None);
    }
    // U+FFFD may stand for other bytes.
    assert_eq!(push_cmp("status", "eq", json!("a\u{FFFD}")), None);
    assert_eq!(push_cmp("status", "prefix", json!("\u{FFFD}")), None);
}

#[test]
fn prefix_on_text_is_on_utf8_bytes() {
    let sql = |p: &str| {
        format!(
            r#"substr(convert_to("{p}"::text, 'UTF8'), 1, length(decode($3::text, 'hex'))) = decode($3::text, 'hex')"#
        )
    };
    assert_eq!(
        push_cmp("status", "prefix", json!("pa")),
        pushed(&sql("status"), &["7061"])
    );
    // A numeric prefix is a plain prefix.
    assert_eq!(
        push_cmp("code", "prefix", json!("00")),
        pushed(&sql("code"), &["3030"])
    );
    assert_eq!(
        push_cmp("status", "prefix", json!("")),
        pushed(&sql("status"), &[""])
    );
    assert_eq!(push_cmp("qty", "prefix", json!("1")), None);
    assert_eq!(push_cmp("pad", "prefix", json!("a")), None);
    assert_eq!(push_cmp("uid", "prefix", json!("a")), None);
}

#[test]
fn order_and_other_tests_on_strings_are_not_pushed() {
    for op in ["lt", "lte", "gt", "gte"] {
        assert_eq!(push_cmp("status", op, json!("m")), None);
        assert_eq!(push_cmp("paid_at", op, json!("2026-01-01T00:00:00Z")), None);
    }
    assert_eq!(push_cmp("status", "suffix", json!("d")), None);
    // character(n): its text is padded, its ::text is not.
    assert_eq!(push_cmp("pad", "eq", json!("ab")), None);
    assert_eq!(push_cmp("pad", "in", json!(["ab"])), None);
}

// --- booleans, other types, null -------------------------------------

#[test]
fn booleans() {
    assert_eq!(
        push_cmp("vip", "eq", json!(true)),
        pushed(r#""vip" = $3::text::boolean"#, &["true"])
    );
    assert_eq!(
        push_cmp("vip", "in", json!([false, null])),
        pushed(
            r#"("vip" = $3::text::boolean OR "vip" IS NULL)"#,
            &["false"]
        )
    );
    assert_eq!(push_cmp("vip", "eq", json!("true")), None);
    assert_eq!(push_cmp("vip", "eq", json!(1)), None);
    assert_eq!(push_cmp("vip", "gt", json!(false)), None);
}

#[test]
fn is_null_on_scalar_types() {
    for (c, ty) in [
        ("id", "bigint"),
        ("total", "numeric"),
        ("status", "text"),
        ("pad", "character"),
        ("vip", "boolean"),
        ("uid", "uuid"),
        ("paid_at", "timestamptz"),
        ("ratio", "float8"),
        ("tags", "text[]"),
    ] {
        assert_eq!(
            push_cmp(c, "is_null", json!(true)),
            pushed(&format!(r#""{c}" IS NULL"#), &[]),
            "{ty}"
        );
        assert_eq!(
            push_cmp(c, "is_null", json!(false)),
            pushed(&format!(r#""{c}" IS NOT NULL"#), &[]),
            "{ty}"
        );
        assert_eq!(
            push_cmp(c, "eq", Value::Null),
            pushed(&format!(r#""{c}" IS NULL"#), &[]),
            "{ty}"
        );
    }
}

#[test]
fn json_null_is_not_sql_null() {
    assert_eq!(
        push_cmp("meta", "is_null", json!(true)),
        pushed(r#"("meta" IS NULL OR jsonb_typeof("meta") = 'null')"#, &[])
    );
    assert_eq!(
        push_cmp("doc", "eq", Value::Null),
        pushed(r#"("doc" IS NULL OR json_typeof("doc") = 'null')"#, &[])
    );
    // Present and not null: never SQL NULL.
    assert_eq!(
        push_cmp("meta", "is_null", json!(false)),
        pushed(r#""meta" IS NOT NULL"#, &[])
    );
    assert_eq!(push_cmp("meta", "eq", json!(1)), None);
    assert_eq!(push_cmp("meta", "in", json!([null, "a"])), None);
    // Unknown types (a domain over jsonb, an enum): not even is_null.
    assert_eq!(push_cmp("jdom", "is_null", json!(true)), None);
    assert_eq!(push_cmp("mood", "is_null", json!(false)), None);
    assert_eq!(push_cmp("mood", "eq", json!("happy")), None);
}

#[test]
fn other_types_push_only_is_null() {
    for (c, v) in [
        ("uid", json!("00000000-0000-0000-0000-000000000000")),
        ("paid_at", json!("2026-01-01T00:00:00Z")),
        ("ratio", json!(0.5)),
        ("tags", json!("{a}")),
    ] {
        assert_eq!(push_cmp(c, "eq", v.clone()), None, "{c}");
        assert_eq!(push_cmp(c, "in", json!([v])), None, "{c}");
        assert_eq!(push_cmp(c, "gt", v), None, "{c}");
    }
}

#[test]
fn negations_are_not_pushed() {
    assert_eq!(push_cmp("qty", "neq", json!(1)), None);
    assert_eq!(push_cmp("qty", "nin", json!([1])), None);
    assert_eq!(push_cmp("status", "nin", json!(["a"])), None);
    assert_eq!(
        push(json!({"not": {"field": "qty", "op": "eq", "value": 1}})),
        None
    );
    assert_eq!(
        push(json!({"not": {"field": "qty", "op": "is_null", "value": true}})),
        None
    );
}

// --- paths and columns -------------------------------------------------

#[test]
fn only_visible_top_level_columns_of_new() {
    assert_eq!(push_cmp("old.qty", "eq", json!(1)), None);
    assert_eq!(push_cmp("old.qty", "is_null", json!(true)), None);
    assert_eq!(push_cmp("meta.tier", "eq", json!("gold")), None);
    assert_eq!(push_cmp("meta.tier", "is_null", json!(false)), None);
    assert_eq!(push_cmp("nope", "is_null", json!(false)), None);
    assert_eq!(push_cmp("secret", "eq", json!("x")), None);
    assert_eq!(push_cmp("secret", "is_null", json!(true)), None);
    // A path step is matched exactly.
    assert_eq!(push_cmp("QTY", "eq", json!(1)), None);
    assert_eq!(
        push_cmp("new.we\"ird", "eq", json!(1)),
        pushed(r#""we""ird"::numeric = $3::text::numeric"#, &["1"])
    );
}

#[test]
fn a_name_given_twice_is_not_pushed() {
    let cols = [col("a", "integer"), col("a", "integer")];
    let f = cmp("a", "eq", json!(1));
    assert_eq!(f.pushdown(&cols, 1), None);
    let cols = [
        col("a", "integer"),
        PushedColumn {
            visible: false,
            ..col("a", "integer")
        },
    ];
    assert_eq!(f.pushdown(&cols, 1), None);
}

#[test]
fn type_names() {
    let t = |ty: &str| family(ty);
    assert_eq!(t("numeric(10,2)"), Some(Family::Numeric));
    assert_eq!(t("numeric(5)"), Some(Family::Numeric));
    assert_eq!(t("character varying(255)"), Some(Family::Text));
    assert_eq!(t("timestamp(6) without time zone"), Some(Family::Other));
    assert_eq!(t("numeric(10,2)[]"), Some(Family::Other));
    assert_eq!(t("\"char\""), Some(Family::Other));
    for unknown in [
        "integer_json",
        "\"integer\"",
        "public.integer",
        "numeric()",
        "numeric(1)(2)",
        "numeric(a)",
        "numeric(10,2",
        "citext",
        "int4",
        "\"text[]\"",
        "",
    ] {
        assert_eq!(t(unknown), None, "{unknown}");
    }
}

// --- and, or ----------------------------------------------------------

#[test]
fn and_keeps_the_pushable_children_numbered_in_order() {
    assert_eq!(
        push(json!({"and": [
            {"field": "status", "op": "eq", "value": "paid"},
            {"field": "meta.tier", "op": "eq", "value": "gold"},
            // Its first child takes a parameter before the second fails.
            {"or": [{"field": "qty", "op": "eq", "value": 1},
                    {"field": "qty", "op": "neq", "value": 2}]},
            {"field": "total", "op": "gte", "value": 100}
        ]})),
        pushed(
            r#"(convert_to("status"::text, 'UTF8') = decode($3::text, 'hex') AND "total"::numeric >= $4::text::numeric)"#,
            &["70616964", "100"]
        )
    );
    // One child left: no parentheses.
    assert_eq!(
        push(json!({"and": [
            {"field": "qty", "op": "gt", "value": 1},
            {"not": {"field": "qty", "op": "eq", "value": 5}}
        ]})),
        pushed(r#""qty"::numeric > $3::text::numeric"#, &["1"])
    );
    assert_eq!(
        push(json!({"and": [
            {"field": "qty", "op": "neq", "value": 1},
            {"field": "uid", "op": "eq", "value": "x"}
        ]})),
        None
    );
}

#[test]
fn or_needs_every_child() {
    assert_eq!(
        push(json!({"or": [
            {"field": "status", "op": "eq", "value": "paid"},
            {"field": "qty", "op": "is_null", "value": true}
        ]})),
        pushed(
            r#"(convert_to("status"::text, 'UTF8') = decode($3::text, 'hex') OR "qty" IS NULL)"#,
            &["70616964"]
        )
    );
    assert_eq!(
        push(json!({"or": [
            {"field": "status", "op": "eq", "value": "paid"},
            {"field": "meta.tier", "op": "eq", "value": "gold"}
        ]})),
        None
    );
    // An `and` inside keeps what it can; an `and` with nothing fails the `or`.
    assert_eq!(
        push(json!({"or": [
            {"and": [{"field": "qty", "op": "eq", "value": 1},
                     {"field": "qty", "op": "neq", "value": 2}]},
            {"and": [{"field": "vip", "op": "eq", "value": true},
                     {"field": "id", "op": "lt", "value": 10}]}
        ]})),
        pushed(
            r#"("qty"::numeric = $3::text::numeric OR ("vip" = $4::text::boolean AND "id"::numeric < $5::text::numeric))"#,
            &["1", "true", "10"]
        )
    );
    assert_eq!(
        push(json!({"or": [
            {"field": "qty", "op": "eq", "value": 1},
            {"and": [{"field": "qty", "op": "neq", "value": 2}]}
        ]})),
        None
    );
}

#[test]
fn claims_are_not_pushed() {
    let p = Filter::parse_policy(&json!({"and": [
        {"field": "owner", "op": "eq", "claim": "sub"},
        {"field": "qty", "op": "gt", "value": 0}
    ]}))
    .unwrap();
    let cols = [col("owner", "text"), col("qty", "integer")];
    assert_eq!(
        p.pushdown(&cols, 1),
        Some(Pushdown {
            sql: r#""qty"::numeric > $1::text::numeric"#.into(),
            params: vec!["0".into()],
        })
    );
    let p = Filter::parse_policy(&json!({"field": "owner", "op": "eq", "claim": "sub"})).unwrap();
    assert_eq!(p.pushdown(&cols, 1), None);
    // Bound, it is a comparison like any other.
    let claims: Map<String, Value> = serde_json::from_value(json!({"sub": "u1"})).unwrap();
    let bound = p.bind(&claims).unwrap();
    assert_eq!(
        bound.pushdown(&cols, 1).map(|p| p.params),
        Some(vec!["7531".to_owned()])
    );
}

#[test]
fn parameter_numbers() {
    let f = cmp("qty", "in", json!([1, 2]));
    assert_eq!(f.pushdown(COLUMNS, 0), None);
    assert_eq!(
        f.pushdown(COLUMNS, 1).map(|p| p.sql),
        Some(r#""qty"::numeric IN ($1::text::numeric, $2::text::numeric)"#.into())
    );
    // Postgres takes at most 65535 parameters.
    assert!(f.pushdown(COLUMNS, 65_534).is_some());
    assert_eq!(f.pushdown(COLUMNS, 65_535), None);
    assert_eq!(f.pushdown(COLUMNS, usize::MAX), None);
    let no_param = cmp("qty", "is_null", json!(true));
    assert!(no_param.pushdown(COLUMNS, 65_535).is_some());
    assert_eq!(no_param.pushdown(COLUMNS, 65_536), None);
}

// --- properties ---------------------------------------------------------

/// The `$n` placeholders in `sql`.
fn placeholders(sql: &str) -> Vec<usize> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            let end = (i + 1..b.len())
                .find(|&k| !b[k].is_ascii_digit())
                .unwrap_or(b.len());
            out.push(sql[i + 1..end].parse().expect("a number after $"));
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

proptest! {
    #[test]
    fn values_are_only_parameters(f in valid_filter(), first in 1usize..20) {
        let cols = [col("a", "integer"), col("b", "text"), col("c", "numeric"), col("m", "jsonb")];
        let f = Filter::parse(&f).unwrap();
        if let Some(p) = f.pushdown(&cols, first) {
            // Every parameter is used, and only those.
            let mut used = placeholders(&p.sql);
            used.sort_unstable();
            used.dedup();
            let expected: Vec<usize> = (first..first + p.params.len()).collect();
            prop_assert_eq!(used, expected);
            // No literal but ours.
            let mut rest = p.sql.clone();
            for ours in ["'UTF8'", "'hex'", "'null'", "'NaN'", "'Infinity'", "'-Infinity'"] {
                rest = rest.replace(ours, "");
            }
            prop_assert!(!rest.contains('\''), "{}", p.sql);
            // Balanced parentheses.
            let depth = p.sql.chars().try_fold(0i32, |d, c| {
                let d = d + i32::from(c == '(') - i32::from(c == ')');
                (d >= 0).then_some(d)
            });
            prop_assert_eq!(depth, Some(0));
        }
    }
}
