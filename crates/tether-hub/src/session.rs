//! One WebSocket connection: parses the client's frames, joins channels, writes messages.
//!
//! The session is the only writer of its socket, which makes its per-channel "last offset
//! sent" the single place where the seam between replayed history and the live stream is
//! made exact: anything at or below it is a duplicate and dropped.

use std::future::{poll_fn, Future};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use foldhash::{HashMap, HashMapExt};
use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::access::Access;
use crate::auth::AuthError;
use crate::channel::{SessionId, Subscriber};
use crate::mailbox::{self, Batch, Inbound, Mailbox, Postbox};
use crate::metrics::{CloseReason, Resume, Source};
use crate::node::{Lifecycle, Node};
use crate::pacer::Pacer;
use crate::protocol::{
    check_depth, ChannelName, ClientFrame, ErrorCode, Offset, ProtocolError, ServerFrame,
};
use crate::publishing::{Outcome, Publishes};
use crate::replay::{Replay, ReplayError};
use crate::wake_gate::WakeGate;

mod opening;

/// Close codes the hub sends.
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_RESTART: u16 = 1012;
const CLOSE_TRY_AGAIN: u16 = 1013;

/// How long writing a single small frame (an answer, a ping) may block.
const SMALL_WRITE_LIMIT: Duration = Duration::from_secs(10);

/// How long closing politely may take: sending the close frame, then waiting for the
/// client's. A client that reads nothing (a flooder) must not hold the session open.
const CLOSE_LIMIT: Duration = Duration::from_secs(1);

/// Messages one write takes from the inbox before flushing (a whole batch is always taken).
const WRITE_BATCH: usize = 64;

/// What the HTTP upgrade learned about a connection.
pub struct Handshake {
    /// The `token` query parameter.
    pub token: Option<String>,
    /// The client's address (forwarded by a trusted proxy, or the peer's).
    pub client: IpAddr,
}

/// Runs a connection until it ends.
pub async fn run(ws: WebSocket, node: Arc<Node>, handshake: Handshake) {
    let id = SessionId::next();
    let span = tracing::info_span!(
        "session",
        id = %id,
        node = %node.name(),
        client = %handshake.client,
        user = tracing::field::Empty,
    );
    let (postbox, inbox) = mailbox::mailbox(node.config.client_queue);
    let session = Session {
        id,
        bucket: TokenBucket::new(node.config.client_rate, node.config.client_burst),
        node,
        subscriptions: HashMap::new(),
        postbox,
        publishes: Publishes::default(),
        access: Access::default(),
        client: handshake.client,
    };
    session
        .serve(ws, inbox, handshake.token)
        .instrument(span)
        .await;
}

struct Session {
    id: SessionId,
    node: Arc<Node>,
    /// Subscribed channels and the last offset sent on each. Looked up once per batch
    /// written, so hashed with foldhash, not SipHash: it holds at most `max_subscriptions`
    /// names, all of the client's own choosing, so colliding names would slow only itself.
    subscriptions: HashMap<ChannelName, Offset>,
    /// Handed to the channels this session joins.
    postbox: Postbox,
    /// The client's publishes not yet answered.
    publishes: Publishes,
    bucket: TokenBucket,
    /// Who the client is, and until when.
    access: Access,
    client: IpAddr,
}

