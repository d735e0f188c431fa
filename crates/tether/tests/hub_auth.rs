//! `tether hub` with tokens as an operator runs it: `--config hub.toml` with flags over
//! it, protected mode, and clients with real tokens through `tether proxy`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tether_testkit::{ws_connect, Ws};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_tether");
const SECRET: &str = "cli-test-secret-0123456789abcdef-xyz";

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tether-hub-auth-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn token(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A child process killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_for_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "{addr} did not open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn next(ws: &mut Ws) -> Option<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer within 10 s")
        {
            Some(Ok(Message::Text(text))) => return Some(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return None,
        }
    }
}

async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("closed within 10 s")
        {
            Some(Ok(Message::Close(Some(close)))) => return Some(close.code.into()),
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

#[test]
fn an_open_hub_off_loopback_refuses_to_start_and_says_how_to_open_it() {
    let out = Command::new(BIN)
        .args(["hub", "--listen", "0.0.0.0:0"])
        .env_remove("TETHER_HUB_TOKEN_HMAC_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-anonymous"), "{err}");
    assert!(err.contains("--token-hmac-secret"), "{err}");
}

#[test]
fn a_bad_hub_toml_names_the_file_the_key_and_the_problem() {
    let dir = scratch();
    let path = dir.join("hub.toml");
    std::fs::write(&path, "[auth]\nhmac_secret = \"short\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["hub", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(path.to_str().unwrap()), "{err}");
    assert!(err.contains("auth.hmac_secret"), "{err}");
    assert!(err.contains("32"), "{err}");
}

#[tokio::test]
async fn tokens_work_through_tether_proxy_and_flags_override_the_file() {
    let dir = scratch();
    let (file_port, hub_port, proxy_port) = (free_port(), free_port(), free_port());
    std::fs::write(dir.join("secret.txt"), format!("{SECRET}\n")).unwrap();
    let hub_toml = dir.join("hub.toml");
    std::fs::write(
        &hub_toml,
        format!(
            "listen = \"127.0.0.1:{file_port}\"\nname = \"from-file\"\n\n\
             [auth]\nhmac_secret_file = \"secret.txt\"\n\n\
             [[namespace]]\nprefix = \"room:\"\nsubscribe = \"authenticated\"\npublish = \"subscribers\"\n"
        ),
    )
    .unwrap();
    // The flag moves the hub off the file's port.
    let hub_addr: SocketAddr = format!("127.0.0.1:{hub_port}").parse().unwrap();
    let _hub = Running(
        Command::new(BIN)
            .args(["hub", "--config"])
            .arg(&hub_toml)
            .args(["--listen", &hub_addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(hub_addr).await;
    let proxy_toml = dir.join("proxy.toml");
    std::fs::write(
        &proxy_toml,
        format!(
            "[listen]\naddr = \"127.0.0.1:{proxy_port}\"\n[admin]\nenabled = false\n\
             [[backend]]\nname = \"h1\"\naddr = \"{hub_addr}\"\n"
        ),
    )
    .unwrap();
    let proxy_addr: SocketAddr = format!("127.0.0.1:{proxy_port}").parse().unwrap();
    let _proxy = Running(
        Command::new(BIN)
            .args(["proxy", "--config"])
            .arg(&proxy_toml)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(proxy_addr).await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", file_port))
            .await
            .is_err(),
        "the file's listen was overridden"
    );

    let alice = token(json!({"sub": "alice", "exp": now() + 600}));
    let (mut ws, _) = ws_connect(proxy_addr, "/ws").await.unwrap();
    send(&mut ws, json!({"type": "connect", "token": alice})).await;
    let welcome = next(&mut ws).await.unwrap();
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["user"], "alice");
    assert_eq!(welcome["node"], "from-file");
    send(&mut ws, json!({"type": "subscribe", "channel": "room:1"})).await;
    assert_eq!(next(&mut ws).await.unwrap()["type"], "subscribed");
    send(
        &mut ws,
        json!({"type": "publish", "channel": "room:1", "data": "hi"}),
    )
    .await;
    let mut kinds = vec![
        next(&mut ws).await.unwrap()["type"]
            .as_str()
            .unwrap()
            .to_owned(),
        next(&mut ws).await.unwrap()["type"]
            .as_str()
            .unwrap()
            .to_owned(),
    ];
    kinds.sort();
    assert_eq!(kinds, ["message", "published"]);
    // Outside the namespaces the token's (empty) `channels` decide.
    send(&mut ws, json!({"type": "subscribe", "channel": "news"})).await;
    assert_eq!(next(&mut ws).await.unwrap()["code"], "forbidden");

    // Refusals keep their close codes through the proxy's tunnel.
    let expired = token(json!({"sub": "alice", "exp": now() - 3600}));
    let (mut ws, _) = ws_connect(proxy_addr, &format!("/ws?token={expired}"))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await.unwrap()["code"], "token_expired");
    assert_eq!(close_code(&mut ws).await, Some(4001));
    let (mut ws, _) = ws_connect(proxy_addr, "/ws").await.unwrap();
    send(&mut ws, json!({"type": "subscribe", "channel": "room:1"})).await;
    assert_eq!(next(&mut ws).await.unwrap()["code"], "unauthorized");
    assert_eq!(close_code(&mut ws).await, Some(4003));
}

/// A hub from `hub_toml` (its `listen` added) with a proxy in front; the proxy's address.
async fn hub_behind_proxy(hub_toml: &str) -> (Running, Running, SocketAddr) {
    let dir = scratch();
    let (hub_port, proxy_port) = (free_port(), free_port());
    let hub_addr: SocketAddr = format!("127.0.0.1:{hub_port}").parse().unwrap();
    let path = dir.join("hub.toml");
    std::fs::write(&path, format!("listen = \"{hub_addr}\"\n{hub_toml}")).unwrap();
    let hub = Running(
        Command::new(BIN)
            .args(["hub", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(hub_addr).await;
    let proxy_toml = dir.join("proxy.toml");
    std::fs::write(
        &proxy_toml,
        format!(
            "[listen]\naddr = \"127.0.0.1:{proxy_port}\"\n[admin]\nenabled = false\n\
             [[backend]]\nname = \"h1\"\naddr = \"{hub_addr}\"\n"
        ),
    )
    .unwrap();
    let proxy = Running(
        Command::new(BIN)
            .args(["proxy", "--config"])
            .arg(&proxy_toml)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let proxy_addr: SocketAddr = format!("127.0.0.1:{proxy_port}").parse().unwrap();
    wait_for_port(proxy_addr).await;
    (hub, proxy, proxy_addr)
}

/// Through the proxy every client comes from the proxy's address; with the proxy trusted,
/// the hub counts failures by the address the proxy forwards, so a flood from one client
/// is cut off at the upgrade while another client behind the same proxy is served.
#[tokio::test]
async fn a_flood_through_the_proxy_is_cut_off_by_the_real_client_address() {
    let (_hub, _proxy, proxy_addr) = hub_behind_proxy(&format!(
        "[auth]\nhmac_secret = \"{SECRET}\"\nfailure_burst = 3\nfailure_rate = 0.2\n\
         trusted_proxies = [\"127.0.0.1/32\"]\n"
    ))
    .await;
    let flooder = std::net::IpAddr::from([127, 0, 0, 3]);
    let (mut checked, mut limited) = (0, 0);
    for _ in 0..20 {
        match tether_testkit::ws_connect_with(proxy_addr, "/ws?token=forged", flooder, &[]).await {
            Ok((mut ws, _)) => {
                assert_eq!(close_code(&mut ws).await, Some(4003));
                checked += 1;
            }
            Err(error) => {
                assert!(error.to_string().contains("429"), "{error}");
                limited += 1;
            }
        }
    }
    assert!(
        checked <= 5,
        "{checked} token checks for one flooding address"
    );
    assert!(limited >= 15, "{limited} refused at the upgrade");
    let alice = token(json!({"sub": "alice", "exp": now() + 600, "channels": ["*"]}));
    let (mut ws, _) = ws_connect(proxy_addr, "/ws").await.unwrap();
    send(&mut ws, json!({"type": "connect", "token": alice})).await;
    assert_eq!(next(&mut ws).await.unwrap()["user"], "alice");
}

/// Publishes `count` messages to `channel` and returns the offset of the first.
async fn publish_many(ws: &mut Ws, channel: &str, count: usize) -> u64 {
    let mut first = None;
    for i in 0..count {
        send(
            ws,
            json!({"type": "publish", "channel": channel, "data": i}),
        )
        .await;
        loop {
            let frame = next(ws).await.expect("an answer to publish");
            if frame["type"] == "published" {
                first.get_or_insert(frame["offset"].as_u64().unwrap());
                break;
            }
            assert_ne!(frame["type"], "error", "{frame}");
        }
    }
    first.unwrap()
}

/// Subscribes with `since` and returns what the hub replayed: `recovered` and the data of
/// each replayed message (it stops at the first frame that is not a replayed message, a
/// ping answer it asks for).
async fn replay(ws: &mut Ws, channel: &str, since: u64) -> (bool, Vec<u64>) {
    send(
        ws,
        json!({"type": "subscribe", "channel": channel, "since": since}),
    )
    .await;
    let subscribed = next(ws).await.unwrap();
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    send(ws, json!({"type": "ping"})).await;
    let mut data = Vec::new();
    loop {
        let frame = next(ws).await.unwrap();
        match frame["type"].as_str() {
            Some("message") => data.push(frame["data"].as_u64().unwrap()),
            Some("pong") => break,
            _ => panic!("unexpected {frame}"),
        }
    }
    (subscribed["recovered"] == true, data)
}

#[tokio::test]
async fn each_namespace_keeps_its_own_history_on_memory_and_on_redis() {
    let dir = scratch();
    let hub_toml = dir.join("hub.toml");
    std::fs::write(
        &hub_toml,
        "[[namespace]]\nprefix = \"room:\"\nhistory_size = 3\n\n\
         [[namespace]]\nprefix = \"room:big:\"\n\n\
         [[namespace]]\nprefix = \"cursor:\"\nhistory_ttl = \"1s\"\n",
    )
    .unwrap();
    let prefix = format!("ns-history-{}", std::process::id());
    for broker in ["memory", "redis://127.0.0.1:6379/"] {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let _hub = Running(
            Command::new(BIN)
                .args(["hub", "--config"])
                .arg(&hub_toml)
                .args(["--listen", &addr.to_string(), "--broker", broker])
                .args(["--redis-prefix", &prefix, "--history-size", "50"])
                .env_remove("TETHER_HUB_TOKEN_HMAC_SECRET")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_for_port(addr).await;
        let (mut ws, _) = ws_connect(addr, "/ws").await.unwrap();
        assert_eq!(next(&mut ws).await.unwrap()["type"], "welcome");

        // room: keeps 3; room:big: (no limits of its own) the hub's 50, not room:'s 3.
        let room = publish_many(&mut ws, "room:1", 10).await;
        let big = publish_many(&mut ws, "room:big:1", 10).await;
        let news = publish_many(&mut ws, "news", 10).await;
        let (recovered, data) = replay(&mut ws, "room:1", room).await;
        assert_eq!((recovered, data), (false, vec![7, 8, 9]), "{broker} room:");
        let (recovered, data) = replay(&mut ws, "room:big:1", big).await;
        assert_eq!(
            (recovered, data),
            (true, (1..10).collect()),
            "{broker} room:big:"
        );
        let (recovered, data) = replay(&mut ws, "news", news).await;
        assert_eq!(
            (recovered, data),
            (true, (1..10).collect()),
            "{broker} news"
        );

        // cursor: forgets after 1 s; news, on the hub's ttl (5 min), does not.
        let cursor = publish_many(&mut ws, "cursor:a", 2).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (recovered, data) = replay(&mut ws, "cursor:a", cursor - 1).await;
        assert!(
            !recovered && data.is_empty(),
            "{broker} cursor: kept {data:?}"
        );
        let (mut ws2, _) = ws_connect(addr, "/ws").await.unwrap();
        next(&mut ws2).await.unwrap();
        let (recovered, data) = replay(&mut ws2, "news", news - 1).await;
        assert_eq!(
            (recovered, data.len()),
            (true, 10),
            "{broker} news after 1.5 s"
        );
    }
}
