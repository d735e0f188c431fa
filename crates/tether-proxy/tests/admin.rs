//! The admin API, reloads, PROXY protocol and graceful shutdown.

mod common;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

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
    let (status, body) = http(admin, "POST", "/api/backends/b1/drain").await;
    assert_eq!(status, 200, "{body}");
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
    assert_eq!(http(admin, "POST", "/api/backends/b1/enable").await.0, 200);
    assert_eq!(http(admin, "POST", "/api/backends/nope/drain").await.0, 404);
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
    let (status, body) = http(proxy.admin_addr().unwrap(), "POST", "/api/reload").await;
    assert_eq!(status, 200, "{body}");
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
    let (status, body) = http(proxy.admin_addr().unwrap(), "POST", "/api/reload").await;
    assert_eq!(status, 422);
    assert!(body.contains("balance.strategy"), "{body}");
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
async fn shutdown_waits_for_tunnels_within_the_grace_period() {
    let backends = echo_backends(1).await;
    let proxy = proxy("[runtime]\ngrace = \"5s\"", &backends).await;
    let addr = proxy.addr();
    let (mut ws, _) = open(&proxy, "/ws").await;
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(proxy.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Not accepting any more, but the live tunnel still works.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert_eq!(whoami(&mut ws).await.unwrap(), "b1");
    assert!(!stopping.is_finished());
    ws.close(None).await.unwrap();
    drop(ws);
    tokio::time::timeout(Duration::from_secs(3), stopping)
        .await
        .expect("shutdown did not end when the last tunnel did")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    let _ = tokio::io::sink().write_all(b"").await;
}
