//! Topic globs: the MQTT-style patterns a subscriber uses to pick event
//! topics (`tables/public.orders/update`, `collections/shop.orders/insert`,
//! `custom/order.shipped`), their validation and their matching.
//!
//! A topic is a list of segments separated by `/`; a segment may contain
//! dots. In a glob, a segment is either a literal, `*` (exactly one
//! segment) or `**` (zero or more segments, anywhere in the glob, any
//! number of times). A wildcard is always a whole segment: `ab*` is an
//! error, not a prefix match.
//!
//! Matching runs the glob as a small automaton over the topic's segments
//! (at most [`MAX_GLOB_SEGMENTS`] + 1 states held in a bit set), so its work
//! is linear in the topic's length whatever the glob: no backtracking and no
//! allocation.

use std::fmt;
use std::str::FromStr;

use super::MAX_NAME_BYTES;

/// Longest glob accepted, in bytes.
pub const MAX_GLOB_BYTES: usize = 256;
/// Most segments in a glob.
pub const MAX_GLOB_SEGMENTS: usize = 16;

/// A parsed, valid topic glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicGlob {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`
    One,
    /// `**`
    Any,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GlobError {
    #[error(
        "topic glob is empty; expected segments separated by \"/\", e.g. \"tables/public.orders/*\""
    )]
    Empty,
    #[error("topic glob is {len} bytes long; the limit is {MAX_GLOB_BYTES} bytes")]
    TooLong { len: usize },
    #[error(
        "topic glob contains a control character at byte {at}; only printable characters are allowed"
    )]
    ControlCharacter { at: usize },
    #[error("topic glob has {count} segments; the limit is {MAX_GLOB_SEGMENTS}")]
    TooManySegments { count: usize },
    #[error(
        "topic glob segment {index} is empty; segments are separated by a single \"/\" and the glob cannot start or end with \"/\""
    )]
    EmptySegment {
        /// 1-based position of the segment.
        index: usize,
    },
    #[error(
        "topic glob segment {segment:?} mixes \"*\" with other characters; a wildcard must be a whole segment: \"*\" (exactly one segment) or \"**\" (zero or more segments)"
    )]
    WildcardInSegment { segment: String },
    #[error("{kind} name is empty; expected {expected}")]
    NameEmpty {
        kind: &'static str,
        expected: &'static str,
    },
    #[error("{kind} name is {len} bytes long; the limit is {MAX_NAME_BYTES} bytes")]
    NameTooLong { kind: &'static str, len: usize },
    #[error("{kind} name contains a control character at byte {at}; expected {expected}")]
    NameControlCharacter {
        kind: &'static str,
        at: usize,
        expected: &'static str,
    },
    #[error(
        "{kind} name {name:?} contains \"{found}\"; expected {expected} (no \"/\" and no wildcards; to match several, use a topic glob)"
    )]
    NameInvalidCharacter {
        kind: &'static str,
        name: String,
        found: char,
        expected: &'static str,
    },
    #[error("{kind} name {name:?} is not qualified; expected {expected}")]
    NameNotQualified {
        kind: &'static str,
        name: String,
        expected: &'static str,
    },
}

impl TopicGlob {
    pub fn parse(s: &str) -> Result<TopicGlob, GlobError> {
        if s.is_empty() {
            return Err(GlobError::Empty);
        }
        if s.len() > MAX_GLOB_BYTES {
            return Err(GlobError::TooLong { len: s.len() });
        }
        if let Some((at, _)) = s.char_indices().find(|(_, c)| c.is_control()) {
            return Err(GlobError::ControlCharacter { at });
        }
        let count = s.split('/').count();
        if count > MAX_GLOB_SEGMENTS {
            return Err(GlobError::TooManySegments { count });
        }
        let mut segments = Vec::with_capacity(count);
        for (i, seg) in s.split('/').enumerate() {
            segments.push(match seg {
                "" => return Err(GlobError::EmptySegment { index: i + 1 }),
                "*" => Segment::One,
                "**" => Segment::Any,
                _ if seg.contains('*') => {
                    return Err(GlobError::WildcardInSegment {
                        segment: seg.to_owned(),
                    })
                }
                _ => Segment::Literal(seg.to_owned()),
            });
        }
        Ok(TopicGlob {
            text: s.to_owned(),
            segments,
        })
    }

    /// `*` matches exactly one segment; `**` matches zero or more segments,
    /// anywhere in the glob. Literal segments compare byte for byte.
    pub fn matches(&self, topic: &str) -> bool {
        // State i (bit i) = "the first i glob segments matched the topic
        // segments read so far". At most 17 states: a u32 holds them all.
        let n = self.segments.len();
        let accept = 1u32 << n;
        let mut states = self.closure(1);
        for seg in topic.split('/') {
            let mut next = 0u32;
            for (i, g) in self.segments.iter().enumerate() {
                if states & (1 << i) == 0 {
                    continue;
                }
                match g {
                    Segment::Literal(l) if l == seg => next |= 1 << (i + 1),
                    Segment::Literal(_) => {}
                    Segment::One => next |= 1 << (i + 1),
                    // `**` consumes this segment and stays; the closure
                    // lets it stop here.
                    Segment::Any => next |= 1 << i,
                }
            }
            states = self.closure(next);
            if states == 0 {
                return false;
            }
        }
        states & accept != 0
    }

