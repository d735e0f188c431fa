//! TLS from the proxy to backends: a `BackendConnector` against real TLS servers on loopback,
//! verifying with a CA, with the system roots, not at all (only when asked), and presenting a
//! client certificate to a backend that requires one.

mod tls_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tether_proxy::tls::{BackendConnector, BackendTlsConfig, ListenTlsConfig, TlsServer};
use tls_support::*;

fn connector(text: &str, addr: SocketAddr, dir: &TempDir) -> BackendConnector {
    let raw: BackendTlsConfig = toml::from_str(text).unwrap();
    let tls = raw.validate("backend[0]", addr, &dir.0).unwrap().unwrap();
    BackendConnector::new(&tls).unwrap()
}

/// A TLS backend serving `leaf`, optionally requiring client certificates from `client_ca`.
async fn backend(
    dir: &TempDir,
    leaf: &Leaf,
    client_ca: Option<&Ca>,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Served>) {
    write_leaf(dir, "backend", leaf);
    let mut text = "cert = \"backend.pem\"\nkey = \"backend.key\"\n".to_owned();
    if let Some(ca) = client_ca {
        dir.write("clients.pem", &ca.pem);
        text.push_str("client_ca = \"clients.pem\"\n");
    }
    let raw: ListenTlsConfig = toml::from_str(&text).unwrap();
    let server = TlsServer::load(raw.validate("listen.tls", &dir.0).unwrap()).unwrap();
    echo_server(Arc::new(server)).await
}

async fn dial(c: &BackendConnector, addr: SocketAddr) -> std::io::Result<()> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = tokio::time::timeout(Duration::from_secs(20), c.connect(tcp))
        .await
        .expect("handshake within 20 s")?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    round_trip(&mut tls).await
}

#[tokio::test]
async fn verifies_the_backend_against_ca_and_sni() {
    let dir = TempDir::new("be-ca");
    let ca = Ca::new("Backend Root");
    dir.write("ca.pem", &ca.pem);
    let (addr, _rx) = backend(&dir, &ca.server(&["chat.internal"]), None).await;

    let good = connector(
        "tls = true\nsni = \"chat.internal\"\nca = \"ca.pem\"\n",
        addr,
        &dir,
    );
    dial(&good, addr).await.expect("the name and the CA match");

    let wrong_name = connector(
        "tls = true\nsni = \"other.internal\"\nca = \"ca.pem\"\n",
        addr,
        &dir,
    );
    let err = dial(&wrong_name, addr).await.unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");

    // Without `sni` the backend is verified by its IP address, which this certificate lacks.
    let by_ip = connector("tls = true\nca = \"ca.pem\"\n", addr, &dir);
    assert!(dial(&by_ip, addr).await.is_err());
}

#[tokio::test]
async fn the_default_is_the_system_roots_which_refuse_a_private_ca() {
    let dir = TempDir::new("be-system");
    let ca = Ca::new("Private Root");
    let (addr, _rx) = backend(&dir, &ca.server(&["chat.internal"]), None).await;
    let raw: BackendTlsConfig = toml::from_str("tls = true\nsni = \"chat.internal\"\n").unwrap();
    let tls = raw.validate("backend[0]", addr, &dir.0).unwrap().unwrap();
    let c = match BackendConnector::new(&tls) {
        Ok(c) => c,
        // A machine without a CA store: the error says so and names the way out.
        Err(e) => {
            assert!(e.to_string().contains("`ca`"), "{e}");
            return;
        }
    };
    let err = dial(&c, addr).await.unwrap_err();
    assert!(
        err.to_string().contains("UnknownIssuer") || err.to_string().contains("issuer"),
        "{err}"
    );
}

#[tokio::test]
async fn verify_false_accepts_any_certificate_only_when_written() {
    let dir = TempDir::new("be-noverify");
    let ca = Ca::new("Unknown Root");
    let (addr, _rx) = backend(&dir, &ca.server(&["whatever.internal"]), None).await;
    let c = connector("tls = true\nverify = false\n", addr, &dir);
    dial(&c, addr).await.expect("no verification asked for");
}

#[tokio::test]
async fn presents_the_client_certificate_to_a_backend_that_requires_one() {
    let dir = TempDir::new("be-mtls");
    let server_ca = Ca::new("Backend Root");
    let client_ca = Ca::new("Proxy Root");
    dir.write("ca.pem", &server_ca.pem);
    let proxy_id = client_ca.client("tether-proxy", Some("spiffe://example.org/proxy"));
    write_leaf(&dir, "proxy", &proxy_id);
    let (addr, mut rx) = backend(
        &dir,
        &server_ca.server(&["chat.internal"]),
        Some(&client_ca),
    )
    .await;

    let with_cert = connector(
        "tls = true\nsni = \"chat.internal\"\nca = \"ca.pem\"\nclient_cert = \"proxy.pem\"\nclient_key = \"proxy.key\"\n",
        addr,
        &dir,
    );
    dial(&with_cert, addr).await.unwrap();
    let served = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let Served::Ok {
        identity: Some(id), ..
    } = served
    else {
        panic!("{served:?}")
    };
    assert_eq!(id.uris, vec!["spiffe://example.org/proxy".to_owned()]);

    let without = connector(
        "tls = true\nsni = \"chat.internal\"\nca = \"ca.pem\"\n",
        addr,
        &dir,
    );
    assert!(
        dial(&without, addr).await.is_err(),
        "the backend requires a certificate"
    );
}

#[test]
fn connector_errors_name_the_file_and_key() {
    let dir = TempDir::new("be-bad");
    let ca = Ca::new("Root");
    let leaf = ca.client("proxy", None);
    let other = ca.client("other", None);
    dir.write("c.pem", &leaf.chain_pem);
    dir.write("k.key", &other.key_pem);
    dir.write("notca.pem", "nothing here\n");
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    for (text, file, key) in [
        (
            "tls = true\nca = \"missing.pem\"\n",
            "missing.pem",
            "backend[0].ca",
        ),
        (
            "tls = true\nca = \"notca.pem\"\n",
            "notca.pem",
            "backend[0].ca",
        ),
        (
            "tls = true\nverify = false\nclient_cert = \"c.pem\"\nclient_key = \"k.key\"\n",
            "k.key",
            "backend[0].client_key",
        ),
    ] {
        let raw: BackendTlsConfig = toml::from_str(text).unwrap();
        let tls = raw.validate("backend[0]", addr, &dir.0).unwrap().unwrap();
        let err = BackendConnector::new(&tls).unwrap_err();
        assert_eq!(
            (err.file.as_path(), err.key.as_str()),
            (dir.path(file).as_path(), key),
            "{err}"
        );
    }
}
