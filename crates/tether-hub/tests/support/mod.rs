//! Helpers for the hub's integration tests: hubs on free ports sharing a broker, a
//! throwaway `redis-server`, raw WebSocket and HTTP clients, and a resuming client that
//! records everything it is sent (it does not deduplicate: the hub must not repeat).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tether_hub::{BrokerOptions, HistoryPolicy, HubConfig, HubHandle};
pub mod nats;
pub mod redis_cluster;
pub mod redis_tls;

pub use tether_testkit::{any_port, eventually, ws_connect, Ws};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

pub const SHARED_REDIS: &str = "redis://127.0.0.1:6379/";

/// A key prefix no other test (or test run) uses.
pub fn unique_prefix(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "tt-{test}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn config(name: &str) -> HubConfig {
    HubConfig {
        name: name.into(),
        listen: any_port(),
        shutdown_window: Duration::from_millis(500),
        ..Default::default()
    }
}

pub fn redis_options(prefix: &str, history: HistoryPolicy) -> BrokerOptions {
    BrokerOptions {
        history: history.into(),
        redis_prefix: prefix.into(),
        ..Default::default()
    }
}

/// Starts `n` hubs named `hub1..`, each with its own Redis broker (as separate processes
/// would have) on `url` under `prefix`.
pub async fn redis_hubs(
    n: usize,
    url: &str,
    prefix: &str,
    history: HistoryPolicy,
) -> Vec<HubHandle> {
    let mut hubs = Vec::new();
    for i in 1..=n {
        let broker = tether_hub::broker_with(url, redis_options(prefix, history)).unwrap();
        hubs.push(
            tether_hub::serve(config(&format!("hub{i}")), broker, None)
                .await
                .unwrap(),
        );
    }
    hubs
}

/// A `redis-server` of the test's own, which the test may kill and restart.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self { port, child: None };
        server.restart().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        assert!(
            eventually(Duration::from_secs(10), || async move {
                TcpStream::connect(addr).await.is_ok()
            })
            .await,
            "redis-server did not start"
        );
    }

    /// Runs a command with `redis-cli` against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli must be installed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A WebSocket client speaking the hub protocol.
pub struct Client {
    pub ws: Ws,
    pub node: String,
}

impl Client {
    /// Connects and reads `welcome`.
    pub async fn connect(addr: SocketAddr) -> Client {
        let (ws, _) = ws_connect(addr, "/ws").await.expect("connect to hub");
        let mut client = Client {
            ws,
            node: String::new(),
        };
        let welcome = client.next().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        client.node = welcome["node"].as_str().unwrap().to_owned();
        client
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.unwrap();
    }

    /// The next JSON frame (skipping pings), failing the test after 10 s.
    pub async fn next(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("hub answered within 10 s")
                .expect("connection open")
                .expect("frame read");
            match frame {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Subscribes and returns the `subscribed` frame.
    pub async fn subscribe(&mut self, channel: &str, since: Option<u64>) -> Value {
        let mut frame = json!({"type": "subscribe", "channel": channel});
        if let Some(since) = since {
            frame["since"] = json!(since);
        }
        self.send(frame).await;
        let answer = self.next().await;
        assert_eq!(answer["type"], "subscribed", "{answer}");
        answer
    }

    /// Reads message frames up to and including offset `top`; returns their data.
    pub async fn replay_until(&mut self, top: u64) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let frame = self.next().await;
            assert_eq!(frame["type"], "message", "{frame}");
            out.push(frame["data"].clone());
            if frame["offset"].as_u64().unwrap() >= top {
                return out;
            }
        }
    }

    /// Reads `n` message frames and returns their (offset, data).
    pub async fn messages(&mut self, n: usize) -> Vec<(u64, Value)> {
        let mut out = Vec::new();
        while out.len() < n {
            let frame = self.next().await;
            assert_eq!(frame["type"], "message", "{frame}");
            out.push((frame["offset"].as_u64().unwrap(), frame["data"].clone()));
        }
        out
    }
}

/// A minimal HTTP/1.1 request with `Connection: close`; returns status and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("HTTP answer within 10 s")
        .unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    let body = if response
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    (status, body)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || tail.len() < size {
            break;
        }
        out.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
    out
}

/// Publishes through `POST /api/publish`; the offset, or `None` if the hub refused.
pub async fn publish(addr: SocketAddr, channel: &str, data: Value) -> Option<u64> {
    let body = json!({"channel": channel, "data": data}).to_string();
    let (status, body) = http(addr, "POST", "/api/publish", Some(&body), None).await;
    if status != 200 {
        return None;
    }
    serde_json::from_str::<Value>(&body).ok()?["offset"].as_u64()
}

/// A client subscribes to `channel` while it is empty (offset 0), disconnects, 3 messages
/// (data 1, 2, 3) are published, and it resubscribes with `since: 0`. Returns the second
/// `subscribed` frame and the data replayed after it, up to the channel's top.
pub async fn resume_from_empty(addr: SocketAddr, channel: &str) -> (Value, Vec<Value>) {
    let mut client = Client::connect(addr).await;
    let subscribed = client.subscribe(channel, None).await;
    assert_eq!(
        subscribed["offset"], 0,
        "the channel starts empty: {subscribed}"
    );
    drop(client);
    for n in 1..=3 {
        publish(addr, channel, json!(n)).await.expect("published");
    }
    let mut client = Client::connect(addr).await;
    let subscribed = client.subscribe(channel, Some(0)).await;
    let replayed = client
        .replay_until(subscribed["offset"].as_u64().unwrap())
        .await;
    (subscribed, replayed)
}

