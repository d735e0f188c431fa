//! The Redis broker: offsets by `INCR`, history in a Stream, live fan-out by pub/sub.
//!
//! One Lua script assigns the offset, appends to the channel's stream (entry id = offset, so
//! "everything after N" is a range query), trims it and publishes, all atomically: every
//! node sees the same offset for the same message, and pub/sub carries each channel's
//! messages in offset order. Keys, for a prefix `P` and a channel `C`:
//!
//! | key           | type   | holds                                               |
//! |---------------|--------|-----------------------------------------------------|
//! | `P:seq:C`     | string | the channel's top offset, expires after ttl         |
//! | `P:base:C`    | string | the offset its history started after, same expiry   |
//! | `P:hist:C`    | stream | retained messages, `MAXLEN` size, expires after ttl |
//! | `P:live:C`    | pubsub | `"<offset>/<prev> <json>"` per message (prev 0: none) |
//!
//! Every publish pushes the expiry of all three keys to now + ttl, so a channel nobody
//! publishes to leaves nothing behind once its history has expired (100 000 channels
//! published once used to leave 200 000 keys for good). A channel published to again
//! after that starts a fresh history at the current time in microseconds (see
//! [`Offset::fresh_base`]), above every offset it had before, and a resume from an old
//! offset is answered `recovered: false`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::Script;
use futures_util::future::{BoxFuture, FutureExt};
use serde_json::value::RawValue;
use tokio::sync::OnceCell;

use super::{
    Broker, BrokerError, BrokerOptions, Capabilities, Feed, FeedLimit, History, HistoryPolicies,
    Link, Page,
};
use crate::protocol::{ChannelName, Offset, Publication};

mod feed;
mod publisher;
mod target;

/// Redis's errors in the broker-neutral terms of the contract: a connection that failed
/// or broke is `Unavailable`, an error the server answered is `Refused`.
impl From<::redis::RedisError> for BrokerError {
    fn from(error: ::redis::RedisError) -> Self {
        let reason = error.to_string();
        if error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_timeout()
            || error.is_unrecoverable_error()
        {
            BrokerError::Unavailable {
                broker: "redis",
                reason,
            }
        } else {
            BrokerError::Refused {
                broker: "redis",
                reason,
            }
        }
    }
}

/// How long one Redis command may take before the caller is told the broker is down.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

/// Assigns the offset, appends, trims, expires and publishes in one atomic step.
/// A missing sequence starts at the server's clock in microseconds (see `Offset`);
/// `%.0f` prints such numbers exactly, where Lua's default would use an exponent.
/// The base key is written in the same step as the sequence it describes, and both expire
/// with the history, so the three are created, kept and lost together (a stale base left
/// by an older version is overwritten here).
const PUBLISH_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prev = '0'
if redis.call('EXISTS', KEYS[1]) == 0 then
  local base = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
  redis.call('SET', KEYS[1], base)
  redis.call('SET', KEYS[3], base)
else
  prev = redis.call('GET', KEYS[1])
end
local offset = string.format('%.0f', redis.call('INCR', KEYS[1]))
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], offset .. '-0', 't', now_ms, 'd', ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
redis.call('PUBLISH', ARGV[4], offset .. '/' .. prev .. ' ' .. ARGV[1])
return offset
"#;

