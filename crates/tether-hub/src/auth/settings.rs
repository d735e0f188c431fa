//! The `[auth]` table and `[[namespace]]` list of `hub.toml`, read and validated once.
//!
//! ```toml
//! [auth]
//! hmac_secret_file = "secret.txt"       # or hmac_secret = "…" (at least 32 bytes)
//! public_keys = ["keys/app.pem"]        # RS256 / ES256; or { file = "…", kid = "…" }
//! audience = "tether"                   # a string or a list; checked when set
//! issuer = "https://auth.example.com"   # likewise
//! leeway = "5s"
//! max_token_size = 8192
//! allow_anonymous = false
//! failure_burst = 20                    # failed authentications per address…
//! failure_rate = 1.0                    # …earned back per second
//! trusted_proxies = ["127.0.0.1/32"]    # whose X-Forwarded-For names the client
//!
//! [[auth.jwks]]
//! url = "https://auth.example.com/.well-known/jwks.json"   # or file = "jwks.json"
//! issuer = "https://auth.example.com"
//!
//! [[namespace]]
//! prefix = "room:"
//! subscribe = "authenticated"           # anonymous | authenticated | token
//! publish = "subscribers"               # nobody | subscribers | token | anyone
//! history_size = 100                    # this namespace's own history limits; default:
//! history_ttl = "1h"                    # the hub's --history-size / --history-ttl
//! ```
//!
//! Flags are merged into the raw tables ([`RawAuth`]) before [`resolve`] validates them,
//! so a rule that needs tokens is accepted when the keys come from a flag. Every error
//! names the file, the key and the problem. Relative paths are relative to the file.

use std::collections::HashSet;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::jwks::{parse_document, JwksLocation, JwksOptions, JwksSource, JwksUrl};
use super::keys::{hmac_key, pem_key_file, KeyError, VerifyingKey};
use super::limiter::FailureBudget;
use super::pattern::is_channel_char;
use super::rules::{Namespace, PublishRule, Rules, SubscribeRule};
use super::token::{Checks, Verifier, DEFAULT_LEEWAY, DEFAULT_MAX_TOKEN_SIZE};
use crate::broker::{HistoryPolicies, HistoryPolicy};
use crate::protocol::MAX_CHANNEL_LEN;

/// Most PEM keys and JWKS sources: each one may cost a signature check per token.
pub const MAX_KEY_SOURCES: usize = 8;
/// Most namespaces.
pub const MAX_NAMESPACES: usize = 1024;
/// Largest `max_token_size`.
pub const MAX_TOKEN_SIZE_LIMIT: usize = 64 * 1024;
/// Largest `leeway`: beyond it an expired token would live on for too long.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// A configuration that cannot be used: the file, the dotted key, the problem.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}: {key}: {problem}")]
pub struct SettingsError {
    pub file: PathBuf,
    pub key: String,
    pub problem: String,
}

/// A string that is never printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// One value or a list of them (`audience = "a"` or `audience = ["a", "b"]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

/// `public_keys` entries: a file name, or a table with the `kid` the key is known by.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawPublicKey {
    File(PathBuf),
    Named { file: PathBuf, kid: Option<String> },
}

/// `[[auth.jwks]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwks {
    pub url: Option<String>,
    pub file: Option<PathBuf>,
    pub issuer: Option<String>,
    /// PEM bundle to trust instead of the system's roots (https only).
    pub ca: Option<PathBuf>,
    pub refresh: Option<String>,
    pub min_refetch: Option<String>,
    pub timeout: Option<String>,
}

/// `[auth]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub hmac_secret: Option<Secret>,
    pub hmac_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub public_keys: Vec<RawPublicKey>,
    #[serde(default)]
    pub jwks: Vec<RawJwks>,
    pub audience: Option<OneOrMany>,
    pub issuer: Option<OneOrMany>,
    pub leeway: Option<String>,
    pub max_token_size: Option<usize>,
    pub allow_anonymous: Option<bool>,
    /// Failed authentications one address may have in a burst.
    pub failure_burst: Option<u32>,
    /// Failures per second an address earns back.
    pub failure_rate: Option<f64>,
    /// Proxies whose `X-Forwarded-For` names the client (`tether proxy` in front).
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
}

