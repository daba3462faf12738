use super::*;
use proptest::prelude::*;
use serde_json::json;

fn filter(v: Value) -> Filter {
    Filter::parse(&v).unwrap_or_else(|e| panic!("{v}: {e}"))
}

fn cmp(field: &str, op: &str, value: Value) -> Filter {
    filter(json!({"field": field, "op": op, "value": value}))
}

fn err(v: Value) -> String {
    Filter::parse(&v)
        .expect_err("filter should be rejected")
        .to_string()
}

fn order_event() -> Value {
    serde_json::from_str(
        r#"{"op":"update","schema":"public","table":"orders","key":{"id":42},
                "new":{"id":42,"status":"paid","total":"150.00","qty":3,"note":null,
                       "paid_at":"2026-11-22T10:15:30.123456Z","vip":true,
                       "big":"123456789012345678901234567890.5",
                       "meta":{"tier":"gold","score":{"value":7}}},
                "old":{"id":42,"status":"pending","total":"150.00"}}"#,
    )
    .expect("valid JSON")
}

fn dec_cmp(a: &str, b: &str) -> Option<Ordering> {
    Some(Decimal::parse(a)?.cmp(&Decimal::parse(b)?))
}

// --- operators -------------------------------------------------------

#[test]
fn eq_and_neq_on_strings_numbers_booleans_and_null() {
    let d = order_event();
    assert!(cmp("new.status", "eq", json!("paid")).matches(&d));
    assert!(!cmp("new.status", "eq", json!("pending")).matches(&d));
    assert!(cmp("old.status", "eq", json!("pending")).matches(&d));
    assert!(cmp("new.id", "eq", json!(42)).matches(&d));
    assert!(cmp("new.vip", "eq", json!(true)).matches(&d));
    assert!(!cmp("new.vip", "eq", json!("true")).matches(&d));
    assert!(cmp("new.note", "eq", Value::Null).matches(&d));
    assert!(cmp("new.status", "neq", json!("pending")).matches(&d));
    assert!(!cmp("new.status", "neq", json!("paid")).matches(&d));
    assert!(!cmp("new.id", "eq", json!("forty-two")).matches(&d));
    // A missing field is null.
    assert!(cmp("new.nope", "eq", Value::Null).matches(&d));
    assert!(!cmp("new.nope", "neq", Value::Null).matches(&d));
    assert!(cmp("new.nope", "neq", json!("x")).matches(&d));
    assert!(!cmp("new.nope", "eq", json!(0)).matches(&d));
}

#[test]
fn eq_compares_numbers_and_numeric_strings_as_exact_decimals() {
    let d = order_event();
    for v in [
        json!(150),
        json!("150"),
        json!("150.0000"),
        json!("1.5e2"),
        json!("+150"),
    ] {
        assert!(cmp("new.total", "eq", v.clone()).matches(&d), "{v}");
        assert!(!cmp("new.total", "neq", v.clone()).matches(&d), "{v}");
    }
    let n: Value = serde_json::from_str("150.00").expect("number");
    assert!(cmp("new.total", "eq", n).matches(&d));
    assert!(!cmp("new.total", "eq", json!(150.01)).matches(&d));
    assert!(!cmp("new.total", "eq", json!("150.000000000000000000001")).matches(&d));
    let data = json!({"new": {"n": "1e2", "z": "-0.0", "i": 3}});
    assert!(cmp("n", "eq", json!(100)).matches(&data));
    assert!(cmp("z", "eq", json!(0)).matches(&data));
    assert!(cmp("i", "eq", json!("3.0")).matches(&data));
    // Big numerics stay exact.
    let big: Value = serde_json::from_str("123456789012345678901234567890.5").expect("number");
    assert!(cmp("new.big", "eq", big).matches(&d));
    assert!(!cmp(
        "new.big",
        "eq",
        json!("123456789012345678901234567890.50001")
    )
    .matches(&d));
    // Non-numeric strings compare as strings.
    let data = json!({"new": {"s": "NaN"}});
    assert!(cmp("s", "eq", json!("NaN")).matches(&data));
    assert!(!cmp("s", "eq", json!(0)).matches(&data));
}

