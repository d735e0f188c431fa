//! `tether demo`: the proxy in front of three hubs in one process, with the chat page and
//! the dashboard — the whole system on one machine, seen in a browser.
//!
//! The hubs share one broker (in memory by default, Redis with `--broker redis://…`), listen
//! on free loopback ports and serve the page and the demo API besides their own routes; the
//! proxy balances them by least connections, checks `/health` every second and serves its
//! dashboard under `/_tether/`. Every request, the page's own files included, goes through
//! the proxy, so what the page shows is what a real deployment would do.
//!
//! With `--tls` the proxy's listener terminates TLS with a certificate from a throw-away CA
//! made at start (see [`authority`]): the page is served over `https://` and its WebSocket
//! over `wss://`, as at the edge of a real site; the hubs behind the proxy stay plain.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tether_hub::Broker;
use tether_proxy::admin::AdminToken;
use tether_proxy::{Config, Proxy, RunningProxy};
use tokio::signal::unix::{signal, SignalKind};

mod api;
mod assets;
mod authority;
mod fleet;
mod scrape;

use authority::DemoCerts;
use fleet::{Fleet, HubName, Timings};

/// Where the dashboard lives on the proxy's listener.
const STATS_URI: &str = "/_tether/";

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the proxy listens; the chat page is at http://ADDR/ (https:// with --tls) and
    /// the dashboard at /_tether/.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The broker the hubs share: `memory` (in this process) or `redis://HOST:PORT[/DB]`.
    #[arg(long, default_value = "memory")]
    broker: String,
    /// How many hubs to run behind the proxy (1 to 9).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=9))]
    hubs: u8,
    /// Serve the page over https:// and the WebSocket over wss://, with a certificate for
    /// localhost from a throw-away CA made now; prints how to trust the CA.
    #[arg(long)]
    tls: bool,
    /// Where --tls writes ca.pem, localhost.pem and localhost.key (replacing them).
    /// Default: a fresh directory under the temporary directory, removed on exit.
    #[arg(long, value_name = "DIR", requires = "tls")]
    tls_dir: Option<PathBuf>,
}

/// Runs the demo until SIGINT or SIGTERM.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(args))?;
    // WebSockets still open end with the runtime.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(())
}

async fn serve(args: DemoArgs) -> anyhow::Result<()> {
    let broker = tether_hub::broker_from_url(&args.broker)
        .with_context(|| format!("--broker {}", args.broker))?;
    let tls = match (args.tls, &args.tls_dir) {
        (false, _) => None,
        (true, Some(dir)) => Some(TlsDir::Given(
            authority::issue(dir, args.listen.ip()).context("--tls-dir")?,
        )),
        (true, None) => {
            let dir = fresh_dir().context("--tls: a directory for the certificates")?;
            let certs = authority::issue(&dir, args.listen.ip());
            match certs {
                Ok(certs) => Some(TlsDir::Fresh(certs)),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e.context("--tls"));
                }
            }
        }
    };
    let certs = tls.as_ref().map(TlsDir::certs);
    // On an error from here on, `tls` goes with the return and takes a fresh directory along.
    let demo = Demo::start(
        args.listen,
        broker,
        usize::from(args.hubs),
        Timings::default(),
        certs,
    )
    .await?;
    let addr = demo.proxy.addr();
    tracing::info!(%addr, hubs = demo.hubs.len(), broker = %args.broker, tls = certs.is_some(), "demo ready");
    let (scheme, host) = match certs {
        // The certificate names `localhost`; an address it names as well is shown as is.
        Some(_) if addr.ip().is_loopback() || addr.ip().is_unspecified() => {
            ("https", format!("localhost:{}", addr.port()))
        }
        Some(_) => ("https", addr.to_string()),
        None => ("http", addr.to_string()),
    };
    println!("tether demo is running:");
    println!("  chat       {scheme}://{host}/");
    println!("  dashboard  {scheme}://{host}{STATS_URI}");
    // The dashboard's drain/enable buttons need the proxy's admin token, as in production.
    // The link carries it in its fragment, which the browser never sends anywhere.
    let token = demo.admin_token.expose();
    println!("  admin token  {token}  (or open {scheme}://{host}{STATS_URI}#token={token})");
    for (name, hub) in &demo.hubs {
        println!("  {name}      {hub} (behind the proxy)");
    }
    if let Some(certs) = certs {
        print_trust(certs, &host);
    }
    println!("Press Ctrl-C to stop.");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("demo stopping");
    // A demo has nothing to hand over: crash the hubs, and the proxy's tunnels end with
    // the runtime.
    demo.fleet.abort_all();
    drop(tls);
    Ok(())
}

