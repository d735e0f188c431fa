//! The load generator over `wss://`: a real rustls server in front of a real echo backend,
//! with a CA and certificate made in the test by rcgen. It checks what the comparison relies
//! on: every handshake is a full TLS 1.3 one with the pinned suite and key exchange, echoes
//! come back intact, idle tunnels over TLS hold, and a server the CA did not sign is refused.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{CipherSuite, HandshakeKind, NamedGroup, ProtocolVersion, ServerConfig};
use tether_bench::echo::EchoServer;
use tether_bench::handshake::{self, HandshakeArgs};
use tether_bench::idle::{self, IdleArgs};
use tether_bench::pingpong::{self, PingpongArgs};
use tether_bench::procstat::WatchArgs;
use tether_bench::BenchError;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A directory of this test's own: tests run in parallel and two can start within one clock
/// tick, so a counter tells them apart (one removing a shared directory failed the other).
fn scratch() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "tether-bench-tls-{}-{n}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A CA (its PEM written to `dir/NAME-ca.pem`) and a certificate for 127.0.0.1 it signed.
struct Pki {
    ca_file: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn pki(dir: &Path, name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} CA"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let leaf = params.signed_by(&key, &issuer).unwrap();
    let ca_file = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&ca_file, ca.pem()).unwrap();
    Pki {
        ca_file,
        chain: vec![leaf.der().clone()],
        key: PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
    }
}

/// What the terminator saw of each finished handshake.
#[derive(Debug, Clone, PartialEq)]
struct Negotiated {
    kind: Option<HandshakeKind>,
    version: Option<ProtocolVersion>,
    suite: Option<CipherSuite>,
    group: Option<NamedGroup>,
}

/// A TLS terminator in front of an echo backend: rustls with its default (server) settings,
/// session tickets included, so a client that resumed would be seen doing it.
struct Terminator {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Negotiated>>>,
    _echo: EchoServer,
}

async fn terminator(pki: &Pki) -> Terminator {
    let echo = EchoServer::start("b1", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let backend = echo.addr();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.chain.clone(), pki.key.clone_key())
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let conn = tls.get_ref().1;
                log.lock().unwrap().push(Negotiated {
                    kind: conn.handshake_kind(),
                    version: conn.protocol_version(),
                    suite: conn.negotiated_cipher_suite().map(|s| s.suite()),
                    group: conn.negotiated_key_exchange_group().map(|g| g.name()),
                });
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    Terminator {
        addr,
        seen,
        _echo: echo,
    }
}

fn pinned() -> Negotiated {
    Negotiated {
        kind: Some(HandshakeKind::Full),
        version: Some(ProtocolVersion::TLSv1_3),
        suite: Some(CipherSuite::TLS13_AES_128_GCM_SHA256),
        group: Some(NamedGroup::X25519),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_over_wss_are_all_full_tls13_with_the_pinned_suite_and_group() {
    let dir = scratch();
    let pki = pki(&dir, "bench");
    let server = terminator(&pki).await;
    let report = handshake::run(HandshakeArgs {
        url: format!("wss://{}/ws", server.addr).parse().unwrap(),
        ca: Some(pki.ca_file.clone()),
        concurrency: 4,
        duration: Duration::from_millis(600),
        warmup: Duration::ZERO,
        sources: 4,
        sid_param: "sid".into(),
        watch: WatchArgs::default(),
    })
    .await
    .unwrap();
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(report.handshakes > 0, "{report:?}");
    let seen = server.seen.lock().unwrap().clone();
    assert!(seen.len() as u64 >= report.handshakes, "{seen:?}");
    // The server offered tickets every time; a client that used one would show as resumed.
    assert!(seen.iter().all(|n| *n == pinned()), "{seen:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingpong_and_idle_run_over_wss() {
    let dir = scratch();
    let pki = pki(&dir, "bench");
    let server = terminator(&pki).await;
    let url = format!("wss://{}/ws", server.addr);
    let report = pingpong::run(PingpongArgs {
        url: url.parse().unwrap(),
        ca: Some(pki.ca_file.clone()),
        connections: 3,
        size: 4096,
        duration: Duration::from_millis(500),
        warmup: Duration::ZERO,
        sid_param: "sid".into(),
        sources: 2,
        watch: WatchArgs::default(),
    })
    .await
    .unwrap();
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(report.messages > 0, "{report:?}");
    assert_eq!(report.url, url);

    let report = idle::run(IdleArgs {
        url: url.parse().unwrap(),
        ca: Some(pki.ca_file.clone()),
        connections: 40,
        sources: 4,
        concurrency: 8,
        hold: Duration::from_millis(100),
        settle: Duration::from_millis(50),
        sample: 10,
        sid_param: "sid".into(),
        watch: WatchArgs::default(),
    })
    .await
    .unwrap();
    assert_eq!(report.opened, 40, "{report:?}");
    assert_eq!(report.still_open, 40, "{report:?}");
    assert_eq!(report.sample_answered, 10, "{report:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_the_ca_did_not_sign_is_refused_as_a_tls_failure() {
    let dir = scratch();
    let served = pki(&dir, "served");
    let other = pki(&dir, "other");
    let server = terminator(&served).await;
    let err = pingpong::run(PingpongArgs {
        url: format!("wss://{}/ws", server.addr).parse().unwrap(),
        ca: Some(other.ca_file.clone()),
        connections: 1,
        size: 64,
        duration: Duration::from_millis(100),
        warmup: Duration::ZERO,
        sid_param: "sid".into(),
        sources: 1,
        watch: WatchArgs::default(),
    })
    .await
    .unwrap_err();
    assert!(matches!(err, BenchError::Tls { .. }), "{err:?}");
    let chain = err.chain();
    assert!(chain.contains("TLS handshake with"), "{chain}");
    assert!(server.seen.lock().unwrap().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}
