//! State shared by every connection of one proxy.

use std::path::PathBuf;
use std::sync::Arc;

use crate::backend::Registry;
use crate::balance::Balancer;
use crate::client_ip::TrustedProxies;
use crate::config::Config;
use crate::handshake::HeadLimits;
use crate::limits::{ConnectionGate, RateLimiter};
use crate::metrics::Metrics;
use crate::tunnel::CloseSignal;

#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    /// Where the configuration came from, for reloads; `None` when built in memory.
    pub config_path: Option<PathBuf>,
    pub registry: Registry,
    pub balancer: Balancer,
    pub metrics: Metrics,
    pub trusted: TrustedProxies,
    pub gate: Arc<ConnectionGate>,
    pub rate: Option<RateLimiter>,
    pub head_limits: HeadLimits,
    /// Raised to end every connection and tunnel (shutdown past the grace period).
    pub closing: CloseSignal,
    /// Who may use the admin API, on either listener.
    pub admin_access: crate::admin::Access,
}

/// Keeps `tether_client_connections` right however a connection ends.
pub struct ClientGauge(prometheus_client::metrics::gauge::Gauge);

impl ClientGauge {
    pub fn new(shared: &Shared) -> ClientGauge {
        shared.metrics.client_connections.inc();
        ClientGauge(shared.metrics.client_connections.clone())
    }
}

impl Drop for ClientGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Shared {
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Shared {
        let metrics = Metrics::new();
        let registry = Registry::new(&config.backends, &metrics);
        Shared {
            admin_access: crate::admin::Access::new(&config.admin),
            balancer: Balancer::new(&config.balance),
            trusted: TrustedProxies::new(config.listen.trusted_proxies.clone()),
            gate: ConnectionGate::new(config.limits.maxconn),
            rate: RateLimiter::new(config.limits.rate_per_ip, config.limits.rate_burst),
            closing: CloseSignal::default(),
            head_limits: HeadLimits {
                max_bytes: config.limits.max_head_bytes,
                max_headers: config.limits.max_headers,
                first_byte: config.timeouts.first_byte,
                complete: config.timeouts.head,
            },
            registry,
            metrics,
            config,
            config_path,
        }
    }

    /// `stats_uri` without its trailing slash (`/_tether`), when configured.
    pub fn stats_prefix(&self) -> Option<&str> {
        let uri = &self.config.admin.stats_uri;
        (!uri.is_empty()).then(|| uri.trim_end_matches('/'))
    }

    /// True for `/_tether`, `/_tether/…` and `/_tether?…`, not for `/_tetherish`.
    pub fn is_stats_path(&self, path: &str) -> bool {
        self.stats_prefix().is_some_and(|prefix| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?']))
        })
    }

    pub fn origin_allowed(&self, origin: Option<&[u8]>) -> bool {
        let allowed = &self.config.listen.allowed_origins;
        allowed.is_empty()
            || origin.is_some_and(|o| {
                allowed
                    .iter()
                    .any(|a| a.as_bytes().eq_ignore_ascii_case(o.trim_ascii()))
            })
    }
}
