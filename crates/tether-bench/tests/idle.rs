//! Idle mode against a real WebSocket server that records where each connection came from.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tether_bench::echo::EchoServer;
use tether_bench::idle::{self, IdleArgs};
use tether_bench::procstat::WatchArgs;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

fn args(url: String, connections: usize, sources: u8) -> IdleArgs {
    IdleArgs {
        url: url.parse().unwrap(),
        ca: None,
        connections,
        sources,
        concurrency: 32,
        hold: Duration::from_millis(200),
        settle: Duration::from_millis(50),
        sample: 20,
        sid_param: "sid".into(),
        watch: WatchArgs::default(),
    }
}

/// A WebSocket server that answers `whoami` and remembers every peer address.
async fn recording_server() -> (String, Arc<Mutex<HashSet<IpAddr>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let peers = Arc::new(Mutex::new(HashSet::new()));
    let seen = peers.clone();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            seen.lock().unwrap().insert(peer.ip());
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() && ws.send(Message::text("recorder")).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (url, peers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_every_connection_from_several_loopback_sources() {
    let (url, peers) = recording_server().await;
    let report = idle::run(args(url, 200, 4)).await.unwrap();
    assert_eq!(report.opened, 200, "{report:?}");
    assert_eq!(report.failed, 0);
    assert_eq!(report.still_open, 200);
    assert_eq!((report.sampled, report.sample_answered), (20, 20));
    let peers = peers.lock().unwrap();
    let expected: HashSet<IpAddr> = (1..=4)
        .map(|i| format!("127.0.0.{i}").parse().unwrap())
        .collect();
    assert_eq!(*peers, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sees_the_echo_backend_hold_them_and_counts_a_vanished_server() {
    let echo = EchoServer::start("b1", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = format!("ws://{}/ws", echo.addr());
    let mut a = args(url, 50, 2);
    a.hold = Duration::from_millis(300);
    a.watch = WatchArgs {
        pids: vec![std::process::id()],
    };
    let stats_open = {
        let run = tokio::spawn(idle::run(a));
        // While held, the backend sees them all open.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while echo.stats().open.load(std::sync::atomic::Ordering::Relaxed) < 50
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let open = echo.stats().open.load(std::sync::atomic::Ordering::Relaxed);
        echo.stop(); // the sessions die with the server
        let report = run.await.unwrap().unwrap();
        assert_eq!(report.opened, 50);
        assert_eq!(report.still_open, 0, "{report:?}");
        assert_eq!(report.sample_answered, 0);
        assert!(report.server_rss_bytes_per_conn.is_some());
        open
    };
    assert_eq!(stats_open, 50);
}

#[tokio::test]
async fn idle_against_a_closed_port_says_no_connection_could_be_opened_and_why() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/ws", free.local_addr().unwrap());
    drop(free);
    let err = idle::run(args(url, 5, 2)).await.unwrap_err();
    assert!(
        matches!(&err, tether_bench::BenchError::NoConnections { first, .. }
            if matches!(**first, tether_bench::BenchError::Connect { .. })),
        "{err:?}"
    );
    assert!(err.chain().contains("refused"), "{}", err.chain());
}