#[test]
fn ordering_operators_on_numbers_and_numeric_strings() {
    let d = order_event();
    let t = |op: &str, v: Value| cmp("new.total", op, v).matches(&d);
    assert!(t("gt", json!(100)));
    assert!(t("gte", json!(150)));
    assert!(!t("gt", json!(150)));
    assert!(t("lte", json!("150.0")));
    assert!(!t("lt", json!("150.0")));
    assert!(t("lt", json!("150.001")));
    assert!(t("gt", json!(-1e9)));
    assert!(!t("lt", json!("1e2")));
    assert!(t("lt", json!("1e3")));
    let q = |op: &str, v: Value| cmp("new.qty", op, v).matches(&d);
    assert!(q("gt", json!("2.99999999999999999999999")));
    assert!(q("lt", json!(3.000000001)));
    assert!(!q("lt", json!(3)));
    assert!(q("lte", json!(3)));
    // Beyond f64 precision.
    assert!(cmp(
        "new.big",
        "gt",
        json!("123456789012345678901234567890.4999999")
    )
    .matches(&d));
    assert!(cmp("new.big", "lt", json!("123456789012345678901234567891")).matches(&d));
}

#[test]
fn ordering_operators_on_strings_and_timestamps() {
    let d = order_event();
    let t = |op: &str, v: &str| cmp("new.paid_at", op, json!(v)).matches(&d);
    assert!(t("gt", "2026-11-22T10:15:30Z"));
    assert!(t("gte", "2026-11-22T10:15:30.123456Z"));
    assert!(t("lt", "2026-11-22T10:15:31Z"));
    assert!(t("lt", "2027-01-01T00:00:00Z"));
    assert!(!t("lt", "2025-12-31T23:59:59Z"));
    // Trimmed fractions still compare chronologically.
    let ts = |field: &str, op: &str, v: &str| {
        cmp("t", op, json!(v)).matches(&json!({"new": {"t": field}}))
    };
    assert!(ts("2026-11-22T10:15:30.5Z", "gt", "2026-11-22T10:15:30Z"));
    assert!(ts(
        "2026-11-22T10:15:30Z",
        "lt",
        "2026-11-22T10:15:30.000001Z"
    ));
    assert!(ts(
        "2026-11-22T10:15:30.5Z",
        "lte",
        "2026-11-22T10:15:30.50Z"
    ));
    assert!(ts(
        "2026-11-22T10:15:30.5Z",
        "gte",
        "2026-11-22T10:15:30.50Z"
    ));
    assert!(ts(
        "2026-11-22T10:15:30.123Z",
        "lt",
        "2026-11-22T10:15:30.2Z"
    ));
    assert!(ts(
        "2026-11-22T10:15:30.999999Z",
        "lt",
        "2026-11-22T10:15:31Z"
    ));
    // Timestamps without a zone (Postgres `timestamp`) too.
    assert!(ts("2026-11-22T00:00:00.5", "gt", "2026-11-22T00:00:00"));
    // Dates are plain strings and already compare by bytes.
    assert!(ts("2026-11-22", "lt", "2026-11-23"));
    assert!(ts("2026-11-22", "gt", "2026-01-30"));
    assert!(cmp("status", "gt", json!("p")).matches(&d));
    assert!(cmp("status", "lt", json!("pb")).matches(&d));
    // A numeric string against a non-numeric one: bytes.
    assert!(cmp("total", "lt", json!("abc")).matches(&d));
}

#[test]
fn ordering_operators_never_match_mixed_or_null_operands() {
    let d = order_event();
    for op in ["lt", "lte", "gt", "gte"] {
        assert!(!cmp("new.nope", op, json!(1)).matches(&d), "{op} missing");
        assert!(!cmp("new.nope", op, Value::Null).matches(&d), "{op} null");
        assert!(
            !cmp("new.note", op, json!("a")).matches(&d),
            "{op} null field"
        );
        assert!(!cmp("new.vip", op, json!(true)).matches(&d), "{op} bool");
        assert!(!cmp("new.status", op, json!(1)).matches(&d), "{op} mixed");
        assert!(!cmp("new.id", op, json!("x")).matches(&d), "{op} mixed");
        assert!(!cmp("new.meta", op, json!("a")).matches(&d), "{op} object");
    }
}