/// `[[namespace]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNamespace {
    pub prefix: String,
    pub subscribe: Option<RawSubscribe>,
    pub publish: Option<RawPublish>,
    pub history_size: Option<usize>,
    pub history_ttl: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawSubscribe {
    Anonymous,
    Authenticated,
    Token,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawPublish {
    Nobody,
    Subscribers,
    Token,
    Anyone,
}

/// The part of `hub.toml` this module reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawSettings {
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default, rename = "namespace")]
    pub namespaces: Vec<RawNamespace>,
}

/// A JWKS source, checked, not yet fetched.
#[derive(Debug, Clone)]
pub struct JwksSpec {
    pub location: JwksLocation,
    pub options: JwksOptions,
}

/// Authentication and channel rules, validated.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The HMAC secret and the PEM keys, loaded.
    pub keys: Vec<VerifyingKey>,
    pub jwks: Vec<JwksSpec>,
    pub checks: Checks,
    /// Whether clients without a token may connect (see [`super::check_protected_mode`]).
    pub allow_anonymous: bool,
    pub namespaces: Vec<Namespace>,
    pub failure_budget: FailureBudget,
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for AuthConfig {
    /// No keys, no namespaces: the open hub of development.
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            jwks: Vec::new(),
            checks: Checks::default(),
            allow_anonymous: false,
            namespaces: Vec::new(),
            failure_budget: FailureBudget::default(),
            trusted_proxies: Vec::new(),
        }
    }
}

impl AuthConfig {
    /// Whether any key is configured to check tokens with.
    pub fn tokens_configured(&self) -> bool {
        !self.keys.is_empty() || !self.jwks.is_empty()
    }

    /// Whether a client may connect without a token: always when no key is configured
    /// (the hub is open; [`super::check_protected_mode`] keeps it to loopback), otherwise
    /// only with `allow_anonymous`.
    pub fn anonymous_may_connect(&self) -> bool {
        !self.tokens_configured() || self.allow_anonymous
    }

    pub fn rules(&self) -> Rules {
        Rules::new(self.namespaces.clone(), self.tokens_configured())
    }

    /// Every channel's history limits: each namespace's own where it sets them, `default`
    /// elsewhere. Every namespace is listed, so a channel of a namespace without limits
    /// gets the default rather than those of a shorter prefix it also starts with.
    pub fn history_policies(&self, default: HistoryPolicy) -> HistoryPolicies {
        self.namespaces
            .iter()
            .fold(HistoryPolicies::uniform(default), |policies, ns| {
                let policy = HistoryPolicy {
                    size: ns.history_size.map_or(default.size, NonZeroUsize::get),
                    ttl: ns.history_ttl.unwrap_or(default.ttl),
                };
                policies.with_prefix(&ns.prefix, policy)
            })
    }

    /// The verifier for these keys, with each JWKS source fetched once (a source that
    /// cannot be fetched now starts empty and is fetched again when a token needs it).
    /// `None` when no key is configured.
    pub async fn verifier(&self) -> Option<Verifier> {
        if !self.tokens_configured() {
            return None;
        }
        let mut sources = Vec::new();
        for spec in &self.jwks {
            let source = JwksSource::new(spec.location.clone(), spec.options.clone());
            match source.load().await {
                Ok(count) => tracing::info!(source = %source.name(), count, "JWKS keys loaded"),
                Err(error) => {
                    tracing::warn!(%error, "JWKS not loaded; will retry when a token needs it")
                }
            }
            sources.push(source);
        }
        Some(Verifier::new(
            self.keys.clone(),
            sources,
            self.checks.clone(),
        ))
    }

    /// Reads a TOML document holding `[auth]` and `[[namespace]]` only (tests, tools).
    pub fn from_toml(text: &str, file: &Path) -> Result<Self, SettingsError> {
        let raw: RawSettings = parse_toml(text, file)?;
        resolve(raw, file)
    }
}

/// Deserializes `text`, reporting the dotted key of what did not fit.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &Path,
) -> Result<T, SettingsError> {
    let fail = |key: String, problem: String| SettingsError {
        file: file.to_owned(),
        key,
        problem,
    };
    let de = toml::Deserializer::parse(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        fail(
            line.map_or_else(|| "-".to_owned(), |l| format!("line {l}")),
            e.message().to_owned(),
        )
    })?;
    serde_path_to_error::deserialize(de)
        .map_err(|e| fail(dotted(e.path()), e.inner().message().to_owned()))
}

