//! Token authentication and channel rules on real hubs over real WebSockets: every code,
//! expiry, refresh, forbidden subscribe and publish, frames before `connect`, protected
//! mode, the HTTP API, and a flood of failed connects from one address.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::{config, http, ws_connect, Ws};
use tether_hub::auth::AuthConfig;
use tether_hub::{HubConfig, HubError, HubHandle};
use tether_testkit::ws_connect_with;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "integration-test-secret-0123456789abcdef";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn user(sub: &str) -> String {
    token(json!({
        "sub": sub, "exp": now() + 600,
        "channels": ["room:*"], "publish": ["room:lobby"],
    }))
}

async fn hub_with(auth_toml: &str) -> HubHandle {
    let toml = format!("[auth]\nhmac_secret = \"{SECRET}\"\n{auth_toml}");
    let auth = AuthConfig::from_toml(&toml, Path::new("hub.toml")).unwrap();
    let broker = tether_hub::broker_from_url("memory").unwrap();
    tether_hub::serve(
        HubConfig {
            auth,
            ..config("auth")
        },
        broker,
        None,
    )
    .await
    .unwrap()
}

async fn open(addr: SocketAddr, path: &str) -> Ws {
    ws_connect(addr, path).await.expect("WebSocket upgrade").0
}

/// The next JSON frame, skipping pings; `None` when the connection closed.
async fn next(ws: &mut Ws) -> Option<Value> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer within 10 s");
        match frame {
            Some(Ok(Message::Text(text))) => return Some(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return None,
        }
    }
}

/// Reads until the hub closes, returning the close code.
async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("closed within 10 s");
        match frame {
            Some(Ok(Message::Close(Some(close)))) => return Some(close.code.into()),
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// Sends `request` as written and returns the whole answer.
async fn raw_http(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

async fn connected(addr: SocketAddr, token: &str) -> Ws {
    let mut ws = open(addr, "/ws").await;
    send(&mut ws, json!({"type": "connect", "token": token})).await;
    let welcome = next(&mut ws).await.unwrap();
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    ws
}

#[tokio::test]
async fn connect_opens_the_connection_and_claims_decide_subscribe_and_publish() {
    let hub = hub_with("").await;
    let addr = hub.local_addr();
    let mut ws = open(addr, "/ws").await;
    send(&mut ws, json!({"type": "connect", "token": user("alice")})).await;
    let welcome = next(&mut ws).await.unwrap();
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["user"], "alice");

    send(&mut ws, json!({"type": "subscribe", "channel": "room:1"})).await;
    assert_eq!(next(&mut ws).await.unwrap()["type"], "subscribed");
    send(&mut ws, json!({"type": "subscribe", "channel": "news"})).await;
    let refused = next(&mut ws).await.unwrap();
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "forbidden");
    assert_eq!(refused["channel"], "news");

    send(
        &mut ws,
        json!({"type": "publish", "channel": "room:lobby", "data": 1}),
    )
    .await;
    assert_eq!(next(&mut ws).await.unwrap()["type"], "published");
    send(
        &mut ws,
        json!({"type": "publish", "channel": "room:1", "data": 2, "id": 9}),
    )
    .await;
    let refused = next(&mut ws).await.unwrap();
    assert_eq!(refused["code"], "forbidden", "{refused}");
    assert_eq!(refused["id"], 9);
    // Nothing refused was published: room:1 got no message.
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next(&mut ws).await.unwrap()["type"], "pong");

    // A second `connect` is a mistake, not a new identity.
    send(
        &mut ws,
        json!({"type": "connect", "token": user("mallory")}),
    )
    .await;
    assert_eq!(next(&mut ws).await.unwrap()["code"], "bad_frame");
    hub.shutdown().await;
}

#[tokio::test]
async fn the_token_query_parameter_opens_a_connection_too() {
    let hub = hub_with("").await;
    let mut ws = open(hub.local_addr(), &format!("/ws?token={}", user("bob"))).await;
    let welcome = next(&mut ws).await.unwrap();
    assert_eq!(welcome["user"], "bob", "{welcome}");
    let mut bad = open(hub.local_addr(), "/ws?token=not.a.token").await;
    assert_eq!(next(&mut bad).await.unwrap()["code"], "unauthorized");
    assert_eq!(close_code(&mut bad).await, Some(4003));
    hub.shutdown().await;
}

#[tokio::test]
async fn frames_before_connect_are_refused_and_nothing_is_served() {
    let hub = hub_with("").await;
    let mut ws = open(hub.local_addr(), "/ws").await;
    send(&mut ws, json!({"type": "subscribe", "channel": "room:1"})).await;
    let refused = next(&mut ws).await.unwrap();
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "unauthorized");
    assert_eq!(close_code(&mut ws).await, Some(4003));
    // A connect without a token is no better where anonymous clients are not allowed.
    let mut ws = open(hub.local_addr(), "/ws").await;
    send(&mut ws, json!({"type": "connect"})).await;
    assert_eq!(next(&mut ws).await.unwrap()["code"], "unauthorized");
    assert_eq!(close_code(&mut ws).await, Some(4003));
    hub.shutdown().await;
}

