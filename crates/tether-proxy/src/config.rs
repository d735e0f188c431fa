//! The proxy's configuration: TOML in, typed values out, validated once.
//!
//! After [`Config::from_file`] or [`Config::from_toml`] returns, no string decides behaviour:
//! strategies, routing keys and health-check kinds are enums, durations are [`Duration`]s, and
//! every cross-field rule (unique backend names, a key for consistent hashing, …) has been
//! checked. Every error names the file, the key and the problem, so `tether check` can print it
//! as it is.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::tls::config::{BackendTls, BackendTlsConfig, ListenTlsConfig, ServerTlsSettings};

pub use crate::admin::AdminToken;

/// A configuration that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {problem}")]
pub struct ConfigError {
    /// The file it came from (`<inline>` for a string).
    pub file: PathBuf,
    /// The dotted path of the offending key (`balance.strategy`, `backend[2].addr`).
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

/// The whole proxy configuration. Field names are the TOML keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[listen]` (one table) or `[[listen]]` (several); at least one, the default when
    /// absent.
    #[serde(
        default = "default_listeners",
        rename = "listen",
        deserialize_with = "one_or_many"
    )]
    pub listeners: Vec<ListenConfig>,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub balance: BalanceConfig,
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    #[serde(default)]
    pub limits: LimitConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub rebalance: RebalanceConfig,
    #[serde(default, rename = "backend")]
    pub backends: Vec<BackendConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Peers whose `X-Forwarded-For` and PROXY protocol header are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Expect a PROXY protocol (v1 or v2) header from trusted peers, like HAProxy's `accept-proxy`.
    pub accept_proxy: bool,
    /// `Origin` values allowed to open a WebSocket; empty allows any.
    pub allowed_origins: Vec<String>,
    /// `http` reads each request head; `tls-passthrough` routes on the ClientHello's SNI and
    /// tunnels the TLS bytes untouched.
    pub mode: ListenMode,
    /// `[listen.tls]`: terminate TLS on this listener.
    pub tls: Option<ListenTlsConfig>,
    /// `tls-passthrough`: the backend (by name) for a ClientHello without a server name;
    /// without it such a connection is refused.
    pub default_backend: Option<String>,
    /// `tls`, validated (paths resolved), once the configuration is loaded.
    #[serde(skip)]
    pub tls_settings: Option<ServerTlsSettings>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            trusted_proxies: Vec::new(),
            accept_proxy: false,
            allowed_origins: Vec::new(),
            mode: ListenMode::Http,
            tls: None,
            default_backend: None,
            tls_settings: None,
        }
    }
}

/// What a listener does with a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenMode {
    /// HTTP/1.1 (over TLS with `[listen.tls]`): read the upgrade, route, then tunnel.
    #[default]
    Http,
    /// Read the TLS ClientHello, route on its server name, tunnel the TLS bytes to a backend
    /// that terminates TLS itself.
    TlsPassthrough,
}

fn default_listeners() -> Vec<ListenConfig> {
    vec![ListenConfig::default()]
}

/// `[listen]` as one table, or `[[listen]]` as several.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ListenConfig>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Vec<ListenConfig>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a [listen] table or [[listen]] tables")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            ListenConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                .map(|l| vec![l])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            Vec::<ListenConfig>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
        }
    }
    d.deserialize_any(Visitor)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The admin listener (`/metrics`, `/api/backends`); `enabled = false` turns it off.
    pub addr: SocketAddr,
    pub enabled: bool,
    /// Also serve the admin API and dashboard under this path on the main listener (like
    /// HAProxy's `stats uri`); empty turns it off.
    pub stats_uri: String,
    /// The bearer token mutating endpoints require (and reads, with `read = "token"`). Once
    /// loaded it is the token in effect, whether written here or read from `token_file`.
    /// Without one, mutating endpoints answer loopback peers of the admin listener only.
    pub token: Option<AdminToken>,
    /// A file whose content, trimmed, is the token (a relative path is taken from the
    /// configuration file's directory). Keeps the secret out of a file that is shared.
    pub token_file: Option<PathBuf>,
    /// Who may read `/metrics`, `/api/backends` and `/api/events`.
    pub read: ReadAccess,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 9090)),
            enabled: true,
            stats_uri: String::new(),
            token: None,
            token_file: None,
            read: ReadAccess::Public,
        }
    }
}

