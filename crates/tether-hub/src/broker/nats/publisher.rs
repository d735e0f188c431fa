//! Publishing into JetStream so that every message knows the one before it on its channel.
//!
//! Each publish says which sequence it expects to be the channel's last
//! (`Nats-Expected-Last-Subject-Sequence`) and carries the same number in [`PREV_HEADER`].
//! The server stores it only if that is still true, so the header is the truth every node
//! reads back (contract item 2); when another node published in between, the server refuses,
//! and the publish is retried on top of the new last message.
//!
//! That makes one channel's publishes from one node a chain: the next can only be sent
//! once the previous was acknowledged (its sequence is the next one's expectation). Different
//! channels go in parallel. Publishes are queued in the order [`Publisher::publish`] is
//! called, so a node's publishes to one channel are numbered in that order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::future::{self, BoxFuture, FutureExt};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use super::connection::{bounded, refused, unavailable, Connection, REQUEST_TIMEOUT};
use super::history::last_sequence;
use crate::broker::BrokerError;
use crate::protocol::{ChannelName, Offset};

/// The header holding the stream sequence of the channel's previous message (0: none).
pub(super) const PREV_HEADER: &str = "Tether-Prev";

/// Times a publish is retried because other nodes kept publishing to its channel first.
/// Each refusal means another publish got through, so this is only reached by a channel
/// that dozens of nodes publish to at once.
const MAX_CONFLICTS: usize = 32;

/// Channels whose last sequence is remembered; beyond it the memory is cleared (the next
/// publish to each asks the server once).
const KNOWN_CHANNELS: usize = 65_536;

struct Request {
    channel: ChannelName,
    data: Bytes,
    reply: oneshot::Sender<Result<Offset, BrokerError>>,
}

/// The queue in front of the publishing task.
pub(super) struct Publisher {
    queue: mpsc::UnboundedSender<Request>,
}

impl Publisher {
    /// Starts the publishing task on the broker lane (see `lane`).
    pub fn spawn(connection: Arc<Connection>) -> Self {
        let (queue, requests) = mpsc::unbounded_channel();
        crate::lane::spawn(run(connection, requests));
        Self { queue }
    }

    /// Queues a publish now, before the returned future is polled: that is what keeps
    /// publishes made in sequence in that sequence.
    pub fn publish(
        &self,
        channel: &ChannelName,
        data: Box<RawValue>,
    ) -> BoxFuture<'static, Result<Offset, BrokerError>> {
        let (reply, answer) = oneshot::channel();
        let data: Box<str> = data.into();
        let request = Request {
            channel: channel.clone(),
            data: Bytes::from(String::from(data)),
            reply,
        };
        if self.queue.send(request).is_err() {
            return future::ready(Err(BrokerError::Disconnected)).boxed();
        }
        answer
            .map(|answer| answer.unwrap_or(Err(BrokerError::Disconnected)))
            .boxed()
    }
}

/// One publish in flight per channel; the rest of that channel's wait behind it.
async fn run(connection: Arc<Connection>, mut requests: mpsc::UnboundedReceiver<Request>) {
    let mut waiting: HashMap<ChannelName, VecDeque<Request>> = HashMap::new();
    let mut known: HashMap<ChannelName, u64> = HashMap::new();
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            request = requests.recv() => {
                let Some(request) = request else { break };
                match waiting.get_mut(&request.channel) {
                    Some(queue) => queue.push_back(request),
                    None => {
                        waiting.insert(request.channel.clone(), VecDeque::new());
                        let last = known.get(&request.channel).copied();
                        in_flight.push(send(connection.clone(), request, last));
                    }
                }
            }
            Some((channel, last)) = in_flight.next(), if !in_flight.is_empty() => {
                match last {
                    Some(last) => {
                        if known.len() >= KNOWN_CHANNELS && !known.contains_key(&channel) {
                            known.clear();
                        }
                        known.insert(channel.clone(), last);
                    }
                    None => {
                        known.remove(&channel);
                    }
                }
                let next = waiting.get_mut(&channel).and_then(VecDeque::pop_front);
                match next {
                    Some(request) => in_flight.push(send(connection.clone(), request, last)),
                    None => {
                        waiting.remove(&channel);
                    }
                }
            }
        }
    }
    // The broker is gone: finish what was asked already.
    while in_flight.next().await.is_some() {}
}

