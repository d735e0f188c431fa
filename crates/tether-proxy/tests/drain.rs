//! Closing tunnels on purpose: a paced drain (1012), a shutdown (1001) spread over the grace,
//! an idle timeout (1001), each with a close frame at a frame boundary, checked by clients
//! that parse every frame.

mod common;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tether_testkit::stream::{payload_byte, FRAME_SIZES};
use tokio_tungstenite::tungstenite::Message;

/// How a client's WebSocket ended, as a strict client saw it.
#[derive(Debug)]
struct Ending {
    /// The close code received, if a close frame came.
    code: Option<u16>,
    at: Instant,
    /// Whole frames received before it.
    frames: usize,
    /// Anything a strict client refuses: a cut frame, a frame of a size never sent, a
    /// payload spliced from two frames, an end without a close frame.
    error: Option<String>,
}

/// Reads every frame until the close frame; checks each frame is one the backend sent.
async fn watch(mut ws: Ws, limit: Duration) -> Ending {
    let mut frames = 0;
    let ending = |code, frames, error: Option<String>| Ending {
        code,
        at: Instant::now(),
        frames,
        error,
    };
    loop {
        match tokio::time::timeout(limit, ws.next()).await {
            Err(_) => return ending(None, frames, Some("no close frame in time".into())),
            Ok(None) => return ending(None, frames, Some("ended without a close frame".into())),
            Ok(Some(Err(e))) => return ending(None, frames, Some(e.to_string())),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return ending(frame.map(|f| u16::from(f.code)), frames, None)
            }
            Ok(Some(Ok(Message::Binary(data)))) => {
                let want = payload_byte(data.len());
                let whole = FRAME_SIZES.contains(&data.len())
                    && data[0] == want
                    && data[data.len() / 2] == want
                    && data[data.len() - 1] == want;
                if !whole {
                    let e = format!("a frame of {} bytes that was never sent", data.len());
                    return ending(None, frames, Some(e));
                }
                frames += 1;
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// The most events in any window of `width` (times sorted).
fn densest(times: &[Duration], width: Duration) -> usize {
    let mut best = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] > width {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

/// `POST path` to the admin listener, as a loopback operator would (Host names the listener).
async fn post(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    raw(addr, request.as_bytes()).await
}

fn json(text: &str) -> serde_json::Value {
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn backend_field(proxy: &tether_proxy::RunningProxy, name: &str) -> usize {
    proxy
        .backends()
        .into_iter()
        .find(|b| b.name == name)
        .unwrap()
        .closing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_drain_closes_every_tunnel_with_1012_at_a_frame_boundary_over_the_window() {
    const TUNNELS: usize = 300;
    let window = Duration::from_secs(3);
    let streamer = FrameStreamer::start("b1", any_port()).await.unwrap();
    let proxy = proxy_from_toml(&format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n\
         [[backend]]\nname = \"b1\"\naddr = \"{}\"\n",
        streamer.addr()
    ))
    .await;
    let mut clients = Vec::new();
    for _ in 0..TUNNELS {
        let (ws, response) = ws_connect(proxy.addr(), "/ws").await.expect("connect");
        assert_eq!(backend_of(&response), "b1");
        clients.push(tokio::spawn(watch(ws, Duration::from_secs(20))));
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            streamer.open() == TUNNELS
        })
        .await
    );
    // Let every stream get going (mid-frame, most of them) before the drain.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let admin = proxy.admin_addr().unwrap();
    let asked = Instant::now();
    let (status, answer) = post(admin, "/api/backends/b1/drain?close_within=3s").await;
    assert_eq!(status, 200, "{answer}");
    let view = json(&answer);
    assert_eq!(view["state"], "draining");
    assert_eq!(view["closing"], TUNNELS, "{view}");
    // Counting down while the window runs.
    tokio::time::sleep(window / 2).await;
    let midway = backend_field(&proxy, "b1");
    assert!(
        0 < midway && midway < TUNNELS,
        "closing = {midway} half-way through"
    );

    let mut times = Vec::new();
    let mut frames = 0;
    let mut wrong = Vec::new();
    for client in clients {
        let end = client.await.unwrap();
        if end.error.is_some() || end.code != Some(1012) {
            wrong.push((end.at - asked, end));
            continue;
        }
        frames += end.frames;
        times.push(end.at - asked);
    }
    assert!(
        wrong.is_empty(),
        "{} of {TUNNELS} ended badly: {wrong:?}",
        wrong.len()
    );
    times.sort();
    let (first, last) = (times[0], times[TUNNELS - 1]);
    // Uniform over 3 s, each finishing its frame (0.4 s for 1 MiB) before its close.
    assert!(
        last < window + Duration::from_millis(2500),
        "last close at {last:?}"
    );
    assert!(
        last - first > Duration::from_secs(2),
        "closes from {first:?} to {last:?}"
    );
    // Uniform draws put about a third in any second; the bound leaves room for a loaded
    // machine delaying some, and each third of the window must still get its share.
    let peak = densest(&times, Duration::from_secs(1));
    assert!(
        peak <= TUNNELS * 55 / 100,
        "{peak} of {TUNNELS} closes in one second"
    );
    for third in 0..3u32 {
        let (from, to) = (window * third / 3, window * (third + 1) / 3);
        let n = times.iter().filter(|t| **t >= from && **t < to).count();
        assert!(n >= TUNNELS / 10, "{n} closes between {from:?} and {to:?}");
    }
    assert!(
        frames > TUNNELS,
        "only {frames} frames crossed before the closes"
    );

    assert!(
        eventually(Duration::from_secs(5), || async {
            backend_field(&proxy, "b1") == 0
        })
        .await
    );
    assert!(eventually(Duration::from_secs(5), || async { streamer.open() == 0 }).await);
    let metrics = proxy.metrics_text();
    assert!(
        metrics.contains(&format!(
            "tether_tunnels_ended_total{{reason=\"Drain\"}} {TUNNELS}"
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_drain_without_close_within_leaves_live_tunnels_open() {
    let backends = echo_backends(1).await;
    let proxy = proxy("", &backends).await;
    let (mut ws, _) = open(&proxy, "/ws").await;
    let (status, answer) = post(proxy.admin_addr().unwrap(), "/api/backends/b1/drain").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(json(&answer)["closing"], 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(whoami(&mut ws).await.unwrap(), "b1");
}

#[tokio::test]
async fn a_bad_close_within_is_a_400_naming_the_parameter() {
    let backends = echo_backends(1).await;
    let proxy = proxy("", &backends).await;
    let (mut ws, _) = open(&proxy, "/ws").await;
    let admin = proxy.admin_addr().unwrap();
    for bad in ["soon", "-3s", "30", ""] {
        let path = format!("/api/backends/b1/drain?close_within={bad}");
        let (status, answer) = post(admin, &path).await;
        assert_eq!(status, 400, "{bad:?}: {answer}");
        let body = json(&answer);
        assert_eq!(body["parameter"], "close_within", "{answer}");
        assert!(
            body["error"].as_str().unwrap().contains("close_within"),
            "{answer}"
        );
    }
    // Nothing changed: the backend still takes tunnels and the live one works.
    assert_eq!(state_of(&proxy, "b1"), "up");
    assert_eq!(whoami(&mut ws).await.unwrap(), "b1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_tunnel_with_1001_spread_over_the_grace() {
    const TUNNELS: usize = 100;
    let grace = Duration::from_secs(2);
    let backends = echo_backends(2).await;
    let proxy = proxy("[runtime]\ngrace = \"2s\"", &backends).await;
    let mut clients = Vec::new();
    for _ in 0..TUNNELS {
        let (ws, _) = open(&proxy, "/ws").await;
        clients.push(tokio::spawn(watch(ws, Duration::from_secs(10))));
    }
    let asked = Instant::now();
    let stopping = tokio::spawn(proxy.shutdown());
    let mut times = Vec::new();
    for client in clients {
        let end = client.await.unwrap();
        assert_eq!(end.error, None, "{end:?}");
        assert_eq!(end.code, Some(1001), "{end:?}");
        times.push(end.at - asked);
    }
    let stopped = tokio::time::timeout(Duration::from_secs(8), stopping)
        .await
        .expect("shutdown did not return")
        .unwrap();
    times.sort();
    let last = times[TUNNELS - 1];
    assert!(
        last < grace + Duration::from_millis(500),
        "last close at {last:?}"
    );
    assert!(
        last - times[0] > grace / 2,
        "closes from {:?} to {last:?}",
        times[0]
    );
    let peak = densest(&times, grace / 4);
    assert!(
        peak <= TUNNELS * 45 / 100,
        "{peak} of {TUNNELS} closes in {:?}",
        grace / 4
    );
    let metrics = stopped.metrics_text();
    assert!(
        metrics.contains(&format!(
            "tether_tunnels_ended_total{{reason=\"Shutdown\"}} {TUNNELS}"
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_idle_timeout_closes_with_1001() {
    let backends = echo_backends(1).await;
    let proxy = proxy("[timeouts]\ntunnel_idle = \"300ms\"", &backends).await;
    let (mut ws, _) = open(&proxy, "/ws").await;
    assert_eq!(whoami(&mut ws).await.unwrap(), "b1");
    let end = watch(ws, Duration::from_secs(5)).await;
    assert_eq!(end.error, None, "{end:?}");
    assert_eq!(end.code, Some(1001));
    assert!(
        eventually(Duration::from_secs(3), || async {
            proxy
                .metrics_text()
                .contains("tether_tunnels_ended_total{reason=\"IdleTimeout\"} 1")
        })
        .await
    );
}
