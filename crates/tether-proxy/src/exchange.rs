//! From the forwarded request head to a tunnel, or to the end of one plain exchange.
//!
//! After the head went to the backend, the rest of the request body (if any) goes up while
//! the response head comes down, `1xx` interim answers included (`100 Continue` needs both at
//! once). A `101` to a WebSocket upgrade starts the tunnel. Any other answer ends the
//! connection after exactly that response and that request body, each measured by its own
//! framing ([`Body`]): no byte the client sends after its first request reaches the backend,
//! so nothing can slip past the checks the proxy made on the first head (HAProxy closes the
//! same way in tunnel mode). The client is told so with `Connection: close`.

use std::net::IpAddr;
use std::time::Duration;

use crate::transport::{BackendIo, ClientIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::debug;

use crate::backend::{Backend, Lease};
use crate::body::{BadChunk, Body, Framing};
use crate::handshake::Reject;
use crate::response::{self, BadResponse, ResponseHead};
use crate::shared::Shared;
use crate::tunnel::FrameTracker;

/// A request whose head (and the body bytes that came with it) the backend has.
pub(crate) struct Sent {
    pub backend: BackendIo,
    pub lease: Lease,
    pub client_ip: IpAddr,
    /// A checked WebSocket upgrade (only then does a `101` start a tunnel).
    pub websocket: bool,
    /// A `HEAD` request: its response has no body whatever its headers say.
    pub head_request: bool,
    /// What is left of the request body.
    pub upload: Body,
    /// Bytes the client sent after an upgrade's head: WebSocket frames for the backend once
    /// it answers `101`, dropped otherwise.
    pub early: Vec<u8>,
    /// The sticky `Set-Cookie` line, for a response below 400.
    pub cookie: Option<String>,
    pub sent_at: Instant,
}

/// A `101`: what the tunnel needs.
pub(crate) struct Switched {
    pub backend: BackendIo,
    pub lease: Lease,
    pub client_ip: IpAddr,
    /// Where the backend→client stream is in its WebSocket frames; `None` when the tunnel
    /// carries bytes that are not frames (`tls-passthrough`).
    pub frames: Option<FrameTracker>,
}

/// How waiting for the response head failed.
#[derive(Debug, thiserror::Error)]
enum HeadError {
    #[error(transparent)]
    Bad(#[from] BadResponse),
    #[error("no response head within the response timeout")]
    Timeout,
    #[error("the backend closed before a complete response head")]
    Closed,
    #[error("response head larger than {0} bytes")]
    TooLarge(usize),
    #[error("more than {0} interim responses")]
    TooManyInterim(usize),
    #[error("backend socket: {0}")]
    Backend(std::io::Error),
    /// The client's socket failed while an interim response was written to it.
    #[error("client socket: {0}")]
    Client(std::io::Error),
}

/// How relaying one body ended badly.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error(transparent)]
    Chunk(#[from] BadChunk),
    #[error("closed before the end of the body")]
    Truncated,
    #[error("no byte for the idle timeout")]
    Idle,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// `1xx` answers relayed before the final one, at most.
const MAX_INTERIM: usize = 8;

/// Bytes moved per read of a plain body.
const BODY_CHUNK: usize = 16 * 1024;

/// Waits for the backend's answer to `sent`. Returns the tunnel's parts on `101` to an
/// upgrade; otherwise relays that one response and ends the exchange.
pub(crate) async fn run(shared: &Shared, client: &mut ClientIo, sent: Sent) -> Option<Switched> {
    let Sent {
        mut backend,
        lease,
        client_ip,
        websocket,
        head_request,
        upload,
        early,
        cookie,
        sent_at,
    } = sent;
    let request = Request {
        websocket,
        head_request,
        upload,
        cookie,
        sent_at,
    };
    match exchange(shared, client, &mut backend, lease, request).await {
        Ended::Switched {
            lease,
            response,
            head_len,
        } => {
            client.write_all(&response).await.ok()?;
            backend.write_all(&early).await.ok()?;
            // Frames the backend sent right behind its `101` went out with it: the tunnel's
            // frame tracking starts after them.
            let mut frames = FrameTracker::default();
            frames.advance(&response[head_len..]);
            Some(Switched {
                backend,
                lease,
                client_ip,
                frames: Some(frames),
            })
        }
        Ended::Answered => {
            crate::connection::linger(client).await;
            None
        }
        Ended::Abandoned => None,
    }
}

/// What [`exchange`] needs to know of the request.
struct Request {
    websocket: bool,
    head_request: bool,
    upload: Body,
    cookie: Option<String>,
    sent_at: Instant,
}

/// How an exchange ended.
enum Ended {
    /// `101` to an upgrade: the response head (cookie inserted) is for the client, then the
    /// tunnel starts.
    Switched {
        lease: Lease,
        response: Vec<u8>,
        head_len: usize,
    },
    /// One response went to the client, whose write side is shut down.
    Answered,
    /// A socket failed or the client left; nothing more to say.
    Abandoned,
}

async fn exchange(
    shared: &Shared,
    client: &mut ClientIo,
    backend: &mut BackendIo,
    lease: Lease,
    request: Request,
) -> Ended {
    let Request {
        websocket,
        head_request,
        mut upload,
        cookie,
        sent_at,
    } = request;
    let server = lease.backend().clone();
    let idle = Some(shared.config.timeouts.tunnel_idle).filter(|d| !d.is_zero());
    let deadline = sent_at + shared.config.timeouts.response;
    let max_head = shared.config.limits.max_head_bytes;

    let (mut client_rd, mut client_wr) = client.halves();
    let (mut backend_rd, mut backend_wr) = backend.halves();
    let up = relay_body(&mut client_rd, &mut backend_wr, &mut upload, idle);
    let mut up = std::pin::pin!(up);
    let mut up_result = None;
    let answer = {
        let head = read_final_head(&mut backend_rd, &mut client_wr, deadline, max_head);
        let mut head = std::pin::pin!(head);
        loop {
            tokio::select! {
                answer = &mut head => break answer,
                result = &mut up, if up_result.is_none() => {
                    if let Err(e) = &result {
                        // The client left or sent a broken body: the backend will not get
                        // a complete request, so there is nothing left to wait for.
                        debug!(error = %e, "request body not relayed");
                        return Ended::Abandoned;
                    }
                    up_result = Some(result);
                }
            }
        }
    };
    let (mut response, head) = match answer {
        Ok(answer) => answer,
        Err(HeadError::Client(_)) => return Ended::Abandoned,
        Err(e) => {
            note_failure(shared, &server, &e.to_string());
            let _ = client_wr.write_all(&bad_gateway(shared)).await;
            let _ = client_wr.shutdown().await;
            return Ended::Answered;
        }
    };
    shared
        .metrics
        .handshake_seconds
        .observe(sent_at.elapsed().as_secs_f64());
    server
        .metrics
        .record_handshake(&shared.metrics, &server.name, head.status);
    let cookie = cookie.filter(|_| head.status < 400);
    if head.status == 101 {
        if !websocket {
            note_failure(shared, &server, "101 to a request that was not an upgrade");
            let _ = client_wr.write_all(&bad_gateway(shared)).await;
            let _ = client_wr.shutdown().await;
            return Ended::Answered;
        }
        server.record_success(shared.config.health.rise);
        let before = response.len();
        if let Some(line) = &cookie {
            crate::response::insert_header(&mut response, head.len, line);
        }
        let head_len = head.len + (response.len() - before);
        return Ended::Switched {
            lease,
            response,
            head_len,
        };
    }
    // Only answers to WebSocket upgrades tell whether the backend takes WebSockets; a plain
    // request's 5xx is the application's (a hub's publish while its broker is away).
    if websocket {
        if head.status >= 500 {
            note_failure(shared, &server, "5xx response to a handshake");
        } else {
            server.record_success(shared.config.health.rise);
        }
    }
    // The response is not a tunnel: it no longer counts as a connection to the backend.
    drop(lease);
    let framing = if head_request {
        Framing::Empty
    } else {
        head.framing
    };
    let mut download = Body::new(framing);
    let closing = crate::response::closing_response_head(&response, &head, cookie.as_deref());
    let after_head = &response[head.len..];
    let result: Result<(), BodyError> = async {
        client_wr.write_all(&closing).await?;
        let take = download.feed(after_head)?;
        client_wr.write_all(&after_head[..take]).await?;
        let down = relay_body(&mut backend_rd, &mut client_wr, &mut download, idle);
        let mut down = std::pin::pin!(down);
        // The response may start before the request body has all gone up (an early `413`,
        // a streamed answer): both go on until the response is complete.
        loop {
            tokio::select! {
                result = &mut down => return result,
                result = &mut up, if up_result.is_none() => up_result = Some(result),
            }
        }
    }
    .await;
    if let Err(e) = result {
        debug!(backend = %server.name, error = %e, "response not relayed completely");
    }
    debug!(backend = %server.name, status = head.status, "request done");
    let _ = client_wr.shutdown().await;
    Ended::Answered
}

fn bad_gateway(shared: &Shared) -> Vec<u8> {
    shared.metrics.reject(Reject::BackendFailed.metric());
    Reject::BackendFailed.response(shared.config.limits.retry_after_secs)
}

pub(crate) fn note_failure(shared: &Shared, backend: &Backend, cause: &str) {
    debug!(backend = %backend.name, cause, "backend failure");
    backend.metrics.failures.inc();
    let transition = backend.record_failure(shared.config.health.fall);
    crate::health::log_transition(
        backend,
        transition,
        Some(std::io::Error::other(cause.to_owned())),
    );
}

/// Reads response heads until a final one (not `1xx`, or `101`), relaying interim ones to
/// the client. Returns the bytes read (the head and whatever followed it) and the head.
async fn read_final_head<R, W>(
    backend: &mut R,
    client: &mut W,
    deadline: Instant,
    max_head: usize,
) -> Result<(Vec<u8>, ResponseHead), HeadError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(512);
    let mut interim = 0;
    loop {
        if let Some(head) = response::parse_response(&buf)? {
            if head.status == 101 || !(100..200).contains(&head.status) {
                return Ok((buf, head));
            }
            interim += 1;
            if interim > MAX_INTERIM {
                return Err(HeadError::TooManyInterim(MAX_INTERIM));
            }
            client
                .write_all(&buf[..head.len])
                .await
                .map_err(HeadError::Client)?;
            buf.drain(..head.len);
            continue;
        }
        if buf.len() > max_head {
            return Err(HeadError::TooLarge(max_head));
        }
        match tokio::time::timeout_at(deadline, backend.read_buf(&mut buf)).await {
            Err(_) => return Err(HeadError::Timeout),
            Ok(Ok(0)) => return Err(HeadError::Closed),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(HeadError::Backend(e)),
        }
    }
}

/// Moves the bytes of one body from `src` to `dst` until its end; what follows the end is
/// read and dropped, never forwarded.
async fn relay_body<R, W>(
    src: &mut R,
    dst: &mut W,
    body: &mut Body,
    idle: Option<Duration>,
) -> Result<(), BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if body.is_done() {
        return Ok(());
    }
    let mut buf = vec![0u8; BODY_CHUNK];
    while !body.is_done() {
        let read = src.read(&mut buf);
        let n = match idle {
            Some(limit) => tokio::time::timeout(limit, read)
                .await
                .map_err(|_| BodyError::Idle)??,
            None => read.await?,
        };
        if n == 0 {
            if body.until_close() {
                break;
            }
            return Err(BodyError::Truncated);
        }
        let take = body.feed(&buf[..n])?;
        dst.write_all(&buf[..take]).await?;
    }
    dst.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn interim_answers_are_relayed_and_the_final_one_returned() {
        let (mut backend, mut theirs) = tokio::io::duplex(4096);
        let (mut client, mut ours) = tokio::io::duplex(4096);
        theirs
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\nno")
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let (buf, head) = read_final_head(&mut backend, &mut ours, deadline, 16384)
            .await
            .unwrap();
        assert_eq!(head.status, 404);
        assert_eq!(&buf[head.len..], b"no");
        drop(ours);
        let mut relayed = Vec::new();
        client.read_to_end(&mut relayed).await.unwrap();
        assert_eq!(relayed, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[tokio::test]
    async fn a_body_relay_stops_at_the_end_of_the_body() {
        let (mut src, mut peer) = tokio::io::duplex(4096);
        let (mut dst, mut out) = tokio::io::duplex(4096);
        peer.write_all(b"3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut body = Body::new(Framing::Chunked);
        relay_body(&mut src, &mut dst, &mut body, None)
            .await
            .unwrap();
        drop(dst);
        let mut got = Vec::new();
        out.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"3\r\nabc\r\n0\r\n\r\n");
    }
}
