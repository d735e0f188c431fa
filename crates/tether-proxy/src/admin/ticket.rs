//! Short-lived tickets that let a browser open the event stream when reads need the token.
//!
//! `EventSource` cannot send an `Authorization` header, and a cookie would be sent by the
//! browser on requests the page did not make. So the page buys a ticket with its token
//! (`POST api/events/ticket`) and opens `api/events?ticket=…`. A ticket is random (256 bits),
//! opens one stream, and expires after [`Tickets::TTL`] unused: it may show in an access log,
//! but by then it is worth nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The tickets issued and not yet used.
#[derive(Debug, Default)]
pub struct Tickets {
    open: Mutex<HashMap<String, Instant>>,
}

/// Too many unused tickets: someone with the token is asking for them in a loop.
#[derive(Debug, thiserror::Error)]
#[error(
    "{} event-stream tickets are outstanding; use or let them expire first",
    Tickets::MAX
)]
pub struct TooMany;

impl Tickets {
    /// How long a ticket waits to be used.
    pub const TTL: Duration = Duration::from_secs(30);
    /// Unused tickets kept at most, so the table stays small whatever a client does.
    pub const MAX: usize = 256;

    /// A new single-use ticket.
    pub fn issue(&self) -> Result<String, TooMany> {
        let now = Instant::now();
        let mut open = self.lock();
        open.retain(|_, expires| *expires > now);
        if open.len() >= Self::MAX {
            return Err(TooMany);
        }
        let bytes: [u8; 32] = rand::random();
        let ticket: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        open.insert(ticket.clone(), now + Self::TTL);
        Ok(ticket)
    }

    /// Whether `ticket` was issued, is unexpired and unused; it is used up either way.
    pub fn redeem(&self, ticket: &str) -> bool {
        self.lock()
            .remove(ticket)
            .is_some_and(|expires| expires > Instant::now())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // The map is consistent after every statement: a panic elsewhere cannot poison it
        // into a state worth refusing service for.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_opens_one_stream_only() {
        let tickets = Tickets::default();
        let t = tickets.issue().unwrap();
        assert_eq!(t.len(), 64);
        assert!(tickets.redeem(&t));
        assert!(!tickets.redeem(&t), "a ticket is single-use");
        assert!(!tickets.redeem("made-up"));
    }

    #[test]
    fn outstanding_tickets_are_bounded() {
        let tickets = Tickets::default();
        for _ in 0..Tickets::MAX {
            tickets.issue().unwrap();
        }
        assert!(tickets.issue().is_err());
    }
}
