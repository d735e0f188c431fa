//! Micro-benchmarks of the per-handshake work: parsing and rewriting the request head, and
//! choosing a backend on the ring. Run with `cargo bench -p tether-proxy`; compare runs of
//! the same machine, never absolute figures across machines.

use std::net::SocketAddr;

use tether_proxy::backend::Registry;
use tether_proxy::balance::Balancer;
use tether_proxy::config::{BackendConfig, BalanceConfig, Strategy};
use tether_proxy::handshake::RequestHead;
use tether_proxy::metrics::Metrics;

fn main() {
    divan::main();
}

const HEAD: &[u8] = b"GET /chat?sid=4f2a9c&room=lobby HTTP/1.1\r\nHost: app.example\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\nAccept: */*\r\nAccept-Language: en-US,en;q=0.5\r\nSec-WebSocket-Version: 13\r\nOrigin: https://app.example\r\nSec-WebSocket-Extensions: permessage-deflate\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nConnection: keep-alive, Upgrade\r\nCookie: session=abc123; theme=dark\r\nUpgrade: websocket\r\n\r\n";

#[divan::bench]
fn parse_websocket_head() -> bool {
    RequestHead::parse(divan::black_box(HEAD), 64)
        .unwrap()
        .websocket
}

#[divan::bench]
fn parse_and_rewrite_head(bencher: divan::Bencher) {
    let client = "203.0.113.7".parse().unwrap();
    let mut out = Vec::with_capacity(1024);
    bencher.bench_local(|| {
        out.clear();
        let head = RequestHead::parse(divan::black_box(HEAD), 64).unwrap();
        head.forward(HEAD, client, false, false, &mut out);
        out.len()
    });
}

fn registry(n: usize) -> Registry {
    let configs: Vec<BackendConfig> = (0..n)
        .map(|i| {
            BackendConfig::new(
                &format!("backend-{i}"),
                SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
            )
        })
        .collect();
    Registry::new(&configs, &Metrics::new())
}

#[divan::bench(args = [3, 16, 64])]
fn consistent_hash_pick(bencher: divan::Bencher, backends: usize) {
    let registry = registry(backends);
    let set = registry.snapshot();
    let balancer = Balancer::new(&BalanceConfig {
        strategy: Strategy::ConsistentHash,
        balance_factor: 1.25,
        ..BalanceConfig::default()
    });
    let keys: Vec<String> = (0..1024).map(|i| format!("session-{i}")).collect();
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 1) % keys.len();
        // The lease is dropped at once, so loads stay at zero and every pick does the full walk.
        balancer
            .pick(&set, Some(keys[i].as_bytes()), &[])
            .unwrap()
            .0
    });
}
