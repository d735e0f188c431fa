//! `tether hub`: a realtime WebSocket node with channels, history and resume.
//!
//! Several nodes sharing one [`Broker`] act as one: a message published on any node reaches
//! every subscriber on every node, and a client that reconnects — to the same node or
//! another — resumes from its last offset with nothing missing and nothing repeated.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = tether_hub::broker_from_url("memory")?;
//! let hub = tether_hub::serve(tether_hub::HubConfig::default(), broker, None).await?;
//! println!("hub {} on {}", hub.name(), hub.local_addr());
//! hub.shutdown().await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod access;
mod api;
pub mod auth;
pub mod broker;
mod channel;
pub mod config;
mod lane;
mod mailbox;
pub mod metrics;
mod node;
mod pacer;
pub mod protocol;
mod publishing;
mod replay;
mod server;
mod session;
pub mod tls;
mod wake_gate;

pub use broker::{
    broker_from_url, broker_with, Broker, BrokerError, BrokerOptions, HistoryPolicy, Page,
};
pub use config::{ConfigError, HubConfig};
pub use server::{serve, HubError, HubHandle};
pub use tls::{HubTls, TlsError, TlsFiles};
