//! A hub node's settings, typed and defaulted; validated once by [`HubConfig::validate`].

use std::net::SocketAddr;
use std::time::Duration;

use crate::auth::AuthConfig;
use crate::tls::HubTls;

/// Settings of one hub node. History limits belong to the broker (see
/// [`crate::broker::BrokerOptions`]) because every node sharing a broker shares its history.
///
/// ```
/// let config = tether_hub::HubConfig {
///     name: "hub-a".into(),
///     ..Default::default()
/// };
/// assert_eq!(config.listen.port(), 7000);
/// ```
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Node name, sent in `welcome` so clients (and people) see where they landed.
    pub name: String,
    pub listen: SocketAddr,
    /// When set, `/api/*` requires `Authorization: Bearer <token>`. Unset, the API is open
    /// only on a loopback hub or one opened with `allow_anonymous`; elsewhere it answers
    /// 401 (see `docs/auth.md`).
    pub api_token: Option<String>,
    /// Token keys, checks and channel rules (`[auth]` and `[[namespace]]` in `hub.toml`).
    /// The default has no keys: an open hub, allowed on loopback only.
    pub auth: AuthConfig,
    /// Largest accepted client frame or HTTP publish body, in bytes. Larger frames get a
    /// `too_large` error; frames beyond 16 × this close the connection (1009).
    pub max_message_size: usize,
    /// How often the hub pings each connection.
    pub ping_interval: Duration,
    /// How long a client may stay silent after a ping before it is dropped.
    pub ping_timeout: Duration,
    /// Frames a client may send per second on average before it is closed with 1008.
    pub client_rate: u32,
    /// Frames a client may send in one burst.
    pub client_burst: u32,
    /// Messages queued for one client before it is closed as too slow (1013).
    pub client_queue: usize,
    /// The shortest interval between two message writes to one client. Messages that come
    /// sooner are held and sent together in one write when it is up; a message after a
    /// quiet spell goes out at once. Zero writes every message as soon as it is queued. A
    /// few milliseconds cap a busy client at one syscall and TCP segment per interval (the
    /// kernel's per-write cost dominates fan-out) and add at most that much latency.
    pub write_delay: Duration,
    /// Channels one connection may subscribe at once.
    pub max_subscriptions: usize,
    /// On graceful shutdown, clients are closed (1012) at random moments over this window,
    /// so they do not all reconnect elsewhere at once.
    pub shutdown_window: Duration,
    /// How long a connection may take to send a complete request head, counted from when
    /// it opened (or its previous response went out). A socket that sends nothing, or a
    /// head a byte at a time (slowloris), is closed when it passes.
    pub head_timeout: Duration,
    /// How long an HTTP connection (not yet a WebSocket) may send nothing at all, for
    /// instance in the middle of a request body, before it is closed.
    pub idle_timeout: Duration,
    /// When set, the node serves WebSocket and HTTP over TLS only (`wss://`, `https://`).
    pub tls: Option<HubTls>,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            name: "hub".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7000)),
            api_token: None,
            auth: AuthConfig::default(),
            max_message_size: 64 * 1024,
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(10),
            client_rate: 100,
            client_burst: 200,
            client_queue: 1024,
            write_delay: Duration::ZERO,
            max_subscriptions: 128,
            shutdown_window: Duration::from_secs(10),
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            tls: None,
        }
    }
}

/// The longest [`HubConfig::write_delay`]: beyond it, batching stops saving anything
/// worth the latency a realtime client sees.
pub const MAX_WRITE_DELAY: Duration = Duration::from_secs(1);

/// A setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    #[error("name must be 1..=64 printable characters")]
    BadName,
    #[error("write_delay must be at most {max:?} (got {got:?}): longer would read as lag")]
    WriteDelayTooLong { got: Duration, max: Duration },
}

impl HubConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let printable = |c: char| !c.is_control();
        if self.name.is_empty() || self.name.len() > 64 || !self.name.chars().all(printable) {
            return Err(ConfigError::BadName);
        }
        let positive = [
            ("max_message_size", self.max_message_size as u128),
            ("ping_interval", self.ping_interval.as_millis()),
            ("ping_timeout", self.ping_timeout.as_millis()),
            ("client_rate", self.client_rate as u128),
            ("client_burst", self.client_burst as u128),
            ("client_queue", self.client_queue as u128),
            ("max_subscriptions", self.max_subscriptions as u128),
            ("head_timeout", self.head_timeout.as_millis()),
            ("idle_timeout", self.idle_timeout.as_millis()),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Zero(key));
            }
        }
        if self.write_delay > MAX_WRITE_DELAY {
            return Err(ConfigError::WriteDelayTooLong {
                got: self.write_delay,
                max: MAX_WRITE_DELAY,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_zero_limits_are_not() {
        assert!(HubConfig::default().validate().is_ok());
        let config = HubConfig {
            client_queue: 0,
            ..Default::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Zero("client_queue"))
        ));
        let config = HubConfig {
            write_delay: Duration::from_secs(2),
            ..Default::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::WriteDelayTooLong { .. })
        ));
    }
}
