//! The byte tunnel that carries a WebSocket after `101 Switching Protocols`.
//!
//! Most WebSockets are idle most of the time, so an idle tunnel holds **no user-space buffer**:
//! each direction waits for readiness, then reads into a per-thread scratch buffer and writes
//! straight to the other socket. Only when the destination cannot take everything at once is the
//! remainder copied into a buffer owned by that direction, freed as soon as it drains. While a
//! direction has bytes pending it stops reading, so back-pressure reaches the sender through TCP.
//!
//! A half-close is forwarded (`shutdown(SHUT_WR)` on the other socket) and the other direction
//! keeps flowing until it ends too; an error on either socket ends the whole tunnel.
//!
//! The proxy ends a tunnel on purpose (drain, rebalance, shutdown, idle timeout) through its
//! [`Ticket`] in the [`TunnelTable`]: listening costs the tunnel one registration when it
//! starts and one atomic load per wake-up. It then says goodbye like a WebSocket server,
//! with a close frame at a frame boundary ([`goodbye`]); to know where the boundaries are,
//! the backend→client direction of a WebSocket tunnel follows its frame headers from the
//! start ([`frames`], which gives the measured cost).

pub mod close;
pub mod frames;
pub mod goodbye;
mod stream;

pub use close::{CloseReason, Entry, Registration, Ticket, TunnelTable};
pub use goodbye::Goodbye;
pub use stream::run as run_stream;

pub use frames::FrameTracker;

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelValue;
use prometheus_client::metrics::counter::Counter;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// Scratch space per worker thread. 64 KiB lets a large message cross in few syscalls.
const SCRATCH: usize = 64 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

/// Why a tunnel ended, as logged and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum EndReason {
    /// Both sides closed in an orderly way.
    Closed,
    /// The client's socket failed (reset, or a write to it failed).
    ClientError,
    /// The backend's socket failed.
    BackendError,
    /// No byte moved for `timeouts.tunnel_idle`.
    IdleTimeout,
    /// The proxy is shutting down (closed within `runtime.grace`, or past it).
    Shutdown,
    /// Its backend was drained with `close_within`.
    Drain,
    /// A rebalance moved it to the backend its key belongs to now.
    Rebalance,
}

impl From<CloseReason> for EndReason {
    fn from(reason: CloseReason) -> EndReason {
        match reason {
            CloseReason::Shutdown => EndReason::Shutdown,
            CloseReason::Drain => EndReason::Drain,
            CloseReason::Rebalance => EndReason::Rebalance,
        }
    }
}

impl EndReason {
    /// The close code and text the client is told, when the proxy ended the tunnel.
    fn close_code(self, ticket: &Ticket) -> Option<(u16, &'static str)> {
        match self {
            EndReason::IdleTimeout => Some((1001, "idle timeout")),
            EndReason::Shutdown | EndReason::Drain | EndReason::Rebalance => {
                ticket.reason().map(CloseReason::close_code)
            }
            EndReason::Closed | EndReason::ClientError | EndReason::BackendError => None,
        }
    }
}

/// Wait lists of a [`CloseSignal`]; a tunnel registers on one chosen by its key, so tunnels
/// starting and ending on different threads rarely take the same lock.
const CLOSE_SHARDS: usize = 8;

/// "Close your connections, for this reason", broadcast to every connection still in its
/// handshake, including the ones that start after it was raised (tunnels are closed through
/// their [`Ticket`]s). Raised once; the first reason stays.
#[derive(Debug, Default)]
pub struct CloseSignal {
    /// 0 until raised, then a [`CloseReason`].
    reason: AtomicU8,
    shards: [Notify; CLOSE_SHARDS],
}

impl CloseSignal {
    /// Raises the signal: every listening tunnel ends with `reason`.
    pub fn close(&self, reason: CloseReason) {
        let _ = self
            .reason
            .compare_exchange(0, reason as u8, Ordering::Release, Ordering::Relaxed);
        for shard in &self.shards {
            shard.notify_waiters();
        }
    }

