//! The system under test, as child processes on loopback: one Redis of its own, the hubs on
//! it, and one proxy in front.
//!
//! Every child writes stdout and stderr to `DIR/NAME.log` (appended across restarts, each
//! start marked), dies with the soak (`kill_on_drop`, and the kernel's parent-death signal
//! should the soak itself be killed), and restarts on the port it had, as an operator's
//! supervisor would restart it.
//!
//! Ports are found by binding port 0 and releasing it: Redis and `tether hub` take an
//! address, not a socket, and a restarted hub must come back on the same address anyway.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::http::HttpConn;
use crate::error::BenchError;

/// How long a process may take to answer after it was started.
const READY_WITHIN: Duration = Duration::from_secs(20);
/// How long a SIGTERM'd process may take to exit before it is killed.
const EXIT_WITHIN: Duration = Duration::from_secs(20);

/// One supervised child process.
pub struct Process {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    /// Current pid, 0 while down: read by the resource sampler.
    pid: Arc<AtomicU32>,
    starts: u32,
}

impl Process {
    fn new(name: &str, program: &Path, args: Vec<String>, dir: &Path) -> Process {
        Process {
            name: name.to_owned(),
            program: program.to_owned(),
            args,
            log: dir.join(format!("{name}.log")),
            child: None,
            pid: Arc::new(AtomicU32::new(0)),
            starts: 0,
        }
    }

    /// The pid cell the sampler reads (0 while the process is down).
    pub fn pid_cell(&self) -> Arc<AtomicU32> {
        self.pid.clone()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    fn start(&mut self) -> Result<(), BenchError> {
        let io = |what: &'static str| {
            move |source| BenchError::Io {
                what: what.to_owned(),
                source,
            }
        };
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(io("opening a process log"))?;
        self.starts += 1;
        let _ = std::io::Write::write_all(
            &mut log,
            format!("==== soak: start #{} of {}\n", self.starts, self.name).as_bytes(),
        );
        let err_log = log.try_clone().map_err(io("opening a process log"))?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .kill_on_drop(true);
        // SAFETY: the closure runs in the child between fork and exec and only calls prctl,
        // which is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                // Die with the soak even when it is killed with SIGKILL and cannot clean up.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().map_err(|source| BenchError::Io {
            what: format!("cannot start {} ({})", self.name, self.program.display()),
            source,
        })?;
        self.pid.store(child.id().unwrap_or(0), Ordering::Relaxed);
        self.child = Some(child);
        Ok(())
    }

    /// Sends `signal` to the running process (no-op when down).
    fn signal(&self, signal: libc::c_int) {
        let pid = self.pid.load(Ordering::Relaxed);
        if pid != 0 {
            // SAFETY: kill(2) only sends a signal; the pid is our own child's, not yet reaped
            // (it is reaped in `wait_exit`, which clears the pid first).
            unsafe {
                libc::kill(pid as libc::pid_t, signal);
            }
        }
    }

    /// Waits for the process to exit, killing it after `within`.
    async fn wait_exit(&mut self, within: Duration) {
        if let Some(mut child) = self.child.take() {
            if tokio::time::timeout(within, child.wait()).await.is_err() {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
        self.pid.store(0, Ordering::Relaxed);
    }

    /// kill -9, then wait for it.
    pub async fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit(EXIT_WITHIN).await;
    }

    /// SIGTERM, then wait for the process to finish its shutdown.
    pub async fn terminate(&mut self) {
        self.signal(libc::SIGTERM);
        self.wait_exit(EXIT_WITHIN).await;
    }

    /// Whether the process exited by itself (a crash, when nobody stopped it).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

/// Reserves a free loopback port for a process that binds it itself.
pub fn free_port() -> Result<SocketAddr, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|source| BenchError::Bind {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        source,
    })?;
    listener.local_addr().map_err(|source| BenchError::Bind {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        source,
    })
}

/// Whether a Redis restart keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisRestart {
    /// `SHUTDOWN SAVE`, then start from the snapshot: nothing is lost.
    KeepData,
    /// kill -9 with no snapshot: every offset and message is gone, histories start afresh.
    LoseData,
}

