//! Active health checks, one task per backend.
//!
//! A check is a TCP connect, an HTTP `GET` expecting 2xx, or a real WebSocket upgrade expecting
//! `101` followed by a close frame — the last one proves the application answers upgrades, which
//! is what clients need. Results feed the same rise/fall counters as passive failures, so a
//! backend taken out by failed connects comes back only when checks pass `rise` times.

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::backend::{Backend, Transition};
use crate::config::{CheckKind, HealthConfig};

/// Starts the checker for `backend`; it stops when the backend is retired by a reload.
pub fn spawn(backend: Arc<Backend>, config: HealthConfig) {
    tokio::spawn(async move {
        let first = tokio::time::Instant::now() + config.interval;
        let mut ticker = tokio::time::interval_at(first, config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if backend.is_retired() {
                return;
            }
            let result = match config.kind {
                // Without active checks, time alone brings a backend back: each interval
                // spent down counts as one success. An up backend is left alone, so its
                // count of consecutive passive failures is not wiped by the clock.
                CheckKind::None if backend.is_healthy() => continue,
                CheckKind::None => Ok(()),
                kind => tokio::time::timeout(config.timeout, check(kind, &backend, &config.path))
                    .await
                    .unwrap_or_else(|_| {
                        Err(io::Error::new(io::ErrorKind::TimedOut, "check timed out"))
                    }),
            };
            let transition = match &result {
                Ok(()) => backend.record_success(config.rise),
                Err(_) if config.kind == CheckKind::None => None,
                Err(_) => backend.record_failure(config.fall),
            };
            log_transition(&backend, transition, result.err());
        }
    });
}

pub fn log_transition(backend: &Backend, transition: Option<Transition>, cause: Option<io::Error>) {
    match transition {
        Some(Transition::WentUp) => {
            info!(backend = %backend.name, addr = %backend.addr, "backend is up")
        }
        Some(Transition::WentDown) => {
            let cause = cause.map(|e| e.to_string()).unwrap_or_default();
            warn!(backend = %backend.name, addr = %backend.addr, %cause, "backend is down")
        }
        None => {}
    }
}

async fn check(kind: CheckKind, backend: &Backend, path: &str) -> io::Result<()> {
    let tcp = TcpStream::connect(backend.addr).await?;
    // The same TLS client as the handshakes: a check passes only if a client would get
    // through, certificate verification included.
    let mut stream: crate::transport::BackendIo = match &backend.tls {
        None => crate::transport::Io::Plain(tcp),
        Some(tls) => crate::transport::Io::Tls(Box::new(tls.connect(tcp).await?)),
    };
    match kind {
        CheckKind::None | CheckKind::Tcp => Ok(()),
        CheckKind::Http => {
            let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tether-health\r\nConnection: close\r\n\r\n", backend.addr);
            stream.write_all(req.as_bytes()).await?;
            stream.flush().await?;
            expect_status(&mut stream, |s| (200..300).contains(&s)).await
        }
        CheckKind::Websocket => {
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tether-health\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGV0aGVyLWhlYWx0aC1rZXk=\r\nSec-WebSocket-Version: 13\r\n\r\n",
                backend.addr
            );
            stream.write_all(req.as_bytes()).await?;
            stream.flush().await?;
            expect_status(&mut stream, |s| s == 101).await?;
            // A masked close frame with status 1000 (normal closure), mask key 0.
            stream
                .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8])
                .await?;
            let _ = stream.shutdown().await;
            Ok(())
        }
    }
}

async fn expect_status<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    ok: impl Fn(u16) -> bool,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    loop {
        let parsed = crate::response::parse_response(&buf).map_err(io::Error::other)?;
        if let Some(head) = parsed {
            return if ok(head.status) {
                Ok(())
            } else {
                Err(io::Error::other(format!("status {}", head.status)))
            };
        }
        if buf.len() > 16 * 1024 || stream.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "no response head",
            ));
        }
    }
}
