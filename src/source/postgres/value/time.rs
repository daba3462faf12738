//! Dates, timestamps and timestamptz in `DateStyle=ISO` (the session pins
//! `TimeZone=UTC`), checked and rewritten to the JSON contract's forms.
//! Times, timetz and intervals are not parsed: they stay text
//! ([`PgType::Other`](super::PgType::Other)).

use std::fmt::Write as _;

use serde_json::Value;

const DATE_SHAPE: &str = "expected YYYY-MM-DD[ BC], infinity or -infinity";
const TS_SHAPE: &str = "expected YYYY-MM-DD HH:MM:SS[.f][ BC], infinity or -infinity";
const TSTZ_SHAPE: &str =
    "expected YYYY-MM-DD HH:MM:SS[.f]±HH[:MM[:SS]][ BC], infinity or -infinity";

fn two_digits(t: &[u8], at: usize) -> Option<u32> {
    match (t.get(at), t.get(at + 1)) {
        (Some(a @ b'0'..=b'9'), Some(b @ b'0'..=b'9')) => {
            Some(u32::from(a - b'0') * 10 + u32::from(b - b'0'))
        }
        _ => None,
    }
}

fn is_leap(astronomical_year: i64) -> bool {
    astronomical_year % 4 == 0 && (astronomical_year % 100 != 0 || astronomical_year % 400 == 0)
}

