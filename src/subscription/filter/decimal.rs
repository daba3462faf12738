//! The exact decimal comparison of numbers and numeric strings: on their
//! digit text, never through `f64`.

use std::cmp::Ordering;

use super::MAX_DECIMAL_EXPONENT;

/// An exact decimal viewed in its text: `±0.d₁d₂…dₙ × 10^adjusted`, where
/// the significant digits `d₁…dₙ` (no leading or trailing zeros) are
/// `digits[start..end]` of `int ++ frac`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Decimal<'a> {
    /// -1, 0 (the value is zero, whatever its sign) or 1.
    sign: i8,
    int: &'a [u8],
    frac: &'a [u8],
    start: usize,
    end: usize,
    adjusted: i64,
}

/// Reads an optional `+` or `-` at `b[*i]`, moving past it; true for `-`.
fn sign(b: &[u8], i: &mut usize) -> bool {
    match b.get(*i) {
        Some(b'-') => {
            *i += 1;
            true
        }
        Some(b'+') => {
            *i += 1;
            false
        }
        _ => false,
    }
}

impl<'a> Decimal<'a> {
    /// `[+-]? (digits [. digits?] | . digits) ([eE] [+-]? digits)?`, with an
    /// exponent of at most [`MAX_DECIMAL_EXPONENT`] in magnitude.
    pub(super) fn parse(s: &'a str) -> Option<Decimal<'a>> {
        let b = s.as_bytes();
        let mut i = 0;
        let neg = sign(b, &mut i);
        let int_start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let int = b.get(int_start..i)?;
        let mut frac: &[u8] = &[];
        if b.get(i) == Some(&b'.') {
            i += 1;
            let frac_start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            frac = b.get(frac_start..i)?;
        }
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let mut exp: i64 = 0;
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            let exp_neg = sign(b, &mut i);
            let exp_start = i;
            while let Some(d) = b.get(i).filter(|d| d.is_ascii_digit()) {
                exp = exp * 10 + i64::from(d - b'0');
                if exp > MAX_DECIMAL_EXPONENT {
                    return None;
                }
                i += 1;
            }
            if i == exp_start {
                return None;
            }
            if exp_neg {
                exp = -exp;
            }
        }
        if i != b.len() {
            return None;
        }
        let mut d = Decimal {
            sign: 0,
            int,
            frac,
            start: 0,
            end: 0,
            adjusted: 0,
        };
        let len = int.len() + frac.len();
        let Some(start) = (0..len).find(|&k| d.digit(k) != b'0') else {
            return Some(d); // zero
        };
        let end = (start..len).rev().find(|&k| d.digit(k) != b'0')? + 1;
        d.sign = if neg { -1 } else { 1 };
        d.start = start;
        d.end = end;
        // Lengths are bounded by memory, far below i64::MAX.
        let int_len = i64::try_from(int.len()).ok()?;
        let start = i64::try_from(start).ok()?;
        d.adjusted = int_len - start + exp;
        Some(d)
    }

    /// Digit `k` of `int ++ frac`, as an ASCII byte.
    fn digit(&self, k: usize) -> u8 {
        match k.checked_sub(self.int.len()) {
            None => self.int.get(k).copied().unwrap_or(b'0'),
            Some(f) => self.frac.get(f).copied().unwrap_or(b'0'),
        }
    }

    pub(super) fn cmp(&self, other: &Decimal<'_>) -> Ordering {
        if self.sign != other.sign {
            return self.sign.cmp(&other.sign);
        }
        if self.sign == 0 {
            return Ordering::Equal;
        }
        let magnitude = self.adjusted.cmp(&other.adjusted).then_with(|| {
            let (la, lb) = (self.end - self.start, other.end - other.start);
            (0..la.min(lb))
                .map(|k| {
                    self.digit(self.start + k)
                        .cmp(&other.digit(other.start + k))
                })
                .find(|o| o.is_ne())
                // Trailing zeros are trimmed: more digits is larger.
                .unwrap_or_else(|| la.cmp(&lb))
        });
        if self.sign < 0 {
            magnitude.reverse()
        } else {
            magnitude
        }
    }
}

#[cfg(test)]
#[path = "decimal_tests.rs"]
mod tests;
