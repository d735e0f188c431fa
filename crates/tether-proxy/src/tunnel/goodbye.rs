//! Ending a tunnel the way a WebSocket server would: the rest of the frame under way, then a
//! close frame, then the sockets.
//!
//! When the proxy ends a tunnel (drain, rebalance, shutdown, idle timeout), the client gets
//! a close frame with a code that tells it what to do (1012: come back now; 1001: the proxy
//! is going away), placed at a frame boundary of the backend→client stream (the
//! [`FrameTracker`](super::frames::FrameTracker) knows where that is). From the request on,
//! the proxy stops reading the client and reads the backend only up to the end of the frame
//! under way, never a byte past it. If that end does not come within [`FINISH_WITHIN`] (a
//! frame of many megabytes on a slow link, a backend that stalls mid-frame) the connection
//! is cut without a close frame: the client sees 1006, as it would for any cut connection.
//!
//! The backend's side is **closed, not sent a close frame**. A masked close frame from the
//! proxy would have to sit at a frame boundary of the client→backend stream too, which would
//! mean tracking that direction as well, on every tunnel, for a frame the backend cannot
//! tell from a client that left. Backends handle a client that goes away already.
//!
//! After the close frame the proxy shuts its write side (FIN) and reads what the client
//! still sends (its own close frame) for up to [`LINGER`] before closing: closing a socket
//! with unread bytes makes the kernel send a reset, which can destroy the close frame before
//! the client reads it.

use std::io;
use std::net::Shutdown;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::frames::close_frame;
use super::{Direction, Flow, SCRATCH};

/// How long the frame under way may take to finish before the connection is cut plainly.
pub const FINISH_WITHIN: Duration = Duration::from_secs(2);
/// How long the client's answer to the close frame is awaited (read and dropped).
pub const LINGER: Duration = Duration::from_secs(1);

/// How a tunnel's end was told to its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goodbye {
    /// The tunnel ended by itself (a side closed or failed): nothing to say.
    None,
    /// A close frame with this code, at a frame boundary.
    Sent(u16),
    /// The backend had sent its own close frame already; the proxy only closed the sockets.
    ByBackend,
    /// No boundary within [`FINISH_WITHIN`] (or the bytes are not WebSocket frames, as on a
    /// `tls-passthrough` listener): closed without a close frame.
    Cut,
}

/// Says goodbye on the plain tunnel. `down` is the backend→client direction, with its
/// frame tracker.
pub(super) async fn plain(
    client: &TcpStream,
    backend: &TcpStream,
    down: &mut Direction<'_>,
    code: u16,
    text: &str,
) -> Goodbye {
    let finished = tokio::time::timeout(FINISH_WITHIN, finish_frame(client, backend, down)).await;
    // The backend is done either way: FIN both ways, it sees a client that left.
    let _ = socket2::SockRef::from(backend).shutdown(Shutdown::Both);
    if !matches!(finished, Ok(Ok(true))) {
        return Goodbye::Cut;
    }
    let by_backend = down.frames.as_ref().is_some_and(|f| f.saw_close());
    if !by_backend {
        let frame = close_frame(code, text);
        match tokio::time::timeout(FINISH_WITHIN, write_all(client, &frame)).await {
            Ok(Ok(())) => {}
            _ => return Goodbye::Cut,
        }
    }
    let _ = socket2::SockRef::from(client).shutdown(Shutdown::Write);
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 512];
        loop {
            if client.readable().await.is_err() {
                return;
            }
            match client.try_read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    })
    .await;
    if by_backend {
        Goodbye::ByBackend
    } else {
        Goodbye::Sent(code)
    }
}

/// Moves backend bytes to the client up to the end of the frame under way. `Ok(true)` at a
/// boundary with nothing pending; `Ok(false)` when the backend's stream ended first (the
/// client's write side is shut then, or the frame can never end).
async fn finish_frame(
    client: &TcpStream,
    backend: &TcpStream,
    down: &mut Direction<'_>,
) -> io::Result<bool> {
    let mut buf = Vec::new();
    loop {
        match &mut down.flow {
            Flow::Finished => return Ok(false),
            Flow::Pending { buf: pending, sent } => {
                write_all(client, &pending[*sent..]).await?;
                down.flow = Flow::Idle;
            }
            Flow::Idle => {
                let want = down.frames.as_ref().map_or(0, |f| f.until_boundary());
                if want == 0 {
                    return Ok(true);
                }
                let want = want.min(SCRATCH as u64) as usize;
                buf.resize(want, 0);
                backend.readable().await?;
                match backend.try_read(&mut buf[..want]) {
                    Ok(0) => return Ok(false),
                    Ok(n) => down.forward(&buf[..n])?,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

async fn write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
        match stream.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Says goodbye on the tunnel over streams (TLS on either side). `down` is the
/// backend→client pump, with its frame tracker.
pub(super) async fn stream<C, B>(
    client: &mut C,
    backend: &mut B,
    down: &mut super::stream::Pump<'_>,
    code: u16,
    text: &str,
) -> Goodbye
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let finished = tokio::time::timeout(FINISH_WITHIN, down.finish_frame(client, backend)).await;
    // TLS: close_notify, then FIN. Bounded: a backend that reads nothing cannot hold it.
    let _ = tokio::time::timeout(LINGER, backend.shutdown()).await;
    if !matches!(finished, Ok(Ok(true))) {
        return Goodbye::Cut;
    }
    let by_backend = down.saw_close();
    if !by_backend {
        let frame = close_frame(code, text);
        let sent = tokio::time::timeout(FINISH_WITHIN, async {
            client.write_all(&frame).await?;
            client.flush().await
        })
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            return Goodbye::Cut;
        }
    }
    let _ = tokio::time::timeout(LINGER, async {
        let _ = client.shutdown().await;
        let mut sink = [0u8; 512];
        while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    if by_backend {
        Goodbye::ByBackend
    } else {
        Goodbye::Sent(code)
    }
}