fn dotted(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            serde_path_to_error::Segment::Map { key }
            | serde_path_to_error::Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            serde_path_to_error::Segment::Unknown => out.push('?'),
        }
    }
    if out.is_empty() {
        out.push('-');
    }
    out
}

/// Validates `raw` (read from `file`; relative paths are taken from its directory),
/// loading the key files it names.
pub fn resolve(raw: RawSettings, file: &Path) -> Result<AuthConfig, SettingsError> {
    let base = file.parent().unwrap_or(Path::new("."));
    let fail = |key: String, problem: String| SettingsError {
        file: file.to_owned(),
        key,
        problem,
    };
    let RawSettings { auth, namespaces } = raw;
    let mut keys = Vec::new();

    let secret = match (auth.hmac_secret, &auth.hmac_secret_file) {
        (Some(_), Some(_)) => {
            return Err(fail(
                "auth.hmac_secret_file".into(),
                "give hmac_secret or hmac_secret_file, not both".into(),
            ))
        }
        (Some(secret), None) => Some(("auth.hmac_secret", secret.0.into_bytes())),
        (None, Some(path)) => {
            let path = base.join(path);
            let text = std::fs::read(&path).map_err(|e| {
                fail(
                    "auth.hmac_secret_file".into(),
                    format!("{}: cannot read: {e}", path.display()),
                )
            })?;
            // A trailing newline is what editors and `echo` leave, not part of the secret.
            let trimmed = text.trim_ascii_end().to_vec();
            Some(("auth.hmac_secret_file", trimmed))
        }
        (None, None) => None,
    };
    if let Some((key, secret)) = secret {
        keys.push(hmac_key(&secret).map_err(|e| fail(key.into(), e.to_string()))?);
    }

    if auth.public_keys.len() > MAX_KEY_SOURCES {
        return Err(fail(
            "auth.public_keys".into(),
            format!("at most {MAX_KEY_SOURCES} keys (each may cost a check per token)"),
        ));
    }
    for (i, entry) in auth.public_keys.iter().enumerate() {
        let (path, kid) = match entry {
            RawPublicKey::File(path) => (path, None),
            RawPublicKey::Named { file, kid } => (file, kid.as_deref()),
        };
        let key = pem_key_file(&base.join(path), kid).map_err(|e| match e {
            KeyError::File { file, problem } => fail(
                format!("auth.public_keys[{i}]"),
                format!("{}: {problem}", file.display()),
            ),
            other => fail(format!("auth.public_keys[{i}]"), other.to_string()),
        })?;
        keys.push(key);
    }

    if auth.jwks.len() > MAX_KEY_SOURCES {
        return Err(fail(
            "auth.jwks".into(),
            format!("at most {MAX_KEY_SOURCES} JWKS sources"),
        ));
    }
    let mut jwks = Vec::new();
    for (i, entry) in auth.jwks.into_iter().enumerate() {
        let key = |name: &str| format!("auth.jwks[{i}].{name}");
        let ca = entry.ca.as_ref().map(|ca| base.join(ca));
        let location = match (&entry.url, &entry.file) {
            (Some(url), None) => JwksLocation::Url(
                JwksUrl::parse(url, ca.as_deref()).map_err(|p| fail(key("url"), p))?,
            ),
            (None, Some(path)) => {
                if ca.is_some() {
                    return Err(fail(key("ca"), "`ca` is for a `url`".into()));
                }
                let path = base.join(path);
                let document = std::fs::read(&path).map_err(|e| {
                    fail(key("file"), format!("{}: cannot read: {e}", path.display()))
                })?;
                parse_document(&document)
                    .map_err(|p| fail(key("file"), format!("{}: {p}", path.display())))?;
                JwksLocation::File(path)
            }
            _ => {
                return Err(fail(
                    format!("auth.jwks[{i}]"),
                    "give `url` or `file`".into(),
                ))
            }
        };
        let defaults = JwksOptions::default();
        let options = JwksOptions {
            issuer: entry.issuer,
            refresh: duration(entry.refresh.as_deref(), defaults.refresh)
                .map_err(|p| fail(key("refresh"), p))?,
            min_refetch: duration(entry.min_refetch.as_deref(), defaults.min_refetch)
                .map_err(|p| fail(key("min_refetch"), p))?,
            timeout: duration(entry.timeout.as_deref(), defaults.timeout)
                .map_err(|p| fail(key("timeout"), p))?,
        };
        if options.min_refetch.is_zero() {
            return Err(fail(
                key("min_refetch"),
                "must be above zero: it is what bounds fetches for unknown keys".into(),
            ));
        }
        if options.timeout.is_zero() {
            return Err(fail(key("timeout"), "must be above zero".into()));
        }
        jwks.push(JwksSpec { location, options });
    }

    let list =
        |value: Option<OneOrMany>, key: &str| -> Result<Option<Arc<[String]>>, SettingsError> {
            let Some(value) = value else { return Ok(None) };
            let list = value.into_vec();
            if list.is_empty() || list.iter().any(String::is_empty) {
                return Err(fail(
                    key.into(),
                    "must name at least one non-empty value".into(),
                ));
            }
            Ok(Some(list.into()))
        };
    let leeway = duration(auth.leeway.as_deref(), DEFAULT_LEEWAY)
        .map_err(|p| fail("auth.leeway".into(), p))?;
    if leeway > MAX_LEEWAY {
        return Err(fail(
            "auth.leeway".into(),
            format!("at most {MAX_LEEWAY:?}: a longer leeway keeps expired tokens alive"),
        ));
    }
    let max_token_size = auth.max_token_size.unwrap_or(DEFAULT_MAX_TOKEN_SIZE);
    let max_token_size = NonZeroUsize::new(max_token_size)
        .filter(|n| n.get() <= MAX_TOKEN_SIZE_LIMIT)
        .ok_or_else(|| {
            fail(
                "auth.max_token_size".into(),
                format!("must be 1..={MAX_TOKEN_SIZE_LIMIT} bytes"),
            )
        })?;
    let checks = Checks {
        audience: list(auth.audience, "auth.audience")?,
        issuer: list(auth.issuer, "auth.issuer")?,
        leeway,
        max_token_size,
    };
    let defaults = FailureBudget::default();
    let failure_budget = FailureBudget {
        burst: auth.failure_burst.unwrap_or(defaults.burst),
        per_second: auth.failure_rate.unwrap_or(defaults.per_second),
    };
    if failure_budget.burst == 0 {
        return Err(fail(
            "auth.failure_burst".into(),
            "must be at least 1".into(),
        ));
    }
    if !(failure_budget.per_second.is_finite() && failure_budget.per_second > 0.0) {
        return Err(fail(
            "auth.failure_rate".into(),
            "must be a number of failures per second above zero".into(),
        ));
    }
    let tokens_configured = !keys.is_empty() || !jwks.is_empty();
    let namespaces = resolve_namespaces(namespaces, tokens_configured, &fail)?;
    Ok(AuthConfig {
        keys,
        jwks,
        checks,
        allow_anonymous: auth.allow_anonymous.unwrap_or(false),
        namespaces,
        failure_budget,
        trusted_proxies: auth.trusted_proxies,
    })
}

