//! Pacing of one client's message writes (`--write-delay`).

use std::time::Duration;

use tokio::time::Instant;

/// Spaces a session's message writes at least the node's write delay apart. A message that
/// finds the last write older than that goes out at once, so a quiet channel adds no
/// latency; one that comes sooner is held until the interval is up, and everything queued
/// by then goes out in the same write. A busy client thus costs one syscall per interval
/// rather than one per message, and no message waits longer than the delay.
pub(crate) struct WriteBatch<T> {
    delay: Duration,
    /// The message being held and when it is due.
    held: Option<(T, Instant)>,
    last_write: Option<Instant>,
    /// The last write left messages queued; they are written without waiting again.
    backlogged: bool,
}

impl<T> WriteBatch<T> {
    pub(crate) fn new(delay: Duration) -> Self {
        Self {
            delay,
            held: None,
            last_write: None,
            backlogged: false,
        }
    }

    /// A message is held: the session should not take more from its queue until it is due.
    pub(crate) fn is_gathering(&self) -> bool {
        self.held.is_some()
    }

    /// Takes a newly dequeued message: returns it when it should be written now, or holds it.
    pub(crate) fn hold(&mut self, message: T) -> Option<T> {
        let due = match self.last_write {
            Some(at) if !self.delay.is_zero() && !self.backlogged => at + self.delay,
            _ => return Some(message),
        };
        if due <= Instant::now() {
            return Some(message);
        }
        self.held = Some((message, due));
        None
    }

    /// When the held message is due to be written.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.held.as_ref().map(|(_, at)| *at)
    }

    pub(crate) fn release(&mut self) -> Option<T> {
        self.held.take().map(|(message, _)| message)
    }

    /// A batch was written; `backlogged` when the queue still holds more.
    pub(crate) fn wrote(&mut self, backlogged: bool) {
        self.last_write = Some(Instant::now());
        self.backlogged = backlogged;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_millis(10);

    #[tokio::test(start_paused = true)]
    async fn first_message_and_one_after_a_quiet_spell_go_out_at_once() {
        let mut batch = WriteBatch::new(DELAY);
        assert_eq!(batch.hold(1), Some(1));
        batch.wrote(false);
        tokio::time::advance(DELAY).await;
        assert_eq!(batch.hold(2), Some(2));
        assert!(!batch.is_gathering());
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_soon_after_a_write_waits_for_the_interval() {
        let mut batch = WriteBatch::new(DELAY);
        assert_eq!(batch.hold(1), Some(1));
        batch.wrote(false);
        let written = Instant::now();
        tokio::time::advance(Duration::from_millis(3)).await;
        assert_eq!(batch.hold(2), None);
        assert!(batch.is_gathering());
        assert_eq!(batch.due(), Some(written + DELAY));
        assert_eq!(batch.release(), Some(2));
        assert!(!batch.is_gathering());
    }

    #[tokio::test(start_paused = true)]
    async fn a_backlog_is_written_without_waiting_again() {
        let mut batch = WriteBatch::new(DELAY);
        batch.wrote(true);
        assert_eq!(batch.hold(1), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_delay_never_holds() {
        let mut batch = WriteBatch::new(Duration::ZERO);
        batch.wrote(false);
        assert_eq!(batch.hold(1), Some(1));
        assert_eq!(batch.due(), None);
    }
}
