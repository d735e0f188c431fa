//! An echo backend that can say who it is.
//!
//! Used by the proxy's tests, by `tether bench echo` and by the comparison script (three of
//! them behind each proxy), so every balancing assertion and every benchmark is made against
//! the same real server. It lives in the testkit, which the bench depends on, not the reverse.
//!
//! * A WebSocket upgrade gets `101` with `X-Tether-Backend: NAME`; every data frame is echoed.
//!   A text frame `whoami` is answered with the name instead of being echoed, so a client can ask
//!   over an established tunnel.
//! * A plain HTTP request gets `200` with the name as the body (`/health` too), keep-alive.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The response header that names the backend on every answer.
pub const BACKEND_HEADER: &str = "X-Tether-Backend";

const MAX_HEAD: usize = 16 * 1024;

/// Counters an echo backend keeps, so tests can see where traffic went.
#[derive(Debug, Default)]
pub struct EchoStats {
    /// WebSocket sessions currently open.
    pub open: AtomicU64,
    /// WebSocket sessions accepted since start.
    pub accepted: AtomicU64,
    /// Plain HTTP requests answered.
    pub http_requests: AtomicU64,
    /// Data frames echoed back (lets the load generator's counts be checked against ours).
    pub echoed: AtomicU64,
}

/// A running echo backend. Dropping it does not stop it; call [`EchoServer::stop`].
#[derive(Debug)]
pub struct EchoServer {
    name: Arc<str>,
    addr: SocketAddr,
    stats: Arc<EchoStats>,
    task: JoinHandle<()>,
}

impl EchoServer {
    /// Binds `addr` (port 0 picks a free one) and serves until stopped.
    pub async fn start(name: &str, addr: SocketAddr) -> std::io::Result<EchoServer> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self::serve(name, listener))
    }

    /// Serves on an already-bound listener (lets a caller restart on the same port).
    pub fn serve(name: &str, listener: TcpListener) -> EchoServer {
        let name: Arc<str> = Arc::from(name);
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        let stats = Arc::new(EchoStats::default());
        let task = tokio::spawn(accept_loop(listener, name.clone(), stats.clone()));
        EchoServer {
            name,
            addr,
            stats,
            task,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> &EchoStats {
        &self.stats
    }

    /// Stops accepting. Sessions already open are aborted with the task set, like a crash.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, name: Arc<str>, stats: Arc<EchoStats>) {
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                sessions.spawn(serve_connection(stream, name.clone(), stats.clone()));
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

async fn serve_connection(mut stream: TcpStream, name: Arc<str>, stats: Arc<EchoStats>) {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let Some(head_len) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(_)) = req.parse(&buf[..head_len]) else {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
            return;
        };
        let ws_key = header(req.headers, "sec-websocket-key").map(derive_accept_key);
        let is_upgrade =
            header(req.headers, "upgrade").is_some_and(|u| u.eq_ignore_ascii_case(b"websocket"));
        match (is_upgrade, ws_key) {
            (true, Some(accept)) => {
                let response = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{BACKEND_HEADER}: {name}\r\n\r\n"
                );
                if stream.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
                let leftover = buf.split_off(head_len);
                echo_session(stream, leftover, &name, &stats).await;
                return;
            }
            _ => {
                stats.http_requests.fetch_add(1, Ordering::Relaxed);
                let close = header(req.headers, "connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case(b"close"));
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{BACKEND_HEADER}: {name}\r\n{}\r\n{name}",
                    name.len(),
                    if close { "connection: close\r\n" } else { "" }
                );
                if stream.write_all(response.as_bytes()).await.is_err() || close {
                    return;
                }
                // Requests carry no body in our tests; keep the bytes after the head for the next one.
                buf.drain(..head_len);
            }
        }
    }
}

/// Reads until `buf` holds a complete head; returns its length, or `None` on EOF / oversize.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(pos + 4);
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header<'a>(headers: &'a [httparse::Header<'_>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

async fn echo_session(stream: TcpStream, leftover: Vec<u8>, name: &str, stats: &EchoStats) {
    stats.accepted.fetch_add(1, Ordering::Relaxed);
    stats.open.fetch_add(1, Ordering::Relaxed);
    // tungstenite zero-fills the free part of its read buffer before every read: with the
    // default 128 KiB that costs more than the echo itself and would slow the CPU shared
    // with the generator. 8 KiB holds a 4 KiB benchmark message in one read.
    let config = WebSocketConfig::default()
        .read_buffer_size(8192)
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let mut ws =
        WebSocketStream::from_partially_read(stream, leftover, Role::Server, Some(config)).await;
    while let Some(Ok(msg)) = ws.next().await {
        let reply = match msg {
            Message::Text(t) if t.as_str() == "whoami" => Message::text(name),
            Message::Text(_) | Message::Binary(_) => msg,
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        if ws.send(reply).await.is_err() {
            break;
        }
        stats.echoed.fetch_add(1, Ordering::Relaxed);
    }
    let _ = ws.close(None).await;
    stats.open.fetch_sub(1, Ordering::Relaxed);
}
