//! TLS termination as a listener does it: real rustls clients on loopback against a
//! `TlsServer`, with certificates made here (a root, an intermediate, server and client
//! leaves).

mod tls_support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tether_proxy::tls::{
    HandshakeFailure, ListenTlsConfig, ServerTlsSettings, TlsServer, TlsVersion,
};
use tls_support::*;

fn settings(text: &str, dir: &TempDir) -> ServerTlsSettings {
    let raw: ListenTlsConfig = toml::from_str(text).unwrap();
    raw.validate("listen.tls", &dir.0).unwrap()
}

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Served>) -> Served {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("the server reports every handshake")
        .unwrap()
}

#[tokio::test]
async fn serves_a_chain_from_an_intermediate_with_http11_alpn() {
    let dir = TempDir::new("tls-chain");
    let root = Ca::new("Root");
    let inter = root.intermediate("Intermediate");
    write_leaf(&dir, "site", &inter.server(&["chat.example.com"]));
    let server = Arc::new(
        TlsServer::load(settings("cert = \"site.pem\"\nkey = \"site.key\"\n", &dir)).unwrap(),
    );
    let (addr, mut rx) = echo_server(server).await;

    let tls = connect(
        addr,
        client_config(root.roots(), None, BOTH),
        "chat.example.com",
    )
    .await
    .expect("a client trusting only the root accepts the chain");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    match next(&mut rx).await {
        Served::Ok {
            version,
            alpn,
            identity,
        } => {
            assert_eq!(version, Some(TlsVersion::Tls13));
            assert_eq!(
                alpn.as_deref(),
                Some(&b"http/1.1"[..]),
                "h2 is never chosen"
            );
            assert_eq!(identity, None);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn sni_picks_exact_then_wildcard_then_default_certificate() {
    let dir = TempDir::new("tls-sni");
    let ca = Ca::new("Root");
    let default = ca.server(&["default.example"]);
    let api = ca.server(&["api.example.com"]);
    let ws = ca.server(&["*.ws.example.com"]);
    write_leaf(&dir, "default", &default);
    write_leaf(&dir, "api", &api);
    write_leaf(&dir, "ws", &ws);
    let text = "cert = \"default.pem\"\nkey = \"default.key\"\n\
                [[sni]]\nnames = [\"api.example.com\"]\ncert = \"api.pem\"\nkey = \"api.key\"\n\
                [[sni]]\nnames = [\"*.ws.example.com\"]\ncert = \"ws.pem\"\nkey = \"ws.key\"\n";
    let server = Arc::new(TlsServer::load(settings(text, &dir)).unwrap());
    assert_eq!(server.certificates().len(), 3);
    let (addr, _rx) = echo_server(server).await;
    let config = client_config(ca.roots(), None, BOTH);

    let tls = connect(addr, config.clone(), "API.example.com")
        .await
        .unwrap();
    assert_eq!(presented(&tls), api.cert);
    let tls = connect(addr, config.clone(), "eu1.ws.example.com")
        .await
        .unwrap();
    assert_eq!(presented(&tls), ws.cert);
    let tls = connect(addr, config.clone(), "default.example")
        .await
        .unwrap();
    assert_eq!(presented(&tls), default.cert);
    // A name with no certificate gets the default one, which this client then refuses.
    let err = connect(addr, config, "other.example").await.unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[tokio::test]
async fn keys_load_as_pkcs8_pkcs1_and_sec1() {
    let dir = TempDir::new("tls-keys");
    let ca = Ca::new("Root");
    let rsa_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let rsa = ca.leaf_with_key(&["rsa.example"], rsa_key, |_| {});
    let ec = ca.server(&["ec.example"]);
    dir.write("rsa.pem", &rsa.chain_pem);
    dir.write(
        "rsa.key",
        pem("RSA PRIVATE KEY", &unwrap_pkcs8(&rsa.key_der)),
    );
    dir.write("ec.pem", &ec.chain_pem);
    dir.write("ec.key", pem("EC PRIVATE KEY", &unwrap_pkcs8(&ec.key_der)));
    write_leaf(&dir, "p8", &ca.server(&["p8.example"]));
    let text = "cert = \"p8.pem\"\nkey = \"p8.key\"\n\
                [[sni]]\nnames = [\"rsa.example\"]\ncert = \"rsa.pem\"\nkey = \"rsa.key\"\n\
                [[sni]]\nnames = [\"ec.example\"]\ncert = \"ec.pem\"\nkey = \"ec.key\"\n";
    let server = Arc::new(TlsServer::load(settings(text, &dir)).expect("all three formats load"));
    let (addr, _rx) = echo_server(server).await;
    let config = client_config(ca.roots(), None, BOTH);
    for (name, leaf) in [("rsa.example", &rsa), ("ec.example", &ec)] {
        let tls = connect(addr, config.clone(), name).await.unwrap();
        assert_eq!(presented(&tls), leaf.cert, "{name}");
    }
}

#[test]
fn bad_files_are_refused_naming_the_file_and_the_key() {
    let dir = TempDir::new("tls-bad");
    let ca = Ca::new("Root");
    let a = ca.server(&["a.example"]);
    let b = ca.server(&["b.example"]);
    dir.write("a.pem", &a.chain_pem);
    dir.write("b.key", &b.key_pem);
    dir.write(
        "garbage.pem",
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    );
    dir.write("empty.pem", "just text\n");
    dir.write(
        "encrypted.key",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );

    let cases = [
        (
            "cert = \"missing.pem\"\nkey = \"b.key\"\n",
            "missing.pem",
            "listen.tls.cert",
            "cannot read",
        ),
        (
            "cert = \"garbage.pem\"\nkey = \"b.key\"\n",
            "garbage.pem",
            "listen.tls.cert",
            "PEM",
        ),
        (
            "cert = \"empty.pem\"\nkey = \"b.key\"\n",
            "empty.pem",
            "listen.tls.cert",
            "no CERTIFICATE",
        ),
        (
            "cert = \"a.pem\"\nkey = \"encrypted.key\"\n",
            "encrypted.key",
            "listen.tls.key",
            "no unencrypted private key",
        ),
        (
            "cert = \"a.pem\"\nkey = \"b.key\"\n",
            "b.key",
            "listen.tls.key",
            "does not belong",
        ),
    ];
    for (text, file, key, problem) in cases {
        let err = TlsServer::load(settings(text, &dir)).unwrap_err();
        assert_eq!(err.file, dir.path(file), "{text}: {err}");
        assert_eq!(err.key, key, "{err}");
        let shown = err.to_string();
        assert!(shown.contains(problem), "{shown}");
        assert!(
            shown.contains(&*dir.path(file).to_string_lossy()),
            "{shown}"
        );
    }
    dir.write("b.pem", &b.chain_pem);
    let err = TlsServer::load(settings(
        "cert = \"b.pem\"\nkey = \"b.key\"\nclient_ca = \"empty.pem\"\n",
        &dir,
    ))
    .unwrap_err();
    assert_eq!(err.key, "listen.tls.client_ca", "{err}");
}

#[tokio::test]
async fn reload_changes_the_certificate_of_new_handshakes_only() {
    let dir = TempDir::new("tls-reload");
    let ca = Ca::new("Root");
    let old = ca.server(&["chat.example.com"]);
    let new = ca.server(&["chat.example.com"]);
    write_leaf(&dir, "site", &old);
    let server = Arc::new(
        TlsServer::load(settings("cert = \"site.pem\"\nkey = \"site.key\"\n", &dir)).unwrap(),
    );
    let (addr, _rx) = echo_server(server.clone()).await;
    // A client that resumes a session is not shown a certificate again: each connection
    // here gets a client of its own, without a session to resume.
    let config = || client_config(ca.roots(), None, BOTH);
    let mut open = connect(addr, config(), "chat.example.com").await.unwrap();
    assert_eq!(presented(&open), old.cert);

    write_leaf(&dir, "site", &new);
    server.reload_files().unwrap();
    let fresh = connect(addr, config(), "chat.example.com").await.unwrap();
    assert_eq!(
        presented(&fresh),
        new.cert,
        "a new handshake sees the new certificate"
    );
    round_trip(&mut open)
        .await
        .expect("the session opened before the reload still works");

    // A broken file: the reload fails, says where, and the certificate in use stays.
    dir.write("site.pem", "not a certificate");
    let err = server.reload_files().unwrap_err();
    assert_eq!(err.file, dir.path("site.pem"));
    let again = connect(addr, config(), "chat.example.com").await.unwrap();
    assert_eq!(presented(&again), new.cert);
    assert_eq!(server.certificates()[0].file, dir.path("site.pem"));
}

#[tokio::test]
async fn certificate_expiry_is_reported_per_certificate() {
    let dir = TempDir::new("tls-expiry");
    let ca = Ca::new("Root");
    let leaf = ca.leaf(&["soon.example"], |p| {
        p.not_after = rcgen::date_time_ymd(2031, 1, 2);
    });
    write_leaf(&dir, "soon", &leaf);
    let server =
        TlsServer::load(settings("cert = \"soon.pem\"\nkey = \"soon.key\"\n", &dir)).unwrap();
    let info = &server.certificates()[0];
    assert_eq!(info.not_after_unix(), 1_925_078_400, "2031-01-02T00:00:00Z");
    assert_eq!(info.subject, "CN=soon.example");
    assert_eq!(info.file, dir.path("soon.pem"));
}

#[tokio::test]
async fn min_version_13_refuses_a_tls12_only_client() {
    let dir = TempDir::new("tls-v13");
    let ca = Ca::new("Root");
    write_leaf(&dir, "site", &ca.server(&["a.example"]));
    let server = Arc::new(
        TlsServer::load(settings(
            "cert = \"site.pem\"\nkey = \"site.key\"\nmin_version = \"1.3\"\n",
            &dir,
        ))
        .unwrap(),
    );
    let (addr, mut rx) = echo_server(server).await;
    let tls12 = client_config(ca.roots(), None, &[&rustls::version::TLS12]);
    assert!(connect(addr, tls12, "a.example").await.is_err());
    match next(&mut rx).await {
        Served::Failed(reason, _) => assert_eq!(reason, HandshakeFailure::Incompatible),
        other => panic!("{other:?}"),
    }
    let both = client_config(ca.roots(), None, BOTH);
    connect(addr, both, "a.example").await.unwrap();
}

struct Mtls {
    _dir: TempDir,
    ca: Ca,
    server_ca: Ca,
    addr: std::net::SocketAddr,
    rx: tokio::sync::mpsc::UnboundedReceiver<Served>,
}

async fn mtls(mode: &str) -> Mtls {
    let dir = TempDir::new("tls-mtls");
    let server_ca = Ca::new("Server Root");
    let ca = Ca::new("Client Root");
    write_leaf(&dir, "site", &server_ca.server(&["a.example"]));
    dir.write("clients.pem", &ca.pem);
    let text = format!(
        "cert = \"site.pem\"\nkey = \"site.key\"\nclient_ca = \"clients.pem\"\nclient_auth = \"{mode}\"\n"
    );
    let server = Arc::new(TlsServer::load(settings(&text, &dir)).unwrap());
    let (addr, rx) = echo_server(server).await;
    Mtls {
        _dir: dir,
        ca,
        server_ca,
        addr,
        rx,
    }
}

impl Mtls {
    async fn try_with(&mut self, identity: Option<&Leaf>) -> (std::io::Result<()>, Served) {
        let config = client_config(self.server_ca.roots(), identity, BOTH);
        let result = connect(self.addr, config, "a.example").await.map(|_| ());
        (result, next(&mut self.rx).await)
    }
}

#[tokio::test]
async fn mtls_required_passes_the_verified_identity_and_refuses_the_rest() {
    let mut m = mtls("required").await;
    let alice =
        m.ca.client("alice", Some("spiffe://example.org/ns/chat/sa/alice"));
    let (result, served) = m.try_with(Some(&alice)).await;
    result.unwrap();
    let Served::Ok {
        identity: Some(id), ..
    } = served
    else {
        panic!("{served:?}")
    };
    assert_eq!(id.subject, "CN=alice, O=Tether Tests");
    assert_eq!(
        id.uris,
        vec!["spiffe://example.org/ns/chat/sa/alice".to_owned()]
    );
    assert_eq!(
        id.header_value(),
        "Subject=\"CN=alice, O=Tether Tests\";URI=spiffe://example.org/ns/chat/sa/alice"
    );

    let (result, served) = m.try_with(None).await;
    assert!(result.is_err(), "no certificate, no session");
    assert!(
        matches!(
            served,
            Served::Failed(HandshakeFailure::CertificateMissing, _)
        ),
        "{served:?}"
    );

    let stranger = Ca::new("Other Root").client("mallory", None);
    let (result, served) = m.try_with(Some(&stranger)).await;
    assert!(result.is_err());
    assert!(
        matches!(
            served,
            Served::Failed(HandshakeFailure::CertificateRejected, _)
        ),
        "{served:?}"
    );

    let expired = m.ca.leaf(&[], |p| {
        p.distinguished_name.push(rcgen::DnType::CommonName, "old");
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let (result, served) = m.try_with(Some(&expired)).await;
    assert!(result.is_err());
    assert!(
        matches!(
            served,
            Served::Failed(HandshakeFailure::CertificateExpired, _)
        ),
        "{served:?}"
    );
}

#[tokio::test]
async fn mtls_optional_lets_anonymous_clients_in_but_not_untrusted_ones() {
    let mut m = mtls("optional").await;
    let (result, served) = m.try_with(None).await;
    result.unwrap();
    assert!(
        matches!(served, Served::Ok { identity: None, .. }),
        "{served:?}"
    );

    let bob = m.ca.client("bob", None);
    let (result, served) = m.try_with(Some(&bob)).await;
    result.unwrap();
    let Served::Ok {
        identity: Some(id), ..
    } = served
    else {
        panic!("{served:?}")
    };
    assert!(id.uris.is_empty());
    assert_eq!(id.header_value(), "Subject=\"CN=bob, O=Tether Tests\"");

    let stranger = Ca::new("Other Root").client("mallory", None);
    let (result, served) = m.try_with(Some(&stranger)).await;
    assert!(
        result.is_err(),
        "a certificate that is presented must verify"
    );
    assert!(
        matches!(
            served,
            Served::Failed(HandshakeFailure::CertificateRejected, _)
        ),
        "{served:?}"
    );
}

#[tokio::test]
async fn garbage_and_plain_http_fail_the_handshake_without_harm() {
    use tokio::io::AsyncWriteExt;
    let dir = TempDir::new("tls-garbage");
    let ca = Ca::new("Root");
    write_leaf(&dir, "site", &ca.server(&["a.example"]));
    let server = Arc::new(
        TlsServer::load(settings("cert = \"site.pem\"\nkey = \"site.key\"\n", &dir)).unwrap(),
    );
    let (addr, mut rx) = echo_server(server).await;
    for input in [
        &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        &[0x16, 3, 1, 0, 4, 9, 9, 9, 9],
        &[0x16, 3, 1, 0x40, 0],
    ] {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(input).await.unwrap();
        tcp.shutdown().await.unwrap();
        match next(&mut rx).await {
            Served::Failed(reason, _) => assert!(
                matches!(
                    reason,
                    HandshakeFailure::Malformed | HandshakeFailure::Closed
                ),
                "{reason:?}"
            ),
            other => panic!("{other:?}"),
        }
    }
    connect(addr, client_config(ca.roots(), None, BOTH), "a.example")
        .await
        .expect("others are still served");
}

#[test]
fn settings_list_every_file_for_check_and_watch() {
    let dir = TempDir::new("tls-files");
    let s = settings(
        "cert = \"a.pem\"\nkey = \"a.key\"\nclient_ca = \"ca.pem\"\n[[sni]]\nnames = [\"b.example\"]\ncert = \"b.pem\"\nkey = \"b.key\"\n",
        &dir,
    );
    let files: Vec<&Path> = s.files();
    let want: Vec<_> = ["a.pem", "a.key", "b.pem", "b.key", "ca.pem"]
        .iter()
        .map(|f| dir.path(f))
        .collect();
    assert_eq!(files, want.iter().map(|p| p.as_path()).collect::<Vec<_>>());
}
