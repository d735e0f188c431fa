//! Loopback source addresses, each standing in for a distinct client IP.
//!
//! Linux routes all of 127.0.0.0/8 to the loopback device, so binding a socket to 127.0.0.N
//! before connecting gives each "client" its own address and its own ephemeral-port range.
//! That both mimics many clients and keeps handshake-rate runs from running out of ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

use crate::error::BenchError;

/// A fixed set of 127.x source addresses, handed out round-robin by connection index.
#[derive(Debug, Clone)]
pub struct SourcePool {
    addrs: Vec<Ipv4Addr>,
}

impl SourcePool {
    /// `count` consecutive addresses starting at 127.0.0.1 (1 ≤ count ≤ 250).
    pub fn loopback(count: u8) -> Result<SourcePool, BenchError> {
        if count == 0 || count > 250 {
            return Err(BenchError::InvalidArgument(format!(
                "--sources must be between 1 and 250, got {count}"
            )));
        }
        Ok(SourcePool {
            addrs: (0..count)
                .map(|i| Ipv4Addr::new(127, 0, 0, 1 + i))
                .collect(),
        })
    }

    /// The source for connection number `index`.
    pub fn for_connection(&self, index: usize) -> IpAddr {
        IpAddr::V4(self.addrs[index % self.addrs.len()])
    }

    /// How many distinct addresses the pool holds.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Always false: a pool holds at least one address.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }
}

/// Opens a TCP connection to `target` from `source` with Nagle off (ping-pong latency would
/// otherwise measure the delayed-ACK timer).
pub async fn connect_from(source: IpAddr, target: SocketAddr) -> Result<TcpStream, BenchError> {
    let err = |source| BenchError::Connect { target, source };
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(err)?;
    socket.bind(SocketAddr::new(source, 0)).map_err(err)?;
    let stream = socket.connect(target).await.map_err(err)?;
    stream.set_nodelay(true).map_err(err)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_rotate_over_consecutive_loopback_addresses() {
        let pool = SourcePool::loopback(3).unwrap();
        let got: Vec<_> = (0..4).map(|i| pool.for_connection(i).to_string()).collect();
        assert_eq!(got, ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.1"]);
    }

    #[test]
    fn empty_pool_is_rejected() {
        assert!(SourcePool::loopback(0).is_err());
    }
}