/// Where the demo's certificates are, and whether they go when the demo ends.
enum TlsDir {
    /// `--tls-dir`: the user's directory; the files stay.
    Given(DemoCerts),
    /// A directory made for this run, removed with everything in it when the demo ends
    /// (the CA's trust in a browser outlives it harmlessly: the CA's key never left memory).
    Fresh(DemoCerts),
}

impl TlsDir {
    fn certs(&self) -> &DemoCerts {
        match self {
            TlsDir::Given(c) | TlsDir::Fresh(c) => c,
        }
    }
}

impl Drop for TlsDir {
    fn drop(&mut self) {
        if let TlsDir::Fresh(certs) = self {
            let _ = std::fs::remove_dir_all(&certs.dir);
        }
    }
}

/// A new, empty directory of this process's own under the temporary directory.
fn fresh_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::temp_dir();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let dir = base.join(format!("tether-demo-tls-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// How to make a browser (or curl) trust the demo's CA, for the platforms people run it on.
fn print_trust(certs: &DemoCerts, host: &str) {
    let ca = certs.ca.display();
    let name = &certs.ca_name;
    println!("  ca         {ca}");
    println!(
        "  (server certificate {}, key {})",
        certs.cert.display(),
        certs.key.display()
    );
    println!(
        "Trust the demo's CA to open the page without a warning (it is valid only for localhost"
    );
    println!("and the loopback addresses, and its own key was never written anywhere):");
    println!(
        "  Chromium/Chrome on Linux  certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n {name} -i {ca}"
    );
    println!("                            (certutil is in libnss3-tools; restart the browser)");
    println!("  Firefox                   Settings > Privacy & Security > Certificates > View Certificates >");
    println!("                            Authorities > Import {ca}, tick \"identify websites\"");
    println!("  macOS (Safari, Chrome)    sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {ca}");
    println!("  curl                      curl --cacert {ca} https://{host}/");
    println!("Remove it later with: certutil -d sql:$HOME/.pki/nssdb -D -n {name}");
}

/// The hubs and the proxy in front of them, running.
struct Demo {
    fleet: Arc<Fleet>,
    proxy: Arc<RunningProxy>,
    hubs: Vec<(HubName, SocketAddr)>,
    /// A fresh token for each run: the dashboard asks for it before it drains a backend.
    admin_token: AdminToken,
}

impl Demo {
    /// Starts `count` hubs on `broker`, then the proxy on `listen` in front of them.
    /// With `tls`, the proxy's listener terminates TLS with those files.
    async fn start(
        listen: SocketAddr,
        broker: Arc<dyn Broker>,
        count: usize,
        timings: Timings,
        tls: Option<&DemoCerts>,
    ) -> anyhow::Result<Demo> {
        let fleet = Fleet::new(count, broker, timings, routes);
        let hubs = fleet.start_all().await.context("starting the hubs")?;
        let admin_token = AdminToken::generate();
        let config = Config::from_toml(&proxy_config(listen, &hubs, &admin_token, tls))
            .context("building the proxy configuration")?;
        let proxy = Proxy::bind(config, None)
            .await
            .with_context(|| format!("--listen {listen} (choose another with --listen ADDR)"))?;
        let proxy = Arc::new(proxy.spawn());
        fleet.attach_proxy(proxy.clone());
        Ok(Demo {
            fleet,
            proxy,
            hubs,
            admin_token,
        })
    }
}

/// The routes each hub serves besides its own: the page's files and the demo API.
fn routes(fleet: Arc<Fleet>, served_by: HubName) -> axum::Router {
    assets::router().merge(api::router(fleet, served_by))
}

/// The proxy's configuration, in the same TOML a user would write, so it is validated the
/// same way. Least connections spreads two browsers over two hubs; one-second HTTP health
/// checks that fall and rise on the first result notice a crash or a restart within a second.
fn proxy_config(
    listen: SocketAddr,
    hubs: &[(HubName, SocketAddr)],
    token: &AdminToken,
    tls: Option<&DemoCerts>,
) -> String {
    let token = token.expose();
    let tls = tls.map_or_else(String::new, |certs| {
        format!(
            "\n[listen.tls]\ncert = {}\nkey = {}\n",
            toml_path(&certs.cert),
            toml_path(&certs.key)
        )
    });
    let mut toml = format!(
        r#"[listen]
addr = "{listen}"
{tls}
[admin]
enabled = false
stats_uri = "{STATS_URI}"
token = "{token}"

[runtime]
grace = "2s"

[balance]
strategy = "least-connections"

[timeouts]
connect = "1s"

[health]
kind = "http"
path = "/health"
interval = "1s"
timeout = "1s"
rise = 1
fall = 1
"#
    );
    for (name, addr) in hubs {
        toml.push_str(&format!(
            "\n[[backend]]\nname = \"{name}\"\naddr = \"{addr}\"\n"
        ));
    }
    toml
}

/// A path as a TOML basic string. Rust's escapes of `"` and `\\` are TOML's; a path with a
/// control character would not load, and the configuration error says which.
fn toml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;
    use std::time::Duration;
    use tether_proxy::BackendState;
    use tether_testkit::{any_port, eventually};

    async fn demo_of(hubs: usize) -> Demo {
        let broker = tether_hub::broker_from_url("memory").expect("memory broker");
        Demo::start(any_port(), broker, hubs, Timings::quick(), None)
            .await
            .expect("the demo starts")
    }

    fn proxy_state(demo: &Demo, name: &str) -> BackendState {
        demo.proxy
            .backends()
            .into_iter()
            .find(|b| b.name == name)
            .map(|b| b.state)
            .expect("the backend is listed")
    }

    #[tokio::test]
    async fn page_client_and_demo_api_are_served_through_the_proxy() {
        let demo = demo_of(3).await;
        let proxy = demo.proxy.addr();
        let page = scrape::request(proxy, Method::GET, "/").await.unwrap();
        assert!(page.contains("<title>tether demo"), "{page}");
        let client = scrape::request(proxy, Method::GET, "/tether.js")
            .await
            .unwrap();
        assert!(client.contains("export class TetherClient"));
        let report = scrape::request(proxy, Method::GET, "/api/demo/hubs")
            .await
            .unwrap();
        let report: serde_json::Value = serde_json::from_str(&report).unwrap();
        let hubs = report["hubs"].as_array().unwrap();
        assert_eq!(hubs.len(), 3, "{report}");
        for hub in hubs {
            assert_eq!(hub["state"], "running", "{report}");
            assert_eq!(hub["counters"]["connections"], 0, "{report}");
        }
        demo.fleet.abort_all();
    }

    #[tokio::test]
    async fn kill_through_the_proxy_is_refused_while_the_hub_is_down() {
        let demo = demo_of(2).await;
        let proxy = demo.proxy.addr();
        let kill = "/api/demo/hubs/hub-2/kill";
        scrape::request(proxy, Method::POST, kill).await.unwrap();
        let again = scrape::request(proxy, Method::POST, kill)
            .await
            .unwrap_err();
        assert!(matches!(again, scrape::ScrapeError::Status(409)), "{again}");
        let unknown = scrape::request(proxy, Method::POST, "/api/demo/hubs/hub-7/kill").await;
        assert!(matches!(unknown, Err(scrape::ScrapeError::Status(404))));
        demo.fleet.abort_all();
    }

    #[tokio::test]
    async fn drained_hub_leaves_the_proxy_until_it_is_back() {
        let demo = demo_of(2).await;
        let proxy = demo.proxy.addr();
        assert!(
            eventually(Duration::from_secs(5), || async {
                proxy_state(&demo, "hub-1") == BackendState::Up
            })
            .await
        );
        scrape::request(proxy, Method::POST, "/api/demo/hubs/hub-1/drain")
            .await
            .unwrap();
        assert_eq!(
            proxy_state(&demo, "hub-1"),
            BackendState::Draining,
            "no new client is sent to a draining hub"
        );
        assert!(
            eventually(Duration::from_secs(10), || async {
                let back = demo
                    .fleet
                    .running()
                    .iter()
                    .any(|(n, _)| n.as_str() == "hub-1");
                back && proxy_state(&demo, "hub-1") == BackendState::Up
            })
            .await,
            "the hub restarts and the proxy takes it back"
        );
        demo.fleet.abort_all();
    }

    /// `POST path` on a fresh connection, with the token as a bearer header if given.
    async fn post(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok());
        (status.unwrap_or(0), answer)
    }

    #[tokio::test]
    async fn dashboard_changes_through_the_proxy_need_the_demo_token() {
        let demo = demo_of(1).await;
        let proxy = demo.proxy.addr();
        let drain = "/_tether/api/backends/hub-1/drain";
        let (status, answer) = post(proxy, drain, None).await;
        assert_eq!(status, 401, "{answer}");
        assert_ne!(proxy_state(&demo, "hub-1"), BackendState::Draining);
        let (status, answer) = post(proxy, drain, Some(demo.admin_token.expose())).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(proxy_state(&demo, "hub-1"), BackendState::Draining);
        demo.fleet.abort_all();
    }

    #[test]
    fn proxy_config_is_valid_and_names_backends_after_hubs() {
        let hubs = [
            (HubName::numbered(1), "127.0.0.1:7001".parse().unwrap()),
            (HubName::numbered(2), "127.0.0.1:7002".parse().unwrap()),
        ];
        let token = AdminToken::generate();
        let config = Config::from_toml(&proxy_config(
            "127.0.0.1:0".parse().unwrap(),
            &hubs,
            &token,
            None,
        ))
        .expect("the demo's own proxy config validates");
        assert_eq!(
            config.admin.token,
            Some(token),
            "the dashboard's buttons need a token"
        );
        let names: Vec<_> = config.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["hub-1", "hub-2"]);
        assert_eq!(config.admin.stats_uri, STATS_URI);
        assert!(!config.admin.enabled, "the demo must not need port 9090");
    }

    #[test]
    fn tls_config_loads_the_issued_certificate_for_the_listener() {
        let dir = std::env::temp_dir().join(format!(
            "tether-demo-tls-unit-{}-\"quoted\" dir",
            std::process::id()
        ));
        let certs = authority::issue(&dir, "127.0.0.1".parse().unwrap()).expect("issued");
        let hubs = [(HubName::numbered(1), "127.0.0.1:7001".parse().unwrap())];
        let text = proxy_config(
            "127.0.0.1:0".parse().unwrap(),
            &hubs,
            &AdminToken::generate(),
            Some(&certs),
        );
        let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let tls = config.listeners[0].tls.as_ref().expect("[listen.tls]");
        assert_eq!(tls.cert, certs.cert, "{text}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&certs.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is the owner's alone");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