fn days_in_month(astronomical_year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(astronomical_year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A parsed `YYYY-MM-DD` (year as printed, 4 to 9 digits, ≥ 1).
struct Ymd {
    year: i64,
    month: u32,
    day: u32,
    /// Index just past the date.
    end: usize,
}

fn parse_date(t: &[u8]) -> Option<Ymd> {
    let ylen = t.iter().take_while(|b| b.is_ascii_digit()).count();
    if !(4..=9).contains(&ylen) || t.get(ylen) != Some(&b'-') || t.get(ylen + 3) != Some(&b'-') {
        return None;
    }
    let year = t[..ylen]
        .iter()
        .fold(0i64, |a, &b| a * 10 + i64::from(b - b'0'));
    let month = two_digits(t, ylen + 1)?;
    let day = two_digits(t, ylen + 4)?;
    (year >= 1 && (1..=12).contains(&month) && day >= 1).then_some(Ymd {
        year,
        month,
        day,
        end: ylen + 6,
    })
}

/// Checks the day against its month once the era is known (1 BC is the
/// astronomical year 0, a leap year).
fn valid_day(d: &Ymd, bc: bool) -> bool {
    let astronomical = if bc { 1 - d.year } else { d.year };
    d.day <= days_in_month(astronomical, d.month)
}

/// A parsed ` HH:MM:SS[.f]` starting at the separator after the date.
struct Hms {
    secs: i64,
    /// Index of the `.` of the fraction (or `end` if none).
    frac: usize,
    end: usize,
}

fn parse_time(t: &[u8], at: usize) -> Option<Hms> {
    if t.get(at) != Some(&b' ') || t.get(at + 3) != Some(&b':') || t.get(at + 6) != Some(&b':') {
        return None;
    }
    let (h, m, s) = (
        two_digits(t, at + 1)?,
        two_digits(t, at + 4)?,
        two_digits(t, at + 7)?,
    );
    if h > 23 || m > 59 || s > 59 {
        return None;
    }
    let frac = at + 9;
    let mut end = frac;
    if t.get(frac) == Some(&b'.') {
        let n = t[frac + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if !(1..=9).contains(&n) {
            return None;
        }
        end = frac + 1 + n;
    }
    Some(Hms {
        secs: i64::from(h * 3600 + m * 60 + s),
        frac,
        end,
    })
}

/// `±HH[:MM[:SS]]` → (seconds east of UTC, index past it).
fn parse_offset(t: &[u8], at: usize) -> Option<(i64, usize)> {
    let sign = match t.get(at) {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return None,
    };
    let mut secs = i64::from(two_digits(t, at + 1)?) * 3600;
    let mut end = at + 3;
    for unit in [60, 1] {
        if t.get(end) != Some(&b':') {
            break;
        }
        let v = two_digits(t, end + 1).filter(|&v| v <= 59)?;
        secs += i64::from(v) * unit;
        end += 3;
    }
    Some((sign * secs, end))
}

/// Whether the rest is nothing (AD) or ` BC`.
fn era(rest: &[u8]) -> Option<bool> {
    match rest {
        b"" => Some(false),
        b" BC" => Some(true),
        _ => None,
    }
}

/// The text of a date, timestamp or timestamptz as a JSON string value:
/// what `write` puts inside the quotes (ASCII with nothing to escape).
pub(super) fn time_value(
    write: fn(&[u8], &mut Vec<u8>) -> Result<(), &'static str>,
    text: &[u8],
) -> Result<Value, &'static str> {
    let mut out = Vec::with_capacity(text.len() + 2);
    write(text, &mut out)?;
    Ok(Value::String(String::from_utf8_lossy(&out).into_owned()))
}

/// Writes a date's JSON string contents: as printed, once checked.
pub(super) fn date_text(text: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    if !matches!(text, b"infinity" | b"-infinity") {
        let d = parse_date(text).ok_or(DATE_SHAPE)?;
        let bc = era(&text[d.end..]).ok_or(DATE_SHAPE)?;
        if !valid_day(&d, bc) {
            return Err("day out of range for month");
        }
    }
    out.extend_from_slice(text);
    Ok(())
}

/// Writes a timestamp's JSON string contents: `YYYY-MM-DDTHH:MM:SS[.f]`;
/// infinities and BC as printed.
pub(super) fn timestamp_text(text: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    if matches!(text, b"infinity" | b"-infinity") {
        out.extend_from_slice(text);
        return Ok(());
    }
    let d = parse_date(text).ok_or(TS_SHAPE)?;
    let t = parse_time(text, d.end).ok_or(TS_SHAPE)?;
    let bc = era(&text[t.end..]).ok_or(TS_SHAPE)?;
    if !valid_day(&d, bc) {
        return Err("day out of range for month");
    }
    if bc {
        out.extend_from_slice(text);
        return Ok(());
    }
    out.extend_from_slice(&text[..d.end]);
    out.push(b'T');
    out.extend_from_slice(&text[d.end + 1..t.end]);
    Ok(())
}

/// Writes a timestamptz's JSON string contents: RFC 3339 in UTC
/// (`YYYY-MM-DDTHH:MM:SS[.f]Z`); infinities and BC as printed.
pub(super) fn timestamptz_text(text: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    if matches!(text, b"infinity" | b"-infinity") {
        out.extend_from_slice(text);
        return Ok(());
    }
    let d = parse_date(text).ok_or(TSTZ_SHAPE)?;
    let t = parse_time(text, d.end).ok_or(TSTZ_SHAPE)?;
    let (offset, end) = parse_offset(text, t.end).ok_or(TSTZ_SHAPE)?;
    let bc = era(&text[end..]).ok_or(TSTZ_SHAPE)?;
    if !valid_day(&d, bc) {
        return Err("day out of range for month");
    }
    if bc {
        out.extend_from_slice(text);
        return Ok(());
    }
    if offset == 0 {
        out.extend_from_slice(&text[..d.end]);
        out.push(b'T');
        out.extend_from_slice(&text[d.end + 1..t.frac]);
    } else {
        let local = t.secs - offset;
        let days = days_from_civil(d.year, d.month, d.day) + local.div_euclid(86_400);
        let secs = local.rem_euclid(86_400);
        let (y, m, day) = civil_from_days(days);
        if y < 1 {
            // The UTC instant is BC: keep the Postgres text, as for BC input.
            out.extend_from_slice(text);
            return Ok(());
        }
        let mut utc = String::with_capacity(20);
        let _ = write!(
            utc,
            "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        );
        out.extend_from_slice(utc.as_bytes());
    }
    out.extend_from_slice(&text[t.frac..t.end]);
    out.push(b'Z');
    Ok(())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical year).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // Both fit: day in 1..=31, month in 1..=12.
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
#[path = "time_tests.rs"]
mod tests;
