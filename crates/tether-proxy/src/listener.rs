//! Accepting connections, and the lifetime of a proxy: bind, run, reload, shut down.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::admin::BackendView;
use crate::connection::{self, ConnId};
use crate::frontend::Frontend;
use crate::shared::Shared;
use crate::tunnel::close::spread;
use crate::tunnel::CloseReason;
use crate::{health, Config, ReloadError};

/// How long closed connections get to finish closing after the grace period: a tunnel may
/// finish its frame under way, then waits for its client's answer to the close frame.
const CLOSE_PATIENCE: Duration = Duration::from_secs(4);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A certificate, key or CA file named by `[listen.tls]` could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::FileError),
}

/// A bound proxy, not yet serving.
pub struct Proxy {
    shared: Arc<Shared>,
    /// One per `[[listen]]`, in the same order as `shared.frontends`.
    listeners: Vec<TcpListener>,
    admin: Option<TcpListener>,
}

fn bind(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    let err = |source| ProxyError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(4096).map_err(err)
}

impl Proxy {
    /// Binds the listener and the admin listener. `config_path` enables reloads from file.
    pub async fn bind(config: Config, config_path: Option<PathBuf>) -> Result<Proxy, ProxyError> {
        // Certificates first: a listener that cannot serve TLS must not be bound at all.
        let shared = Arc::new(Shared::new(config, config_path)?);
        let listeners = shared
            .frontends
            .iter()
            .map(|f| bind(f.addr))
            .collect::<Result<Vec<_>, _>>()?;
        let admin = if shared.config.admin.enabled {
            Some(bind(shared.config.admin.addr)?)
        } else {
            None
        };
        Ok(Proxy {
            shared,
            listeners,
            admin,
        })
    }

