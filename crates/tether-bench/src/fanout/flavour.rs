//! The two hub dialects the fan-out run speaks: tether's JSON frames and Socket.IO (Engine.IO
//! v4 over WebSocket). Everything else in the run is shared, so both are measured the same way.

use std::sync::LazyLock;

use futures_util::{SinkExt, StreamExt};
use memchr::memmem;
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

use crate::client::Ws;
use crate::error::BenchError;
use crate::target::TargetUrl;

/// Which server protocol the subscribers and the publisher speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    /// `tether hub`: `subscribe {channel}` / `publish {channel, data}` / `message {…}` frames.
    Tether,
    /// A Socket.IO server (bench/socketio/server.js): events `subscribe` (acknowledged),
    /// `publish {channel, data}` and `message {channel, data}`.
    Socketio,
}

/// What a text frame from the server means to the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// A published message reached this subscriber.
    Delivery { seq: u64, sent_us: u64 },
    /// Engine.IO heartbeat; must be answered or the server drops the session.
    Ping,
    /// The server refused something (tether `error` frame).
    Error,
    /// Anything else (welcome, acknowledgements of publishes).
    Other,
}

/// The Socket.IO acknowledgement id used for `subscribe`.
const SUBSCRIBE_ACK_ID: u32 = 1;

impl Flavour {
    /// The WebSocket endpoint on a hub given as `ws://host:port` (an explicit path is kept).
    pub fn endpoint(self, hub: &TargetUrl) -> TargetUrl {
        if !hub.has_default_path() {
            return hub.clone();
        }
        match self {
            Flavour::Tether => hub.with_path("/ws"),
            Flavour::Socketio => hub.with_path("/socket.io/?EIO=4&transport=websocket"),
        }
    }

    /// Brings a fresh session to the point where it can subscribe or publish. Socket.IO needs
    /// the Engine.IO open packet and a namespace connect; tether needs nothing.
    pub async fn join(self, ws: &mut Ws, hub: &TargetUrl) -> Result<(), BenchError> {
        match self {
            Flavour::Tether => Ok(()),
            Flavour::Socketio => {
                expect_text(ws, hub, "Engine.IO open packet", |t| t.starts_with('0')).await?;
                send(ws, hub, "40".into()).await?;
                expect_text(ws, hub, "Socket.IO namespace connect", |t| {
                    t.starts_with("40")
                })
                .await
            }
        }
    }

