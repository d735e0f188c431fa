//! A reconnect storm: a backend holding 2 000 tunnels dies, every client comes back at once,
//! and admission control (`backend_handshake_rate`, `max_pending_handshakes`, jittered
//! `Retry-After`) keeps the survivors within their rate while everyone gets back.

mod common;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const RATE: u64 = 500;

/// One upgrade attempt: the open stream and the backend on `101`, or the `Retry-After`
/// seconds of a refusal (`None` when the attempt failed some other way).
async fn upgrade(addr: SocketAddr) -> Result<(TcpStream, String), Option<u64>> {
    let mut stream = TcpStream::connect(addr).await.map_err(|_| None)?;
    let request = "GET /ws HTTP/1.1\r\nHost: storm\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|_| None)?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) if head.len() < 8192 => head.push(byte[0]),
            _ => return Err(None),
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    if head.starts_with("http/1.1 101") {
        let backend = header(&format!("{}:", BACKEND_HEADER.to_ascii_lowercase()));
        return Ok((stream, backend.unwrap_or_default()));
    }
    Err(header("retry-after:").and_then(|v| v.parse().ok()))
}

/// Upgrades until it works, waiting as each refusal says; returns the stream, its backend and
/// the number of attempts.
async fn until_upgraded(addr: SocketAddr) -> (TcpStream, String, usize) {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match upgrade(addr).await {
            Ok((stream, backend)) => return (stream, backend, attempts),
            Err(Some(secs)) => tokio::time::sleep(Duration::from_secs(secs)).await,
            Err(None) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// What one client reports: its first backend, then (after losing it) when it was back and
/// where.
enum Report {
    Connected(String),
    Back {
        at: Instant,
        backend: String,
        attempts: usize,
    },
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backends_2000_clients_come_back_within_the_survivors_rates() {
    const CLIENTS: usize = 2000;
    let backends = echo_backends(3).await;
    let proxy = proxy(
        &format!(
            "[balance]\nstrategy = \"least-connections\"\n[health]\ninterval = \"200ms\"\n\
             [limits]\nbackend_handshake_rate = {RATE}\nmax_pending_handshakes = 200\n\
             retry_after_secs = 1\n"
        ),
        &backends,
    )
    .await;
    // Every tunnel on b1 first.
    assert!(proxy.set_draining("b2", true) && proxy.set_draining("b3", true));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let addr = proxy.addr();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (mut stream, backend, _) = until_upgraded(addr).await;
                let _ = tx.send(Report::Connected(backend));
                // Held until the backend dies, then back at once, as real clients do.
                let mut sink = [0u8; 64];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                let (stream, backend, attempts) = until_upgraded(addr).await;
                let _ = tx.send(Report::Back {
                    at: Instant::now(),
                    backend,
                    attempts,
                });
                stream
            })
        })
        .collect();
    for _ in 0..CLIENTS {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(Report::Connected(backend))) => assert_eq!(backend, "b1"),
            _ => panic!("the clients did not all connect"),
        }
    }
    assert!(proxy.set_draining("b2", false) && proxy.set_draining("b3", false));
    let survivors = [&backends[1], &backends[2]];
    let accepted = || -> Vec<u64> {
        survivors
            .iter()
            .map(|b| b.stats().accepted.load(Ordering::Relaxed))
            .collect()
    };
    let killed = Instant::now();
    backends[0].stop();

    // Sample what each survivor accepted while the clients come back.
    let mut samples = vec![(killed, accepted())];
    let mut back = Vec::new();
    while back.len() < CLIENTS {
        match tokio::time::timeout(Duration::from_millis(50), rx.recv()).await {
            Ok(Some(Report::Back {
                at,
                backend,
                attempts,
            })) => back.push((at, backend, attempts)),
            Ok(_) => panic!("a client reported twice"),
            Err(_) => {
                samples.push((Instant::now(), accepted()));
                assert!(
                    killed.elapsed() < Duration::from_secs(30),
                    "{} back",
                    back.len()
                );
            }
        }
    }
    samples.push((Instant::now(), accepted()));
    let elapsed = back.iter().map(|(at, ..)| *at - killed).max().unwrap();
    // The limits imply (2000 − 2 × one second's burst) ÷ (2 × rate) = 1 s at best; each
    // refused client waits its Retry-After of 1–2 s: within a few of those, everyone is back.
    assert!(
        elapsed < Duration::from_secs(10),
        "the last client was back after {elapsed:?}"
    );
    assert!(
        back.iter().all(|(_, b, _)| b == "b2" || b == "b3"),
        "a client reached b1"
    );
    // A token bucket of one second's worth: in any interval T at most RATE × (T + 1).
    for (i, (t0, a0)) in samples.iter().enumerate() {
        for (t1, a1) in &samples[i + 1..] {
            let allowed = RATE as f64 * ((*t1 - *t0).as_secs_f64() + 1.0);
            for s in 0..2 {
                let got = a1[s] - a0[s];
                assert!(
                    got as f64 <= allowed + 2.0,
                    "{} took {got} handshakes in {:?} (rate {RATE}/s)",
                    survivors[s].name(),
                    *t1 - *t0
                );
            }
        }
    }
    let refused = back.iter().filter(|(_, _, attempts)| *attempts > 1).count();
    assert!(
        refused > 0,
        "no client was held back: the storm never reached the limits"
    );
    println!(
        "storm: {CLIENTS} back in {elapsed:?}; {refused} waited at least once; survivors took {:?}",
        accepted()
    );
    drop(clients);
}