/// Publishes one request, answers it, and returns its channel with the channel's last
/// sequence as now known (`None` when unknown after a failure).
async fn send(
    connection: Arc<Connection>,
    request: Request,
    last: Option<u64>,
) -> (ChannelName, Option<u64>) {
    let result = publish(&connection, &request.channel, &request.data, last).await;
    let (answer, last) = match result {
        Ok((offset, sequence)) => (Ok(offset), Some(sequence)),
        Err(error) => (Err(error), None),
    };
    let _ = request.reply.send(answer);
    (request.channel, last)
}

/// Stores `data` as the channel's next message; its offset and stream sequence.
async fn publish(
    connection: &Arc<Connection>,
    channel: &ChannelName,
    data: &Bytes,
    last: Option<u64>,
) -> Result<(Offset, u64), BrokerError> {
    connection.check_up()?;
    let disconnects = connection.disconnects();
    let mut epoch = connection.epoch().await?;
    let subject = connection.subjects.history(channel);
    let mut last = match last {
        Some(last) => last,
        None => last_sequence(connection, &subject).await?,
    };
    let mut recreated = false;
    for conflict in 0..MAX_CONFLICTS {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Expected-Last-Subject-Sequence", last.to_string());
        headers.insert(PREV_HEADER, last.to_string());
        let (_, js) = connection.client().await?;
        let acked = bounded(async {
            let ack = match js
                .publish_with_headers(subject.clone(), headers, data.clone())
                .await
            {
                Ok(ack) => ack.await,
                Err(error) => Err(error),
            };
            Ok(ack.map_err(|e| (e.kind(), e.to_string())))
        })
        .await?;
        match acked {
            Ok(ack) => {
                if connection.disconnects() != disconnects {
                    // The connection went and came back during this publish: which stream
                    // (which epoch) acknowledged it cannot be told, so it is answered as a
                    // publish whose answer was lost.
                    return Err(unavailable("the connection was lost during the publish"));
                }
                return Ok((Offset(epoch.base + ack.sequence), ack.sequence));
            }
            Err((PublishErrorKind::WrongLastSequence, _)) => {
                last = last_sequence(connection, &subject).await?;
                if conflict >= 2 {
                    // Many nodes racing on one channel: let one of them through.
                    let pause = Duration::from_micros(200 * conflict as u64);
                    tokio::time::sleep(pause.mul_f64(rand::random_range(0.5..1.5))).await;
                }
            }
            Err((PublishErrorKind::StreamNotFound, reason)) => {
                if recreated {
                    return Err(refused(reason));
                }
                // Deleted behind the hub's back: recreate it (a new epoch) and go on.
                recreated = true;
                epoch = connection.refresh_epoch().await?;
                last = last_sequence(connection, &subject).await?;
            }
            Err((PublishErrorKind::MaxPayloadExceeded, reason)) => {
                return Err(refused(format!(
                    "{reason}: the message is larger than the NATS server's max_payload"
                )))
            }
            Err((PublishErrorKind::TimedOut, _)) => {
                return Err(BrokerError::Timeout(REQUEST_TIMEOUT))
            }
            Err((PublishErrorKind::BrokenPipe, reason)) => return Err(unavailable(reason)),
            Err((_, reason)) => return Err(refused(reason)),
        }
    }
    Err(refused(format!(
        "channel {channel}: {MAX_CONFLICTS} publishes in a row lost the race to other nodes"
    )))
}
