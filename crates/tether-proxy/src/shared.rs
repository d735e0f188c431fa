//! State shared by every connection of one proxy.

use std::path::PathBuf;
use std::sync::Arc;

use crate::backend::Registry;
use crate::balance::rebalance::Rebalancer;
use crate::balance::Balancer;
use crate::config::Config;
use crate::frontend::Frontend;
use crate::handshake::HeadLimits;
use crate::limits::{ConnectionGate, PendingGate, RateLimiter};
use crate::metrics::Metrics;
use crate::tunnel::{CloseSignal, TunnelTable};

#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    /// Where the configuration came from, for reloads; `None` when built in memory.
    pub config_path: Option<PathBuf>,
    pub registry: Registry,
    pub balancer: Balancer,
    pub metrics: Metrics,
    /// One per listener, in configuration order.
    pub frontends: Vec<Arc<Frontend>>,
    pub gate: Arc<ConnectionGate>,
    pub rate: Option<RateLimiter>,
    /// `[limits] max_pending_handshakes`.
    pub pending: Option<Arc<PendingGate>>,
    pub head_limits: HeadLimits,
    /// Raised to end every connection still in its handshake (shutdown past the grace
    /// period); tunnels are closed through `tunnels`.
    pub closing: CloseSignal,
    /// Every live tunnel, for drains, rebalances and shutdown.
    pub tunnels: TunnelTable,
    /// `[rebalance]`: its state, and the kick that starts it.
    pub rebalancer: Rebalancer,
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
    /// Builds the state of a proxy, loading every listener's certificates.
    pub fn new(
        config: Config,
        config_path: Option<PathBuf>,
    ) -> Result<Shared, crate::tls::FileError> {
        let metrics = Metrics::new();
        let registry = Registry::new(&config.backends, &metrics);
        let frontends = config
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| Frontend::new(i, l).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        for f in &frontends {
            if let Some(tls) = &f.tls {
                metrics.tls.set_certificates(&tls.certificates());
            }
        }
        Ok(Shared {
            admin_access: crate::admin::Access::new(&config.admin),
            balancer: Balancer::new(&config.balance),
            frontends,
            gate: ConnectionGate::new(config.limits.maxconn),
            rate: RateLimiter::new(config.limits.rate_per_ip, config.limits.rate_burst),
            pending: config.limits.max_pending_handshakes.map(PendingGate::new),
            closing: CloseSignal::default(),
            tunnels: TunnelTable::default(),
            rebalancer: Rebalancer::default(),
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
        })
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
}
