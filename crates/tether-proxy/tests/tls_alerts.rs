//! Refused TLS handshakes, one case each, as a client sees them on the wire: the proxy answers
//! with the TLS alert that says why (read here as raw record bytes, or as the alert a real
//! rustls client reports), then a clean close (FIN, not a reset that could destroy the
//! alert), counts the refusal by reason, and goes on serving everyone else.

mod tls_support;

use std::net::SocketAddr;
use std::time::Duration;

use rustls::AlertDescription;
use tether_proxy::{Config, Proxy, RunningProxy};
use tls_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Setup {
    _dir: TempDir,
    ca: Ca,
    clients: Ca,
    proxy: RunningProxy,
}

/// A proxy with one `[listen.tls]` listener for `chat.example.com` (plus `tls_extra`; the
/// text `CLIENT_CA` names a client CA file) in front of one recording backend.
async fn setup(tls_extra: &str) -> Setup {
    let dir = TempDir::new("tls-alerts");
    let ca = Ca::new("Site Root");
    let clients = Ca::new("Client Root");
    let (cert, key) = write_leaf(&dir, "site", &ca.server(&["chat.example.com"]));
    let client_ca = dir.write("clients.pem", &clients.pem);
    let backend = recorder().await;
    let tls_extra = tls_extra.replace("CLIENT_CA", &client_ca.display().to_string());
    let text = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n[listen.tls]\ncert = \"{}\"\nkey = \"{}\"\n{tls_extra}\n\
         [admin]\nenabled = false\n[timeouts]\nfirst_byte = \"2s\"\nhead = \"3s\"\n\
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
    }
}

impl Setup {
    fn addr(&self) -> SocketAddr {
        self.proxy.addr()
    }