/// Who may use the admin API's reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadAccess {
    /// Anyone who reaches the listener, as Prometheus scrapers expect.
    #[default]
    Public,
    /// Only requests with the admin token (or, for the event stream, a ticket bought with it).
    Token,
}

impl AdminConfig {
    /// Largest token file read: a token is at most 1 KiB; this guards against a path such
    /// as `/dev/zero` given by mistake.
    const TOKEN_FILE_CAP: u64 = 64 * 1024;

    /// Reads `token_file` into `token`. `base` is the directory relative paths start from.
    fn load_token_file(&mut self, base: Option<&Path>) -> Result<(), (String, String)> {
        let Some(file) = &self.token_file else {
            return Ok(());
        };
        let key = "admin.token_file".to_owned();
        if self.token.is_some() {
            return Err((key, "set `token` or `token_file`, not both".into()));
        }
        let path = match base {
            Some(base) if file.is_relative() => base.join(file),
            _ => file.clone(),
        };
        let mut text = String::new();
        std::fs::File::open(&path)
            .and_then(|f| {
                use std::io::Read;
                f.take(Self::TOKEN_FILE_CAP).read_to_string(&mut text)
            })
            .map_err(|e| (key.clone(), format!("cannot read {}: {e}", path.display())))?;
        let token = AdminToken::new(text.trim())
            .map_err(|problem| (key, format!("{}: {problem}", path.display())))?;
        self.token = Some(token);
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Worker threads; 0 uses every core.
    pub workers: usize,
    /// How long SIGTERM waits for tunnels to finish before closing them.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: 0,
            grace: Duration::from_secs(30),
        }
    }
}

/// How a backend is chosen for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    RoundRobin,
    LeastConnections,
    P2c,
    Random,
    ConsistentHash,
}

/// Where the routing key of a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The client's IP (after `trusted_proxies` are applied).
    Ip,
    /// A query-string parameter.
    Query(String),
    /// A request header (name lower-cased).
    Header(String),
    /// A cookie.
    Cookie(String),
    /// The Nth path segment, 1-based (`/room/42` → `path:2` is `42`).
    Path(usize),
    /// The server name of the TLS ClientHello, on `tls-passthrough` listeners.
    Sni,
}