/// What a resuming client was sent, in arrival order.
#[derive(Default)]
pub struct Received {
    pub messages: Mutex<Vec<(u64, Value)>>,
    pub connects: AtomicUsize,
    pub not_recovered: AtomicUsize,
}

impl Received {
    pub fn len(&self) -> usize {
        self.messages.lock().unwrap().len()
    }
    pub fn data(&self) -> Vec<Value> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .map(|(_, d)| d.clone())
            .collect()
    }
    pub fn offsets(&self) -> Vec<u64> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .map(|(o, _)| *o)
            .collect()
    }
}

/// A client that behaves like the JS client: on any disconnect it moves to the next hub
/// and resubscribes with `since` = the last offset it saw. `cut` drops its connection
/// abruptly. It records every message without filtering duplicates.
pub struct ResumingClient {
    pub received: Arc<Received>,
    pub cut: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl ResumingClient {
    pub fn start(addrs: Vec<SocketAddr>, channel: &str) -> Self {
        let received = Arc::new(Received::default());
        let cut = Arc::new(Notify::new());
        let task = tokio::spawn(resume_loop(
            addrs,
            channel.to_owned(),
            received.clone(),
            cut.clone(),
        ));
        Self {
            received,
            cut,
            task,
        }
    }

    /// Waits until the client has subscribed `n` times.
    pub async fn connected(&self, n: usize) -> bool {
        let received = self.received.clone();
        eventually(Duration::from_secs(10), || {
            let received = received.clone();
            async move { received.connects.load(Ordering::SeqCst) >= n }
        })
        .await
    }
}

impl Drop for ResumingClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn resume_loop(
    addrs: Vec<SocketAddr>,
    channel: String,
    received: Arc<Received>,
    cut: Arc<Notify>,
) {
    let mut last: Option<u64> = None;
    let mut attempt = 0usize;
    loop {
        let addr = addrs[attempt % addrs.len()];
        attempt += 1;
        let Ok(Ok((mut ws, _))) =
            tokio::time::timeout(Duration::from_secs(2), ws_connect(addr, "/ws")).await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut frame = json!({"type": "subscribe", "channel": channel});
        if let Some(since) = last {
            frame["since"] = json!(since);
        }
        if ws.send(Message::text(frame.to_string())).await.is_err() {
            continue;
        }
        loop {
            let next = tokio::select! {
                next = ws.next() => next,
                _ = cut.notified() => break,
            };
            let Some(Ok(Message::Text(text))) = next else {
                if matches!(next, Some(Ok(Message::Ping(_)) | Ok(Message::Pong(_)))) {
                    continue;
                }
                break;
            };
            let value: Value = serde_json::from_str(&text).unwrap();
            match value["type"].as_str() {
                Some("subscribed") => {
                    if value["recovered"] == false && last.is_some() {
                        received.not_recovered.fetch_add(1, Ordering::SeqCst);
                    }
                    if last.is_none() {
                        last = value["offset"].as_u64();
                    }
                    received.connects.fetch_add(1, Ordering::SeqCst);
                }
                Some("message") => {
                    let offset = value["offset"].as_u64().unwrap();
                    last = Some(offset);
                    received
                        .messages
                        .lock()
                        .unwrap()
                        .push((offset, value["data"].clone()));
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `received` holds `n` messages (or 15 s pass), then returns whether it does.
pub async fn received_all(received: &Arc<Received>, n: usize) -> bool {
    let received = received.clone();
    eventually(Duration::from_secs(15), || {
        let received = received.clone();
        async move { received.len() >= n }
    })
    .await
}

/// Asserts offsets strictly increase and data equals `expected`, in order, once each.
pub fn assert_exactly_once_in_order(received: &Received, expected: &[Value]) {
    let offsets = received.offsets();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "offsets not strictly increasing: {offsets:?}"
    );
    assert_eq!(
        received.data(),
        expected,
        "messages differ from what was published"
    );
}

/// An HTTP answer with its head, for tests that check headers as well as the body.
pub struct HttpAnswer {
    pub status: u16,
    /// The status line and headers, lowercased.
    pub head: String,
    pub body: String,
}

impl HttpAnswer {
    /// Asserts the answer is `status` with a JSON body `{code, message}` whose code is `code`.
    pub fn assert_json_error(&self, status: u16, code: &str, case: &str) {
        assert_eq!(self.status, status, "{case}: {}\n{}", self.head, self.body);
        assert!(
            self.head.contains("content-type: application/json"),
            "{case}: not JSON: {}",
            self.head
        );
        let body: Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{case}: body is not JSON ({e}): {}", self.body));
        assert_eq!(body["code"], code, "{case}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{case}: {body}"
        );
    }
}

/// Like [`http`], keeping the response head.
pub async fn http_answer(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> HttpAnswer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("HTTP answer within 10 s")
        .unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let head = head.to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_owned()
    };
    HttpAnswer { status, head, body }
}
