//! Reads the client only when its socket may have something to say.
//!
//! A session is one task that both reads its client and writes to it, and under fan-out it
//! is woken once per batch of messages to write. Polling the WebSocket's read side on every
//! such wake is not free: the WebSocket layer swaps in the task's waker, clears its read
//! chunk and goes down through the upgraded connection to the socket, only to learn that a
//! subscriber, as usual, sent nothing. Over a thousand subscribers that is a measurable part
//! of each pass of writes.
//!
//! So the read side gets a waker of its own. The gate polls the WebSocket only when that
//! waker fired since the last `Pending` (or the last poll returned a frame, as more may be
//! buffered); otherwise it answers `Pending` at once, leaving the socket's registration with
//! the read waker, which wakes the task when bytes arrive.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use axum::extract::ws::{Message, WebSocket};
use futures_util::task::AtomicWaker;
use futures_util::StreamExt;

pub struct ReadGate {
    signal: Arc<Signal>,
    /// `signal` as a waker, made once.
    waker: Waker,
}

/// Set by the socket's read readiness; passes the wake on to the session's task.
struct Signal {
    /// The WebSocket may have a frame (or an end) to give: poll it.
    ready: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl ReadGate {
    pub fn new() -> Self {
        let signal = Arc::new(Signal {
            // Nothing was polled yet: the first poll must reach the socket.
            ready: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(signal.clone());
        Self { signal, waker }
    }

    /// The next frame from the client, as `WebSocket::recv` gives it.
    pub async fn recv(&self, ws: &mut WebSocket) -> Option<Result<Message, axum::Error>> {
        poll_fn(|cx| self.poll_recv(ws, cx)).await
    }

    fn poll_recv(
        &self,
        ws: &mut WebSocket,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Message, axum::Error>>> {
        self.signal.task.register(cx.waker());
        // Cleared before the poll, so a wake that lands during it is kept.
        if !self.signal.ready.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let polled = ws.poll_next_unpin(&mut Context::from_waker(&self.waker));
        if polled.is_ready() {
            // More frames may already be buffered: the next call must look.
            self.signal.ready.store(true, Ordering::Release);
        }
        polled
    }
}