impl FromStr for KeySource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, arg) = s.split_once(':').unwrap_or((s, ""));
        let need_name = |what: &str| -> Result<String, String> {
            if arg.is_empty() {
                Err(format!("`{what}:` needs a name, as in `{what}:sid`"))
            } else {
                Ok(arg.to_owned())
            }
        };
        match kind {
            "ip" if arg.is_empty() => Ok(KeySource::Ip),
            "sni" if arg.is_empty() => Ok(KeySource::Sni),
            "query" => need_name("query").map(KeySource::Query),
            "header" => need_name("header").map(|h| KeySource::Header(h.to_ascii_lowercase())),
            "cookie" => need_name("cookie").map(KeySource::Cookie),
            "path" => match arg.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(KeySource::Path(n)),
                _ => Err(format!("`path:N` needs N ≥ 1, got `{arg}`")),
            },
            _ => Err(format!(
                "unknown key `{s}`; expected ip | query:NAME | header:NAME | cookie:NAME | path:N | sni"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for KeySource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Ip => f.write_str("ip"),
            KeySource::Query(n) => write!(f, "query:{n}"),
            KeySource::Header(n) => write!(f, "header:{n}"),
            KeySource::Cookie(n) => write!(f, "cookie:{n}"),
            KeySource::Path(n) => write!(f, "path:{n}"),
            KeySource::Sni => f.write_str("sni"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalanceConfig {
    pub strategy: Strategy,
    /// Routing key for `consistent-hash`.
    pub key: Option<KeySource>,
    /// Bounded loads: no backend above ⌈f × average⌉ live tunnels; 0 turns the bound off.
    pub balance_factor: f64,
    /// Live tunnels per unit of weight a backend may hold before the bound moves a key off it.
    /// Without it, an idle proxy's bound is 1 or 2, so a user's second tab or a quick
    /// reconnect lands elsewhere; at load the bound is far above the floor and governs alone.
    pub bound_floor: u32,
    /// Strategy used when a request carries no key (never `consistent-hash`).
    pub fallback: Strategy,
    /// How many other backends a failed connect is retried on.
    pub retries: u32,
    /// Name of the LB-inserted sticky cookie (HAProxy's `cookie NAME insert`); empty = off.
    pub cookie: String,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        BalanceConfig {
            strategy: Strategy::RoundRobin,
            key: None,
            balance_factor: 1.25,
            bound_floor: 16,
            fallback: Strategy::RoundRobin,
            retries: 2,
            cookie: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    /// From accept to the first byte of the request (HAProxy: `timeout client` on a new socket).
    #[serde(with = "humantime_serde")]
    pub first_byte: Duration,
    /// From accept to the end of the request head (HAProxy: `timeout http-request`).
    #[serde(with = "humantime_serde")]
    pub head: Duration,
    /// TCP connect to a backend.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// From forwarding the head to the backend's complete response head.
    #[serde(with = "humantime_serde")]
    pub response: Duration,
    /// A tunnel with no bytes either way for this long is closed; 0 = never (HAProxy: `timeout tunnel`).
    #[serde(with = "humantime_serde")]
    pub tunnel_idle: Duration,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            first_byte: Duration::from_secs(5),
            head: Duration::from_secs(10),
            connect: Duration::from_secs(3),
            response: Duration::from_secs(15),
            tunnel_idle: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitConfig {
    /// Largest request head accepted (431 above it).
    pub max_head_bytes: usize,
    /// Most header lines accepted (431 above it).
    pub max_headers: usize,
    /// Open client connections in total (503 with `Retry-After` above it); 0 = no limit.
    pub maxconn: usize,
    /// Handshakes per second per client IP (429 above it); 0 = no limit.
    pub rate_per_ip: u32,
    /// Burst allowed above `rate_per_ip`; 0 means the same as the rate.
    pub rate_burst: u32,
    /// Seconds announced in `Retry-After` on 503 and 429.
    pub retry_after_secs: u32,
    /// Handshakes per second each backend is sent at most (a token bucket with one second of
    /// burst); above it the client gets 503 with a jittered `Retry-After`. Unset = no limit.
    pub backend_handshake_rate: Option<NonZeroU32>,
    /// Handshakes in flight (backend chosen, answer not yet back) across the proxy; above it
    /// 503 with a jittered `Retry-After`. Unset = no limit.
    pub max_pending_handshakes: Option<NonZeroUsize>,
}

impl Default for LimitConfig {
    fn default() -> Self {
        LimitConfig {
            max_head_bytes: 16 * 1024,
            max_headers: 64,
            maxconn: 0,
            rate_per_ip: 0,
            rate_burst: 0,
            retry_after_secs: 2,
            backend_handshake_rate: None,
            max_pending_handshakes: None,
        }
    }
}

/// `[rebalance]`: moving live tunnels after scale-out.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RebalanceConfig {
    /// Tunnels closed (with 1012) per second while a rebalance runs. `0` or absent turns
    /// rebalancing off, which is `None` here.
    #[serde(deserialize_with = "zero_is_off")]
    pub rate: Option<NonZeroU32>,
}

/// A count where 0 means "off", as `Option`: no code after parsing asks `== 0`.
fn zero_is_off<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<NonZeroU32>, D::Error> {
    Ok(NonZeroU32::new(u32::deserialize(d)?))
}

/// What an active health check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckKind {
    /// No active checks: a backend taken out by passive failures returns after `interval × rise`.
    None,
    /// A TCP connect.
    Tcp,
    /// `GET path`, expecting 2xx.
    Http,
    /// A WebSocket upgrade to `path`, expecting 101, then a close.
    Websocket,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub kind: CheckKind,
    pub path: String,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive successes that bring a backend up.
    pub rise: u32,
    /// Consecutive failures (active or passive) that take it down.
    pub fall: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            kind: CheckKind::Tcp,
            path: "/".to_owned(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub name: String,
    pub addr: SocketAddr,
    #[serde(default = "one")]
    pub weight: u32,
    /// Live tunnels this backend takes at most; 0 = no limit.
    #[serde(default)]
    pub maxconn: usize,
    /// Speak TLS to this backend (see `docs/tls.md` for `sni`, `ca`, `verify`, `client_cert`,
    /// `client_key`).
    #[serde(default)]
    pub tls: bool,
    pub sni: Option<String>,
    pub ca: Option<PathBuf>,
    pub verify: Option<bool>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// The TLS keys, validated, once the configuration is loaded; `None` for plain TCP.
    #[serde(skip)]
    pub tls_settings: Option<BackendTls>,
    /// The TLS client built from `tls_settings` (its files read) at load time.
    #[serde(skip)]
    pub connector: Option<crate::tls::BackendConnector>,
    /// `[limits] backend_handshake_rate`, copied here at load time.
    #[serde(skip)]
    pub handshake_rate: Option<NonZeroU32>,
}

impl BackendConfig {
    /// A plain backend with default weight and no limit, as `[[backend]]` with only
    /// `name` and `addr` would give.
    pub fn new(name: &str, addr: SocketAddr) -> BackendConfig {
        BackendConfig {
            name: name.to_owned(),
            addr,
            weight: 1,
            maxconn: 0,
            tls: false,
            sni: None,
            ca: None,
            verify: None,
            client_cert: None,
            client_key: None,
            tls_settings: None,
            connector: None,
            handshake_rate: None,
        }
    }

    fn tls_keys(&self) -> BackendTlsConfig {
        BackendTlsConfig {
            tls: self.tls,
            sni: self.sni.clone(),
            ca: self.ca.clone(),
            verify: self.verify,
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        }
    }
}

fn one() -> u32 {
    1
}

impl Config {
    /// Reads, parses and validates a file. Files it names (`admin.token_file`) are read
    /// now, relative to its directory.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            key: "-".to_owned(),
            problem: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path, path.parent())
    }

    /// Parses and validates TOML text (reported as `<inline>`); relative paths in it are
    /// taken from the current directory.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::parse(text, Path::new("<inline>"), None)
    }

    fn parse(text: &str, file: &Path, base: Option<&Path>) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError {
            file: file.to_owned(),
            key: e
                .span()
                .map(|s| format!("line {}", line_of(text, s.start)))
                .unwrap_or_else(|| "-".to_owned()),
            problem: e.message().to_owned(),
        })?;
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| ConfigError {
            file: file.to_owned(),
            key: display_path(e.path()),
            problem: e.inner().message().to_owned(),
        })?;
        config
            .admin
            .load_token_file(base)
            .map_err(|(key, problem)| ConfigError {
                file: file.to_owned(),
                key,
                problem,
            })?;
        config
            .validate_tls(base.unwrap_or(Path::new("")))
            .map_err(|(key, problem)| ConfigError {
                file: file.to_owned(),
                key,
                problem,
            })?;
        config.validate().map_err(|(key, problem)| ConfigError {
            file: file.to_owned(),
            key,
            problem,
        })?;
        Ok(config)
    }

    /// The listeners' and backends' TLS keys, into settings whose paths start at `base`.
    fn validate_tls(&mut self, base: &Path) -> Result<(), (String, String)> {
        let many = self.listeners.len() > 1;
        for (i, l) in self.listeners.iter_mut().enumerate() {
            let at = if many {
                format!("listen[{i}]")
            } else {
                "listen".to_owned()
            };
            if l.mode == ListenMode::TlsPassthrough && l.tls.is_some() {
                return Err((
                    format!("{at}.tls"),
                    "a `tls-passthrough` listener does not terminate TLS; remove [listen.tls]"
                        .into(),
                ));
            }
            l.tls_settings = match &l.tls {
                Some(tls) => Some(tls.validate(&format!("{at}.tls"), base)?),
                None => None,
            };
            // Read every file now, so a configuration that loads is one that serves (and
            // `tether check` proves it). The listener loads them again when it starts.
            if let Some(settings) = &l.tls_settings {
                crate::tls::TlsServer::load(settings.clone()).map_err(file_problem)?;
            }
        }
        for (i, b) in self.backends.iter_mut().enumerate() {
            b.handshake_rate = self.limits.backend_handshake_rate;
            b.tls_settings = b
                .tls_keys()
                .validate(&format!("backend[{i}]"), b.addr, base)?;
            b.connector = match &b.tls_settings {
                Some(tls) => Some(crate::tls::BackendConnector::new(tls).map_err(file_problem)?),
                None => None,
            };
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, p: String| Err((k.to_owned(), p));
        if self.backends.is_empty() {
            return err("backend", "at least one [[backend]] is needed".into());
        }
        if self.listeners.is_empty() {
            return err("listen", "at least one listener is needed".into());
        }
        let mut addrs = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if let Some(name) = &l.default_backend {
                if l.mode != ListenMode::TlsPassthrough {
                    return err(
                        &format!("listen[{i}].default_backend"),
                        "only used with `mode = \"tls-passthrough\"`".into(),
                    );
                }
                if !self.backends.iter().any(|b| &b.name == name) {
                    return err(
                        &format!("listen[{i}].default_backend"),
                        format!("no [[backend]] is named `{name}`"),
                    );
                }
            }
            // Port 0 asks the system for a free port: never the same twice.
            if l.addr.port() != 0 && !addrs.insert(l.addr) {
                return err(
                    &format!("listen[{i}].addr"),
                    format!("{} is used by two listeners", l.addr),
                );
            }
        }
        let mut names = HashSet::new();
        for (i, b) in self.backends.iter().enumerate() {
            if b.name.is_empty() || b.name.len() > 64 || !b.name.chars().all(is_name_char) {
                return err(
                    &format!("backend[{i}].name"),
                    format!("`{}` must be 1-64 of [A-Za-z0-9_.-]", b.name),
                );
            }
            if !names.insert(b.name.as_str()) {
                return err(
                    &format!("backend[{i}].name"),
                    format!("`{}` is used twice", b.name),
                );
            }
            if b.weight == 0 || b.weight > 256 {
                return err(&format!("backend[{i}].weight"), "must be 1..=256".into());
            }
        }
        let balance = &self.balance;
        if balance.strategy == Strategy::ConsistentHash && balance.key.is_none() {
            return err("balance.key", "`consistent-hash` needs a key".into());
        }
        if balance.fallback == Strategy::ConsistentHash {
            return err(
                "balance.fallback",
                "the fallback cannot itself need a key".into(),
            );
        }
        if !(balance.balance_factor == 0.0 || balance.balance_factor >= 1.0)
            || !balance.balance_factor.is_finite()
        {
            return err("balance.balance_factor", "must be 0 (off) or ≥ 1.0".into());
        }
        if !balance.cookie.is_empty() && !balance.cookie.bytes().all(is_cookie_name_byte) {
            return err("balance.cookie", "not a valid cookie name".into());
        }
        let s = &self.admin.stats_uri;
        if !(s.is_empty() || (s.starts_with('/') && s.ends_with('/'))) {
            return err("admin.stats_uri", "must start and end with `/`".into());
        }
        if self.admin.read == ReadAccess::Token && self.admin.token.is_none() {
            return err(
                "admin.read",
                "`token` needs `admin.token` or `admin.token_file`".into(),
            );
        }
        let h = &self.health;
        if h.rise == 0 || h.fall == 0 {
            return err("health", "`rise` and `fall` must be ≥ 1".into());
        }
        if h.interval.is_zero() || h.timeout.is_zero() {
            return err("health", "`interval` and `timeout` must be > 0".into());
        }
        if !h.path.starts_with('/') {
            return err("health.path", "must start with `/`".into());
        }
        let l = &self.limits;
        if l.max_head_bytes < 256 || l.max_headers == 0 {
            return err(
                "limits",
                "`max_head_bytes` ≥ 256 and `max_headers` ≥ 1".into(),
            );
        }
        for (name, d) in [
            ("timeouts.first_byte", self.timeouts.first_byte),
            ("timeouts.head", self.timeouts.head),
            ("timeouts.connect", self.timeouts.connect),
            ("timeouts.response", self.timeouts.response),
        ] {
            if d.is_zero() {
                return err(name, "must be > 0".into());
            }
        }
        Ok(())
    }
}

