//! The TLS alerts the proxy writes itself, for ClientHellos it refuses before rustls sees them.
//!
//! The proxy reads the ClientHello with its own bounded parser ([`hello`](super::hello)), so
//! rustls never sees the hellos refused there and cannot answer them. A TLS client that is
//! refused deserves to learn why (`protocol_version` tells an SSLv3 client it is too old;
//! `decode_error` tells a broken one its bytes were wrong) instead of guessing from a bare
//! close, and a plaintext alert is the one thing a client may receive before any handshake.
//! Not every refusal gets one: plain HTTP and SSL 2.0-format hellos would read the record as
//! garbage, so those connections are only closed.
//!
//! Failures inside rustls (an untrusted client certificate, no common version) are answered
//! by rustls itself; the listener makes sure that alert is written before the close.

use rustls::AlertDescription;

use super::hello::{HelloError, LegacyVersion, ReadHelloError};

const CONTENT_ALERT: u8 = 21;
const LEVEL_FATAL: u8 = 2;

/// A fatal alert in a plaintext record, as sent before any keys exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alert {
    /// The record's version: the client's own record version where it sent one the alert
    /// can carry (an old client may refuse a record from a newer version), else TLS 1.2's.
    version: [u8; 2],
    description: AlertDescription,
}

impl Alert {
    pub fn description(&self) -> AlertDescription {
        self.description
    }

    /// The record as it goes on the wire: `15 03 0x 00 02 02 <description>`.
    pub fn record(&self) -> [u8; 7] {
        let [major, minor] = self.version;
        [
            CONTENT_ALERT,
            major,
            minor,
            0,
            2,
            LEVEL_FATAL,
            u8::from(self.description),
        ]
    }

    /// The alert for a ClientHello refused by the proxy's reader, given the bytes read so far;
    /// `None` when the client would not understand one (not TLS, SSL 2.0) or is gone.
    pub fn for_refused_hello(error: &ReadHelloError, read: &[u8]) -> Option<Alert> {
        let ReadHelloError::Hello(error) = error else {
            return None;
        };
        let (version, description) = match error {
            HelloError::NotTls(_) | HelloError::Legacy(LegacyVersion::Ssl2) => return None,
            HelloError::Legacy(LegacyVersion::Ssl3) => ([3, 0], AlertDescription::ProtocolVersion),
            // What rustls answers a message it cannot decode, or one past its size limit.
            HelloError::TooLarge { .. } | HelloError::Malformed(_) | HelloError::Truncated(_) => {
                (record_version(read), AlertDescription::DecodeError)
            }
        };
        Some(Alert {
            version,
            description,
        })
    }

    /// For a `tls-passthrough` listener refusing a ClientHello without a server name: RFC 8446
    /// §9.2 asks a server that requires the extension to say `missing_extension`.
    pub fn missing_server_name(read: &[u8]) -> Alert {
        Alert {
            version: record_version(read),
            description: AlertDescription::MissingExtension,
        }
    }
}

/// The version of the client's first record if it is TLS 1.0 to 1.2 (1.3 clients send 1.0 or
/// 1.2 there), else 1.2.
fn record_version(read: &[u8]) -> [u8; 2] {
    match read {
        [22, 3, minor @ 1..=3, ..] => [3, *minor],
        _ => [3, 3],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(error: HelloError, read: &[u8]) -> Option<[u8; 7]> {
        Alert::for_refused_hello(&ReadHelloError::Hello(error), read).map(|a| a.record())
    }

    #[test]
    fn refused_hellos_get_the_alert_rustls_would_send_or_none() {
        assert_eq!(refused(HelloError::NotTls(b'G'), b"GET /"), None);
        assert_eq!(
            refused(HelloError::Legacy(LegacyVersion::Ssl2), &[0x80, 0x2e, 1]),
            None
        );
        assert_eq!(
            refused(HelloError::Legacy(LegacyVersion::Ssl3), &[22, 3, 0, 0, 45]),
            Some([21, 3, 0, 0, 2, 2, 70])
        );
        assert_eq!(
            refused(HelloError::TooLarge { limit: 16384 }, &[22, 3, 1, 0x40, 0]),
            Some([21, 3, 1, 0, 2, 2, 50])
        );
        assert_eq!(
            refused(HelloError::Malformed("x"), &[22, 3, 3]),
            Some([21, 3, 3, 0, 2, 2, 50])
        );
        assert_eq!(
            refused(HelloError::Truncated("x"), &[22, 3, 9]),
            Some([21, 3, 3, 0, 2, 2, 50]),
            "a record version no TLS client uses is not echoed"
        );
        assert_eq!(
            Alert::for_refused_hello(&ReadHelloError::Closed(3), &[22, 3, 1]),
            None
        );
        assert_eq!(
            Alert::missing_server_name(&[22, 3, 1]).record(),
            [21, 3, 1, 0, 2, 2, 109]
        );
    }
}
