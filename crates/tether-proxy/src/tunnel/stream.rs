//! The tunnel over any byte stream, for connections where one side (or both) speaks TLS.
//!
//! The plain tunnel (the parent module) waits on socket readiness and reads with `recv`;
//! a TLS stream has to be read through its session, so this one uses `poll_read` and
//! `poll_write`. It keeps the same shape: per-thread scratch for a read, a buffer of its own
//! only for what the destination refused, freed once drained, and no reading while bytes are
//! pending, so back-pressure still reaches the sender. A TLS destination may accept bytes
//! into its session before they reach the socket, so each write is followed by a flush.
//! EOF is forwarded with `poll_shutdown`, which for TLS sends `close_notify` first.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::frames::FrameTracker;
use super::goodbye::{self, Goodbye};
use super::{blame, Closer, Counters, EndReason, IdleClock, Outcome, Side, SCRATCH, SCRATCH_BUF};

/// The state of one direction.
#[derive(Debug)]
enum Flow {
    /// Waiting for bytes from the source. Holds nothing.
    Idle,
    /// The destination did not take everything; these bytes go first.
    Pending { buf: Box<[u8]>, sent: usize },
    /// Everything was written; the destination is being flushed before reading again.
    Flushing,
    /// The source reached EOF; the destination's write side is being shut down.
    Closing,
    /// Done both ways for this direction.
    Finished,
}

pub(super) struct Pump<'a> {
    flow: Flow,
    moved: u64,
    counter: &'a Counter,
    /// Frame boundaries of the backend→client direction of a WebSocket; `None` otherwise.
    frames: Option<FrameTracker>,
}

impl Pump<'_> {
    pub(super) fn saw_close(&self) -> bool {
        self.frames.as_ref().is_some_and(FrameTracker::saw_close)
    }

    /// Moves bytes from `src` to `dst` up to the end of the frame under way (see
    /// [`goodbye`]). `Ok(true)` at a boundary with everything flushed; `Ok(false)` when the
    /// source ended first.
    pub(super) async fn finish_frame<S, D>(
        &mut self,
        dst: &mut D,
        src: &mut S,
    ) -> std::io::Result<bool>
    where
        S: AsyncRead + Unpin + ?Sized,
        D: AsyncWrite + Unpin + ?Sized,
    {
        let mut buf = Vec::new();
        loop {
            match &mut self.flow {
                Flow::Finished | Flow::Closing => return Ok(false),
                Flow::Pending { buf: pending, sent } => {
                    dst.write_all(&pending[*sent..]).await?;
                    self.flow = Flow::Flushing;
                }
                Flow::Flushing => {
                    dst.flush().await?;
                    self.flow = Flow::Idle;
                }
                Flow::Idle => {
                    let want = self.frames.as_ref().map_or(0, FrameTracker::until_boundary);
                    if want == 0 {
                        return Ok(true);
                    }
                    buf.resize(want.min(SCRATCH as u64) as usize, 0);
                    let n = src.read(&mut buf).await?;
                    if n == 0 {
                        return Ok(false);
                    }
                    let data = &buf[..n];
                    self.moved += n as u64;
                    self.counter.inc_by(n as u64);
                    if let Some(frames) = &mut self.frames {
                        frames.advance(data);
                    }
                    dst.write_all(data).await?;
                    self.flow = Flow::Flushing;
                }
            }
        }
    }

    fn poll_pump<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        mut src: Pin<&mut S>,
        mut dst: Pin<&mut D>,
        activity: &mut bool,
    ) -> Poll<Result<(), Side>>
    where
        S: AsyncRead + ?Sized,
        D: AsyncWrite + ?Sized,
    {
        loop {
            match &mut self.flow {
                Flow::Finished => return Poll::Ready(Ok(())),
                Flow::Closing => {
                    // A peer that already went away cannot be told; the direction is over.
                    let _ = ready!(dst.as_mut().poll_shutdown(cx));
                    self.flow = Flow::Finished;
                }
                Flow::Flushing => {
                    ready!(dst.as_mut().poll_flush(cx)).map_err(Side::Dst)?;
                    self.flow = Flow::Idle;
                }
                Flow::Pending { buf, sent } => {
                    let n =
                        ready!(dst.as_mut().poll_write(cx, &buf[*sent..])).map_err(Side::Dst)?;
                    if n == 0 {
                        return Poll::Ready(Err(Side::Dst(io::ErrorKind::WriteZero.into())));
                    }
                    *activity = true;
                    *sent += n;
                    if *sent == buf.len() {
                        self.flow = Flow::Flushing;
                    }
                }
                Flow::Idle => {
                    let step: Poll<Result<usize, Side>> = SCRATCH_BUF.with(|scratch| {
                        let mut scratch = scratch.borrow_mut();
                        let mut read = ReadBuf::new(&mut scratch[..]);
                        ready!(src.as_mut().poll_read(cx, &mut read)).map_err(Side::Src)?;
                        let data = read.filled();
                        if data.is_empty() {
                            return Poll::Ready(Ok(0));
                        }
                        self.moved += data.len() as u64;
                        self.counter.inc_by(data.len() as u64);
                        if let Some(frames) = &mut self.frames {
                            frames.advance(data);
                        }
                        let sent = match dst.as_mut().poll_write(cx, data) {
                            Poll::Ready(Ok(n)) => n,
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(Side::Dst(e))),
                            Poll::Pending => 0,
                        };
                        self.flow = if sent < data.len() {
                            Flow::Pending {
                                buf: data[sent..].into(),
                                sent: 0,
                            }
                        } else {
                            Flow::Flushing
                        };
                        Poll::Ready(Ok(data.len()))
                    });
                    let n = ready!(step)?;
                    *activity = true;
                    if n == 0 {
                        self.flow = Flow::Closing;
                    }
                }
            }
        }
    }
}

