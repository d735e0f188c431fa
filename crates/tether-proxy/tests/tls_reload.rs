//! Live certificate reload: files swapped under a running proxy while tunnels carry traffic.
//! New handshakes see the new certificate (through the file watch, `POST /api/reload`), no
//! open tunnel is dropped, and a broken file keeps the old certificate with a 422 naming it.

mod tls_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tether_proxy::{Config, Proxy, RunningProxy};
use tls_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Running {
    dir: TempDir,
    ca: Ca,
    proxy: RunningProxy,
}

async fn start() -> Running {
    let dir = TempDir::new("reload");
    let ca = Ca::new("Root");
    write_leaf(&dir, "site", &ca.server(&["chat.example.com"]));
    let backend = recorder().await;
    let text = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n[listen.tls]\ncert = \"site.pem\"\nkey = \"site.key\"\n\
         [admin]\naddr = \"127.0.0.1:0\"\n[[backend]]\nname = \"b1\"\naddr = \"{}\"\n",
        backend.addr
    );
    let path = dir.write("proxy.toml", &text);
    let config = Config::from_file(&path).unwrap();
    let proxy = Proxy::bind(config, Some(path)).await.unwrap().spawn();
    std::mem::forget(backend);
    Running { dir, ca, proxy }
}

impl Running {
    /// A fresh client (no session to resume), so the handshake shows the certificate.
    async fn tls(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.proxy.addr()).await.unwrap();
        let config = client_config(self.ca.roots(), None, BOTH);
        let name = rustls::pki_types::ServerName::try_from("chat.example.com").unwrap();
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .unwrap()
    }

    async fn served(&self) -> rustls::pki_types::CertificateDer<'static> {
        let tls = self.tls().await;
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    }
}

async fn post(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

/// Tunnels that keep sending and checking echoes until told to stop; each reports how many
/// round trips it made, or panics if its tunnel broke.
fn load(
    r: &Running,
    n: usize,
    stop: Arc<AtomicBool>,
    trips: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let stop = stop.clone();
            let trips = trips.clone();
            let addr = r.proxy.addr();
            let roots = r.ca.roots();
            tokio::spawn(async move {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let config = client_config(roots, None, BOTH);
                let name = rustls::pki_types::ServerName::try_from("chat.example.com").unwrap();
                let mut tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .unwrap();
                upgrade(&mut tls, "").await;
                let msg = format!("tunnel {i:04}");
                while !stop.load(Ordering::Relaxed) {
                    tls.write_all(msg.as_bytes()).await.expect("tunnel write");
                    let mut back = vec![0u8; msg.len()];
                    tls.read_exact(&mut back).await.expect("tunnel read");
                    assert_eq!(back, msg.as_bytes());
                    trips.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_files_reach_new_handshakes_and_no_tunnel_is_dropped() {
    let r = start().await;
    let first = r.served().await;
    let stop = Arc::new(AtomicBool::new(false));
    let trips = Arc::new(AtomicU64::new(0));
    let tunnels = load(&r, 8, stop.clone(), trips.clone());
    while trips.load(Ordering::Relaxed) < 16 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 1. A renewal tool replaces the files: the watch picks them up.
    let second = r.ca.server(&["chat.example.com"]);
    write_leaf(&r.dir, "site", &second);
    let mut seen = first.clone();
    for _ in 0..100 {
        seen = r.served().await;
        if seen != first {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, second.cert, "the file watch reloaded the certificate");

    // 2. An operator reloads through the admin API.
    let third = r.ca.server(&["chat.example.com"]);
    write_leaf(&r.dir, "site", &third);
    let (status, answer) = post(r.proxy.admin_addr().unwrap(), "/api/reload").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(r.served().await, third.cert);

    // 3. A broken certificate: 422 naming the file, and the current certificate stays.
    r.dir.write(
        "site.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    let (status, answer) = post(r.proxy.admin_addr().unwrap(), "/api/reload").await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer.contains(&*r.dir.path("site.pem").to_string_lossy()),
        "{answer}"
    );
    assert!(answer.contains("listen.tls.cert"), "{answer}");
    assert_eq!(r.served().await, third.cert);
    // The watch sees the broken file too, and also keeps the certificate.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(r.served().await, third.cert);

    let before = trips.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        trips.load(Ordering::Relaxed) > before,
        "the tunnels still move bytes"
    );
    stop.store(true, Ordering::Relaxed);
    for t in tunnels {
        t.await.expect("no tunnel was dropped during the reloads");
    }
    let metrics = r.proxy.metrics_text();
    assert!(
        metrics.contains("tether_tls_certificate_expiry_timestamp_seconds{"),
        "{metrics}"
    );
}
