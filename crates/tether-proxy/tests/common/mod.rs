//! Starting a real proxy in front of real echo backends, for the integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tether_proxy::{Config, Proxy, RunningProxy};
pub use tether_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tokio::net::TcpStream;

/// A proxy on a free port in front of `backends`, with `extra` TOML sections prepended.
pub async fn proxy(extra: &str, backends: &[EchoServer]) -> RunningProxy {
    let mut text = extra.to_owned() + "\n";
    for (section, line) in [
        ("[listen]", "addr = \"127.0.0.1:0\""),
        ("[admin]", "addr = \"127.0.0.1:0\""),
    ] {
        if text.contains(section) {
            text = text.replace(section, &format!("{section}\n{line}"));
        } else {
            text = format!("{section}\n{line}\n{text}");
        }
    }
    for b in backends {
        text.push_str(&format!(
            "[[backend]]\nname = \"{}\"\naddr = \"{}\"\n",
            b.name(),
            b.addr()
        ));
    }
    proxy_from_toml(&text).await
}

/// A proxy from a complete configuration text (for per-backend keys such as weight).
pub async fn proxy_from_toml(text: &str) -> RunningProxy {
    let config = Config::from_toml(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    Proxy::bind(config, None).await.expect("bind proxy").spawn()
}

/// Opens a WebSocket through the proxy and returns it with the backend that answered.
pub async fn open(proxy: &RunningProxy, path: &str) -> (Ws, String) {
    let (ws, response) = ws_connect(proxy.addr(), path)
        .await
        .expect("websocket through proxy");
    let backend = backend_of(&response);
    (ws, backend)
}

/// Sends raw bytes and reads until the peer closes, or a `101` head is complete (the tunnel
/// would stay open), or 5 s pass; returns the status and the text.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let status = |out: &[u8]| {
        String::from_utf8_lossy(out)
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0u16)
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
            let head_done = out.windows(4).any(|w| w == b"\r\n\r\n");
            if head_done && status(&out) == 101 {
                break;
            }
        }
    })
    .await;
    (status(&out), String::from_utf8_lossy(&out).into_owned())
}

/// `METHOD path` over HTTP/1.1 with `Connection: close`.
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    raw(addr, format!("{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes()).await
}

/// The state the proxy reports for backend `name`.
pub fn state_of(proxy: &RunningProxy, name: &str) -> String {
    let b = proxy
        .backends()
        .into_iter()
        .find(|b| b.name == name)
        .expect("known backend");
    serde_json::to_value(b.state)
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

pub fn count<'a>(
    names: impl IntoIterator<Item = &'a String>,
) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for n in names {
        *m.entry(n.clone()).or_default() += 1;
    }
    m
}