/// The Redis server the hubs share.
pub struct Redis {
    pub process: Process,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Redis {
    fn new(program: &Path, dir: &Path) -> Result<Redis, BenchError> {
        let addr = free_port()?;
        let data = dir.join("redis");
        std::fs::create_dir_all(&data).map_err(|e| BenchError::Io {
            what: format!("creating {}", data.display()),
            source: e,
        })?;
        let args = [
            "--port",
            &addr.port().to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &data.display().to_string(),
            "--dbfilename",
            "dump.rdb",
            "--logfile",
            "",
            "--maxclients",
            "1000",
        ]
        .map(String::from)
        .to_vec();
        Ok(Redis {
            process: Process::new("redis", program, args, dir),
            addr,
            dir: data,
        })
    }

    pub async fn start(&mut self) -> Result<(), BenchError> {
        self.process.start()?;
        let addr = self.addr;
        wait_until("redis PING", || async move {
            command(addr, &["PING"])
                .await
                .is_ok_and(|r| r.starts_with("+PONG"))
        })
        .await
    }

    pub async fn restart(
        &mut self,
        how: RedisRestart,
        down_for: Duration,
    ) -> Result<(), BenchError> {
        match how {
            RedisRestart::KeepData => {
                // The connection closes as Redis exits: no answer is expected.
                let _ = command(self.addr, &["SHUTDOWN", "SAVE"]).await;
                self.process.wait_exit(EXIT_WITHIN).await;
            }
            RedisRestart::LoseData => {
                self.process.kill().await;
                let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
            }
        }
        tokio::time::sleep(down_for).await;
        self.start().await
    }
}

/// Sends one command to Redis and returns the first line of its answer.
async fn command(addr: SocketAddr, args: &[&str]) -> std::io::Result<String> {
    let mut request = format!("*{}\r\n", args.len());
    for a in args {
        let _ = write!(request, "${}\r\n{a}\r\n", a.len());
    }
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut buf = vec![0u8; 256];
        let n = stream.read(&mut buf).await?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// One `tether hub` node.
pub struct Hub {
    pub process: Process,
    pub addr: SocketAddr,
}

impl Hub {
    fn new(bin: &Path, index: usize, redis: SocketAddr, dir: &Path) -> Result<Hub, BenchError> {
        let addr = free_port()?;
        let name = format!("hub{}", index + 1);
        let args = [
            "hub",
            "--listen",
            &addr.to_string(),
            "--name",
            &name,
            "--broker",
            &format!("redis://{redis}/0"),
            "--redis-prefix",
            "soak",
            // A SIGTERM'd hub closes its clients with 1012 over this window, then exits.
            "--shutdown-window",
            "3s",
            // A subscriber stalled longer than about 15 s is dropped as dead and resumes.
            "--ping-interval",
            "10s",
            "--ping-timeout",
            "5s",
        ]
        .map(String::from)
        .to_vec();
        Ok(Hub {
            process: Process::new(&name, bin, args, dir),
            addr,
        })
    }

    pub async fn start(&mut self) -> Result<(), BenchError> {
        self.process.start()?;
        let addr = self.addr;
        wait_until("hub /health", || async move {
            let mut conn = HttpConn::new(addr, Duration::from_secs(2));
            conn.request("GET", "/health", None)
                .await
                .is_ok_and(|a| a.status == 200)
        })
        .await
    }
}

/// The proxy, its config file and its admin address.
pub struct Proxy {
    pub process: Process,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    config: PathBuf,
    backends: Vec<SocketAddr>,
    /// Each backend's weight as last written (a reload changes one).
    pub weights: Vec<u32>,
}

impl Proxy {
    fn new(bin: &Path, backends: Vec<SocketAddr>, dir: &Path) -> Result<Proxy, BenchError> {
        let config = dir.join("proxy.toml");
        let args = vec![
            "proxy".to_owned(),
            "--config".to_owned(),
            config.display().to_string(),
        ];
        let weights = vec![1; backends.len()];
        let proxy = Proxy {
            process: Process::new("proxy", bin, args, dir),
            addr: free_port()?,
            admin: free_port()?,
            config,
            backends,
            weights,
        };
        proxy.write_config()?;
        Ok(proxy)
    }

    /// Writes the config file from the current weights.
    pub fn write_config(&self) -> Result<(), BenchError> {
        let mut text = format!(
            "# Written by `tether bench soak`.\n\
             [listen]\naddr = \"{}\"\n\n\
             [admin]\naddr = \"{}\"\n\n\
             [runtime]\ngrace = \"2s\"\n\n\
             [balance]\nstrategy = \"consistent-hash\"\nkey = \"query:sid\"\n\n\
             [health]\nkind = \"http\"\npath = \"/health\"\ninterval = \"1s\"\ntimeout = \"1s\"\nrise = 1\nfall = 2\n",
            self.addr, self.admin
        );
        for (i, (addr, weight)) in self.backends.iter().zip(&self.weights).enumerate() {
            let _ = write!(
                text,
                "\n[[backend]]\nname = \"hub{}\"\naddr = \"{addr}\"\nweight = {weight}\n",
                i + 1
            );
        }
        std::fs::write(&self.config, text).map_err(|e| BenchError::Io {
            what: format!("writing {}", self.config.display()),
            source: e,
        })
    }

    pub async fn start(&mut self) -> Result<(), BenchError> {
        self.process.start()?;
        let admin = self.admin;
        wait_until("proxy admin /api/backends", || async move {
            let mut conn = HttpConn::new(admin, Duration::from_secs(2));
            conn.request("GET", "/api/backends", None)
                .await
                .is_ok_and(|a| a.status == 200)
        })
        .await
    }

    /// One admin API call; an answer other than 2xx is an error.
    pub async fn admin(&self, method: &str, path: &str) -> Result<(), BenchError> {
        let mut conn = HttpConn::new(self.admin, Duration::from_secs(5));
        match conn.request(method, path, None).await {
            Ok(a) if (200..300).contains(&a.status) => Ok(()),
            Ok(a) => Err(BenchError::Soak(format!(
                "proxy admin {method} {path}: {} {}",
                a.status,
                String::from_utf8_lossy(&a.body).trim()
            ))),
            Err(e) => Err(BenchError::Soak(format!(
                "proxy admin {method} {path}: {e}"
            ))),
        }
    }
}

/// Polls `probe` every 100 ms until it says yes, for at most [`READY_WITHIN`].
async fn wait_until<F, Fut>(what: &'static str, mut probe: F) -> Result<(), BenchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + READY_WITHIN;
    while Instant::now() < deadline {
        if probe().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(BenchError::Timeout {
        what,
        after: READY_WITHIN,
    })
}

/// The whole system: Redis, the hubs, the proxy.
pub struct System {
    pub redis: Redis,
    pub hubs: Vec<Hub>,
    pub proxy: Proxy,
}

impl System {
    /// Starts Redis, then the hubs, then the proxy, each once the one before answers.
    pub async fn start(
        bin: &Path,
        redis_server: &Path,
        hubs: usize,
        dir: &Path,
    ) -> Result<System, BenchError> {
        let mut redis = Redis::new(redis_server, dir)?;
        redis.start().await?;
        let mut nodes = Vec::with_capacity(hubs);
        for i in 0..hubs {
            let mut hub = Hub::new(bin, i, redis.addr, dir)?;
            hub.start().await?;
            nodes.push(hub);
        }
        let mut proxy = Proxy::new(bin, nodes.iter().map(|h| h.addr).collect(), dir)?;
        proxy.start().await?;
        Ok(System {
            redis,
            hubs: nodes,
            proxy,
        })
    }

    /// Every process, for the sampler and the log scan.
    pub fn processes(&self) -> Vec<&Process> {
        let mut all = vec![&self.proxy.process];
        all.extend(self.hubs.iter().map(|h| &h.process));
        all.push(&self.redis.process);
        all
    }

    /// Names of the processes that died without being told to.
    pub fn crashed(&mut self) -> Vec<String> {
        let mut crashed = Vec::new();
        let mut check = |p: &mut Process| {
            if let Some(status) = p.exited() {
                crashed.push(format!("{} ({status})", p.name));
            }
        };
        check(&mut self.proxy.process);
        for hub in &mut self.hubs {
            check(&mut hub.process);
        }
        check(&mut self.redis.process);
        crashed
    }

    /// Stops everything: the proxy and hubs with SIGTERM (so their shutdown paths run too),
    /// then Redis.
    pub async fn stop(mut self) {
        self.proxy.process.terminate().await;
        for hub in &mut self.hubs {
            hub.process.signal(libc::SIGTERM);
        }
        for hub in &mut self.hubs {
            hub.process.wait_exit(EXIT_WITHIN).await;
        }
        self.redis.process.kill().await;
    }
}
