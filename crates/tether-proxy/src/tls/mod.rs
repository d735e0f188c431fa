//! TLS on both sides of the proxy: termination on listeners (with SNI certificates, live
//! reload and client certificates), TLS and mTLS to backends, and reading the ClientHello of
//! passthrough listeners.
//!
//! One crypto provider serves all of it: aws-lc-rs, which the hub's JWT verification links
//! too, so the binary carries a single crypto library. The `crypto-ring` feature swaps in
//! rustls' ring provider instead, so the two can be measured against each other
//! (docs/tls.md, "Crypto provider").

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
    PROVIDER.get_or_init(|| Arc::new(chosen())).clone()
}

/// The name of the provider this build uses.
pub const PROVIDER_NAME: &str = if cfg!(feature = "crypto-ring") {
    "ring"
} else {
    "aws-lc-rs"
};

#[cfg(not(feature = "crypto-ring"))]
fn chosen() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

#[cfg(feature = "crypto-ring")]
fn chosen() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only aws-lc-rs offers the post-quantum hybrid key exchange, so its presence tells
    /// which provider the build really uses.
    #[test]
    fn the_build_uses_the_provider_its_features_name() {
        let hybrid = provider()
            .kx_groups
            .iter()
            .any(|g| g.name() == rustls::NamedGroup::X25519MLKEM768);
        assert_eq!(hybrid, PROVIDER_NAME == "aws-lc-rs");
    }
}