#[test]
fn in_and_nin() {
    let d = order_event();
    assert!(cmp("status", "in", json!(["paid", "shipped"])).matches(&d));
    assert!(!cmp("status", "in", json!(["pending", "shipped"])).matches(&d));
    assert!(cmp("status", "nin", json!(["pending", "shipped"])).matches(&d));
    assert!(!cmp("status", "nin", json!(["paid"])).matches(&d));
    assert!(cmp("total", "in", json!([1, 150])).matches(&d));
    assert!(cmp("id", "in", json!(["42.0"])).matches(&d));
    assert!(cmp("nope", "in", json!([1, null])).matches(&d));
    assert!(cmp("nope", "nin", json!([1, 2])).matches(&d));
    assert!(!cmp("nope", "nin", json!([null])).matches(&d));
}

#[test]
fn prefix_and_suffix_need_a_string_field() {
    let d = order_event();
    assert!(cmp("status", "prefix", json!("pa")).matches(&d));
    assert!(cmp("status", "prefix", json!("")).matches(&d));
    assert!(!cmp("status", "prefix", json!("aid")).matches(&d));
    assert!(cmp("status", "suffix", json!("aid")).matches(&d));
    assert!(!cmp("status", "suffix", json!("pa")).matches(&d));
    assert!(cmp("paid_at", "prefix", json!("2026-11")).matches(&d));
    assert!(!cmp("id", "prefix", json!("4")).matches(&d));
    assert!(!cmp("nope", "prefix", json!("")).matches(&d));
    assert!(!cmp("note", "suffix", json!("")).matches(&d));
}

#[test]
fn is_null_both_ways() {
    let d = order_event();
    let t = |field: &str, want: bool| cmp(field, "is_null", json!(want)).matches(&d);
    assert!(t("note", true));
    assert!(!t("note", false));
    assert!(t("nope", true));
    assert!(!t("nope", false));
    assert!(t("old.note", true));
    assert!(!t("status", true));
    assert!(t("status", false));
    assert!(t("meta", false));
}

#[test]
fn nested_paths_and_images() {
    let d = order_event();
    assert!(cmp("new.meta.tier", "eq", json!("gold")).matches(&d));
    assert!(cmp("meta.tier", "eq", json!("gold")).matches(&d));
    assert!(cmp("meta.score.value", "gte", json!(7)).matches(&d));
    assert!(cmp("meta.score.value.deeper", "is_null", json!(true)).matches(&d));
    assert!(cmp("meta.tier.x", "is_null", json!(true)).matches(&d));
    assert!(cmp("old.meta.tier", "is_null", json!(true)).matches(&d));
    assert!(cmp("old.total", "eq", json!(150)).matches(&d));
    // A column named `new` is `new.new`.
    let data = json!({"new": {"new": 1, "old": 2}});
    assert!(cmp("new.new", "eq", json!(1)).matches(&data));
    assert!(cmp("new.old", "eq", json!(2)).matches(&data));
    // No old row (insert): old.* is missing.
    let insert = json!({"op": "insert", "new": {"a": 1}});
    assert!(cmp("old.a", "is_null", json!(true)).matches(&insert));
    // Data that is not an object.
    for d in [Value::Null, json!([1]), json!("x"), json!({"new": 5})] {
        assert!(cmp("a", "is_null", json!(true)).matches(&d));
        assert!(!cmp("a", "eq", json!(1)).matches(&d));
    }
}

#[test]
fn and_or_not() {
    let d = order_event();
    let paid = json!({"field": "status", "op": "eq", "value": "paid"});
    let big = json!({"field": "total", "op": "gt", "value": 1000});
    let gold = json!({"field": "meta.tier", "op": "eq", "value": "gold"});
    assert!(!filter(json!({"and": [paid, big]})).matches(&d));
    assert!(filter(json!({"and": [paid, gold]})).matches(&d));
    assert!(filter(json!({"and": [paid]})).matches(&d));
    assert!(filter(json!({"or": [big, gold]})).matches(&d));
    assert!(!filter(json!({"or": [big]})).matches(&d));
    assert!(filter(json!({"not": big})).matches(&d));
    assert!(!filter(json!({"not": {"not": big}})).matches(&d));
    assert!(filter(json!({"or": [{"and": [paid, big]}, {"not": {"or": [big]}}]})).matches(&d));
}