fn resolve_namespaces(
    raw: Vec<RawNamespace>,
    tokens_configured: bool,
    fail: &dyn Fn(String, String) -> SettingsError,
) -> Result<Vec<Namespace>, SettingsError> {
    if raw.len() > MAX_NAMESPACES {
        return Err(fail(
            "namespace".into(),
            format!("at most {MAX_NAMESPACES}"),
        ));
    }
    let fallback = Namespace::fallback(tokens_configured);
    let no_keys = "needs token keys: set [auth] hmac_secret, public_keys or jwks (or --token-hmac-secret, --token-public-key, --token-jwks)";
    let mut seen = HashSet::new();
    let mut namespaces = Vec::with_capacity(raw.len());
    for (i, ns) in raw.into_iter().enumerate() {
        let key = |name: &str| format!("namespace[{i}].{name}");
        if ns.prefix.len() > MAX_CHANNEL_LEN || !ns.prefix.chars().all(is_channel_char) {
            return Err(fail(
                key("prefix"),
                format!("{:?} must be at most {MAX_CHANNEL_LEN} of A-Z a-z 0-9 _ - . : # , (\"\" is the fallback)", ns.prefix),
            ));
        }
        if !seen.insert(ns.prefix.clone()) {
            return Err(fail(
                key("prefix"),
                format!("{:?} is used twice", ns.prefix),
            ));
        }
        let subscribe = match ns.subscribe {
            None => fallback.subscribe,
            Some(RawSubscribe::Anonymous) => SubscribeRule::Anonymous,
            Some(RawSubscribe::Authenticated) => SubscribeRule::Authenticated,
            Some(RawSubscribe::Token) => SubscribeRule::Token,
        };
        if subscribe != SubscribeRule::Anonymous && !tokens_configured {
            return Err(fail(key("subscribe"), no_keys.into()));
        }
        let publish = match ns.publish {
            None => fallback.publish,
            Some(RawPublish::Nobody) => PublishRule::Nobody,
            Some(RawPublish::Subscribers) => PublishRule::Subscribers,
            Some(RawPublish::Token) => PublishRule::Token,
            Some(RawPublish::Anyone) => PublishRule::Anyone,
        };
        if publish == PublishRule::Token && !tokens_configured {
            return Err(fail(key("publish"), no_keys.into()));
        }
        let history_size = match ns.history_size {
            None => None,
            Some(size) => Some(NonZeroUsize::new(size).ok_or_else(|| {
                fail(
                    key("history_size"),
                    "must be at least 1 (a channel keeps its last offset even so)".into(),
                )
            })?),
        };
        let history_ttl = match ns.history_ttl.as_deref() {
            None => None,
            Some(text) => match parse_duration(text) {
                Ok(ttl) if ttl.is_zero() => {
                    return Err(fail(key("history_ttl"), "must be above 0s".into()))
                }
                Ok(ttl) => Some(ttl),
                Err(problem) => return Err(fail(key("history_ttl"), problem)),
            },
        };
        namespaces.push(Namespace {
            prefix: ns.prefix.into(),
            subscribe,
            publish,
            history_size,
            history_ttl,
        });
    }
    Ok(namespaces)
}

