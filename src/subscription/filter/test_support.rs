//! What the filter tests share: shorthands to build and reject filters, the
//! sample event, the exact decimal comparison and the proptest strategies
//! (filters, events, arbitrary JSON).

pub(super) use super::decimal::Decimal;
pub(super) use super::Filter;
pub(super) use proptest::prelude::*;
pub(super) use serde_json::{json, Map, Value};
pub(super) use std::cmp::Ordering;

pub(super) fn filter(v: Value) -> Filter {
    Filter::parse(&v).unwrap_or_else(|e| panic!("{v}: {e}"))
}

pub(super) fn cmp(field: &str, op: &str, value: Value) -> Filter {
    filter(json!({"field": field, "op": op, "value": value}))
}

pub(super) fn err(v: Value) -> String {
    Filter::parse(&v)
        .expect_err("filter should be rejected")
        .to_string()
}

pub(super) fn order_event() -> Value {
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

pub(super) fn dec_cmp(a: &str, b: &str) -> Option<Ordering> {
    Some(Decimal::parse(a)?.cmp(&Decimal::parse(b)?))
}

// --- strategies ------------------------------------------------------

pub(super) fn scalar_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..4).prop_map(|n| json!(n)),
        prop::sample::select(vec!["1", "1.0", "-2", "a", "b", "ab", "", "2e0", "0.5"])
            .prop_map(|s| json!(s)),
        Just(json!(0.5)),
    ]
}

pub(super) fn leaf_filter() -> impl Strategy<Value = Value> {
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
pub(super) fn valid_filter() -> impl Strategy<Value = Value> {
    leaf_filter().prop_recursive(3, 40, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..=3).prop_map(|v| json!({ "and": v })),
            prop::collection::vec(inner.clone(), 1..=3).prop_map(|v| json!({ "or": v })),
            inner.prop_map(|f| json!({ "not": f })),
        ]
    })
}

pub(super) fn row() -> impl Strategy<Value = Value> {
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

pub(super) fn event_data() -> impl Strategy<Value = Value> {
    (row(), prop::option::of(row())).prop_map(|(new, old)| match old {
        Some(old) => json!({"op": "update", "new": new, "old": old}),
        None => json!({"op": "insert", "new": new}),
    })
}

pub(super) fn any_json() -> impl Strategy<Value = Value> {
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
