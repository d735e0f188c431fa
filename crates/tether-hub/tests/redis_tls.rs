//! `rediss://` against a TLS-only `redis-server` of the test's own: the server's
//! certificate is verified against the CA the URL names, and a server that CA did not sign
//! is refused with an error that says why. (The whole conformance suite also runs over
//! TLS: `conformance::redis_tls`.)

mod support;

use std::time::Duration;

use serde_json::value::RawValue;
use support::redis_tls::RedisTlsServer;
use support::*;
use tether_hub::protocol::ChannelName;
use tether_hub::{BrokerError, HistoryPolicy};

fn options(test: &str) -> tether_hub::BrokerOptions {
    redis_options(
        &unique_prefix(test),
        HistoryPolicy {
            size: 100,
            ttl: Duration::from_secs(60),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trusted_ca_connects_and_history_comes_back() {
    let server = RedisTlsServer::start().await;
    let broker = tether_hub::broker_with(&server.url(), options("tls-ok")).unwrap();
    let channel = ChannelName::parse("tls").unwrap();
    let mut offsets = Vec::new();
    for n in 0..3 {
        let data = RawValue::from_string(n.to_string()).unwrap();
        offsets.push(broker.publish(&channel, data).await.unwrap());
    }
    let history = broker.history(&channel, Some(offsets[0])).await.unwrap();
    assert!(history.recovered);
    let data: Vec<&str> = history.messages.iter().map(|m| m.data.get()).collect();
    assert_eq!(data, ["1", "2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_another_ca_signed_is_refused_with_a_clear_error() {
    let server = RedisTlsServer::start().await;
    let broker =
        tether_hub::broker_with(&server.url_trusting_another_ca(), options("tls-bad")).unwrap();
    let channel = ChannelName::parse("tls").unwrap();
    let data = RawValue::from_string("1".into()).unwrap();
    let error = broker.publish(&channel, data).await.unwrap_err();
    assert!(
        matches!(error, BrokerError::Unavailable { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("certificate"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_ca_the_system_roots_do_not_know_a_private_server() {
    let server = RedisTlsServer::start().await;
    let url = format!("rediss://127.0.0.1:{}/", server.port);
    let broker = tether_hub::broker_with(&url, options("tls-noca")).unwrap();
    let channel = ChannelName::parse("tls").unwrap();
    let error = broker
        .history(&channel, None)
        .await
        .expect_err("an unknown issuer must not be trusted");
    assert!(error.to_string().contains("certificate"), "{error}");
}

#[test]
fn a_missing_ca_file_is_a_bad_url_at_start() {
    let error = tether_hub::broker_with(
        "rediss://127.0.0.1:1/?ca=/nonexistent/ca.pem",
        options("tls-missing"),
    )
    .err()
    .unwrap();
    assert!(matches!(error, BrokerError::BadUrl { .. }), "{error:?}");
    assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
}

/// A hub whose Redis presents a certificate it cannot verify starts, but says so on
/// `/health` (503 with rustls's reason) and refuses publishes with 503: never a silent
/// plaintext fallback, never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_on_an_unverifiable_redis_reports_why_on_health() {
    let server = RedisTlsServer::start().await;
    let history = HistoryPolicy {
        size: 100,
        ttl: Duration::from_secs(60),
    };
    let hubs = redis_hubs(
        1,
        &server.url_trusting_another_ca(),
        &unique_prefix("tls-health"),
        history,
    )
    .await;
    let addr = hubs[0].local_addr();
    let reason = || async move {
        let (status, body) = http(addr, "GET", "/health", None, None).await;
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        (
            status,
            body["broker"]["reason"].as_str().unwrap_or("").to_owned(),
        )
    };
    let reported = eventually(Duration::from_secs(10), || async {
        let (status, reason) = reason().await;
        status == 503 && reason.contains("certificate")
    })
    .await;
    assert!(reported, "{:?}", reason().await);
    let (status, _) = http(
        addr,
        "POST",
        "/api/publish",
        Some(r#"{"channel":"t","data":1}"#),
        None,
    )
    .await;
    assert_eq!(status, 503);
}
