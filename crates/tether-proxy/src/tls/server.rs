//! Terminating TLS on a listener.
//!
//! A [`TlsServer`] owns a listener's rustls `ServerConfig`: the certificate store (swapped
//! on reload), the client-certificate verifier its `client_auth` asks for, the minimum
//! version, and ALPN `http/1.1` only — the proxy reads HTTP/1.1 upgrades, and advertising h2
//! before RFC 8441 works would break clients that pick it.
//!
//! The handshake itself runs in the connection's task, under the deadlines the caller sets
//! (see [`TlsServer::acceptor`]), so a client that stalls mid-ClientHello is cut like a
//! slowloris one.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelValue;
use rustls::crypto::CryptoProvider;
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{ProtocolVersion, ServerConfig, ServerConnection};
use tokio_rustls::TlsAcceptor;

use super::config::{ClientAuth, MinVersion, ServerTlsSettings};
use super::material::{load_roots, CertInfo, FileError, Problem};
use super::provider;
use super::store::{CertSet, CertStore};

/// The ALPN protocols a listener offers.
const ALPN: &[&[u8]] = &[b"http/1.1"];

/// A listener's TLS: what new handshakes use, replaceable while connections run.
#[derive(Debug)]
pub struct TlsServer {
    provider: Arc<CryptoProvider>,
    store: Arc<CertStore>,
    config: ArcSwap<ServerConfig>,
    /// The settings of the generation in use, for the next reload and for `check`.
    settings: Mutex<ServerTlsSettings>,
}

impl TlsServer {
    /// Loads every file the settings name.
    pub fn load(settings: ServerTlsSettings) -> Result<TlsServer, FileError> {
        let provider = provider();
        let store = Arc::new(CertStore::new(CertSet::load(&settings, &provider)?));
        let config = build_config(&settings, &provider, store.clone(), None)?;
        Ok(TlsServer {
            provider,
            store,
            config: ArcSwap::from_pointee(config),
            settings: Mutex::new(settings),
        })
    }

    /// Loads `settings` (the same as before, to pick up changed files, or new ones from a
    /// reloaded configuration) and, only if every file loaded, makes new handshakes use them.
    /// Open sessions keep what they negotiated. On error nothing changes.
    pub fn reload(&self, settings: ServerTlsSettings) -> Result<(), FileError> {
        let set = CertSet::load(&settings, &self.provider)?;
        let previous = self.config.load();
        let old_settings = self.settings();
        // Resumed sessions skip client-certificate verification, so sessions are carried over
        // only while no client CA is involved: a reload that changes the CAs must not let a
        // session verified under the old ones resume.
        let keep_sessions = old_settings.client_auth == ClientAuth::None
            && settings.client_auth == ClientAuth::None;
        let config = build_config(
            &settings,
            &self.provider,
            self.store.clone(),
            keep_sessions.then_some(&**previous),
        )?;
        self.store.swap(set);
        self.config.store(Arc::new(config));
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner) = settings;
        Ok(())
    }

    /// Re-reads the files of the current settings.
    pub fn reload_files(&self) -> Result<(), FileError> {
        self.reload(self.settings())
    }

    /// An acceptor for one handshake, with the configuration current now. Wrap its
    /// `accept` in the connection's deadline.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }

    /// The certificates new handshakes are served, default first.
    pub fn certificates(&self) -> Vec<CertInfo> {
        self.store.current().infos().to_vec()
    }

    pub fn settings(&self) -> ServerTlsSettings {
        self.settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn build_config(
    settings: &ServerTlsSettings,
    provider: &Arc<CryptoProvider>,
    store: Arc<CertStore>,
    previous: Option<&ServerConfig>,
) -> Result<ServerConfig, FileError> {
    let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_version {
        MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        // Only fails for a provider without suites for these versions; aws-lc-rs has both.
        .expect("the aws-lc-rs provider supports TLS 1.2 and 1.3");
    let verifier = match &settings.client_auth {
        ClientAuth::None => WebPkiClientVerifier::no_client_auth(),
        ClientAuth::Optional { ca } | ClientAuth::Required { ca } => {
            let key = format!("{}.client_ca", settings.at);
            let roots = Arc::new(load_roots(ca, &key)?);
            let mut b = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
            if matches!(settings.client_auth, ClientAuth::Optional { .. }) {
                b = b.allow_unauthenticated();
            }
            b.build()
                .map_err(|e| FileError::new(ca, &key, Problem::NoCa(e.to_string())))?
        }
    };
    let mut config = builder
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(store);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    config.session_storage = match previous {
        Some(p) => p.session_storage.clone(),
        None => ServerSessionMemoryCache::new(256),
    };
    Ok(config)
}

/// The TLS version of a finished handshake, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        }
    }
}

