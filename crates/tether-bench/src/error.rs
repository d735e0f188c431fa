//! What can go wrong while generating load, as values a caller can report.

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
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The TCP connection to the target failed (refused, no route, out of ports).
    #[error("connecting to {target}: {source}")]
    Connect {
        target: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The target answered the upgrade with something other than `101`, or broke the session.
    #[error("WebSocket session with {target} failed: {source}")]
    WebSocket {
        target: SocketAddr,
        #[source]
        source: Box<tungstenite::Error>,
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
    /// Not a single connection of the run could be opened; the last error says why.
    #[error("no connection to {target} could be opened: {last}")]
    NoConnections {
        target: SocketAddr,
        last: Box<BenchError>,
    },
    /// A watched process could not be read from /proc (gone, or not ours to read).
    #[error("reading /proc/{pid}: {source}")]
    Proc {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
}

impl BenchError {
    pub(crate) fn ws(target: SocketAddr, source: tungstenite::Error) -> BenchError {
        BenchError::WebSocket {
            target,
            source: Box::new(source),
        }
    }
}
