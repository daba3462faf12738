use super::*;
use crate::source::postgres::value::test_support::*;

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
fn civil_day_arithmetic_round_trips() {
    for days in (-3_000_000..110_000_000i64).step_by(997) {
        let (y, m, d) = civil_from_days(days);
        assert_eq!(days_from_civil(y, m, d), days);
        assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
    }
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(civil_from_days(-1), (1969, 12, 31));
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
