//! The certificates a listener serves, swappable while it runs.
//!
//! Renewal tools (certbot, cert-manager) replace certificate files under a running server.
//! [`CertStore`] is the listener's `ResolvesServerCert`: each handshake loads the current
//! [`CertSet`] through an [`ArcSwap`] (one atomic load, no lock), and a reload builds a whole
//! new set first and swaps it in only when every file loaded. A handshake already past
//! certificate selection, and every open session, keeps what it had; a reload that fails
//! changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::config::{ServerTlsSettings, SniName, UnknownName};
use super::material::{load_certified_key, CertInfo, FileError};

/// One consistent generation of a listener's certificates.
#[derive(Debug)]
pub struct CertSet {
    default: Arc<CertifiedKey>,
    exact: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<Box<str>, Arc<CertifiedKey>>,
    infos: Vec<CertInfo>,
    unknown_name: UnknownName,
}

impl CertSet {
    /// Loads every certificate the settings name; the first file that fails fails the set.
    pub fn load(
        settings: &ServerTlsSettings,
        provider: &CryptoProvider,
    ) -> Result<CertSet, FileError> {
        let (default, info) = load_certified_key(&settings.default, provider)?;
        let mut set = CertSet {
            default,
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            infos: vec![info.clone()],
            unknown_name: settings.unknown_name,
        };
        if settings.unknown_name == UnknownName::Refuse {
            // A strict listener still serves the default certificate for its own names; an
            // SNI entry for the same name wins, as it would without `strict_sni`.
            for name in &info.dns_names {
                let map = match name.strip_prefix("*.") {
                    Some(suffix) => (&mut set.wildcard, suffix),
                    None => (&mut set.exact, name.as_str()),
                };
                map.0.insert(map.1.into(), set.default.clone());
            }
        }
        for entry in &settings.sni {
            let (key, info) = load_certified_key(&entry.paths, provider)?;
            // Explicit SNI entries replace the default's own names inserted above.
            set.infos.push(info);
            for name in &entry.names {
                match name {
                    SniName::Exact(n) => set.exact.insert(n.as_str().into(), key.clone()),
                    SniName::Wildcard(s) => set.wildcard.insert(s.as_str().into(), key.clone()),
                };
            }
        }
        Ok(set)
    }

    /// The certificate for a requested name: an exact match, else a wildcard one label up,
    /// else the default (like nginx's default server, so a client without SNI still gets a
    /// certificate and decides for itself).
    /// `None`: the name is covered by no certificate and the listener is strict.
    pub fn pick(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let Some(name) = sni else {
            return Some(&self.default);
        };
        // rustls hands over the name lower-cased and validated; be robust anyway.
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        if let Some(key) = self.exact.get(name) {
            return Some(key);
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(key) = self.wildcard.get(parent) {
                return Some(key);
            }
        }
        match self.unknown_name {
            UnknownName::ServeDefault => Some(&self.default),
            UnknownName::Refuse => None,
        }
    }

    /// The loaded certificates, default first.
    pub fn infos(&self) -> &[CertInfo] {
        &self.infos
    }
}

/// A listener's certificate resolver; [`CertStore::swap`] changes what new handshakes get.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertSet>,
}

impl CertStore {
    pub fn new(set: CertSet) -> CertStore {
        CertStore {
            current: ArcSwap::from_pointee(set),
        }
    }

    /// Makes `set` the one new handshakes use.
    pub fn swap(&self, set: CertSet) {
        self.current.store(Arc::new(set));
    }

    /// The set in use now.
    pub fn current(&self) -> Arc<CertSet> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // `None` makes rustls abort the handshake with an alert (strict_sni).
        self.current.load().pick(hello.server_name()).cloned()
    }
}
