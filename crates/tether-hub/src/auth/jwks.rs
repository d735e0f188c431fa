//! Keys published by an identity provider as a JWKS document, from a file or a URL.
//!
//! Providers rotate keys: a token signed with a new key names a `kid` the hub has not seen
//! yet. The hub then fetches the document again — but at most once per `min_refetch`
//! per source, and with one fetch in flight at a time, so a stream of tokens with made-up
//! `kid`s costs one request to the provider per interval, not one per token. Keys the hub
//! has are also fetched again in the background once they are older than `refresh`, so a
//! key the provider withdrew stops being accepted.
//!
//! Fetches use hyper's HTTP/1.1 client connection directly (one request per fetch; the
//! rate makes pooling pointless) over rustls with aws-lc-rs, the crypto library the token
//! checks already use. Plain `http://` is accepted only for loopback addresses: keys
//! fetched in clear text from elsewhere could be replaced on the way.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::{header, Request, StatusCode, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::Jwk;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::keys::{jwk_key, KeyAlgorithm, VerifyingKey};

/// Largest JWKS document read, in bytes.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most keys taken from one document; the rest are ignored (and logged).
pub const MAX_JWKS_KEYS: usize = 64;

/// Where a JWKS document lives.
#[derive(Debug, Clone)]
pub enum JwksLocation {
    File(PathBuf),
    Url(JwksUrl),
}

/// A JWKS URL, checked, with the TLS settings to fetch it.
#[derive(Clone)]
pub struct JwksUrl {
    uri: Uri,
    host: String,
    port: u16,
    /// `None` for `http://` on loopback.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for JwksUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JwksUrl({})", self.uri)
    }
}

impl JwksUrl {
    /// Checks `url`; `ca` (a PEM bundle) replaces the system's roots for an `https` URL.
    pub fn parse(url: &str, ca: Option<&Path>) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        let host = uri
            .host()
            .ok_or("the URL has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let (tls, default_port) = match uri.scheme_str() {
            Some("https") => (Some(tls_config(ca)?), 443),
            Some("http") if is_loopback_host(&host) => {
                if ca.is_some() {
                    return Err("`ca` needs an https URL".into());
                }
                (None, 80)
            }
            Some("http") => {
                return Err("use https: keys fetched in clear text could be replaced on the way (http is accepted only for loopback)".into())
            }
            _ => return Err("the URL must start with https://".into()),
        };
        Ok(Self {
            port: uri.port_u16().unwrap_or(default_port),
            uri,
            host,
            tls,
        })
    }

    pub fn as_uri(&self) -> &Uri {
        &self.uri
    }
}

fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn tls_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(file) => {
            let certs = CertificateDer::pem_file_iter(file)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("{}: {e}", file.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no certificate in it", file.display()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err("no system CA certificates found; name one with `ca`".into());
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How a source is used and refreshed.
#[derive(Debug, Clone)]
pub struct JwksOptions {
    /// When set, only tokens with this `iss` are checked with this source's keys, and
    /// they must carry it.
    pub issuer: Option<String>,
    /// Keys older than this are fetched again in the background.
    pub refresh: Duration,
    /// The shortest interval between two fetches, whatever tokens arrive.
    pub min_refetch: Duration,
    /// How long one fetch may take.
    pub timeout: Duration,
}

impl Default for JwksOptions {
    fn default() -> Self {
        Self {
            issuer: None,
            refresh: Duration::from_secs(600),
            min_refetch: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why a fetch brought no keys.
#[derive(Debug, Clone, thiserror::Error)]
#[error("JWKS {source_name}: {problem}")]
pub struct JwksError {
    pub source_name: String,
    pub problem: String,
}

/// One JWKS document and the keys last read from it.
pub struct JwksSource {
    location: JwksLocation,
    options: JwksOptions,
    keys: RwLock<Snapshot>,
    /// Held while fetching: one fetch at a time, and the time of the last attempt.
    fetch: tokio::sync::Mutex<Option<Instant>>,
}

#[derive(Clone, Default)]
struct Snapshot {
    keys: Arc<[VerifyingKey]>,
    fetched_at: Option<Instant>,
}

/// What a source has for a token.
#[derive(Debug)]
pub enum Lookup {
    Found(VerifyingKey),
    /// No key with this `kid` and algorithm, even after fetching again (if allowed).
    Unknown,
    /// The token has no `kid` and the source has several keys of its algorithm.
    Ambiguous,
}

impl JwksSource {
    pub fn new(location: JwksLocation, options: JwksOptions) -> Arc<Self> {
        Arc::new(Self {
            location,
            options,
            keys: RwLock::new(Snapshot::default()),
            fetch: tokio::sync::Mutex::new(None),
        })
    }

    pub fn issuer(&self) -> Option<&str> {
        self.options.issuer.as_deref()
    }

    pub fn name(&self) -> String {
        match &self.location {
            JwksLocation::File(path) => path.display().to_string(),
            JwksLocation::Url(url) => url.uri.to_string(),
        }
    }

    /// How many keys the source holds now.
    pub fn key_count(&self) -> usize {
        self.snapshot().keys.len()
    }

    fn snapshot(&self) -> Snapshot {
        // A poisoned lock means a panic elsewhere while swapping an `Arc`: the value is
        // still whole, so keep using it.
        self.keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Fetches now, whatever the rate limit says: at startup, and in tests.
    pub async fn load(&self) -> Result<usize, JwksError> {
        let mut last = self.fetch.lock().await;
        *last = Some(Instant::now());
        self.fetch_and_store().await
    }

    /// The key for a token with header `alg` and `kid`.
    pub async fn find(self: &Arc<Self>, alg: KeyAlgorithm, kid: Option<&str>) -> Lookup {
        let snapshot = self.snapshot();
        match pick(&snapshot.keys, alg, kid) {
            Lookup::Unknown => {}
            found => {
                if snapshot
                    .fetched_at
                    .is_some_and(|at| at.elapsed() >= self.options.refresh)
                {
                    self.refresh_in_background();
                }
                return found;
            }
        }
        // Someone else's fetch may be under way: wait for it rather than start another.
        let mut last = self.fetch.lock().await;
        let after_wait = self.snapshot();
        if !Arc::ptr_eq(&after_wait.keys, &snapshot.keys) {
            return pick(&after_wait.keys, alg, kid);
        }
        if last.is_some_and(|at| at.elapsed() < self.options.min_refetch) {
            return Lookup::Unknown;
        }
        *last = Some(Instant::now());
        tracing::info!(source = %self.name(), ?kid, "unknown key id; fetching the JWKS again");
        if let Err(error) = self.fetch_and_store().await {
            tracing::warn!(%error, "JWKS fetch failed; keeping the keys held");
        }
        drop(last);
        pick(&self.snapshot().keys, alg, kid)
    }

    fn refresh_in_background(self: &Arc<Self>) {
        let source = self.clone();
        tokio::spawn(async move {
            let Ok(mut last) = source.fetch.try_lock() else {
                return; // a fetch is already under way
            };
            if last.is_some_and(|at| at.elapsed() < source.options.min_refetch) {
                return;
            }
            *last = Some(Instant::now());
            if let Err(error) = source.fetch_and_store().await {
                tracing::warn!(%error, "JWKS refresh failed; keeping the keys held");
            }
        });
    }

    async fn fetch_and_store(&self) -> Result<usize, JwksError> {
        let fail = |problem: String| JwksError {
            source_name: self.name(),
            problem,
        };
        let document = match &self.location {
            JwksLocation::File(path) => {
                let read = tokio::fs::read(path);
                match tokio::time::timeout(self.options.timeout, read).await {
                    Ok(Ok(bytes)) if bytes.len() > MAX_JWKS_BYTES => {
                        return Err(fail(format!("larger than {MAX_JWKS_BYTES} bytes")))
                    }
                    Ok(Ok(bytes)) => bytes,
                    Ok(Err(e)) => return Err(fail(format!("cannot read: {e}"))),
                    Err(_) => return Err(fail("reading timed out".into())),
                }
            }
            JwksLocation::Url(url) => {
                match tokio::time::timeout(self.options.timeout, get(url)).await {
                    Ok(Ok(bytes)) => bytes,
                    Ok(Err(problem)) => return Err(fail(problem)),
                    Err(_) => {
                        return Err(fail(format!("no answer within {:?}", self.options.timeout)))
                    }
                }
            }
        };
        let keys = parse_document(&document).map_err(fail)?;
        let count = keys.len();
        let mut held = self
            .keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *held = Snapshot {
            keys: keys.into(),
            fetched_at: Some(Instant::now()),
        };
        tracing::debug!(source = %self.name(), count, "JWKS loaded");
        Ok(count)
    }
}

/// The key for `alg` and `kid` among `keys`. Without a `kid` the token must be
/// unambiguous: a document with several keys of its algorithm needs it to say which.
fn pick(keys: &[VerifyingKey], alg: KeyAlgorithm, kid: Option<&str>) -> Lookup {
    let mut fitting = keys.iter().filter(|k| k.fits(alg, kid));
    match (fitting.next(), fitting.next(), kid) {
        (None, _, _) => Lookup::Unknown,
        (Some(_), Some(_), None) => Lookup::Ambiguous,
        (Some(key), _, _) => Lookup::Found(key.clone()),
    }
}

/// The usable keys of a JWKS document. Entries the hub cannot use (another key type, an
/// encryption key) are skipped, so one odd entry does not hide the others.
pub fn parse_document(document: &[u8]) -> Result<Vec<VerifyingKey>, String> {
    let value: Value = serde_json::from_slice(document).map_err(|e| format!("not JSON: {e}"))?;
    let Some(entries) = value.get("keys").and_then(Value::as_array) else {
        return Err("not a JWKS document (no `keys` list)".into());
    };
    if entries.len() > MAX_JWKS_KEYS {
        tracing::warn!(
            count = entries.len(),
            "JWKS lists more than {MAX_JWKS_KEYS} keys; using the first {MAX_JWKS_KEYS}"
        );
    }
    let mut keys = Vec::new();
    for (i, entry) in entries.iter().take(MAX_JWKS_KEYS).enumerate() {
        let parsed = serde_json::from_value::<Jwk>(entry.clone())
            .map_err(|e| e.to_string())
            .and_then(|jwk| jwk_key(&jwk));
        match parsed {
            Ok(key) => keys.push(key),
            Err(problem) => tracing::debug!(entry = i, %problem, "JWKS entry skipped"),
        }
    }
    Ok(keys)
}

async fn get(url: &JwksUrl) -> Result<Vec<u8>, String> {
    let tcp = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    match &url.tls {
        None => request(tcp, url).await,
        Some(config) => {
            let name = ServerName::try_from(url.host.clone())
                .map_err(|e| format!("bad host name: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            request(tls, url).await
        }
    }
}

async fn request<Io>(io: Io, url: &JwksUrl) -> Result<Vec<u8>, String>
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    // The connection is driven beside the request and dropped with it.
    let driver = AbortOnDrop(tokio::spawn(connection));
    let authority = url
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_else(|| url.host.clone());
    let path = url.uri.path_and_query().map_or("/", |p| p.as_str());
    let request = Request::get(path)
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/jwk-set+json, application/json")
        .header(header::USER_AGENT, "tether-hub")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("HTTP: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    if response.status() != StatusCode::OK {
        return Err(format!("answered {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?;
    drop(driver);
    Ok(body.to_bytes().to_vec())
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_text_urls_are_only_for_loopback() {
        assert!(JwksUrl::parse("http://127.0.0.1:9/jwks", None).is_ok());
        assert!(JwksUrl::parse("http://[::1]:9/jwks", None).is_ok());
        assert!(JwksUrl::parse("http://localhost/jwks", None).is_ok());
        let refused = JwksUrl::parse("http://idp.example/jwks", None).unwrap_err();
        assert!(refused.contains("https"), "{refused}");
        assert!(JwksUrl::parse("ftp://idp.example/jwks", None).is_err());
        assert!(JwksUrl::parse("not a url", None).is_err());
    }

    #[test]
    fn documents_without_keys_or_json_are_refused_and_odd_entries_skipped() {
        assert!(parse_document(b"nope").is_err());
        assert!(parse_document(br#"{"kids":[]}"#).is_err());
        let odd = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"},{"kty":"weird"},7]}"#;
        assert_eq!(parse_document(odd).unwrap().len(), 0);
    }
}
