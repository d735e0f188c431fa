//! What one listener does with its connections: plain HTTP or TLS in front of it, whom it
//! believes about the client's address, which origins it lets open a WebSocket.
//!
//! One per `[[listen]]` table, shared by the connections it accepts.

use std::net::SocketAddr;

use crate::client_ip::TrustedProxies;
use crate::config::{ListenConfig, ListenMode};
use crate::tls::{FileError, TlsServer};

#[derive(Debug)]
pub struct Frontend {
    /// Its place among the listeners (`listen[1]`), for logs and reload errors.
    pub index: usize,
    /// The configured address (port 0 picks one at bind time).
    pub addr: SocketAddr,
    pub mode: ListenMode,
    pub accept_proxy: bool,
    pub trusted: TrustedProxies,
    pub allowed_origins: Vec<String>,
    /// Terminates TLS when `[listen.tls]` is set.
    pub tls: Option<TlsServer>,
    /// `tls-passthrough`: where a ClientHello without SNI goes (refused when `None`).
    pub default_backend: Option<String>,
}

impl Frontend {
    /// Loads the listener's certificates, if it has any.
    pub fn new(index: usize, config: &ListenConfig) -> Result<Frontend, FileError> {
        let tls = match &config.tls_settings {
            Some(settings) => Some(TlsServer::load(settings.clone())?),
            None => None,
        };
        Ok(Frontend {
            index,
            addr: config.addr,
            mode: config.mode,
            accept_proxy: config.accept_proxy,
            trusted: TrustedProxies::new(config.trusted_proxies.clone()),
            allowed_origins: config.allowed_origins.clone(),
            tls,
            default_backend: config.default_backend.clone(),
        })
    }

    pub fn origin_allowed(&self, origin: Option<&[u8]>) -> bool {
        let allowed = &self.allowed_origins;
        allowed.is_empty()
            || origin.is_some_and(|o| {
                allowed
                    .iter()
                    .any(|a| a.as_bytes().eq_ignore_ascii_case(o.trim_ascii()))
            })
    }
}
