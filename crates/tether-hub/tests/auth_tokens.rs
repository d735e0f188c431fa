//! Token checks with real keys made in the test: HS256, RS256, ES256, JWKS from a file,
//! from a loopback HTTP server and over TLS, key rotation, and every refusal.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tether_hub::auth::jwks::{JwksLocation, JwksOptions, JwksSource, JwksUrl};
use tether_hub::auth::{AuthCode, AuthConfig, AuthError, Checks, Grant, UserId, Verifier};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

const SECRET: &str = "a-test-secret-that-is-long-enough-0123";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 600, "channels": ["room:*"], "publish": ["room:lobby"]})
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn hs(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        claims,
    )
}

/// A key pair made for the test: the signing key and the public key in PEM.
struct Pair {
    signing: EncodingKey,
    public_pem: String,
    alg: Algorithm,
}

impl Pair {
    fn rsa() -> Self {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        Self {
            signing: EncodingKey::from_rsa_pem(kp.serialize_pem().as_bytes()).unwrap(),
            public_pem: kp.public_key_pem(),
            alg: Algorithm::RS256,
        }
    }

    fn ec() -> Self {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Self {
            signing: EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
            public_pem: kp.public_key_pem(),
            alg: Algorithm::ES256,
        }
    }

    fn sign(&self, kid: Option<&str>, claims: &Value) -> String {
        sign(self.alg, kid, &self.signing, claims)
    }

    fn jwk(&self, kid: &str) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.signing, self.alg).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        jwk
    }
}

fn jwks_json(keys: &[Jwk]) -> String {
    serde_json::to_string(&JwkSet {
        keys: keys.to_vec(),
    })
    .unwrap()
}

/// A directory of the test's own for key files.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tether-auth-{test}-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn verifier_from(toml: &str, dir: &std::path::Path) -> Verifier {
    let config = AuthConfig::from_toml(toml, &dir.join("hub.toml")).unwrap();
    config.verifier().await.expect("keys are configured")
}

fn hmac_only() -> Verifier {
    let key = tether_hub::auth::keys::hmac_key(SECRET.as_bytes()).unwrap();
    Verifier::new(vec![key], Vec::new(), Checks::default())
}