/// `version="1.3"`, as operators write it.
impl EncodeLabelValue for TlsVersion {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

impl TlsVersion {
    pub fn of(conn: &ServerConnection) -> Option<TlsVersion> {
        match conn.protocol_version()? {
            ProtocolVersion::TLSv1_2 => Some(TlsVersion::Tls12),
            ProtocolVersion::TLSv1_3 => Some(TlsVersion::Tls13),
            _ => None,
        }
    }
}

/// Why a TLS handshake with a client failed, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum HandshakeFailure {
    /// The first bytes were not TLS (often plain HTTP on a TLS port).
    NotTls,
    /// An SSLv2/SSLv3 hello (found by [`hello::peek`](super::hello::peek)).
    LegacyVersion,
    /// The ClientHello passed the size limit.
    TooLarge,
    /// A `tls-passthrough` ClientHello without SNI, and no `default_backend`.
    NoServerName,
    /// Bytes that are not valid TLS.
    Malformed,
    /// No version, cipher suite or ALPN protocol in common (a TLS 1.2 client on a
    /// `min_version = "1.3"` listener).
    Incompatible,
    /// `client_auth = "required"` and no certificate came.
    CertificateMissing,
    /// The client certificate has expired (or is not valid yet).
    CertificateExpired,
    /// The client certificate does not chain to `client_ca`, or is otherwise refused.
    CertificateRejected,
    /// `strict_sni`: the client named a server no certificate of the listener covers
    /// (rustls answers `access_denied`).
    UnknownServerName,
    /// The client sent an alert (often: it does not trust the proxy's certificate).
    AlertReceived,
    /// The client closed during the handshake.
    Closed,
    /// The handshake deadline passed.
    Timeout,
    /// A socket error, or anything not listed.
    Other,
}

impl HandshakeFailure {
    /// Classifies an error of `TlsAcceptor::accept`.
    pub fn of(err: &io::Error) -> HandshakeFailure {
        use rustls::{CertificateError, Error};
        let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
            return match err.kind() {
                io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe => HandshakeFailure::Closed,
                io::ErrorKind::TimedOut => HandshakeFailure::Timeout,
                _ => HandshakeFailure::Other,
            };
        };
        match tls {
            Error::InvalidMessage(_)
            | Error::InappropriateMessage { .. }
            | Error::InappropriateHandshakeMessage { .. }
            | Error::DecryptError
            | Error::PeerMisbehaved(_) => HandshakeFailure::Malformed,
            Error::PeerIncompatible(_) | Error::NoApplicationProtocol => {
                HandshakeFailure::Incompatible
            }
            Error::NoCertificatesPresented => HandshakeFailure::CertificateMissing,
            Error::InvalidCertificate(
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. },
            ) => HandshakeFailure::CertificateExpired,
            Error::InvalidCertificate(_) => HandshakeFailure::CertificateRejected,
            Error::AlertReceived(_) => HandshakeFailure::AlertReceived,
            // What rustls 0.23 says when the certificate resolver (`tls::store`) returns
            // nothing, which it does only for `strict_sni`.
            Error::General(message) if message == "no server certificate chain resolved" => {
                HandshakeFailure::UnknownServerName
            }
            _ => HandshakeFailure::Other,
        }
    }
}

/// A verified client certificate, as the backend learns of it.
///
/// It reaches the backend in `X-Forwarded-Client-Cert`, the header Envoy and Istio use, so a
/// backend that reads SPIFFE ids from a mesh reads them from tether the same way. The proxy
/// owns the header: a copy sent by the client is always removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The leaf's subject, `CN=…, O=…`.
    pub subject: String,
    /// The leaf's URI subject alternative names (SPIFFE ids: `spiffe://trust-domain/path`).
    pub uris: Vec<String>,
}

/// The header that carries a [`ClientIdentity`].
pub const CLIENT_CERT_HEADER: &str = "X-Forwarded-Client-Cert";

impl ClientIdentity {
    /// The identity of the client of a finished handshake, if it presented a certificate
    /// (which the verifier has then checked).
    pub fn of(conn: &ServerConnection) -> Option<ClientIdentity> {
        let leaf = conn.peer_certificates()?.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
        let mut uris = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::URI(uri) = name {
                    uris.push((*uri).to_owned());
                }
            }
        }
        Some(ClientIdentity {
            subject: cert.subject().to_string(),
            uris,
        })
    }

    /// The header value: `Subject="CN=alice, O=Acme";URI=spiffe://example.org/alice`.
    /// Bytes a header cannot carry are percent-encoded, so a certificate cannot inject a
    /// header line or break the value's syntax.
    pub fn header_value(&self) -> String {
        let mut out = String::from("Subject=");
        quote(&self.subject, &mut out);
        for uri in &self.uris {
            out.push_str(";URI=");
            quote(uri, &mut out);
        }
        out
    }
}

/// Writes `value` as an XFCC value: quoted when it holds a separator, `"` and `\` escaped,
/// anything outside visible ASCII percent-encoded.
fn quote(value: &str, out: &mut String) {
    let needs_quotes = value
        .bytes()
        .any(|b| matches!(b, b',' | b';' | b'=' | b' ' | b'"'));
    if needs_quotes {
        out.push('"');
    }
    for b in value.bytes() {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            b'%' => out.push_str("%25"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    if needs_quotes {
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_header_quotes_separators_and_escapes_what_a_header_cannot_carry() {
        let id = ClientIdentity {
            subject: "CN=alice, O=Acme \"Q\"\r\nX-Evil: 1".into(),
            uris: vec!["spiffe://example.org/ns/a".into()],
        };
        let v = id.header_value();
        assert_eq!(
            v,
            r#"Subject="CN=alice, O=Acme \"Q\"%0D%0AX-Evil: 1";URI=spiffe://example.org/ns/a"#
        );
        assert!(v.bytes().all(|b| (0x20..0x7f).contains(&b)));
    }

    #[test]
    fn io_errors_without_tls_cause_are_classified_by_kind() {
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(HandshakeFailure::of(&eof), HandshakeFailure::Closed);
        let tls = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
        );
        assert_eq!(
            HandshakeFailure::of(&tls),
            HandshakeFailure::CertificateExpired
        );
        let tls = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::NoCertificatesPresented,
        );
        assert_eq!(
            HandshakeFailure::of(&tls),
            HandshakeFailure::CertificateMissing
        );
    }
}
