//! Reading certificates, keys and CA bundles from PEM files.
//!
//! Every failure is a [`FileError`] naming the file, the configuration key that named it and
//! what is wrong, in the same shape as a configuration error, so `tether check`, a failed
//! reload's 422 and the log all say the same thing.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use super::config::CertPaths;

/// A file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{}: {key}: {problem}", file.display())]
pub struct FileError {
    pub file: PathBuf,
    /// The configuration key that named the file (`listen.tls.cert`).
    pub key: String,
    pub problem: Problem,
}

/// What is wrong with a file.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("cannot read: {0}")]
    Read(io::Error),
    #[error("not valid PEM: {0}")]
    Pem(String),
    #[error("no CERTIFICATE in it")]
    NoCertificate,
    #[error("no unencrypted private key in it (PKCS#8, PKCS#1 or SEC1 PEM)")]
    NoKey,
    #[error("key not usable: {0}")]
    Key(rustls::Error),
    #[error("the key does not belong to the certificate in {}", .0.display())]
    KeyMismatch(PathBuf),
    #[error("certificate {index} is not valid X.509: {reason}")]
    Certificate { index: usize, reason: String },
    #[error("no CA certificate in it could be used: {0}")]
    NoCa(String),
}

impl FileError {
    pub(crate) fn new(file: &Path, key: &str, problem: Problem) -> FileError {
        FileError {
            file: file.to_owned(),
            key: key.to_owned(),
            problem,
        }
    }
}

/// What the proxy knows of a loaded certificate: for the expiry metric and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The file the chain came from.
    pub file: PathBuf,
    /// The leaf's subject, as `CN=…, O=…`.
    pub subject: String,
    /// The leaf's `notAfter`.
    pub not_after: SystemTime,
    /// The DNS names of the leaf's subjectAltName, lower-cased (`*.example.com` as written):
    /// what a `strict_sni` listener serves the default certificate for.
    pub dns_names: Vec<String>,
}

impl CertInfo {
    /// Seconds until the leaf expires (negative once it has).
    pub fn seconds_left(&self, now: SystemTime) -> f64 {
        match self.not_after.duration_since(now) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        }
    }

    /// `notAfter` as Unix seconds.
    pub fn not_after_unix(&self) -> i64 {
        match self.not_after.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        }
    }
}

fn read(file: &Path, key: &str) -> Result<Vec<u8>, FileError> {
    std::fs::read(file).map_err(|e| FileError::new(file, key, Problem::Read(e)))
}

/// Every certificate in a PEM file, in order (leaf first for a chain).
pub fn load_certs(file: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let bytes = read(file, key)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| FileError::new(file, key, Problem::Pem(e.to_string())))?;
    if certs.is_empty() {
        return Err(FileError::new(file, key, Problem::NoCertificate));
    }
    Ok(certs)
}

/// The first private key in a PEM file: PKCS#8, PKCS#1 or SEC1.
pub fn load_key(file: &Path, key: &str) -> Result<PrivateKeyDer<'static>, FileError> {
    let bytes = read(file, key)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        let problem = match e {
            pem::Error::NoItemsFound => Problem::NoKey,
            other => Problem::Pem(other.to_string()),
        };
        FileError::new(file, key, problem)
    })
}

/// A CA bundle as trust anchors. Certificates that are not usable as anchors make the whole
/// file fail: a CA file silently trusting less than it says is worse than an error.
pub fn load_roots(file: &Path, key: &str) -> Result<RootCertStore, FileError> {
    let certs = load_certs(file, key)?;
    let mut roots = RootCertStore::empty();
    for (index, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            FileError::new(
                file,
                key,
                Problem::Certificate {
                    index,
                    reason: e.to_string(),
                },
            )
        })?;
    }
    Ok(roots)
}

/// A chain and its key, checked to belong together, ready to serve or to present.
pub fn load_certified_key(
    paths: &CertPaths,
    provider: &CryptoProvider,
) -> Result<(Arc<CertifiedKey>, CertInfo), FileError> {
    let chain = load_certs(&paths.cert, &paths.cert_at)?;
    let info = describe(&chain[0]).map_err(|reason| {
        FileError::new(
            &paths.cert,
            &paths.cert_at,
            Problem::Certificate { index: 0, reason },
        )
    })?;
    let key = load_key(&paths.key, &paths.key_at)?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| FileError::new(&paths.key, &paths.key_at, Problem::Key(e)))?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        Ok(()) => {}
        // The provider could not say (no public key for this key type): let the handshake tell.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(FileError::new(
                &paths.key,
                &paths.key_at,
                Problem::KeyMismatch(paths.cert.clone()),
            ))
        }
    }
    Ok((
        Arc::new(certified),
        CertInfo {
            file: paths.cert.clone(),
            ..info
        },
    ))
}

/// The leaf's subject and expiry.
fn describe(leaf: &CertificateDer<'_>) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
    let not_after = cert.validity().not_after.timestamp();
    let not_after = if not_after >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(not_after as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(not_after.unsigned_abs())
    };
    let dns_names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => {
                    Some(dns.to_ascii_lowercase())
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(CertInfo {
        file: PathBuf::new(),
        subject: cert.subject().to_string(),
        not_after,
        dns_names,
    })
}