/// Returns `{top, base, more}` or, with a `since`, `{top, base, more, offset1, data1,
/// offset2, data2, …}` for the entries after `since` that are younger than the ttl, one page
/// of them: at most `ARGV[3]` entries and `ARGV[4]` bytes of data (but at least one entry).
/// `more` is `'1'` when the page limit left entries out. `base` is `''` when unknown (no
/// sequence yet, or one written before the base key existed).
///
/// The stream is walked in small `XRANGE … COUNT` steps, so what the script holds at once
/// is one step and the page it builds, never the whole history.
const HISTORY_SCRIPT: &str = r#"
local top = redis.call('GET', KEYS[1]) or '0'
local base = ''
if top ~= '0' then base = redis.call('GET', KEYS[3]) or '' end
if ARGV[1] == '' then return {top, base, '0'} end
local t = redis.call('TIME')
local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[2])
local max_n = tonumber(ARGV[3])
local max_bytes = tonumber(ARGV[4])
local out = {top, base, '0'}
local n, bytes = 0, 0
local start = '(' .. ARGV[1] .. '-0'
local full = false
while not full do
  local step = math.min(max_n - n + 1, 16)
  local entries = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', step)
  for _, entry in ipairs(entries) do
    local fields = entry[2]
    local at, data
    for i = 1, #fields, 2 do
      if fields[i] == 't' then at = tonumber(fields[i + 1]) end
      if fields[i] == 'd' then data = fields[i + 1] end
    end
    if at and data and at >= cutoff then
      if n >= max_n or (n > 0 and bytes + #data > max_bytes) then
        out[3] = '1'
        full = true
        break
      end
      table.insert(out, string.match(entry[1], '^(%d+)'))
      table.insert(out, data)
      n = n + 1
      bytes = bytes + #data
    end
    start = '(' .. entry[1]
  end
  if #entries < step then break end
end
return out
"#;

/// Key names for one prefix.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: Arc<str>,
}

impl Keys {
    fn seq(&self, channel: &ChannelName) -> String {
        format!("{}:seq:{channel}", self.prefix)
    }
    fn base(&self, channel: &ChannelName) -> String {
        format!("{}:base:{channel}", self.prefix)
    }
    fn hist(&self, channel: &ChannelName) -> String {
        format!("{}:hist:{channel}", self.prefix)
    }
    fn live(&self, channel: &ChannelName) -> String {
        format!("{}:live:{channel}", self.prefix)
    }
    /// The tether channel a pub/sub channel name stands for, if it is one of ours.
    fn channel_of_live(&self, live: &str) -> Option<ChannelName> {
        let rest = live.strip_prefix(&*self.prefix)?.strip_prefix(":live:")?;
        ChannelName::parse(rest).ok()
    }
}

/// The command connection, made on first use, so building the broker needs neither a
/// runtime nor a live Redis; the manager reconnects by itself afterwards.
#[derive(Clone)]
pub(super) struct Connector {
    client: ::redis::Client,
    manager: Arc<OnceCell<ConnectionManager>>,
}

impl Connector {
    async fn get(&self) -> Result<ConnectionManager, BrokerError> {
        let manager = self
            .manager
            .get_or_try_init(|| {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(COMMAND_TIMEOUT))
                    .set_response_timeout(Some(COMMAND_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                // Made on the broker lane, so the task that reads Redis's replies lives
                // there too, whoever asks first (see `lane`).
                let connect = ConnectionManager::new_with_config(self.client.clone(), config);
                async move {
                    match crate::lane::spawn(connect).await {
                        Ok(connected) => connected.map_err(BrokerError::from),
                        Err(_) => Err(BrokerError::Disconnected),
                    }
                }
            })
            .await?;
        Ok(manager.clone())
    }
}

/// A broker backed by one Redis server (or anything speaking its protocol).
pub struct RedisBroker {
    client: ::redis::Client,
    connector: Connector,
    /// Started by the first publish (it needs a runtime).
    publisher: OnceLock<publisher::Publisher>,
    keys: Keys,
    policies: Arc<HistoryPolicies>,
    feed_limit: FeedLimit,
    history_script: Script,
}

impl RedisBroker {
    pub fn new(url: &str, options: BrokerOptions) -> Result<Self, BrokerError> {
        let client = target::client(url)?;
        Ok(Self {
            connector: Connector {
                client: client.clone(),
                manager: Arc::new(OnceCell::new()),
            },
            client,
            publisher: OnceLock::new(),
            keys: Keys {
                prefix: options.redis_prefix.into(),
            },
            policies: Arc::new(options.history),
            feed_limit: options.feed,
            history_script: Script::new(HISTORY_SCRIPT),
        })
    }