/// What the main loop should do after handling an event.
enum Flow {
    Continue,
    /// Send a close frame with this code and reason, then end.
    Close(u16, &'static str, CloseReason),
    /// End without a close frame (the peer is gone or must look like it crashed).
    Drop(CloseReason),
}

/// A socket write failed: the connection is gone.
struct Gone;

impl Session {
    async fn serve(mut self, mut ws: WebSocket, mut inbox: Mailbox, token: Option<String>) {
        let _guard = self.node.session_guard();
        let mut lifecycle = self.node.lifecycle.subscribe();
        let mut drain_at: Option<Instant> = drain_moment(*lifecycle.borrow_and_update());
        // A lifecycle change is rare, and waited on by a future made once, not once per loop
        // turn: the loop turns for every write batch.
        let mut lifecycle_changed = std::pin::pin!(next_lifecycle(lifecycle));
        let (mut flow, first) = match self.open(&mut ws, token).await {
            Opened::Welcomed(first) => (Flow::Continue, first),
            Opened::Ended(flow) => (flow, None),
        };
        // Counted by kind only once past the gate; the guard keeps the gauge right however
        // the session ends.
        let _kind = matches!(flow, Flow::Continue).then(|| {
            let gauge = self.node.metrics.connections_of(self.access.kind());
            gauge.inc();
            scopeguard(move || {
                gauge.dec();
            })
        });
        if let (Flow::Continue, Some(frame)) = (&flow, first) {
            flow = self.on_frame(&mut ws, frame).await;
        }
        tracing::debug!("connected");
        let ping_every = self.node.config.ping_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let mut pong_deadline: Option<Instant> = None;
        let mut pacer = Pacer::new(self.node.config.write_delay);
        // The sources that rarely fire are polled only when they did (see `wake_gate`).
        let (reading, ticking, watching) = (
            WakeGate::default(),
            WakeGate::default(),
            WakeGate::default(),
        );

        // The token's expiry: one timer for the connection's life, moved when a refresh
        // moves the deadline (not a new timer per loop turn: the loop turns per write).
        let never = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let mut armed = self.access.deadline;
        let mut expiry = std::pin::pin!(tokio::time::sleep_until(armed.unwrap_or(never)));

        while let Flow::Continue = flow {
            if self.access.deadline != armed {
                armed = self.access.deadline;
                expiry.as_mut().reset(armed.unwrap_or(never));
            }
            flow = tokio::select! {
                // With too many publishes outstanding the client is not read: back-pressure.
                frame = poll_fn(|cx| reading.poll(cx, |cx| ws.poll_next_unpin(cx))), if !self.publishes.is_full() => {
                    pong_deadline = None;
                    match frame {
                        Some(Ok(frame)) => self.on_frame(&mut ws, frame).await,
                        Some(Err(error)) if is_too_big(&error) => {
                            tracing::info!(%error, "client sent a frame above the hard limit; closing");
                            Flow::Close(CLOSE_TOO_BIG, "message too big", CloseReason::TooLarge)
                        }
                        Some(Err(error)) => {
                            tracing::debug!(%error, "read failed");
                            Flow::Drop(CloseReason::Error)
                        }
                        None => Flow::Drop(CloseReason::ClientClosed),
                    }
                }
                outcome = self.publishes.next(), if !self.publishes.is_empty() => {
                    self.answer_publish(&mut ws, outcome).await
                }
                Some(inbound) = inbox.recv(), if pacer.may_take() => match inbound {
                    Inbound::Messages(batch) => self.deliver(&mut ws, batch, &mut inbox, &mut pacer).await,
                    Inbound::Overflowed => slow_consumer(),
                    Inbound::Lost => messages_lost(),
                },
                // A resting session learns of an overflow when the rest ends (≤ write delay).
                () = pacer.rested(), if !pacer.may_take() => match inbox.try_recv() {
                    Some(Inbound::Messages(batch)) => self.deliver(&mut ws, batch, &mut inbox, &mut pacer).await,
                    Some(Inbound::Overflowed) => slow_consumer(),
                    Some(Inbound::Lost) => messages_lost(),
                    None => Flow::Continue,
                },
                _ = poll_fn(|cx| ticking.poll(cx, |cx| ping.poll_tick(cx))) => {
                    pong_deadline.get_or_insert(Instant::now() + self.node.config.ping_timeout);
                    match tokio::time::timeout(SMALL_WRITE_LIMIT, ws.send(Message::Ping(Default::default()))).await {
                        Ok(Ok(())) => Flow::Continue,
                        _ => Flow::Drop(CloseReason::Error),
                    }
                }
                _ = sleep_until_some(pong_deadline), if pong_deadline.is_some() => Flow::Drop(CloseReason::PingTimeout),
                (state, receiver) = poll_fn(|cx| watching.poll(cx, |cx| lifecycle_changed.as_mut().poll(cx))) => match state {
                    Some(Lifecycle::Aborted) | None => Flow::Drop(CloseReason::Aborted),
                    Some(state) => {
                        drain_at = drain_at.or(drain_moment(state));
                        lifecycle_changed.set(next_lifecycle(receiver));
                        Flow::Continue
                    }
                },
                _ = sleep_until_some(drain_at), if drain_at.is_some() => Flow::Close(CLOSE_RESTART, "node shutting down", CloseReason::Shutdown),
                () = expiry.as_mut(), if armed.is_some() => {
                    self.refuse(&mut ws, &AuthError::Expired).await
                }
            };
        }
        let reason = match flow {
            Flow::Close(code, text, reason) => {
                close_politely(&mut ws, code, text).await;
                reason
            }
            Flow::Drop(reason) => reason,
            Flow::Continue => CloseReason::Error,
        };
        tracing::debug!(?reason, "disconnected");
        self.node.metrics.disconnect(reason);
        self.leave_all();
        self.settle_publishes().await;
    }

