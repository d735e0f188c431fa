//! The proxy terminating TLS: real rustls clients on loopback send WebSocket upgrades through a
//! `[listen.tls]` listener to a real backend that records what it received.

mod tls_support;

use std::net::SocketAddr;
use std::time::Duration;

use tether_proxy::{Config, Proxy, RunningProxy};
use tls_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Setup {
    _dir: TempDir,
    ca: Ca,
    clients: Ca,
    proxy: RunningProxy,
    backend: Recorder,
}

/// A proxy with a plain listener and a TLS listener (`tls_extra` added to `[listen.tls]`)
/// in front of one recording backend.
async fn setup(tls_extra: &str, extra: &str) -> Setup {
    let dir = TempDir::new("proxy-tls");
    let ca = Ca::new("Site Root");
    let clients = Ca::new("Client Root");
    let (cert, key) = write_leaf(&dir, "site", &ca.server(&["chat.example.com"]));
    let client_ca = dir.write("clients.pem", &clients.pem);
    let backend = recorder().await;
    let tls_extra = tls_extra.replace("CLIENT_CA", &client_ca.display().to_string());
    let text = format!(
        "[[listen]]\naddr = \"127.0.0.1:0\"\n\
         [[listen]]\naddr = \"127.0.0.1:0\"\n[listen.tls]\ncert = \"{}\"\nkey = \"{}\"\n{tls_extra}\n\
         [admin]\nenabled = false\n[timeouts]\nfirst_byte = \"2s\"\nhead = \"3s\"\n{extra}\n\
         [[backend]]\nname = \"b1\"\naddr = \"{}\"\n",
        cert.display(),
        key.display(),
        backend.addr
    );
    let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let proxy = Proxy::bind(config, None).await.unwrap().spawn();
    Setup {
        _dir: dir,
        ca,
        clients,
        proxy,
        backend,
    }
}

impl Setup {
    fn tls_addr(&self) -> SocketAddr {
        self.proxy.addrs()[1]
    }

