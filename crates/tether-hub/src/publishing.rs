//! A session's publishes in flight to the broker.
//!
//! A client that publishes fast must not be held to one broker round trip per message: the
//! session starts each publish as its frame arrives and answers them as they complete, in
//! the order they came. Up to [`IN_FLIGHT`] may be outstanding; beyond that the session
//! stops reading the client, which is the back-pressure a client sees.

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, StreamExt};
use futures_util::FutureExt;
use serde_json::value::RawValue;

use crate::broker::{Broker, BrokerError};
use crate::protocol::{ChannelName, Offset};

/// Publishes one session may have outstanding.
pub(crate) const IN_FLIGHT: usize = 64;

/// How one publish ended, with what its answer needs.
pub(crate) struct Outcome {
    pub channel: ChannelName,
    pub id: Option<Box<RawValue>>,
    pub result: Result<Offset, BrokerError>,
}

/// The outstanding publishes of one session, answered in the order they were started.
/// Each is handed to the broker when started ([`Broker::publish`] takes the message at the
/// call), so the broker numbers one client's publishes in the order the client sent them.
#[derive(Default)]
pub(crate) struct Publishes {
    pending: FuturesOrdered<BoxFuture<'static, Outcome>>,
}

impl Publishes {
    pub(crate) fn start(
        &mut self,
        broker: &dyn Broker,
        channel: ChannelName,
        data: Box<RawValue>,
        id: Option<Box<RawValue>>,
    ) {
        let published = broker.publish(&channel, data);
        let publish = async move {
            let result = published.await;
            Outcome {
                channel,
                id,
                result,
            }
        };
        self.pending.push_back(publish.boxed());
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// No more may start until one completes.
    pub(crate) fn is_full(&self) -> bool {
        self.pending.len() >= IN_FLIGHT
    }

    /// The earliest-started publish, once complete; pending forever when none is in flight.
    pub(crate) async fn next(&mut self) -> Outcome {
        match self.pending.next().await {
            Some(outcome) => outcome,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{broker_with, BrokerOptions};

    fn data(n: u32) -> Box<RawValue> {
        RawValue::from_string(n.to_string()).unwrap()
    }

    #[tokio::test]
    async fn outcomes_come_in_the_order_publishes_started() {
        let broker = broker_with("memory", BrokerOptions::default()).unwrap();
        let channel = ChannelName::parse("ordered").unwrap();
        let mut publishes = Publishes::default();
        for n in 1..=3 {
            publishes.start(&*broker, channel.clone(), data(n), Some(data(n)));
        }
        let mut offsets = Vec::new();
        for n in 1..=3 {
            let outcome = publishes.next().await;
            assert_eq!(outcome.id.unwrap().get(), n.to_string());
            offsets.push(outcome.result.unwrap());
        }
        // The broker numbered them in the order they were started.
        assert_eq!(offsets[1], offsets[0].next());
        assert_eq!(offsets[2], offsets[1].next());
        assert!(publishes.is_empty());
    }

    #[tokio::test]
    async fn it_is_full_at_the_in_flight_limit() {
        let broker = broker_with("memory", BrokerOptions::default()).unwrap();
        let channel = ChannelName::parse("full").unwrap();
        let mut publishes = Publishes::default();
        for n in 0..IN_FLIGHT as u32 {
            assert!(!publishes.is_full());
            publishes.start(&*broker, channel.clone(), data(n), None);
        }
        assert!(publishes.is_full());
        publishes.next().await;
        assert!(!publishes.is_full());
    }
}
