//! One broker's connection to NATS: made on first use, kept up by the client, watched so a
//! lost connection fails operations fast and a regained one resyncs every node's feed; and
//! the stream behind it, whose creation time is the base of every offset (the epoch).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectOptions, Event};
use bytes::Bytes;
use tokio::sync::OnceCell;

use super::address::{NatsUrl, Subjects};
use crate::broker::feed::FeedSender;
use crate::broker::{BrokerError, BrokerEvent, HistoryPolicy};

/// How long one NATS round trip (a publish ack, a history read, a stream request) may take
/// before the caller is told the broker is not answering.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a fresh broker waits for its first connection before operations fail fast
/// rather than wait out their timeout.
const FIRST_CONNECT_GRACE: Duration = Duration::from_secs(2);

/// A subject nobody subscribes to: a request to it comes back "no responders" only once the
/// server has processed everything this connection sent before it, subscriptions included.
const SYNC_SUBJECT: &str = "_TETHER.SYNC";

/// The stream's base: offsets are `base + stream sequence` (see the module docs of `nats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Epoch {
    pub base: u64,
}

pub(super) struct Connection {
    url: NatsUrl,
    pub subjects: Subjects,
    policy: HistoryPolicy,
    client: OnceCell<(Client, jetstream::Context)>,
    /// The stream handle and its epoch, read from the server; `None` until read and after
    /// every disconnect (the stream may come back recreated).
    epoch: Mutex<Option<Epoch>>,
    connected: AtomicBool,
    ever_connected: AtomicBool,
    /// Counts disconnects, so a reader of the epoch can tell it went stale meanwhile.
    disconnects: AtomicU64,
    created: Instant,
    /// Every node's feed, told when the connection is lost and regained.
    feeds: Mutex<Vec<FeedSender>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here is left half-updated by a panic: a poisoned lock is still usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(super) fn unavailable(reason: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable {
        broker: "nats",
        reason: reason.to_string(),
    }
}

pub(super) fn refused(reason: impl std::fmt::Display) -> BrokerError {
    BrokerError::Refused {
        broker: "nats",
        reason: reason.to_string(),
    }
}

/// Bounds a round trip so a silent cut becomes an error, not a hang.
pub(super) async fn bounded<T>(
    work: impl std::future::Future<Output = Result<T, BrokerError>>,
) -> Result<T, BrokerError> {
    tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .unwrap_or(Err(BrokerError::Timeout(REQUEST_TIMEOUT)))
}

impl Connection {
    pub fn new(url: NatsUrl, subjects: Subjects, policy: HistoryPolicy) -> Arc<Self> {
        Arc::new(Self {
            url,
            subjects,
            policy,
            client: OnceCell::new(),
            epoch: Mutex::new(None),
            connected: AtomicBool::new(false),
            ever_connected: AtomicBool::new(false),
            disconnects: AtomicU64::new(0),
            created: Instant::now(),
            feeds: Mutex::new(Vec::new()),
        })
    }

    /// The client, connecting on first use. The client then reconnects by itself, forever:
    /// the connection is made on the broker lane (see `lane`), so the tasks that read and
    /// write it live there.
    pub async fn client(self: &Arc<Self>) -> Result<&(Client, jetstream::Context), BrokerError> {
        self.client
            .get_or_try_init(|| {
                let options = self.options();
                let servers = self.url.servers.clone();
                async move {
                    let connect = crate::lane::spawn(async move {
                        let client = options.connect(servers).await.map_err(unavailable)?;
                        let js = jetstream::ContextBuilder::new()
                            .timeout(REQUEST_TIMEOUT)
                            .build(client.clone());
                        Ok((client, js))
                    });
                    connect.await.unwrap_or(Err(BrokerError::Disconnected))
                }
            })
            .await
    }