/// A certificate file's error as a configuration error: the key that names the file, then
/// the file and what is wrong with it.
fn file_problem(e: crate::tls::FileError) -> (String, String) {
    (e.key, format!("{}: {}", e.file.display(), e.problem))
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `backend.2.addr` → `backend[2].addr`: the way a TOML user reads an array of tables.
fn display_path(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
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

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[[backend]]\nname = \"b1\"\naddr = \"127.0.0.1:9001\"\n";

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.balance.strategy, Strategy::RoundRobin);
        assert_eq!(c.balance.balance_factor, 1.25);
        assert_eq!(c.timeouts.tunnel_idle, Duration::ZERO);
        assert_eq!(c.backends[0].weight, 1);
    }

    #[test]
    fn unknown_key_names_its_path() {
        let e =
            Config::from_toml(&format!("[balance]\nstrategi = \"p2c\"\n{MINIMAL}")).unwrap_err();
        assert_eq!(e.key, "balance.strategi", "{e}");
        assert!(e.problem.contains("unknown field"), "{e}");
    }

    #[test]
    fn bad_strategy_lists_the_valid_ones() {
        let e =
            Config::from_toml(&format!("[balance]\nstrategy = \"sticky\"\n{MINIMAL}")).unwrap_err();
        assert_eq!(e.key, "balance.strategy");
        assert!(e.problem.contains("consistent-hash"), "{e}");
    }

    #[test]
    fn bad_backend_address_names_the_backend_index() {
        let text = format!("{MINIMAL}[[backend]]\nname = \"b2\"\naddr = \"nowhere\"\n");
        let e = Config::from_toml(&text).unwrap_err();
        assert_eq!(e.key, "backend[1].addr", "{e}");
    }

    #[test]
    fn every_key_kind_parses() {
        for (text, want) in [
            ("ip", KeySource::Ip),
            ("query:sid", KeySource::Query("sid".into())),
            ("header:X-User", KeySource::Header("x-user".into())),
            ("cookie:session", KeySource::Cookie("session".into())),
            ("path:2", KeySource::Path(2)),
        ] {
            assert_eq!(text.parse::<KeySource>().unwrap(), want);
        }
        assert!("path:0".parse::<KeySource>().is_err());
        assert!("query:".parse::<KeySource>().is_err());
        assert!("host".parse::<KeySource>().is_err());
    }

    #[test]
    fn consistent_hash_without_key_is_rejected() {
        let e = Config::from_toml(&format!(
            "[balance]\nstrategy = \"consistent-hash\"\n{MINIMAL}"
        ))
        .unwrap_err();
        assert_eq!(e.key, "balance.key");
    }

    #[test]
    fn admin_defaults_to_no_token_and_public_reads() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert!(c.admin.token.is_none());
        assert_eq!(c.admin.read, ReadAccess::Public);
    }

    #[test]
    fn token_file_is_read_trimmed_relative_to_the_config_file() {
        let dir = std::env::temp_dir().join(format!("tether-config-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("admin.token"), "\n  0123456789abcdef0123\n").unwrap();
        let path = dir.join("proxy.toml");
        std::fs::write(
            &path,
            format!("[admin]\ntoken_file = \"admin.token\"\nread = \"token\"\n{MINIMAL}"),
        )
        .unwrap();
        let c = Config::from_file(&path).unwrap();
        assert_eq!(
            c.admin.token.as_ref().map(AdminToken::expose),
            Some("0123456789abcdef0123")
        );
        assert!(!format!("{c:?}").contains("0123456789abcdef0123"));
    }

    #[test]
    fn unreadable_token_file_names_the_file() {
        let e = Config::from_toml(&format!(
            "[admin]\ntoken_file = \"/nonexistent/tether.token\"\n{MINIMAL}"
        ))
        .unwrap_err();
        assert_eq!(e.key, "admin.token_file");
        assert!(e.problem.contains("/nonexistent/tether.token"), "{e}");
    }

    #[test]
    fn bad_admin_tokens_are_refused_without_being_echoed() {
        let e = Config::from_toml(&format!("[admin]\ntoken = \"hunter2\"\n{MINIMAL}")).unwrap_err();
        assert_eq!(e.key, "admin.token");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let both =
            format!("[admin]\ntoken = \"0123456789abcdef0123\"\ntoken_file = \"t\"\n{MINIMAL}");
        assert_eq!(
            Config::from_toml(&both).unwrap_err().key,
            "admin.token_file"
        );
        let e = Config::from_toml(&format!("[admin]\nread = \"token\"\n{MINIMAL}")).unwrap_err();
        assert_eq!(e.key, "admin.read");
        let e = Config::from_toml(&format!("[admin]\nread = \"private\"\n{MINIMAL}")).unwrap_err();
        assert!(e.problem.contains("public"), "{e}");
    }

    #[test]
    fn rebalance_rate_zero_or_absent_is_off() {
        assert!(Config::from_toml(MINIMAL).unwrap().rebalance.rate.is_none());
        let off = Config::from_toml(&format!("[rebalance]\nrate = 0\n{MINIMAL}")).unwrap();
        assert!(off.rebalance.rate.is_none());
        let on = Config::from_toml(&format!("[rebalance]\nrate = 25\n{MINIMAL}")).unwrap();
        assert_eq!(on.rebalance.rate.map(NonZeroU32::get), Some(25));
        let e = Config::from_toml(&format!("[rebalance]\nrate = -1\n{MINIMAL}")).unwrap_err();
        assert_eq!(e.key, "rebalance.rate", "{e}");
    }

    #[test]
    fn duplicate_backend_names_are_rejected() {
        let e = Config::from_toml(&format!("{MINIMAL}{MINIMAL}")).unwrap_err();
        assert_eq!(e.key, "backend[1].name");
    }
}
