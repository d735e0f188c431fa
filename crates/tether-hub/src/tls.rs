//! Serving the hub's WebSocket and HTTP API over TLS.
//!
//! The proxy has a richer loader (SNI, mTLS, live reload); the hub only needs one
//! certificate and key, and must not depend on the proxy, so it carries this small one.
//! Errors name the file and the configuration key, in the proxy's `FILE: KEY: PROBLEM`
//! shape, so an operator reads both the same way.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// ALPN the hub offers: it speaks HTTP/1.1 only (WebSocket upgrades over h2 need RFC 8441).
const ALPN: &[u8] = b"http/1.1";

/// Where the hub's certificate chain and key live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC), unencrypted.
    pub key: PathBuf,
}

/// A loaded TLS configuration, ready to accept connections.
#[derive(Clone)]
pub struct HubTls {
    config: Arc<ServerConfig>,
    files: TlsFiles,
}

impl fmt::Debug for HubTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// A certificate or key file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{}: {key}: {problem}", file.display())]
pub struct TlsError {
    pub file: PathBuf,
    /// The setting that named the file (`tls_cert`, `tls_key`).
    pub key: &'static str,
    pub problem: TlsProblem,
}

/// What is wrong with a file.
#[derive(Debug, thiserror::Error)]
pub enum TlsProblem {
    #[error("cannot read: {0}")]
    Read(io::Error),
    #[error("not valid PEM: {0}")]
    Pem(String),
    #[error("no CERTIFICATE in it")]
    NoCertificate,
    #[error("no unencrypted private key in it (PKCS#8, PKCS#1 or SEC1 PEM)")]
    NoKey,
    #[error("the key cannot be used with the certificate in {}: {reason}", cert.display())]
    Unusable {
        cert: PathBuf,
        reason: Box<rustls::Error>,
    },
}

impl HubTls {
    /// Reads and checks both files: a hub that would fail every handshake does not start.
    pub fn load(files: TlsFiles) -> Result<HubTls, TlsError> {
        let chain = load_certs(&files.cert)?;
        let key = load_key(&files.key)?;
        let provider = Arc::new(aws_lc_rs::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
            .map_err(|reason| TlsError {
                file: files.key.clone(),
                key: "tls_key",
                problem: TlsProblem::Unusable {
                    cert: files.cert.clone(),
                    reason: Box::new(reason),
                },
            })?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(HubTls {
            config: Arc::new(config),
            files,
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }
}

fn read(file: &Path, key: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(file).map_err(|e| TlsError {
        file: file.to_owned(),
        key,
        problem: TlsProblem::Read(e),
    })
}

fn load_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |problem| TlsError {
        file: file.to_owned(),
        key: "tls_cert",
        problem,
    };
    let bytes = read(file, "tls_cert")?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| fail(TlsProblem::Pem(e.to_string())))?;
    if certs.is_empty() {
        return Err(fail(TlsProblem::NoCertificate));
    }
    Ok(certs)
}

fn load_key(file: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(file, "tls_key")?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError {
        file: file.to_owned(),
        key: "tls_key",
        problem: match e {
            pem::Error::NoItemsFound => TlsProblem::NoKey,
            other => TlsProblem::Pem(other.to_string()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tether-hub-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write_pair(dir: &Path) -> TlsFiles {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let files = TlsFiles {
            cert: dir.join("hub.pem"),
            key: dir.join("hub.key"),
        };
        std::fs::write(&files.cert, cert.cert.pem()).unwrap();
        std::fs::write(&files.key, cert.signing_key.serialize_pem()).unwrap();
        files
    }

    #[test]
    fn a_matching_pair_loads_with_http1_alpn() {
        let files = write_pair(&scratch("ok"));
        let tls = HubTls::load(files).unwrap();
        assert_eq!(tls.config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn a_missing_certificate_names_the_file() {
        let dir = scratch("missing");
        let mut files = write_pair(&dir);
        files.cert = dir.join("absent.pem");
        let error = HubTls::load(files).unwrap_err().to_string();
        assert!(
            error.contains("absent.pem: tls_cert: cannot read"),
            "{error}"
        );
    }

    #[test]
    fn a_key_file_without_a_key_is_refused() {
        let dir = scratch("nokey");
        let mut files = write_pair(&dir);
        files.key = files.cert.clone();
        let error = HubTls::load(files).unwrap_err().to_string();
        assert!(
            error.contains("tls_key: no unencrypted private key"),
            "{error}"
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = scratch("mismatch");
        let files = write_pair(&dir);
        let other = write_pair(&scratch("mismatch-other"));
        let mixed = TlsFiles {
            cert: files.cert,
            key: other.key,
        };
        let error = HubTls::load(mixed).unwrap_err().to_string();
        assert!(error.contains("tls_key: the key cannot be used"), "{error}");
    }
}