    /// Lets the publishes the client started finish, though nobody is left to answer: a
    /// request may already be with the broker, and cutting it off would leave it unknown
    /// whether it was published.
    async fn settle_publishes(&mut self) {
        while !self.publishes.is_empty() {
            let outcome = self.publishes.next().await;
            self.note_publish_failure(&outcome);
        }
    }

    fn leave_all(&mut self) {
        for channel in self.subscriptions.keys() {
            self.node.channels.leave(channel, self.id);
        }
        self.node
            .metrics
            .subscriptions
            .dec_by(self.subscriptions.len() as i64);
        self.subscriptions.clear();
    }

    async fn on_frame(&mut self, ws: &mut WebSocket, frame: Message) -> Flow {
        // Every frame counts against the rate, control frames too: each costs a read, and
        // a ping queues a pong. Uncounted, 3 M pings from a client that never read grew a
        // hub by 400 MB and the client stayed connected.
        if !matches!(frame, Message::Close(_)) && !self.bucket.take() {
            tracing::info!("client exceeded its frame rate; closing");
            return Flow::Close(CLOSE_POLICY, "rate limit exceeded", CloseReason::Flood);
        }
        let text = match frame {
            Message::Text(text) => text,
            Message::Binary(_) => {
                let error = ProtocolError::new(
                    ErrorCode::BadFrame,
                    "binary frames are not part of the protocol; send JSON text",
                );
                return self.reply_error(ws, &error, None, None).await;
            }
            Message::Ping(_) | Message::Pong(_) => return Flow::Continue,
            Message::Close(_) => return Flow::Drop(CloseReason::ClientClosed),
        };
        if text.len() > self.node.config.max_message_size {
            let error = ProtocolError::new(
                ErrorCode::TooLarge,
                format!(
                    "frame of {} bytes exceeds the limit of {}",
                    text.len(),
                    self.node.config.max_message_size
                ),
            );
            return self.reply_error(ws, &error, None, None).await;
        }
        match ClientFrame::parse(&text) {
            Err(error) => self.reply_error(ws, &error, None, None).await,
            Ok(ClientFrame::Subscribe {
                channel,
                since,
                token,
            }) => self.subscribe(ws, &channel, since, token.as_deref()).await,
            Ok(ClientFrame::Connect { .. }) if !self.node.gate.checks_tokens() => {
                // An open hub has nothing to check: it answers as at the start.
                self.welcome(ws).await
            }
            Ok(ClientFrame::Connect { .. }) => {
                let error = ProtocolError::new(
                    ErrorCode::BadFrame,
                    "already connected; send `refresh` to replace the token",
                );
                self.reply_error(ws, &error, None, None).await
            }
            Ok(ClientFrame::Refresh { token }) => self.refresh(ws, &token).await,
            Ok(ClientFrame::Unsubscribe { channel }) => self.unsubscribe(ws, &channel).await,
            Ok(ClientFrame::Publish { channel, data, id }) => {
                self.publish(ws, &channel, data, id).await
            }
            Ok(ClientFrame::Ping { id }) => {
                match send(ws, ServerFrame::Pong { id: id.as_deref() }.encode()).await {
                    Ok(()) => Flow::Continue,
                    Err(Gone) => Flow::Drop(CloseReason::Error),
                }
            }
        }
    }

