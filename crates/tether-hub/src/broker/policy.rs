//! How much history a channel keeps, chosen per channel by its namespace.
//!
//! A chat room wants a long history for people coming back; a cursor-position channel wants
//! almost none, and should not cost the broker a thousand entries per channel. So the policy
//! follows the channel rules' namespaces (`[[namespace]] history_size`, `history_ttl` in
//! hub.toml): a channel gets the policy of the namespace with the longest prefix it starts
//! with — the same choice the channel rules make — and the hub-wide default otherwise.

use std::time::Duration;

use crate::protocol::ChannelName;

/// How much history each channel keeps: at most `size` messages, none older than `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    pub size: usize,
    pub ttl: Duration,
}

impl Default for HistoryPolicy {
    fn default() -> Self {
        Self {
            size: 1000,
            ttl: Duration::from_secs(300),
        }
    }
}

/// The policy of every channel: a default and the namespaces' own, by prefix.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryPolicies {
    default: HistoryPolicy,
    /// Longest prefix first, so the first match is the namespace the channel belongs to.
    by_prefix: Vec<(Box<str>, HistoryPolicy)>,
}

impl HistoryPolicies {
    /// One policy for every channel.
    pub fn uniform(policy: HistoryPolicy) -> Self {
        Self {
            default: policy,
            by_prefix: Vec::new(),
        }
    }

    /// Channels starting with `prefix` (and no longer prefix given) keep `policy`. A
    /// namespace without its own limits must still be given (with the default), or its
    /// channels would fall to a shorter prefix's policy instead of the default.
    pub fn with_prefix(mut self, prefix: &str, policy: HistoryPolicy) -> Self {
        self.by_prefix.retain(|(p, _)| &**p != prefix);
        self.by_prefix.push((prefix.into(), policy));
        self.by_prefix
            .sort_by(|(a, _), (b, _)| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        self
    }

    /// The policy of `channel`'s namespace.
    pub fn for_channel(&self, channel: &ChannelName) -> HistoryPolicy {
        self.by_prefix
            .iter()
            .find(|(prefix, _)| channel.as_str().starts_with(&**prefix))
            .map_or(self.default, |(_, policy)| *policy)
    }

    /// The largest size and the longest ttl of all: what a broker that can only set one
    /// limit for all channels keeps, trimming further when it reads.
    pub fn widest(&self) -> HistoryPolicy {
        self.by_prefix
            .iter()
            .map(|(_, p)| *p)
            .fold(self.default, |a, b| HistoryPolicy {
                size: a.size.max(b.size),
                ttl: a.ttl.max(b.ttl),
            })
    }

    /// Whether every channel gets the default (no namespace sets limits of its own).
    pub fn is_uniform(&self) -> bool {
        self.by_prefix.iter().all(|(_, p)| *p == self.default)
    }

    /// The shortest ttl of all, which paces a sweeper that must not let any channel's
    /// history outlive its ttl by much.
    pub fn shortest_ttl(&self) -> Duration {
        self.by_prefix
            .iter()
            .map(|(_, p)| p.ttl)
            .fold(self.default.ttl, Duration::min)
    }
}

impl From<HistoryPolicy> for HistoryPolicies {
    fn from(policy: HistoryPolicy) -> Self {
        Self::uniform(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(size: usize, secs: u64) -> HistoryPolicy {
        HistoryPolicy {
            size,
            ttl: Duration::from_secs(secs),
        }
    }

    fn channel(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    #[test]
    fn a_channel_gets_its_longest_prefixs_policy_and_the_default_otherwise() {
        let policies = HistoryPolicies::uniform(policy(1000, 300))
            .with_prefix("room:", policy(50, 3600))
            .with_prefix("room:vip:", policy(1000, 300))
            .with_prefix("cursor:", policy(1, 5));
        assert_eq!(policies.for_channel(&channel("room:1")), policy(50, 3600));
        assert_eq!(
            policies.for_channel(&channel("room:vip:1")),
            policy(1000, 300)
        );
        assert_eq!(policies.for_channel(&channel("cursor:9")), policy(1, 5));
        assert_eq!(policies.for_channel(&channel("news")), policy(1000, 300));
        assert_eq!(policies.widest(), policy(1000, 3600));
        assert_eq!(policies.shortest_ttl(), Duration::from_secs(5));
        assert!(!policies.is_uniform());
        assert!(HistoryPolicies::uniform(policy(1000, 300))
            .with_prefix("room:", policy(1000, 300))
            .is_uniform());
    }

    #[test]
    fn giving_a_prefix_twice_keeps_the_last() {
        let policies = HistoryPolicies::default()
            .with_prefix("a:", policy(1, 1))
            .with_prefix("a:", policy(2, 2));
        assert_eq!(policies.for_channel(&channel("a:x")), policy(2, 2));
    }
}
