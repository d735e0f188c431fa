//! The TLS keys of the configuration: `[listen.tls]` and the TLS keys of a `[[backend]]`.
//!
//! The TOML shapes ([`ListenTlsConfig`], [`BackendTlsConfig`]) deserialise with
//! `deny_unknown_fields`; `validate` turns them into settings ([`ServerTlsSettings`],
//! [`BackendTls`]) where every choice is a type: a client-auth mode that needs a CA carries
//! it, skipping verification is a variant of its own that only `verify = false` produces, and
//! SNI names are checked DNS names. Errors come back as `(key, problem)`, like the rest of the
//! configuration's validation, and are given the file by the caller.
//!
//! Paths are resolved against the directory of the configuration file, so a config and its
//! certificates can move together.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rustls::pki_types::{DnsName, ServerName};
use serde::Deserialize;

/// A validation failure: the dotted key and what is wrong with it.
pub type Invalid = (String, String);

/// `[listen.tls]`: terminate TLS on this listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenTlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: PathBuf,
    /// More certificates, chosen by the name the client asks for.
    #[serde(default)]
    pub sni: Vec<SniCertConfig>,
    #[serde(default)]
    pub min_version: MinVersion,
    /// PEM bundle of the CAs client certificates must chain to; `""` is the same as absent.
    #[serde(default, deserialize_with = "empty_path_is_none")]
    pub client_ca: Option<PathBuf>,
    /// Defaults to `required` when `client_ca` is set, `none` otherwise.
    #[serde(default)]
    pub client_auth: Option<ClientAuthMode>,
    /// Refuse a handshake that names a server this listener has no certificate for, instead
    /// of serving the default certificate (HAProxy's `strict-sni`). A client that sends no
    /// name still gets the default.
    #[serde(default)]
    pub strict_sni: bool,
}

/// `[[listen.tls.sni]]`: a certificate for some server names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniCertConfig {
    /// `api.example.com`, or `*.example.com` for any one label in front of `example.com`.
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The oldest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinVersion {
    #[default]
    Tls12,
    Tls13,
}

impl<'de> Deserialize<'de> for MinVersion {
    /// `"1.2"` or `"1.3"`; a bare `1.2` (a TOML float) is taken too, as people write it.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = MinVersion;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"1.2\" or \"1.3\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MinVersion, E> {
                match v {
                    "1.2" => Ok(MinVersion::Tls12),
                    "1.3" => Ok(MinVersion::Tls13),
                    _ => Err(E::custom(format!(
                        "TLS version `{v}` is not supported; expected \"1.2\" or \"1.3\""
                    ))),
                }
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<MinVersion, E> {
                match v {
                    1.2 => Ok(MinVersion::Tls12),
                    1.3 => Ok(MinVersion::Tls13),
                    _ => Err(E::custom(format!(
                        "TLS version `{v}` is not supported; expected \"1.2\" or \"1.3\""
                    ))),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl fmt::Display for MinVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MinVersion::Tls12 => "1.2",
            MinVersion::Tls13 => "1.3",
        })
    }
}

/// `client_auth`, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuthMode {
    None,
    Optional,
    Required,
}

fn empty_path_is_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let path = Option::<PathBuf>::deserialize(d)?;
    Ok(path.filter(|p| !p.as_os_str().is_empty()))
}

/// A certificate chain and its key, with the configuration keys that named them (for errors:
/// `listen.tls.sni[1].cert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_at: String,
    pub key_at: String,
}

impl CertPaths {
    /// Resolves `cert` and `key`, named by the keys `{table}.{cert_name}` and
    /// `{table}.{key_name}`.
    fn resolve(
        base: &Path,
        table: &str,
        (cert_name, cert): (&str, &Path),
        (key_name, key): (&str, &Path),
    ) -> Result<CertPaths, Invalid> {
        let cert_at = format!("{table}.{cert_name}");
        let key_at = format!("{table}.{key_name}");
        Ok(CertPaths {
            cert: resolve(base, cert, &cert_at)?,
            key: resolve(base, key, &key_at)?,
            cert_at,
            key_at,
        })
    }
}

