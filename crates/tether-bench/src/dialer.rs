//! Reaching a target: TCP from a chosen source, then, for `wss://`, a TLS handshake.
//!
//! The modes that measure a proxy (`pingpong`, `idle`, `handshake`) are generic over a
//! [`Dialer`], so a `ws://` run compiles to the same code as before TLS existed — no branch
//! and no wrapper per read — and a `wss://` run gets its own copy over a rustls stream.
//!
//! The TLS client is pinned so that every server under test does the same work: TLS 1.3
//! only, one cipher suite (`TLS_AES_128_GCM_SHA256`) and one key exchange (X25519), which
//! HAProxy and nginx on OpenSSL 3.0 support as well as rustls. Left to their defaults the
//! clients and servers would not agree on the same thing everywhere: rustls with aws-lc-rs
//! offers and prefers the post-quantum hybrid X25519MLKEM768, which OpenSSL 3.0 lacks, so
//! tether would be measured doing a bigger key exchange than its peers. Session resumption
//! is off, so every handshake is a full one.

use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::aws_lc_rs as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::BenchError;
use crate::source::connect_from;
use crate::target::{Scheme, TargetUrl};

/// Opens the byte stream a WebSocket session then runs over.
pub trait Dialer: Clone + Send + Sync + 'static {
    /// What a connection is: a TCP stream, or TLS over one.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The target every connection goes to.
    fn target(&self) -> &TargetUrl;

    /// Connects from `source` (and completes TLS, for a TLS dialer).
    fn connect(
        &self,
        source: IpAddr,
    ) -> impl Future<Output = Result<Self::Stream, BenchError>> + Send;
}

/// `ws://`: a TCP connection, nothing more.
#[derive(Debug, Clone)]
pub struct Plain {
    target: TargetUrl,
}

impl Plain {
    /// A dialer for a `ws://` target.
    pub fn new(target: &TargetUrl) -> Result<Plain, BenchError> {
        if target.scheme() != Scheme::Ws {
            return Err(BenchError::InvalidArgument(format!(
                "{target}: this mode speaks ws:// only"
            )));
        }
        Ok(Plain {
            target: target.clone(),
        })
    }
}

impl Dialer for Plain {
    type Stream = TcpStream;

    fn target(&self) -> &TargetUrl {
        &self.target
    }

    async fn connect(&self, source: IpAddr) -> Result<TcpStream, BenchError> {
        connect_from(source, self.target.addr()).await
    }
}

/// `wss://`: TCP, then a full TLS 1.3 handshake that trusts only the given CA.
#[derive(Clone)]
pub struct Tls {
    target: TargetUrl,
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("target", &self.target)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// A dialer for a `wss://` target whose certificate chains to a CA in the PEM file `ca`.
    pub fn new(target: &TargetUrl, ca: &Path) -> Result<Tls, BenchError> {
        let name = ServerName::try_from(target.host().to_owned()).map_err(|e| {
            BenchError::InvalidArgument(format!(
                "{target}: {:?} is not a name TLS can verify: {e}",
                target.host()
            ))
        })?;
        Ok(Tls {
            target: target.clone(),
            connector: TlsConnector::from(Arc::new(client_config(load_roots(ca)?)?)),
            name,
        })
    }
}

impl Dialer for Tls {
    type Stream = TlsStream<TcpStream>;

    fn target(&self) -> &TargetUrl {
        &self.target
    }

    async fn connect(&self, source: IpAddr) -> Result<TlsStream<TcpStream>, BenchError> {
        let tcp = connect_from(source, self.target.addr()).await?;
        self.connector
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|source| BenchError::Tls {
                target: self.target.addr(),
                source,
            })
    }
}

/// The dialer a mode's `--url` and `--ca` call for.
#[derive(Debug)]
pub enum Dial {
    Plain(Plain),
    Tls(Tls),
}

impl Dial {
    /// `ws://` needs no `--ca`; `wss://` needs one (the generator trusts nothing by default:
    /// a benchmark's certificate is made for the run).
    pub fn new(target: &TargetUrl, ca: Option<&Path>) -> Result<Dial, BenchError> {
        match (target.scheme(), ca) {
            (Scheme::Ws, None) => Ok(Dial::Plain(Plain::new(target)?)),
            (Scheme::Ws, Some(_)) => Err(BenchError::InvalidArgument(format!(
                "--ca is for wss:// targets; {target} is plain"
            ))),
            (Scheme::Wss, Some(ca)) => Ok(Dial::Tls(Tls::new(target, ca)?)),
            (Scheme::Wss, None) => Err(BenchError::InvalidArgument(format!(
                "{target} needs --ca FILE: the PEM CA certificate that signed the server's"
            ))),
        }
    }
}

/// Every CA certificate in `file`; none at all is an error.
fn load_roots(file: &Path) -> Result<RootCertStore, BenchError> {
    let bad = |reason: String| BenchError::Ca {
        file: PathBuf::from(file),
        reason,
    };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(file).map_err(|e| bad(e.to_string()))?;
    for cert in certs {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no CERTIFICATE in it".into()));
    }
    Ok(roots)
}

/// TLS 1.3, `TLS_AES_128_GCM_SHA256`, X25519, no resumption, ALPN `http/1.1` (see the
/// module's doc for why the client is pinned).
fn client_config(roots: RootCertStore) -> Result<ClientConfig, BenchError> {
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![provider::cipher_suite::TLS13_AES_128_GCM_SHA256],
        kx_groups: vec![provider::kx_group::X25519],
        ..provider::default_provider()
    };
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| BenchError::InvalidArgument(format!("TLS client: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_and_ca_must_agree() {
        let plain: TargetUrl = "ws://127.0.0.1:9000/".parse().unwrap();
        let tls: TargetUrl = "wss://127.0.0.1:9000/".parse().unwrap();
        assert!(matches!(Dial::new(&plain, None), Ok(Dial::Plain(_))));
        let err = Dial::new(&tls, None).unwrap_err().to_string();
        assert!(err.contains("needs --ca"), "{err}");
        let err = Dial::new(&plain, Some(Path::new("/nonexistent")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--ca is for wss://"), "{err}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("tether-bench-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("empty.pem");
        std::fs::write(&file, "not a certificate\n").unwrap();
        let tls: TargetUrl = "wss://127.0.0.1:9000/".parse().unwrap();
        let err = Dial::new(&tls, Some(&file)).unwrap_err().to_string();
        assert!(
            err.contains("empty.pem") && err.contains("no CERTIFICATE"),
            "{err}"
        );
        let missing = Dial::new(&tls, Some(&dir.join("missing.pem")))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("missing.pem"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
