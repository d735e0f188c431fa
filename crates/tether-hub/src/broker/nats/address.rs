//! Where the NATS broker lives and what it names: the `nats://` URL, the stream and the
//! subjects of each channel.

use crate::broker::BrokerError;
use crate::protocol::ChannelName;

/// The port NATS listens on when a URL names none.
const DEFAULT_PORT: u16 = 4222;

/// A parsed `nats://[user:password@]host[:port][,host[:port]…][?stream=NAME]`.
#[derive(Clone)]
pub(super) struct NatsUrl {
    /// `host:port` of each server, in the URL's order.
    pub servers: Vec<String>,
    pub credentials: Option<(String, String)>,
    /// The stream named by `?stream=`, if any.
    pub stream: Option<String>,
}

/// Printed without the password, so a URL can go into logs and errors.
impl std::fmt::Debug for NatsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsUrl")
            .field("servers", &self.servers)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .field("stream", &self.stream)
            .finish()
    }
}

fn bad(reason: impl Into<String>) -> BrokerError {
    BrokerError::BadUrl {
        broker: "nats",
        reason: reason.into(),
    }
}

impl NatsUrl {
    /// Parses the URL; an error names what is wrong and never repeats the password.
    pub fn parse(url: &str) -> Result<Self, BrokerError> {
        let rest = url
            .strip_prefix("nats://")
            .ok_or_else(|| bad("expected nats://host:port"))?;
        let (authority, query) = match rest.split_once('?') {
            Some((authority, query)) => (authority, Some(query)),
            None => (rest, None),
        };
        let authority = authority.trim_end_matches('/');
        if authority.contains('/') {
            return Err(bad(
                "a NATS URL has no path (name the stream with ?stream=NAME)",
            ));
        }
        let (credentials, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => {
                let (user, password) = userinfo
                    .split_once(':')
                    .ok_or_else(|| bad("credentials must be user:password@"))?;
                if user.is_empty() {
                    return Err(bad("the user name before ':' is empty"));
                }
                (Some((user.to_owned(), password.to_owned())), hosts)
            }
            None => (None, authority),
        };
        let servers = hosts
            .split(',')
            .map(server)
            .collect::<Result<Vec<_>, _>>()?;
        let mut stream = None;
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            match pair.split_once('=') {
                Some(("stream", name)) => {
                    check_stream_name(name)?;
                    stream = Some(name.to_owned());
                }
                _ => {
                    return Err(bad(format!(
                        "unknown parameter {pair:?} (the only one is stream=NAME)"
                    )))
                }
            }
        }
        Ok(Self {
            servers,
            credentials,
            stream,
        })
    }
}

/// One `host[:port]`, with the default port filled in.
fn server(text: &str) -> Result<String, BrokerError> {
    if text.is_empty() {
        return Err(bad("a host is missing"));
    }
    let (host, port) = match text.rsplit_once(':') {
        // An IPv6 address without a port is all colons inside brackets.
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (text, None),
    };
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(bad(format!("bad host in {text:?}")));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad(format!("bad port {port:?}")))?,
    };
    Ok(format!("{host}:{port}"))
}

/// JetStream refuses stream names with these; saying so here beats a refusal at the first
/// publish.
fn check_stream_name(name: &str) -> Result<(), BrokerError> {
    let bad_char = |c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\');
    if name.is_empty() || name.len() > 255 || name.chars().any(bad_char) {
        return Err(bad(format!(
            "stream name {name:?} must be 1..=255 characters without whitespace, '.', '*', '>', '/' or '\\'"
        )));
    }
    Ok(())
}

/// The stream and subjects of one hub prefix `P`:
///
/// | subject            | carries                                               |
/// |--------------------|-------------------------------------------------------|
/// | `P.c.<channel>`    | publishes, captured by the stream (history)           |
/// | `P.live.<channel>` | what the stream republishes once stored (live feed)   |
///
/// `<channel>` is the channel name with `.` written `%2E`: every other character a channel
/// may have (`A-Z a-z 0-9 _ - : # ,`) is fine inside one subject token, `%` is not one of
/// them, so the encoding is one-to-one and a channel is always exactly one token.
#[derive(Debug, Clone)]
pub(super) struct Subjects {
    pub stream: String,
    prefix: String,
}