/// Carries bytes both ways between two streams until both have closed, one fails, the idle
/// timeout fires or the proxy closes the tunnel (then with a close frame, see [`goodbye`]).
pub async fn run<C, B>(
    client: &mut C,
    backend: &mut B,
    idle: Option<Duration>,
    counters: &Counters<'_>,
    closer: Closer<'_>,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut up = Pump {
        flow: Flow::Idle,
        moved: 0,
        counter: counters.to_backend,
        frames: None,
    };
    let mut down = Pump {
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
            // As in the plain tunnel: register once, then read only the flag.
            listening = true;
            closer.ticket.listen(cx.waker());
        }
        if let Some(reason) = closer.ticket.reason() {
            return Poll::Ready(EndReason::from(reason));
        }
        let mut activity = false;
        let up_done = match up.poll_pump(
            cx,
            Pin::new(&mut *client),
            Pin::new(&mut *backend),
            &mut activity,
        ) {
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
        let down_done = match down.poll_pump(
            cx,
            Pin::new(&mut *backend),
            Pin::new(&mut *client),
            &mut activity,
        ) {
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
        Some((code, text)) if closer.frames.is_some() => {
            Box::pin(goodbye::stream(client, backend, &mut down, code, text)).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::Ticket;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A slow reader on one side: the bytes still all arrive, in order, through the pending
    /// buffer, and EOF follows them.
    #[tokio::test]
    async fn bytes_cross_in_order_under_back_pressure_and_eof_follows() {
        let (mut client, mut proxy_client) = tokio::io::duplex(1024);
        let (mut proxy_backend, mut backend) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move {
            let (a, b) = (Counter::default(), Counter::default());
            let counters = Counters {
                to_backend: &a,
                to_client: &b,
            };
            let ticket = Ticket::default();
            let closer = Closer {
                ticket: &ticket,
                frames: Some(FrameTracker::default()),
            };
            run(
                &mut proxy_client,
                &mut proxy_backend,
                None,
                &counters,
                closer,
            )
            .await
        });
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let expected = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&payload).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        let mut chunk = [0u8; 100];
        loop {
            let n = backend.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(got == expected, "payload differs");
        backend.write_all(b"bye").await.unwrap();
        backend.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"bye");
        let outcome = task.await.unwrap();
        assert_eq!(outcome.reason, EndReason::Closed);
        assert_eq!(outcome.to_backend, expected.len() as u64);
    }
    /// As on the plain tunnel: a close requested in the middle of a frame lets that frame
    /// finish, then the client gets the close frame and EOF, and nothing past the frame.
    #[tokio::test]
    async fn a_close_request_mid_frame_finishes_the_frame_then_sends_a_close_frame() {
        let (mut client, mut proxy_client) = tokio::io::duplex(64 * 1024);
        let (mut proxy_backend, mut backend) = tokio::io::duplex(64 * 1024);
        let ticket = std::sync::Arc::new(Ticket::default());
        let held = ticket.clone();
        let task = tokio::spawn(async move {
            let (a, b) = (Counter::default(), Counter::default());
            let counters = Counters {
                to_backend: &a,
                to_client: &b,
            };
            let closer = Closer {
                ticket: &held,
                frames: Some(FrameTracker::default()),
            };
            run(
                &mut proxy_client,
                &mut proxy_backend,
                None,
                &counters,
                closer,
            )
            .await
        });
        let mut frame = vec![0x82, 126, 0x27, 0x10];
        frame.extend(std::iter::repeat_n(5u8, 10_000));
        backend.write_all(&frame[..3000]).await.unwrap();
        let mut got = vec![0u8; 3000];
        client.read_exact(&mut got).await.unwrap();
        assert!(ticket.request(crate::tunnel::CloseReason::Rebalance));
        backend.write_all(&frame[3000..]).await.unwrap();
        backend.write_all(&[0x81, 0x01, b'x']).await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        let (tail, close) = rest.split_at(frame.len() - 3000);
        assert!(
            tail == &frame[3000..],
            "the frame under way was not finished"
        );
        assert_eq!(
            close,
            &super::super::frames::close_frame(1012, "rebalancing")[..]
        );
        let outcome = task.await.unwrap();
        assert_eq!(outcome.reason, EndReason::Rebalance);
        assert_eq!(outcome.goodbye, Goodbye::Sent(1012));
    }
}
