//! Channel rules: who may subscribe and who may publish, per namespace.
//!
//! A namespace is a channel-name prefix (`room:`, `news:`) with its own rules;
//! a channel belongs to the namespace with the longest prefix it starts with, and to the
//! fallback (prefix `""`) otherwise. Two rules stand above every namespace:
//! a user-limited channel (one that names its users after `#`, like `dm:#alice,bob`) is
//! open only to those users, and a subscription token (claim `channel`) opens exactly the
//! channel it names. The HTTP API publishes anywhere: it is the application's own voice.

use std::borrow::Cow;
use std::num::NonZeroUsize;
use std::time::Duration;

use super::claims::{ChannelGrant, Identity};
use super::pattern::any_matches;

/// Who may subscribe to a namespace's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeRule {
    /// Anyone, with a token or without.
    Anonymous,
    /// Any client with a valid connection token.
    Authenticated,
    /// Only clients whose token's `channels` patterns match the channel (or that hold a
    /// subscription token for it).
    Token,
}

/// Who may publish to a namespace's channels from a WebSocket connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishRule {
    /// No client: only the HTTP API publishes here (announcements, server events).
    Nobody,
    /// Clients subscribed to the channel (each subscription passed the subscribe rule).
    Subscribers,
    /// Only clients whose token's `publish` patterns match the channel.
    Token,
    /// Any client, subscribed or not: the behaviour of a hub without authentication.
    Anyone,
}

/// One namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Channels starting with this belong here; `""` is the fallback.
    pub prefix: Box<str>,
    pub subscribe: SubscribeRule,
    pub publish: PublishRule,
    /// The namespace's own history limits; `None` keeps the hub's (`--history-size`,
    /// `--history-ttl`). Applied by the broker (`broker::policy`), not by these rules.
    pub history_size: Option<NonZeroUsize>,
    pub history_ttl: Option<Duration>,
}

impl Namespace {
    /// The fallback when nothing is configured: a hub with token keys lets tokens decide
    /// (`channels`, `publish`); a hub without any keeps today's open behaviour.
    pub fn fallback(tokens_configured: bool) -> Self {
        let (subscribe, publish) = if tokens_configured {
            (SubscribeRule::Token, PublishRule::Token)
        } else {
            (SubscribeRule::Anonymous, PublishRule::Anyone)
        };
        Self {
            prefix: "".into(),
            subscribe,
            publish,
            history_size: None,
            history_ttl: None,
        }
    }
}

/// A refusal by the channel rules: answered `forbidden`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("may not {action} {channel}: {why}")]
pub struct Denied {
    pub action: &'static str,
    pub channel: String,
    pub why: Cow<'static, str>,
}

/// Every namespace, matched by longest prefix.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Longest prefix first, so the first match is the most specific. The last one has
    /// the prefix `""` and matches everything.
    namespaces: Vec<Namespace>,
}

impl Rules {
    /// `namespaces` must have distinct prefixes (checked by [`super::settings`]); a
    /// fallback for `tokens_configured` is added when none has the prefix `""`.
    pub fn new(mut namespaces: Vec<Namespace>, tokens_configured: bool) -> Self {
        if !namespaces.iter().any(|n| n.prefix.is_empty()) {
            namespaces.push(Namespace::fallback(tokens_configured));
        }
        namespaces.sort_by_key(|n| std::cmp::Reverse(n.prefix.len()));
        Self { namespaces }
    }

    /// Rules without any namespace: the fallback alone.
    pub fn open(tokens_configured: bool) -> Self {
        Self::new(Vec::new(), tokens_configured)
    }

    /// The namespace `channel` belongs to.
    pub fn namespace(&self, channel: &str) -> &Namespace {
        self.namespaces
            .iter()
            .find(|n| channel.starts_with(&*n.prefix))
            .unwrap_or_else(|| {
                // `new` always adds a namespace with the empty prefix, which matches all.
                &self.namespaces[self.namespaces.len() - 1]
            })
    }

