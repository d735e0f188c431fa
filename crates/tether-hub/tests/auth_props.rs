//! Property tests: whatever a client sends as a frame or a token, and whatever a token
//! holds as a pattern, the hub answers with an error or a match — never a panic — and the
//! work per token stays bounded.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use serde_json::{json, Value};
use tether_hub::auth::keys::hmac_key;
use tether_hub::auth::{AuthError, ChannelPattern, Checks, Grant, Verifier};
use tether_hub::protocol::ClientFrame;

const SECRET: &[u8] = b"property-test-secret-0123456789abcdef";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        Verifier::new(
            vec![hmac_key(SECRET).unwrap()],
            Vec::new(),
            Checks::default(),
        )
    })
}

fn verify(token: &str) -> Result<Grant, AuthError> {
    runtime().block_on(verifier().verify(token))
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap()
}

/// Arbitrary JSON, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_as_tokens_are_refused_without_panic(token in ".{0,400}") {
        prop_assert!(verify(&token).is_err());
    }

    #[test]
    fn arbitrary_three_part_tokens_are_refused_without_panic(
        header in ".{0,80}", payload in ".{0,200}", signature in "[A-Za-z0-9_-]{0,90}",
    ) {
        let token = format!("{}.{}.{signature}", b64(header.as_bytes()), b64(payload.as_bytes()));
        prop_assert!(verify(&token).is_err());
    }

    #[test]
    fn arbitrary_json_headers_and_claims_are_refused_without_panic(
        header in any_json(), claims in any_json(),
    ) {
        let token = format!("{}.{}.c2ln", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        prop_assert!(verify(&token).is_err());
    }

    /// Signed tokens with arbitrary claim values: the signature passes, so the claims'
    /// types are what is tested. Either they are right and grant what they say, or the
    /// token is refused as `unauthorized`.
    #[test]
    fn signed_tokens_with_arbitrary_claims_never_panic(
        channels in prop_oneof![any_json(), prop::collection::vec("[a-z:*]{1,10}", 0..4).prop_map(|v| json!(v))],
        publish in any_json(),
        sub in prop_oneof![any_json(), "[a-z]{1,8}".prop_map(Value::String)],
        channel in prop_oneof![any_json(), "[a-z:#,]{1,10}".prop_map(Value::String)],
        with_channel in any::<bool>(),
    ) {
        let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
        let mut claims = json!({"sub": sub, "exp": exp, "channels": channels, "publish": publish});
        if with_channel {
            claims["channel"] = channel;
        }
        match verify(&sign(&claims)) {
            Ok(Grant::Connection(identity)) => {
                prop_assert_eq!(Some(identity.user.as_str()), claims["sub"].as_str());
            }
            Ok(Grant::Subscription(grant)) => {
                prop_assert_eq!(Some(&*grant.channel), claims["channel"].as_str());
            }
            Err(error) => prop_assert_eq!(error.code(), tether_hub::auth::AuthCode::Unauthorized),
        }
    }

    /// The client-frame parser, fed anything and frames of every type with fields of any
    /// shape (`token` included), answers a frame or a protocol error.
    #[test]
    fn the_client_frame_parser_never_panics(
        text in ".{0,300}",
        kind in prop_oneof![
            Just("connect".to_owned()), Just("refresh".to_owned()), Just("subscribe".to_owned()), Just("unsubscribe".to_owned()),
            Just("publish".to_owned()), Just("ping".to_owned()), ".{0,8}",
        ],
        token in any_json(), channel in any_json(), since in any_json(), data in any_json(),
    ) {
        let _ = ClientFrame::parse(&text);
        let frame = json!({"type": kind, "token": token, "channel": channel, "since": since, "data": data});
        if let Ok(ClientFrame::Connect { token: Some(t) } | ClientFrame::Refresh { token: t }) =
            ClientFrame::parse(&frame.to_string())
        {
            prop_assert_eq!(Some(t.as_str()), frame["token"].as_str());
        }
    }

    #[test]
    fn arbitrary_patterns_and_channels_never_panic(pattern in ".{0,200}", channel in ".{0,200}") {
        if let Ok(p) = ChannelPattern::parse(&pattern) {
            let _ = p.matches(&channel);
        }
    }

    /// Over a small alphabet, where collisions are frequent, the compiled matcher agrees
    /// with the obvious recursive definition of `*`.
    #[test]
    fn patterns_match_exactly_what_the_definition_says(pattern in "[ab:*]{1,12}", channel in "[ab:]{0,14}") {
        let compiled = ChannelPattern::parse(&pattern).unwrap();
        prop_assert_eq!(compiled.matches(&channel), reference(pattern.as_bytes(), channel.as_bytes()));
    }
}

fn reference(p: &[u8], c: &[u8]) -> bool {
    match p.split_first() {
        None => c.is_empty(),
        Some((b'*', rest)) => (0..=c.len()).any(|i| reference(rest, &c[i..])),
        Some((x, rest)) => c.first() == Some(x) && reference(rest, &c[1..]),
    }
}

/// The most expensive tokens a client can send within the size limit — deep JSON, the
/// most patterns, backtracking-bait patterns matched against long names — each cost a
/// bounded, small amount of work. The bound is loose (a loaded two-core machine), the
/// failure it guards against is not: a quadratic or exponential path costs seconds.
#[test]
fn the_worst_tokens_cost_bounded_time() {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let deep = format!("{}{}", "[".repeat(4000), "]".repeat(4000));
    let bait: Vec<String> = (0..60).map(|_| format!("{}b", "*a".repeat(40))).collect();
    let many_patterns = sign(&json!({"sub": "u", "exp": exp, "channels": bait}));
    let hostile = [
        format!("{}.{}.x", b64(deep.as_bytes()), b64(b"{}")),
        format!("{}.{}.x", b64(br#"{"alg":"HS256"}"#), b64(deep.as_bytes())),
        "a.".repeat(4000),
        ".".repeat(8192),
        many_patterns.clone(),
    ];
    let channel = "a".repeat(128);
    let started = Instant::now();
    let rounds = 200;
    for _ in 0..rounds {
        for token in &hostile {
            if let Ok(Grant::Connection(identity)) = verify(token) {
                assert!(!identity.subscribe.iter().any(|p| p.matches(&channel)));
            }
        }
    }
    let per_token = started.elapsed() / (rounds * hostile.len() as u32);
    assert!(
        per_token < Duration::from_millis(5),
        "a hostile token cost {per_token:?} on average"
    );
    assert!(matches!(verify(&many_patterns), Ok(Grant::Connection(_))));
}