    async fn tls(
        &self,
        identity: Option<&Leaf>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.tls_addr()).await?;
        let config = client_config(self.ca.roots(), identity, BOTH);
        let name = rustls::pki_types::ServerName::try_from("chat.example.com").unwrap();
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
    }

    fn last_head(&self) -> String {
        self.backend
            .heads
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }

    fn metric(&self, line_start: &str) -> f64 {
        let text = self.proxy.metrics_text();
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

#[tokio::test]
async fn wss_through_a_tls_listener_carries_https_headers_and_strips_forged_ones() {
    let s = setup("", "").await;
    let mut tls = s.tls(None).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    upgrade(
        &mut tls,
        "X-Forwarded-Client-Cert: Subject=\"CN=admin\"\r\nX-Forwarded-Proto: http\r\n",
    )
    .await;
    let head = s.last_head().to_ascii_lowercase();
    assert!(head.contains("x-forwarded-proto: https\r\n"), "{head}");
    assert!(head.contains(";proto=https"), "{head}");
    assert!(
        !head.contains("x-forwarded-proto: http\r\n"),
        "the client's copy is dropped: {head}"
    );
    assert!(
        !head.contains("x-forwarded-client-cert"),
        "a forged identity is dropped: {head}"
    );
    assert_eq!(
        s.metric("tether_tls_handshakes_total{version=\"1.3\"}"),
        1.0
    );

    // The plain listener beside it still says http.
    let mut plain = TcpStream::connect(s.proxy.addrs()[0]).await.unwrap();
    upgrade(&mut plain, "").await;
    assert!(s.last_head().contains("X-Forwarded-Proto: http\r\n"));
}

#[tokio::test]
async fn verified_client_certificate_reaches_the_backend_in_xfcc() {
    let s = setup("client_ca = \"CLIENT_CA\"\n", "").await;
    let alice = s
        .clients
        .client("alice", Some("spiffe://example.org/ns/chat/sa/alice"));
    let mut tls = s.tls(Some(&alice)).await.unwrap();
    upgrade(
        &mut tls,
        "X-Forwarded-Client-Cert: URI=spiffe://example.org/admin\r\n",
    )
    .await;
    let head = s.last_head();
    let xfcc: Vec<&str> = head
        .lines()
        .filter(|l| {
            l.to_ascii_lowercase()
                .starts_with("x-forwarded-client-cert:")
        })
        .collect();
    assert_eq!(
        xfcc,
        vec!["X-Forwarded-Client-Cert: Subject=\"CN=alice, O=Tether Tests\";URI=spiffe://example.org/ns/chat/sa/alice"]
    );

    // No certificate: the handshake fails, and it is counted.
    let refused = async {
        let mut tls = s.tls(None).await?;
        tls.write_all(format!("{UPGRADE}\r\n").as_bytes()).await?;
        let mut buf = [0u8; 1];
        tls.read(&mut buf).await
    };
    assert!(refused.await.is_err());
    assert!(
        tokio_eventually(|| s
            .metric("tether_tls_handshake_errors_total{reason=\"CertificateMissing\"}")
            == 1.0)
        .await,
        "{}",
        s.proxy.metrics_text()
    );
}

async fn tokio_eventually(mut probe: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if probe() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn sticky_cookie_is_secure_over_tls() {
    let s = setup("", "[balance]\ncookie = \"lb\"\n").await;
    let mut tls = s.tls(None).await.unwrap();
    let head = upgrade(&mut tls, "").await;
    let cookie = head
        .lines()
        .find(|l| l.starts_with("Set-Cookie: lb="))
        .unwrap_or_default();
    assert!(cookie.ends_with("; Secure"), "{head}");
    let mut plain = TcpStream::connect(s.proxy.addrs()[0]).await.unwrap();
    let head = upgrade(&mut plain, "").await;
    assert!(!head.contains("Secure"), "{head}");
}

/// Reads until the proxy closes; returns what it sent.
async fn sent_back(mut tcp: TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the proxy closes the connection");
    out
}

#[tokio::test]
async fn bad_input_on_a_tls_port_is_refused_counted_and_others_are_served() {
    let s = setup("", "").await;
    let addr = s.tls_addr();
    let mut sslv3 = vec![0x16, 3, 0, 0, 45, 1, 0, 0, 41, 3, 0];
    sslv3.extend_from_slice(&[0u8; 32]);
    sslv3.extend_from_slice(&[0, 0, 2, 0, 0x2f, 1, 0]);
    let mut big = vec![0x16, 3, 1, 0x40, 0x00, 1, 0x01, 0, 0];
    big.resize(5 + 0x4000, 0);
    // What comes back: nothing but a close for what is not TLS, else a fatal alert
    // (protocol_version 70, decode_error 50; one per case in tls_alerts.rs).
    let cases: Vec<(&str, Vec<u8>, bool, &[u8])> = vec![
        (
            "NotTls",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            true,
            &[],
        ),
        (
            "LegacyVersion",
            vec![0x80, 0x2e, 0x01, 0x03, 0x00, 0x00, 0x15, 0, 0, 0, 0x10],
            true,
            &[],
        ),
        ("LegacyVersion", sslv3, true, &[21, 3, 0, 0, 2, 2, 70]),
        ("TooLarge", big, true, &[21, 3, 1, 0, 2, 2, 50]),
        (
            "Malformed",
            vec![0x16, 3, 1, 0, 4, 2, 0, 0, 0],
            true,
            &[21, 3, 1, 0, 2, 2, 50],
        ),
        ("Closed", vec![0x16, 3, 1, 0, 200, 1, 0], false, &[]),
    ];
    for (reason, bytes, keep_open, expected) in cases {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&bytes).await.unwrap();
        if !keep_open {
            tcp.shutdown().await.unwrap();
        }
        let back = sent_back(tcp).await;
        assert_eq!(back, expected, "{reason}");
        let key = format!("tether_tls_handshake_errors_total{{reason=\"{reason}\"}}");
        assert!(
            tokio_eventually(|| s.metric(&key) >= 1.0).await,
            "{reason}\n{}",
            s.proxy.metrics_text()
        );
    }
    // A client that stalls mid-ClientHello is cut by the head deadline (3 s here).
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled.write_all(&[0x16, 3, 1, 0, 200, 1]).await.unwrap();
    let started = std::time::Instant::now();
    assert!(sent_back(stalled).await.is_empty());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(s.metric("tether_tls_handshake_errors_total{reason=\"Timeout\"}") >= 1.0);

    let mut tls = s.tls(None).await.expect("others are served");
    upgrade(&mut tls, "").await;
}

/// A TLS backend: answers `101` to an upgrade and echoes, recording each request head and
/// the identity the proxy presented.
async fn tls_backend(
    dir: &TempDir,
    ca: &Ca,
    client_ca: Option<&Ca>,
) -> (
    SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<(String, Option<String>)>>>,
) {
    let (cert, key) = write_leaf(dir, "backend", &ca.server(&["backend.internal"]));
    let mut text = format!(
        "cert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    if let Some(c) = client_ca {
        let path = dir.write("proxy-ca.pem", &c.pem);
        text.push_str(&format!("client_ca = \"{}\"\n", path.display()));
    }
    let raw: tether_proxy::tls::ListenTlsConfig = toml::from_str(&text).unwrap();
    let server = std::sync::Arc::new(
        tether_proxy::tls::TlsServer::load(raw.validate("listen.tls", &dir.0).unwrap()).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (server, log) = (server.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = server.acceptor().accept(tcp).await else {
                    return;
                };
                let id = tether_proxy::tls::ClientIdentity::of(tls.get_ref().1)
                    .map(|i| i.header_value());
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                log.lock()
                    .unwrap()
                    .push((String::from_utf8_lossy(&head).into_owned(), id));
                let answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
                if tls.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let _ = tls.flush().await;
                let mut buf = [0u8; 4096];
                loop {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tls.write_all(&buf[..n]).await.is_err() || tls.flush().await.is_err()
                            {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn backend_tls_verifies_with_ca_and_presents_the_proxy_certificate() {
    let dir = TempDir::new("proxy-backend-tls");
    let backend_ca = Ca::new("Backend Root");
    let proxy_ca = Ca::new("Proxy Identity Root");
    let (addr, seen) = tls_backend(&dir, &backend_ca, Some(&proxy_ca)).await;
    let ca = dir.write("backend-ca.pem", &backend_ca.pem);
    let (cert, key) = write_leaf(
        &dir,
        "proxy-id",
        &proxy_ca.client("tether", Some("spiffe://example.org/proxy")),
    );
    let text = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\nenabled = false\n[health]\nkind = \"websocket\"\ninterval = \"200ms\"\n\
         [[backend]]\nname = \"secure\"\naddr = \"{addr}\"\ntls = true\nsni = \"backend.internal\"\nca = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
        ca.display(), cert.display(), key.display()
    );
    let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}"));
    let proxy = Proxy::bind(config, None).await.unwrap().spawn();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    upgrade(&mut client, "").await;
    let (head, id) = seen.lock().unwrap().first().cloned().unwrap();
    assert!(head.starts_with("GET /chat HTTP/1.1"), "{head}");
    assert_eq!(
        id.as_deref(),
        Some("Subject=\"CN=tether, O=Tether Tests\";URI=spiffe://example.org/proxy")
    );
    // Health checks over the same TLS keep it up.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(proxy.backends()[0].state, tether_proxy::BackendState::Up);
    assert!(
        seen.lock().unwrap().len() >= 2,
        "websocket health checks reached the backend over TLS"
    );
}

#[tokio::test]
async fn an_untrusted_backend_certificate_is_a_failed_connect() {
    let dir = TempDir::new("proxy-backend-untrusted");
    let real = Ca::new("Backend Root");
    let other = Ca::new("Some Other Root");
    let (addr, seen) = tls_backend(&dir, &real, None).await;
    let ca = dir.write("wrong-ca.pem", &other.pem);
    let text = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\nenabled = false\n[health]\nkind = \"none\"\n\
         [[backend]]\nname = \"b\"\naddr = \"{addr}\"\ntls = true\nsni = \"backend.internal\"\nca = \"{}\"\n",
        ca.display()
    );
    let proxy = Proxy::bind(Config::from_toml(&text).unwrap(), None)
        .await
        .unwrap()
        .spawn();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    client
        .write_all(format!("{UPGRADE}\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), client.read_to_string(&mut answer)).await;
    assert!(
        answer.starts_with("HTTP/1.1 503") || answer.starts_with("HTTP/1.1 502"),
        "{answer}"
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "no request reached an unverified backend"
    );
}

#[test]
fn check_names_the_key_and_the_file_that_does_not_load() {
    let dir = TempDir::new("proxy-check");
    let missing = dir.path("missing.pem");
    let text = format!(
        "[listen]\n[listen.tls]\ncert = \"{}\"\nkey = \"{}\"\n[[backend]]\nname = \"b\"\naddr = \"127.0.0.1:1\"\n",
        missing.display(),
        missing.display()
    );
    let e = Config::from_toml(&text).unwrap_err();
    assert_eq!(e.key, "listen.tls.cert");
    assert!(e.problem.contains(&*missing.to_string_lossy()), "{e}");
    let text = format!(
        "[[backend]]\nname = \"b\"\naddr = \"127.0.0.1:1\"\ntls = true\nca = \"{}\"\n",
        missing.display()
    );
    let e = Config::from_toml(&text).unwrap_err();
    assert_eq!(e.key, "backend[0].ca", "{e}");
}

#[tokio::test]
async fn untrusted_and_expired_client_certificates_are_refused_and_counted() {
    let s = setup(
        "client_ca = \"CLIENT_CA\"\nclient_auth = \"optional\"\n",
        "",
    )
    .await;
    let stranger = Ca::new("Other Root").client("mallory", None);
    let expired = s.clients.leaf(&[], |p| {
        p.distinguished_name.push(rcgen::DnType::CommonName, "old");
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    for (leaf, reason) in [
        (&stranger, "CertificateRejected"),
        (&expired, "CertificateExpired"),
    ] {
        let attempt = async {
            let mut tls = s.tls(Some(leaf)).await?;
            tls.write_all(format!("{UPGRADE}\r\n").as_bytes()).await?;
            let mut buf = [0u8; 1];
            tls.read(&mut buf).await
        };
        assert!(attempt.await.is_err(), "{reason}");
        let key = format!("tether_tls_handshake_errors_total{{reason=\"{reason}\"}}");
        assert!(
            tokio_eventually(|| s.metric(&key) == 1.0).await,
            "{reason}\n{}",
            s.proxy.metrics_text()
        );
    }
    assert!(
        s.backend.heads.lock().unwrap().is_empty(),
        "nothing reached the backend"
    );
    // Optional: a client without a certificate is served, with no identity header.
    let mut tls = s.tls(None).await.unwrap();
    upgrade(&mut tls, "").await;
    assert!(!s
        .last_head()
        .to_ascii_lowercase()
        .contains("x-forwarded-client-cert"));
}
