//! Certificates made in the test (rcgen): a CA, intermediates, server and client leaves, in
//! files under a directory of the test's own, and TLS clients and servers on loopback.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A directory removed when the test ends.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tether-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `contents` to `name` atomically (write, then rename), as renewal tools do.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert: CertificateDer<'static>,
    pub pem: String,
    /// The chain above this CA (for an intermediate: its own certificate and up, not the root).
    pub chain_pem: String,
}

/// A leaf certificate and its key.
pub struct Leaf {
    pub cert: CertificateDer<'static>,
    /// The leaf, then the intermediates up to (not including) the root.
    pub chain_pem: String,
    pub key_pem: String,
    pub key_der: Vec<u8>,
}

impl Leaf {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap()
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let params = ca_params(name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert: cert.der().clone(),
            pem: cert.pem(),
            chain_pem: String::new(),
            issuer: Issuer::new(params, key),
        }
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, name: &str) -> Ca {
        let params = ca_params(name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Ca {
            cert: cert.der().clone(),
            pem: cert.pem(),
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> Leaf {
        self.leaf(names, |_| {})
    }

    /// A client certificate with this common name and, if given, a URI SAN (a SPIFFE id).
    pub fn client(&self, cn: &str, uri: Option<&str>) -> Leaf {
        self.leaf(&[], |p| {
            p.distinguished_name.push(DnType::CommonName, cn);
            p.distinguished_name
                .push(DnType::OrganizationName, "Tether Tests");
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            if let Some(uri) = uri {
                p.subject_alt_names
                    .push(SanType::URI(uri.try_into().unwrap()));
            }
        })
    }

    /// A leaf whose parameters `tweak` adjusts (validity, usages, names…).
    pub fn leaf(&self, names: &[&str], tweak: impl FnOnce(&mut CertificateParams)) -> Leaf {
        self.leaf_with_key(names, KeyPair::generate().unwrap(), tweak)
    }

    pub fn leaf_with_key(
        &self,
        names: &[&str],
        key: KeyPair,
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        tweak(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.der().clone(),
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        roots
    }
}

/// Writes a leaf's chain and key as `NAME.pem` and `NAME.key`.
pub fn write_leaf(dir: &TempDir, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
    (
        dir.write(&format!("{name}.pem"), &leaf.chain_pem),
        dir.write(&format!("{name}.key"), &leaf.key_pem),
    )
}

/// The inner key of a PKCS#8 `PrivateKeyInfo`: for RSA a PKCS#1 `RSAPrivateKey`, for EC a
/// SEC1 `ECPrivateKey`. Walks just enough DER for keys rcgen makes.
pub fn unwrap_pkcs8(der: &[u8]) -> Vec<u8> {
    fn tlv(b: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = b[0];
        let (len, hdr) = if b[1] < 0x80 {
            (b[1] as usize, 2)
        } else {
            let n = (b[1] & 0x7f) as usize;
            let mut len = 0usize;
            for i in 0..n {
                len = len << 8 | b[2 + i] as usize;
            }
            (len, 2 + n)
        };
        (tag, &b[hdr..hdr + len], &b[hdr + len..])
    }
    let (_, info, _) = tlv(der); // PrivateKeyInfo SEQUENCE
    let (_, _, rest) = tlv(info); // version
    let (_, _, rest) = tlv(rest); // algorithm
    let (tag, key, _) = tlv(rest); // privateKey OCTET STRING
    assert_eq!(tag, 0x04);
    key.to_vec()
}

pub fn pem(label: &str, der: &[u8]) -> String {
    use std::fmt::Write;
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.iter().fold(0u32, |a, &b| a << 8 | b as u32) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        writeln!(out, "{}", std::str::from_utf8(line).unwrap()).unwrap();
    }
    writeln!(out, "-----END {label}-----").unwrap();
    out
}

/// A TLS client config trusting `roots`, offering `alpn`, optionally presenting a certificate.
pub fn client_config(
    roots: rustls::RootCertStore,
    identity: Option<&Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(tether_proxy::tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(leaf.chain(), leaf.key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

pub const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// What the server side of one connection saw.
#[derive(Debug)]
pub enum Served {
    Ok {
        identity: Option<tether_proxy::tls::ClientIdentity>,
        version: Option<tether_proxy::tls::TlsVersion>,
        alpn: Option<Vec<u8>>,
    },
    Failed(tether_proxy::tls::HandshakeFailure, String),
}

/// A loopback TLS server over `server` that echoes one line per connection, and reports what
/// each handshake gave.
pub async fn echo_server(
    server: Arc<tether_proxy::tls::TlsServer>,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Served>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = server.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                let accept = acceptor.accept(tcp);
                match tokio::time::timeout(std::time::Duration::from_secs(10), accept).await {
                    Err(_) => {
                        let _ = tx.send(Served::Failed(
                            tether_proxy::tls::HandshakeFailure::Timeout,
                            "timeout".into(),
                        ));
                    }
                    Ok(Err(e)) => {
                        let _ = tx.send(Served::Failed(
                            tether_proxy::tls::HandshakeFailure::of(&e),
                            e.to_string(),
                        ));
                    }
                    Ok(Ok(mut tls)) => {
                        let (_, conn) = tls.get_ref();
                        let _ = tx.send(Served::Ok {
                            identity: tether_proxy::tls::ClientIdentity::of(conn),
                            version: tether_proxy::tls::TlsVersion::of(conn),
                            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                        });
                        let mut buf = [0u8; 1024];
                        loop {
                            match tls.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if tls.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                    let _ = tls.flush().await;
                                }
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Connects with `config` asking for `name`; returns the stream after one echoed round trip.
pub async fn connect(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    round_trip(&mut tls).await?;
    Ok(tls)
}

/// Sends a line and reads it back: proves the session carries data (TLS 1.3 client
/// certificate failures only show up at the client's first read).
pub async fn round_trip<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    tls: &mut S,
) -> std::io::Result<()> {
    tls.write_all(b"ping\n").await?;
    tls.flush().await?;
    let mut got = [0u8; 5];
    tls.read_exact(&mut got).await?;
    assert_eq!(&got, b"ping\n");
    Ok(())
}

/// The end-entity certificate the server presented.
pub fn presented(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// A backend that records each request head, answers `101` and echoes the tunnel.
pub struct Recorder {
    pub addr: std::net::SocketAddr,
    pub heads: Arc<std::sync::Mutex<Vec<String>>>,
}

pub async fn recorder() -> Recorder {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf).into_owned());
                let answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
                if s.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Recorder { addr, heads }
}

pub const UPGRADE: &str = "GET /chat HTTP/1.1\r\nHost: chat.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// Sends an upgrade (with `extra` header lines), expects `101`, and checks the tunnel echoes.
/// Returns the response head.
pub async fn upgrade<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    extra: &str,
) -> String {
    s.write_all(format!("{UPGRADE}{extra}\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "closed in the response head"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"tunnel bytes").await.unwrap();
    s.flush().await.unwrap();
    let mut back = [0u8; 12];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"tunnel bytes");
    head
}
