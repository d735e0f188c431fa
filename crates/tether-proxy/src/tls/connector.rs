//! TLS from the proxy to a backend.
//!
//! Each TLS backend owns a [`BackendConnector`]: its rustls `ClientConfig` (trust, client
//! certificate, a session cache so reconnects resume) and the server name it sends and
//! verifies. Handshake forwarding and health checks use the same connector, so a check
//! proves exactly what a client connection will need.

use std::io;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::config::{BackendTls, Trust};
use super::material::{load_certified_key, load_roots, FileError, Problem};
use super::provider;

/// The ALPN protocol offered to backends: they receive HTTP/1.1 upgrades.
const ALPN: &[u8] = b"http/1.1";

/// How the proxy connects to one TLS backend.
#[derive(Clone)]
pub struct BackendConnector {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for BackendConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendConnector")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl BackendConnector {
    /// Loads the files `tls` names (CA bundle, client certificate and key).
    pub fn new(tls: &BackendTls) -> Result<BackendConnector, FileError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            // Only fails for a provider without suites for these versions; aws-lc-rs has both.
            .expect("the aws-lc-rs provider supports TLS 1.2 and 1.3");
        let builder =
            match &tls.trust {
                Trust::SystemRoots => {
                    builder.with_root_certificates(system_roots().map_err(|reason| {
                        FileError::new(
                            Path::new("<system CA store>"),
                            &format!("{}.tls", tls.at),
                            Problem::NoCa(format!("{reason}; name a bundle with `ca`")),
                        )
                    })?)
                }
                Trust::Ca(path) => {
                    builder.with_root_certificates(load_roots(path, &format!("{}.ca", tls.at))?)
                }
                Trust::DangerousNoVerification => builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(DangerousAcceptAnyServerCert {
                        provider: provider.clone(),
                    })),
            };
        let mut config = match &tls.client_cert {
            Some(paths) => {
                let (key, _) = load_certified_key(paths, &provider)?;
                builder.with_client_cert_resolver(Arc::new(ClientCert(key)))
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(BackendConnector {
            connector: TlsConnector::from(Arc::new(config)),
            server_name: tls.server_name.clone(),
        })
    }

    /// The name sent as SNI (for a DNS name) and verified against the backend's certificate.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }

    /// Runs the TLS handshake over an open connection; the caller bounds its time.
    pub async fn connect<IO>(&self, io: IO) -> io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.connector.connect(self.server_name.clone(), io).await
    }
}

/// The operating system's CA certificates, read once per process.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                return Err(format!("no system CA certificates found{why}"));
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

/// Presents the configured certificate to every backend that asks.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// `verify = false`: accepts any certificate for any name. The handshake signatures are
/// still checked (so the peer holds the key of the certificate it sent), but nothing says
/// that certificate is the backend's: anyone on the path can impersonate it. Only an explicit
/// `verify = false` in the configuration builds this.
#[derive(Debug)]
struct DangerousAcceptAnyServerCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for DangerousAcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
