//! Channel patterns: a channel name in which `*` matches any run of characters.
//!
//! Tokens carry patterns (`room:*`, `news:sports`, `*`) in their `channels` and `publish`
//! claims; every subscribe and publish matches the channel against them. A pattern is
//! split into its literal pieces once, when the token is checked, so a match is a prefix
//! test, a suffix test and a left-to-right search for the pieces in between: linear in the
//! channel's length whatever the pattern, with no backtracking for a hostile pattern
//! (`*a*a*a*a*b`) to exploit.

use std::fmt;

/// Longest pattern accepted, in bytes: a channel name (128) plus room for a few `*`.
pub const MAX_PATTERN_LEN: usize = 160;

/// A validated channel pattern.
///
/// ```
/// use tether_hub::auth::ChannelPattern;
/// let rooms = ChannelPattern::parse("room:*").unwrap();
/// assert!(rooms.matches("room:lobby"));
/// assert!(!rooms.matches("news:today"));
/// assert!(ChannelPattern::parse("*").unwrap().matches("anything"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelPattern {
    source: Box<str>,
    /// The text before the first `*` (the whole pattern when it has none).
    head: Box<str>,
    /// `None` for a pattern without `*`: it must equal the channel.
    wild: Option<Wild>,
}

/// The part of a pattern from its first `*` on.
#[derive(Clone, PartialEq, Eq)]
struct Wild {
    /// Literal pieces between consecutive stars, in order, none empty.
    middle: Box<[Box<str>]>,
    /// The text after the last `*`.
    tail: Box<str>,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("a channel pattern cannot be empty")]
    Empty,
    #[error("a channel pattern may be at most {MAX_PATTERN_LEN} bytes")]
    TooLong,
    #[error("{0:?} is not allowed in a channel pattern (allowed: A-Z a-z 0-9 _ - . : # , and *)")]
    BadChar(char),
}

/// Characters a channel name may hold (see [`crate::protocol::ChannelName`]), plus `#` and
/// `,` which name the users of a user-limited channel (`dm:#alice,bob`).
pub(crate) fn is_channel_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '#' | ',')
}

impl ChannelPattern {
    /// Validates and compiles `pattern`.
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        if pattern.is_empty() {
            return Err(PatternError::Empty);
        }
        if pattern.len() > MAX_PATTERN_LEN {
            return Err(PatternError::TooLong);
        }
        if let Some(bad) = pattern.chars().find(|&c| c != '*' && !is_channel_char(c)) {
            return Err(PatternError::BadChar(bad));
        }
        let mut pieces = pattern.split('*');
        // `split` yields at least one piece, even for "" (excluded above).
        let head: Box<str> = pieces.next().unwrap_or_default().into();
        let rest: Vec<&str> = pieces.collect();
        let wild = rest.split_last().map(|(tail, middle)| Wild {
            middle: middle
                .iter()
                .filter(|piece| !piece.is_empty())
                .map(|&piece| piece.into())
                .collect(),
            tail: (*tail).into(),
        });
        Ok(Self {
            source: pattern.into(),
            head,
            wild,
        })
    }

    /// Whether `channel` is one of the names this pattern stands for.
    pub fn matches(&self, channel: &str) -> bool {
        let Some(wild) = &self.wild else {
            return channel == &*self.head;
        };
        let Some(mut rest) = channel.strip_prefix(&*self.head) else {
            return false;
        };
        // The tail is anchored at the end; the pieces between stars must fit, in order,
        // in what lies between head and tail. Taking each piece's leftmost occurrence
        // leaves the most room for the next, so a greedy search is exact.
        let Some(between) = rest.strip_suffix(&*wild.tail) else {
            return false;
        };
        rest = between;
        for piece in wild.middle.iter() {
            match rest.find(&**piece) {
                Some(at) => rest = &rest[at + piece.len()..],
                None => return false,
            }
        }
        true
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Debug for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelPattern({:?})", self.source)
    }
}

impl fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Whether any of `patterns` matches `channel`.
pub fn any_matches(patterns: &[ChannelPattern], channel: &str) -> bool {
    patterns.iter().any(|p| p.matches(channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, channel: &str) -> bool {
        ChannelPattern::parse(pattern).unwrap().matches(channel)
    }

    #[test]
    fn a_pattern_without_a_star_matches_only_itself() {
        assert!(m("room:lobby", "room:lobby"));
        assert!(!m("room:lobby", "room:lobby2"));
        assert!(!m("room:lobby", "room:lobb"));
    }

    #[test]
    fn a_star_matches_any_run_including_none_and_colons() {
        assert!(m("room:*", "room:"));
        assert!(m("room:*", "room:a:b:c"));
        assert!(!m("room:*", "rooms:a"));
        assert!(m("*", "x"));
        assert!(m("*:admin", "team:admin"));
        assert!(!m("*:admin", "team:admins"));
        assert!(m("a*b*c", "abc"));
        assert!(m("a*b*c", "a-b-b-c"));
        assert!(!m("a*b*c", "acb"));
        assert!(m("**", "anything"));
    }

    #[test]
    fn head_and_tail_may_not_overlap() {
        // "ab" has the head "a" and the tail "b" but nothing for them to share.
        assert!(m("ab*ba", "abba"));
        assert!(!m("ab*ba", "aba"));
        assert!(!m("a*a", "a"));
    }

    #[test]
    fn patterns_are_validated() {
        assert_eq!(ChannelPattern::parse(""), Err(PatternError::Empty));
        assert_eq!(
            ChannelPattern::parse("a b"),
            Err(PatternError::BadChar(' '))
        );
        assert_eq!(
            ChannelPattern::parse(&"a".repeat(MAX_PATTERN_LEN + 1)),
            Err(PatternError::TooLong)
        );
        assert!(ChannelPattern::parse("dm:#alice,*").is_ok());
    }

    /// The straightforward recursive matcher, to compare against.
    fn reference(p: &[u8], c: &[u8]) -> bool {
        match p.split_first() {
            None => c.is_empty(),
            Some((b'*', rest)) => (0..=c.len()).any(|i| reference(rest, &c[i..])),
            Some((x, rest)) => c.first() == Some(x) && reference(rest, &c[1..]),
        }
    }

    #[test]
    fn agrees_with_the_reference_matcher_on_a_small_alphabet() {
        // Every pattern and channel over {a, b, *} up to length 5 (channels without *).
        let words = |max: usize, alphabet: &[u8]| {
            let mut all = vec![Vec::new()];
            let mut layer = vec![Vec::new()];
            for _ in 0..max {
                layer = layer
                    .iter()
                    .flat_map(|w: &Vec<u8>| {
                        alphabet.iter().map(move |&x| {
                            let mut w = w.clone();
                            w.push(x);
                            w
                        })
                    })
                    .collect();
                all.extend(layer.iter().cloned());
            }
            all
        };
        for p in words(5, b"ab*").into_iter().filter(|p| !p.is_empty()) {
            let pattern = ChannelPattern::parse(std::str::from_utf8(&p).unwrap()).unwrap();
            for c in words(5, b"ab") {
                let channel = std::str::from_utf8(&c).unwrap();
                assert_eq!(
                    pattern.matches(channel),
                    reference(&p, &c),
                    "{pattern:?} vs {channel:?}"
                );
            }
        }
    }
}
