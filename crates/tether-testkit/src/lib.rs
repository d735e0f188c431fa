//! Real processes on loopback for tether's tests: echo backends and WebSocket clients.
//!
//! Each test should read as a few lines of intent; the starting, port picking and waiting
//! lives here.

#![forbid(unsafe_code)]

pub mod echo;
pub mod fuzz;
pub mod stream;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

pub use echo::{EchoServer, BACKEND_HEADER};
use futures_util::{SinkExt, StreamExt};
pub use stream::FrameStreamer;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::Response;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A WebSocket client over a plain TCP stream.
pub type Ws = WebSocketStream<TcpStream>;

/// A loopback address with port 0, for binding to a free port.
pub fn any_port() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// Starts `n` echo backends named `b1..bn` on free loopback ports.
pub async fn echo_backends(n: usize) -> Vec<EchoServer> {
    let mut out = Vec::with_capacity(n);
    for i in 1..=n {
        out.push(
            EchoServer::start(&format!("b{i}"), any_port())
                .await
                .expect("bind echo backend"),
        );
    }
    out
}

/// Connects a TCP stream to `target` from the given local source address (a 127.x address
/// stands in for a distinct client IP).
pub async fn tcp_from(source: IpAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Opens a WebSocket through `target` at `path_and_query`, from 127.0.0.1.
pub async fn ws_connect(
    target: SocketAddr,
    path_and_query: &str,
) -> anyhow::Result<(Ws, Response<Option<Vec<u8>>>)> {
    ws_connect_with(target, path_and_query, IpAddr::V4(Ipv4Addr::LOCALHOST), &[]).await
}

/// Opens a WebSocket with a chosen source address and extra request headers.
pub async fn ws_connect_with(
    target: SocketAddr,
    path_and_query: &str,
    source: IpAddr,
    headers: &[(&str, &str)],
) -> anyhow::Result<(Ws, Response<Option<Vec<u8>>>)> {
    let stream = tcp_from(source, target).await?;
    let mut request = format!("ws://{target}{path_and_query}").into_client_request()?;
    for (name, value) in headers {
        request.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())?,
            value.parse()?,
        );
    }
    let (ws, response) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(request, stream),
    )
    .await??;
    Ok((ws, response))
}

/// The backend name a response carries in [`BACKEND_HEADER`].
pub fn backend_of<T>(response: &Response<T>) -> String {
    response
        .headers()
        .get(BACKEND_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Sends `whoami` over an open WebSocket and returns the backend's answer.
pub async fn whoami(ws: &mut Ws) -> anyhow::Result<String> {
    ws.send(Message::text("whoami")).await?;
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await? {
        Some(Ok(Message::Text(t))) => Ok(t.to_string()),
        other => anyhow::bail!("unexpected answer to whoami: {other:?}"),
    }
}

/// Waits until `probe` returns true, checking every 20 ms, for at most `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if probe().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
