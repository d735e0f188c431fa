//! Handshake-rate mode against a real echo backend.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tether_bench::echo::EchoServer;
use tether_bench::handshake::{self, HandshakeArgs};
use tether_bench::procstat::WatchArgs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_cycles_open_and_close_cleanly_and_are_all_counted() {
    let echo = EchoServer::start("b1", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let report = handshake::run(HandshakeArgs {
        url: format!("ws://{}/ws", echo.addr()).parse().unwrap(),
        ca: None,
        concurrency: 4,
        duration: Duration::from_millis(500),
        warmup: Duration::ZERO,
        sources: 4,
        sid_param: "sid".into(),
        watch: WatchArgs::default(),
    })
    .await
    .unwrap();
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(report.handshakes > 0);
    assert_eq!(report.latency.samples, report.handshakes);
    let accepted = echo.stats().accepted.load(Ordering::Relaxed);
    assert!(accepted >= report.handshakes);
    // Each cycle ends with a close handshake, so the backend is left with nothing open.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while echo.stats().open.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(echo.stats().open.load(Ordering::Relaxed), 0);
}
