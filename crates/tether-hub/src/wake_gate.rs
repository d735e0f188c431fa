//! Polls a source only after it signalled something.
//!
//! A session is one task that waits on several sources at once: the client's socket, its
//! inbox, the ping timer, the node's lifecycle. Under fan-out it is woken once per batch of
//! messages to write, and every wake polled every source again. Most of them had nothing to
//! say, and asking was not free: for the socket, the WebSocket layer swaps in the task's
//! waker, clears its read chunk and goes down through the upgraded connection to learn that
//! a subscriber, as usual, sent nothing; the lifecycle watch takes a lock to re-check its
//! waker; the timer re-registers. Over a thousand subscribers that is a measurable part of
//! each pass of writes.
//!
//! So each such source gets a waker of its own. The gate polls the source only when that
//! waker fired since the source last answered `Pending` (or when it last returned a value,
//! as a stream may have more ready); otherwise it answers `Pending` at once, and the source
//! keeps its registration with the gate's waker, which wakes the task when it fires.
//!
//! A source must only ever be polled through its gate: a poll with another waker would
//! replace the gate's, and the gate would not hear of it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

pub struct WakeGate {
    signal: Arc<Signal>,
    /// `signal` as a waker, made once.
    waker: Waker,
}

/// Set when the source fires; passes the wake on to the task.
struct Signal {
    /// The source may have something to give: poll it.
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

impl Default for WakeGate {
    fn default() -> Self {
        let signal = Arc::new(Signal {
            // Nothing was polled yet: the first poll must reach the source.
            ready: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(signal.clone());
        Self { signal, waker }
    }
}

impl WakeGate {
    /// Polls the source through `poll` if it fired since it last said `Pending`.
    pub fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.signal.task.register(cx.waker());
        // Cleared before the poll, so a wake that lands during it is kept.
        if !self.signal.ready.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let polled = poll(&mut Context::from_waker(&self.waker));
        if polled.is_ready() {
            // A stream may have more ready, and a future is usually replaced by a new one:
            // either way the next call must look.
            self.signal.ready.store(true, Ordering::Release);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::pin::pin;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Counts how often the source itself is polled.
    fn counted<'a, F: std::future::Future + Unpin>(
        polls: &'a AtomicUsize,
        future: &'a mut F,
    ) -> impl FnOnce(&mut Context<'_>) -> Poll<F::Output> + 'a {
        move |cx| {
            polls.fetch_add(1, Ordering::Relaxed);
            std::pin::Pin::new(future).poll(cx)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_is_polled_once_until_it_fires_then_delivers() {
        let gate = WakeGate::default();
        let polls = AtomicUsize::new(0);
        let mut timer = pin!(tokio::time::sleep(Duration::from_secs(1)));
        // Other wakes of the task (here: ten polls in a row) do not reach the timer.
        for _ in 0..10 {
            let polled = poll_fn(|cx| Poll::Ready(gate.poll(cx, counted(&polls, &mut timer))));
            assert!(polled.await.is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        // When the timer fires, the gate's waker lets the next poll through.
        poll_fn(|cx| gate.poll(cx, counted(&polls, &mut timer))).await;
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }
}
