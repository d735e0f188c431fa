//! `tether demo --tls`: the spawned demo serves its page over `https://` and the chat over
//! `wss://` through the proxy, to real rustls clients that trust only the CA it printed.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// The binary under test: `TETHER_BIN` when set (as `scripts/test` does), else Cargo's.
fn bin() -> PathBuf {
    std::env::var_os("TETHER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tether")))
}

/// A directory of the test's own, removed when the test ends, however it ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Scratch(std::env::temp_dir().join(format!(
            "tether-demo-tls-test-{tag}-{}-{nanos}",
            std::process::id()
        )))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The demo process, killed when the test ends however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the demo printed at start.
struct Printed {
    chat: String,
    dashboard: String,
    ca: PathBuf,
    all: String,
}

/// Starts `tether demo --tls` on a free port and reads what it prints up to "Press Ctrl-C".
fn start_demo(tls_dir: Option<&std::path::Path>) -> (Running, SocketAddr, Printed) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut command = Command::new(bin());
    command.args([
        "demo",
        "--tls",
        "--hubs",
        "2",
        "--listen",
        &addr.to_string(),
    ]);
    if let Some(dir) = tls_dir {
        command.arg("--tls-dir").arg(dir);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            all.push_str(&line);
            all.push('\n');
            if line.starts_with("Press Ctrl-C") {
                let _ = tx.send(all);
                return;
            }
        }
        let _ = tx.send(all);
    });
    let all = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the demo prints its addresses within 30 s");
    let field = |name: &str| {
        all.lines()
            .find_map(|l| {
                l.trim_start()
                    .strip_prefix(name)
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("`{name}` in\n{all}"))
    };
    let printed = Printed {
        chat: field("chat "),
        dashboard: field("dashboard "),
        ca: PathBuf::from(field("ca ")),
        all: all.clone(),
    };
    (running, addr, printed)
}

/// A client configuration that trusts the CA in `ca` and nothing else.
fn trusting(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    assert_eq!(roots.len(), 1, "ca.pem holds one CA");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

async fn tls(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// `GET path` over TLS; the status line and the body.
async fn https_get(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: &str,
    path: &str,
) -> String {
    let mut stream = tls(addr, config, name).await.unwrap();
    let host = format!("{name}:{}", addr.port());
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    // A peer may end TLS without close_notify once the response is out; the bytes count.
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("an answer within 10 s");
    String::from_utf8_lossy(&answer).into_owned()
}

async fn wss(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Wss {
    let stream = tls(addr, config, "localhost").await.unwrap();
    let url = format!("wss://localhost:{}/ws", addr.port());
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(url, stream),
    )
    .await
    .expect("the upgrade within 10 s")
    .unwrap();
    ws
}

/// Why the TLS client refused: the rustls error inside the I/O error.
fn refusal(error: std::io::Error) -> rustls::Error {
    error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .cloned()
        .unwrap_or_else(|| panic!("not a TLS refusal: {error:?}"))
}

/// The next frame of type `kind`, skipping others.
async fn next_of(ws: &mut Wss, kind: &str) -> Value {
    loop {
        let frame = match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
        {
            Some(Ok(Message::Text(text))) => serde_json::from_str::<Value>(&text).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("the connection ended: {other:?}"),
        };
        assert_ne!(frame["type"], "error", "{frame}");
        if frame["type"] == kind {
            return frame;
        }
    }
}

async fn send(ws: &mut Wss, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

#[tokio::test]
async fn demo_tls_serves_https_and_wss_trusting_only_the_printed_ca() {
    let scratch = Scratch::new("own");
    let dir = scratch.0.clone();
    let (_demo, addr, printed) = start_demo(Some(&dir));
    let port = addr.port();
    assert_eq!(
        printed.chat,
        format!("https://localhost:{port}/"),
        "{}",
        printed.all
    );
    assert!(
        printed
            .dashboard
            .starts_with(&format!("https://localhost:{port}/_tether/")),
        "{}",
        printed.all
    );
    assert_eq!(printed.ca, dir.join("ca.pem"), "{}", printed.all);
    assert!(
        printed
            .all
            .contains("certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n tether-demo-"),
        "how to trust it in Chromium: {}",
        printed.all
    );
    for file in ["localhost.pem", "localhost.key"] {
        assert!(dir.join(file).exists(), "{file} is written to --tls-dir");
    }
    let config = trusting(&printed.ca);

    // The page, over https, by name and by address (both are in the certificate).
    let page = https_get(addr, config.clone(), "localhost", "/").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("<title>tether demo"), "{page}");
    let page = https_get(addr, config.clone(), "127.0.0.1", "/chat.js").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("wss"),
        "the page picks wss:// on https: {page}"
    );
    // The dashboard and its API answer over https as well.
    let dashboard = https_get(addr, config.clone(), "localhost", "/_tether/").await;
    assert!(dashboard.starts_with("HTTP/1.1 200"), "{dashboard}");
    let backends = https_get(addr, config.clone(), "localhost", "/_tether/api/backends").await;
    assert!(backends.contains("\"hub-1\""), "{backends}");

    // Two chat clients over wss:// through the proxy: one publishes, the other receives.
    let mut alice = wss(addr, config.clone()).await;
    send(&mut alice, json!({"type": "connect"})).await;
    next_of(&mut alice, "welcome").await;
    send(
        &mut alice,
        json!({"type": "subscribe", "channel": "room:tls"}),
    )
    .await;
    next_of(&mut alice, "subscribed").await;
    let mut bob = wss(addr, config.clone()).await;
    send(&mut bob, json!({"type": "connect"})).await;
    next_of(&mut bob, "welcome").await;
    send(
        &mut bob,
        json!({"type": "publish", "channel": "room:tls", "data": {"text": "over wss"}}),
    )
    .await;
    let message = next_of(&mut alice, "message").await;
    assert_eq!(message["data"]["text"], "over wss", "{message}");

    // The certificate is for localhost only, and a client trusting other roots refuses it.
    let wrong_name = tls(addr, config.clone(), "example.com").await;
    let error = refusal(wrong_name.expect_err("not valid for example.com"));
    assert!(
        matches!(
            error,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{error:?}"
    );
    let other_dir = Scratch::new("other");
    let other = {
        let (_other_demo, _, other) = start_demo(Some(&other_dir.0));
        other.ca
    };
    let error = tls(addr, trusting(&other), "localhost")
        .await
        .expect_err("another demo's CA does not vouch for this one");
    assert_eq!(
        refusal(error),
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
    );

    // Plain HTTP on the TLS port gets a close, not an answer.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut back = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut back))
        .await
        .expect("closed within 10 s");
    assert!(back.is_empty(), "{:?}", String::from_utf8_lossy(&back));
}

#[tokio::test]
async fn without_tls_dir_the_certificates_live_in_a_fresh_directory_removed_on_exit() {
    let (mut demo, addr, printed) = start_demo(None);
    let dir = printed.ca.parent().unwrap().to_owned();
    assert!(printed.ca.exists(), "{}", printed.all);
    assert!(
        dir.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("tether-demo-tls-"),
        "{}",
        dir.display()
    );
    let page = https_get(addr, trusting(&printed.ca), "localhost", "/").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    // SIGTERM: the demo stops and takes its throw-away directory with it.
    let pid = demo.0.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || {
        let exit = demo.0.wait();
        (demo, exit)
    });
    let (_demo, exit) = tokio::time::timeout(Duration::from_secs(15), exit)
        .await
        .expect("the demo exits within 15 s on SIGTERM")
        .unwrap();
    assert!(exit.unwrap().success());
    assert!(!dir.exists(), "{} is removed", dir.display());
}