    pub fn namespaces(&self) -> &[Namespace] {
        &self.namespaces
    }

    /// Whether a client (`who` is `None` when anonymous) may subscribe to `channel`, with
    /// `grant` a subscription token already checked for this channel and user.
    pub fn check_subscribe(
        &self,
        channel: &str,
        who: Option<&Identity>,
        grant: Option<&ChannelGrant>,
    ) -> Result<&Namespace, Denied> {
        let deny = |why: &'static str| Denied {
            action: "subscribe to",
            channel: channel.to_owned(),
            why: why.into(),
        };
        limited_to_listed_users(channel, who).map_err(deny)?;
        let namespace = self.namespace(channel);
        if grant.is_some_and(|g| &*g.channel == channel) {
            return Ok(namespace);
        }
        let allowed = match (namespace.subscribe, who) {
            (SubscribeRule::Anonymous, _) => true,
            (SubscribeRule::Authenticated | SubscribeRule::Token, None) => {
                return Err(deny("this channel needs a token"))
            }
            (SubscribeRule::Authenticated, Some(_)) => true,
            (SubscribeRule::Token, Some(identity)) => any_matches(&identity.subscribe, channel),
        };
        if allowed {
            Ok(namespace)
        } else {
            Err(deny("the token's `channels` do not include it"))
        }
    }

    /// Whether a client may publish to `channel` from its connection; `subscribed` says
    /// whether it is subscribed to it now.
    pub fn check_publish(
        &self,
        channel: &str,
        who: Option<&Identity>,
        subscribed: bool,
    ) -> Result<(), Denied> {
        let deny = |why: &'static str| Denied {
            action: "publish to",
            channel: channel.to_owned(),
            why: why.into(),
        };
        limited_to_listed_users(channel, who).map_err(deny)?;
        match (self.namespace(channel).publish, who) {
            (PublishRule::Anyone, _) => Ok(()),
            (PublishRule::Nobody, _) => Err(deny("clients may not publish here")),
            (PublishRule::Subscribers, _) if subscribed => Ok(()),
            (PublishRule::Subscribers, _) => Err(deny("only its subscribers may publish")),
            (PublishRule::Token, Some(identity)) if any_matches(&identity.publish, channel) => {
                Ok(())
            }
            (PublishRule::Token, _) => Err(deny("the token's `publish` does not include it")),
        }
    }
}

/// The users a user-limited channel names (`dm:#alice,bob` → alice, bob), or `None` for
/// an ordinary channel.
pub fn listed_users(channel: &str) -> Option<impl Iterator<Item = &str>> {
    let (_, users) = channel.split_once('#')?;
    Some(users.split(',').filter(|u| !u.is_empty()))
}