impl Subjects {
    /// The subjects under `prefix` (the hub's key prefix), in `stream` or, by default,
    /// `TETHER_<prefix>`.
    pub fn new(prefix: &str, stream: Option<String>) -> Result<Self, BrokerError> {
        let bad_char = |c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '%');
        if prefix.is_empty() || prefix.chars().any(bad_char) {
            return Err(bad(format!(
                "prefix {prefix:?} must be one NATS subject token: no whitespace, '.', '*', '>' or '%'"
            )));
        }
        let stream = match stream {
            Some(stream) => stream,
            None => {
                let stream = format!("TETHER_{prefix}");
                check_stream_name(&stream)?;
                stream
            }
        };
        Ok(Self {
            stream,
            prefix: prefix.to_owned(),
        })
    }

    pub fn history(&self, channel: &ChannelName) -> String {
        format!("{}.c.{}", self.prefix, encode(channel))
    }

    pub fn live(&self, channel: &ChannelName) -> String {
        format!("{}.live.{}", self.prefix, encode(channel))
    }

    /// What the stream captures.
    pub fn history_all(&self) -> String {
        format!("{}.c.>", self.prefix)
    }

    /// Where the stream republishes what it stored.
    pub fn live_all(&self) -> String {
        format!("{}.live.>", self.prefix)
    }

    /// The channel a history subject stands for, if it is one of ours.
    #[cfg(test)]
    pub fn channel_of(&self, subject: &str) -> Option<ChannelName> {
        let token = subject
            .strip_prefix(&self.prefix)?
            .strip_prefix(".c.")
            .or_else(|| {
                subject
                    .strip_prefix(&self.prefix)
                    .and_then(|s| s.strip_prefix(".live."))
            })?;
        ChannelName::parse(&token.replace("%2E", ".")).ok()
    }
}

fn encode(channel: &ChannelName) -> std::borrow::Cow<'_, str> {
    let name = channel.as_str();
    if name.contains('.') {
        name.replace('.', "%2E").into()
    } else {
        name.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_servers_credentials_and_stream() {
        let url = NatsUrl::parse("nats://127.0.0.1:4222").unwrap();
        assert_eq!(url.servers, ["127.0.0.1:4222"]);
        assert!(url.credentials.is_none() && url.stream.is_none());
        let url = NatsUrl::parse("nats://me:s3cret@a,b:4333/?stream=HUB").unwrap();
        assert_eq!(url.servers, ["a:4222", "b:4333"]);
        assert_eq!(url.credentials, Some(("me".into(), "s3cret".into())));
        assert_eq!(url.stream.as_deref(), Some("HUB"));
        assert!(!format!("{url:?}").contains("s3cret"));
    }

    #[test]
    fn bad_urls_say_what_is_wrong_without_the_password() {
        for (url, says) in [
            ("nats://", "host is missing"),
            ("nats://h:99999", "bad port"),
            ("nats://h:0", "bad port"),
            ("nats://h/path", "no path"),
            ("nats://h?stream=a.b", "stream name"),
            ("nats://h?x=1", "unknown parameter"),
            ("nats://:s3cret@h", "user name"),
            ("nats://u:s3cret@h:x", "bad port"),
        ] {
            let error = NatsUrl::parse(url).unwrap_err().to_string();
            assert!(error.contains(says), "{url}: {error}");
            assert!(!error.contains("s3cret"), "{url}: {error}");
        }
    }

    #[test]
    fn every_valid_channel_is_one_subject_token_and_maps_back() {
        let subjects = Subjects::new("tt", None).unwrap();
        assert_eq!(subjects.stream, "TETHER_tt");
        for name in ["chat", "a.b.c", "x:y#z,w", "_-.", "...."] {
            let channel = ChannelName::parse(name).unwrap();
            let subject = subjects.history(&channel);
            let token = subject.strip_prefix("tt.c.").unwrap();
            assert!(!token.contains(['.', '*', '>', ' ']), "{subject}");
            assert_eq!(subjects.channel_of(&subject), Some(channel.clone()));
            assert_eq!(subjects.channel_of(&subjects.live(&channel)), Some(channel));
        }
        assert!(
            ChannelName::parse("a%2Eb").is_err(),
            "no channel is spelled like an encoded one"
        );
    }

    #[test]
    fn prefixes_must_be_one_token() {
        assert!(Subjects::new("a.b", None).is_err());
        assert!(Subjects::new("", None).is_err());
        assert!(Subjects::new("tt-x_1", None).is_ok());
    }
}