    fn publisher(&self) -> &publisher::Publisher {
        self.publisher.get_or_init(|| {
            publisher::Publisher::spawn(
                self.connector.clone(),
                self.keys.clone(),
                self.policies.clone(),
            )
        })
    }

    async fn history_inner(
        &self,
        channel: &ChannelName,
        since: Option<Offset>,
        page: Page,
    ) -> Result<History, BrokerError> {
        let mut conn = self.connector.get().await?;
        let since_arg = since.map(|s| s.0.to_string()).unwrap_or_default();
        let reply: Vec<String> = self
            .history_script
            .key(self.keys.seq(channel))
            .key(self.keys.hist(channel))
            .key(self.keys.base(channel))
            .arg(since_arg)
            .arg(self.policies.for_channel(channel).ttl.as_millis() as u64)
            .arg(page.messages.get())
            .arg(page.bytes.get())
            .invoke_async(&mut conn)
            .await?;
        let mut items = reply.into_iter();
        let top = parse_offset(&items.next().unwrap_or_else(|| "0".into()))?;
        let base = parse_base(&items.next().unwrap_or_default())?;
        let more = items.next().is_some_and(|more| more == "1");
        let mut messages = Vec::new();
        while let (Some(offset), Some(data)) = (items.next(), items.next()) {
            let data = RawValue::from_string(data)
                .map_err(|e| BrokerError::BadReply(format!("history entry is not JSON: {e}")))?;
            messages.push(Publication::new(
                channel.clone(),
                parse_offset(&offset)?,
                data,
            ));
        }
        Ok(History::from_retained(top, base, since, messages, more))
    }
}

fn parse_offset(text: &str) -> Result<Offset, BrokerError> {
    text.parse()
        .map(Offset)
        .map_err(|_| BrokerError::BadReply(format!("offset {text:?} is not a number")))
}

/// The history's base from its stored text; empty means unknown.
fn parse_base(text: &str) -> Result<Option<Offset>, BrokerError> {
    if text.is_empty() {
        return Ok(None);
    }
    parse_offset(text).map(Some)
}

/// Bounds a Redis round trip so a silent network cut becomes an error, not a hang.
async fn bounded<T>(
    work: impl std::future::Future<Output = Result<T, BrokerError>>,
) -> Result<T, BrokerError> {
    tokio::time::timeout(COMMAND_TIMEOUT, work)
        .await
        .unwrap_or(Err(BrokerError::Timeout(COMMAND_TIMEOUT)))
}

impl Broker for RedisBroker {
    fn publish(
        &self,
        channel: &ChannelName,
        data: Box<RawValue>,
    ) -> BoxFuture<'static, Result<Offset, BrokerError>> {
        self.publisher().publish(channel, data)
    }

    fn history_page<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<Offset>,
        page: Page,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        bounded(self.history_inner(channel, since, page)).boxed()
    }

    fn attach(&self) -> (Arc<dyn Link>, Feed) {
        let (link, events) = feed::spawn(self.client.clone(), self.keys.clone(), self.feed_limit);
        (Arc::new(link), events)
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            history: true,
            shared_across_processes: true,
            survives_restart: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_channel_names_map_back_to_channels_of_this_prefix_only() {
        let keys = Keys {
            prefix: "t1".into(),
        };
        let c = ChannelName::parse("chat:room").unwrap();
        assert_eq!(keys.channel_of_live(&keys.live(&c)), Some(c));
        assert_eq!(keys.channel_of_live("t2:live:chat"), None);
    }

    #[test]
    fn an_empty_base_is_unknown_and_a_bad_one_an_error() {
        assert_eq!(parse_base("").unwrap(), None);
        assert_eq!(parse_base("42").unwrap(), Some(Offset(42)));
        assert!(matches!(parse_base("x"), Err(BrokerError::BadReply(_))));
    }
}