#[test]
fn readme_example_parses_and_matches() {
    let f = Filter::parse_str(
        r#"{"or": [
                 {"and": [{"field": "status", "op": "eq", "value": "paid"},
                          {"field": "new.total", "op": "gte", "value": 100}]},
                 {"field": "new.meta.tier", "op": "eq", "value": "gold"}
               ]}"#,
    )
    .expect("valid");
    assert!(f.matches(&order_event()));
    assert!(f.matches(&json!({"new": {"status": "paid", "total": "100.00"}})));
    assert!(!f.matches(&json!({"new": {"status": "paid", "total": "99.99"}})));
}

// --- limits ----------------------------------------------------------

fn leaf() -> Value {
    json!({"field": "a", "op": "eq", "value": 1})
}

fn nested_not(levels: usize) -> Value {
    (0..levels).fold(leaf(), |f, _| json!({ "not": f }))
}

#[test]
fn depth_limit() {
    assert!(Filter::parse(&nested_not(7)).is_ok()); // depth 8
    assert_eq!(
        Filter::parse(&nested_not(8)),
        Err(FilterError::TooDeep {
            at: format!("filter{}", ".not".repeat(8))
        })
    );
    assert_eq!(
        err(nested_not(8)),
        "filter.not.not.not.not.not.not.not.not: filter is nested deeper than 8 levels"
    );
}

#[test]
fn node_limit() {
    let ok = json!({"and": [
        {"and": vec![leaf(); 31]},
        {"and": vec![leaf(); 30]},
    ]});
    assert!(Filter::parse(&ok).is_ok()); // 1 + (1 + 31) + (1 + 30) = 64
    let too_many = json!({"and": [
        {"and": vec![leaf(); 31]},
        {"and": vec![leaf(); 31]},
    ]});
    assert_eq!(
        err(too_many),
        "filter.and[1].and[30]: filter has more than 64 nodes (comparisons plus and/or/not)"
    );
}

#[test]
fn size_limit() {
    let long = "x".repeat(MAX_FILTER_BYTES);
    let v = json!({"field": "a", "op": "eq", "value": long});
    assert_eq!(Filter::parse(&v), Err(FilterError::TooLarge));
    assert_eq!(
        Filter::parse_str(&v.to_string()),
        Err(FilterError::TooLarge)
    );
    assert_eq!(
        FilterError::TooLarge.to_string(),
        "filter is larger than the limit of 4096 bytes of JSON"
    );
    // Whitespace counts in text.
    let padded = format!("{}{}", " ".repeat(4090), leaf());
    assert_eq!(Filter::parse_str(&padded), Err(FilterError::TooLarge));
    let fits = json!({"field": "a", "op": "eq", "value": "x".repeat(4000)});
    assert!(Filter::parse_str(&fits.to_string()).is_ok());
}

#[test]
fn list_limits() {
    let many = json!({"or": vec![leaf(); 33]});
    assert_eq!(
        err(many),
        "filter.or: \"or\" needs 1 to 32 filters, found 33"
    );
    assert!(Filter::parse(&json!({"or": vec![leaf(); 32]})).is_ok());
    let values: Vec<u32> = (0..101).collect();
    assert_eq!(
        err(json!({"field": "a", "op": "in", "value": values})),
        "filter.value: \"in\" needs 1 to 100 values, found 101"
    );
    let values: Vec<u32> = (0..100).collect();
    assert!(Filter::parse(&json!({"field": "a", "op": "nin", "value": values})).is_ok());
}

// --- errors ----------------------------------------------------------

#[test]
fn error_not_json() {
    let e = Filter::parse_str("{\"field\": ").expect_err("not JSON");
    assert!(matches!(e, FilterError::NotJson { .. }));
    assert!(
        e.to_string().starts_with("filter is not valid JSON: "),
        "{e}"
    );
    assert!(Filter::parse_str("").is_err());
}

#[test]
fn error_not_a_filter() {
    assert_eq!(
        err(json!([1])),
        "filter: expected a filter object (a comparison with \"field\", \"op\" and \"value\", or one of \"and\", \"or\", \"not\"), found an array"
    );
    assert_eq!(
        Filter::parse(&json!({})),
        Err(FilterError::NotAFilter {
            at: "filter".into(),
            found: "an empty object"
        })
    );
    assert_eq!(
        Filter::parse(&json!({"and": [leaf(), "x"]})),
        Err(FilterError::NotAFilter {
            at: "filter.and[1]".into(),
            found: "a string"
        })
    );
    assert_eq!(
        Filter::parse(&json!({"not": null})),
        Err(FilterError::NotAFilter {
            at: "filter.not".into(),
            found: "null"
        })
    );
}

