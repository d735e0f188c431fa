//! Rebalancing live tunnels after scale-out (`[rebalance] rate`): the tunnels that belong
//! to the backend that joined are closed with 1012 at the configured rate, and no others.

mod common;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tether_proxy::Config;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// A tunnel's close as its client saw it: which one, the close code, when.
type Closed = (usize, Option<u16>, Instant);

/// Opens `/ws?sid=k{key}` and reports its close on `closes`; returns the backend it reached.
async fn keyed(
    proxy: &tether_proxy::RunningProxy,
    key: usize,
    closes: &mpsc::UnboundedSender<Closed>,
) -> String {
    let (mut ws, response) = ws_connect(proxy.addr(), &format!("/ws?sid=k{key}"))
        .await
        .expect("connect");
    let closes = closes.clone();
    tokio::spawn(async move {
        let code = loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                _ => break None,
            }
        };
        let _ = closes.send((key, code, Instant::now()));
    });
    backend_of(&response)
}

fn config(balance: &str, rate: u32, backends: &[EchoServer]) -> String {
    let mut text = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n{balance}\n\
         [rebalance]\nrate = {rate}\n"
    );
    for b in backends {
        text.push_str(&format!(
            "[[backend]]\nname = \"{}\"\naddr = \"{}\"\n",
            b.name(),
            b.addr()
        ));
    }
    text
}

/// The most events in any window of `width` (times sorted).
fn densest(times: &[Instant], width: Duration) -> usize {
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

async fn rebalance_done(proxy: &tether_proxy::RunningProxy) -> bool {
    eventually(Duration::from_secs(20), || async {
        let view = proxy.rebalance();
        !view.active && view.moved > 0
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_moves_the_keys_of_the_new_backend_at_the_rate_and_no_others() {
    const KEYS: usize = 400;
    const RATE: u32 = 40;
    let backends = echo_backends(4).await;
    let hashing = "[balance]\nstrategy = \"consistent-hash\"\nkey = \"query:sid\"";
    let proxy = proxy_from_toml(&config(hashing, RATE, &backends[..3])).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut placed = Vec::new();
    for key in 0..KEYS {
        placed.push(keyed(&proxy, key, &tx).await);
    }
    assert!(placed.iter().all(|b| b != "b4"));
    proxy.reload(&Config::from_toml(&config(hashing, RATE, &backends)).unwrap());
    assert!(rebalance_done(&proxy).await, "{:?}", proxy.rebalance());
    let moved = proxy.rebalance().moved as usize;

    let mut closed = BTreeMap::new();
    while closed.len() < moved {
        let (key, code, at) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a moved tunnel's client saw no close")
            .unwrap();
        assert_eq!(code, Some(1012), "k{key} closed with {code:?}");
        closed.insert(key, at);
    }
    // About a quarter of the keys belong to the fourth backend now.
    assert!(
        (KEYS * 15 / 100..=KEYS * 35 / 100).contains(&moved),
        "{moved} of {KEYS} moved"
    );
    // Every one of them comes back to it...
    for key in closed.keys() {
        assert_eq!(
            keyed(&proxy, *key, &tx).await,
            "b4",
            "k{key} came back elsewhere"
        );
    }
    // ...and no other tunnel was closed: their keys still belong where they were.
    assert!(rx.try_recv().is_err(), "a tunnel that stays was closed");
    for key in (0..KEYS).filter(|k| !closed.contains_key(k)) {
        assert_ne!(
            keyed(&proxy, key, &tx).await,
            "b4",
            "k{key} belongs to b4 but stayed"
        );
    }
    // At the configured rate: never faster, whatever delays a loaded machine adds.
    let mut times: Vec<Instant> = closed.values().copied().collect();
    times.sort();
    let span = times[moved - 1] - times[0];
    let least = Duration::from_secs_f64((moved - 1) as f64 / f64::from(RATE) * 0.9);
    assert!(
        span >= least,
        "{moved} closes in {span:?}, the rate allows {least:?} at least"
    );
    let peak = densest(&times, Duration::from_secs(1));
    assert!(
        peak as u32 <= RATE * 3 / 2,
        "{peak} closes in one second at rate {RATE}"
    );
    let metrics = proxy.metrics_text();
    assert!(
        metrics.contains(&format!(
            "tether_tunnels_ended_total{{reason=\"Rebalance\"}} {moved}"
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enabled_backend_takes_the_tunnels_above_the_bound_under_least_connections() {
    const TUNNELS: usize = 150;
    let backends = echo_backends(4).await;
    let balance = "[balance]\nstrategy = \"least-connections\"\nbound_floor = 4";
    let proxy = proxy_from_toml(&config(balance, 200, &backends)).await;
    assert!(proxy.set_draining("b4", true));
    let (tx, mut rx) = mpsc::unbounded_channel();
    for key in 0..TUNNELS {
        assert_ne!(keyed(&proxy, key, &tx).await, "b4");
    }
    assert!(proxy.set_draining("b4", false));
    // Each closed client comes back at once, as a real one does after 1012.
    let mut moved_to = Vec::new();
    let settled = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            tokio::select! {
                Some((key, code, _)) = rx.recv() => {
                    assert_eq!(code, Some(1012));
                    moved_to.push(keyed(&proxy, key, &tx).await);
                }
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    let view = proxy.rebalance();
                    if !view.active && view.moved > 0 && view.moved as usize == moved_to.len() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    assert!(settled.is_ok(), "{:?}", proxy.rebalance());
    // 50 each on three backends; with b4 the bound is ⌈1.25 × 150 / 4⌉ = 47: three from each.
    assert_eq!(moved_to.len(), 9, "{moved_to:?}");
    assert!(moved_to.iter().all(|b| b == "b4"), "{moved_to:?}");
    let active: BTreeMap<String, usize> = proxy
        .backends()
        .into_iter()
        .map(|b| (b.name, b.active))
        .collect();
    assert!(active.values().all(|n| *n <= 47), "{active:?}");
}