    /// A rustls client of these `versions`, presenting `identity`, asking for `name`; returns
    /// how its first exchange ended: `Ok` with the upgrade answered, or the error it saw.
    async fn client(
        &self,
        identity: Option<&Leaf>,
        versions: &[&'static rustls::SupportedProtocolVersion],
        name: &str,
    ) -> Result<(), rustls::Error> {
        let config = client_config(self.ca.roots(), identity, versions);
        let tcp = TcpStream::connect(self.addr()).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let exchange = async {
            let mut tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            // A TLS 1.3 client learns of a refused certificate only at its first read.
            tls.write_all(format!("{UPGRADE}\r\n").as_bytes()).await?;
            let mut head = [0u8; 12];
            tls.read_exact(&mut head).await?;
            assert_eq!(&head, b"HTTP/1.1 101");
            Ok::<_, std::io::Error>(())
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("the exchange ends within 10 s")
            .map_err(|e| tls_error(&e))
    }

    /// The refusals counted for `reason`, once the count is there (the connection's task
    /// counts it after the close the client saw).
    async fn counted(&self, reason: &str) -> f64 {
        let key = format!("tether_tls_handshake_errors_total{{reason=\"{reason}\"}}");
        for _ in 0..100 {
            let value = metric(&self.proxy, &key);
            if value > 0.0 {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no {key}:\n{}", self.proxy.metrics_text());
    }

    /// A client that did nothing wrong is served, after whatever came before it.
    async fn still_serves(&self) {
        self.client(None, BOTH, "chat.example.com")
            .await
            .expect("others are served");
    }
}

fn metric(proxy: &RunningProxy, key: &str) -> f64 {
    proxy
        .metrics_text()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The rustls error inside an I/O error (an alert the client received, a certificate it
/// refused), or a description of the I/O error.
fn tls_error(e: &std::io::Error) -> rustls::Error {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned()
        .unwrap_or_else(|| rustls::Error::General(format!("{:?}: {e}", e.kind())))
}

/// Sends `bytes` on a fresh connection and reads what the proxy answers until it closes.
/// `Err` if the close was a reset (which could have destroyed an alert) or did not come.
async fn answer_to(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(addr).await?;
    let (mut read, mut write) = tcp.split();
    let mut back = Vec::new();
    // Written while reading: the proxy may answer before it has read everything.
    let send = async {
        let _ = write.write_all(bytes).await;
    };
    let receive = read.read_to_end(&mut back);
    let (_, received) = tokio::time::timeout(Duration::from_secs(15), async {
        tokio::join!(send, receive)
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?;
    received?;
    Ok(back)
}

/// A fatal alert record with this version and description.
fn alert(version: [u8; 2], description: AlertDescription) -> Vec<u8> {
    vec![21, version[0], version[1], 0, 2, 2, u8::from(description)]
}

/// An SSL 3.0 ClientHello (record and client version 3.0), one cipher suite, no extensions.
fn sslv3_hello() -> Vec<u8> {
    let mut hello = vec![0x16, 3, 0, 0, 45, 1, 0, 0, 41, 3, 0];
    hello.extend_from_slice(&[0u8; 32]);
    hello.extend_from_slice(&[0, 0, 2, 0, 0x2f, 1, 0]);
    hello
}

#[tokio::test]
async fn an_sslv3_hello_gets_protocol_version() {
    let s = setup("").await;
    let back = answer_to(s.addr(), &sslv3_hello()).await.unwrap();
    assert_eq!(back, alert([3, 0], AlertDescription::ProtocolVersion));
    assert_eq!(s.counted("LegacyVersion").await, 1.0);
    s.still_serves().await;
}

#[tokio::test]
async fn an_sslv2_hello_is_closed_without_a_record_it_could_not_read() {
    let s = setup("").await;
    let sslv2 = [0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15, 0, 0, 0, 0x10];
    let back = answer_to(s.addr(), &sslv2).await.unwrap();
    assert!(back.is_empty(), "{back:?}");
    assert_eq!(s.counted("LegacyVersion").await, 1.0);
    s.still_serves().await;
}

#[tokio::test]
async fn garbage_in_a_handshake_record_gets_decode_error() {
    let s = setup("").await;
    // A handshake record whose message is a ServerHello, not a ClientHello.
    let back = answer_to(s.addr(), &[0x16, 3, 1, 0, 4, 2, 0, 0, 0])
        .await
        .unwrap();
    assert_eq!(back, alert([3, 1], AlertDescription::DecodeError));
    assert_eq!(s.counted("Malformed").await, 1.0);
    // A ClientHello whose lengths run past the record.
    let mut truncated = vec![0x16, 3, 3, 0, 8, 1, 0, 0, 4, 3, 3];
    truncated.extend_from_slice(&[0xff, 0xff]);
    let back = answer_to(s.addr(), &truncated).await.unwrap();
    assert_eq!(back, alert([3, 3], AlertDescription::DecodeError));
    assert_eq!(s.counted("Malformed").await, 2.0);
    s.still_serves().await;
}

#[tokio::test]
async fn a_64_kib_client_hello_gets_decode_error_after_16_kib() {
    let s = setup("").await;
    // A ClientHello declaring 64 KiB, sent in full over four records: the proxy stops at
    // its 16 KiB limit, answers, and drains the rest so the close is not a reset.
    let body = 64 * 1024 - 4;
    let mut message = vec![1, (body >> 16) as u8, (body >> 8) as u8, body as u8, 3, 3];
    message.resize(64 * 1024, 0x41);
    let mut bytes = Vec::new();
    for fragment in message.chunks(16 * 1024) {
        bytes.extend_from_slice(&[0x16, 3, 1]);
        bytes.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
        bytes.extend_from_slice(fragment);
    }
    let back = answer_to(s.addr(), &bytes).await.unwrap();
    assert_eq!(back, alert([3, 1], AlertDescription::DecodeError));
    assert_eq!(s.counted("TooLarge").await, 1.0);
    s.still_serves().await;
}

#[tokio::test]
async fn a_truncated_record_then_a_close_is_counted_closed() {
    let s = setup("").await;
    let mut tcp = TcpStream::connect(s.addr()).await.unwrap();
    tcp.write_all(&[0x16, 3, 1, 0, 200, 1, 0]).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut back))
        .await
        .expect("closed")
        .unwrap();
    assert!(back.is_empty(), "{back:?}");
    assert_eq!(s.counted("Closed").await, 1.0);
    s.still_serves().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_hello_is_cut_at_the_head_deadline() {
    let s = setup("").await;
    let mut tcp = TcpStream::connect(s.addr()).await.unwrap();
    tcp.write_all(&[0x16, 3, 1, 0, 200, 1]).await.unwrap();
    let started = std::time::Instant::now();
    // Others are served while it stalls.
    s.still_serves().await;
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut back))
        .await
        .expect("closed by the 3 s head deadline")
        .unwrap();
    assert!(back.is_empty(), "{back:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(s.counted("Timeout").await, 1.0);
}

#[tokio::test]
async fn a_tls12_client_on_a_tls13_listener_gets_protocol_version() {
    let s = setup("min_version = \"1.3\"\n").await;
    let error = s
        .client(None, &[&rustls::version::TLS12], "chat.example.com")
        .await
        .unwrap_err();
    assert_eq!(
        error,
        rustls::Error::AlertReceived(AlertDescription::ProtocolVersion)
    );
    assert_eq!(s.counted("Incompatible").await, 1.0);
    s.still_serves().await;
}

#[tokio::test]
async fn the_alert_rustls_raises_is_on_the_wire_before_a_clean_close() {
    // The same refusal as above, read as raw bytes: a real TLS 1.2-only ClientHello (made by
    // rustls in memory) gets rustls's plaintext protocol_version alert, then FIN, not a reset,
    // although 64 KiB more that the proxy never reads follow the hello (closing with unread
    // bytes would make the kernel reset the connection).
    let s = setup("min_version = \"1.3\"\n").await;
    let config = client_config(s.ca.roots(), None, &[&rustls::version::TLS12]);
    let name = rustls::pki_types::ServerName::try_from("chat.example.com").unwrap();
    let mut client = rustls::ClientConnection::new(config, name).unwrap();
    let mut hello = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut hello).unwrap();
    }
    hello.resize(hello.len() + 64 * 1024, 0x17);
    let back = answer_to(s.addr(), &hello).await.unwrap();
    assert_eq!(back.len(), 7, "one alert record: {back:?}");
    assert_eq!(&back[..2], &[21, 3], "{back:?}");
    assert_eq!(
        &back[3..],
        &[0, 2, 2, u8::from(AlertDescription::ProtocolVersion)]
    );
    assert_eq!(s.counted("Incompatible").await, 1.0);
}

#[tokio::test]
async fn a_wrong_sni_gets_the_default_certificate_and_the_clients_refusal_is_counted() {
    // No certificate is configured for other.example: the default one is served and the
    // client, not the proxy, refuses it (bad_certificate), which the proxy counts.
    let s = setup("").await;
    let error = s.client(None, BOTH, "other.example").await.unwrap_err();
    assert!(
        matches!(
            error,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. }
            ) | rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
        ),
        "{error:?}"
    );
    assert_eq!(s.counted("AlertReceived").await, 1.0);
    s.still_serves().await;
}

#[tokio::test]
async fn an_untrusted_client_certificate_gets_unknown_ca_over_tls13_and_tls12() {
    let s = setup("client_ca = \"CLIENT_CA\"\nclient_auth = \"optional\"\n").await;
    let stranger = Ca::new("Other Root").client("mallory", None);
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let error = s
            .client(Some(&stranger), &[version], "chat.example.com")
            .await
            .unwrap_err();
        assert_eq!(
            error,
            rustls::Error::AlertReceived(AlertDescription::UnknownCA),
            "{version:?}"
        );
    }
    assert_eq!(s.counted("CertificateRejected").await, 2.0);
    s.still_serves().await;
}

#[tokio::test]
async fn an_expired_client_certificate_gets_certificate_expired() {
    let s = setup("client_ca = \"CLIENT_CA\"\n").await;
    let expired = s.clients.leaf(&[], |p| {
        p.distinguished_name.push(rcgen::DnType::CommonName, "old");
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let error = s
            .client(Some(&expired), &[version], "chat.example.com")
            .await
            .unwrap_err();
        assert_eq!(
            error,
            rustls::Error::AlertReceived(AlertDescription::CertificateExpired),
            "{version:?}"
        );
    }
    assert_eq!(s.counted("CertificateExpired").await, 2.0);
    let alice = s.clients.client("alice", None);
    s.client(Some(&alice), BOTH, "chat.example.com")
        .await
        .expect("a valid certificate is served");
}

#[tokio::test]
async fn a_missing_client_certificate_gets_certificate_required() {
    let s = setup("client_ca = \"CLIENT_CA\"\n").await;
    let error = s
        .client(None, &[&rustls::version::TLS13], "chat.example.com")
        .await
        .unwrap_err();
    assert_eq!(
        error,
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired)
    );
    assert_eq!(s.counted("CertificateMissing").await, 1.0);
}

/// A `tls-passthrough` proxy without `default_backend`, in front of a backend that must never
/// see a refused connection.
async fn passthrough() -> (RunningProxy, Recorder) {
    let backend = recorder().await;
    let text = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\nmode = \"tls-passthrough\"\n[admin]\nenabled = false\n\
         [health]\nkind = \"none\"\n[[backend]]\nname = \"b1\"\naddr = \"{}\"\n",
        backend.addr
    );
    let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    (Proxy::bind(config, None).await.unwrap().spawn(), backend)
}

