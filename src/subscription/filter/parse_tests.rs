use super::*;
use crate::subscription::filter::test_support::*;

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
}