#[test]
fn error_unknown_operator() {
    let v = json!({"and": [leaf(), {"field": "a", "op": "like", "value": "x%"}]});
    assert_eq!(
        err(v),
        "filter.and[1].op: unknown operator \"like\"; expected one of eq, neq, lt, lte, gt, gte, in, nin, prefix, suffix, is_null"
    );
}

#[test]
fn error_unknown_keys() {
    assert_eq!(
        err(json!({"field": "a", "op": "eq", "value": 1, "case": "insensitive"})),
        "filter: unknown key \"case\"; expected \"field\", \"op\" and \"value\", or one of \"and\", \"or\", \"not\""
    );
    assert_eq!(
        err(json!({"not": {"and": [leaf()], "comment": "x"}})),
        "filter.not: unknown key \"comment\"; an \"and\" object has no other key"
    );
    assert_eq!(
        err(json!({"or": [leaf()], "x": 1})),
        "filter: unknown key \"x\"; an \"or\" object has no other key"
    );
    assert_eq!(
        err(json!({"not": leaf(), "x": 1})),
        "filter: unknown key \"x\"; a \"not\" object has no other key"
    );
}

#[test]
fn error_conflicting_keys() {
    assert_eq!(
        err(json!({"and": [leaf()], "or": [leaf()]})),
        "filter: \"and\" cannot be combined with \"or\" in one object; nest them inside \"and\" or \"or\""
    );
    assert_eq!(
        Filter::parse(&json!({"field": "a", "op": "eq", "value": 1, "not": leaf()})),
        Err(FilterError::ConflictingKeys {
            at: "filter".into(),
            first: "not",
            second: "field"
        })
    );
}

#[test]
fn error_missing_keys() {
    assert_eq!(
        err(json!({"op": "eq", "value": 1})),
        "filter: missing key \"field\"; a comparison needs \"field\", \"op\" and \"value\""
    );
    assert_eq!(
        Filter::parse(&json!({"or": [{"field": "a", "value": 1}]})),
        Err(FilterError::MissingKey {
            at: "filter.or[0]".into(),
            key: "op"
        })
    );
    assert_eq!(
        Filter::parse(&json!({"field": "a", "op": "is_null"})),
        Err(FilterError::MissingKey {
            at: "filter".into(),
            key: "value"
        })
    );
}

#[test]
fn error_wrong_types() {
    let cases = [
        (
            json!({"field": 1, "op": "eq", "value": 1}),
            "filter.field: expected a path string such as \"new.status\", found a number",
        ),
        (
            json!({"field": "a", "op": ["eq"], "value": 1}),
            "filter.op: expected an operator name such as \"eq\", found an array",
        ),
        (
            json!({"field": "a", "op": "eq", "value": [1]}),
            "filter.value: expected a scalar (string, number, boolean or null), found an array",
        ),
        (
            json!({"field": "a", "op": "gt", "value": {"x": 1}}),
            "filter.value: expected a scalar (string, number, boolean or null), found an object",
        ),
        (
            json!({"field": "a", "op": "in", "value": 1}),
            "filter.value: expected an array of 1 to 100 scalars, found a number",
        ),
        (
            json!({"field": "a", "op": "nin", "value": [1, 2, [3]]}),
            "filter.value[2]: expected a scalar (string, number, boolean or null), found an array",
        ),
        (
            json!({"field": "a", "op": "prefix", "value": 1}),
            "filter.value: expected a string, found a number",
        ),
        (
            json!({"field": "a", "op": "suffix", "value": null}),
            "filter.value: expected a string, found null",
        ),
        (
            json!({"field": "a", "op": "is_null", "value": "yes"}),
            "filter.value: expected true (null or missing) or false (present and not null), found a string",
        ),
        (
            json!({"and": {"field": "a"}}),
            "filter.and: expected an array of 1 to 32 filters, found an object",
        ),
        (
            json!({"not": [leaf()]}),
            "filter.not: expected a filter object (a comparison with \"field\", \"op\" and \"value\", or one of \"and\", \"or\", \"not\"), found an array",
        ),
    ];
    for (v, msg) in cases {
        assert_eq!(err(v.clone()), msg, "{v}");
    }
}

