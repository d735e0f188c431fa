//! Ping-pong against a real echo backend on loopback.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tether_bench::echo::EchoServer;
use tether_bench::pingpong::{self, PingpongArgs};
use tether_bench::procstat::WatchArgs;
use tether_bench::BenchError;

fn args(url: String, connections: usize) -> PingpongArgs {
    PingpongArgs {
        url: url.parse().unwrap(),
        ca: None,
        connections,
        size: 512,
        duration: Duration::from_millis(800),
        warmup: Duration::ZERO,
        sid_param: "sid".into(),
        sources: 2,
        watch: WatchArgs::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingpong_counts_every_echoed_message_and_reports_ordered_percentiles() {
    let echo = EchoServer::start("b1", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let connections = 4;
    let mut a = args(format!("ws://{}/ws", echo.addr()), connections);
    a.watch = WatchArgs {
        pids: vec![std::process::id()],
    };
    let report = pingpong::run(a).await.unwrap();

    assert_eq!(report.errors, 0);
    assert!(report.messages > 0, "{report:?}");
    // With no warm-up, the server echoed every counted message plus at most the one in flight
    // per connection when the window closed.
    let echoed = echo.stats().echoed.load(Ordering::Relaxed);
    assert!(echoed >= report.messages, "{echoed} < {}", report.messages);
    assert!(
        echoed - report.messages <= connections as u64,
        "server echoed {echoed}, generator counted {}",
        report.messages
    );
    let l = report.latency;
    assert_eq!(
        l.samples, report.messages,
        "one latency per counted message"
    );
    assert!(l.p50_us > 0 && l.p50_us <= l.p99_us && l.p99_us <= l.p999_us && l.p999_us <= l.max_us);
    let expected_rate = report.messages as f64 / report.duration_s;
    assert!((report.msgs_per_sec - expected_rate).abs() <= 1.0);
    let server = report.server.expect("own process was watched");
    assert_eq!(server.pids, 1);
    assert!(report.server_cpu_us_per_msg.is_some());
}

#[tokio::test]
async fn pingpong_against_a_closed_port_is_a_connect_error() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = free.local_addr().unwrap();
    drop(free);
    let err = pingpong::run(args(format!("ws://{addr}/ws"), 1))
        .await
        .unwrap_err();
    assert!(matches!(err, BenchError::Connect { .. }), "{err}");
}

#[tokio::test]
async fn pingpong_rejects_zero_connections() {
    let err = pingpong::run(args("ws://127.0.0.1:9/ws".into(), 0))
        .await
        .unwrap_err();
    assert!(matches!(err, BenchError::InvalidArgument(_)), "{err}");
}
