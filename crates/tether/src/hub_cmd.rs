//! `tether hub`: command-line wiring for one realtime hub node.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use tether_hub::auth::settings::{
    parse_toml, resolve, OneOrMany, RawAuth, RawJwks, RawNamespace, RawPublicKey, RawSettings,
    Secret,
};
use tether_hub::auth::SettingsError;
use tether_hub::{BrokerOptions, HistoryPolicy, HubConfig, HubTls, TlsFiles};

/// Every setting is a flag, an environment variable for some, and a key of `hub.toml`
/// (`--config`); a flag overrides the file, the file overrides the default.
#[derive(Debug, clap::Args)]
pub struct HubArgs {
    /// A hub.toml holding any of these settings (same names, `_` for `-`) plus `[auth]` and
    /// `[[namespace]]` (see docs/auth.md). Flags given as well override it.
    #[arg(long, env = "TETHER_HUB_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (WebSocket at /ws, HTTP API under /api/, /health, /metrics).
    /// Off loopback the hub needs token keys or --allow-anonymous. [default: 127.0.0.1:7000]
    #[arg(long, env = "TETHER_HUB_LISTEN")]
    listen: Option<SocketAddr>,
    /// Node name, sent to clients in `welcome`. [default: hub]
    #[arg(long, env = "TETHER_HUB_NAME")]
    name: Option<String>,
    /// Broker shared by the nodes that act as one: `memory` (this process only),
    /// `redis://host:port/db`, `rediss://host:port/db[?ca=CA.pem]` (TLS, verified against
    /// that CA or the system roots) or `nats://[user:password@]host:port[?stream=NAME]` (NATS 2.9+
    /// with JetStream). [default: memory]
    #[arg(long, env = "TETHER_HUB_BROKER")]
    broker: Option<String>,
    /// Prefix of every Redis key and pub/sub channel, and of every NATS subject (the NATS
    /// stream is TETHER_<prefix> unless the URL names one). [default: tether]
    #[arg(long, env = "TETHER_HUB_REDIS_PREFIX")]
    redis_prefix: Option<String>,
    /// Messages kept per channel for resume. [default: 1000]
    #[arg(long)]
    history_size: Option<usize>,
    /// Oldest message kept per channel for resume (e.g. 300s, 5m, 1h). [default: 5m]
    #[arg(long, value_parser = parse_duration)]
    history_ttl: Option<Duration>,
    /// Bearer token required by /api/*. Unset, the API is open on a loopback hub only.
    #[arg(long, env = "TETHER_HUB_API_TOKEN")]
    api_token: Option<String>,
    /// Largest client frame or publish body, in bytes. [default: 65536]
    #[arg(long)]
    max_message_size: Option<usize>,
    /// How often each connection is pinged. [default: 25s]
    #[arg(long, value_parser = parse_duration)]
    ping_interval: Option<Duration>,
    /// How long a pinged client may stay silent before it is dropped. [default: 10s]
    #[arg(long, value_parser = parse_duration)]
    ping_timeout: Option<Duration>,
    /// Frames per second one client may send on average (beyond: closed with 1008).
    /// [default: 100]
    #[arg(long)]
    client_rate: Option<u32>,
    /// Frames one client may send in a burst. [default: 200]
    #[arg(long)]
    client_burst: Option<u32>,
    /// Messages queued for one client before it is closed as too slow (1013). [default: 1024]
    #[arg(long)]
    client_queue: Option<usize>,
    /// Shortest interval between two message writes to one client (e.g. 10ms): messages
    /// arriving sooner go out together when it is up. 0 writes each message at once.
    /// [default: 0s]
    #[arg(long, value_parser = parse_duration)]
    write_delay: Option<Duration>,
    /// Channels one connection may subscribe at once. [default: 128]
    #[arg(long)]
    max_subscriptions: Option<usize>,
    /// On SIGTERM, clients are closed with 1012 spread over this window. [default: 10s]
    #[arg(long, value_parser = parse_duration)]
    shutdown_window: Option<Duration>,
    /// Longest time a connection may take to send a complete request head, from when it
    /// opens or its previous response went out; slower (or silent) sockets are closed. It
    /// is also how long a client may take to send `connect`. [default: 10s]
    #[arg(long, value_parser = parse_duration)]
    head_timeout: Option<Duration>,
    /// Longest time an HTTP connection (not yet a WebSocket) may send nothing, e.g. in the
    /// middle of a request body, before it is closed. [default: 60s]
    #[arg(long, value_parser = parse_duration)]
    idle_timeout: Option<Duration>,
    /// HS256 secret connection tokens are signed with (at least 32 bytes).
    #[arg(long, env = "TETHER_HUB_TOKEN_HMAC_SECRET", hide_env_values = true)]
    token_hmac_secret: Option<String>,
    /// PEM public key (RSA for RS256, P-256 for ES256) tokens may be signed for; repeat for
    /// several. Replaces `[auth] public_keys`.
    #[arg(long = "token-public-key", value_name = "FILE")]
    token_public_keys: Vec<PathBuf>,
    /// JWKS document (an https URL, or a file) of the identity provider; repeat for several.
    /// Replaces `[[auth.jwks]]`.
    #[arg(long = "token-jwks", value_name = "URL|FILE")]
    token_jwks: Vec<String>,
    /// Audience (`aud`) a token must carry; repeat for several.
    #[arg(long = "token-audience")]
    token_audience: Vec<String>,
    /// Issuer (`iss`) a token must come from; repeat for several.
    #[arg(long = "token-issuer")]
    token_issuer: Vec<String>,
    /// Let clients connect without a token: required to serve an open hub (no token keys)
    /// off loopback; with keys, tokenless clients reach only `anonymous` namespaces.
    #[arg(long)]
    allow_anonymous: bool,
    /// PEM certificate chain (leaf first): serve WebSocket and HTTP over TLS only
    /// (`wss://`, `https://`). Needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1, unencrypted) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// `hub.toml`: the flags' settings under the same names, plus `[auth]` and `[[namespace]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HubFile {
    listen: Option<SocketAddr>,
    name: Option<String>,
    broker: Option<String>,
    redis_prefix: Option<String>,
    history_size: Option<usize>,
    history_ttl: Option<String>,
    api_token: Option<String>,
    max_message_size: Option<usize>,
    ping_interval: Option<String>,
    ping_timeout: Option<String>,
    client_rate: Option<u32>,
    client_burst: Option<u32>,
    client_queue: Option<usize>,
    write_delay: Option<String>,
    max_subscriptions: Option<usize>,
    shutdown_window: Option<String>,
    head_timeout: Option<String>,
    idle_timeout: Option<String>,
    /// Relative to the file's directory.
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default, rename = "namespace")]
    namespaces: Vec<RawNamespace>,
}

