//! A `nats-server` of the test's own (JetStream on, file storage in a temporary directory,
//! a free port), which the test may restart empty, and a relay in front of it whose
//! connections the test may cut (NATS 2.9 has no command to drop a client).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::eventually;

/// The machine's NATS (scripts/provision starts it), for tests that need no restart.
pub const SHARED_NATS: &str = "nats://127.0.0.1:4222";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct NatsServer {
    pub port: u16,
    dir: PathBuf,
    generation: u32,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server whose `max_payload` fits the hub's largest messages (1 MiB of data
    /// plus headers; the server's default is exactly 1 MiB).
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tether-nats-{}-{}",
            std::process::id(),
            free_port()
        ));
        let mut server = Self {
            port: free_port(),
            dir,
            generation: 0,
            child: None,
        };
        server.launch().await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn store(&self) -> PathBuf {
        self.dir.join(format!("store-{}", self.generation))
    }

    async fn launch(&mut self) {
        std::fs::create_dir_all(self.store()).unwrap();
        let config = self.dir.join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{}\nmax_payload: 4194304\njetstream {{ store_dir: {:?} }}\n",
                self.port,
                self.store()
            ),
        )
        .unwrap();
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed (scripts/provision)");
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        assert!(
            eventually(Duration::from_secs(10), || async move {
                TcpStream::connect(addr).await.is_ok()
            })
            .await,
            "nats-server did not start"
        );
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server and starts it again with its stored streams.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    /// Stops the server and starts it again with nothing stored: every stream is gone.
    pub async fn restart_empty(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(self.store());
        self.generation += 1;
        self.launch().await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP relay to `target`: `url()` is where clients connect, `cut()` drops every
/// connection it carries (new ones are relayed again).
pub struct Relay {
    pub port: u16,
    accept: JoinHandle<()>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    pub async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let held = links.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let link = tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                let mut links = held.lock().unwrap();
                links.retain(|l| !l.is_finished());
                links.push(link);
            }
        });
        Self {
            port,
            accept,
            links,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Drops every relayed connection at once, as a network cut would.
    pub fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