    /// The reason, once raised.
    pub fn reason(&self) -> Option<CloseReason> {
        CloseReason::from_u8(self.reason.load(Ordering::Acquire))
    }

    /// Waits until the signal is raised. Like a tunnel, it registers once and then reads
    /// only the flag, so polling it beside a busy future costs no lock.
    pub async fn closed(&self, key: u64) -> CloseReason {
        let notified = self.shard(key).notified();
        let mut notified = std::pin::pin!(notified);
        let mut listening = false;
        poll_fn(|cx| {
            if !listening {
                listening = true;
                let _ = notified.as_mut().poll(cx);
            }
            match self.reason() {
                Some(reason) => Poll::Ready(reason),
                None => Poll::Pending,
            }
        })
        .await
    }

    fn shard(&self, key: u64) -> &Notify {
        &self.shards[(key % CLOSE_SHARDS as u64) as usize]
    }
}

/// What a tunnel listens to for an order to end, and where its backend→client stream is in
/// its WebSocket frames, so it can end with a close frame (`None`: not frames, as on a
/// `tls-passthrough` listener; such a tunnel is cut).
#[derive(Debug, Clone, Copy)]
pub struct Closer<'a> {
    pub ticket: &'a Ticket,
    pub frames: Option<FrameTracker>,
}

/// Bytes each way and why the tunnel ended.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub to_backend: u64,
    pub to_client: u64,
    pub reason: EndReason,
    /// The socket error behind `ClientError` / `BackendError`.
    pub error: Option<io::ErrorKind>,
    /// How the end was told to the client.
    pub goodbye: Goodbye,
}

/// Where each direction's bytes are counted for metrics.
#[derive(Debug, Clone, Copy)]
pub struct Counters<'a> {
    pub to_backend: &'a Counter,
    pub to_client: &'a Counter,
}

/// The state of one direction of the tunnel.
#[derive(Debug)]
enum Flow {
    /// Waiting for the source to become readable. Holds nothing.
    Idle,
    /// The destination did not take everything; these bytes go first, reading is paused.
    Pending { buf: Box<[u8]>, sent: usize },
    /// The source reached EOF; the destination's write side is shut down.
    Finished,
}

/// One direction: reads from `src`, writes to `dst`.
struct Direction<'a> {
    src: &'a TcpStream,
    dst: &'a TcpStream,
    flow: Flow,
    moved: u64,
    counter: &'a Counter,
    /// Frame boundaries of the backend→client direction of a WebSocket; `None` otherwise.
    frames: Option<FrameTracker>,
}

/// A failure on one of the two sockets, so the end reason can blame the right side.
enum Side {
    Src(io::Error),
    Dst(io::Error),
}

