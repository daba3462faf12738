//! Where a reader starts (`from`) and when that start is a gap: the one rule
//! every transport follows (SSE `from`, `GET /v1/events` pages, exports and
//! tails, WebSocket `subscribe`, webhook replay `from_seq`, `sluice tail
//! --from`).
//!
//! - `from` is a whole number ≥ 0, inclusive. Seqs start at 1, so 0 and 1
//!   both mean "from the start of the log". Anything else (negative, not a
//!   whole number) is refused with [`InvalidFrom`].
//! - A start is a gap only when retention really removed an event at or
//!   after it: `pruned_through >= max(from, 1)` with `pruned_through > 0`.
//!   On a log where nothing was pruned no start is a gap.
//!
//! Pure except [`gap_at`], which reads the watermark.

use tokio_postgres::GenericClient;

/// A `from` that is not a seq position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a seq: a whole number >= 0 (0 and 1 both start at the beginning of the log), got {found}")]
pub struct InvalidFrom {
    /// What was given, quoted for the message.
    pub found: String,
}

/// The longest given text echoed in an [`InvalidFrom`] message, in bytes.
const ECHO_BYTES: usize = 40;

/// Parses a `from` given as text (query parameter, command-line argument).
pub fn parse_from(text: &str) -> Result<i64, InvalidFrom> {
    match text.parse::<i64>() {
        Ok(n) => from_number(n),
        Err(_) => {
            let mut end = text.len().min(ECHO_BYTES);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let found = if end < text.len() {
                format!("{:?}… ({} bytes)", &text[..end], text.len())
            } else {
                format!("{text:?}")
            };
            Err(InvalidFrom { found })
        }
    }
}

/// Checks a `from` given as an integer (JSON members).
pub fn from_number(n: i64) -> Result<i64, InvalidFrom> {
    if n < 0 {
        return Err(InvalidFrom {
            found: n.to_string(),
        });
    }
    Ok(n)
}

/// A start that retention has removed events at or after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The `from` asked for, as given.
    pub requested: i64,
    /// The oldest seq the log may still hold (the watermark + 1).
    pub oldest: i64,
}

/// Whether starting at `from` on a log pruned through `pruned_through`
/// (`sluice.retention.pruned_through`, 0 when nothing was pruned) would
/// skip events that are gone.
pub fn gap(from: i64, pruned_through: i64) -> Option<Gap> {
    (pruned_through > 0 && pruned_through >= from.max(1)).then_some(Gap {
        requested: from,
        oldest: pruned_through + 1,
    })
}

/// [`gap`] against the log's current watermark.
pub async fn gap_at(
    client: &impl GenericClient,
    from: i64,
) -> Result<Option<Gap>, tokio_postgres::Error> {
    Ok(gap(from, super::pruned_through(client).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_one_are_the_start_and_negative_or_fractional_froms_are_refused() {
        assert_eq!(parse_from("0"), Ok(0));
        assert_eq!(parse_from("1"), Ok(1));
        assert_eq!(parse_from("42"), Ok(42));
        for bad in ["-1", "1.5", "abc", "", " 5", "1e3", "99999999999999999999"] {
            let e = parse_from(bad).expect_err(bad);
            assert!(e.to_string().contains(">= 0"), "{bad}: {e}");
        }
        assert_eq!(from_number(0), Ok(0));
        assert!(from_number(-3)
            .expect_err("negative")
            .to_string()
            .ends_with("got -3"));
        let long = "x".repeat(1000);
        assert!(parse_from(&long).expect_err("long").to_string().len() < 200);
    }

    #[test]
    fn a_start_is_a_gap_only_when_retention_removed_an_event_at_or_after_it() {
        // Nothing pruned: no start is a gap, 0 included.
        for from in [0, 1, 2, 1000] {
            assert_eq!(gap(from, 0), None, "from {from}");
        }
        // Pruned through 5: 0 and 1 (the start) and 5 are gaps, 6 is not.
        for from in [0, 1, 5] {
            assert_eq!(
                gap(from, 5),
                Some(Gap {
                    requested: from,
                    oldest: 6
                }),
                "from {from}"
            );
        }
        assert_eq!(gap(6, 5), None);
        assert_eq!(gap(100, 5), None);
    }
}