    async fn subscribe(
        &mut self,
        ws: &mut WebSocket,
        channel: &str,
        since: Option<Offset>,
        token: Option<&str>,
    ) -> Flow {
        let name = match ChannelName::parse(channel) {
            Ok(name) => name,
            Err(error) => return self.reply_error(ws, &error, Some(channel), None).await,
        };
        if let Err(error) = self.may_subscribe(channel, token).await {
            return self.reply_auth_error(ws, &error, Some(channel), None).await;
        }
        if self.subscriptions.contains_key(&name) {
            let error = ProtocolError::new(
                ErrorCode::AlreadySubscribed,
                "already subscribed to this channel",
            );
            return self.reply_error(ws, &error, Some(channel), None).await;
        }
        if self.subscriptions.len() >= self.node.config.max_subscriptions {
            let error = ProtocolError::new(
                ErrorCode::TooManySubscriptions,
                format!(
                    "at most {} channels per connection",
                    self.node.config.max_subscriptions
                ),
            );
            return self.reply_error(ws, &error, Some(channel), None).await;
        }
        let subscriber = Subscriber {
            id: self.id,
            postbox: self.postbox.clone(),
        };
        // Join first, read history second: whatever is published in between is both in
        // the history and in the inbox, and the offset check below keeps one copy.
        if let Err(error) = self.node.channels.join(&name, subscriber).await {
            tracing::warn!(%error, channel = %name, "subscribe failed");
            let error = ProtocolError::new(
                ErrorCode::BrokerUnavailable,
                format!("cannot subscribe now: {error}"),
            );
            return self.reply_error(ws, &error, Some(channel), None).await;
        }
        let (opening, mut replay) = match Replay::start(&self.node, &name, since).await {
            Ok(started) => started,
            Err(error) => {
                self.node
                    .metrics
                    .broker_error(crate::metrics::BrokerOp::History);
                self.node.channels.leave(&name, self.id);
                let error = ProtocolError::new(
                    ErrorCode::BrokerUnavailable,
                    format!("cannot read history now: {error}"),
                );
                return self.reply_error(ws, &error, Some(channel), None).await;
            }
        };
        if since.is_some() {
            let outcome = if opening.recovered {
                Resume::Recovered
            } else {
                Resume::NotRecovered
            };
            self.node.metrics.resume(outcome);
        }
        self.subscriptions.insert(name, replay.until());
        self.node.metrics.subscriptions.inc();
        let subscribed = ServerFrame::Subscribed {
            channel,
            offset: opening.top,
            recovered: opening.recovered,
        };
        // Page by page, each read only once the previous one is written (see `replay`); a
        // client that takes no page within a ping timeout is too slow.
        let limit = self.node.config.ping_timeout;
        let mut first = Some(subscribed.encode());
        loop {
            let page = match replay.next_page(&self.node).await {
                Ok(page) => page.unwrap_or_default(),
                Err(error) => {
                    tracing::warn!(%error, channel, "replay cut short; the client must resume");
                    if matches!(error, ReplayError::Broker(_)) {
                        self.node
                            .metrics
                            .broker_error(crate::metrics::BrokerOp::History);
                    }
                    return Flow::Close(CLOSE_TRY_AGAIN, "replay cut short", CloseReason::Error);
                }
            };
            if page.is_empty() && first.is_none() {
                return Flow::Continue;
            }
            let write = async {
                if let Some(subscribed) = first.take() {
                    ws.feed(Message::Text(subscribed)).await?;
                }
                for message in &page {
                    ws.feed(Message::Text(message.frame.clone())).await?;
                }
                ws.flush().await
            };
            match tokio::time::timeout(limit, write).await {
                Ok(Ok(())) => self.node.metrics.messages_out.inc_by(page.len() as u64),
                Ok(Err(_)) => return Flow::Drop(CloseReason::Error),
                Err(_) => return Flow::Drop(CloseReason::SlowConsumer),
            };
        }
    }

    async fn unsubscribe(&mut self, ws: &mut WebSocket, channel: &str) -> Flow {
        let removed = ChannelName::parse(channel)
            .ok()
            .and_then(|name| self.subscriptions.remove_entry(&name));
        let Some((name, _)) = removed else {
            let error =
                ProtocolError::new(ErrorCode::NotSubscribed, "not subscribed to this channel");
            return self.reply_error(ws, &error, Some(channel), None).await;
        };
        self.node.channels.leave(&name, self.id);
        self.node.metrics.subscriptions.dec();
        match send(ws, ServerFrame::Unsubscribed { channel }.encode()).await {
            Ok(()) => Flow::Continue,
            Err(Gone) => Flow::Drop(CloseReason::Error),
        }
    }

    /// Starts publishing; the answer goes out when the broker has replied (see
    /// [`Publishes`]).
    async fn publish(
        &mut self,
        ws: &mut WebSocket,
        channel: &str,
        data: Box<RawValue>,
        id: Option<Box<RawValue>>,
    ) -> Flow {
        let name = match ChannelName::parse(channel) {
            Ok(name) => name,
            Err(error) => {
                return self
                    .reply_error(ws, &error, Some(channel), id.as_deref())
                    .await
            }
        };
        if let Err(error) = check_depth(&data) {
            return self
                .reply_error(ws, &error, Some(channel), id.as_deref())
                .await;
        }
        let subscribed = self.subscriptions.contains_key(&name);
        let allowed =
            self.node
                .gate
                .rules
                .check_publish(channel, self.access.identity.as_ref(), subscribed);
        if let Err(denied) = allowed {
            let error = AuthError::from(denied);
            return self
                .reply_auth_error(ws, &error, Some(channel), id.as_deref())
                .await;
        }
        self.node.metrics.message_in(Source::Ws);
        self.publishes.start(&*self.node.broker, name, data, id);
        Flow::Continue
    }

