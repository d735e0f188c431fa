//! TLS on both sides of the proxy: termination on listeners (with SNI certificates, live
//! reload and client certificates), TLS and mTLS to backends, and reading the ClientHello of
//! passthrough listeners.

pub mod hello;