#[tokio::test]
async fn an_hs256_token_opens_a_connection_with_its_claims() {
    let identity = hmac_only().connection(&hs(&claims("alice"))).await.unwrap();
    assert_eq!(identity.user.as_str(), "alice");
    assert!(identity.subscribe[0].matches("room:42"));
    assert!(identity.publish[0].matches("room:lobby"));
    assert!(!identity.publish[0].matches("room:42"));
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_with_pem_public_keys() {
    let dir = scratch("pem");
    let (rsa, ec) = (Pair::rsa(), Pair::ec());
    std::fs::write(dir.join("rsa.pem"), &rsa.public_pem).unwrap();
    std::fs::write(dir.join("ec.pem"), &ec.public_pem).unwrap();
    let verifier = verifier_from(
        "[auth]\npublic_keys = [\"rsa.pem\", { file = \"ec.pem\", kid = \"ec1\" }]\n",
        &dir,
    )
    .await;
    let alice = verifier
        .connection(&rsa.sign(None, &claims("alice")))
        .await
        .unwrap();
    assert_eq!(alice.user.as_str(), "alice");
    let bob = verifier
        .connection(&ec.sign(Some("ec1"), &claims("bob")))
        .await
        .unwrap();
    assert_eq!(bob.user.as_str(), "bob");
    // The EC key is known by its kid: a token naming another is not checked with it.
    let other = verifier
        .connection(&ec.sign(Some("ec2"), &claims("bob")))
        .await;
    assert!(
        matches!(other, Err(AuthError::UnknownKey { .. })),
        "{other:?}"
    );
    // A key the hub does not hold.
    let stranger = Pair::rsa().sign(None, &claims("eve"));
    let refused = verifier.connection(&stranger).await.unwrap_err();
    assert!(matches!(refused, AuthError::Signature), "{refused:?}");
    assert_eq!(refused.code(), AuthCode::Unauthorized);
}

#[tokio::test]
async fn expiry_and_not_before_respect_the_leeway() {
    let verifier = hmac_only(); // leeway 5 s
    let mut c = claims("a");
    c["exp"] = json!(now() - 60);
    let expired = verifier.connection(&hs(&c)).await.unwrap_err();
    assert!(matches!(expired, AuthError::Expired));
    assert_eq!(expired.code(), AuthCode::TokenExpired);
    assert_eq!(expired.code().close_code(), 4001);
    c["exp"] = json!(now() - 1);
    assert!(verifier.connection(&hs(&c)).await.is_ok(), "within leeway");
    let mut c = claims("a");
    c["nbf"] = json!(now() + 120);
    assert!(matches!(
        verifier.connection(&hs(&c)).await,
        Err(AuthError::NotYetValid)
    ));
    let mut c = claims("a");
    c.as_object_mut().unwrap().remove("exp");
    assert!(matches!(
        verifier.connection(&hs(&c)).await,
        Err(AuthError::Claim { claim: "exp", .. })
    ));
}

#[tokio::test]
async fn audience_and_issuer_are_checked_when_configured() {
    let dir = scratch("aud");
    let toml = format!("[auth]\nhmac_secret = \"{SECRET}\"\naudience = \"tether\"\nissuer = [\"app\", \"admin\"]\n");
    let verifier = verifier_from(&toml, &dir).await;
    let mut c = claims("a");
    c["aud"] = json!("tether");
    c["iss"] = json!("app");
    assert!(verifier.connection(&hs(&c)).await.is_ok());
    c["aud"] = json!(["other", "tether"]);
    assert!(verifier.connection(&hs(&c)).await.is_ok());
    c["aud"] = json!("other");
    assert!(matches!(
        verifier.connection(&hs(&c)).await,
        Err(AuthError::Audience)
    ));
    c["aud"] = json!("tether");
    c["iss"] = json!("mallory");
    assert!(matches!(
        verifier.connection(&hs(&c)).await,
        Err(AuthError::Issuer)
    ));
    c.as_object_mut().unwrap().remove("iss");
    assert!(matches!(
        verifier.connection(&hs(&c)).await,
        Err(AuthError::Claim { claim: "iss", .. })
    ));
    // Unconfigured, `aud` is not looked at.
    let mut c = claims("a");
    c["aud"] = json!("anything");
    assert!(hmac_only().connection(&hs(&c)).await.is_ok());
}

#[tokio::test]
async fn alg_none_and_algorithm_confusion_are_refused() {
    let dir = scratch("confusion");
    let rsa = Pair::rsa();
    std::fs::write(dir.join("rsa.pem"), &rsa.public_pem).unwrap();
    let rsa_only = verifier_from("[auth]\npublic_keys = [\"rsa.pem\"]\n", &dir).await;

    // alg: none, with and without a signature.
    let b64 = |v: Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let body = b64(claims("eve"));
    for alg in ["none", "None", "NONE", "HS512", ""] {
        let unsigned = format!("{}.{body}.", b64(json!({"alg": alg, "typ": "JWT"})));
        let refused = rsa_only.connection(&unsigned).await.unwrap_err();
        assert!(
            matches!(refused, AuthError::Algorithm(_)),
            "{alg}: {refused:?}"
        );
    }

    // The classic confusion: an HS256 token whose HMAC key is the RSA public key (which
    // is public). The hub holds no HMAC secret, so HS256 is not accepted at all...
    let forged = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(rsa.public_pem.as_bytes()).unwrap(),
        &claims("eve"),
    );
    let refused = rsa_only.connection(&forged).await.unwrap_err();
    assert!(matches!(refused, AuthError::Algorithm(_)), "{refused:?}");
    // ...and where it holds one, the RSA key is never used as the secret.
    let both = verifier_from(
        &format!("[auth]\nhmac_secret = \"{SECRET}\"\npublic_keys = [\"rsa.pem\"]\n"),
        &dir,
    )
    .await;
    assert!(matches!(
        both.connection(&forged).await,
        Err(AuthError::Signature)
    ));
    // An RS256 header on an HMAC-signed body does not pass either.
    let hs_signed = hs(&claims("eve"));
    let mut parts: Vec<&str> = hs_signed.split('.').collect();
    let rs_header = b64(json!({"alg": "RS256", "typ": "JWT"}));
    parts[0] = &rs_header;
    assert!(matches!(
        both.connection(&parts.join(".")).await,
        Err(AuthError::Signature)
    ));
    // A signature tampered with by one bit.
    let good = rsa.sign(None, &claims("alice"));
    let mut bytes = good.into_bytes();
    let last = bytes.len() - 2;
    bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    assert!(matches!(
        both.connection(&tampered).await,
        Err(AuthError::Signature)
    ));
}

