//! What the NATS broker's publish costs against plain JetStream publishes, in one run on
//! one server (docs/brokers.md quotes it): why the broker chains each channel's publishes
//! on `Nats-Expected-Last-Subject-Sequence` rather than publishing blind.
//!
//! `cargo run --release -p tether-hub --example nats_publish_cost [nats://127.0.0.1:4222] [N]`
//!
//! Prints messages per second of
//! - `plain, one at a time`: a JetStream publish awaited before the next (no `prev`);
//! - `plain, pipelined`: N publishes sent, then every ack awaited (no `prev`);
//! - `broker, 1 channel`: the broker's publish, N in flight on one channel (each waits for
//!   the previous one's sequence: the chain that gives every message its `prev`);
//! - `broker, 64 channels`: the same spread over 64 channels (chains run side by side);
//!
//! and the broker's rates as ratios of the plain ones. Streams it makes are deleted.

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use futures_util::future::join_all;
use serde_json::value::RawValue;
use tether_hub::protocol::ChannelName;
use tether_hub::{BrokerOptions, HistoryPolicy};

fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let n: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(5000);
    let payload = format!("{{\"n\":0,\"text\":\"{}\"}}", "x".repeat(80));
    let tag = std::process::id();

    let client = async_nats::connect(url.trim_start_matches("nats://")).await?;
    let js = jetstream::new(client);
    let plain = format!("PUBCOST_{tag}");
    js.create_stream(stream::Config {
        name: plain.clone(),
        subjects: vec![format!("pubcost{tag}.>")],
        max_messages_per_subject: 1000,
        max_age: Duration::from_secs(60),
        ..Default::default()
    })
    .await?;
    let subject = format!("pubcost{tag}.c.one");

    let started = Instant::now();
    for _ in 0..n {
        js.publish(subject.clone(), payload.clone().into())
            .await?
            .await?;
    }
    let one_at_a_time = rate(n, started.elapsed());

    let started = Instant::now();
    let mut acks = Vec::with_capacity(n);
    for _ in 0..n {
        acks.push(js.publish(subject.clone(), payload.clone().into()).await?);
    }
    for ack in join_all(acks.into_iter().map(IntoFuture::into_future)).await {
        ack?;
    }
    let pipelined = rate(n, started.elapsed());

    let prefix = format!("pubcost-{tag}");
    let options = BrokerOptions {
        history: HistoryPolicy {
            size: 1000,
            ttl: Duration::from_secs(60),
        }
        .into(),
        redis_prefix: prefix.clone(),
        ..Default::default()
    };
    let broker = tether_hub::broker_with(&url, options)?;
    let one = ChannelName::parse("one")?;
    // Warm up: the connection, the stream, the channel's last sequence.
    broker
        .publish(&one, RawValue::from_string(payload.clone())?)
        .await?;
    let started = Instant::now();
    let sent: Vec<_> = (0..n)
        .map(|_| broker.publish(&one, RawValue::from_string(payload.clone()).unwrap()))
        .collect();
    for offset in join_all(sent).await {
        offset?;
    }
    let chained = rate(n, started.elapsed());

    let channels: Vec<ChannelName> = (0..64)
        .map(|i| ChannelName::parse(&format!("many-{i}")))
        .collect::<Result<_, _>>()?;
    for channel in &channels {
        broker
            .publish(channel, RawValue::from_string(payload.clone())?)
            .await?;
    }
    let started = Instant::now();
    let sent: Vec<_> = (0..n)
        .map(|i| {
            broker.publish(
                &channels[i % channels.len()],
                RawValue::from_string(payload.clone()).unwrap(),
            )
        })
        .collect();
    for offset in join_all(sent).await {
        offset?;
    }
    let spread = rate(n, started.elapsed());

    js.delete_stream(&plain).await?;
    js.delete_stream(format!("TETHER_{prefix}")).await?;

    println!("{n} publishes of {} bytes to {url}", payload.len());
    println!("plain, one at a time   {one_at_a_time:>9.0} msg/s");
    println!("plain, pipelined       {pipelined:>9.0} msg/s");
    println!(
        "broker, 1 channel      {chained:>9.0} msg/s  ({:.2} × one at a time, {:.2} × pipelined)",
        chained / one_at_a_time,
        chained / pipelined
    );
    println!(
        "broker, 64 channels    {spread:>9.0} msg/s  ({:.2} × one at a time, {:.2} × pipelined)",
        spread / one_at_a_time,
        spread / pipelined
    );
    Ok(())
}
