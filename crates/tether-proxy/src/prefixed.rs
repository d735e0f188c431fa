//! Bytes read before a switch of protocol, given back to whoever reads next.
//!
//! The proxy often has to read before it knows what it is talking to: a PROXY protocol header,
//! a peeked TLS ClientHello (to route a passthrough listener on its SNI), the head of a request
//! for the admin pages. Those bytes belong to the next layer — the TLS server, the backend,
//! the HTTP server — so [`PrefixedIo`] replays them first and then reads the stream itself.
//! Writes go straight through: nothing is ever written ahead of time.
//!
//! Once the prefix has been read it is released, so a long-lived connection wrapped in a
//! `PrefixedIo` holds no buffer for the rest of its life.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream that first yields `prefix`, then whatever `io` yields.
///
/// ```
/// # async fn demo() -> std::io::Result<()> {
/// use tokio::io::AsyncReadExt;
/// let inner: &[u8] = b" world";
/// let mut io = tether_proxy::prefixed::PrefixedIo::new("hello", inner);
/// let mut all = String::new();
/// io.read_to_string(&mut all).await?;
/// assert_eq!(all, "hello world");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PrefixedIo<T> {
    prefix: Bytes,
    io: T,
}

impl<T> PrefixedIo<T> {
    /// Wraps `io` so that reads return `prefix` before anything from `io`.
    pub fn new(prefix: impl Into<Bytes>, io: T) -> PrefixedIo<T> {
        PrefixedIo {
            prefix: prefix.into(),
            io,
        }
    }

    /// The bytes not yet replayed.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.io
    }

    /// The stream and the bytes not yet replayed, which the caller must not lose.
    pub fn into_parts(self) -> (Bytes, T) {
        (self.prefix, self.io)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for PrefixedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.prefix.is_empty() {
            let n = buf.remaining().min(this.prefix.len());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                // An advanced `Bytes` still keeps its allocation alive; let it go.
                this.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn prefix_is_replayed_before_the_socket_and_nothing_is_lost() {
        let (mut peer, ours) = pair().await;
        peer.write_all(b"-socket").await.unwrap();
        peer.shutdown().await.unwrap();
        let mut io = PrefixedIo::new(&b"prefix"[..], ours);
        let mut got = Vec::new();
        io.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"prefix-socket");
    }

    #[tokio::test]
    async fn small_reads_split_the_prefix_without_reordering() {
        let inner: &[u8] = b"DEF";
        let mut io = PrefixedIo::new(&b"ABC"[..], inner);
        let mut one = [0u8; 2];
        assert_eq!(io.read(&mut one).await.unwrap(), 2);
        assert_eq!(&one, b"AB");
        assert_eq!(io.prefix(), b"C");
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"CDEF");
    }

    #[tokio::test]
    async fn a_consumed_prefix_is_released() {
        let inner: &[u8] = b"";
        let mut io = PrefixedIo::new(vec![7u8; 4096], inner);
        let mut buf = vec![0u8; 8192];
        assert_eq!(io.read(&mut buf).await.unwrap(), 4096);
        let (prefix, _) = io.into_parts();
        assert!(prefix.is_empty());
        // `Bytes::new()` is static: no allocation is kept behind an empty prefix.
        assert_eq!(prefix.as_ptr(), Bytes::new().as_ptr());
    }

    #[tokio::test]
    async fn writes_pass_straight_through_while_a_prefix_is_pending() {
        let (mut peer, ours) = pair().await;
        let mut io = PrefixedIo::new(&b"unread"[..], ours);
        io.write_all(b"reply").await.unwrap();
        let bufs = [IoSlice::new(b"-a"), IoSlice::new(b"-b")];
        let sent = io.write_vectored(&bufs).await.unwrap();
        assert!(sent > 0);
        io.write_all(&b"-a-b"[sent..]).await.unwrap();
        io.shutdown().await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"reply-a-b");
        assert_eq!(
            io.prefix(),
            b"unread",
            "writing consumed nothing of the prefix"
        );
    }

    #[tokio::test]
    async fn an_empty_prefix_reads_the_stream_directly() {
        let inner: &[u8] = b"direct";
        let mut io = PrefixedIo::new(Bytes::new(), inner);
        let mut got = String::new();
        io.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "direct");
    }
}
