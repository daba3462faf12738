use super::*;
use crate::subscription::filter::test_support::*;

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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

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