/// A name a certificate is chosen for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SniName {
    /// Exactly this name (lower case).
    Exact(String),
    /// `*.SUFFIX`: one label, any, in front of this suffix (lower case, without `*.`).
    Wildcard(String),
}

impl fmt::Display for SniName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SniName::Exact(n) => f.write_str(n),
            SniName::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// A certificate for the names a client may ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniCert {
    pub names: Vec<SniName>,
    pub paths: CertPaths,
}

/// Whether and how client certificates are verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// No certificate is asked for.
    None,
    /// A certificate is asked for; a client without one is let in, a client with a bad one
    /// is refused.
    Optional { ca: PathBuf },
    /// A valid certificate from `ca` is needed to finish the handshake.
    Required { ca: PathBuf },
}

impl ClientAuth {
    pub fn ca(&self) -> Option<&Path> {
        match self {
            ClientAuth::None => None,
            ClientAuth::Optional { ca } | ClientAuth::Required { ca } => Some(ca),
        }
    }
}

/// A listener's validated TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsSettings {
    /// Served when no SNI certificate matches (or the client sent no name).
    pub default: CertPaths,
    pub sni: Vec<SniCert>,
    pub min_version: MinVersion,
    pub client_auth: ClientAuth,
    /// What a name no certificate is for gets.
    pub unknown_name: UnknownName,
    /// Where `client_ca` was named, for errors about that file.
    pub at: String,
}

/// A ClientHello naming a server no certificate of the listener covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownName {
    /// The default certificate (the client will likely refuse it): nginx's and HAProxy's
    /// default behaviour.
    ServeDefault,
    /// The handshake is refused (`strict_sni = true`).
    Refuse,
}

impl ServerTlsSettings {
    /// Every file these settings read, for `tether check` and the file watch.
    pub fn files(&self) -> Vec<&Path> {
        let mut files = vec![self.default.cert.as_path(), self.default.key.as_path()];
        for s in &self.sni {
            files.push(&s.paths.cert);
            files.push(&s.paths.key);
        }
        files.extend(self.client_auth.ca());
        files
    }
}

impl ListenTlsConfig {
    /// Validates the table found at `at` (`listen.tls`); relative paths are taken from `base`.
    pub fn validate(&self, at: &str, base: &Path) -> Result<ServerTlsSettings, Invalid> {
        let default = CertPaths::resolve(base, at, ("cert", &self.cert), ("key", &self.key))?;
        let mut seen = std::collections::HashSet::new();
        let mut sni = Vec::with_capacity(self.sni.len());
        for (i, entry) in self.sni.iter().enumerate() {
            let here = format!("{at}.sni[{i}]");
            if entry.names.is_empty() {
                return Err((format!("{here}.names"), "needs at least one name".into()));
            }
            let mut names = Vec::with_capacity(entry.names.len());
            for (j, raw) in entry.names.iter().enumerate() {
                let name = parse_sni_name(raw).map_err(|p| (format!("{here}.names[{j}]"), p))?;
                if !seen.insert(name.clone()) {
                    return Err((
                        format!("{here}.names[{j}]"),
                        format!("`{name}` is listed twice"),
                    ));
                }
                names.push(name);
            }
            let paths =
                CertPaths::resolve(base, &here, ("cert", &entry.cert), ("key", &entry.key))?;
            sni.push(SniCert { names, paths });
        }
        let ca = match &self.client_ca {
            Some(p) => Some(resolve(base, p, &format!("{at}.client_ca"))?),
            None => None,
        };
        let client_auth = match (self.client_auth, ca) {
            (None | Some(ClientAuthMode::None), None) => ClientAuth::None,
            (None | Some(ClientAuthMode::Required), Some(ca)) => ClientAuth::Required { ca },
            (Some(ClientAuthMode::Optional), Some(ca)) => ClientAuth::Optional { ca },
            (Some(ClientAuthMode::None), Some(_)) => {
                return Err((
                    format!("{at}.client_auth"),
                    "`client_ca` is set but `client_auth = \"none\"` would ignore it; \
                     remove one of them"
                        .into(),
                ))
            }
            (Some(mode @ (ClientAuthMode::Optional | ClientAuthMode::Required)), None) => {
                return Err((
                    format!("{at}.client_ca"),
                    format!(
                        "`client_auth = \"{}\"` needs `client_ca`, the CAs client \
                         certificates are checked against",
                        if mode == ClientAuthMode::Optional {
                            "optional"
                        } else {
                            "required"
                        }
                    ),
                ))
            }
        };
        Ok(ServerTlsSettings {
            default,
            sni,
            min_version: self.min_version,
            client_auth,
            unknown_name: if self.strict_sni {
                UnknownName::Refuse
            } else {
                UnknownName::ServeDefault
            },
            at: at.to_owned(),
        })
    }
}

