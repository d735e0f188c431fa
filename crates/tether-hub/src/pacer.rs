//! Pacing of one client's message writes (`--write-delay`).

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Spaces a session's message writes at least the node's write delay apart: after a write
/// the session rests, leaving its inbox alone, until the delay is up. Messages that arrive
/// meanwhile wait in the inbox and go out together in the next write; a message after a
/// quiet spell goes out at once. A busy client thus costs one wake and one syscall per
/// interval rather than one per message, and no message waits longer than the delay.
///
/// Each session rests on its own timer, so the writes of a node's clients stay spread over
/// the interval instead of all coming at one tick.
#[derive(Debug)]
pub(crate) struct Pacer {
    delay: Duration,
    resting: bool,
    /// Made once and reset after each write: a new timer per write would be registered in
    /// and removed from the runtime's timer wheel every time.
    rest: Pin<Box<Sleep>>,
}

impl Pacer {
    pub(crate) fn new(delay: Duration) -> Self {
        Self {
            delay,
            resting: false,
            rest: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    /// Whether the session may take from its inbox now.
    pub(crate) fn may_take(&self) -> bool {
        !self.resting
    }

    /// Completes when the current rest is over; the inbox may then be read again.
    pub(crate) async fn rested(&mut self) {
        self.rest.as_mut().await;
        self.resting = false;
    }

    /// A write went out. `backlogged` when the inbox still holds messages: those have
    /// waited already, so there is no rest before the next write.
    pub(crate) fn wrote(&mut self, backlogged: bool) {
        if self.delay.is_zero() || backlogged {
            return;
        }
        self.resting = true;
        self.rest.as_mut().reset(Instant::now() + self.delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_millis(10);
    const TICK: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn a_write_starts_a_rest_of_the_delay() {
        let mut pacer = Pacer::new(DELAY);
        assert!(pacer.may_take(), "the first message must go out at once");
        pacer.wrote(false);
        assert!(!pacer.may_take());
        let started = Instant::now();
        pacer.rested().await;
        assert_eq!(started.elapsed(), DELAY);
        assert!(pacer.may_take());
    }

    #[tokio::test(start_paused = true)]
    async fn each_write_restarts_the_rest() {
        let mut pacer = Pacer::new(DELAY);
        pacer.wrote(false);
        pacer.rested().await;
        tokio::time::advance(3 * DELAY).await;
        pacer.wrote(false);
        let started = Instant::now();
        assert!(tokio::time::timeout(DELAY - TICK, pacer.rested())
            .await
            .is_err());
        pacer.rested().await;
        assert_eq!(started.elapsed(), DELAY);
    }

    #[tokio::test(start_paused = true)]
    async fn a_backlog_is_written_without_resting() {
        let mut pacer = Pacer::new(DELAY);
        pacer.wrote(true);
        assert!(pacer.may_take());
    }

    #[tokio::test(start_paused = true)]
    async fn zero_delay_never_rests() {
        let mut pacer = Pacer::new(Duration::ZERO);
        pacer.wrote(false);
        assert!(pacer.may_take());
    }
}