impl Direction<'_> {
    /// Moves bytes until the source would block, or finishes. `Ready(Ok)` means EOF was
    /// forwarded; an error names the side that failed. `last` says the other direction has
    /// already finished, so the tunnel ends with this EOF.
    fn poll_pump(
        &mut self,
        cx: &mut Context<'_>,
        activity: &mut bool,
        last: bool,
    ) -> Poll<Result<(), Side>> {
        loop {
            match &mut self.flow {
                Flow::Finished => return Poll::Ready(Ok(())),
                Flow::Pending { buf, sent } => {
                    ready!(self.dst.poll_write_ready(cx)).map_err(Side::Dst)?;
                    match self.dst.try_write(&buf[*sent..]) {
                        Ok(n) => {
                            *activity = true;
                            *sent += n;
                            if *sent == buf.len() {
                                // Drained: give the buffer back and resume reading.
                                self.flow = Flow::Idle;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Poll::Ready(Err(Side::Dst(e))),
                    }
                }
                Flow::Idle => {
                    ready!(self.src.poll_read_ready(cx)).map_err(Side::Src)?;
                    let result: io::Result<Option<io::Result<()>>> = SCRATCH_BUF.with(|scratch| {
                        let mut scratch = scratch.borrow_mut();
                        let n = read_draining(self.src, &mut scratch)?;
                        if n == 0 {
                            return Ok(None);
                        }
                        Ok(Some(self.forward(&scratch[..n])))
                    });
                    match result {
                        Ok(None) => {
                            // EOF: pass the half-close on; the other direction may still flow.
                            // When it already ended, both sockets are closed next, and the
                            // close sends this FIN: the `shutdown` call would be one more
                            // syscall for nothing (the peer's EOF was read, so its receive
                            // queue is empty and the close is orderly, not a reset).
                            *activity = true;
                            if !last {
                                let _ = socket2::SockRef::from(self.dst).shutdown(Shutdown::Write);
                            }
                            self.flow = Flow::Finished;
                        }
                        Ok(Some(Ok(()))) => *activity = true,
                        Ok(Some(Err(e))) => return Poll::Ready(Err(Side::Dst(e))),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Poll::Ready(Err(Side::Src(e))),
                    }
                }
            }
        }
    }

    /// Writes freshly read bytes; keeps whatever the destination refused.
    fn forward(&mut self, data: &[u8]) -> io::Result<()> {
        self.moved += data.len() as u64;
        self.counter.inc_by(data.len() as u64);
        if let Some(frames) = &mut self.frames {
            frames.advance(data);
        }
        let sent = match self.dst.try_write(data) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if sent < data.len() {
            self.flow = Flow::Pending {
                buf: data[sent..].into(),
                sent: 0,
            };
        }
        Ok(())
    }
}

/// Reads once into `buf`. A short read means the socket's receive queue is empty, so the
/// readiness is cleared right here instead of paying one more `recv` that would return
/// `EWOULDBLOCK`. Tokio only clears the readiness it observed, so an edge that arrived after
/// the read is not lost.
fn read_draining(src: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = None;
    let result = src.try_io(Interest::READABLE, || {
        // SAFETY: `buf` is a valid, exclusively borrowed slice of `buf.len()` bytes and the
        // file descriptor stays open for the call (borrowed from `src`).
        let n = unsafe { libc::recv(src.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        got = Some(n);
        if n > 0 && n < buf.len() {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match (result, got) {
        (Ok(n), _) => Ok(n),
        (Err(e), Some(n)) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
        (Err(e), _) => Err(e),
    }
}

/// Carries bytes both ways until both sides have closed, a socket fails, the idle timeout
/// fires or the proxy closes the tunnel (then with a close frame, see [`goodbye`]).
pub async fn run(
    client: &TcpStream,
    backend: &TcpStream,
    idle: Option<Duration>,
    counters: &Counters<'_>,
    closer: Closer<'_>,
) -> Outcome {
    let mut up = Direction {
        src: client,
        dst: backend,
        flow: Flow::Idle,
        moved: 0,
        counter: counters.to_backend,
        frames: None,
    };
    let mut down = Direction {
        src: backend,
        dst: client,
        flow: Flow::Idle,
        moved: 0,
        counter: counters.to_client,
        frames: closer.frames,
    };
    let mut idle = IdleClock::new(idle);
    let mut error = None;
    let mut listening = false;
    let reason = poll_fn(|cx| {
        if !listening {
            // Once, to leave this task's waker with the ticket: the task's waker does not
            // change, and the flag says whether a wake-up was a close request.
            listening = true;
            closer.ticket.listen(cx.waker());
        }
        if let Some(reason) = closer.ticket.reason() {
            return Poll::Ready(EndReason::from(reason));
        }
        let mut activity = false;
        let down_finished = matches!(down.flow, Flow::Finished);
        let up_done = match up.poll_pump(cx, &mut activity, down_finished) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(side)) => {
                return Poll::Ready(blame(
                    side,
                    EndReason::ClientError,
                    EndReason::BackendError,
                    &mut error,
                ))
            }
            Poll::Pending => false,
        };
        let down_done = match down.poll_pump(cx, &mut activity, up_done) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(side)) => {
                return Poll::Ready(blame(
                    side,
                    EndReason::BackendError,
                    EndReason::ClientError,
                    &mut error,
                ))
            }
            Poll::Pending => false,
        };
        if up_done && down_done {
            return Poll::Ready(EndReason::Closed);
        }
        if idle.expired(cx, activity) {
            return Poll::Ready(EndReason::IdleTimeout);
        }
        Poll::Pending
    })
    .await;
    let goodbye = match reason.close_code(closer.ticket) {
        // Boxed: only a closing tunnel pays for the goodbye's state.
        Some((code, text)) if closer.frames.is_some() => {
            Box::pin(goodbye::plain(client, backend, &mut down, code, text)).await
        }
        Some(_) => Goodbye::Cut,
        None => Goodbye::None,
    };
    Outcome {
        to_backend: up.moved,
        to_client: down.moved,
        reason,
        error,
        goodbye,
    }
}

/// A tunnel's idle timeout. The timer exists only when a timeout is configured, and is
/// re-armed lazily: activity just stamps `last`, the timer checks it when it fires. Shared
/// by the plain tunnel and the one over TLS.
pub(crate) struct IdleClock {
    timer: Option<(Duration, Pin<Box<Sleep>>)>,
    last: Instant,
}

impl IdleClock {
    pub(crate) fn new(idle: Option<Duration>) -> IdleClock {
        IdleClock {
            timer: idle.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
            last: Instant::now(),
        }
    }

    /// Notes whether this turn moved bytes, then says whether the tunnel has been idle for
    /// longer than the limit.
    pub(crate) fn expired(&mut self, cx: &mut Context<'_>, activity: bool) -> bool {
        let Some((limit, timer)) = self.timer.as_mut() else {
            return false;
        };
        if activity {
            self.last = Instant::now();
        }
        while timer.as_mut().poll(cx).is_ready() {
            let deadline = self.last + *limit;
            if Instant::now() >= deadline {
                return true;
            }
            timer.as_mut().reset(deadline);
        }
        false
    }
}

fn blame(
    side: Side,
    src_reason: EndReason,
    dst_reason: EndReason,
    error: &mut Option<io::ErrorKind>,
) -> EndReason {
    let (reason, e) = match side {
        Side::Src(e) => (src_reason, e),
        Side::Dst(e) => (dst_reason, e),
    };
    *error = Some(e.kind());
    reason
}

use std::future::Future as _;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// client ⇄ [proxy_client | proxy_backend] ⇄ backend, the backend→client direction
    /// tracked as WebSocket frames; the ticket closes it.
    async fn tunnel(
        idle: Option<Duration>,
    ) -> (
        TcpStream,
        TcpStream,
        std::sync::Arc<Ticket>,
        tokio::task::JoinHandle<Outcome>,
    ) {
        let (client, proxy_client) = pair().await;
        let (proxy_backend, backend) = pair().await;
        let ticket = std::sync::Arc::new(Ticket::default());
        let held = ticket.clone();
        let task = tokio::spawn(async move {
            let (to_backend, to_client) = (Counter::default(), Counter::default());
            let c = Counters {
                to_backend: &to_backend,
                to_client: &to_client,
            };
            let closer = Closer {
                ticket: &held,
                frames: Some(FrameTracker::default()),
            };
            run(&proxy_client, &proxy_backend, idle, &c, closer).await
        });
        (client, backend, ticket, task)
    }

    #[tokio::test]
    async fn large_payload_crosses_byte_exact_both_ways() {
        let (mut client, mut backend, _ticket, task) = tunnel(None).await;
        let payload: Vec<u8> = (0..8 * 1024 * 1024u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let expected = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&payload).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        backend.read_to_end(&mut got).await.unwrap();
        assert!(got == expected, "payload differs");
        backend.write_all(b"bye").await.unwrap();
        backend.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"bye");
        let outcome = task.await.unwrap();
        assert_eq!(outcome.reason, EndReason::Closed);
        assert_eq!(outcome.to_backend, expected.len() as u64);
        assert_eq!(outcome.to_client, 3);
    }

    #[tokio::test]
    async fn half_close_keeps_the_other_direction_open() {
        let (mut client, mut backend, _ticket, _task) = tunnel(None).await;
        client.shutdown().await.unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(backend.read(&mut buf).await.unwrap(), 0, "backend sees EOF");
        backend.write_all(b"late").await.unwrap();
        let mut got = [0u8; 4];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"late");
    }

    #[tokio::test]
    async fn idle_timeout_ends_a_silent_tunnel_but_not_a_busy_one() {
        let (mut client, mut backend, _ticket, task) =
            tunnel(Some(Duration::from_millis(300))).await;
        for _ in 0..5 {
            client.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            backend.read_exact(&mut b).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!task.is_finished(), "a busy tunnel was cut");
        let outcome = tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outcome.reason, EndReason::IdleTimeout);
    }

    /// A close request in the middle of a large frame: the client gets the rest of that
    /// frame, then a 1012 close frame, then EOF; the backend gets EOF; nothing past the
    /// frame's end is forwarded.
    #[tokio::test]
    async fn a_close_request_mid_frame_finishes_the_frame_then_sends_a_close_frame() {
        let (mut client, mut backend, ticket, task) = tunnel(None).await;
        let len = 200_000usize;
        let mut frame = vec![0x82, 127];
        frame.extend_from_slice(&(len as u64).to_be_bytes());
        frame.extend(std::iter::repeat_n(7u8, len));
        let split = 10 + len / 2;
        backend.write_all(&frame[..split]).await.unwrap();
        let mut got = vec![0u8; split];
        client.read_exact(&mut got).await.unwrap();
        assert!(ticket.request(CloseReason::Drain));
        // The rest of the frame, and a whole next frame the proxy must not forward.
        backend.write_all(&frame[split..]).await.unwrap();
        backend.write_all(&[0x81, 0x02, b'n', b'o']).await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        let (tail, close) = rest.split_at(frame.len() - split);
        assert!(
            tail == &frame[split..],
            "the frame under way was not finished"
        );
        assert_eq!(close, &frames::close_frame(1012, "backend draining")[..]);
        let mut b = Vec::new();
        let _ = backend.read_to_end(&mut b).await;
        let outcome = task.await.unwrap();
        assert_eq!(outcome.reason, EndReason::Drain);
        assert_eq!(outcome.goodbye, Goodbye::Sent(1012));
    }

    #[tokio::test]
    async fn an_idle_timeout_ends_with_1001() {
        let (mut client, _backend, _ticket, task) = tunnel(Some(Duration::from_millis(200))).await;
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, frames::close_frame(1001, "idle timeout"));
        assert_eq!(task.await.unwrap().goodbye, Goodbye::Sent(1001));
    }

    /// A frame that does not end within the deadline is cut: no close frame inside it.
    #[tokio::test]
    async fn a_stalled_frame_is_cut_without_a_close_frame() {
        let (mut client, mut backend, ticket, task) = tunnel(None).await;
        backend
            .write_all(&[0x82, 126, 0x10, 0x00, 1, 2, 3])
            .await
            .unwrap();
        let mut got = [0u8; 7];
        client.read_exact(&mut got).await.unwrap();
        ticket.request(CloseReason::Shutdown);
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "bytes after a cut: {rest:?}");
        let outcome = task.await.unwrap();
        assert_eq!(outcome.reason, EndReason::Shutdown);
        assert_eq!(outcome.goodbye, Goodbye::Cut);
    }

    #[tokio::test]
    async fn backend_reset_ends_the_tunnel() {
        let (_client, backend, _ticket, task) = tunnel(None).await;
        socket2::SockRef::from(&backend)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(backend);
        let outcome = tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .unwrap()
            .unwrap();
        assert_ne!(outcome.reason, EndReason::IdleTimeout);
    }
}
