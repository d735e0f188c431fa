//! `tether proxy`: a WebSocket-aware load balancer.
//!
//! It reads the HTTP/1.1 upgrade handshake at Layer 7, picks a backend by a sticky key,
//! forwards the handshake and, after `101 Switching Protocols`, moves bytes at Layer 4 for the
//! life of the connection. See `DESIGN.md` for the data path.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = tether_proxy::Config::from_toml(r#"
//!     [balance]
//!     strategy = "consistent-hash"
//!     key = "query:sid"
//!     [[backend]]
//!     name = "b1"
//!     addr = "127.0.0.1:9001"
//! "#)?;
//! let proxy = tether_proxy::Proxy::bind(config, None).await?.spawn();
//! println!("listening on {}", proxy.addr());
//! # Ok(()) }
//! ```

pub mod admin;
pub mod backend;
pub mod balance;
pub mod body;
pub mod client_ip;
pub mod config;
mod connection;
mod exchange;
mod frontend;
pub mod handshake;
pub mod health;
pub mod key;
pub mod limits;
mod listener;
pub mod metrics;
pub mod prefixed;
pub mod response;
mod shared;
pub mod tls;
pub mod transport;
pub mod tunnel;

pub use backend::BackendState;
pub use config::{Config, ConfigError};
pub use listener::{Proxy, ProxyError, RunningProxy, Stopped};

use shared::Shared;

/// Re-reads the configuration file: the listeners' certificates (`[listen.tls]`, read
/// again from their files) and the backend list; live tunnels are untouched. Other sections
/// need a restart. A certificate that does not load fails the reload and changes nothing
/// more: the listener keeps serving the certificates it had.
pub(crate) fn reload_from_file(shared: &Shared) -> Result<(), ReloadError> {
    let path = shared.config_path.as_ref().ok_or(ReloadError::NoFile)?;
    let config = Config::from_file(path)?;
    reload_tls(shared, &config)?;
    reload(shared, &config);
    Ok(())
}

/// Gives each TLS listener the certificates `config` names, for new handshakes.
pub(crate) fn reload_tls(shared: &Shared, config: &Config) -> Result<(), tls::FileError> {
    for (frontend, listen) in shared.frontends.iter().zip(&config.listeners) {
        if let (Some(tls), Some(settings)) = (&frontend.tls, &listen.tls_settings) {
            if let Err(e) = tls.reload(settings.clone()) {
                tracing::error!(error = %e, listener = frontend.index, "certificate reload failed; keeping the current certificates");
                return Err(e);
            }
            shared.metrics.tls.set_certificates(&tls.certificates());
            tracing::info!(listener = frontend.index, "certificates reloaded");
        }
    }
    Ok(())
}

pub(crate) fn reload(shared: &Shared, config: &Config) {
    let added = shared.registry.reload(&config.backends, &shared.metrics);
    for backend in added {
        health::spawn(backend, shared.config.health.clone());
    }
    tracing::info!(backends = config.backends.len(), "backend list reloaded");
    shared.rebalancer.kick();
}

/// Why a reload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the proxy was not started from a file")]
    NoFile,
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A certificate, key or CA file did not load; the old certificates stay in use.
    #[error(transparent)]
    Tls(#[from] tls::FileError),
}
