use crate::source::postgres::value::test_support::*;

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

/// Rust's `1.5e20` in Postgres' style: `1.5e+20` (signed, at least two
/// exponent digits).
fn pg_exp(rust: String) -> String {
    let (mantissa, exp) = rust.split_once('e').unwrap();
    let exp: i32 = exp.parse().unwrap();
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

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
}