    /// The address of the first listener.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addrs()[0]
    }

    /// The address of every listener, in configuration order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .map(|l| l.local_addr().expect("bound listener has an address"))
            .collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then stops accepting and closes every tunnel with
    /// 1001 at a moment drawn uniformly over `runtime.grace` (so the clients reconnect to
    /// the next proxy spread over it, not in one burst); what is still open at the end of
    /// the grace, handshakes included, is closed then. It returns once they are gone, so a
    /// proxy embedded in a larger program (the demo, tests) leaves no tunnel, admin listener
    /// or health check behind.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let addrs = self.local_addrs();
        let shared = self.shared.clone();
        for backend in shared.registry.snapshot().backends.iter() {
            health::spawn(backend.clone(), shared.config.health.clone());
        }
        let admin = self.admin.map(|admin| {
            let serving = crate::admin::serve(admin, shared.clone());
            tokio::spawn(async move {
                if let Err(e) = serving.await {
                    error!(error = %e, "admin listener failed");
                }
            })
        });
        let cert_watch = tokio::spawn(crate::tls::watch::run(
            shared.clone(),
            crate::tls::watch::INTERVAL,
        ));
        let rebalancer = shared
            .config
            .rebalance
            .rate
            .map(|rate| tokio::spawn(crate::balance::rebalance::run(shared.clone(), rate)));
        info!(
            ?addrs,
            backends = shared.registry.snapshot().backends.len(),
            "proxy listening"
        );
        let ids = Arc::new(AtomicU64::new(1));
        let accepting = self
            .listeners
            .into_iter()
            .zip(shared.frontends.clone())
            .map(|(listener, frontend)| {
                accept_loop(listener, shared.clone(), frontend, ids.clone())
            });
        let accepting = futures_util::future::join_all(accepting);
        tokio::select! {
            _ = accepting => {}
            () = shutdown => {}
        }
        if let Some(rebalancer) = rebalancer {
            rebalancer.abort();
        }
        let open = shared.gate.open();
        let grace = shared.config.runtime.grace;
        let tunnels = shared.tunnels.select(|_| true);
        info!(
            open,
            tunnels = tunnels.len(),
            ?grace,
            "no longer accepting; closing tunnels with 1001 spread over the grace period"
        );
        let spreading = tokio::spawn(spread(tunnels, CloseReason::Shutdown, grace, || true));
        let deadline = tokio::time::Instant::now() + grace;
        while shared.gate.open() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        spreading.abort();
        let left = shared.gate.open();
        if left > 0 {
            warn!(left, "grace period over; closing the remaining connections");
        }
        // The signal first: a tunnel registering after `request_all` passed its shard sees it.
        shared.closing.close(CloseReason::Shutdown);
        shared.tunnels.request_all(CloseReason::Shutdown);
        // Each connection ends at its next poll; this waits for them to be counted and
        // their sockets closed, bounded in case one is stuck in a write to a dead peer.
        let deadline = tokio::time::Instant::now() + CLOSE_PATIENCE;
        while shared.gate.open() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(admin) = admin {
            admin.abort();
        }
        cert_watch.abort();
        for backend in shared.registry.snapshot().backends.iter() {
            // Stops its health checker at the next tick.
            backend.retire();
        }
    }

    /// Runs on the current runtime; the returned handle reports addresses and stops it.
    pub fn spawn(self) -> RunningProxy {
        let addrs = self.local_addrs();
        let addr = addrs[0];
        let admin_addr = self.admin_addr();
        let shared = self.shared.clone();
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(self.run(async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        RunningProxy {
            addr,
            addrs,
            admin_addr,
            shared,
            stop,
            task,
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    frontend: Arc<Frontend>,
    ids: Arc<AtomicU64>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let id = ConnId(ids.fetch_add(1, Ordering::Relaxed));
                tokio::spawn(connection::handle(
                    shared.clone(),
                    frontend.clone(),
                    stream,
                    peer,
                    id,
                ));
            }
            Err(e) => {
                // Out of file descriptors or similar: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A proxy serving in the background.
pub struct RunningProxy {
    addr: SocketAddr,
    addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RunningProxy {
    /// The first listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every listener's address, in configuration order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The backends as the admin API reports them.
    pub fn backends(&self) -> Vec<BackendView> {
        self.shared
            .registry
            .snapshot()
            .backends
            .iter()
            .map(|b| BackendView::of(b))
            .collect()
    }

    /// Replaces the backend list without touching live tunnels.
    pub fn reload(&self, config: &Config) {
        crate::reload(&self.shared, config);
    }

    /// Re-reads the file the proxy was started from.
    pub fn reload_from_file(&self) -> Result<(), ReloadError> {
        crate::reload_from_file(&self.shared)
    }

    /// Marks a backend draining (no new tunnels, live ones left alone) or enabled again.
    /// False if unknown.
    pub fn set_draining(&self, name: &str, draining: bool) -> bool {
        let window = None;
        crate::admin::set_draining(&self.shared, name, draining, window).is_some()
    }

    /// Drains a backend and closes its live tunnels with 1012, spread uniformly at random
    /// over `close_within`, as `POST /api/backends/NAME/drain?close_within=…` does. False if
    /// unknown.
    pub fn drain(&self, name: &str, close_within: Duration) -> bool {
        crate::admin::set_draining(&self.shared, name, true, Some(close_within)).is_some()
    }

    /// The rebalancer's state (`[rebalance]`).
    pub fn rebalance(&self) -> crate::balance::rebalance::RebalanceView {
        self.shared.rebalancer.view()
    }

    /// The Prometheus text exposition.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.encode()
    }

    /// Stops accepting, waits for the grace period as SIGTERM would, then closes every
    /// connection still open. What the proxy counted stays readable in the result.
    pub async fn shutdown(self) -> Stopped {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        Stopped {
            shared: self.shared,
        }
    }
}

/// A proxy that has shut down: its final counts, for the program that embedded it.
pub struct Stopped {
    shared: Arc<Shared>,
}

impl Stopped {
    /// The Prometheus text exposition as it stood when the last connection closed.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.encode()
    }
}
