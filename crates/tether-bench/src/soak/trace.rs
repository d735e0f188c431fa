//! What each subscriber went through: its connections, the node that served each, what it
//! asked for and what it was told. The ledger says *that* a delivery is missing; the trace
//! says on which connection, after which resume, from which node, so the gap can be looked
//! up in that node's log at that moment. A soak failure found without it (a `lost=2` in one
//! 60 s run of four) took a rerun with extra logging just to learn where to look.
//!
//! Bounded per subscriber (the most recent [`KEPT`] steps), so a 30-minute run with tens of
//! reconnects per subscriber stays a few MB.

use std::collections::VecDeque;
use std::fmt;
use std::time::SystemTime;

use super::ledger::Asked;

/// Steps kept per subscriber.
const KEPT: usize = 256;

/// One step of a subscriber's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The hub's `welcome`: which node serves this connection.
    Welcome { node: String },
    /// A `subscribe` sent: its `since`, and the channel's highest acknowledged offset then.
    Subscribe { asked: Asked },
    /// The hub's `subscribed` answer.
    Subscribed { top: u64, recovered: bool },
    /// The connection ended: the close code the server sent (if it sent one), and the
    /// message frames this connection brought (first and last offset).
    Ended {
        code: Option<u16>,
        messages: u64,
        first: Option<u64>,
        last: Option<u64>,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |o: &Option<u64>| o.map_or_else(|| "-".to_owned(), |o| o.to_string());
        match self {
            Step::Welcome { node } => write!(f, "welcome node={node}"),
            Step::Subscribe { asked } => write!(
                f,
                "subscribe since={} (acknowledged up to {})",
                opt(&asked.since),
                opt(&asked.acknowledged)
            ),
            Step::Subscribed { top, recovered } => {
                write!(f, "subscribed offset={top} recovered={recovered}")
            }
            Step::Ended {
                code,
                messages,
                first,
                last,
            } => write!(
                f,
                "ended code={} messages={messages} first={} last={}",
                code.map_or_else(|| "none".to_owned(), |c| c.to_string()),
                opt(first),
                opt(last)
            ),
        }
    }
}

/// A subscriber's most recent steps, each with the wall-clock time it happened (to match
/// the hubs' log lines, which carry UTC times).
#[derive(Debug, Default)]
pub struct Trace {
    steps: VecDeque<(SystemTime, Step)>,
    /// Steps dropped from the front to stay within [`KEPT`].
    dropped: u64,
}

impl Trace {
    pub fn push(&mut self, step: Step) {
        if self.steps.len() == KEPT {
            self.steps.pop_front();
            self.dropped += 1;
        }
        self.steps.push_back((SystemTime::now(), step));
    }

    /// One line per step, each indented by `indent`.
    pub fn render(&self, indent: &str) -> String {
        let mut out = String::new();
        if self.dropped > 0 {
            out.push_str(&format!(
                "{indent}({} earlier steps not kept)\n",
                self.dropped
            ));
        }
        for (at, step) in &self.steps {
            out.push_str(&format!(
                "{indent}{} {step}\n",
                humantime::format_rfc3339_millis(*at)
            ));
        }
        out
    }

    #[cfg(test)]
    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().map(|(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_most_recent_steps_and_says_how_many_it_dropped() {
        let mut trace = Trace::default();
        for since in 0..(KEPT as u64 + 3) {
            trace.push(Step::Subscribe {
                asked: Asked {
                    since: Some(since),
                    acknowledged: None,
                },
            });
        }
        assert_eq!(trace.steps().count(), KEPT);
        assert!(matches!(
            trace.steps().next(),
            Some(Step::Subscribe { asked }) if asked.since == Some(3)
        ));
        let text = trace.render("  ");
        assert!(text.starts_with("  (3 earlier steps not kept)\n"), "{text}");
        assert!(
            text.contains(" subscribe since=3 (acknowledged up to -)\n"),
            "{text}"
        );
    }
}
