//! Publishing through Redis in order, many messages per round trip.
//!
//! Publishes are queued in the order [`Publisher::publish`] is called and sent by one task,
//! in batches of whatever has queued meanwhile, each batch one pipeline: a node publishing
//! fast pays one round trip per batch rather than per message, and publishes made in
//! sequence are numbered in that sequence however many are in flight.

use std::sync::Arc;

use ::redis::aio::ConnectionManager;
use ::redis::Script;
use futures_util::future::{self, BoxFuture, FutureExt};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use super::{bounded, parse_offset, Connector, Keys, PUBLISH_SCRIPT};
use crate::broker::{BrokerError, HistoryPolicies};
use crate::protocol::{ChannelName, Offset};

/// Publishes sent in one pipeline at most: enough to drain a burst in a few round trips,
/// few enough that one batch stays a small Redis reply.
const MAX_BATCH: usize = 128;

struct Request {
    channel: ChannelName,
    data: Box<RawValue>,
    reply: oneshot::Sender<Result<Offset, BrokerError>>,
}

/// The queue in front of the publishing task.
pub(super) struct Publisher {
    queue: mpsc::UnboundedSender<Request>,
}

impl Publisher {
    /// Starts the publishing task on the broker lane (see `lane`).
    pub(super) fn spawn(connector: Connector, keys: Keys, policies: Arc<HistoryPolicies>) -> Self {
        let (queue, requests) = mpsc::unbounded_channel();
        let task = Task {
            connector,
            keys,
            policies,
            script: Script::new(PUBLISH_SCRIPT),
        };
        crate::lane::spawn(task.run(requests));
        Self { queue }
    }

    /// Queues a publish now, before the returned future is polled: that is what keeps
    /// publishes made in sequence in that sequence.
    pub(super) fn publish(
        &self,
        channel: &ChannelName,
        data: Box<RawValue>,
    ) -> BoxFuture<'static, Result<Offset, BrokerError>> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            channel: channel.clone(),
            data,
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

struct Task {
    connector: Connector,
    keys: Keys,
    policies: Arc<HistoryPolicies>,
    script: Script,
}

impl Task {
    async fn run(self, mut requests: mpsc::UnboundedReceiver<Request>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while requests.recv_many(&mut batch, MAX_BATCH).await > 0 {
            match bounded(self.send(&batch)).await {
                Ok(offsets) => {
                    for (request, offset) in batch.drain(..).zip(offsets) {
                        let _ = request.reply.send(Ok(offset));
                    }
                }
                Err(error) => {
                    for request in batch.drain(..) {
                        let _ = request.reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }

    /// Runs the publish script once per request in one pipeline.
    ///
    /// The pipeline starts with `SCRIPT LOAD`, so the script is known to Redis before the
    /// first `EVALSHA` of the batch (a connection's commands run in order), even on a fresh
    /// or restarted server. Loading it only after a `NOSCRIPT` error and sending the batch
    /// again is not safe: another node's `SCRIPT LOAD` can land in the middle of this batch,
    /// so its later publishes ran the first time and would run twice, under two offsets
    /// (the conformance suite's racing publishers on a fresh Redis caught that). Loading a
    /// cached script costs Redis one SHA1 of the script per batch, not per publish.
    async fn send(&self, batch: &[Request]) -> Result<Vec<Offset>, BrokerError> {
        let mut conn = self.connector.get().await?;
        let offsets = self.pipeline(&mut conn, batch).await?;
        if offsets.len() != batch.len() {
            return Err(BrokerError::BadReply(format!(
                "{} offsets for {} publishes",
                offsets.len(),
                batch.len()
            )));
        }
        offsets.iter().map(|o| parse_offset(o)).collect()
    }

    async fn pipeline(
        &self,
        conn: &mut ConnectionManager,
        batch: &[Request],
    ) -> Result<Vec<String>, ::redis::RedisError> {
        let mut pipe = ::redis::pipe();
        pipe.cmd("SCRIPT").arg("LOAD").arg(PUBLISH_SCRIPT).ignore();
        for request in batch {
            let policy = self.policies.for_channel(&request.channel);
            let mut invocation = self.script.prepare_invoke();
            invocation
                .key(self.keys.seq(&request.channel))
                .key(self.keys.hist(&request.channel))
                .key(self.keys.base(&request.channel))
                .arg(request.data.get())
                .arg(policy.size)
                .arg(policy.ttl.as_millis() as u64)
                .arg(self.keys.live(&request.channel));
            pipe.invoke_script(&invocation);
        }
        pipe.query_async(conn).await
    }
}
