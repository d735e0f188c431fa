//! What can go wrong while generating load, as values a caller can report.
//!
//! Messages name what failed; the underlying error is the `source`, so a report that walks
//! the chain (anyhow's `{:#}`) says both without repeating either.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_tungstenite::tungstenite;

/// Every failure of the load generator. Each variant names the target or process involved so
/// the message on stderr says where to look.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The `--url`/`--hub` argument is not a usable `ws://host:port/path` URL.
    #[error("invalid target URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// A flag combination that cannot produce a meaningful run.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An echo listener could not bind its address.
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The TCP connection to the target failed (refused, no route, out of ports).
    #[error("cannot connect to {target}")]
    Connect {
        target: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The target answered the upgrade with something other than `101`, or broke the session.
    #[error("WebSocket session with {target} failed")]
    WebSocket {
        target: SocketAddr,
        #[source]
        source: Box<tungstenite::Error>,
    },
    /// The TLS handshake with a `wss://` target failed (untrusted certificate, no common
    /// version or suite, the server closed).
    #[error("TLS handshake with {target} failed")]
    Tls {
        target: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The `--ca` file could not be read or holds no usable CA certificate.
    #[error("cannot use {} as --ca: {reason}", file.display())]
    Ca {
        file: std::path::PathBuf,
        reason: String,
    },
    /// A step waited longer than its bound.
    #[error("{what} timed out after {after:?}")]
    Timeout { what: &'static str, after: Duration },
    /// The server spoke, but not the protocol the chosen flavour expects.
    #[error("unexpected frame while waiting for {expected}: {got:?}")]
    UnexpectedFrame { expected: &'static str, got: String },
    /// The server closed the session where the run needed it open.
    #[error("{target} closed the session while waiting for {expected}")]
    Closed {
        target: SocketAddr,
        expected: &'static str,
    },
    /// Not a single connection of the run could be opened; the first failure says why.
    #[error("no connection to {target} could be opened")]
    NoConnections {
        target: SocketAddr,
        #[source]
        first: Box<BenchError>,
    },
    /// A task of the generator itself died (a bug in the generator, not the server's fault).
    #[error("a {what} task of the generator failed")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// The generator could not start a thread or runtime of its own.
    #[error("cannot start a generator thread")]
    Runtime(#[source] std::io::Error),
    /// The publisher's thread ended while a step was asked of it (its task panicked).
    #[error("the publisher thread ended before its step was done")]
    PublisherGone,
    /// A file or process the soak needs could not be made or started.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A step of the soak went wrong: a process did not come up, the proxy refused an
    /// admin call, subscribers could not subscribe.
    #[error("soak: {0}")]
    Soak(String),
    /// A watched process could not be read from /proc (gone, or not ours to read).
    #[error("cannot read /proc/{pid} (is the process gone?)")]
    Proc {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
}

impl BenchError {
    /// The message and every cause after it, for the one-line `first_error` of a report.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }

    pub(crate) fn ws(target: SocketAddr, source: tungstenite::Error) -> BenchError {
        BenchError::WebSocket {
            target,
            source: Box::new(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_the_failure_and_its_cause_once_each() {
        let err = BenchError::Connect {
            target: "127.0.0.1:1".parse().unwrap(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(
            err.chain(),
            "cannot connect to 127.0.0.1:1: connection refused"
        );
    }
}
