//! The consistent-hash ring reaches every backend on a spill, however many there are.

mod common;
use common::*;

#[tokio::test]
async fn a_hot_key_spills_onto_every_one_of_200_backends() {
    // 200 backend entries over 4 real echo listeners: the proxy counts tunnels per entry.
    let listeners = echo_backends(4).await;
    let mut text = String::from(
        "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n\
         [health]\nkind = \"none\"\n\
         [balance]\nstrategy = \"consistent-hash\"\nkey = \"query:sid\"\n\
         balance_factor = 1.0\nbound_floor = 0\n",
    );
    for i in 0..200 {
        let addr = listeners[i % listeners.len()].addr();
        text.push_str(&format!(
            "[[backend]]\nname = \"n{i}\"\naddr = \"{addr}\"\n"
        ));
    }
    let proxy = proxy_from_toml(&text).await;
    // With factor 1 the bound is ⌈(total + 1) / 200⌉ = 1 until every backend holds one, so
    // each new tunnel of the same key must walk on to a backend it has not reached yet.
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(open(&proxy, "/ws?sid=hot").await);
    }
    let views = proxy.backends();
    let empty: Vec<&str> = views
        .iter()
        .filter(|b| b.active != 1)
        .map(|b| b.name.as_str())
        .collect();
    assert!(
        empty.is_empty(),
        "backends without exactly one tunnel: {empty:?}"
    );
}
