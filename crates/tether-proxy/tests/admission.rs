//! Admission control against reconnect storms: a per-backend handshake rate and a cap on
//! handshakes in flight, both answered with 503 and a jittered `Retry-After`.

mod common;
use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;

fn upgrade(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

fn retry_after(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after: ")
                .map(str::to_owned)
        })
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn a_burst_above_the_backend_rate_gets_503s_with_spread_retry_after() {
    let backends = echo_backends(1).await;
    let proxy = proxy(
        "[limits]\nbackend_handshake_rate = 5\nretry_after_secs = 2\n",
        &backends,
    )
    .await;
    let started = Instant::now();
    let burst: Vec<_> = (0..40)
        .map(|_| {
            let addr = proxy.addr();
            tokio::spawn(async move { raw(addr, &upgrade("/ws")).await })
        })
        .collect();
    let mut switched = 0;
    let mut refused = Vec::new();
    for h in burst {
        let (status, text) = h.await.expect("client task");
        match status {
            101 => switched += 1,
            503 => refused.push(retry_after(&text).expect("503 carries Retry-After")),
            other => panic!("unexpected status {other}: {text}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let accepted = backends[0]
        .stats()
        .accepted
        .load(std::sync::atomic::Ordering::Relaxed);
    // A bucket of one second's worth, refilled at the rate while the burst lasted.
    let allowed = 5.0 + 5.0 * elapsed;
    assert!(
        (accepted as f64) <= allowed,
        "backend saw {accepted} handshakes in {elapsed:.2}s, rate allows {allowed:.1}"
    );
    assert!(switched >= 5, "only {switched} got through");
    assert!(refused.len() >= 20, "only {} refused", refused.len());
    assert!(refused.iter().all(|s| (2..=4).contains(s)), "{refused:?}");
    let distinct: HashSet<_> = refused.iter().collect();
    assert!(
        distinct.len() > 1,
        "Retry-After without jitter: {refused:?}"
    );
    let metrics = proxy.metrics_text();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("tether_backend_throttled_total{backend=\"b1\"}"))
        .unwrap_or_else(|| panic!("no throttled counter:\n{metrics}"));
    assert!(
        line.ends_with(&format!(" {}", refused.len())),
        "{line} vs {} refused",
        refused.len()
    );
}

#[tokio::test]
async fn handshakes_above_max_pending_are_refused_until_one_finishes() {
    // A backend that accepts and never answers keeps every handshake pending.
    let silent = tokio::net::TcpListener::bind(any_port()).await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut socks = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            socks.push(s);
        }
    });
    let text = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n\
         [timeouts]\nresponse = \"2s\"\n[limits]\nmax_pending_handshakes = 2\n\
         [[backend]]\nname = \"silent\"\naddr = \"{addr}\"\n"
    );
    let proxy = proxy_from_toml(&text).await;
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(&upgrade("/ws")).await.unwrap();
        waiting.push(s);
    }
    // Both are pending once the proxy has connected them to the silent backend.
    let pending = eventually(Duration::from_secs(10), || async {
        let (status, _) = raw(proxy.addr(), &upgrade("/probe")).await;
        status == 503
    })
    .await;
    assert!(pending, "a third handshake was not refused");
    let (status, text) = raw(proxy.addr(), &upgrade("/ws")).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("too many handshakes in flight"), "{text}");
    assert!(matches!(retry_after(&text), Some(2..=4)), "{text}");
    // The held ones time out (502/504) and free their places.
    drop(waiting);
    let freed = eventually(Duration::from_secs(15), || async {
        let (status, _) = raw(proxy.addr(), &upgrade("/ws")).await;
        status != 503
    })
    .await;
    assert!(freed, "pending handshakes never left the gate");
    held.abort();
}
