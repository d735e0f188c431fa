//! The `tether` binary as an operator meets it: `check`, `proxy`, signals and logs.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tether_testkit::{echo_backends, whoami, ws_connect};

const BIN: &str = env!("CARGO_BIN_EXE_tether");

fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Opens a WebSocket through a proxy process that may still be starting (10 s at most).
async fn connect_when_up(addr: std::net::SocketAddr) -> tether_testkit::Ws {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ws_connect(addr, "/ws").await {
            Ok((ws, _)) => return ws,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("proxy did not start: {e}"),
        }
    }
}

#[test]
fn check_accepts_a_valid_config() {
    let path = write_config(
        "ok.toml",
        "[balance]\nstrategy = \"p2c\"\n[[backend]]\nname = \"b1\"\naddr = \"127.0.0.1:9001\"\n",
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn check_names_the_file_the_key_and_the_problem() {
    let cases = [
        ("unknown.toml", "[balance]\nstrategy = \"p2c\"\nbalance_factr = 2\n", "balance.balance_factr", "unknown field"),
        ("addr.toml", "[listen]\naddr = \"localhost:80:1\"\n[[backend]]\nname = \"b\"\naddr = \"127.0.0.1:1\"\n", "listen.addr", "address"),
        ("strategy.toml", "[balance]\nstrategy = \"ip_hash\"\n", "balance.strategy", "unknown variant"),
        ("nobackend.toml", "[balance]\nstrategy = \"p2c\"\n", "backend", "at least one"),
    ];
    for (file, text, key, problem) in cases {
        let path = write_config(file, text);
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{file}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(path.to_str().unwrap()), "{file}: {err}");
        assert!(err.contains(key), "{file}: want key {key}: {err}");
        assert!(err.contains(problem), "{file}: want {problem}: {err}");
    }
}

/// Runs `tether check --hub FILE` with none of the hub's environment variables set, so the
/// file alone decides.
fn check_hub(path: &std::path::Path) -> std::process::Output {
    let mut command = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("TETHER_HUB_") {
            command.env_remove(key);
        }
    }
    command.args(["check", "--hub"]).arg(path).output().unwrap()
}

#[test]
fn check_accepts_a_hub_toml_and_says_how_it_is_protected() {
    let path = write_config(
        "hub-ok.toml",
        "listen = \"0.0.0.0:7000\"\nbroker = \"redis://:hunter2@127.0.0.1:6379\"\n\
         [auth]\nhmac_secret = \"0123456789abcdef0123456789abcdef\"\n\
         [[namespace]]\nprefix = \"room:\"\nsubscribe = \"authenticated\"\n",
    );
    let out = check_hub(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(": ok"), "{stdout}");
    assert!(stdout.contains("1 namespace(s)"), "{stdout}");
    assert!(stdout.contains("tokens (1 key(s)"), "{stdout}");
    assert!(stdout.contains("broker redis,"), "{stdout}");
    assert!(
        !stdout.contains("hunter2"),
        "the broker password leaked: {stdout}"
    );
}

