//! The admin API, its access rules, reloads, PROXY protocol and graceful shutdown.

mod common;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "test-admin-token-0123456789abcdef";

/// One request on a fresh connection, with `Host` naming the address dialled unless
/// `headers` has its own; returns the status and the whole answer.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    raw(addr, request.as_bytes()).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Opens an event stream and returns its status and everything up to the first `backends`
/// event (or the whole answer if it ends first); 10 s at most.
async fn first_event(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    // `Connection: close` ends a refused request at once; a stream stays open regardless.
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
            if String::from_utf8_lossy(&out).contains("event: backends") {
                break;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// The body of an answer `raw` or `call` returned.
fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[tokio::test]
async fn metrics_name_the_documented_series() {
    let backends = echo_backends(2).await;
    let proxy = proxy("", &backends).await;
    let (mut ws, _) = open(&proxy, "/ws").await;
    ws.send(Message::text("hello")).await.unwrap();
    ws.next().await.unwrap().unwrap();
    let (status, text) = http(proxy.admin_addr().unwrap(), "GET", "/metrics").await;
    assert_eq!(status, 200);
    for series in [
        "tether_connections_active{backend=\"b1\"}",
        "tether_handshakes_total{backend=",
        "status=\"101\"",
        "tether_backend_up{backend=\"b2\"} 1",
        "tether_bytes_total{backend=",
        "direction=\"ClientToBackend\"",
        "tether_handshake_duration_seconds_bucket",
    ] {
        assert!(text.contains(series), "missing {series} in\n{text}");
    }
}

#[tokio::test]
async fn drain_stops_new_tunnels_but_keeps_live_ones() {
    let backends = echo_backends(2).await;
    let proxy = proxy("[balance]\nstrategy = \"round-robin\"", &backends).await;
    let mut live = Vec::new();
    for _ in 0..2 {
        live.push(open(&proxy, "/ws").await);
    }
    let admin = proxy.admin_addr().unwrap();
    // No token is configured: the admin listener takes changes from loopback.
    let (status, answer) = call(admin, "POST", "/api/backends/b1/drain", &[], "").await;
    assert_eq!(status, 200, "{answer}");
    let (_, list) = http(admin, "GET", "/api/backends").await;
    let json: serde_json::Value =
        serde_json::from_str(list.rsplit("\r\n\r\n").next().unwrap()).unwrap();
    let b1 = json
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "b1")
        .unwrap();
    assert_eq!(b1["state"], "draining");
    assert_eq!(b1["active"], 1);
    assert!(b1["addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    for _ in 0..4 {
        assert_eq!(open(&proxy, "/ws").await.1, "b2");
    }
    // The tunnel already on b1 still works.
    let (ws, name) = live.iter_mut().find(|(_, b)| b == "b1").unwrap();
    assert_eq!(whoami(ws).await.unwrap(), name.as_str());
    let enable = call(admin, "POST", "/api/backends/b1/enable", &[], "").await;
    assert_eq!(enable.0, 200, "{}", enable.1);
    let unknown = call(admin, "POST", "/api/backends/nope/drain", &[], "").await;
    assert_eq!(unknown.0, 404, "{}", unknown.1);
    let names: Vec<String> = futures_util::future::join_all((0..4).map(|_| open(&proxy, "/ws")))
        .await
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    assert!(names.iter().any(|n| n == "b1"));
}

#[tokio::test]
async fn reload_replaces_backends_without_cutting_tunnels() {
    let backends = echo_backends(3).await;
    let dir = std::env::temp_dir().join(format!("tether-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    let write = |names: &[usize]| {
        let mut text = "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n[balance]\nstrategy = \"round-robin\"\n".to_owned();
        for &i in names {
            text.push_str(&format!(
                "[[backend]]\nname = \"{}\"\naddr = \"{}\"\n",
                backends[i].name(),
                backends[i].addr()
            ));
        }
        std::fs::write(&path, text).unwrap();
    };
    write(&[0, 1]);
    let config = tether_proxy::Config::from_file(&path).unwrap();
    let proxy = tether_proxy::Proxy::bind(config, Some(path.clone()))
        .await
        .unwrap()
        .spawn();
    let mut live = Vec::new();
    for _ in 0..2 {
        live.push(open(&proxy, "/ws").await);
    }
    write(&[1, 2]);
    let admin = proxy.admin_addr().unwrap();
    let (status, answer) = call(admin, "POST", "/api/reload", &[], "").await;
    assert_eq!(status, 200, "{answer}");
    for (ws, name) in live.iter_mut() {
        assert_eq!(
            whoami(ws).await.unwrap(),
            name.as_str(),
            "a tunnel was cut by the reload"
        );
    }
    let names: Vec<String> = futures_util::future::join_all((0..4).map(|_| open(&proxy, "/ws")))
        .await
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    assert!(
        names.iter().all(|n| n != "b1") && names.iter().any(|n| n == "b3"),
        "{names:?}"
    );
    // A broken file is refused and the current backends stay.
    std::fs::write(&path, "[balance]\nstrategy = \"nope\"\n").unwrap();
    let (status, answer) = call(admin, "POST", "/api/reload", &[], "").await;
    assert_eq!(status, 422);
    assert!(answer.contains("balance.strategy"), "{answer}");
    assert_eq!(proxy.backends().len(), 2);
}

#[tokio::test]
async fn proxy_protocol_from_a_trusted_peer_sets_the_client_ip() {
    let backends = echo_backends(3).await;
    let proxy = proxy("[listen]\naccept_proxy = true\ntrusted_proxies = [\"127.0.0.1/32\"]\n[balance]\nstrategy = \"consistent-hash\"\nkey = \"ip\"\nbalance_factor = 0", &backends).await;
    let head = "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let mut seen = std::collections::HashSet::new();
    for i in 0..12 {
        let request = format!("PROXY TCP4 203.0.113.{i} 127.0.0.1 4000 80\r\n{head}");
        let (status, text) = raw(proxy.addr(), request.as_bytes()).await;
        assert_eq!(status, 101, "{text}");
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("X-Tether-Backend: "))
            .unwrap()
            .to_owned();
        let (_, again) = raw(proxy.addr(), request.as_bytes()).await;
        assert!(
            again.contains(&format!("X-Tether-Backend: {name}")),
            "same PROXY source, other backend"
        );
        seen.insert(name);
    }
    assert!(
        seen.len() >= 2,
        "PROXY source addresses were not used as the key"
    );
    let (status, _) = raw(proxy.addr(), b"PROXY NONSENSE\r\n\r\n").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn stats_uri_serves_the_dashboard_and_api_on_the_main_listener() {
    let backends = echo_backends(1).await;
    let proxy = proxy("[admin]\nstats_uri = \"/_tether/\"", &backends).await;
    let (status, page) = http(proxy.addr(), "GET", "/_tether/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<html"), "{page}");
    let (status, list) = http(proxy.addr(), "GET", "/_tether/api/backends").await;
    assert_eq!(status, 200);
    assert!(list.contains("\"name\":\"b1\""), "{list}");
    // Everything else still goes to the backends, including look-alike paths.
    assert_eq!(open(&proxy, "/ws").await.1, "b1");
    let (status, body) = http(proxy.addr(), "GET", "/_tetherish").await;
    assert_eq!(status, 200);
    assert!(body.ends_with("b1"), "{body}");
}

#[tokio::test]
async fn shutdown_stops_accepting_and_closes_live_tunnels_with_1001_within_the_grace() {
    let backends = echo_backends(1).await;
    let proxy = proxy("[runtime]\ngrace = \"2s\"", &backends).await;
    let addr = proxy.addr();
    let (mut ws, _) = open(&proxy, "/ws").await;
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(proxy.shutdown());
    // Not accepting any more.
    assert!(
        eventually(Duration::from_secs(2), || async {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await
    );
    // The live tunnel is closed with a close frame saying the proxy goes away, within the
    // grace (at a moment drawn over it, so clients come back spread out).
    let code = tokio::time::timeout(Duration::from_secs(4), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await
    .expect("no close frame within the grace");
    assert_eq!(code, Some(1001));
    drop(ws);
    tokio::time::timeout(Duration::from_secs(3), stopping)
        .await
        .expect("shutdown did not end when the last tunnel did")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(4));
}

/// A proxy with `[admin]` keys `admin` (and `stats_uri = "/_tether/"`) in front of one backend.
async fn locked_proxy(admin: &str) -> (tether_proxy::RunningProxy, Vec<EchoServer>) {
    let backends = echo_backends(1).await;
    let proxy = proxy(
        &format!("[admin]\nstats_uri = \"/_tether/\"\n{admin}"),
        &backends,
    )
    .await;
    (proxy, backends)
}

#[tokio::test]
async fn anonymous_changes_get_401_with_a_bearer_challenge_on_both_listeners() {
    let (proxy, _backends) = locked_proxy(&format!("token = \"{TOKEN}\"")).await;
    let admin = proxy.admin_addr().unwrap();
    for (addr, prefix) in [(admin, ""), (proxy.addr(), "/_tether")] {
        for path in [
            "/api/backends/b1/drain",
            "/api/backends/b1/enable",
            "/api/reload",
        ] {
            let (status, answer) = call(addr, "POST", &format!("{prefix}{path}"), &[], "").await;
            assert_eq!(status, 401, "{prefix}{path}: {answer}");
            assert!(
                answer.contains("www-authenticate: Bearer realm=\"tether admin\"\r\n"),
                "{answer}"
            );
        }
    }
    assert_eq!(
        state_of(&proxy, "b1"),
        "up",
        "a refused drain changed nothing"
    );
}

#[tokio::test]
async fn the_token_from_token_file_drains_enables_and_reloads() {
    let dir = std::env::temp_dir().join(format!("tether-admin-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("admin.token"), format!("  {TOKEN}\n")).unwrap();
    let backends = echo_backends(1).await;
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\nstats_uri = \"/_tether/\"\ntoken_file = \"admin.token\"\n[[backend]]\nname = \"b1\"\naddr = \"{}\"\n",
            backends[0].addr()
        ),
    )
    .unwrap();
    let config = tether_proxy::Config::from_file(&path).unwrap();
    let proxy = tether_proxy::Proxy::bind(config, Some(path))
        .await
        .unwrap()
        .spawn();
    let auth = bearer(TOKEN);
    let auth = [("Authorization", auth.as_str())];
    let admin = proxy.admin_addr().unwrap();
    let (status, answer) = call(admin, "POST", "/api/backends/b1/drain", &auth, "").await;
    assert_eq!(status, 200, "{answer}");
    assert!(body(&answer).contains("\"state\":\"draining\""), "{answer}");
    assert_eq!(state_of(&proxy, "b1"), "draining");
    // The same token works through stats_uri on the main listener.
    let (status, answer) = call(
        proxy.addr(),
        "POST",
        "/_tether/api/backends/b1/enable",
        &auth,
        "",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(state_of(&proxy, "b1"), "up");
    let (status, answer) = call(proxy.addr(), "POST", "/_tether/api/reload", &auth, "").await;
    assert_eq!(status, 200, "{answer}");
    // JSON is the one body type accepted.
    let json = [auth[0], ("Content-Type", "application/json")];
    let (status, answer) = call(admin, "POST", "/api/backends/b1/drain", &json, "{}").await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn a_wrong_token_gets_401_and_changes_nothing() {
    let (proxy, _backends) = locked_proxy(&format!("token = \"{TOKEN}\"")).await;
    let wrong = bearer("test-admin-token-0123456789abcdeX");
    let almost = bearer(&TOKEN[..TOKEN.len() - 1]);
    let basic = format!("Basic {TOKEN}");
    for value in [wrong.as_str(), almost.as_str(), basic.as_str(), "Bearer "] {
        for addr_path in [
            (proxy.admin_addr().unwrap(), "/api/backends/b1/drain"),
            (proxy.addr(), "/_tether/api/backends/b1/drain"),
        ] {
            let (status, answer) = call(
                addr_path.0,
                "POST",
                addr_path.1,
                &[("Authorization", value)],
                "",
            )
            .await;
            assert_eq!(status, 401, "{value}: {answer}");
            assert!(answer.contains("error=\"invalid_token\""), "{answer}");
            assert!(
                !answer.contains(TOKEN),
                "the answer repeats the token: {answer}"
            );
        }
    }
    assert_eq!(state_of(&proxy, "b1"), "up");
}

#[tokio::test]
async fn posts_a_browser_could_send_cross_site_are_refused_even_with_the_token() {
    let (proxy, _backends) = locked_proxy(&format!("token = \"{TOKEN}\"")).await;
    let auth = bearer(TOKEN);
    let main = proxy.addr();
    let drain = "/_tether/api/backends/b1/drain";
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, u16);
    let cases: [Case; 7] = [
        // What an HTML form on another site sends: no Authorization, a form body.
        (
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Origin", "http://evil.example"),
                ("Sec-Fetch-Site", "cross-site"),
            ],
            "a=1",
            403,
        ),
        (
            &[("Content-Type", "application/x-www-form-urlencoded")],
            "a=1",
            415,
        ),
        (
            &[("Content-Type", "multipart/form-data; boundary=x")],
            "--x--",
            415,
        ),
        (&[("Content-Type", "text/plain")], "hi", 415),
        (
            &[
                ("Authorization", &auth),
                ("Content-Type", "text/plain;charset=UTF-8"),
            ],
            "hi",
            415,
        ),
        (
            &[("Authorization", &auth), ("Origin", "http://evil.example")],
            "",
            403,
        ),
        (
            &[("Authorization", &auth), ("Sec-Fetch-Site", "same-site")],
            "",
            403,
        ),
    ];
    for (headers, payload, want) in cases {
        let (status, answer) = call(main, "POST", drain, headers, payload).await;
        assert_eq!(status, want, "{headers:?}: {answer}");
    }
    assert_eq!(
        state_of(&proxy, "b1"),
        "up",
        "no refused request changed anything"
    );
    // The dashboard's own request: same origin, the token, no body.
    let origin = format!("http://{main}");
    let own = [
        ("Authorization", auth.as_str()),
        ("Origin", origin.as_str()),
        ("Sec-Fetch-Site", "same-origin"),
    ];
    let (status, answer) = call(main, "POST", drain, &own, "").await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn without_a_token_only_loopback_names_on_the_admin_listener_may_change_state() {
    let (proxy, _backends) = locked_proxy("").await;
    let admin = proxy.admin_addr().unwrap();
    // The main listener faces clients: no change without a token, even from loopback.
    let (status, answer) = call(
        proxy.addr(),
        "POST",
        "/_tether/api/backends/b1/drain",
        &[],
        "",
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert!(
        body(&answer).contains("token_file"),
        "the refusal says how to fix it: {answer}"
    );
    // DNS rebinding: a page on evil.example whose name now points at 127.0.0.1.
    let rebound = [("Host", "evil.example:9090")];
    let (status, answer) = call(admin, "POST", "/api/backends/b1/drain", &rebound, "").await;
    assert_eq!(status, 403, "{answer}");
    // A form from any page, even posted to 127.0.0.1.
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let (status, answer) = call(admin, "POST", "/api/backends/b1/drain", &form, "x=1").await;
    assert_eq!(status, 415, "{answer}");
    assert_eq!(state_of(&proxy, "b1"), "up");
    // curl on the machine itself.
    let (status, answer) = call(admin, "POST", "/api/backends/b1/drain", &[], "").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(state_of(&proxy, "b1"), "draining");
    let localhost = [("Host", "localhost")];
    let (status, answer) = call(admin, "POST", "/api/backends/b1/enable", &localhost, "").await;
    assert_eq!(status, 200, "{answer}");
    // Tickets exist only to carry a token.
    let (status, _) = call(admin, "POST", "/api/events/ticket", &[], "").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn reads_are_public_by_default() {
    let (proxy, _backends) = locked_proxy(&format!("token = \"{TOKEN}\"")).await;
    for (addr, prefix) in [
        (proxy.admin_addr().unwrap(), ""),
        (proxy.addr(), "/_tether"),
    ] {
        for path in ["/metrics", "/api/backends"] {
            let (status, answer) = call(addr, "GET", &format!("{prefix}{path}"), &[], "").await;
            assert_eq!(status, 200, "{prefix}{path}: {answer}");
        }
        let (status, events) = first_event(addr, &format!("{prefix}/api/events"), &[]).await;
        assert_eq!(status, 200, "{events}");
        assert!(events.contains("\"name\":\"b1\""), "{events}");
    }
}

#[tokio::test]
async fn read_token_locks_reads_and_the_stream_takes_a_single_use_ticket() {
    let (proxy, _backends) = locked_proxy(&format!("token = \"{TOKEN}\"\nread = \"token\"")).await;
    let auth = bearer(TOKEN);
    let auth = [("Authorization", auth.as_str())];
    for (addr, prefix) in [
        (proxy.admin_addr().unwrap(), ""),
        (proxy.addr(), "/_tether"),
    ] {
        for path in ["/metrics", "/api/backends"] {
            let path = format!("{prefix}{path}");
            let (status, answer) = call(addr, "GET", &path, &[], "").await;
            assert_eq!(status, 401, "{path}: {answer}");
            assert!(!answer.contains("tether_backend_up"), "{answer}");
            let (status, answer) = call(addr, "GET", &path, &auth, "").await;
            assert_eq!(status, 200, "{path}: {answer}");
            assert!(answer.contains("no-store"), "{answer}");
        }
        let events = format!("{prefix}/api/events");
        let (status, answer) = first_event(addr, &events, &[]).await;
        assert_eq!(status, 401, "{answer}");
        let (status, answer) = first_event(addr, &format!("{events}?ticket=00ff"), &[]).await;
        assert_eq!(status, 401, "a made-up ticket: {answer}");
        // curl can send the header to the stream itself.
        let (status, answer) = first_event(addr, &events, &auth).await;
        assert_eq!(status, 200, "{answer}");
        // A browser buys a ticket with the token, then opens the stream with it, once.
        let ticket_path = format!("{prefix}/api/events/ticket");
        assert_eq!(call(addr, "POST", &ticket_path, &[], "").await.0, 401);
        let (status, answer) = call(addr, "POST", &ticket_path, &auth, "").await;
        assert_eq!(status, 200, "{answer}");
        let issued: serde_json::Value = serde_json::from_str(body(&answer)).unwrap();
        let ticket = issued["ticket"].as_str().unwrap();
        assert_eq!(issued["expires_in_secs"], 30);
        let with_ticket = format!("{events}?ticket={ticket}");
        let (status, answer) = first_event(addr, &with_ticket, &[]).await;
        assert_eq!(status, 200, "{answer}");
        assert!(answer.contains("event: backends"), "{answer}");
        let (status, answer) = first_event(addr, &with_ticket, &[]).await;
        assert_eq!(status, 401, "a used ticket: {answer}");
    }
    // The page itself carries no data and stays reachable, but not inside another site.
    let (status, page) = call(proxy.addr(), "GET", "/_tether/", &[], "").await;
    assert_eq!(status, 200);
    assert!(page.contains("x-frame-options: DENY"), "{page}");
}