#[test]
fn error_empty_lists() {
    assert_eq!(
        err(json!({"and": []})),
        "filter.and: \"and\" needs 1 to 32 filters, found 0"
    );
    assert_eq!(
        err(json!({"not": {"or": []}})),
        "filter.not.or: \"or\" needs 1 to 32 filters, found 0"
    );
    assert_eq!(
        err(json!({"field": "a", "op": "in", "value": []})),
        "filter.value: \"in\" needs 1 to 100 values, found 0"
    );
}

#[test]
fn error_invalid_paths() {
    let e = |path: &str| err(json!({"field": path, "op": "eq", "value": 1}));
    assert_eq!(
        e(""),
        "filter.field: path is empty; expected \"new.<column>\" or \"old.<column>\", e.g. \"new.status\""
    );
    assert_eq!(
        e("old"),
        "filter.field: path \"old\" names no column; expected \"old.<column>\", e.g. \"old.status\""
    );
    assert_eq!(
        e("new"),
        "filter.field: path \"new\" names no column; expected \"new.<column>\", e.g. \"new.status\""
    );
    for p in ["new..a", ".a", "a.", "new.", "old.a..b"] {
        assert_eq!(
            e(p),
            format!("filter.field: path {p:?} has an empty step; steps are separated by a single \".\" and the path cannot start or end with \".\""),
        );
    }
    let long = "x".repeat(65);
    assert_eq!(
        e(&format!("new.{long}")),
        format!("filter.field: path step \"{long}\" is 65 bytes long; the limit is 64 bytes")
    );
    assert!(Filter::parse(&json!({"field": "x".repeat(64), "op": "eq", "value": 1})).is_ok());
    assert_eq!(
        e("new.a.b.c.d.e.f.g.h.i"),
        "filter.field: path \"new.a.b.c.d.e.f.g.h.i\" has 9 steps after new/old; the limit is 8"
    );
    assert_eq!(
        e("a.b.c.d.e.f.g.h.i"),
        "filter.field: path \"a.b.c.d.e.f.g.h.i\" has 9 steps after new/old; the limit is 8"
    );
    assert!(
        Filter::parse(&json!({"field": "old.a.b.c.d.e.f.g.h", "op": "eq", "value": 1})).is_ok()
    );
    assert!(Filter::parse(&json!({"field": "a.b.c.d.e.f.g.h", "op": "eq", "value": 1})).is_ok());
    // Inside a combinator.
    assert_eq!(
        Filter::parse(&json!({"or": [leaf(), {"not": {"field": "", "op": "eq", "value": 1}}]})),
        Err(FilterError::InvalidPath {
            at: "filter.or[1].not.field".into(),
            problem: PathProblem::Empty
        })
    );
}

// --- decimals --------------------------------------------------------

#[test]
fn decimal_parsing() {
    for s in [
        "0", "-0", "+1", "1.", ".5", "-.5", "1e5", "1E+5", "1e-5", "007", "0.000",
    ] {
        assert!(Decimal::parse(s).is_some(), "{s}");
    }
    for s in [
        "",
        "-",
        "+",
        ".",
        "e5",
        "1e",
        "1e+",
        "1.2.3",
        " 1",
        "1 ",
        "0x10",
        "NaN",
        "Infinity",
        "-Infinity",
        "1_000",
        "١",
        "1e1000001",
        "--1",
    ] {
        assert!(Decimal::parse(s).is_none(), "{s}");
    }
    assert!(Decimal::parse("1e1000000").is_some());
}