#[test]
fn check_refuses_a_hub_toml_the_hub_would_refuse_naming_file_key_and_problem() {
    let cases = [
        // Protected mode: open to the network with no tokens.
        (
            "hub-open.toml",
            "listen = \"0.0.0.0:7000\"\n",
            "0.0.0.0:7000",
            "--allow-anonymous",
        ),
        (
            "hub-duration.toml",
            "ping_interval = \"5 parsecs\"\n",
            "ping_interval",
            "unknown unit",
        ),
        (
            "hub-ns.toml",
            "[[namespace]]\nprefix = \"room:\"\nsubscribe = \"everyone\"\n",
            "namespace[0].subscribe",
            "unknown variant",
        ),
        (
            "hub-key.toml",
            "[auth]\npublic_keys = [\"no-such-key.pem\"]\n",
            "public_keys",
            "no-such-key.pem",
        ),
        ("hub-zero.toml", "client_queue = 0\n", "client_queue", ""),
    ];
    for (file, text, key, problem) in cases {
        let path = write_config(file, text);
        let out = check_hub(&path);
        assert_eq!(out.status.code(), Some(1), "{file}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(path.to_str().unwrap()), "{file}: {err}");
        assert!(err.contains(key), "{file}: want key {key}: {err}");
        assert!(err.contains(problem), "{file}: want {problem}: {err}");
    }
}

#[test]
fn check_reads_the_admin_token_file_and_names_it_when_it_cannot() {
    let backend = "[[backend]]\nname = \"b\"\naddr = \"127.0.0.1:1\"\n";
    let missing = write_config(
        "token-missing.toml",
        &format!("[admin]\ntoken_file = \"no-such.token\"\n{backend}"),
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin.token_file"), "{err}");
    let token_path = missing.with_file_name("no-such.token");
    assert!(err.contains(token_path.to_str().unwrap()), "{err}");

    let secret = "check-me-0123456789abcdef";
    std::fs::write(token_path.with_file_name("short.token"), "short\n").unwrap();
    std::fs::write(
        token_path.with_file_name("good.token"),
        format!("{secret}\n"),
    )
    .unwrap();
    let short = write_config(
        "token-short.toml",
        &format!("[admin]\ntoken_file = \"short.token\"\n{backend}"),
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&short)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 16"), "{err}");
    assert!(!err.contains("short\n"), "{err}");

    let good = write_config(
        "token-good.toml",
        &format!("[admin]\ntoken_file = \"good.token\"\n{backend}"),
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("admin token from"), "{said}");
    assert!(!said.contains(secret), "check printed the token: {said}");
}

#[tokio::test]
async fn sigterm_closes_tunnels_with_1001_within_the_grace_and_logs_one_json_line_per_tunnel() {
    let backends = echo_backends(1).await;
    let port = free_port();
    let path = write_config(
        "run.toml",
        &format!(
            "[listen]\naddr = \"127.0.0.1:{port}\"\n[admin]\nenabled = false\n[runtime]\nworkers = 1\ngrace = \"2s\"\n[[backend]]\nname = \"b1\"\naddr = \"{}\"\n",
            backends[0].addr()
        ),
    );
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "proxy", "--config"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut ws = connect_when_up(addr).await;
    assert_eq!(whoami(&mut ws).await.unwrap(), "b1");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    // The tunnel gets a close frame saying the proxy goes away, at a moment within the grace.
    let code = tokio::time::timeout(Duration::from_secs(4), async {
        use futures_util::StreamExt;
        loop {
            match ws.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f))) => {
                    return f.map(|f| u16::from(f.code))
                }
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await
    .expect("no close frame within the grace");
    assert_eq!(code, Some(1001));
    drop(ws);
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "did not exit after its last tunnel ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success());
    let lines = lines.join().unwrap();
    let ended: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "tunnel ended")
        .collect();
    assert_eq!(ended.len(), 1, "{lines:#?}");
    let line = &ended[0];
    assert_eq!(line["backend"], "b1");
    assert_eq!(line["client"], "127.0.0.1");
    assert!(line["bytes_to_backend"].as_u64().unwrap() > 0);
    assert!(line["duration"].is_string());
    assert_eq!(line["reason"], "Shutdown");
    assert_eq!(line["goodbye"], "Sent(1001)");
}

#[tokio::test]
async fn sighup_reloads_the_backend_list_without_cutting_tunnels() {
    let backends = echo_backends(2).await;
    let port = free_port();
    let config = |b: &tether_testkit::EchoServer| {
        format!(
            "[listen]\naddr = \"127.0.0.1:{port}\"\n[admin]\nenabled = false\n[runtime]\nworkers = 1\ngrace = \"1s\"\n[[backend]]\nname = \"{}\"\naddr = \"{}\"\n",
            b.name(),
            b.addr()
        )
    };
    let path = write_config("hup.toml", &config(&backends[0]));
    let mut child = Command::new(BIN)
        .args(["proxy", "--config"])
        .arg(&path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut ws = connect_when_up(addr).await;
    assert_eq!(whoami(&mut ws).await.unwrap(), "b1");
    std::fs::write(&path, config(&backends[1])).unwrap();
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    let moved = tether_testkit::eventually(Duration::from_secs(5), || async {
        match ws_connect(addr, "/ws").await {
            Ok((mut c, _)) => whoami(&mut c).await.map(|n| n == "b2").unwrap_or(false),
            Err(_) => false,
        }
    })
    .await;
    assert!(moved, "new connections did not go to the reloaded backend");
    assert_eq!(
        whoami(&mut ws).await.unwrap(),
        "b1",
        "the live tunnel was cut by the reload"
    );
    assert!(child.try_wait().unwrap().is_none());
    child.kill().unwrap();
    let _ = child.wait();
}
