//! `tether hub --tls-cert --tls-key`: a spawned hub serving `wss://` to a real WebSocket
//! client over rustls that trusts only a CA made in the test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const BIN: &str = env!("CARGO_BIN_EXE_tether");

type Wss = WebSocketStream<TlsStream<TcpStream>>;

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tether-hub-tls-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A CA and a server certificate for 127.0.0.1 it signed, written as PEM files in `dir`.
struct Pki {
    ca: CertificateDer<'static>,
    cert: PathBuf,
    key: PathBuf,
}

fn pki(dir: &std::path::Path, ca_name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let leaf = params.signed_by(&key, &issuer).unwrap();
    let (cert_path, key_path) = (dir.join("hub.pem"), dir.join("hub.key"));
    std::fs::write(&cert_path, leaf.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    Pki {
        ca: ca.der().clone(),
        cert: cert_path,
        key: key_path,
    }
}

async fn wait_for_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "{addr} did not open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn client_config(ca: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// TLS to `addr` trusting only `config`'s roots, then a WebSocket at `/ws`.
async fn wss_connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> anyhow::Result<Wss> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    let tls = TlsConnector::from(config).connect(name, tcp).await?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(format!("wss://{addr}/ws"), tls),
    )
    .await??;
    Ok(ws)
}

async fn next(ws: &mut Wss) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer within 10 s")
        {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("connection ended: {other:?}"),
        }
    }
}

/// The next frame of this type, skipping others (the hub may greet before `connect`).
async fn next_of(ws: &mut Wss, kind: &str) -> Value {
    loop {
        let frame = next(ws).await;
        if frame["type"] == kind {
            return frame;
        }
        assert_ne!(frame["type"], "error", "{frame}");
    }
}

async fn send(ws: &mut Wss, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

#[tokio::test]
async fn a_wss_client_trusting_the_ca_subscribes_and_receives() {
    let dir = scratch();
    let pki = pki(&dir, "hub-tls CA");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _hub = Running(
        Command::new(BIN)
            .args(["hub", "--listen", &addr.to_string(), "--tls-cert"])
            .arg(&pki.cert)
            .arg("--tls-key")
            .arg(&pki.key)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(addr).await;
    let config = client_config(&pki.ca);

    let mut alice = wss_connect(addr, config.clone()).await.unwrap();
    send(&mut alice, json!({"type": "connect"})).await;
    next_of(&mut alice, "welcome").await;
    send(&mut alice, json!({"type": "subscribe", "channel": "room"})).await;
    next_of(&mut alice, "subscribed").await;

    let mut bob = wss_connect(addr, config).await.unwrap();
    send(&mut bob, json!({"type": "connect"})).await;
    next_of(&mut bob, "welcome").await;
    send(
        &mut bob,
        json!({"type": "publish", "channel": "room", "data": "over tls"}),
    )
    .await;
    let message = next_of(&mut alice, "message").await;
    assert_eq!(message["data"], "over tls", "{message}");
}

#[tokio::test]
async fn a_client_not_trusting_the_ca_is_refused_and_plain_ws_gets_nothing() {
    let dir = scratch();
    let ours = pki(&dir, "hub-tls CA");
    let other = pki(&scratch(), "another CA");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _hub = Running(
        Command::new(BIN)
            .args(["hub", "--listen", &addr.to_string(), "--tls-cert"])
            .arg(&ours.cert)
            .arg("--tls-key")
            .arg(&ours.key)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(addr).await;
    let error = wss_connect(addr, client_config(&other.ca))
        .await
        .expect_err("a certificate from an unknown CA is refused")
        .to_string();
    assert!(error.contains("UnknownIssuer"), "{error}");
    // Plain ws:// on the TLS port: no WebSocket, no HTTP answer.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let plain = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp),
    )
    .await
    .expect("closed within 10 s");
    assert!(plain.is_err(), "plain WebSocket over the TLS port");
    // The hub still serves trusted clients.
    let mut ws = wss_connect(addr, client_config(&ours.ca)).await.unwrap();
    send(&mut ws, json!({"type": "connect"})).await;
    next_of(&mut ws, "welcome").await;
}

#[test]
fn a_bad_key_file_stops_the_start_naming_the_file_and_the_problem() {
    let dir = scratch();
    let pki = pki(&dir, "hub-tls CA");
    let out = Command::new(BIN)
        .args(["hub", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&pki.cert)
        .arg("--tls-key")
        .arg(&pki.cert)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(pki.cert.to_str().unwrap()), "{err}");
    assert!(err.contains("no unencrypted private key"), "{err}");
}

#[test]
fn hub_toml_names_the_pair_relative_to_its_directory() {
    let dir = scratch();
    pki(&dir, "hub-tls CA");
    let toml = dir.join("hub.toml");
    std::fs::write(&toml, "tls_cert = \"hub.pem\"\ntls_key = \"missing.key\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["hub", "--listen", "127.0.0.1:0", "--config"])
        .arg(&toml)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let missing = dir.join("missing.key");
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
    assert!(err.contains("tls_key: cannot read"), "{err}");
}
