//! Webhook retry schedule, `Retry-After` parsing and per-endpoint rate
//! limiting. Pure functions of their inputs: callers pass the clock
//! (`SystemTime`, `Instant`) and the random jitter factor.

use std::time::{Duration, Instant, SystemTime};

use rand::Rng;

/// Smallest jitter factor applied to a retry delay.
pub const JITTER_MIN: f64 = 0.8;

/// Largest jitter factor applied to a retry delay.
pub const JITTER_MAX: f64 = 1.2;

/// Tolerance on the token count, so float rounding after an exact refill
/// interval does not ask the caller to wait a few more nanoseconds.
const TOKEN_EPSILON: f64 = 1e-9;

/// Parses a retry schedule: comma-separated delays, each a non-negative
/// integer followed by `ms`, `s`, `m` or `h` (a bare number is seconds),
/// e.g. `"0s,5s,5m,30m,2h,5h,10h,10h"`. Spaces around entries are ignored.
/// Entry `k` is the delay before attempt `k + 1` (see [`retry_delay`]).
pub fn parse_schedule(s: &str) -> Result<Vec<Duration>, String> {
    if s.trim().is_empty() {
        return Err("retry schedule is empty: give at least one delay, e.g. \"5s\"".to_owned());
    }
    s.split(',')
        .map(|entry| parse_delay(entry.trim()))
        .collect()
}

/// One schedule entry; the error names it.
fn parse_delay(entry: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid retry delay \"{entry}\": expected a whole number followed by ms, s, m or h (e.g. \"5m\")"
        )
    };
    let split = entry
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(entry.len());
    let (digits, unit) = entry.split_at(split);
    if digits.is_empty() {
        return Err(bad());
    }
    let value: u64 = digits.parse().map_err(|_| bad())?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    value
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("invalid retry delay \"{entry}\": too long"))
}