fn parse_sni_name(raw: &str) -> Result<SniName, String> {
    let lower = raw.to_ascii_lowercase();
    let (wildcard, host) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    // A name needs a dot: a bare `*.com` or `localhost`-style suffix would match too much.
    let valid = DnsName::try_from(host).is_ok() && !host.contains('*');
    if !valid || (wildcard && !host.contains('.')) {
        return Err(format!(
            "`{raw}` is not a DNS name or a `*.example.com` wildcard"
        ));
    }
    Ok(if wildcard {
        SniName::Wildcard(host.to_owned())
    } else {
        SniName::Exact(host.to_owned())
    })
}

fn resolve(base: &Path, path: &Path, key: &str) -> Result<PathBuf, Invalid> {
    if path.as_os_str().is_empty() {
        return Err((key.to_owned(), "must name a file".into()));
    }
    Ok(base.join(path))
}

/// The TLS keys of a `[[backend]]`, as written. `config.rs` holds them as fields of the
/// backend table (serde cannot flatten into a `deny_unknown_fields` table) and builds this.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTlsConfig {
    /// Speak TLS to the backend.
    #[serde(default)]
    pub tls: bool,
    /// The server name sent and verified; defaults to the backend's IP address.
    pub sni: Option<String>,
    /// PEM bundle of CAs to verify the backend against, instead of the system roots.
    pub ca: Option<PathBuf>,
    /// `false` turns verification off; only an explicit `false` does.
    pub verify: Option<bool>,
    /// A certificate the proxy presents to the backend (mTLS); needs `client_key`.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// How the backend's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Against the operating system's CA certificates (the default).
    SystemRoots,
    /// Against the CAs in this PEM bundle.
    Ca(PathBuf),
    /// Not at all: only `verify = false` in the configuration leads here.
    DangerousNoVerification,
}

/// A backend's validated TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTls {
    pub server_name: ServerName<'static>,
    pub trust: Trust,
    pub client_cert: Option<CertPaths>,
    /// The backend table (`backend[2]`), for errors about its files.
    pub at: String,
}

impl BackendTls {
    /// Every file these settings read.
    pub fn files(&self) -> Vec<&Path> {
        let mut files = Vec::new();
        if let Trust::Ca(ca) = &self.trust {
            files.push(ca.as_path());
        }
        if let Some(c) = &self.client_cert {
            files.push(&c.cert);
            files.push(&c.key);
        }
        files
    }
}