/// Everything a node needs, from flags over file over defaults.
struct Settings {
    config: HubConfig,
    broker: String,
    broker_options: BrokerOptions,
}

impl HubArgs {
    /// The TLS files: the flags (both, clap checks that) replace the file's pair; the file's
    /// must come as a pair too. Both are read here, so a bad file stops the start.
    fn tls(&self, file: &HubFile, path: &Path, cwd: &Path) -> anyhow::Result<Option<HubTls>> {
        let files = match (&self.tls_cert, &self.tls_key, &file.tls_cert, &file.tls_key) {
            (Some(cert), Some(key), _, _) => TlsFiles {
                cert: cwd.join(cert),
                key: cwd.join(key),
            },
            (None, None, None, None) => return Ok(None),
            (None, None, Some(cert), Some(key)) => {
                let base = path.parent().unwrap_or(cwd);
                TlsFiles {
                    cert: cwd.join(base).join(cert),
                    key: cwd.join(base).join(key),
                }
            }
            (None, None, cert, _) => {
                let (key, missing) = match cert {
                    Some(_) => ("tls_key", "tls_cert is set"),
                    None => ("tls_cert", "tls_key is set"),
                };
                let problem = format!("missing: {missing}, and TLS needs both");
                return Err(SettingsError {
                    file: path.to_owned(),
                    key: key.to_owned(),
                    problem,
                }
                .into());
            }
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        };
        Ok(Some(HubTls::load(files)?))
    }