    fn options(self: &Arc<Self>) -> ConnectOptions {
        let mut options = match &self.url.credentials {
            Some((user, password)) => {
                ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            None => ConnectOptions::new(),
        };
        let me = Arc::downgrade(self);
        options = options
            .name("tether-hub")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(REQUEST_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            // A cut nobody reports (a dead peer, a dropped route) shows as missed pongs.
            .ping_interval(Duration::from_secs(5))
            // Back soon after a restart, without hammering a server that stays down.
            .reconnect_delay_callback(|attempts| {
                let step = Duration::from_millis(50) * (attempts.min(5) as u32 + 1);
                step.mul_f64(rand::random_range(0.5..1.0))
                    .min(Duration::from_secs(1))
            })
            .event_callback(move |event| {
                let me = me.clone();
                async move {
                    if let Some(me) = me.upgrade() {
                        me.on_event(event).await;
                    }
                }
            });
        options
    }

    async fn on_event(self: &Arc<Self>, event: Event) {
        match event {
            Event::Connected => {
                self.connected.store(true, Ordering::SeqCst);
                let again = self.ever_connected.swap(true, Ordering::SeqCst);
                tracing::info!(servers = ?self.url.servers, "nats connected");
                // The client subscribed every live subject again before this; once the
                // server confirms it and the stream is known, the nodes refill from history.
                if let Err(error) = self.sync().await {
                    tracing::warn!(%error, "nats resync round trip failed");
                }
                if let Err(error) = self.refresh_epoch().await {
                    tracing::warn!(%error, "nats stream not readable after connecting");
                }
                if again {
                    self.tell_feeds(|| BrokerEvent::Resync);
                }
            }
            Event::Disconnected => {
                self.connected.store(false, Ordering::SeqCst);
                self.disconnects.fetch_add(1, Ordering::SeqCst);
                *lock(&self.epoch) = None;
                tracing::warn!(servers = ?self.url.servers, "nats connection lost; reconnecting");
                self.tell_feeds(|| BrokerEvent::Lost("nats connection lost".into()));
            }
            Event::SlowConsumer(sid) => {
                // The client dropped live messages of a subscription it could not hand on
                // fast enough: they are in history, so every node refills from there.
                tracing::warn!(sid, "nats live feed overflowed; refilling from history");
                self.tell_feeds(|| BrokerEvent::Overflowed);
            }
            other => tracing::warn!(event = %other, "nats"),
        }
    }

    /// Registers a node's feed for connection events.
    pub fn add_feed(&self, feed: FeedSender) {
        lock(&self.feeds).push(feed);
    }

    fn tell_feeds(&self, event: impl Fn() -> BrokerEvent) {
        lock(&self.feeds).retain(|feed| feed.send(event()).is_ok());
    }

    /// Fails fast while NATS is known to be away, so a publish in an outage is answered at
    /// once; during the first moments of a fresh broker, operations wait (bounded) for the
    /// first connection instead.
    pub fn check_up(&self) -> Result<(), BrokerError> {
        if self.connected.load(Ordering::SeqCst) {
            return Ok(());
        }
        if !self.ever_connected.load(Ordering::SeqCst)
            && self.created.elapsed() < FIRST_CONNECT_GRACE
        {
            return Ok(());
        }
        Err(unavailable(format!(
            "not connected to {}",
            self.url.servers.join(",")
        )))
    }

    /// A round trip through the server on this connection (see [`SYNC_SUBJECT`]).
    pub async fn sync(self: &Arc<Self>) -> Result<(), BrokerError> {
        let (client, _) = self.client().await?;
        let answer =
            tokio::time::timeout(REQUEST_TIMEOUT, client.request(SYNC_SUBJECT, Bytes::new()))
                .await
                .map_err(|_| BrokerError::Timeout(REQUEST_TIMEOUT))?;
        match answer {
            Ok(_) => Ok(()),
            Err(error) if error.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
            Err(error) if error.kind() == async_nats::RequestErrorKind::TimedOut => {
                Err(BrokerError::Timeout(REQUEST_TIMEOUT))
            }
            Err(error) => Err(unavailable(error)),
        }
    }

    /// The stream's epoch, read from the server when not known.
    pub async fn epoch(self: &Arc<Self>) -> Result<Epoch, BrokerError> {
        if let Some(epoch) = *lock(&self.epoch) {
            return Ok(epoch);
        }
        self.refresh_epoch().await
    }

    /// The epoch if known, without a round trip (the live feed's path).
    pub fn cached_epoch(&self) -> Option<Epoch> {
        *lock(&self.epoch)
    }

    pub fn disconnects(&self) -> u64 {
        self.disconnects.load(Ordering::SeqCst)
    }

    /// A handle on the stream for reads (no round trip).
    pub async fn stream(self: &Arc<Self>) -> Result<stream::Stream<()>, BrokerError> {
        let (_, js) = self.client().await?;
        js.get_stream_no_info(&self.subjects.stream)
            .await
            .map_err(unavailable)
    }

    /// Reads the stream (creating it, or bringing its limits in line with this hub's) and
    /// records its epoch. Also what the health probe runs: a stream deleted and recreated
    /// behind a running hub is noticed here.
    pub async fn refresh_epoch(self: &Arc<Self>) -> Result<Epoch, BrokerError> {
        let disconnects = self.disconnects();
        let info = bounded(self.ensure_stream()).await?;
        let base = info.created.unix_timestamp_nanos() / 1000;
        let epoch = Epoch {
            base: u64::try_from(base)
                .map_err(|_| BrokerError::BadReply(format!("stream created at {base} µs")))?,
        };
        let mut cached = lock(&self.epoch);
        if cached.is_some_and(|old| old != epoch) {
            tracing::warn!(stream = %self.subjects.stream, base = epoch.base, "nats stream was recreated: a new epoch");
        }
        // A disconnect while reading: what was read may already be stale.
        if disconnects == self.disconnects() {
            *cached = Some(epoch);
        }
        Ok(epoch)
    }

    fn stream_config(&self) -> stream::Config {
        let size = i64::try_from(self.policy.size).unwrap_or(i64::MAX);
        stream::Config {
            name: self.subjects.stream.clone(),
            subjects: vec![self.subjects.history_all()],
            max_messages_per_subject: size,
            max_age: self.policy.ttl,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            republish: Some(stream::Republish {
                source: self.subjects.history_all(),
                destination: self.subjects.live_all(),
                headers_only: false,
            }),
            // The server's default (two minutes) may not exceed max_age.
            duplicate_window: self.policy.ttl.min(Duration::from_secs(120)),
            num_replicas: 1,
            ..Default::default()
        }
    }

    async fn ensure_stream(self: &Arc<Self>) -> Result<stream::Info, BrokerError> {
        let (_, js) = self.client().await?;
        let wanted = self.stream_config();
        match js.get_stream(&self.subjects.stream).await {
            Ok(mut stream) => {
                let info = stream.info().await.map_err(unavailable)?.clone();
                let config = &info.config;
                let differs = config.max_messages_per_subject != wanted.max_messages_per_subject
                    || config.max_age != wanted.max_age
                    || config.republish != wanted.republish
                    || config.subjects != wanted.subjects
                    || !config.allow_direct;
                if !differs {
                    return Ok(info);
                }
                tracing::info!(stream = %self.subjects.stream, "nats stream limits differ from this hub's; updating");
                let update = stream::Config {
                    // What only the server may change stays as it is.
                    storage: config.storage,
                    num_replicas: config.num_replicas,
                    ..wanted
                };
                js.update_stream(update).await.map_err(refused)
            }
            Err(error) if is_not_found(&error) => {
                match js.create_stream(wanted).await {
                    Ok(stream) => Ok(stream.cached_info().clone()),
                    // Another node created it first, with other limits: use it.
                    Err(_) => {
                        let mut stream = js
                            .get_stream(&self.subjects.stream)
                            .await
                            .map_err(unavailable)?;
                        Ok(stream.info().await.map_err(unavailable)?.clone())
                    }
                }
            }
            Err(error) => Err(unavailable(error)),
        }
    }
}

fn is_not_found(error: &jetstream::context::GetStreamError) -> bool {
    matches!(
        error.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(e)
            if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}
