//! Prometheus metrics of one hub node, served at `/metrics`.
//!
//! Each node owns its registry, so several hubs in one process (the demo) report
//! separately.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::protocol::ErrorCode;

/// Where a published message entered the hub.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Source {
    Ws,
    Http,
}

/// The outcome of a `subscribe` with `since`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Resume {
    Recovered,
    NotRecovered,
}

/// The broker operation that failed.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum BrokerOp {
    Publish,
    History,
    Subscribe,
    Feed,
}

/// Why the hub ended a connection.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum CloseReason {
    ClientClosed,
    PingTimeout,
    Flood,
    /// A frame or message above the hard size limit (closed with 1009).
    TooLarge,
    SlowConsumer,
    /// History no longer held messages the connection was owed (closed with 1013).
    Gap,
    Shutdown,
    Aborted,
    Error,
    /// No usable token, or a refusal that ends the connection (closed with 4003).
    Unauthorized,
    /// The token expired without a refresh (closed with 4001).
    TokenExpired,
}

/// Whether a connection proved who it is.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Authenticated {
    Yes,
    Anonymous,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabel {
    pub auth: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResumeLabel {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerOpLabel {
    pub op: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

/// The node's counters and gauges.
pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub subscriptions: Gauge,
    pub messages_in: Family<SourceLabel, Counter>,
    pub messages_out: Counter,
    pub broker_errors: Family<BrokerOpLabel, Counter>,
    /// 1 while the broker answers, 0 while it cannot be reached (see `broker::health`).
    pub broker_up: Gauge,
    /// Failed broker operations by what went wrong (`unavailable`, `timeout`, `refused` …).
    pub broker_failures: Family<KindLabel, Counter>,
    pub resumes: Family<ResumeLabel, Counter>,
    pub disconnects: Family<CloseLabel, Counter>,
    pub client_errors: Family<CodeLabel, Counter>,
    pub feed_overflows: Counter,
    /// Open connections past the authentication step, by whether they have a token.
    pub connections_auth: Family<AuthLabel, Gauge>,
    /// Refused tokens and refused connects, by the check that refused them.
    pub auth_failures: Family<ReasonLabel, Counter>,
    /// Upgrades refused because the address spent its budget of failures.
    pub auth_limited: Counter,
    pub channel_overflows: Counter,
    /// Times a channel's history no longer reached back to what the node had delivered.
    pub channel_gaps: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tether_hub");
        let metrics = Self {
            connections: Gauge::default(),
            subscriptions: Gauge::default(),
            messages_in: Family::default(),
            messages_out: Counter::default(),
            broker_errors: Family::default(),
            broker_up: Gauge::default(),
            broker_failures: Family::default(),
            resumes: Family::default(),
            disconnects: Family::default(),
            client_errors: Family::default(),
            feed_overflows: Counter::default(),
            connections_auth: Family::default(),
            auth_failures: Family::default(),
            auth_limited: Counter::default(),
            channel_overflows: Counter::default(),
            channel_gaps: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Open WebSocket connections",
            metrics.connections.clone(),
        );
        registry.register(
            "subscriptions",
            "Active channel subscriptions over all connections",
            metrics.subscriptions.clone(),
        );
        registry.register(
            "messages_in",
            "Messages published through this node",
            metrics.messages_in.clone(),
        );
        registry.register(
            "messages_out",
            "Message frames sent to clients (live and replayed)",
            metrics.messages_out.clone(),
        );
        registry.register(
            "broker_errors",
            "Failed broker operations",
            metrics.broker_errors.clone(),
        );
        registry.register(
            "broker_up",
            "Whether the broker answers (1) or cannot be reached (0)",
            metrics.broker_up.clone(),
        );
        registry.register(
            "broker_failures",
            "Failed broker operations and probes, by kind of failure",
            metrics.broker_failures.clone(),
        );
        registry.register(
            "resumes",
            "Subscriptions with `since`, by whether history reached back far enough",
            metrics.resumes.clone(),
        );
        registry.register(
            "disconnects",
            "Connections ended, by reason",
            metrics.disconnects.clone(),
        );
        registry.register(
            "client_errors",
            "Error frames sent to clients, by code",
            metrics.client_errors.clone(),
        );
        registry.register(
            "feed_overflows",
            "Times the node fell behind its broker feed and refilled every channel from history",
            metrics.feed_overflows.clone(),
        );
        registry.register(
            "connections_auth",
            "Open connections past authentication, authenticated (with a token) or anonymous",
            metrics.connections_auth.clone(),
        );
        registry.register(
            "auth_failures",
            "Refused tokens and connects, by reason (the check that refused them)",
            metrics.auth_failures.clone(),
        );
        registry.register(
            "auth_limited",
            "WebSocket upgrades refused (429) because the address failed authentication too often",
            metrics.auth_limited.clone(),
        );
        for auth in ["authenticated", "anonymous"] {
            let _ = metrics.connections_auth.get_or_create(&AuthLabel { auth });
        }
        registry.register(
            "channel_overflows",
            "Times a channel's dispatcher fell behind the node's router and refilled from history",
            metrics.channel_overflows.clone(),
        );
        registry.register(
            "channel_gaps",
            "Times a channel's history no longer reached back to what the node had delivered (its subscribers were closed with 1013 to resume)",
            metrics.channel_gaps.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    pub fn broker_error(&self, op: BrokerOp) {
        let op = match op {
            BrokerOp::Publish => "publish",
            BrokerOp::History => "history",
            BrokerOp::Subscribe => "subscribe",
            BrokerOp::Feed => "feed",
        };
        self.broker_errors
            .get_or_create(&BrokerOpLabel { op })
            .inc();
    }

    /// Counts a broker failure of `kind` (see `BrokerError::kind`).
    pub fn broker_failure(&self, kind: &'static str) {
        self.broker_failures
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    pub fn disconnect(&self, reason: CloseReason) {
        let reason = match reason {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::PingTimeout => "ping_timeout",
            CloseReason::Flood => "flood",
            CloseReason::TooLarge => "too_large",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Gap => "gap",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Aborted => "aborted",
            CloseReason::Error => "error",
            CloseReason::Unauthorized => "unauthorized",
            CloseReason::TokenExpired => "token_expired",
        };
        self.disconnects.get_or_create(&CloseLabel { reason }).inc();
    }

    pub fn message_in(&self, source: Source) {
        let source = match source {
            Source::Ws => "ws",
            Source::Http => "http",
        };
        self.messages_in
            .get_or_create(&SourceLabel { source })
            .inc();
    }

    pub fn resume(&self, outcome: Resume) {
        let outcome = match outcome {
            Resume::Recovered => "recovered",
            Resume::NotRecovered => "not_recovered",
        };
        self.resumes.get_or_create(&ResumeLabel { outcome }).inc();
    }

    pub fn client_error(&self, code: ErrorCode) {
        self.client_errors
            .get_or_create(&CodeLabel {
                code: code.as_str(),
            })
            .inc();
    }

    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// The gauge of connections of this kind.
    pub fn connections_of(&self, kind: Authenticated) -> Gauge {
        let auth = match kind {
            Authenticated::Yes => "authenticated",
            Authenticated::Anonymous => "anonymous",
        };
        self.connections_auth
            .get_or_create(&AuthLabel { auth })
            .clone()
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_carry_the_prefix_and_labels() {
        let m = Metrics::new();
        m.connections.inc();
        m.resume(Resume::NotRecovered);
        let text = m.encode();
        assert!(text.contains("tether_hub_connections 1"), "{text}");
        assert!(
            text.contains(r#"tether_hub_resumes_total{outcome="not_recovered"} 1"#),
            "{text}"
        );
    }
}