/// The delay before the next attempt when `attempts_made` attempts have
/// been made: `schedule[attempts_made]` (so `schedule[0]` before the first
/// attempt), the last entry once past the end, zero for an empty schedule;
/// multiplied by `jitter` clamped into [`JITTER_MIN`]..=[`JITTER_MAX`] (a
/// NaN jitter counts as 1).
pub fn retry_delay(schedule: &[Duration], attempts_made: u32, jitter: f64) -> Duration {
    let index = usize::try_from(attempts_made).unwrap_or(usize::MAX);
    let Some(base) = schedule.get(index).or_else(|| schedule.last()) else {
        return Duration::ZERO;
    };
    let factor = if jitter.is_nan() {
        1.0
    } else {
        jitter.clamp(JITTER_MIN, JITTER_MAX)
    };
    Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

/// A random jitter factor, uniform in [`JITTER_MIN`]..=[`JITTER_MAX`].
pub fn jitter_factor() -> f64 {
    rand::thread_rng().gen_range(JITTER_MIN..=JITTER_MAX)
}

/// The wait asked for by a `Retry-After` header value: delta-seconds (a
/// non-negative integer) or an HTTP-date, relative to `now` (a date in the
/// past is [`Duration::ZERO`]). `None` for anything else, including
/// delta-seconds too large for a `u64`. Callers should cap the result.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse().ok().map(Duration::from_secs);
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Token-bucket rate limiter: refills at `per_second` tokens per second up
/// to `burst` tokens, and starts full. Time is passed in, never read.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens added per second (0 when the rate given was not positive).
    per_second: f64,
    /// Capacity, in tokens.
    burst: f64,
    /// Tokens available as of `last`.
    tokens: f64,
    /// Latest instant seen; `None` until the first [`TokenBucket::try_take`].
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens (at least 1) refilling at
    /// `per_second` tokens per second. A rate that is not positive (or NaN)
    /// never refills; an infinite rate never limits.
    pub fn new(per_second: f64, burst: u32) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        let per_second = if per_second > 0.0 { per_second } else { 0.0 };
        TokenBucket {
            per_second,
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// Takes one token at `now`, or returns how long to wait until one is
    /// available ([`Duration::MAX`] if the bucket never refills). Instants
    /// earlier than one already seen add no tokens.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens + TOKEN_EPSILON >= 1.0 {
            self.tokens = (self.tokens - 1.0).max(0.0);
            return Ok(());
        }
        Err(self.wait_for_token())
    }

    /// Gives back `n` tokens taken but not used (never past `burst`).
    pub fn refund(&mut self, n: u32) {
        self.tokens = (self.tokens + f64::from(n)).min(self.burst);
    }

    /// Adds the tokens earned since the latest instant seen.
    fn refill(&mut self, now: Instant) {
        if self.per_second.is_infinite() {
            self.tokens = self.burst;
        }
        let Some(last) = self.last else {
            self.last = Some(now);
            return;
        };
        if now <= last {
            return;
        }
        let earned = now.duration_since(last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.last = Some(now);
    }

    /// Time until the bucket holds one token, rounded up to the nanosecond.
    fn wait_for_token(&self) -> Duration {
        if self.per_second <= 0.0 {
            return Duration::MAX;
        }
        let secs = (1.0 - self.tokens) / self.per_second;
        let nanos = (secs * 1e9).ceil();
        Duration::try_from_secs_f64(nanos / 1e9).unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn parses_the_default_schedule() {
        let parsed = parse_schedule("0s,5s,5m,30m,2h,5h,10h,10h").expect("valid schedule");
        let expected = [0, 5, 300, 1_800, 7_200, 18_000, 36_000, 36_000].map(secs);
        assert_eq!(parsed, expected);
    }

    #[test]
    fn parses_units_bare_numbers_and_spaces() {
        let parsed = parse_schedule(" 250ms, 7 ,1m , 1h").expect("valid schedule");
        assert_eq!(
            parsed,
            [Duration::from_millis(250), secs(7), secs(60), secs(3_600)]
        );
        assert_eq!(parse_schedule("0").expect("single entry"), [Duration::ZERO]);
    }

    #[test]
    fn schedule_errors_name_the_bad_entry() {
        let table: &[(&str, &str)] = &[
            ("5s,abc,1m", "\"abc\""),
            ("5s,,1m", "\"\""),
            ("5s,", "\"\""),
            ("1.5s", "\"1.5s\""),
            ("-5s", "\"-5s\""),
            ("5d", "\"5d\""),
            ("5 s", "\"5 s\""),
            ("s", "\"s\""),
            ("5sec", "\"5sec\""),
            ("99999999999999999999s", "\"99999999999999999999s\""),
            ("9999999999999999h", "\"9999999999999999h\": too long"),
        ];
        for (input, named) in table {
            let error = parse_schedule(input).expect_err(input);
            assert!(error.contains(named), "{input}: {error}");
        }
        for empty in ["", "  "] {
            let error = parse_schedule(empty).expect_err("empty");
            assert!(error.contains("empty"), "{error}");
        }
    }

    #[test]
    fn retry_delay_indexes_by_attempts_made() {
        let schedule = [0, 5, 300].map(secs);
        assert_eq!(retry_delay(&schedule, 0, 1.0), secs(0));
        assert_eq!(retry_delay(&schedule, 1, 1.0), secs(5));
        assert_eq!(retry_delay(&schedule, 2, 1.0), secs(300));
        assert_eq!(retry_delay(&schedule, 3, 1.0), secs(300));
        assert_eq!(retry_delay(&schedule, u32::MAX, 1.0), secs(300));
        assert_eq!(retry_delay(&[], 1, 1.0), Duration::ZERO);
    }

    #[test]
    fn retry_delay_applies_clamped_jitter() {
        let schedule = [secs(100)];
        let close = |d: Duration, expected: f64| (d.as_secs_f64() - expected).abs() < 1e-6;
        assert!(close(retry_delay(&schedule, 0, 0.8), 80.0));
        assert!(close(retry_delay(&schedule, 0, 1.2), 120.0));
        assert!(close(retry_delay(&schedule, 0, 0.9), 90.0));
        assert!(close(retry_delay(&schedule, 0, 0.0), 80.0));
        assert!(close(retry_delay(&schedule, 0, -3.0), 80.0));
        assert!(close(retry_delay(&schedule, 0, 7.0), 120.0));
        assert!(close(retry_delay(&schedule, 0, f64::INFINITY), 120.0));
        assert!(close(retry_delay(&schedule, 0, f64::NAN), 100.0));
        assert_eq!(retry_delay(&[Duration::MAX], 0, 1.2), Duration::MAX);
    }

    #[test]
    fn jitter_factor_stays_in_range() {
        for _ in 0..1_000 {
            let j = jitter_factor();
            assert!((JITTER_MIN..=JITTER_MAX).contains(&j), "{j}");
        }
    }

    #[test]
    fn retry_after_delta_seconds() {
        let now = SystemTime::UNIX_EPOCH + secs(1_700_000_000);
        assert_eq!(parse_retry_after("120", now), Some(secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("99999999999999999999", now), None);
        for garbage in ["", " ", "-1", "1.5", "+5", "soon", "12s"] {
            assert_eq!(parse_retry_after(garbage, now), None, "{garbage:?}");
        }
    }

    #[test]
    fn retry_after_http_date() {
        // Sun, 06 Nov 1994 08:49:37 GMT
        let date = SystemTime::UNIX_EPOCH + secs(784_111_777);
        let header = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(parse_retry_after(header, date - secs(90)), Some(secs(90)));
        assert_eq!(parse_retry_after(header, date), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(header, date + secs(90)),
            Some(Duration::ZERO)
        );
        let rfc850 = "Sunday, 06-Nov-94 08:49:37 GMT";
        assert_eq!(parse_retry_after(rfc850, date - secs(1)), Some(secs(1)));
        let asctime = "Sun Nov  6 08:49:37 1994";
        assert_eq!(parse_retry_after(asctime, date - secs(2)), Some(secs(2)));
        assert_eq!(
            parse_retry_after("Sun, 32 Nov 1994 08:49:37 GMT", date),
            None
        );
    }

    #[test]
    fn bucket_starts_full_then_limits() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(2.0, 3);
        for _ in 0..3 {
            assert_eq!(bucket.try_take(start), Ok(()));
        }
        assert_eq!(bucket.try_take(start), Err(Duration::from_millis(500)));
        let later = start + Duration::from_millis(200);
        assert_eq!(bucket.try_take(later), Err(Duration::from_millis(300)));
        let ready = start + Duration::from_millis(500);
        assert_eq!(bucket.try_take(ready), Ok(()));
        assert_eq!(bucket.try_take(ready), Err(Duration::from_millis(500)));
    }

    #[test]
    fn bucket_refills_up_to_burst_only() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 2);
        assert_eq!(bucket.try_take(start), Ok(()));
        assert_eq!(bucket.try_take(start), Ok(()));
        let much_later = start + secs(3_600);
        assert_eq!(bucket.try_take(much_later), Ok(()));
        assert_eq!(bucket.try_take(much_later), Ok(()));
        assert!(bucket.try_take(much_later).is_err());
    }

    #[test]
    fn bucket_sustains_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 1);
        let mut taken = 0;
        for ms in 0..=1_000u64 {
            if bucket.try_take(start + Duration::from_millis(ms)).is_ok() {
                taken += 1;
            }
        }
        // One at t=0, then one every 100 ms.
        assert_eq!(taken, 11);
    }

    #[test]
    fn bucket_ignores_earlier_instants() {
        let start = Instant::now() + secs(10);
        let mut bucket = TokenBucket::new(1.0, 1);
        assert_eq!(bucket.try_take(start), Ok(()));
        let earlier = start - secs(5);
        assert_eq!(bucket.try_take(earlier), Err(secs(1)));
        assert_eq!(bucket.try_take(start + secs(1)), Ok(()));
    }

    #[test]
    fn refunded_tokens_can_be_taken_again_up_to_burst() {
        let now = Instant::now();
        let mut bucket = TokenBucket::new(1.0, 2);
        assert_eq!(bucket.try_take(now), Ok(()));
        assert_eq!(bucket.try_take(now), Ok(()));
        assert!(bucket.try_take(now).is_err());
        bucket.refund(5);
        assert_eq!(bucket.try_take(now), Ok(()));
        assert_eq!(bucket.try_take(now), Ok(()));
        assert!(bucket.try_take(now).is_err(), "never more than burst");
    }

    #[test]
    fn bucket_edge_rates() {
        let now = Instant::now();
        let mut never = TokenBucket::new(0.0, 1);
        assert_eq!(never.try_take(now), Ok(()));
        assert_eq!(never.try_take(now + secs(3_600)), Err(Duration::MAX));
        let mut nan = TokenBucket::new(f64::NAN, 0);
        assert_eq!(nan.try_take(now), Ok(()), "burst 0 counts as 1");
        assert_eq!(nan.try_take(now), Err(Duration::MAX));
        let mut unlimited = TokenBucket::new(f64::INFINITY, 1);
        for _ in 0..100 {
            assert_eq!(unlimited.try_take(now), Ok(()));
        }
    }
}