    /// Adds the states reachable by letting each `**` match nothing.
    fn closure(&self, mut states: u32) -> u32 {
        for (i, g) in self.segments.iter().enumerate() {
            if matches!(g, Segment::Any) && states & (1 << i) != 0 {
                states |= 1 << (i + 1);
            }
        }
        states
    }

    /// The glob as the subscriber wrote it.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for TopicGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for TopicGlob {
    type Err = GlobError;

    fn from_str(s: &str) -> Result<TopicGlob, GlobError> {
        TopicGlob::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn glob(s: &str) -> TopicGlob {
        TopicGlob::parse(s).expect("valid glob")
    }

    #[test]
    fn literal_glob_matches_only_its_topic() {
        let g = glob("tables/public.orders/update");
        assert!(g.matches("tables/public.orders/update"));
        assert!(!g.matches("tables/public.orders/insert"));
        assert!(!g.matches("tables/public.orders"));
        assert!(!g.matches("tables/public.orders/update/x"));
        assert!(!g.matches("tables/public.Orders/update"));
        assert!(!g.matches(""));
    }

    #[test]
    fn star_matches_exactly_one_segment() {
        let g = glob("tables/*/update");
        assert!(g.matches("tables/public.orders/update"));
        assert!(g.matches("tables/shop.items/update"));
        assert!(!g.matches("tables/update"));
        assert!(!g.matches("tables/a/b/update"));
        let g = glob("tables/public.orders/*");
        assert!(g.matches("tables/public.orders/delete"));
        assert!(!g.matches("tables/public.orders"));
        assert!(!g.matches("tables/public.invoices/delete"));
        // A dot is not a separator: `*` takes the whole `schema.table`.
        assert!(!glob("custom/*").matches("custom/order/shipped"));
        assert!(glob("custom/*").matches("custom/order.shipped"));
    }

    #[test]
    fn double_star_matches_zero_or_more_segments_anywhere() {
        let all = glob("**");
        for t in ["", "a", "tables/public.orders/update", "a/b/c/d/e"] {
            assert!(all.matches(t), "{t}");
        }
        let g = glob("tables/**");
        assert!(g.matches("tables"));
        assert!(g.matches("tables/public.orders"));
        assert!(g.matches("tables/public.orders/update"));
        assert!(!g.matches("collections/shop.orders/insert"));
        let g = glob("**/update");
        assert!(g.matches("update"));
        assert!(g.matches("tables/public.orders/update"));
        assert!(!g.matches("tables/public.orders/insert"));
        let g = glob("tables/**/update");
        assert!(g.matches("tables/update"));
        assert!(g.matches("tables/public.orders/update"));
        assert!(g.matches("tables/x/y/update"));
        assert!(!g.matches("tables/x/y/update/z"));
        let g = glob("**/public.orders/**");
        assert!(g.matches("tables/public.orders/update"));
        assert!(g.matches("public.orders"));
        assert!(!g.matches("tables/public.invoices/update"));
        let g = glob("**/*/**");
        assert!(g.matches("a"));
        assert!(g.matches("a/b"));
        let g = glob("*/**/*");
        assert!(!g.matches("a"));
        assert!(g.matches("a/b"));
        assert!(g.matches("a/b/c"));
    }

    #[test]
    fn many_double_stars_stay_linear() {
        // Exponential for a naive backtracker: 8 `**` and a long topic
        // that almost matches.
        let g = glob("**/a/**/a/**/a/**/a/**/a/**/a/**/a/**/b");
        let topic = vec!["a"; 20_000].join("/");
        assert!(!g.matches(&topic));
        assert!(g.matches(&(topic + "/b")));
    }

    #[test]
    fn empty_topic_segments_are_segments() {
        // Topics come from the server and have no empty segments, but the
        // matcher must still be total.
        assert!(glob("a/*/b").matches("a//b"));
        assert!(glob("*").matches(""));
        assert!(!glob("a").matches(""));
    }

    #[test]
    fn as_str_and_display_return_the_input() {
        let g = glob("tables/**/update");
        assert_eq!(g.as_str(), "tables/**/update");
        assert_eq!(g.to_string(), "tables/**/update");
        assert_eq!("tables/*".parse::<TopicGlob>(), Ok(glob("tables/*")));
    }

    #[test]
    fn rejects_empty_glob() {
        assert_eq!(TopicGlob::parse(""), Err(GlobError::Empty));
        assert_eq!(
            GlobError::Empty.to_string(),
            "topic glob is empty; expected segments separated by \"/\", e.g. \"tables/public.orders/*\""
        );
    }

    #[test]
    fn rejects_empty_segments() {
        assert_eq!(
            TopicGlob::parse("a//b"),
            Err(GlobError::EmptySegment { index: 2 })
        );
        assert_eq!(
            TopicGlob::parse("/a"),
            Err(GlobError::EmptySegment { index: 1 })
        );
        assert_eq!(
            TopicGlob::parse("a/"),
            Err(GlobError::EmptySegment { index: 2 })
        );
        assert_eq!(
            TopicGlob::parse("/"),
            Err(GlobError::EmptySegment { index: 1 })
        );
        assert_eq!(
            GlobError::EmptySegment { index: 2 }.to_string(),
            "topic glob segment 2 is empty; segments are separated by a single \"/\" and the glob cannot start or end with \"/\""
        );
    }

    #[test]
    fn rejects_wildcards_inside_segments() {
        for (g, seg) in [
            ("ab*", "ab*"),
            ("tables/public.*/update", "public.*"),
            ("***", "***"),
            ("a/*b", "*b"),
        ] {
            assert_eq!(
                TopicGlob::parse(g),
                Err(GlobError::WildcardInSegment {
                    segment: seg.to_owned()
                }),
                "{g}"
            );
        }
        assert_eq!(
            TopicGlob::parse("ab*").unwrap_err().to_string(),
            "topic glob segment \"ab*\" mixes \"*\" with other characters; a wildcard must be a whole segment: \"*\" (exactly one segment) or \"**\" (zero or more segments)"
        );
    }

    #[test]
    fn rejects_too_long_and_too_many_segments() {
        let long = "a".repeat(257);
        assert_eq!(
            TopicGlob::parse(&long),
            Err(GlobError::TooLong { len: 257 })
        );
        assert!(TopicGlob::parse(&"a".repeat(256)).is_ok());
        assert_eq!(
            GlobError::TooLong { len: 257 }.to_string(),
            "topic glob is 257 bytes long; the limit is 256 bytes"
        );
        let many = vec!["a"; 17].join("/");
        assert_eq!(
            TopicGlob::parse(&many),
            Err(GlobError::TooManySegments { count: 17 })
        );
        assert!(TopicGlob::parse(&vec!["**"; 16].join("/")).is_ok());
        assert_eq!(
            GlobError::TooManySegments { count: 17 }.to_string(),
            "topic glob has 17 segments; the limit is 16"
        );
    }

    #[test]
    fn rejects_control_characters() {
        assert_eq!(
            TopicGlob::parse("tables/a\nb"),
            Err(GlobError::ControlCharacter { at: 8 })
        );
        assert_eq!(
            TopicGlob::parse("\u{7f}"),
            Err(GlobError::ControlCharacter { at: 0 })
        );
        assert_eq!(
            GlobError::ControlCharacter { at: 8 }.to_string(),
            "topic glob contains a control character at byte 8; only printable characters are allowed"
        );
    }

    #[test]
    fn sixteen_double_stars_match_everything() {
        let g = glob(&vec!["**"; 16].join("/"));
        assert!(g.matches(""));
        assert!(g.matches(&vec!["x"; 100].join("/")));
    }

    /// Straightforward recursive matcher (exponential in the worst case).
    fn reference(glob: &[&str], topic: &[&str]) -> bool {
        match glob.split_first() {
            None => topic.is_empty(),
            Some((&"**", rest)) => (0..=topic.len()).any(|k| reference(rest, &topic[k..])),
            Some((&"*", rest)) => !topic.is_empty() && reference(rest, &topic[1..]),
            Some((lit, rest)) => topic.first() == Some(lit) && reference(rest, &topic[1..]),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn matches_agrees_with_reference(
            glob_segs in prop::collection::vec(
                prop::sample::select(vec!["a", "b", "a.b", "*", "**"]), 1..8),
            topic_segs in prop::collection::vec(
                prop::sample::select(vec!["a", "b", "a.b", ""]), 1..10),
        ) {
            let g = TopicGlob::parse(&glob_segs.join("/")).expect("generated glob is valid");
            let topic = topic_segs.join("/");
            let split: Vec<&str> = topic.split('/').collect();
            prop_assert_eq!(g.matches(&topic), reference(&glob_segs, &split));
        }

        #[test]
        fn parse_never_panics_and_valid_globs_round_trip(s in ".{0,40}", t in ".{0,40}") {
            if let Ok(g) = TopicGlob::parse(&s) {
                prop_assert_eq!(g.as_str(), s.as_str());
                let segs: Vec<&str> = s.split('/').collect();
                let topic: Vec<&str> = t.split('/').collect();
                prop_assert_eq!(g.matches(&t), reference(&segs, &topic));
            }
        }
    }
}
