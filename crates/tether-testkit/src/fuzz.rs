//! Mutation-based input generators for the parser fuzz tests (`tests/fuzz_*.rs`).
//!
//! cargo-fuzz needs a nightly compiler, so the fuzz targets are proptest properties that run
//! on stable inside `cargo test`. Random bytes alone rarely get past the first line of an
//! HTTP head, so most inputs start from a small corpus of valid inputs and apply a few
//! structure-aware mutations (byte flips, inserted tokens from a per-target dictionary,
//! removals, truncations, duplicated lines, splices of two inputs). proptest shrinks a failing
//! case to the fewest, simplest mutations, which makes a crash easy to turn into a named
//! regression test.
//!
//! The number of cases is fixed per target so CI stays fast; `TETHER_FUZZ_ITERS` raises it
//! for a longer run (see docs/fuzz.md).

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;

/// The environment variable that sets the cases of every fuzz target.
pub const ITERS_VAR: &str = "TETHER_FUZZ_ITERS";

/// The cases to run: `TETHER_FUZZ_ITERS` if set (and a number above zero), else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var(ITERS_VAR)
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// A proptest configuration for a fuzz target with `default` cases. Failures are not written
/// to `proptest-regressions/` files: a failure found here becomes a named test instead.
pub fn config(default: u32) -> Config {
    Config {
        cases: cases(default),
        failure_persistence: None,
        ..Config::default()
    }
}

/// A generated input: bytes that print as a byte string (`b"GET / \\r\\n"`), so a failing case
/// reads as the text it is and can be pasted into a regression test.
#[derive(Clone, PartialEq, Eq)]
pub struct Input(pub Vec<u8>);

impl std::ops::Deref for Input {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

/// One edit of an input.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flip one bit of one byte.
    Flip { at: Index, bit: u8 },
    /// Overwrite one byte.
    Set { at: Index, byte: u8 },
    /// Insert a token from the target's dictionary.
    Token { at: Index, token: Index },
    /// Remove up to `len` bytes.
    Remove { at: Index, len: u8 },
    /// Cut the input short.
    Truncate { at: Index },
    /// Repeat one `\n`-terminated line right after itself (a duplicated header).
    DuplicateLine { line: Index },
    /// Copy a run of bytes to another place.
    Copy { from: Index, to: Index, len: u8 },
    /// Keep a prefix and append the suffix of another corpus input.
    Splice {
        at: Index,
        other: Index,
        from: Index,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(at, token)| Mutation::Token { at, token }),
        1 => (any::<Index>(), 1u8..16).prop_map(|(at, len)| Mutation::Remove { at, len }),
        1 => (any::<Index>()).prop_map(|at| Mutation::Truncate { at }),
        1 => (any::<Index>()).prop_map(|line| Mutation::DuplicateLine { line }),
        1 => (any::<Index>(), any::<Index>(), 1u8..32)
            .prop_map(|(from, to, len)| Mutation::Copy { from, to, len }),
        1 => (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(at, other, from)| Mutation::Splice { at, other, from }),
    ]
}

/// Applies `m` to `input`; `corpus` is for splices, `dict` for inserted tokens.
pub fn apply(input: &mut Vec<u8>, m: &Mutation, corpus: &[&[u8]], dict: &[&[u8]]) {
    // A position in 0..=len (insertions may go at the end).
    let pos = |i: &Index, len: usize| i.index(len + 1);
    match m {
        Mutation::Flip { at, bit } if !input.is_empty() => {
            let i = at.index(input.len());
            input[i] ^= 1 << bit;
        }
        Mutation::Set { at, byte } if !input.is_empty() => {
            let i = at.index(input.len());
            input[i] = *byte;
        }
        Mutation::Token { at, token } if !dict.is_empty() => {
            let i = pos(at, input.len());
            let t = dict[token.index(dict.len())];
            input.splice(i..i, t.iter().copied());
        }
        Mutation::Remove { at, len } if !input.is_empty() => {
            let i = at.index(input.len());
            let end = (i + usize::from(*len)).min(input.len());
            input.drain(i..end);
        }
        Mutation::Truncate { at } => {
            let i = pos(at, input.len());
            input.truncate(i);
        }
        Mutation::DuplicateLine { line } => {
            let starts: Vec<usize> = std::iter::once(0)
                .chain(
                    input
                        .iter()
                        .enumerate()
                        .filter(|(_, &b)| b == b'\n')
                        .map(|(i, _)| i + 1),
                )
                .filter(|&s| s < input.len())
                .collect();
            if starts.is_empty() {
                return;
            }
            let start = starts[line.index(starts.len())];
            let end = input[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(input.len(), |p| start + p + 1);
            let copy = input[start..end].to_vec();
            input.splice(end..end, copy);
        }
        Mutation::Copy { from, to, len } if !input.is_empty() => {
            let s = from.index(input.len());
            let e = (s + usize::from(*len)).min(input.len());
            let copy = input[s..e].to_vec();
            let t = pos(to, input.len());
            input.splice(t..t, copy);
        }
        Mutation::Splice { at, other, from } if !corpus.is_empty() => {
            let o = corpus[other.index(corpus.len())];
            input.truncate(pos(at, input.len()));
            input.extend_from_slice(&o[pos(from, o.len())..]);
        }
        _ => {}
    }
}

/// Inputs made from `corpus` by up to `max_mutations` edits, with one in ten being plain
/// random bytes (so nothing is only ever seen through the corpus' shape).
pub fn mutated(
    corpus: &'static [&'static [u8]],
    dict: &'static [&'static [u8]],
    max_mutations: usize,
) -> impl Strategy<Value = Input> {
    assert!(!corpus.is_empty(), "a fuzz corpus needs at least one input");
    let edited = (
        any::<Index>(),
        proptest::collection::vec(mutation(), 0..=max_mutations),
    )
        .prop_map(move |(seed, edits)| {
            let mut input = corpus[seed.index(corpus.len())].to_vec();
            for m in &edits {
                apply(&mut input, m, corpus, dict);
            }
            Input(input)
        });
    prop_oneof![
        9 => edited,
        1 => proptest::collection::vec(any::<u8>(), 0..512).prop_map(Input),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    #[test]
    fn mutations_reach_inputs_unlike_the_corpus() {
        let corpus: &[&[u8]] = &[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"];
        let strategy = mutated(Box::leak(corpus.to_vec().into_boxed_slice()), &[b"\r\n"], 6);
        let mut runner = TestRunner::deterministic();
        let changed = (0..200)
            .map(|_| strategy.new_tree(&mut runner).unwrap().current())
            .filter(|input| &input[..] != corpus[0])
            .count();
        assert!(changed > 100, "only {changed} of 200 inputs differ");
    }

    #[test]
    fn a_duplicated_line_repeats_a_header() {
        let mut runner = TestRunner::deterministic();
        let line = any::<Index>().new_tree(&mut runner).unwrap().current();
        let mut input = b"B: 1\r\n".to_vec();
        apply(&mut input, &Mutation::DuplicateLine { line }, &[], &[]);
        assert_eq!(input, b"B: 1\r\nB: 1\r\n");
    }
}
