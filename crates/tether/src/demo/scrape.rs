//! Reads each running hub's `/metrics` so the page and the dashboard can show live
//! connection counts and message rates per hub. The proxy cannot count messages — after
//! the handshake it only moves bytes — so the hubs are asked.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;

/// A hub that does not answer within this long is reported without counters.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(500);
/// The exposition of one hub is a few kilobytes; anything far larger is not a hub.
const MAX_BODY: usize = 1 << 20;

/// The counters of one hub, as totals since it started; rates are the reader's deltas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HubCounters {
    /// Open WebSocket connections.
    pub connections: u64,
    /// Messages published through this hub (WebSocket and HTTP).
    pub messages_in: u64,
    /// Message frames this hub sent to its clients, live and replayed.
    pub messages_out: u64,
}

/// Why a hub's counters could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("no answer within {SCRAPE_TIMEOUT:?}")]
    Timeout,
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(#[from] axum::http::Error),
    #[error("status {0}")]
    Status(u16),
    #[error("body: {0}")]
    Body(#[from] axum::Error),
}

/// Reads and parses `GET /metrics` of the hub at `addr`.
pub async fn hub_counters(addr: SocketAddr) -> Result<HubCounters, ScrapeError> {
    tokio::time::timeout(SCRAPE_TIMEOUT, request(addr, Method::GET, "/metrics"))
        .await
        .map_err(|_| ScrapeError::Timeout)?
        .map(|text| parse(&text))
}

/// One HTTP/1.1 request on a fresh connection; the body of a 2xx answer as text.
pub(super) async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
) -> Result<String, ScrapeError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(ScrapeError::Connect)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .body(Body::empty())?;
    let response = sender.send_request(request).await?;
    if !response.status().is_success() {
        return Err(ScrapeError::Status(response.status().as_u16()));
    }
    let bytes = axum::body::to_bytes(Body::new(response.into_body()), MAX_BODY).await?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Sums the samples of the three families the demo shows; every other line is ignored.
fn parse(text: &str) -> HubCounters {
    let mut counters = HubCounters::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        let slot = match name {
            "tether_hub_connections" => &mut counters.connections,
            "tether_hub_messages_in_total" => &mut counters.messages_in,
            "tether_hub_messages_out_total" => &mut counters.messages_out,
            _ => continue,
        };
        *slot += value.max(0.0) as u64;
    }
    counters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_labelled_series_and_skip_the_rest() {
        let text = "# HELP tether_hub_connections Open WebSocket connections\n\
                    # TYPE tether_hub_connections gauge\n\
                    tether_hub_connections 3\n\
                    tether_hub_messages_in_total{source=\"ws\"} 5\n\
                    tether_hub_messages_in_total{source=\"http\"} 2\n\
                    tether_hub_messages_out_total 11\n\
                    tether_hub_subscriptions 4\n\
                    # EOF\n";
        assert_eq!(
            parse(text),
            HubCounters {
                connections: 3,
                messages_in: 7,
                messages_out: 11
            }
        );
    }

    #[test]
    fn garbage_lines_are_ignored() {
        assert_eq!(
            parse("tether_hub_connections\nnot a metric at all\ntether_hub_connections x\n"),
            HubCounters::default()
        );
    }
}