    async fn answer_publish(&mut self, ws: &mut WebSocket, outcome: Outcome) -> Flow {
        self.note_publish_failure(&outcome);
        let channel = outcome.channel.as_str();
        let id = outcome.id.as_deref();
        match outcome.result {
            Ok(offset) => {
                let published = ServerFrame::Published {
                    channel,
                    offset,
                    id,
                };
                match send(ws, published.encode()).await {
                    Ok(()) => Flow::Continue,
                    Err(Gone) => Flow::Drop(CloseReason::Error),
                }
            }
            Err(error) => {
                let error = ProtocolError::new(
                    ErrorCode::BrokerUnavailable,
                    format!("not published: {error}"),
                );
                self.reply_error(ws, &error, Some(channel), id).await
            }
        }
    }

    fn note_publish_failure(&self, outcome: &Outcome) {
        if let Err(error) = &outcome.result {
            self.node
                .metrics
                .broker_error(crate::metrics::BrokerOp::Publish);
            tracing::warn!(%error, channel = %outcome.channel, "publish failed");
        }
    }

    /// Writes `first` and whatever else the inbox already holds, flushing once, then rests
    /// as the pacer says. A client that does not read for a whole ping timeout is dropped
    /// as too slow: a blocked write would otherwise hold the session (and its inbox)
    /// forever.
    async fn deliver(
        &mut self,
        ws: &mut WebSocket,
        first: Batch,
        inbox: &mut Mailbox,
        pacer: &mut Pacer,
    ) -> Flow {
        let limit = self.node.config.ping_timeout;
        let flow = match tokio::time::timeout(limit, self.write_batches(ws, first, inbox)).await {
            Ok(flow) => flow,
            Err(_) => {
                tracing::info!("client stopped reading; dropping it");
                Flow::Drop(CloseReason::SlowConsumer)
            }
        };
        pacer.wrote(inbox.has_waiting());
        flow
    }

    async fn write_batches(
        &mut self,
        ws: &mut WebSocket,
        first: Batch,
        inbox: &mut Mailbox,
    ) -> Flow {
        let mut next = Some(first);
        let mut written = 0;
        while let Some(batch) = next.take() {
            match self.feed_batch(ws, &batch).await {
                Ok(n) => written += n,
                Err(Gone) => return Flow::Drop(CloseReason::Error),
            }
            if written < WRITE_BATCH {
                next = match inbox.try_recv() {
                    Some(Inbound::Messages(batch)) => Some(batch),
                    Some(Inbound::Overflowed) => return slow_consumer(),
                    Some(Inbound::Lost) => return messages_lost(),
                    None => None,
                };
            }
        }
        self.node.metrics.messages_out.inc_by(written as u64);
        match ws.flush().await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Drop(CloseReason::Error),
        }
    }

    /// Buffers the messages of `batch` this client has not had yet (history replayed at
    /// subscribe may already hold some), returning how many.
    async fn feed_batch(&mut self, ws: &mut WebSocket, batch: &Batch) -> Result<usize, Gone> {
        let Some(channel) = batch.first().map(|p| &p.channel) else {
            return Ok(0);
        };
        // Unsubscribed since the batch was posted: nothing of it is wanted.
        let Some(last) = self.subscriptions.get_mut(channel) else {
            return Ok(0);
        };
        // A batch is in offset order: what this client already has is a prefix of it.
        let new = &batch[batch.partition_point(|p| p.offset <= *last)..];
        for p in new {
            ws.feed(Message::Text(p.frame.clone()))
                .await
                .map_err(|_| Gone)?;
            *last = p.offset;
        }
        Ok(new.len())
    }

    /// Takes `&mut self` though it only reads: the session holds futures that are not
    /// `Sync`, and a shared borrow of it held across an await would make it not `Send`.
    async fn reply_error(
        &mut self,
        ws: &mut WebSocket,
        error: &ProtocolError,
        channel: Option<&str>,
        id: Option<&RawValue>,
    ) -> Flow {
        self.node.metrics.client_error(error.code);
        let frame = ServerFrame::Error {
            code: error.code,
            message: &error.message,
            channel,
            id,
        };
        match send(ws, frame.encode()).await {
            Ok(()) => Flow::Continue,
            Err(Gone) => Flow::Drop(CloseReason::Error),
        }
    }
}

