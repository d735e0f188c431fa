//! Each strategy distributes live tunnels as documented.

mod common;
use common::*;

#[tokio::test]
async fn round_robin_spreads_tunnels_evenly() {
    let backends = echo_backends(3).await;
    let proxy = proxy("[balance]\nstrategy = \"round-robin\"", &backends).await;
    let mut held = Vec::new();
    for _ in 0..30 {
        held.push(open(&proxy, "/ws").await);
    }
    let counts = count(held.iter().map(|(_, b)| b));
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10],
        "{counts:?}"
    );
}

#[tokio::test]
async fn least_connections_follows_live_tunnel_counts() {
    let backends = echo_backends(3).await;
    let proxy = proxy("[balance]\nstrategy = \"least-connections\"", &backends).await;
    let mut held: Vec<(Ws, String)> = Vec::new();
    for _ in 0..6 {
        held.push(open(&proxy, "/ws").await);
    }
    assert_eq!(
        count(held.iter().map(|(_, b)| b))
            .values()
            .copied()
            .collect::<Vec<_>>(),
        vec![2, 2, 2]
    );
    // Close both tunnels on b2: the next two must go there, whatever came before.
    held.retain(|(_, b)| b != "b2");
    assert!(
        eventually(std::time::Duration::from_secs(3), || async {
            proxy
                .backends()
                .iter()
                .all(|b| b.active == if b.name == "b2" { 0 } else { 2 })
        })
        .await
    );
    for _ in 0..2 {
        let (ws, b) = open(&proxy, "/ws").await;
        assert_eq!(b, "b2");
        held.push((ws, b));
    }
}

#[tokio::test]
async fn p2c_and_random_use_every_backend() {
    for strategy in ["p2c", "random"] {
        let backends = echo_backends(3).await;
        let proxy = proxy(&format!("[balance]\nstrategy = \"{strategy}\""), &backends).await;
        let mut held = Vec::new();
        for _ in 0..60 {
            held.push(open(&proxy, "/ws").await);
        }
        let counts = count(held.iter().map(|(_, b)| b));
        assert_eq!(counts.len(), 3, "{strategy}: {counts:?}");
        if strategy == "p2c" {
            // Two choices keep the spread tight: nobody above 2× the fair share.
            assert!(counts.values().all(|&c| c <= 40), "{counts:?}");
        }
    }
}

#[tokio::test]
async fn bounded_loads_keep_every_backend_under_factor_times_average() {
    let backends = echo_backends(3).await;
    let proxy = proxy(
        "[balance]\nstrategy = \"consistent-hash\"\nkey = \"query:sid\"\nbalance_factor = 1.25",
        &backends,
    )
    .await;
    let mut held = Vec::new();
    // A skewed key population: a third of the connections share one hot key.
    for i in 0..300 {
        let sid = if i % 3 == 0 {
            "hot".to_owned()
        } else {
            format!("user-{i}")
        };
        held.push(open(&proxy, &format!("/ws?sid={sid}")).await);
    }
    let cap = (1.25f64 * 300.0 / 3.0).ceil() as usize;
    let counts = count(held.iter().map(|(_, b)| b));
    assert!(
        counts.values().all(|&c| c <= cap),
        "max above ⌈1.25·avg⌉ = {cap}: {counts:?}"
    );
    let active: usize = proxy.backends().iter().map(|b| b.active).sum();
    assert_eq!(active, 300);
}

#[tokio::test]
async fn weights_are_honoured_by_consistent_hash() {
    let backends = echo_backends(2).await;
    let text = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\nenabled = false\n[balance]\nstrategy = \"consistent-hash\"\nkey = \"query:sid\"\nbalance_factor = 0\n[[backend]]\nname = \"heavy\"\naddr = \"{}\"\nweight = 3\n[[backend]]\nname = \"light\"\naddr = \"{}\"\n",
        backends[0].addr(),
        backends[1].addr()
    );
    let proxy = proxy_from_toml(&text).await;
    let mut names = Vec::new();
    for i in 0..200 {
        let (_ws, b) = open(&proxy, &format!("/ws?sid=k{i}")).await;
        names.push(b);
    }
    let counts = count(names.iter());
    let heavy = counts.get("b1").copied().unwrap_or(0);
    assert!(
        (120..185).contains(&heavy),
        "weight 3 of 4 should take ~150 of 200: {counts:?}"
    );
}

#[tokio::test]
async fn requests_without_the_key_use_the_fallback_strategy() {
    let backends = echo_backends(3).await;
    let proxy = proxy("[balance]\nstrategy = \"consistent-hash\"\nkey = \"query:sid\"\nfallback = \"round-robin\"", &backends).await;
    let mut held = Vec::new();
    for _ in 0..9 {
        held.push(open(&proxy, "/ws?other=1").await);
    }
    let counts = count(held.iter().map(|(_, b)| b));
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![3, 3, 3],
        "{counts:?}"
    );
}