    fn settings(&self) -> anyhow::Result<Settings> {
        let (file, path) = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("--config {}: cannot read", path.display()))?;
                (parse_toml::<HubFile>(&text, path)?, path.clone())
            }
            None => (HubFile::default(), PathBuf::from("<command line>")),
        };
        let fail = |key: &str, problem: String| SettingsError {
            file: path.clone(),
            key: key.to_owned(),
            problem,
        };
        let duration =
            |flag: Option<Duration>, key: &str, text: &Option<String>, default: &str| match (
                flag, text,
            ) {
                (Some(value), _) => Ok(value),
                (None, Some(text)) => parse_duration(text).map_err(|p| fail(key, p)),
                (None, None) => parse_duration(default).map_err(|p| fail(key, p)),
            };
        let defaults = HubConfig::default();
        let history_size = self.history_size.or(file.history_size).unwrap_or(1000);
        if history_size == 0 {
            return Err(fail("history_size", "must be greater than zero".into()).into());
        }
        let cwd = std::env::current_dir().context("reading the working directory")?;
        let tls = self.tls(&file, &path, &cwd)?;
        let mut auth = file.auth;
        if let Some(secret) = &self.token_hmac_secret {
            auth.hmac_secret = Some(Secret(secret.clone()));
            auth.hmac_secret_file = None;
        }
        if !self.token_public_keys.is_empty() {
            auth.public_keys = self
                .token_public_keys
                .iter()
                .map(|p| RawPublicKey::File(cwd.join(p)))
                .collect();
        }
        if !self.token_jwks.is_empty() {
            auth.jwks = self
                .token_jwks
                .iter()
                .map(|source| {
                    if source.starts_with("https://") || source.starts_with("http://") {
                        RawJwks {
                            url: Some(source.clone()),
                            ..Default::default()
                        }
                    } else {
                        RawJwks {
                            file: Some(cwd.join(source)),
                            ..Default::default()
                        }
                    }
                })
                .collect();
        }
        if !self.token_audience.is_empty() {
            auth.audience = Some(OneOrMany::Many(self.token_audience.clone()));
        }
        if !self.token_issuer.is_empty() {
            auth.issuer = Some(OneOrMany::Many(self.token_issuer.clone()));
        }
        if self.allow_anonymous {
            auth.allow_anonymous = Some(true);
        }
        let auth = resolve(
            RawSettings {
                auth,
                namespaces: file.namespaces,
            },
            &path,
        )?;
        let config = HubConfig {
            name: self.name.clone().or(file.name).unwrap_or(defaults.name),
            listen: self.listen.or(file.listen).unwrap_or(defaults.listen),
            api_token: self.api_token.clone().or(file.api_token),
            auth,
            max_message_size: self
                .max_message_size
                .or(file.max_message_size)
                .unwrap_or(defaults.max_message_size),
            ping_interval: duration(
                self.ping_interval,
                "ping_interval",
                &file.ping_interval,
                "25s",
            )?,
            ping_timeout: duration(self.ping_timeout, "ping_timeout", &file.ping_timeout, "10s")?,
            client_rate: self
                .client_rate
                .or(file.client_rate)
                .unwrap_or(defaults.client_rate),
            client_burst: self
                .client_burst
                .or(file.client_burst)
                .unwrap_or(defaults.client_burst),
            client_queue: self
                .client_queue
                .or(file.client_queue)
                .unwrap_or(defaults.client_queue),
            write_delay: duration(self.write_delay, "write_delay", &file.write_delay, "0s")?,
            max_subscriptions: self
                .max_subscriptions
                .or(file.max_subscriptions)
                .unwrap_or(defaults.max_subscriptions),
            shutdown_window: duration(
                self.shutdown_window,
                "shutdown_window",
                &file.shutdown_window,
                "10s",
            )?,
            head_timeout: duration(self.head_timeout, "head_timeout", &file.head_timeout, "10s")?,
            idle_timeout: duration(self.idle_timeout, "idle_timeout", &file.idle_timeout, "60s")?,
            tls,
        };
        let default_history = HistoryPolicy {
            size: history_size,
            ttl: duration(self.history_ttl, "history_ttl", &file.history_ttl, "5m")?,
        };
        let broker_options = BrokerOptions {
            history: config.auth.history_policies(default_history),
            redis_prefix: self
                .redis_prefix
                .clone()
                .or(file.redis_prefix)
                .unwrap_or_else(|| "tether".into()),
            ..Default::default()
        };
        Ok(Settings {
            config,
            broker: self
                .broker
                .clone()
                .or(file.broker)
                .unwrap_or_else(|| "memory".into()),
            broker_options,
        })
    }
}