#[tokio::test]
async fn malformed_huge_and_mistyped_tokens_are_unauthorized() {
    let verifier = hmac_only();
    for junk in ["", "a", "a.b", "a.b.c", "....", "eyJ.eyJ.sig", "a.b.c.d"] {
        let refused = verifier.connection(junk).await.unwrap_err();
        assert_eq!(
            refused.code(),
            AuthCode::Unauthorized,
            "{junk}: {refused:?}"
        );
    }
    let mut c = claims("a");
    c["blob"] = json!("x".repeat(10_000));
    assert!(matches!(
        verifier.connection(&hs(&c)).await,
        Err(AuthError::TooLarge { .. })
    ));
    for (claim, value) in [
        ("channels", json!("room:*")),
        ("channels", json!([["room:*"]])),
        ("publish", json!({"room": true})),
        ("sub", json!(42)),
        ("exp", json!("tomorrow")),
    ] {
        let mut c = claims("a");
        c[claim] = value;
        let refused = verifier.connection(&hs(&c)).await.unwrap_err();
        assert!(
            matches!(refused, AuthError::Claim { .. }),
            "{claim}: {refused:?}"
        );
        assert_eq!(refused.code(), AuthCode::Unauthorized);
    }
}

#[tokio::test]
async fn subscription_tokens_open_one_channel_for_one_user() {
    let verifier = hmac_only();
    let alice = UserId::parse("alice").unwrap();
    let token = hs(&json!({"sub": "alice", "exp": now() + 60, "channel": "secret:1"}));
    let grant = verifier
        .subscription(&token, "secret:1", &alice)
        .await
        .unwrap();
    assert_eq!(&*grant.channel, "secret:1");
    assert!(verifier
        .subscription(&token, "secret:2", &alice)
        .await
        .is_err());
    let bob = UserId::parse("bob").unwrap();
    assert!(verifier
        .subscription(&token, "secret:1", &bob)
        .await
        .is_err());
    // Neither kind stands in for the other.
    assert!(matches!(
        verifier.connection(&token).await,
        Err(AuthError::WrongKind(_))
    ));
    let connection = hs(&claims("alice"));
    assert!(matches!(
        verifier.subscription(&connection, "secret:1", &alice).await,
        Err(AuthError::WrongKind(_))
    ));
    assert!(matches!(
        verifier.verify(&token).await,
        Ok(Grant::Subscription(_))
    ));
}