impl BackendTlsConfig {
    /// Validates the keys of the backend table at `at` (`backend[2]`), whose address is `addr`.
    /// `None` when the backend is plain TCP.
    pub fn validate(
        &self,
        at: &str,
        addr: SocketAddr,
        base: &Path,
    ) -> Result<Option<BackendTls>, Invalid> {
        if !self.tls {
            let set = [
                ("sni", self.sni.is_some()),
                ("ca", self.ca.is_some()),
                ("verify", self.verify.is_some()),
                ("client_cert", self.client_cert.is_some()),
                ("client_key", self.client_key.is_some()),
            ];
            if let Some((key, _)) = set.iter().find(|(_, set)| *set) {
                return Err((format!("{at}.{key}"), "only used with `tls = true`".into()));
            }
            return Ok(None);
        }
        let server_name = match &self.sni {
            Some(name) => ServerName::try_from(name.as_str())
                .map(|n| n.to_owned())
                .map_err(|_| {
                    (
                        format!("{at}.sni"),
                        format!("`{name}` is not a DNS name or an IP address"),
                    )
                })?,
            None => ServerName::IpAddress(addr.ip().into()),
        };
        let trust = match (self.verify, &self.ca) {
            (Some(false), Some(_)) => {
                return Err((
                    format!("{at}.ca"),
                    "`verify = false` checks nothing, so `ca` would be ignored; remove one".into(),
                ))
            }
            (Some(false), None) => Trust::DangerousNoVerification,
            (_, Some(ca)) => Trust::Ca(resolve(base, ca, &format!("{at}.ca"))?),
            (_, None) => Trust::SystemRoots,
        };
        let client_cert = match (&self.client_cert, &self.client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(CertPaths::resolve(
                base,
                at,
                ("client_cert", cert),
                ("client_key", key),
            )?),
            (Some(_), None) => {
                return Err((
                    format!("{at}.client_key"),
                    "`client_cert` needs its `client_key`".into(),
                ))
            }
            (None, Some(_)) => {
                return Err((
                    format!("{at}.client_cert"),
                    "`client_key` needs its `client_cert`".into(),
                ))
            }
        };
        Ok(Some(BackendTls {
            server_name,
            trust,
            client_cert,
            at: at.to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(text: &str) -> Result<ServerTlsSettings, Invalid> {
        let raw: ListenTlsConfig = toml::from_str(text).map_err(|e| ("-".into(), e.to_string()))?;
        raw.validate("listen.tls", Path::new("/etc/tether"))
    }

    fn backend(text: &str) -> Result<Option<BackendTls>, Invalid> {
        let raw: BackendTlsConfig =
            toml::from_str(text).map_err(|e| ("-".into(), e.to_string()))?;
        raw.validate(
            "backend[0]",
            "10.0.0.7:443".parse().unwrap(),
            Path::new("/etc/tether"),
        )
    }

    #[test]
    fn minimal_listen_tls_gets_secure_defaults() {
        let s = listen("cert = \"site.pem\"\nkey = \"/keys/site.key\"\n").unwrap();
        assert_eq!(s.default.cert, Path::new("/etc/tether/site.pem"));
        assert_eq!(
            s.default.key,
            Path::new("/keys/site.key"),
            "absolute paths stay"
        );
        assert_eq!(s.min_version, MinVersion::Tls12);
        assert_eq!(s.client_auth, ClientAuth::None);
        assert!(s.sni.is_empty());
    }

    #[test]
    fn client_ca_alone_means_certificates_are_required() {
        let s = listen("cert = \"c\"\nkey = \"k\"\nclient_ca = \"ca.pem\"\n").unwrap();
        assert_eq!(
            s.client_auth,
            ClientAuth::Required {
                ca: "/etc/tether/ca.pem".into()
            }
        );
        let s = listen(
            "cert = \"c\"\nkey = \"k\"\nclient_ca = \"ca.pem\"\nclient_auth = \"optional\"\n",
        )
        .unwrap();
        assert!(matches!(s.client_auth, ClientAuth::Optional { .. }));
    }

    #[test]
    fn the_empty_client_ca_of_the_example_means_none() {
        let s = listen("cert = \"c\"\nkey = \"k\"\nclient_ca = \"\"\nclient_auth = \"none\"\n")
            .unwrap();
        assert_eq!(s.client_auth, ClientAuth::None);
    }

    #[test]
    fn client_auth_without_a_ca_names_client_ca() {
        let e = listen("cert = \"c\"\nkey = \"k\"\nclient_auth = \"required\"\n").unwrap_err();
        assert_eq!(e.0, "listen.tls.client_ca");
        assert!(e.1.contains("required"), "{e:?}");
        let e = listen("cert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"\nclient_auth = \"none\"\n")
            .unwrap_err();
        assert_eq!(e.0, "listen.tls.client_auth");
    }

    #[test]
    fn min_version_takes_strings_and_floats_and_refuses_old_ones() {
        let s = listen("cert = \"c\"\nkey = \"k\"\nmin_version = \"1.3\"\n").unwrap();
        assert_eq!(s.min_version, MinVersion::Tls13);
        let s = listen("cert = \"c\"\nkey = \"k\"\nmin_version = 1.3\n").unwrap();
        assert_eq!(s.min_version, MinVersion::Tls13);
        let e = listen("cert = \"c\"\nkey = \"k\"\nmin_version = \"1.0\"\n").unwrap_err();
        assert!(e.1.contains("\"1.2\" or \"1.3\""), "{e:?}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = listen("cert = \"c\"\nkey = \"k\"\nciphers = \"ALL\"\n").unwrap_err();
        assert!(e.1.contains("unknown field"), "{e:?}");
        let e = backend("tls = true\nverify_peer = false\n").unwrap_err();
        assert!(e.1.contains("unknown field"), "{e:?}");
    }

    #[test]
    fn sni_names_are_checked_lower_cased_and_unique() {
        let s = listen(
            "cert = \"c\"\nkey = \"k\"\n[[sni]]\nnames = [\"API.example.com\", \"*.ws.example.com\"]\ncert = \"a\"\nkey = \"b\"\n",
        )
        .unwrap();
        assert_eq!(
            s.sni[0].names,
            vec![
                SniName::Exact("api.example.com".into()),
                SniName::Wildcard("ws.example.com".into())
            ]
        );
        assert_eq!(s.sni[0].paths.cert_at, "listen.tls.sni[0].cert");
        for bad in ["*.com", "a b.example", "x.*.example", "", "*"] {
            let text = format!(
                "cert = \"c\"\nkey = \"k\"\n[[sni]]\nnames = [\"{bad}\"]\ncert = \"a\"\nkey = \"b\"\n"
            );
            let e = listen(&text).unwrap_err();
            assert_eq!(e.0, "listen.tls.sni[0].names[0]", "{bad}: {e:?}");
        }
        let dup = "cert = \"c\"\nkey = \"k\"\n[[sni]]\nnames = [\"a.example\"]\ncert = \"a\"\nkey = \"b\"\n\
                   [[sni]]\nnames = [\"A.example\"]\ncert = \"a\"\nkey = \"b\"\n";
        let e = listen(dup).unwrap_err();
        assert_eq!(e.0, "listen.tls.sni[1].names[0]");
        assert!(e.1.contains("twice"), "{e:?}");
    }

    #[test]
    fn backend_without_tls_is_plain_and_tls_keys_need_it() {
        assert_eq!(backend("").unwrap(), None);
        let e = backend("verify = false\n").unwrap_err();
        assert_eq!(e.0, "backend[0].verify");
        assert!(e.1.contains("tls = true"));
    }

    #[test]
    fn backend_tls_verifies_against_system_roots_by_default() {
        let b = backend("tls = true\n").unwrap().unwrap();
        assert_eq!(b.trust, Trust::SystemRoots);
        assert_eq!(
            b.server_name,
            ServerName::IpAddress("10.0.0.7".parse::<std::net::IpAddr>().unwrap().into())
        );
        let b = backend("tls = true\nverify = true\nsni = \"chat.internal\"\nca = \"ca.pem\"\n")
            .unwrap()
            .unwrap();
        assert_eq!(b.trust, Trust::Ca("/etc/tether/ca.pem".into()));
        assert_eq!(
            b.server_name,
            ServerName::try_from("chat.internal").unwrap()
        );
    }

    #[test]
    fn only_an_explicit_false_turns_verification_off() {
        let b = backend("tls = true\nverify = false\n").unwrap().unwrap();
        assert_eq!(b.trust, Trust::DangerousNoVerification);
        let e = backend("tls = true\nverify = false\nca = \"ca.pem\"\n").unwrap_err();
        assert_eq!(e.0, "backend[0].ca");
    }

    #[test]
    fn client_cert_and_key_come_together() {
        let e = backend("tls = true\nclient_cert = \"c.pem\"\n").unwrap_err();
        assert_eq!(e.0, "backend[0].client_key");
        let e = backend("tls = true\nclient_key = \"k.pem\"\n").unwrap_err();
        assert_eq!(e.0, "backend[0].client_cert");
        let b = backend("tls = true\nclient_cert = \"c.pem\"\nclient_key = \"k.pem\"\n")
            .unwrap()
            .unwrap();
        let c = b.client_cert.unwrap();
        assert_eq!(c.cert, Path::new("/etc/tether/c.pem"));
        assert_eq!(c.key_at, "backend[0].client_key");
        let e = backend("tls = true\nsni = \"not a name\"\n").unwrap_err();
        assert_eq!(e.0, "backend[0].sni");
    }
}
