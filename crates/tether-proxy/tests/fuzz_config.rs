//! Fuzz target for the configuration loader (`Config::from_toml`). Fixed cases in `cargo
//! test`; `TETHER_FUZZ_ITERS=N` for a longer run (docs/fuzz.md).
//!
//! A configuration comes from an operator, not a peer, but a reload (`POST /api/reload`,
//! SIGHUP) parses it inside the running proxy: any text must give a configuration or an error
//! that names the file and the key, never a panic that takes the proxy down.

use proptest::prelude::*;
use tether_proxy::config::Config;
use tether_testkit::fuzz;

const CONFIGS: &[&[u8]] = &[
    br#"[listen]
addr = "127.0.0.1:8080"
trusted_proxies = ["10.0.0.0/8", "::1/128"]
accept_proxy = true
allowed_origins = ["https://app.test"]

[admin]
enabled = true
addr = "127.0.0.1:9090"
stats_uri = "/_tether/"
token = "0123456789abcdef0123456789abcdef"
read = "token"

[runtime]
workers = 2
grace = "30s"

[balance]
strategy = "consistent-hash"
key = "header:X-User"
balance_factor = 1.25
fallback = "round-robin"
retries = 2
cookie = "srv"

[timeouts]
first_byte = "5s"
head = "10s"
connect = "3s"
response = "15s"
tunnel_idle = "1m"

[limits]
max_head_bytes = 16384
max_headers = 64
maxconn = 1000
rate_per_ip = 10
rate_burst = 20
retry_after_secs = 2

[health]
kind = "websocket"
path = "/ws"
interval = "2s"
timeout = "1s"
rise = 2
fall = 3

[[backend]]
name = "b1"
addr = "127.0.0.1:9001"
weight = 3
maxconn = 100

[[backend]]
name = "b-2.x"
addr = "[::1]:9002"
"#,
    br#"[[backend]]
name = "only"
addr = "127.0.0.1:9001"
"#,
    br#"[balance]
strategy = "p2c"
key = "query:room"
[health]
kind = "http"
path = "/health"
[[backend]]
name = "a"
addr = "127.0.0.1:1"
weight = 256
"#,
];

const DICT: &[&[u8]] = &[
    b"\n",
    b"=",
    b"\"",
    b"'''",
    b"[",
    b"]",
    b"[[backend]]\n",
    b"{ }",
    b",",
    b".",
    b"#",
    b"0",
    b"-1",
    b"18446744073709551616",
    b"1e309",
    b"nan",
    b"inf",
    b"\"0s\"",
    b"\"99999999999999999999h\"",
    b"true",
    b"\\u0000",
    b"\xff",
    b"key = \"path:\"\n",
    b"key = \"cookie:\"\n",
    b"strategy = \"consistent-hash\"\n",
    b"weight = 0\n",
    b"addr = \"127.0.0.1:0\"\n",
    b"trusted_proxies = [\"0.0.0.0/33\"]\n",
    b"max_headers = 0\n",
    b"max_head_bytes = 0\n",
    b"workers = 0\n",
    b"rise = 0\n",
];

#[test]
fn every_corpus_config_loads() {
    for text in CONFIGS {
        let text = std::str::from_utf8(text).unwrap();
        if let Err(e) = Config::from_toml(text) {
            panic!("{e}\n{text}");
        }
    }
}

proptest! {
    #![proptest_config(fuzz::config(1500))]

    /// Any text loads or is refused with an error naming the inline file; never a panic.
    #[test]
    fn any_text_loads_or_names_its_problem(input in fuzz::mutated(CONFIGS, DICT, 6)) {
        let text = String::from_utf8_lossy(&input);
        match Config::from_toml(&text) {
            Ok(config) => {
                let _ = format!("{config:?}");
            }
            Err(e) => {
                prop_assert_eq!(e.file.to_str(), Some("<inline>"));
                prop_assert!(!e.key.is_empty() && !e.problem.is_empty(), "{}", e);
            }
        }
    }
}