/// A tiny HTTP server on loopback serving whatever document it is given, counting hits.
#[derive(Clone)]
struct JwksServer {
    document: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(document: String, tls: Option<Arc<rustls::ServerConfig>>) -> (Self, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = Self {
            document: Arc::new(Mutex::new(document)),
            hits: Arc::new(AtomicUsize::new(0)),
        };
        let shared = server.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => shared.answer(stream).await,
                        Some(config) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(config);
                            if let Ok(stream) = acceptor.accept(stream).await {
                                shared.answer(stream).await;
                            }
                        }
                    }
                });
            }
        });
        (server, port)
    }

    async fn answer<S: AsyncRead + AsyncWrite + Unpin>(&self, mut stream: S) {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        self.hits.fetch_add(1, Ordering::SeqCst);
        let body = self.document.lock().unwrap().clone();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    fn serve(&self, document: String) {
        *self.document.lock().unwrap() = document;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn options(min_refetch: Duration) -> JwksOptions {
    JwksOptions {
        min_refetch,
        ..JwksOptions::default()
    }
}

#[tokio::test]
async fn jwks_rotation_over_http_fetches_new_keys_at_a_bounded_rate() {
    let (old, new) = (Pair::rsa(), Pair::ec());
    let (server, port) = JwksServer::start(jwks_json(&[old.jwk("k1")]), None).await;
    let url = JwksUrl::parse(&format!("http://127.0.0.1:{port}/jwks.json"), None).unwrap();
    let min_refetch = Duration::from_millis(400);
    let source = JwksSource::new(JwksLocation::Url(url), options(min_refetch));
    assert_eq!(source.load().await.unwrap(), 1);
    let verifier = Verifier::new(Vec::new(), vec![source.clone()], Checks::default());

    assert!(verifier
        .connection(&old.sign(Some("k1"), &claims("a")))
        .await
        .is_ok());
    assert_eq!(server.hits(), 1, "a known kid needs no fetch");

    // The provider rotates: k2 replaces k1.
    server.serve(jwks_json(&[new.jwk("k2")]));
    let fresh = new.sign(Some("k2"), &claims("b"));
    // Right after the load the rate limit holds: the unknown kid is refused, not fetched.
    let early = verifier.connection(&fresh).await;
    assert!(
        matches!(early, Err(AuthError::UnknownKey { .. })),
        "{early:?}"
    );
    assert_eq!(server.hits(), 1);
    tokio::time::sleep(min_refetch + Duration::from_millis(50)).await;
    let identity = verifier.connection(&fresh).await.unwrap();
    assert_eq!(identity.user.as_str(), "b");
    assert_eq!(server.hits(), 2);
    // The withdrawn key no longer opens anything.
    let stale = verifier
        .connection(&old.sign(Some("k1"), &claims("a")))
        .await;
    assert!(
        matches!(stale, Err(AuthError::UnknownKey { .. })),
        "{stale:?}"
    );

    // A flood of made-up kids, many at once: fetches stay within the rate.
    let started = std::time::Instant::now();
    let verifier = Arc::new(verifier);
    let mut tasks = Vec::new();
    for i in 0..300 {
        let verifier = verifier.clone();
        let token = new.sign(Some(&format!("bogus-{i}")), &claims("x"));
        tasks.push(tokio::spawn(async move {
            let refused = verifier.connection(&token).await.unwrap_err();
            assert!(
                matches!(refused, AuthError::UnknownKey { .. }),
                "{refused:?}"
            );
            tokio::time::sleep(Duration::from_millis(10 * (i % 100))).await;
            let again = verifier.connection(&token).await;
            assert!(again.is_err());
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let allowed = 2 + 1 + (elapsed.as_millis() / min_refetch.as_millis()) as usize;
    let hits = server.hits();
    assert!(
        hits <= allowed,
        "{hits} fetches in {elapsed:?}; at most {allowed} allowed"
    );
    assert!(
        hits >= 3,
        "an unknown kid after the interval does fetch again ({hits})"
    );
}

#[tokio::test]
async fn jwks_file_keys_verify_and_issuer_selects_the_source() {
    let dir = scratch("jwksfile");
    let (a, b) = (Pair::rsa(), Pair::ec());
    std::fs::write(dir.join("a.json"), jwks_json(&[a.jwk("a1")])).unwrap();
    std::fs::write(dir.join("b.json"), jwks_json(&[b.jwk("b1")])).unwrap();
    let verifier = verifier_from(
        "[[auth.jwks]]\nfile = \"a.json\"\nissuer = \"https://a.example\"\n\n\
         [[auth.jwks]]\nfile = \"b.json\"\nissuer = \"https://b.example\"\n",
        &dir,
    )
    .await;
    let mut c = claims("u");
    c["iss"] = json!("https://a.example");
    assert!(verifier.connection(&a.sign(Some("a1"), &c)).await.is_ok());
    // Provider B's key does not speak for provider A.
    let crossed = verifier.connection(&b.sign(Some("b1"), &c)).await;
    assert!(crossed.is_err(), "{crossed:?}");
    c["iss"] = json!("https://b.example");
    assert!(verifier.connection(&b.sign(Some("b1"), &c)).await.is_ok());
    c.as_object_mut().unwrap().remove("iss");
    assert!(verifier.connection(&b.sign(Some("b1"), &c)).await.is_err());
}

#[tokio::test]
async fn jwks_over_https_is_fetched_with_the_configured_ca() {
    let dir = scratch("jwkstls");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
    )
    .unwrap();
    let pair = Pair::ec();
    let (server, port) =
        JwksServer::start(jwks_json(&[pair.jwk("t1")]), Some(Arc::new(server_config))).await;
    let verifier = verifier_from(
        &format!("[[auth.jwks]]\nurl = \"https://localhost:{port}/jwks\"\nca = \"ca.pem\"\n"),
        &dir,
    )
    .await;
    assert!(verifier
        .connection(&pair.sign(Some("t1"), &claims("tls")))
        .await
        .is_ok());
    assert_eq!(server.hits(), 1);

    // Without the CA, the system roots do not know this server: nothing is fetched.
    if let Ok(url) = JwksUrl::parse(&format!("https://localhost:{port}/jwks"), None) {
        let source = JwksSource::new(JwksLocation::Url(url), JwksOptions::default());
        let error = source.load().await.unwrap_err();
        assert!(error.problem.contains("TLS"), "{error}");
    }
}
