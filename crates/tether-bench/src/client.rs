//! Opening a WebSocket client session for a run: a connection from a chosen source (TCP, or
//! TLS over it; see [`dialer`](crate::dialer)), then the upgrade.

use std::net::IpAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

use crate::dialer::{Dialer, Plain};
use crate::error::BenchError;
use crate::target::TargetUrl;

/// A client session over plain TCP.
pub type Ws = WebSocketStream<TcpStream>;

/// How long one connect plus upgrade may take before it counts as failed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Buffer sizes for a session. Idle runs hold thousands of sessions, so they ask for small
/// buffers: the run should measure the proxy's memory, not the generator's.
#[derive(Debug, Clone, Copy)]
pub enum Buffers {
    /// Room for messages of the given size without regrowing.
    ForMessages(usize),
    /// As little as tungstenite allows.
    Idle,
}

impl Buffers {
    fn config(self) -> WebSocketConfig {
        let base = WebSocketConfig::default()
            .max_message_size(Some(64 << 20))
            .max_frame_size(Some(64 << 20));
        match self {
            Buffers::ForMessages(size) => base
                .read_buffer_size((size + 64).max(4096))
                .write_buffer_size(0),
            Buffers::Idle => base.read_buffer_size(256).write_buffer_size(0),
        }
    }
}

/// Connects from `source` to a `ws://` `target` and completes the upgrade for `url`.
pub async fn open(
    target: &TargetUrl,
    url: &str,
    source: IpAddr,
    buffers: Buffers,
) -> Result<Ws, BenchError> {
    open_with(&Plain::new(target)?, url, source, buffers).await
}

/// Connects from `source` with `dialer` and completes the upgrade for `url`; connect, TLS
/// (if any) and upgrade together have [`HANDSHAKE_TIMEOUT`].
pub async fn open_with<D: Dialer>(
    dialer: &D,
    url: &str,
    source: IpAddr,
    buffers: Buffers,
) -> Result<WebSocketStream<D::Stream>, BenchError> {
    let addr = dialer.target().addr();
    let attempt = async {
        let stream = dialer.connect(source).await?;
        let (ws, _response) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(buffers.config()))
                .await
                .map_err(|e| BenchError::ws(addr, e))?;
        Ok(ws)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt)
        .await
        .map_err(|_| BenchError::Timeout {
            what: "WebSocket handshake",
            after: HANDSHAKE_TIMEOUT,
        })?
}
