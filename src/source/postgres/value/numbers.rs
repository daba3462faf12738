//! Numbers: integers (exact, any width), floats (the printed digits),
//! numeric (an exact string) and money (C-locale `cash_out`, an exact
//! string without symbol or grouping).

use std::str::FromStr as _;

use serde_json::{Number, Value};

use super::ascii_string;

/// `-?(0|[1-9][0-9]*)` and not `-0`.
pub(super) fn is_plain_int(text: &[u8]) -> bool {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    match digits {
        [] => false,
        [b'0'] => text.len() == 1,
        [b'0', ..] => false,
        _ => digits.iter().all(u8::is_ascii_digit),
    }
}

/// `-?(0|[1-9][0-9]*)`, as an exact JSON number.
pub(super) fn int_value(text: &[u8]) -> Option<Number> {
    let (neg, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    match digits {
        [] => return None,
        [b'0', _, ..] => return None,
        _ if !digits.iter().all(u8::is_ascii_digit) => return None,
        _ => {}
    }
    let mut acc: u64 = 0;
    for &d in digits {
        match acc
            .checked_mul(10)
            .and_then(|a| a.checked_add(u64::from(d - b'0')))
        {
            Some(a) => acc = a,
            // Wider than 64 bits: still exact, via serde_json's own parser.
            None => return Number::from_str(std::str::from_utf8(text).ok()?).ok(),
        }
    }
    if !neg {
        Some(Number::from(acc))
    } else if acc != 0 && acc <= 1 << 63 {
        // 1 << 63 as i64 is i64::MIN, and its wrapping negation is itself.
        Some(Number::from((acc as i64).wrapping_neg()))
    } else {
        // "-0" (a float's negative zero) and below i64::MIN, kept as printed.
        Number::from_str(std::str::from_utf8(text).ok()?).ok()
    }
}

pub(super) fn float_value(text: &[u8]) -> Option<Value> {
    match text {
        b"NaN" | b"Infinity" | b"-Infinity" => Some(Value::String(ascii_string(text))),
        _ if !is_json_number(text) => None,
        _ => {
            if let Some(n) = int_value(text) {
                return Some(Value::Number(n));
            }
            // Validated ASCII; with arbitrary_precision the digits are kept
            // as printed (no f32 -> f64 widening).
            let n = Number::from_str(std::str::from_utf8(text).ok()?).ok()?;
            Some(Value::Number(n))
        }
    }
}

/// The JSON number grammar (which every finite Postgres float output obeys).
pub(super) fn is_json_number(t: &[u8]) -> bool {
    let mut i = usize::from(t.first() == Some(&b'-'));
    let digits_from = |mut i: usize| {
        while t.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    match t.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits_from(i + 1),
        _ => return false,
    }
    if t.get(i) == Some(&b'.') {
        let end = digits_from(i + 1);
        if end == i + 1 {
            return false;
        }
        i = end;
    }
    if matches!(t.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(t.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let end = digits_from(i);
        if end == i {
            return false;
        }
        i = end;
    }
    i == t.len()
}

/// numeric_out's forms: `-?[0-9]+(\.[0-9]+)?`, `NaN`, `Infinity`, `-Infinity`.
pub(super) fn is_numeric(text: &[u8]) -> bool {
    if matches!(text, b"NaN" | b"Infinity" | b"-Infinity") {
        return true;
    }
    let t = text.strip_prefix(b"-").unwrap_or(text);
    let (int, frac) = match t.iter().position(|&b| b == b'.') {
        Some(p) => (&t[..p], Some(&t[p + 1..])),
        None => (t, None),
    };
    let all_digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    all_digits(int) && frac.is_none_or(all_digits)
}

/// cash_out in the C locale: `-?$d,ddd.cc` → `-?dddd.cc`.
pub(super) fn money_value(text: &[u8]) -> Result<Value, &'static str> {
    const SHAPE: &str = "expected [-]$d,ddd.cc";
    let (mut neg, mut rest) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    rest = rest.strip_prefix(b"$").ok_or(SHAPE)?;
    if !neg {
        if let [b'-', r @ ..] = rest {
            neg = true;
            rest = r;
        }
    }
    let (int, frac) = match rest.iter().position(|&b| b == b'.') {
        Some(p) => (&rest[..p], Some(&rest[p + 1..])),
        None => (rest, None),
    };
    // Groups: the first 1..=3 digits (any number without separators), then
    // exactly 3 after each ','.
    let mut groups = int.split(|&b| b == b',');
    let first = groups.next().unwrap_or_default();
    let grouped = int.contains(&b',');
    if first.is_empty()
        || (grouped && first.len() > 3)
        || !first.iter().all(u8::is_ascii_digit)
        || !groups.all(|g| g.len() == 3 && g.iter().all(u8::is_ascii_digit))
    {
        return Err(SHAPE);
    }
    if frac.is_some_and(|f| f.is_empty() || !f.iter().all(u8::is_ascii_digit)) {
        return Err(SHAPE);
    }
    let mut out = String::with_capacity(text.len());
    if neg {
        out.push('-');
    }
    out.extend(int.iter().filter(|&&b| b != b',').map(|&b| char::from(b)));
    if let Some(f) = frac {
        out.push('.');
        out.extend(f.iter().map(|&b| char::from(b)));
    }
    Ok(Value::String(out))
}

#[cfg(test)]
#[path = "numbers_tests.rs"]
mod tests;