#[tokio::test]
async fn passthrough_refuses_a_hello_without_sni_with_missing_extension() {
    let (proxy, backend) = passthrough().await;
    // A real ClientHello without a server name: rustls sends none when it connects by address.
    let roots = Ca::new("Any Root").roots();
    let config = client_config(roots, None, BOTH);
    let tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(proxy.addr().ip().into());
    let error = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("refused within 10 s")
    .expect_err("no SNI, no default_backend");
    assert_eq!(
        tls_error(&error),
        rustls::Error::AlertReceived(AlertDescription::MissingExtension)
    );
    // Garbage gets decode_error there too.
    let back = answer_to(proxy.addr(), &[0x16, 3, 3, 0, 4, 2, 0, 0, 0])
        .await
        .unwrap();
    assert_eq!(back, alert([3, 3], AlertDescription::DecodeError));
    assert!(
        metric(
            &proxy,
            "tether_tls_handshake_errors_total{reason=\"NoServerName\"}"
        ) >= 1.0
    );
    assert!(backend.heads.lock().unwrap().is_empty());
}

#[tokio::test]
async fn strict_sni_refuses_a_name_no_certificate_covers_and_serves_its_own() {
    // `strict_sni`: other.example is refused by the proxy itself, with an alert; the default
    // certificate's own name (chat.example.com) is still served.
    let s = setup("strict_sni = true\n").await;
    let error = s.client(None, BOTH, "other.example").await.unwrap_err();
    assert_eq!(
        error,
        rustls::Error::AlertReceived(AlertDescription::AccessDenied)
    );
    assert_eq!(s.counted("UnknownServerName").await, 1.0);
    s.still_serves().await;
    // The same name on a listener without strict_sni gets the default certificate, which
    // the client refuses itself (the test above): strictness is what refused it here.
    let lax = setup("").await;
    assert!(matches!(
        lax.client(None, BOTH, "other.example").await,
        Err(rustls::Error::InvalidCertificate(_))
    ));
}
