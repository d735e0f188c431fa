//! A WebSocket backend that streams binary frames of 1 B to 1 MiB at every client, for the
//! tests of closing tunnels at a frame boundary.
//!
//! Each frame is written in pieces with pauses between them (its header too, now and then
//! split after its first byte), so a tunnel spends much of its time in the middle of a
//! frame: a close that does not wait for the frame's end is caught by a client that parses
//! every frame. Every payload byte of a frame of `n` bytes is `payload_byte(n)`, so a client
//! can tell a whole frame from a spliced one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The frame sizes streamed, in this order from a per-connection starting point: every
/// length encoding (7-bit, 16-bit, 64-bit) and its edges, up to 1 MiB.
pub const FRAME_SIZES: [usize; 12] = [
    1,
    2,
    125,
    126,
    127,
    1000,
    4096,
    65_535,
    65_536,
    70_000,
    100_000,
    1 << 20,
];

/// Bytes written at once inside a frame, and the pause after each piece: 2.6 MB/s while a
/// frame is under way, so a 1 MiB frame takes about 0.4 s and a stream is inside a frame
/// about a fifth of the time.
const PIECE: usize = 64 * 1024;
const PIECE_PAUSE: Duration = Duration::from_millis(25);
/// The longest pause between two frames (drawn from the connection's own sequence), which
/// keeps 300 streams to about 150 MB/s together.
const GAP_MAX_MS: u64 = 300;

/// The byte every payload byte of a frame of `len` bytes is.
pub fn payload_byte(len: usize) -> u8 {
    (len % 251) as u8
}

/// A running streaming backend.
pub struct FrameStreamer {
    name: String,
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FrameStreamer {
    /// Starts a streamer named `name` (sent in the [`BACKEND_HEADER`](crate::BACKEND_HEADER)
    /// response header).
    pub async fn start(name: &str, addr: SocketAddr) -> std::io::Result<FrameStreamer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let open = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(accept_loop(listener, name.to_owned(), open.clone()));
        Ok(FrameStreamer {
            name: name.to_owned(),
            addr,
            open,
            task,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// WebSocket sessions currently streaming.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

impl Drop for FrameStreamer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, name: String, open: Arc<AtomicUsize>) {
    let mut sessions = tokio::task::JoinSet::new();
    let mut seed = 0usize;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                seed += 1;
                sessions.spawn(session(stream, name.clone(), open.clone(), seed));
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

/// Counts a session as open while it lives.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn session(mut stream: TcpStream, name: String, open: Arc<AtomicUsize>, seed: usize) {
    let Some(key) = read_key(&mut stream).await else {
        return;
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n{}: {name}\r\n\r\n",
        derive_accept_key(key.as_bytes()),
        crate::BACKEND_HEADER
    );
    if stream.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    open.fetch_add(1, Ordering::Relaxed);
    let _open = Open(open);
    let (mut read, mut write) = stream.into_split();
    // What the client sends is read and dropped; its end (or the proxy's) ends the stream.
    let reader = async {
        let mut sink = [0u8; 4096];
        while matches!(read.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let writer = stream_frames(&mut write, seed);
    tokio::select! {
        () = reader => {}
        _ = writer => {}
    }
}

/// Writes frames until a write fails (the proxy closed the connection).
async fn stream_frames(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    seed: usize,
) -> std::io::Result<()> {
    let mut i = seed.wrapping_mul(7);
    loop {
        let len = FRAME_SIZES[i % FRAME_SIZES.len()];
        let header = header(len);
        // Every third frame splits its header after the first byte.
        let split = if i.is_multiple_of(3) { 1 } else { header.len() };
        write.write_all(&header[..split]).await?;
        if split < header.len() {
            tokio::time::sleep(PIECE_PAUSE).await;
            write.write_all(&header[split..]).await?;
        }
        let piece = vec![payload_byte(len); PIECE.min(len)];
        let mut left = len;
        while left > 0 {
            let n = left.min(PIECE);
            write.write_all(&piece[..n]).await?;
            left -= n;
            if left > 0 {
                tokio::time::sleep(PIECE_PAUSE).await;
            }
        }
        let gap = (i as u64).wrapping_mul(2_654_435_761) % GAP_MAX_MS;
        tokio::time::sleep(Duration::from_millis(gap)).await;
        i += 1;
    }
}

/// A binary frame's header (server role: unmasked).
fn header(len: usize) -> Vec<u8> {
    let mut h = vec![0x82];
    if len < 126 {
        h.push(len as u8);
    } else if len <= 0xffff {
        h.push(126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(127);
        h.extend_from_slice(&(len as u64).to_be_bytes());
    }
    h
}

/// Reads an upgrade request head and returns its `Sec-WebSocket-Key`.
async fn read_key(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > 16 * 1024 {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim().to_owned())
    })
}
