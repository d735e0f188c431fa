//! Prometheus metrics of the proxy.
//!
//! Per-backend handles are created once when a backend joins and kept in the [`Backend`], so
//! the hot path touches a shared atomic and never a label map.
//!
//! [`Backend`]: crate::backend::Backend

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub backend: String,
    pub status: u16,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Direction {
    ClientToBackend,
    BackendToClient,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub backend: String,
    pub direction: Direction,
}

/// Why a request was answered by the proxy itself instead of a backend.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum RejectReason {
    BadRequest,
    HeadTooLarge,
    HeadTimeout,
    Origin,
    RateLimited,
    MaxConn,
    NoBackend,
    BackendFailed,
    Throttled,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub reason: RejectReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndLabels {
    pub reason: crate::tunnel::EndReason,
}

/// Every metric the proxy exports.
pub struct Metrics {
    registry: Registry,
    pub connections_active: Family<BackendLabel, Gauge>,
    pub backend_up: Family<BackendLabel, Gauge>,
    pub handshakes: Family<HandshakeLabels, Counter>,
    pub bytes: Family<BytesLabels, Counter>,
    pub backend_failures: Family<BackendLabel, Counter>,
    pub backend_throttled: Family<BackendLabel, Counter>,
    pub rejected: Family<RejectLabels, Counter>,
    pub tunnels_ended: Family<EndLabels, Counter>,
    pub handshake_seconds: Histogram,
    pub client_connections: Gauge,
    pub retries: Counter,
    pub tls: TlsMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsVersionLabels {
    pub version: crate::tls::TlsVersion,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsFailureLabels {
    pub reason: crate::tls::HandshakeFailure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    pub file: String,
    pub subject: String,
}

/// TLS on the listeners: handshakes that finished (by version), that failed (by reason),
/// and when each served certificate expires.
#[derive(Clone, Default)]
pub struct TlsMetrics {
    pub handshakes: Family<TlsVersionLabels, Counter>,
    pub failures: Family<TlsFailureLabels, Counter>,
    pub certificate_expiry: Family<CertificateLabels, Gauge>,
}

impl TlsMetrics {
    pub fn handshake(&self, version: Option<crate::tls::TlsVersion>) {
        if let Some(version) = version {
            self.handshakes
                .get_or_create(&TlsVersionLabels { version })
                .inc();
        }
    }

    pub fn failure(&self, reason: crate::tls::HandshakeFailure) {
        self.failures
            .get_or_create(&TlsFailureLabels { reason })
            .inc();
    }

    /// Sets the expiry of `certs` (called at load and after each reload).
    pub fn set_certificates(&self, certs: &[crate::tls::CertInfo]) {
        for c in certs {
            self.certificate_expiry
                .get_or_create(&CertificateLabels {
                    file: c.file.display().to_string(),
                    subject: c.subject.clone(),
                })
                .set(c.not_after_unix());
        }
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tether");
        let m = Metrics {
            connections_active: Family::default(),
            backend_up: Family::default(),
            handshakes: Family::default(),
            bytes: Family::default(),
            backend_failures: Family::default(),
            backend_throttled: Family::default(),
            rejected: Family::default(),
            tunnels_ended: Family::default(),
            handshake_seconds: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            client_connections: Gauge::default(),
            retries: Counter::default(),
            tls: TlsMetrics::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections_active",
            "Live tunnels per backend",
            m.connections_active.clone(),
        );
        registry.register(
            "backend_up",
            "1 if the backend takes new connections",
            m.backend_up.clone(),
        );
        registry.register(
            "handshakes",
            "Forwarded handshakes by backend and response status",
            m.handshakes.clone(),
        );
        registry.register("bytes", "Bytes moved through tunnels", m.bytes.clone());
        registry.register(
            "backend_failures",
            "Passive failures: failed connects, invalid or absent response heads, 5xx to upgrades",
            m.backend_failures.clone(),
        );
        registry.register(
            "backend_throttled",
            "Handshakes refused (503) because the backend's handshake rate was reached",
            m.backend_throttled.clone(),
        );
        registry.register(
            "rejected",
            "Requests answered by the proxy itself",
            m.rejected.clone(),
        );
        registry.register(
            "tunnels_ended",
            "Tunnels closed, by reason",
            m.tunnels_ended.clone(),
        );
        registry.register(
            "handshake_duration_seconds",
            "From the end of the request head to the backend's response head",
            m.handshake_seconds.clone(),
        );
        registry.register(
            "client_connections",
            "Open client connections",
            m.client_connections.clone(),
        );
        registry.register(
            "retries",
            "Connects retried on another backend",
            m.retries.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes completed on the listeners, by protocol version",
            m.tls.handshakes.clone(),
        );
        registry.register(
            "tls_handshake_errors",
            "TLS handshakes that failed on the listeners, by reason",
            m.tls.failures.clone(),
        );
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "notAfter of each served certificate, in Unix seconds",
            m.tls.certificate_expiry.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn reject(&self, reason: RejectReason) {
        self.rejected.get_or_create(&RejectLabels { reason }).inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}
