use super::*;
use crate::subscription::filter::test_support::*;

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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

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
}
