//! Stickiness at low load: the bounded-load bound does not move keys below `bound_floor`,
//! and a hot key still spills once a backend is actually loaded.

mod common;
use std::collections::HashMap;
use std::time::Duration;

use common::*;

const HASH: &str =
    "[balance]\nstrategy = \"consistent-hash\"\nkey = \"query:sid\"\nbalance_factor = 1.25\n";

#[tokio::test]
async fn back_to_back_reconnects_of_one_key_on_an_idle_proxy_stay_on_one_backend() {
    let backends = echo_backends(3).await;
    let proxy = proxy(HASH, &backends).await;
    // Each reconnect arrives while the previous tunnels are still open (closing).
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(open(&proxy, "/ws?sid=alice").await);
    }
    let first = held[0].1.clone();
    assert!(
        held.iter().all(|(_, b)| *b == first),
        "{:?}",
        held.iter().map(|(_, b)| b).collect::<Vec<_>>()
    );
}

async fn map_keys(proxy: &tether_proxy::RunningProxy, order: &[usize]) -> HashMap<usize, String> {
    let mut held = Vec::new();
    let mut out = HashMap::new();
    for &i in order {
        let (ws, b) = open(proxy, &format!("/ws?sid=user{i}")).await;
        held.push(ws);
        out.insert(i, b);
    }
    out
}

#[tokio::test]
async fn sixty_keys_mapped_twice_land_the_same() {
    let backends = echo_backends(3).await;
    let proxy = proxy(HASH, &backends).await;
    let forward: Vec<usize> = (0..60).collect();
    let first = map_keys(&proxy, &forward).await;
    let idle = eventually(Duration::from_secs(10), || async {
        proxy.backends().iter().all(|b| b.active == 0)
    })
    .await;
    assert!(idle, "tunnels did not close");
    let reverse: Vec<usize> = (0..60).rev().collect();
    let second = map_keys(&proxy, &reverse).await;
    let moved: Vec<_> = forward.iter().filter(|i| first[i] != second[i]).collect();
    assert!(
        moved.is_empty(),
        "keys moved between two mappings: {moved:?}"
    );
    let used: std::collections::HashSet<_> = first.values().collect();
    assert_eq!(used.len(), 3, "60 keys should spread over 3 backends");
}

#[tokio::test]
async fn a_hot_key_at_load_still_spills() {
    let backends = echo_backends(3).await;
    let proxy = proxy(HASH, &backends).await;
    let mut held = Vec::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..60 {
        let (ws, b) = open(&proxy, "/ws?sid=hot").await;
        held.push(ws);
        *counts.entry(b).or_default() += 1;
    }
    // The bound at 60 tunnels: ⌈1.25 × 60 / 3⌉ = 25, above the default floor of 16.
    assert!(counts.len() >= 2, "hot key never spilled: {counts:?}");
    assert!(counts.values().all(|&n| n <= 25), "{counts:?}");
}
