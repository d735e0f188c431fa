//! `mode = "tls-passthrough"`: the proxy routes on the ClientHello's server name without
//! terminating TLS; real rustls clients complete their handshakes with the backends through
//! it.

mod tls_support;

use std::sync::Arc;
use std::time::Duration;

use tether_proxy::tls::{ListenTlsConfig, TlsServer};
use tether_proxy::{Config, Proxy, RunningProxy};
use tls_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Setup {
    _dir: TempDir,
    ca: Ca,
    /// What each backend presents, by backend name.
    certs: Vec<(String, rustls::pki_types::CertificateDer<'static>)>,
    proxy: RunningProxy,
}

async fn setup(listen_extra: &str) -> Setup {
    let dir = TempDir::new("passthrough");
    let ca = Ca::new("Root");
    let mut backends = String::new();
    let mut certs = Vec::new();
    for name in ["b1", "b2", "b3"] {
        let leaf = ca.server(&["a.example", "b.example", "c.example", "127.0.0.1"]);
        let (cert, key) = write_leaf(&dir, name, &leaf);
        let raw: ListenTlsConfig = toml::from_str(&format!(
            "cert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ))
        .unwrap();
        let server = TlsServer::load(raw.validate("listen.tls", &dir.0).unwrap()).unwrap();
        let (addr, _rx) = echo_server(Arc::new(server)).await;
        backends.push_str(&format!(
            "[[backend]]\nname = \"{name}\"\naddr = \"{addr}\"\n"
        ));
        certs.push((name.to_owned(), leaf.cert));
    }
    let text = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\nmode = \"tls-passthrough\"\n{listen_extra}\n\
         [admin]\nenabled = false\n[timeouts]\nfirst_byte = \"2s\"\nhead = \"3s\"\n\
         [balance]\nstrategy = \"consistent-hash\"\nkey = \"sni\"\nbalance_factor = 0\n{backends}"
    );
    let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let proxy = Proxy::bind(config, None).await.unwrap().spawn();
    Setup {
        _dir: dir,
        ca,
        certs,
        proxy,
    }
}

impl Setup {
    /// Connects asking for `name`, completes TLS with a backend and round-trips; returns
    /// the name of the backend that answered.
    async fn reach(&self, name: &str) -> std::io::Result<String> {
        let config = client_config(self.ca.roots(), None, BOTH);
        let tls = connect(self.proxy.addr(), config, name).await?;
        let cert = presented(&tls);
        Ok(self
            .certs
            .iter()
            .find(|(_, c)| *c == cert)
            .map(|(n, _)| n.clone())
            .expect("a backend's certificate"))
    }

    fn metric(&self, line_start: &str) -> f64 {
        self.proxy
            .metrics_text()
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

#[tokio::test]
async fn routes_on_sni_consistently_and_tunnels_tls_end_to_end() {
    let s = setup("").await;
    let mut by_name = Vec::new();
    for name in ["a.example", "b.example", "c.example"] {
        let first = s.reach(name).await.expect("TLS through the proxy");
        for _ in 0..3 {
            assert_eq!(
                s.reach(name).await.unwrap(),
                first,
                "{name} stays on one backend"
            );
        }
        by_name.push(first);
    }
    assert!(by_name.iter().all(|b| s.certs.iter().any(|(n, _)| n == b)));
}

#[tokio::test]
async fn no_sni_goes_to_the_default_backend_or_is_refused() {
    let s = setup("default_backend = \"b2\"\n").await;
    assert_eq!(
        s.reach("127.0.0.1").await.unwrap(),
        "b2",
        "an IP name sends no SNI"
    );

    let s = setup("").await;
    assert!(s.reach("127.0.0.1").await.is_err());
    assert!(s.metric("tether_tls_handshake_errors_total{reason=\"NoServerName\"}") >= 1.0);
    s.reach("a.example")
        .await
        .expect("named clients are still served");
}

#[tokio::test]
async fn bad_hellos_are_closed_and_counted() {
    let s = setup("").await;
    // A close for what is not TLS; decode_error (50) for a TLS record that is no ClientHello.
    for (reason, bytes, expected) in [
        ("NotTls", b"GET / HTTP/1.1\r\n\r\n".to_vec(), &[][..]),
        (
            "Malformed",
            vec![0x16, 3, 1, 0, 4, 9, 0, 0, 0],
            &[21, 3, 1, 0, 2, 2, 50][..],
        ),
        ("LegacyVersion", vec![0x80, 0x2e, 0x01, 0x03, 0x00], &[][..]),
    ] {
        let mut tcp = TcpStream::connect(s.proxy.addr()).await.unwrap();
        tcp.write_all(&bytes).await.unwrap();
        let mut back = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut back)).await;
        assert!(read.is_ok(), "{reason}: closed");
        assert_eq!(back, expected, "{reason}");
        let key = format!("tether_tls_handshake_errors_total{{reason=\"{reason}\"}}");
        assert!(
            s.metric(&key) >= 1.0,
            "{reason}: {}",
            s.proxy.metrics_text()
        );
    }
    s.reach("b.example").await.unwrap();
}

#[test]
fn passthrough_listeners_cannot_terminate_and_default_backend_must_exist() {
    let e = Config::from_toml(
        "[listen]\nmode = \"tls-passthrough\"\n[listen.tls]\ncert = \"c\"\nkey = \"k\"\n[[backend]]\nname = \"b\"\naddr = \"127.0.0.1:1\"\n",
    )
    .unwrap_err();
    assert_eq!(e.key, "listen.tls");
    let e = Config::from_toml(
        "[listen]\nmode = \"tls-passthrough\"\ndefault_backend = \"nope\"\n[[backend]]\nname = \"b\"\naddr = \"127.0.0.1:1\"\n",
    )
    .unwrap_err();
    assert_eq!(e.key, "listen[0].default_backend");
}

#[tokio::test]
async fn a_proxy_header_before_the_hello_is_read_and_not_replayed() {
    let s = setup("accept_proxy = true\ntrusted_proxies = [\"127.0.0.1/32\"]\n").await;
    let mut tcp = TcpStream::connect(s.proxy.addr()).await.unwrap();
    tcp.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 5000 443\r\n")
        .await
        .unwrap();
    let config = client_config(s.ca.roots(), None, BOTH);
    let name = rustls::pki_types::ServerName::try_from("a.example").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("the backend got a clean ClientHello");
    round_trip(&mut tls).await.unwrap();
}