/// How a connection's opening went.
enum Opened {
    /// `welcome` is sent; the first frame read while waiting for `connect`, if it was not
    /// one, is still to be handled.
    Welcomed(Option<Message>),
    Ended(Flow),
}

/// Runs `f` when dropped.
struct ScopeGuard<F: FnMut()>(F);

impl<F: FnMut()> Drop for ScopeGuard<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

fn scopeguard<F: FnMut()>(f: F) -> ScopeGuard<F> {
    ScopeGuard(f)
}

/// Writes one frame; a client that cannot take even that within [`SMALL_WRITE_LIMIT`] is
/// treated as gone.
async fn send(ws: &mut WebSocket, text: Utf8Bytes) -> Result<(), Gone> {
    match tokio::time::timeout(SMALL_WRITE_LIMIT, ws.send(Message::Text(text))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(Gone),
    }
}

/// The client could not keep up: its inbox overflowed and it lost messages. It is closed
/// with 1013 and resumes from its last offset.
fn slow_consumer() -> Flow {
    Flow::Close(CLOSE_TRY_AGAIN, "slow consumer", CloseReason::SlowConsumer)
}

/// A channel's log lost messages owed to this client: closing makes it resume, and the
/// resume answers `recovered: false` for that channel (and resumes the others exactly).
fn messages_lost() -> Flow {
    Flow::Close(CLOSE_TRY_AGAIN, "messages lost", CloseReason::Gap)
}

/// Sends a close frame and waits briefly for the client's answer, so the code arrives
/// before the TCP connection ends; all within [`CLOSE_LIMIT`], as a client that reads
/// nothing would otherwise block the send forever. After a read error the stream ends, so
/// nothing more is read (a too-big frame's payload in particular).
async fn close_politely(ws: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    let _ = tokio::time::timeout(CLOSE_LIMIT, async {
        if ws.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        while let Some(Ok(frame)) = ws.recv().await {
            if matches!(frame, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Whether a read failed because the client's frame or message is above the hard limit
/// (tungstenite refuses it from the frame header, before reading its payload).
fn is_too_big(error: &axum::Error) -> bool {
    use std::error::Error as _;
    matches!(
        error
            .source()
            .and_then(|e| e.downcast_ref::<tungstenite::Error>()),
        Some(tungstenite::Error::Capacity(
            tungstenite::error::CapacityError::MessageTooLong { .. }
        ))
    )
}

/// When this connection closes during a drain: a random moment within the window, so a
/// node's clients reconnect elsewhere spread over time rather than all at once.
fn drain_moment(state: Lifecycle) -> Option<Instant> {
    match state {
        Lifecycle::Draining { window } => {
            let delay = window.mul_f64(rand::random_range(0.0..1.0));
            Some(Instant::now() + delay)
        }
        Lifecycle::Running | Lifecycle::Aborted => None,
    }
}

/// The node's next lifecycle state (`None` once the node is gone), with the receiver back
/// to wait for the one after.
async fn next_lifecycle(
    mut lifecycle: watch::Receiver<Lifecycle>,
) -> (Option<Lifecycle>, watch::Receiver<Lifecycle>) {
    let state = match lifecycle.changed().await {
        Ok(()) => Some(*lifecycle.borrow_and_update()),
        Err(_) => None,
    };
    (state, lifecycle)
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Inbound frame budget: `rate` per second on average, `burst` at once.
struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    refilled: Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> Self {
        Self {
            tokens: burst as f64,
            rate: rate as f64,
            burst: burst as f64,
            refilled: Instant::now(),
        }
    }

    /// Gives back one token taken for a frame that will be taken again.
    fn refund(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.burst);
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_allows_a_burst_then_refuses() {
        let mut bucket = TokenBucket::new(1, 3);
        assert!(bucket.take() && bucket.take() && bucket.take());
        assert!(!bucket.take());
    }

    #[test]
    fn drain_moment_falls_within_the_window() {
        let window = Duration::from_millis(200);
        let at = drain_moment(Lifecycle::Draining { window }).unwrap();
        assert!(at <= Instant::now() + window);
        assert!(drain_moment(Lifecycle::Running).is_none());
    }
}
