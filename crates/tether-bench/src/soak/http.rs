//! A small HTTP/1.1 client for loopback: the hubs' publish API and health check, the proxy's
//! admin API.
//!
//! One keep-alive connection per [`HttpConn`]; any failure drops it and the next request
//! opens a new one. Requests are never retried here: a publish retried after its connection
//! broke might be published twice, and the ledger wants each publish's fate known.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: no answer within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("{addr}: malformed response: {reason}")]
    Malformed { addr: SocketAddr, reason: String },
}

/// A response: status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Largest response head or body accepted.
const MAX_RESPONSE: usize = 1 << 20;

/// A keep-alive connection to one address, opened on first use.
#[derive(Debug)]
pub struct HttpConn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    timeout: Duration,
}

impl HttpConn {
    pub fn new(addr: SocketAddr, timeout: Duration) -> HttpConn {
        HttpConn {
            addr,
            stream: None,
            timeout,
        }
    }

    /// Sends one request and reads its answer, within the timeout.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Answer, HttpError> {
        let (addr, after) = (self.addr, self.timeout);
        match tokio::time::timeout(after, self.exchange(method, path, body)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                Err(HttpError::Timeout { addr, after })
            }
        }
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Answer, HttpError> {
        let addr = self.addr;
        let io = |source| HttpError::Io { addr, source };
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let stream = TcpStream::connect(addr).await.map_err(io)?;
                stream.set_nodelay(true).map_err(io)?;
                self.stream.insert(stream)
            }
        };
        let body = body.unwrap_or_default();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        stream.write_all(&request).await.map_err(io)?;
        let mut buf = Vec::with_capacity(512);
        let (status, head_len, length, close) = loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.map_err(io)?;
            if n == 0 {
                return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&buf) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let header = |name: &str| {
                        response
                            .headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .and_then(|h| std::str::from_utf8(h.value).ok())
                    };
                    let length = header("content-length").and_then(|v| v.trim().parse().ok());
                    let close =
                        header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                    break (response.code.unwrap_or(0), head_len, length, close);
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE => {}
                Ok(httparse::Status::Partial) => return Err(malformed(addr, "head too large")),
                Err(e) => return Err(malformed(addr, &e.to_string())),
            }
        };
        let mut body = buf.split_off(head_len);
        match length {
            Some(length) if length <= MAX_RESPONSE => {
                while body.len() < length {
                    let mut chunk = [0u8; 4096];
                    let n = stream.read(&mut chunk).await.map_err(io)?;
                    if n == 0 {
                        return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
                body.truncate(length);
                if close {
                    self.stream = None;
                }
            }
            Some(_) => return Err(malformed(addr, "body too large")),
            None => {
                // No length: the body runs to the end of the connection.
                stream.read_to_end(&mut body).await.map_err(io)?;
                self.stream = None;
            }
        }
        Ok(Answer { status, body })
    }
}

/// A response that is not HTTP/1.1 as expected; the caller drops the connection.
fn malformed(addr: SocketAddr, reason: &str) -> HttpError {
    HttpError::Malformed {
        addr,
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    /// Answers each request on one connection with the next of `answers`.
    async fn server(answers: Vec<&'static str>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut stream = tokio::io::BufReader::new(stream);
            for answer in answers {
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if stream.read_line(&mut line).await.unwrap() == 0 {
                        return;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                stream.read_exact(&mut body).await.unwrap();
                stream.get_mut().write_all(answer.as_bytes()).await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn answers_are_read_by_length_on_one_kept_alive_connection() {
        let addr = server(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{\"offset\":7}",
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\nno",
        ])
        .await;
        let mut conn = HttpConn::new(addr, Duration::from_secs(5));
        let first = conn
            .request("POST", "/api/publish", Some(b"{}"))
            .await
            .unwrap();
        assert_eq!(
            (first.status, first.body.as_slice()),
            (200, &b"{\"offset\":7}"[..])
        );
        let second = conn.request("GET", "/health", None).await.unwrap();
        assert_eq!((second.status, second.body.as_slice()), (503, &b"no"[..]));
    }

    #[tokio::test]
    async fn a_garbled_answer_is_an_error_not_a_panic() {
        let addr = server(vec!["SMTP ready\r\n\r\n"]).await;
        let mut conn = HttpConn::new(addr, Duration::from_secs(5));
        let err = conn.request("GET", "/", None).await.unwrap_err();
        assert!(matches!(err, HttpError::Malformed { .. }), "{err}");
    }
}