    /// Subscribes to `channel` and waits until the server confirms it.
    pub async fn subscribe(
        self,
        ws: &mut Ws,
        hub: &TargetUrl,
        channel: &str,
    ) -> Result<(), BenchError> {
        let channel_json = serde_json::to_string(channel).expect("a string serialises");
        let (frame, expected): (String, &'static str) = match self {
            Flavour::Tether => (
                format!(r#"{{"type":"subscribe","channel":{channel_json}}}"#),
                "subscribed",
            ),
            Flavour::Socketio => (
                format!(r#"42{SUBSCRIBE_ACK_ID}["subscribe",{channel_json}]"#),
                "subscribe acknowledgement",
            ),
        };
        send(ws, hub, frame).await?;
        let ack = format!("43{SUBSCRIBE_ACK_ID}");
        expect_text(ws, hub, expected, |t| match self {
            Flavour::Tether => json_type(t) == Some("subscribed"),
            Flavour::Socketio => t.starts_with(&ack),
        })
        .await
    }

    /// The frame that publishes message number `seq`, stamped with its scheduled send time.
    pub fn publish(self, channel_json: &str, seq: u64, sent_us: u64) -> String {
        let data = format!(r#"{{"seq":{seq},"t":{sent_us}}}"#);
        match self {
            Flavour::Tether => {
                format!(r#"{{"type":"publish","channel":{channel_json},"data":{data}}}"#)
            }
            Flavour::Socketio => {
                format!(r#"42["publish",{{"channel":{channel_json},"data":{data}}}]"#)
            }
        }
    }

    /// The answer to an Engine.IO ping.
    pub fn pong(self) -> &'static str {
        "3"
    }

    /// Classifies a text frame without a full JSON parse: at a million deliveries a second the
    /// generator's parsing would otherwise be what is measured.
    pub fn classify(self, text: &str) -> Incoming {
        match self {
            Flavour::Socketio if text == "2" => return Incoming::Ping,
            Flavour::Socketio if !text.starts_with("42[\"message\"") => return Incoming::Other,
            _ => {}
        }
        if let Some((seq, sent_us)) = stamp(text) {
            return Incoming::Delivery { seq, sent_us };
        }
        match self {
            Flavour::Tether if json_type(text) == Some("error") => Incoming::Error,
            _ => Incoming::Other,
        }
    }
}

/// The `seq` and `t` numbers of a delivery's data, found with prebuilt searchers: a plain
/// `str::find` sets its searcher up on every call, which was a sixth of the generator's CPU.
fn stamp(text: &str) -> Option<(u64, u64)> {
    static SEQ: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new("\"seq\""));
    static T: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new("\"t\""));
    let at = SEQ.find(text.as_bytes())? + SEQ.needle().len();
    let (seq, rest) = number_after_colon(&text[at..])?;
    let at = T.find(rest.as_bytes())? + T.needle().len();
    let (sent_us, _) = number_after_colon(&rest[at..])?;
    Some((seq, sent_us))
}

/// The value of the top-level `type` field, when the frame is a JSON object that has one.
fn json_type(text: &str) -> Option<&str> {
    let at = text.find("\"type\"")? + "\"type\"".len();
    let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(&rest[..rest.find('"')?])
}

/// The unsigned integer after a colon (whitespace allowed), and the text after it.
fn number_after_colon(text: &str) -> Option<(u64, &str)> {
    let rest = text.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    Some((rest[..end].parse().ok()?, &rest[end..]))
}

async fn send(ws: &mut Ws, hub: &TargetUrl, frame: String) -> Result<(), BenchError> {
    ws.send(Message::text(frame))
        .await
        .map_err(|e| BenchError::ws(hub.addr(), e))
}

/// Reads until a text frame satisfies `wanted`, answering Engine.IO pings on the way.
async fn expect_text(
    ws: &mut Ws,
    hub: &TargetUrl,
    expected: &'static str,
    wanted: impl Fn(&str) -> bool,
) -> Result<(), BenchError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                if wanted(t.as_str()) {
                    return Ok(());
                }
                if t.as_str() == "2" {
                    send(ws, hub, "3".into()).await?;
                } else if json_type(t.as_str()) == Some("error") || t.as_str().starts_with("44") {
                    return Err(BenchError::UnexpectedFrame {
                        expected,
                        got: t.to_string(),
                    });
                }
            }
            Some(Ok(Message::Close(_))) | None => {
                return Err(BenchError::Closed {
                    target: hub.addr(),
                    expected,
                })
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(BenchError::ws(hub.addr(), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tether_message_frame_is_a_delivery() {
        let frame = r#"{"type":"message","channel":"c","offset":7,"data":{"seq":41,"t":123456}}"#;
        assert_eq!(
            Flavour::Tether.classify(frame),
            Incoming::Delivery {
                seq: 41,
                sent_us: 123456
            }
        );
    }

    #[test]
    fn spaced_json_is_still_understood() {
        let frame = r#"{"type": "message", "data": {"seq": 3, "t": 9}}"#;
        assert_eq!(
            Flavour::Tether.classify(frame),
            Incoming::Delivery { seq: 3, sent_us: 9 }
        );
    }

    #[test]
    fn tether_error_and_welcome_are_not_deliveries() {
        assert_eq!(
            Flavour::Tether.classify(r#"{"type":"error","code":"bad","message":"x"}"#),
            Incoming::Error
        );
        assert_eq!(
            Flavour::Tether.classify(r#"{"type":"welcome","node":"n1"}"#),
            Incoming::Other
        );
    }

    #[test]
    fn socketio_event_and_ping_are_recognised() {
        let frame = r#"42["message",{"channel":"c","data":{"seq":5,"t":77}}]"#;
        assert_eq!(
            Flavour::Socketio.classify(frame),
            Incoming::Delivery {
                seq: 5,
                sent_us: 77
            }
        );
        assert_eq!(Flavour::Socketio.classify("2"), Incoming::Ping);
        assert_eq!(Flavour::Socketio.classify("431[\"ok\"]"), Incoming::Other);
    }

    #[test]
    fn publish_frames_round_trip_through_classify() {
        for flavour in [Flavour::Tether, Flavour::Socketio] {
            let frame = flavour.publish("\"c\"", 12, 34);
            assert!(
                serde_json::from_str::<serde_json::Value>(frame.trim_start_matches("42")).is_ok()
            );
        }
    }

    #[test]
    fn endpoint_defaults_per_flavour_and_keeps_explicit_paths() {
        let bare: TargetUrl = "ws://127.0.0.1:7000".parse().unwrap();
        assert_eq!(Flavour::Tether.endpoint(&bare).path_and_query(), "/ws");
        assert!(Flavour::Socketio
            .endpoint(&bare)
            .path_and_query()
            .starts_with("/socket.io/?EIO=4"));
        let explicit: TargetUrl = "ws://127.0.0.1:7000/hub".parse().unwrap();
        assert_eq!(Flavour::Tether.endpoint(&explicit).path_and_query(), "/hub");
    }
}