#[test]
fn decimal_comparison() {
    use Ordering::*;
    let cases = [
        ("150.00", "150", Equal),
        ("1e2", "100", Equal),
        ("0.1e3", "100.0", Equal),
        ("-0", "0.000", Equal),
        ("0", "-0e5", Equal),
        ("0.001", "1e-3", Equal),
        ("0.0010", "0.001", Equal),
        ("-1", "0", Less),
        ("-1", "-2", Greater),
        ("-1.5", "-1.25", Less),
        ("0.5", "0.25", Greater),
        ("99", "100", Less),
        ("100", "99.9999999999999999999", Greater),
        ("1e1000000", "9e999999", Greater),
        ("1e-1000000", "0", Greater),
        ("-1e-1000000", "0", Less),
        (
            "12345678901234567890.000000000000000001",
            "12345678901234567890",
            Greater,
        ),
        ("9007199254740993", "9007199254740992", Greater),
        ("1.10", "1.1", Equal),
        ("1.101", "1.1", Greater),
    ];
    for (a, b, want) in cases {
        assert_eq!(dec_cmp(a, b), Some(want), "{a} vs {b}");
        assert_eq!(dec_cmp(b, a), Some(want.reverse()), "{b} vs {a}");
    }
}

// --- properties ------------------------------------------------------

fn scalar_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..4).prop_map(|n| json!(n)),
        prop::sample::select(vec!["1", "1.0", "-2", "a", "b", "ab", "", "2e0", "0.5"])
            .prop_map(|s| json!(s)),
        Just(json!(0.5)),
    ]
}

fn leaf_filter() -> impl Strategy<Value = Value> {
    let field = prop::sample::select(vec!["a", "new.b", "old.a", "m.x", "new.m", "c"]);
    let op = prop::sample::select(vec![
        "eq", "neq", "lt", "lte", "gt", "gte", "in", "nin", "prefix", "suffix", "is_null",
    ]);
    (
        field,
        op,
        scalar_value(),
        prop::collection::vec(scalar_value(), 1..4),
    )
        .prop_map(|(field, op, v, list)| {
            let value = match op {
                "in" | "nin" => Value::Array(list),
                "prefix" | "suffix" => json!(v.as_str().unwrap_or("a")),
                "is_null" => json!(v.is_null()),
                _ => v,
            };
            json!({"field": field, "op": op, "value": value})
        })
}

/// Valid filters of depth ≤ 4 and at most 40 nodes.
fn valid_filter() -> impl Strategy<Value = Value> {
    leaf_filter().prop_recursive(3, 40, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..=3).prop_map(|v| json!({ "and": v })),
            prop::collection::vec(inner.clone(), 1..=3).prop_map(|v| json!({ "or": v })),
            inner.prop_map(|f| json!({ "not": f })),
        ]
    })
}

fn row() -> impl Strategy<Value = Value> {
    let maybe = || prop::option::of(scalar_value());
    (maybe(), maybe(), maybe(), maybe()).prop_map(|(a, b, x, c)| {
        let mut row = Map::new();
        for (k, v) in [("a", a), ("b", b), ("c", c)] {
            if let Some(v) = v {
                row.insert(k.into(), v);
            }
        }
        if let Some(x) = x {
            row.insert("m".into(), json!({ "x": x }));
        }
        Value::Object(row)
    })
}

fn event_data() -> impl Strategy<Value = Value> {
    (row(), prop::option::of(row())).prop_map(|(new, old)| match old {
        Some(old) => json!({"op": "update", "new": new, "old": old}),
        None => json!({"op": "insert", "new": new}),
    })
}

