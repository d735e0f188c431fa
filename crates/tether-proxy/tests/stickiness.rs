//! The same client reaches the same backend, by every key kind, and only the keys of a lost
//! backend move.

mod common;
use std::net::IpAddr;

use common::*;

/// Builds the path and headers that carry key number `i`.
type RequestFor = fn(usize) -> (String, Vec<(String, String)>);

const HASH: &str = "[balance]\nstrategy = \"consistent-hash\"\nbalance_factor = 0\n";

async fn backend_for(
    proxy: &tether_proxy::RunningProxy,
    path: &str,
    source: IpAddr,
    headers: &[(&str, &str)],
) -> String {
    let (_ws, response) = ws_connect_with(proxy.addr(), path, source, headers)
        .await
        .expect("connect");
    backend_of(&response)
}

fn local() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

#[tokio::test]
async fn every_key_kind_is_sticky_and_spreads_keys() {
    let backends = echo_backends(3).await;
    let cases: &[(&str, RequestFor)] = &[
        ("query:sid", |i| (format!("/ws?sid=user{i}"), vec![])),
        ("header:x-user", |i| {
            ("/ws".into(), vec![("x-user".into(), format!("user{i}"))])
        }),
        ("cookie:session", |i| {
            (
                "/ws".into(),
                vec![("cookie".into(), format!("a=b; session=user{i}"))],
            )
        }),
        ("path:2", |i| (format!("/room/user{i}/ws"), vec![])),
    ];
    for (key, request) in cases {
        let proxy = proxy(&format!("{HASH}key = \"{key}\""), &backends).await;
        let mut seen = std::collections::HashSet::new();
        for i in 0..12 {
            let (path, headers) = request(i);
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            let first = backend_for(&proxy, &path, local(), &headers).await;
            for _ in 0..3 {
                assert_eq!(
                    backend_for(&proxy, &path, local(), &headers).await,
                    first,
                    "{key} {path}"
                );
            }
            seen.insert(first);
        }
        assert!(seen.len() >= 2, "{key}: 12 keys all on one backend");
    }
}

#[tokio::test]
async fn ip_key_is_sticky_per_source_address() {
    let backends = echo_backends(3).await;
    let proxy = proxy(&format!("{HASH}key = \"ip\""), &backends).await;
    let mut seen = std::collections::HashSet::new();
    for last in 2..=13u8 {
        let source: IpAddr = format!("127.0.0.{last}").parse().unwrap();
        let first = backend_for(&proxy, "/ws", source, &[]).await;
        for _ in 0..3 {
            assert_eq!(backend_for(&proxy, "/ws", source, &[]).await, first);
        }
        seen.insert(first);
    }
    assert!(seen.len() >= 2, "12 client addresses all on one backend");
}

#[tokio::test]
async fn ip_key_uses_forwarded_for_only_from_trusted_proxies() {
    let backends = echo_backends(3).await;
    let proxy = proxy(
        &format!("[listen]\ntrusted_proxies = [\"127.0.0.1/32\"]\n{HASH}key = \"ip\""),
        &backends,
    )
    .await;
    // From the trusted 127.0.0.1 the header decides; the same header from 127.0.0.5 is ignored,
    // so a client there always lands where its own address hashes.
    let mut by_claim = std::collections::HashSet::new();
    for i in 0..12 {
        let claim = format!("198.51.100.{i}");
        by_claim.insert(backend_for(&proxy, "/ws", local(), &[("x-forwarded-for", &claim)]).await);
    }
    assert!(by_claim.len() >= 2, "trusted X-Forwarded-For was not used");
    let untrusted: IpAddr = "127.0.0.5".parse().unwrap();
    let own = backend_for(&proxy, "/ws", untrusted, &[]).await;
    for i in 0..12 {
        let claim = format!("198.51.100.{i}");
        assert_eq!(
            backend_for(&proxy, "/ws", untrusted, &[("x-forwarded-for", &claim)]).await,
            own
        );
    }
}

#[tokio::test]
async fn only_the_lost_backends_keys_move_and_retries_hide_it() {
    let backends = echo_backends(3).await;
    let proxy = proxy(&format!("{HASH}key = \"query:sid\"\nretries = 2\n[health]\nkind = \"none\"\ninterval = \"1h\"\nfall = 1"), &backends).await;
    let mut before = Vec::new();
    for i in 0..60 {
        before.push(backend_for(&proxy, &format!("/ws?sid=k{i}"), local(), &[]).await);
    }
    assert!(before.iter().any(|b| b == "b2"));
    backends[1].stop();
    for (i, old) in before.iter().enumerate() {
        // Every connect succeeds: a dead b2 is retried on another backend, unseen by the client.
        let now = backend_for(&proxy, &format!("/ws?sid=k{i}"), local(), &[]).await;
        if old == "b2" {
            assert_ne!(now, "b2");
        } else {
            assert_eq!(&now, old, "key k{i} moved although its backend is alive");
        }
    }
    assert_eq!(state_of(&proxy, "b2"), "down");
    assert!(proxy.metrics_text().contains("tether_retries_total"));
}

#[tokio::test]
async fn lb_inserted_cookie_brings_the_client_back() {
    let backends = echo_backends(3).await;
    let proxy = proxy(
        "[balance]\nstrategy = \"round-robin\"\ncookie = \"SRV\"",
        &backends,
    )
    .await;
    let (_ws, response) = ws_connect(proxy.addr(), "/ws").await.unwrap();
    let first = backend_of(&response);
    let set_cookie = response
        .headers()
        .get("set-cookie")
        .expect("cookie inserted")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(set_cookie.starts_with("SRV="), "{set_cookie}");
    let pair = set_cookie.split(';').next().unwrap().to_owned();
    let value = pair.trim_start_matches("SRV=");
    for b in &backends {
        assert!(
            !value.contains(&b.addr().port().to_string()),
            "cookie reveals the address"
        );
    }
    // Round-robin would rotate; the cookie pins the client. No new cookie is set for it.
    for _ in 0..6 {
        let (_ws, response) = ws_connect_with(proxy.addr(), "/ws", local(), &[("cookie", &pair)])
            .await
            .unwrap();
        assert_eq!(backend_of(&response), first);
        assert!(response.headers().get("set-cookie").is_none());
    }
    // When its backend is gone, the client is placed elsewhere and gets a new cookie.
    backends.iter().find(|b| b.name() == first).unwrap().stop();
    proxy.set_draining(&first, true);
    let (_ws, response) = ws_connect_with(proxy.addr(), "/ws", local(), &[("cookie", &pair)])
        .await
        .unwrap();
    assert_ne!(backend_of(&response), first);
    assert!(response.headers().get("set-cookie").is_some());
}