fn duration(text: Option<&str>, default: Duration) -> Result<Duration, String> {
    text.map_or(Ok(default), parse_duration)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like \"30s\" or \"10m\": {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AuthConfig, SettingsError> {
        AuthConfig::from_toml(text, Path::new("hub.toml"))
    }

    fn problem(text: &str) -> (String, String) {
        let e = parse(text).unwrap_err();
        assert_eq!(e.file, Path::new("hub.toml"));
        (e.key, e.problem)
    }

    const SECRET: &str = "hmac_secret = \"0123456789abcdef0123456789abcdef\"\n";

    #[test]
    fn an_empty_file_is_the_open_hub() {
        let config = parse("").unwrap();
        assert!(!config.tokens_configured());
        assert!(config.anonymous_may_connect());
        let rules = config.rules();
        assert!(rules.check_publish("x", None, false).is_ok());
    }

    #[test]
    fn a_full_file_parses() {
        let text = format!(
            "[auth]\n{SECRET}audience = [\"tether\", \"web\"]\nissuer = \"me\"\nleeway = \"2s\"\n\
             max_token_size = 4096\n\n[[namespace]]\nprefix = \"room:\"\nsubscribe = \"authenticated\"\n\
             publish = \"subscribers\"\n\n[[namespace]]\nprefix = \"\"\n\
             subscribe = \"anonymous\"\npublish = \"nobody\"\n"
        );
        let config = parse(&text).unwrap();
        assert!(config.tokens_configured());
        assert!(!config.anonymous_may_connect());
        assert_eq!(config.checks.leeway, Duration::from_secs(2));
        assert_eq!(config.checks.max_token_size.get(), 4096);
        assert_eq!(config.checks.audience.as_deref().unwrap().len(), 2);
        let rules = config.rules();
        let room = rules.namespace("room:1");
        assert_eq!(room.subscribe, SubscribeRule::Authenticated);
        assert_eq!(rules.namespace("other").publish, PublishRule::Nobody);
    }

    #[test]
    fn errors_name_the_key_and_the_problem() {
        let (key, p) = problem("[auth]\nhmac_secret = \"short\"\n");
        assert_eq!(key, "auth.hmac_secret");
        assert!(p.contains("32"), "{p}");
        let (key, p) = problem("[[namespace]]\nprefix = \"a\"\nsubscribe = \"everyone\"\n");
        assert_eq!(key, "namespace[0].subscribe");
        assert!(p.contains("anonymous"), "{p}");
        let (key, _) = problem("[auth]\nsecret = 1\n");
        assert_eq!(key, "auth.secret");
        let (key, p) = problem("[[namespace]]\nprefix = \"a\"\nsubscribe = \"token\"\n");
        assert_eq!(key, "namespace[0].subscribe");
        assert!(p.contains("--token-hmac-secret"), "{p}");
        let (key, _) = problem(&format!(
            "[auth]\n{SECRET}\n[[namespace]]\nprefix = \"a\"\n[[namespace]]\nprefix = \"a\"\n"
        ));
        assert_eq!(key, "namespace[1].prefix");
        let (key, _) = problem("[[namespace]]\nprefix = \"a b\"\n");
        assert_eq!(key, "namespace[0].prefix");
        let (key, _) = problem("[[namespace]]\nprefix = \"a\"\nhistory_ttl = \"soon\"\n");
        assert_eq!(key, "namespace[0].history_ttl");
        let (key, _) = problem("[[namespace]]\nprefix = \"a\"\nhistory_ttl = \"0s\"\n");
        assert_eq!(key, "namespace[0].history_ttl");
        let (key, _) = problem("[[namespace]]\nprefix = \"a\"\nhistory_size = 0\n");
        assert_eq!(key, "namespace[0].history_size");
        let (key, _) = problem("[[namespace]]\nprefix = \"a\"\nhistory = 5\n");
        assert_eq!(key, "namespace[0].history");
        let (key, _) = problem(&format!("[auth]\n{SECRET}leeway = \"1h\"\n"));
        assert_eq!(key, "auth.leeway");
        let (key, _) = problem("[auth]\nfailure_rate = 0.0\n");
        assert_eq!(key, "auth.failure_rate");
        let (key, _) = problem("[auth]\ntrusted_proxies = [\"nope\"]\n");
        assert_eq!(key, "auth.trusted_proxies[0]");
        let (key, _) = problem("[auth]\nmax_token_size = 0\n");
        assert_eq!(key, "auth.max_token_size");
        let (key, p) = problem("[auth]\npublic_keys = [\"/nonexistent/key.pem\"]\n");
        assert_eq!(key, "auth.public_keys[0]");
        assert!(p.contains("/nonexistent/key.pem"), "{p}");
        let (key, p) = problem("[[auth.jwks]]\nurl = \"http://idp.example/jwks\"\n");
        assert_eq!(key, "auth.jwks[0].url");
        assert!(p.contains("https"), "{p}");
        let (key, _) = problem("[[auth.jwks]]\nissuer = \"x\"\n");
        assert_eq!(key, "auth.jwks[0]");
        let (key, _) =
            problem("[[auth.jwks]]\nurl = \"http://127.0.0.1:1/\"\nmin_refetch = \"0s\"\n");
        assert_eq!(key, "auth.jwks[0].min_refetch");
    }

    #[test]
    fn namespaces_set_their_own_history_limits_and_the_rest_keep_the_default() {
        let auth = parse(
            "[[namespace]]\nprefix = \"room:\"\nhistory_size = 20\nhistory_ttl = \"1h\"\n\
             [[namespace]]\nprefix = \"room:big:\"\n\
             [[namespace]]\nprefix = \"cursor:\"\nhistory_ttl = \"5s\"\n",
        )
        .unwrap();
        let default = HistoryPolicy {
            size: 1000,
            ttl: Duration::from_secs(300),
        };
        let policies = auth.history_policies(default);
        let of =
            |name: &str| policies.for_channel(&crate::protocol::ChannelName::parse(name).unwrap());
        assert_eq!(
            of("room:1"),
            HistoryPolicy {
                size: 20,
                ttl: Duration::from_secs(3600)
            }
        );
        assert_eq!(of("room:big:1"), default);
        assert_eq!(
            of("cursor:a"),
            HistoryPolicy {
                size: 1000,
                ttl: Duration::from_secs(5)
            }
        );
        assert_eq!(of("news"), default);
    }

    #[test]
    fn syntax_errors_give_the_line() {
        let (key, _) = problem("[auth]\n\nleeway = = 3\n");
        assert_eq!(key, "line 3");
    }
}