fn any_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "field", "op", "value", "and", "or", "not", "x", "eq", "in",
        ])
        .prop_map(String::from),
        ".{0,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        prop::sample::select(vec![
            "eq", "neq", "lt", "gte", "in", "nin", "prefix", "is_null", "new.a", "old", "a..b",
            "1e5", "-0.5", "",
        ])
        .prop_map(|s| json!(s)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(10, 200, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parse_str_never_panics_on_arbitrary_strings(s in ".{0,200}") {
        let _ = Filter::parse_str(&s);
    }

    #[test]
    fn parse_str_never_panics_on_json_like_strings(
        s in r#"[{}\[\]":,. a-z0-9eE+-]{0,120}"#,
    ) {
        if let Ok(f) = Filter::parse_str(&s) {
            let _ = f.matches(&json!({"new": {"a": 1}}));
        }
    }

    #[test]
    fn parse_never_panics_on_arbitrary_json(v in any_json(), d in any_json()) {
        if let Ok(f) = Filter::parse(&v) {
            let _ = f.matches(&d);
        }
        let _ = Filter::parse_str(&v.to_string());
    }

    #[test]
    fn valid_filters_parse_and_round_trip_through_text(f in valid_filter(), d in event_data()) {
        let parsed = Filter::parse(&f).expect("generated filter is valid");
        let again = Filter::parse_str(&f.to_string()).expect("text form is valid");
        prop_assert_eq!(parsed.matches(&d), again.matches(&d));
    }

    #[test]
    fn not_negates(f in valid_filter(), d in event_data()) {
        let plain = Filter::parse(&f).expect("generated filter is valid");
        let negated = Filter::parse(&json!({ "not": f })).expect("still within limits");
        prop_assert_eq!(negated.matches(&d), !plain.matches(&d));
    }

    #[test]
    fn neq_is_not_eq_and_nin_is_not_in(
        v in scalar_value(), list in prop::collection::vec(scalar_value(), 1..4), d in event_data(),
    ) {
        for field in ["a", "m.x", "old.b"] {
            let eq = cmp(field, "eq", v.clone()).matches(&d);
            prop_assert_eq!(cmp(field, "neq", v.clone()).matches(&d), !eq);
            let isin = cmp(field, "in", Value::Array(list.clone())).matches(&d);
            prop_assert_eq!(cmp(field, "nin", Value::Array(list.clone())).matches(&d), !isin);
        }
    }

    #[test]
    fn timestamps_compare_chronologically(
        a in 0u64..86_400 * 1_000_000, b in 0u64..86_400 * 1_000_000, zone in any::<bool>(),
    ) {
        // As Sluice writes them: trailing zeros of the fraction trimmed.
        let text = |micros: u64| {
            let secs = micros / 1_000_000;
            let mut frac = format!("{:06}", micros % 1_000_000);
            while frac.ends_with('0') {
                frac.pop();
            }
            let dot = if frac.is_empty() { "" } else { "." };
            let z = if zone { "Z" } else { "" };
            format!(
                "2026-11-22T{:02}:{:02}:{:02}{dot}{frac}{z}",
                secs / 3600, secs / 60 % 60, secs % 60,
            )
        };
        let (ta, tb) = (text(a), text(b));
        prop_assert_eq!(compare(&json!(ta), &json!(tb)), Some(a.cmp(&b)), "{} vs {}", ta, tb);
    }

    #[test]
    fn decimal_agrees_with_i128(a in any::<i64>(), b in any::<i64>(), scale in 0u32..20, zeros in 0usize..4) {
        // Wide integers, also written with a fraction of zeros or an
        // exponent.
        let (x, y) = (i128::from(a) * 10i128.pow(scale), i128::from(b));
        let want = x.cmp(&y);
        let forms = |n: i128| vec![
            n.to_string(),
            format!("{n}.{}", "0".repeat(zeros)),
            format!("{n}e0"),
            format!("{n}0e-1"),
        ];
        for fx in forms(x) {
            for fy in forms(y) {
                prop_assert_eq!(dec_cmp(&fx, &fy), Some(want), "{} vs {}", fx, fy);
            }
        }
        let sx = format!("{a}e{scale}");
        prop_assert_eq!(dec_cmp(&sx, &y.to_string()), Some(want), "{}", sx);
    }

    #[test]
    fn decimal_agrees_with_f64_on_small_decimals(
        ma in -999_999i64..1_000_000, sa in 0usize..7,
        mb in -999_999i64..1_000_000, sb in 0usize..7,
    ) {
        let text = |m: i64, s: usize| {
            let digits = format!("{:0>width$}", m.unsigned_abs(), width = s + 1);
            let (int, frac) = digits.split_at(digits.len() - s);
            let sign = if m < 0 { "-" } else { "" };
            if s == 0 { format!("{sign}{int}") } else { format!("{sign}{int}.{frac}") }
        };
        let (ta, tb) = (text(ma, sa), text(mb, sb));
        let fa: f64 = ta.parse().expect("decimal text");
        let fb: f64 = tb.parse().expect("decimal text");
        prop_assert_eq!(dec_cmp(&ta, &tb), fa.partial_cmp(&fb), "{} vs {}", ta, tb);
        let na: Value = serde_json::from_str(&ta).expect("JSON number");
        prop_assert_eq!(compare(&na, &json!(tb)), fa.partial_cmp(&fb));
    }
}
