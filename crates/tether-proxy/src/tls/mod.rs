//! TLS on both sides of the proxy: termination on listeners (with SNI certificates, live
//! reload and client certificates), TLS and mTLS to backends, and reading the ClientHello of
//! passthrough listeners.
//!
//! One crypto provider serves all of it: aws-lc-rs, which the hub's JWT verification links
//! too, so the binary carries a single crypto library.

pub mod alert;
pub mod config;
pub mod connector;
pub mod hello;
pub mod material;
pub mod server;
pub mod store;
pub(crate) mod watch;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

pub use config::{BackendTls, BackendTlsConfig, ListenTlsConfig, ServerTlsSettings};
pub use connector::BackendConnector;
pub use material::{CertInfo, FileError};
pub use server::{ClientIdentity, HandshakeFailure, TlsServer, TlsVersion};

/// The crypto provider every TLS configuration of the proxy is built with.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}