#[tokio::test]
async fn each_refusal_has_its_code_and_close_code() {
    let hub = hub_with("").await;
    let addr = hub.local_addr();
    let expired = token(json!({"sub": "a", "exp": now() - 3600}));
    let wrong_key = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "a", "exp": now() + 60}),
        &EncodingKey::from_secret(b"another-secret-another-secret-0123").unwrap(),
    )
    .unwrap();
    let mistyped = token(json!({"sub": "a", "exp": now() + 60, "channels": "room:*"}));
    let subscription_token = token(json!({"sub": "a", "exp": now() + 60, "channel": "room:1"}));
    let cases = [
        (expired.as_str(), "token_expired", 4001),
        (wrong_key.as_str(), "unauthorized", 4003),
        (mistyped.as_str(), "unauthorized", 4003),
        (subscription_token.as_str(), "unauthorized", 4003),
        ("x".repeat(20_000).as_str(), "unauthorized", 4003),
    ]
    .map(|(t, c, n)| (t.to_owned(), c, n));
    for (bad, code, close) in cases {
        let mut ws = open(addr, "/ws").await;
        send(&mut ws, json!({"type": "connect", "token": bad})).await;
        let refused = next(&mut ws).await.unwrap();
        assert_eq!(refused["code"], code, "{refused}");
        assert_eq!(close_code(&mut ws).await, Some(close), "{code}");
    }
    let (_, metrics) = http(addr, "GET", "/metrics", None, None).await;
    for reason in ["expired", "signature", "claims", "wrong_kind", "too_large"] {
        let line = format!("tether_hub_auth_failures_total{{reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    hub.shutdown().await;
}

#[tokio::test]
async fn an_expired_token_closes_with_4001_unless_refreshed() {
    let hub = hub_with("leeway = \"0s\"\n").await;
    let addr = hub.local_addr();
    let short = |sub: &str| token(json!({"sub": sub, "exp": now() + 2, "channels": ["room:*"]}));

    let started = Instant::now();
    let mut lapsing = connected(addr, &short("carol")).await;
    let mut kept = connected(addr, &short("dave")).await;
    send(&mut kept, json!({"type": "refresh", "token": user("dave")})).await;
    let refreshed = next(&mut kept).await.unwrap();
    assert_eq!(refreshed["type"], "refreshed", "{refreshed}");
    assert!(refreshed["exp"].as_u64().unwrap() > now() + 500);
    // Someone else's token does not refresh this connection.
    send(&mut kept, json!({"type": "refresh", "token": user("eve")})).await;
    assert_eq!(next(&mut kept).await.unwrap()["code"], "unauthorized");

    let refused = next(&mut lapsing).await.unwrap();
    assert_eq!(refused["code"], "token_expired", "{refused}");
    assert_eq!(close_code(&mut lapsing).await, Some(4001));
    let lasted = started.elapsed();
    assert!(
        lasted >= Duration::from_millis(900),
        "closed after {lasted:?}"
    );

    // The refreshed connection outlives its first token.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    send(&mut kept, json!({"type": "subscribe", "channel": "room:2"})).await;
    assert_eq!(next(&mut kept).await.unwrap()["type"], "subscribed");
    hub.shutdown().await;
}

#[tokio::test]
async fn namespaces_user_limited_channels_and_subscription_tokens() {
    let hub = hub_with(
        "allow_anonymous = true\n\n\
         [[namespace]]\nprefix = \"public:\"\nsubscribe = \"anonymous\"\npublish = \"nobody\"\n\n\
         [[namespace]]\nprefix = \"dm:\"\nsubscribe = \"authenticated\"\npublish = \"subscribers\"\n",
    )
    .await;
    let addr = hub.local_addr();

    // An anonymous client's first frame is served as such: public channels only.
    let mut anon = open(addr, "/ws").await;
    send(
        &mut anon,
        json!({"type": "subscribe", "channel": "public:news"}),
    )
    .await;
    let welcome = next(&mut anon).await.unwrap();
    assert_eq!(welcome["type"], "welcome");
    assert!(welcome.get("user").is_none());
    assert_eq!(next(&mut anon).await.unwrap()["type"], "subscribed");
    send(&mut anon, json!({"type": "subscribe", "channel": "room:1"})).await;
    assert_eq!(next(&mut anon).await.unwrap()["code"], "forbidden");
    send(
        &mut anon,
        json!({"type": "publish", "channel": "public:news", "data": 1}),
    )
    .await;
    assert_eq!(next(&mut anon).await.unwrap()["code"], "forbidden");

    // dm:#alice,bob is for alice and bob only, and they publish once subscribed.
    let mut alice = connected(addr, &user("alice")).await;
    let mut carol = connected(addr, &user("carol")).await;
    send(
        &mut carol,
        json!({"type": "subscribe", "channel": "dm:#alice,bob"}),
    )
    .await;
    assert_eq!(next(&mut carol).await.unwrap()["code"], "forbidden");
    send(
        &mut alice,
        json!({"type": "publish", "channel": "dm:#alice,bob", "data": 1}),
    )
    .await;
    assert_eq!(next(&mut alice).await.unwrap()["code"], "forbidden");
    send(
        &mut alice,
        json!({"type": "subscribe", "channel": "dm:#alice,bob"}),
    )
    .await;
    assert_eq!(next(&mut alice).await.unwrap()["type"], "subscribed");
    send(
        &mut alice,
        json!({"type": "publish", "channel": "dm:#alice,bob", "data": "hi"}),
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(
            next(&mut alice).await.unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    got.sort();
    assert_eq!(got, ["message", "published"]);

    // A subscription token opens one channel the connection token does not list.
    let grant = token(json!({"sub": "carol", "exp": now() + 60, "channel": "secret:7"}));
    send(
        &mut carol,
        json!({"type": "subscribe", "channel": "secret:7"}),
    )
    .await;
    assert_eq!(next(&mut carol).await.unwrap()["code"], "forbidden");
    send(
        &mut carol,
        json!({"type": "subscribe", "channel": "secret:8", "token": grant}),
    )
    .await;
    assert_eq!(next(&mut carol).await.unwrap()["code"], "unauthorized");
    send(
        &mut carol,
        json!({"type": "subscribe", "channel": "secret:7", "token": grant}),
    )
    .await;
    assert_eq!(next(&mut carol).await.unwrap()["type"], "subscribed");
    send(
        &mut alice,
        json!({"type": "subscribe", "channel": "secret:7", "token": grant}),
    )
    .await;
    assert_eq!(next(&mut alice).await.unwrap()["code"], "unauthorized");

    let (_, metrics) = http(addr, "GET", "/metrics", None, None).await;
    assert!(
        metrics.contains("tether_hub_connections_auth{auth=\"authenticated\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tether_hub_connections_auth{auth=\"anonymous\"} 1"),
        "{metrics}"
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn an_open_hub_off_loopback_does_not_start() {
    let broker = tether_hub::broker_from_url("memory").unwrap();
    let everywhere = HubConfig {
        listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        ..config("open")
    };
    let refused = tether_hub::serve(everywhere, broker, None)
        .await
        .err()
        .unwrap();
    assert!(matches!(refused, HubError::Unprotected(_)), "{refused}");
    let text = refused.to_string();
    assert!(text.contains("--allow-anonymous"), "{text}");
    assert!(text.contains("--token-hmac-secret"), "{text}");
}

#[tokio::test]
async fn a_cross_site_text_plain_publish_is_refused() {
    let hub = tether_hub::serve(
        config("api"),
        tether_hub::broker_from_url("memory").unwrap(),
        None,
    )
    .await
    .unwrap();
    let addr = hub.local_addr();
    let body = r#"{"channel":"c","data":1}"#;
    // What a form or `fetch(…, {mode: "no-cors"})` on any web page can send.
    for content_type in ["text/plain", "application/x-www-form-urlencoded", ""] {
        let header = if content_type.is_empty() {
            String::new()
        } else {
            format!("Content-Type: {content_type}\r\n")
        };
        let request = format!(
            "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://evil.example\r\n\
             Connection: close\r\n{header}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let answer = raw_http(addr, request.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 415"),
            "{content_type}: {answer}"
        );
    }
    let (_, history) = http(addr, "GET", "/api/history/c", None, None).await;
    let history: Value = serde_json::from_str(&history).unwrap();
    assert_eq!(history["messages"], json!([]), "nothing was published");
    let (status, _) = http(addr, "POST", "/api/publish", Some(body), None).await;
    assert_eq!(status, 200);
    hub.shutdown().await;
}

#[tokio::test]
async fn a_flood_of_failed_connects_from_one_address_is_cut_off_and_others_are_served() {
    let hub = hub_with("failure_burst = 5\nfailure_rate = 0.5\n").await;
    let addr = hub.local_addr();
    let flooder = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let started = Instant::now();
    let (mut refused, mut limited) = (0, 0);
    for _ in 0..60 {
        match ws_connect_with(addr, "/ws?token=forged.token.here", flooder, &[]).await {
            Ok((mut ws, _)) => {
                assert_eq!(close_code(&mut ws).await, Some(4003));
                refused += 1;
            }
            Err(error) => {
                assert!(error.to_string().contains("429"), "{error}");
                limited += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let budget = 5 + (elapsed * 0.5).ceil() as usize + 1;
    assert!(
        refused <= budget,
        "{refused} token checks in {elapsed:.1}s; budget {budget}"
    );
    assert!(limited >= 60 - budget, "{limited} refused at the upgrade");

    // Another address is served as if nothing happened.
    let mut ws = connected(addr, &user("alice")).await;
    send(
        &mut ws,
        json!({"type": "publish", "channel": "room:lobby", "data": 1}),
    )
    .await;
    assert_eq!(next(&mut ws).await.unwrap()["type"], "published");
    let (_, metrics) = http(addr, "GET", "/metrics", None, None).await;
    assert!(
        metrics.contains(&format!("tether_hub_auth_limited_total {limited}")),
        "{metrics}"
    );
    hub.shutdown().await;
}
