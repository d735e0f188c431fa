//! The hub's wire protocol: JSON text frames, one object each, tagged by `type`.
//!
//! Inbound frames are parsed into [`ClientFrame`]; anything that does not parse becomes a
//! [`ProtocolError`] whose [`ErrorCode`] the client can act on. Outbound frames are built once
//! per publication ([`Publication::frame`]) and shared by every session that delivers it, so
//! fan-out costs no per-client serialisation.

use std::fmt;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Longest channel name accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 128;

/// Deepest nesting of arrays and objects accepted in a published `data` value.
///
/// The hub itself never parses `data` (it is carried as raw JSON), but whoever reads it
/// back may: serde_json stops at 128 levels, and the history answer wraps `data` in three
/// more. A message that cannot be read back is refused when published, where the
/// publisher learns why, rather than breaking every reader later.
pub const MAX_DATA_DEPTH: usize = 64;

/// Refuses `data` nested deeper than [`MAX_DATA_DEPTH`] with [`ErrorCode::TooDeep`].
///
/// `data` is already valid JSON, so brackets inside strings are the only ones to skip.
///
/// ```
/// use serde_json::value::RawValue;
/// use tether_hub::protocol::check_depth;
/// let shallow = RawValue::from_string(r#"{"a":[1,{"b":"]]]"}]}"#.into()).unwrap();
/// assert!(check_depth(&shallow).is_ok());
/// let deep = RawValue::from_string(format!("{}{}", "[".repeat(65), "]".repeat(65))).unwrap();
/// assert!(check_depth(&deep).is_err());
/// ```
pub fn check_depth(data: &RawValue) -> Result<(), ProtocolError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in data.get().as_bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DATA_DEPTH {
                    return Err(ProtocolError::new(
                        ErrorCode::TooDeep,
                        format!("`data` nests arrays and objects more than {MAX_DATA_DEPTH} deep"),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// A validated channel name: 1 to 128 bytes of `A-Z a-z 0-9 _ - . :`.
///
/// The character set keeps names safe to embed in broker keys (Redis, NATS subjects) and
/// URL paths without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Validates `name`.
    ///
    /// ```
    /// use tether_hub::protocol::ChannelName;
    /// assert!(ChannelName::parse("chat:lobby").is_ok());
    /// assert!(ChannelName::parse("no spaces").is_err());
    /// ```
    pub fn parse(name: &str) -> Result<Self, ProtocolError> {
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':');
        if name.is_empty() || name.len() > MAX_CHANNEL_LEN || !name.chars().all(valid_char) {
            return Err(ProtocolError::new(
                ErrorCode::BadChannel,
                format!(
                    "channel name must be 1..={MAX_CHANNEL_LEN} characters of A-Z a-z 0-9 _ - . :"
                ),
            ));
        }
        Ok(Self(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A message's position in its channel: assigned once by the broker, strictly increasing.
///
/// Within one history (one broker lifetime for the memory broker, one Redis dataset for
/// Redis) offsets are contiguous, which is how a node notices a message it missed. A new
/// history starts at the current time in microseconds, so offsets stay increasing even when
/// the broker lost its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Offset(pub u64);

impl Offset {
    pub fn next(self) -> Offset {
        Offset(self.0 + 1)
    }

    /// Where a fresh history starts: now, in microseconds since the Unix epoch (below 2^53
    /// until the year 2255, so JavaScript numbers hold it exactly).
    pub fn fresh_base() -> Offset {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Offset(micros)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One published message as every node sees it, with its frame encoded once.
#[derive(Debug)]
pub struct Publication {
    pub channel: ChannelName,
    pub offset: Offset,
    pub data: Box<RawValue>,
    /// The `message` frame, ready to send.
    pub frame: Utf8Bytes,
}

impl Publication {
    pub fn new(channel: ChannelName, offset: Offset, data: Box<RawValue>) -> Arc<Self> {
        let frame = ServerFrame::Message {
            channel: channel.as_str(),
            offset,
            data: &data,
        }
        .encode();
        Arc::new(Self {
            channel,
            offset,
            data,
            frame,
        })
    }
}

/// A frame from a client.
#[derive(Debug)]
pub enum ClientFrame {
    /// Start receiving a channel; with `since`, first replay what came after it.
    Subscribe {
        channel: String,
        since: Option<Offset>,
    },
    Unsubscribe {
        channel: String,
    },
    /// Publish `data` (any JSON value); `id`, if given, is echoed in the answer.
    Publish {
        channel: String,
        data: Box<RawValue>,
        id: Option<Box<RawValue>>,
    },
    /// An application-level liveness check, answered with `pong` (echoing `id`). Browsers
    /// cannot see WebSocket pings, so a browser client needs a frame of its own to learn
    /// whether a quiet connection is still alive.
    Ping {
        id: Option<Box<RawValue>>,
    },
}

/// Every field any client frame may carry. Parsed as a plain struct rather than a tagged
/// enum because serde buffers tagged enums, and raw JSON (`data`) cannot be buffered.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    channel: Option<String>,
    since: Option<Offset>,
    /// `Some` for any value, `null` included; `None` only when the field is absent.
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    id: Option<Box<RawValue>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

impl ClientFrame {
    /// Parses one text frame, telling apart broken JSON, an unknown `type` and missing fields.
    pub fn parse(text: &str) -> Result<Self, ProtocolError> {
        let envelope: Envelope = serde_json::from_str(text).map_err(|err| {
            if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
                ProtocolError::new(ErrorCode::BadJson, format!("not JSON: {err}"))
            } else {
                ProtocolError::new(ErrorCode::BadFrame, format!("not a hub frame: {err}"))
            }
        })?;
        let channel = envelope.channel.ok_or_else(|| {
            ProtocolError::new(ErrorCode::BadFrame, "frame has no string `channel` field")
        });
        match envelope.kind.as_str() {
            "subscribe" => Ok(ClientFrame::Subscribe {
                channel: channel?,
                since: envelope.since,
            }),
            "unsubscribe" => Ok(ClientFrame::Unsubscribe { channel: channel? }),
            "ping" => Ok(ClientFrame::Ping { id: envelope.id }),
            "publish" => Ok(ClientFrame::Publish {
                channel: channel?,
                data: envelope.data.ok_or_else(|| {
                    ProtocolError::new(ErrorCode::BadFrame, "publish needs a `data` field")
                })?,
                id: envelope.id,
            }),
            kind => Err(ProtocolError::new(
                ErrorCode::UnknownType,
                format!(
                    "unknown frame type {kind:?}; expected subscribe, unsubscribe, publish or ping"
                ),
            )),
        }
    }
}

/// A frame to a client.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    Welcome {
        node: &'a str,
    },
    Subscribed {
        channel: &'a str,
        offset: Offset,
        recovered: bool,
    },
    Unsubscribed {
        channel: &'a str,
    },
    Message {
        channel: &'a str,
        offset: Offset,
        data: &'a RawValue,
    },
    Published {
        channel: &'a str,
        offset: Offset,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    /// The answer to a client's `ping`.
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
}

impl ServerFrame<'_> {
    pub fn encode(&self) -> Utf8Bytes {
        // Serialising these types cannot fail: every field is a string, number or raw JSON.
        serde_json::to_string(self)
            .unwrap_or_else(|_| {
                String::from(r#"{"type":"error","code":"internal","message":"encode"}"#)
            })
            .into()
    }
}

/// What went wrong with a client's frame, in a form the client can branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadJson,
    BadFrame,
    UnknownType,
    TooLarge,
    TooDeep,
    BadChannel,
    AlreadySubscribed,
    NotSubscribed,
    TooManySubscriptions,
    BrokerUnavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::TooDeep => "too_deep",
            ErrorCode::BadChannel => "bad_channel",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::BrokerUnavailable => "broker_unavailable",
        }
    }
}

/// A client mistake: answered with an `error` frame, never fatal to the connection.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_tells_broken_json_from_unknown_type_from_missing_fields() {
        assert_eq!(
            ClientFrame::parse("{nope").unwrap_err().code,
            ErrorCode::BadJson
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"dance"}"#).unwrap_err().code,
            ErrorCode::UnknownType
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"subscribe"}"#)
                .unwrap_err()
                .code,
            ErrorCode::BadFrame
        );
        assert_eq!(
            ClientFrame::parse("[1]").unwrap_err().code,
            ErrorCode::BadFrame
        );
    }

    #[test]
    fn publish_accepts_null_data_but_not_missing_data() {
        let frame = ClientFrame::parse(r#"{"type":"publish","channel":"a","data":null}"#).unwrap();
        assert!(matches!(frame, ClientFrame::Publish { data, .. } if data.get() == "null"));
        let missing = ClientFrame::parse(r#"{"type":"publish","channel":"a"}"#).unwrap_err();
        assert_eq!(missing.code, ErrorCode::BadFrame);
    }

    #[test]
    fn subscribe_with_since_parses() {
        match ClientFrame::parse(r#"{"type":"subscribe","channel":"a","since":7}"#).unwrap() {
            ClientFrame::Subscribe { channel, since } => {
                assert_eq!(channel, "a");
                assert_eq!(since, Some(Offset(7)));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn message_frame_embeds_data_verbatim() {
        let data = RawValue::from_string(r#"{"text":"hi"}"#.into()).unwrap();
        let p = Publication::new(ChannelName::parse("c").unwrap(), Offset(3), data);
        assert_eq!(
            p.frame.as_str(),
            r#"{"type":"message","channel":"c","offset":3,"data":{"text":"hi"}}"#
        );
    }

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let raw = |text: String| RawValue::from_string(text).unwrap();
        assert!(check_depth(&raw(nest(MAX_DATA_DEPTH))).is_ok());
        let deep = check_depth(&raw(nest(MAX_DATA_DEPTH + 1))).unwrap_err();
        assert_eq!(deep.code, ErrorCode::TooDeep);
        let in_string = format!(r#"{{"s":"{}\\\"{}"}}"#, "[".repeat(200), "{".repeat(200));
        assert!(check_depth(&raw(in_string)).is_ok());
        let siblings = format!("[{}]", vec![nest(MAX_DATA_DEPTH - 1); 100].join(","));
        assert!(check_depth(&raw(siblings)).is_ok());
    }

    #[test]
    fn channel_names_are_bounded_and_plain() {
        assert!(ChannelName::parse("").is_err());
        assert!(ChannelName::parse(&"a".repeat(MAX_CHANNEL_LEN + 1)).is_err());
        assert!(ChannelName::parse("a/b").is_err());
        assert!(ChannelName::parse("A-z_0.9:x").is_ok());
    }
}