fn limited_to_listed_users(channel: &str, who: Option<&Identity>) -> Result<(), &'static str> {
    let Some(mut users) = listed_users(channel) else {
        return Ok(());
    };
    match who {
        Some(identity) if users.any(|u| u == identity.user.as_str()) => Ok(()),
        _ => Err("the channel is limited to the users it names"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::auth::claims::UserId;
    use crate::auth::pattern::ChannelPattern;

    fn user(name: &str, subscribe: &[&str], publish: &[&str]) -> Identity {
        let patterns = |list: &[&str]| -> Arc<[ChannelPattern]> {
            list.iter()
                .map(|p| ChannelPattern::parse(p).unwrap())
                .collect()
        };
        Identity {
            user: UserId::parse(name).unwrap(),
            subscribe: patterns(subscribe),
            publish: patterns(publish),
            expires_at: SystemTime::now() + Duration::from_secs(60),
        }
    }

    fn ns(prefix: &str, subscribe: SubscribeRule, publish: PublishRule) -> Namespace {
        Namespace {
            history_size: None,
            history_ttl: None,
            prefix: prefix.into(),
            subscribe,
            publish,
        }
    }

    #[test]
    fn the_longest_prefix_decides() {
        let rules = Rules::new(
            vec![
                ns(
                    "room:",
                    SubscribeRule::Authenticated,
                    PublishRule::Subscribers,
                ),
                ns("room:vip:", SubscribeRule::Token, PublishRule::Nobody),
            ],
            true,
        );
        assert_eq!(&*rules.namespace("room:vip:1").prefix, "room:vip:");
        assert_eq!(&*rules.namespace("room:1").prefix, "room:");
        assert_eq!(&*rules.namespace("news").prefix, "");
        let alice = user("alice", &[], &[]);
        assert!(rules.check_subscribe("room:1", Some(&alice), None).is_ok());
        assert!(rules
            .check_subscribe("room:vip:1", Some(&alice), None)
            .is_err());
        assert!(rules.check_subscribe("room:1", None, None).is_err());
    }

    #[test]
    fn without_namespaces_tokens_decide_when_configured_and_all_is_open_otherwise() {
        let closed = Rules::open(true);
        let alice = user("alice", &["room:*"], &["room:lobby"]);
        assert!(closed.check_subscribe("room:x", Some(&alice), None).is_ok());
        assert!(closed.check_subscribe("news", Some(&alice), None).is_err());
        assert!(closed
            .check_publish("room:lobby", Some(&alice), false)
            .is_ok());
        assert!(closed.check_publish("room:x", Some(&alice), true).is_err());
        let open = Rules::open(false);
        assert!(open.check_subscribe("anything", None, None).is_ok());
        assert!(open.check_publish("anything", None, false).is_ok());
    }

    #[test]
    fn publish_rules() {
        let rules = Rules::new(
            vec![
                ns("chat:", SubscribeRule::Anonymous, PublishRule::Subscribers),
                ns("news:", SubscribeRule::Anonymous, PublishRule::Nobody),
            ],
            false,
        );
        assert!(rules.check_publish("chat:1", None, true).is_ok());
        assert!(rules.check_publish("chat:1", None, false).is_err());
        let refused = rules.check_publish("news:1", None, true).unwrap_err();
        assert_eq!(refused.action, "publish to");
        assert!(refused.to_string().contains("news:1"));
    }

    #[test]
    fn user_limited_channels_admit_only_their_users_whatever_the_namespace() {
        let rules = Rules::new(
            vec![ns("dm:", SubscribeRule::Anonymous, PublishRule::Anyone)],
            true,
        );
        let alice = user("alice", &["*"], &["*"]);
        let mallory = user("mallory", &["*"], &["*"]);
        assert!(rules
            .check_subscribe("dm:#alice,bob", Some(&alice), None)
            .is_ok());
        assert!(rules
            .check_subscribe("dm:#alice,bob", Some(&mallory), None)
            .is_err());
        assert!(rules.check_subscribe("dm:#alice,bob", None, None).is_err());
        assert!(rules
            .check_publish("dm:#alice,bob", Some(&mallory), true)
            .is_err());
        // A name that merely starts like a listed one is not it.
        let ali = user("ali", &["*"], &["*"]);
        assert!(rules
            .check_subscribe("dm:#alice,bob", Some(&ali), None)
            .is_err());
        assert!(rules.check_subscribe("dm:#,", Some(&alice), None).is_err());
    }

    #[test]
    fn a_subscription_token_opens_its_channel_only() {
        let rules = Rules::open(true);
        let bob = user("bob", &[], &[]);
        let grant = ChannelGrant {
            user: bob.user.clone(),
            channel: "secret:1".into(),
            expires_at: bob.expires_at,
        };
        assert!(rules
            .check_subscribe("secret:1", Some(&bob), Some(&grant))
            .is_ok());
        assert!(rules
            .check_subscribe("secret:2", Some(&bob), Some(&grant))
            .is_err());
        assert!(rules.check_subscribe("secret:1", Some(&bob), None).is_err());
    }
}
