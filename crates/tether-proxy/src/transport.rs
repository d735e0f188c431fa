//! The connection on either side of the proxy: a plain TCP stream or TLS over one.
//!
//! The head reader, the exchange and the tunnel take an [`Io`], so TLS on either side
//! changes no code path but the byte movers at the bottom. An enum rather than generics:
//! one copy of the connection code in the binary, and the plain↔plain tunnel keeps its
//! readiness-driven, zero-buffer path by matching on [`Io::Plain`] at its start (see
//! `connection::relay`). The TLS variant is boxed: a rustls session is about a kilobyte and
//! a plain connection should not carry room for one.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::prefixed::PrefixedIo;

/// A client connection after a TLS handshake on the listener. The prefix holds the bytes the
/// proxy read before handing the stream to rustls (a PROXY header's followers, none today).
pub type ClientTls = tokio_rustls::server::TlsStream<PrefixedIo<TcpStream>>;
/// A backend connection after the proxy's TLS handshake with it.
pub type BackendTls = tokio_rustls::client::TlsStream<TcpStream>;

/// The client side of a connection.
pub type ClientIo = Io<ClientTls>;
/// The backend side of a connection.
pub type BackendIo = Io<BackendTls>;

/// A plain or a TLS connection.
#[derive(Debug)]
pub enum Io<T> {
    Plain(TcpStream),
    Tls(Box<T>),
}

impl<T> Io<T> {
    /// Whether bytes on it are encrypted (the client reached an `https` listener).
    pub fn is_tls(&self) -> bool {
        matches!(self, Io::Tls(_))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Io<T> {
    /// Read and write halves usable at the same time. The plain halves are the socket's
    /// own (no lock); TLS needs `tokio::io::split`, since one session encrypts both ways.
    pub fn halves(&mut self) -> (IoRead<'_, T>, IoWrite<'_, T>) {
        match self {
            Io::Plain(tcp) => {
                let (r, w) = tcp.split();
                (IoRead::Plain(r), IoWrite::Plain(w))
            }
            Io::Tls(tls) => {
                let (r, w) = tokio::io::split(&mut **tls);
                (IoRead::Tls(r), IoWrite::Tls(w))
            }
        }
    }
}

/// The read half of an [`Io`].
pub enum IoRead<'a, T> {
    Plain(tokio::net::tcp::ReadHalf<'a>),
    Tls(tokio::io::ReadHalf<&'a mut T>),
}

/// The write half of an [`Io`].
pub enum IoWrite<'a, T> {
    Plain(tokio::net::tcp::WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<&'a mut T>),
}

/// Forwards a poll to whichever variant is live.
macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self.get_mut() {
            Self::Plain($s) => {
                #[allow(unused_mut)]
                let mut $s = Pin::new($s);
                $call
            }
            Self::Tls($s) => {
                #[allow(unused_mut)]
                let mut $s = Pin::new($s);
                $call
            }
        }
    };
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Io<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Io<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IoRead<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IoWrite<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}