/// `tether check --hub FILE`: loads FILE exactly as `tether hub --config FILE` would (the
/// `TETHER_HUB_*` environment variables included, since the hub would read them too), reads
/// every file it names (certificates, keys, a JWKS file), validates the result and applies the
/// protected-mode rule, without binding a port or reaching the broker. Returns the one-line
/// summary to print; an error names the file, the key and the problem.
pub fn check(path: &Path) -> anyhow::Result<String> {
    #[derive(clap::Parser)]
    struct OnlyHub {
        #[command(flatten)]
        hub: HubArgs,
    }
    let argv = [
        OsString::from("tether hub"),
        OsString::from("--config"),
        path.as_os_str().to_owned(),
    ];
    let args = <OnlyHub as clap::Parser>::try_parse_from(argv)?.hub;
    let settings = args.settings()?;
    let config = &settings.config;
    config
        .validate()
        .with_context(|| format!("{}", path.display()))?;
    let auth = &config.auth;
    tether_hub::auth::check_protected_mode(
        config.listen,
        auth.tokens_configured(),
        auth.allow_anonymous,
    )
    .with_context(|| format!("{}", path.display()))?;
    let access = match (auth.tokens_configured(), auth.allow_anonymous) {
        (false, _) => "no tokens: open, loopback only".to_owned(),
        (true, allow) => format!(
            "tokens ({} key(s), {} JWKS source(s)){}",
            auth.keys.len(),
            auth.jwks.len(),
            if allow { ", anonymous allowed" } else { "" }
        ),
    };
    let api = match (
        &config.api_token,
        config.listen.ip().is_loopback() || auth.allow_anonymous,
    ) {
        (Some(_), _) => "API token set",
        (None, true) => "no API token: API open where the hub is",
        (None, false) => "no API token: API refuses every request",
    };
    Ok(format!(
        "{}: ok (node {}, listen {}, {}, broker {}, {access}, {} namespace(s), {api})",
        path.display(),
        config.name,
        config.listen,
        if config.tls.is_some() { "wss" } else { "ws" },
        broker_scheme(&settings.broker),
        auth.namespaces.len(),
    ))
}

/// The broker URL's scheme only: the rest may carry a password, and a check's output ends
/// up in CI logs.
fn broker_scheme(url: &str) -> &str {
    url.split_once("://").map_or(url, |(scheme, _)| scheme)
}

pub fn run(args: HubArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: HubArgs) -> anyhow::Result<()> {
    let settings = args.settings()?;
    let tls = settings.config.tls.is_some();
    let broker = tether_hub::broker_with(&settings.broker, settings.broker_options)
        .with_context(|| format!("--broker {}", without_password(&settings.broker)))?;
    let hub = tether_hub::serve(settings.config, broker, None).await?;
    let scheme = if tls { "wss" } else { "ws" };
    println!(
        "tether hub {} listening on {} ({scheme}://{}/ws)",
        hub.name(),
        hub.local_addr(),
        hub.local_addr()
    );
    stop_signal().await?;
    tracing::info!("stop signal received; draining");
    hub.shutdown().await;
    Ok(())
}

/// The broker URL with any password replaced by `***`, for messages and logs.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{hosts}{tail}")
        }
        None => url.to_owned(),
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
    }
    Ok(())
}

/// Parses `500ms`, `10s`, `5m`, `1h` (a bare number is seconds).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 10s, 5m or 1h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "" | "s" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value * 60)),
        "h" => Ok(Duration::from_secs(value * 3600)),
        other => Err(format!(
            "unknown unit {other:?} in {text:?}; use ms, s, m or h"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn broker_urls_lose_their_password_in_messages() {
        assert_eq!(
            without_password("nats://me:s3cret@h:4222?stream=S"),
            "nats://me:***@h:4222?stream=S"
        );
        assert_eq!(
            without_password("redis://:pw@h:6379/0"),
            "redis://:***@h:6379/0"
        );
        assert_eq!(without_password("nats://h:4222"), "nats://h:4222");
        assert_eq!(without_password("memory"), "memory");
    }
}
