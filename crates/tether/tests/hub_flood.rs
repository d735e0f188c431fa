//! A `tether hub` process under a ping flood from a client that never reads (issue #11):
//! its memory must stay bounded and the client must be dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tether");

/// A hub process, killed when dropped.
struct Hub {
    child: Child,
    addr: String,
}

impl Hub {
    fn start() -> Hub {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new(BIN)
            .args(["hub", "--listen", &addr, "--name", "flooded"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("listening"), "hub did not start: {line:?}");
        Hub { child, addr }
    }

    /// A field of /proc/PID/status, in kB.
    fn status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {status}"))
    }

    fn metrics(&self) -> String {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = stream.read_to_string(&mut out);
        out
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A masked ping frame with a 125-byte payload (the largest a control frame may carry).
fn ping_frame() -> Vec<u8> {
    let mut frame = vec![0x89u8, 0x80 | 125, 1, 2, 3, 4];
    frame.extend((0..125u8).map(|i| i ^ [1, 2, 3, 4][usize::from(i) % 4]));
    frame
}

#[test]
fn ping_flood_from_a_client_that_never_reads_is_dropped_and_memory_stays_bounded() {
    let hub = Hub::start();
    let mut socket = TcpStream::connect(&hub.addr).unwrap();
    write!(
        socket,
        "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    // Read the 101 head, and nothing after it, ever (until the end).
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        socket.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    let before_kb = hub.status_kb("VmRSS");

    // 400 000 pings (52 MB) in writes of 1000; before the fix the hub read them all and
    // queued every pong (50 MB), keeping the client.
    let chunk: Vec<u8> = ping_frame().repeat(1000);
    socket
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    let mut sent = 0usize;
    while sent < 400 && started.elapsed() < Duration::from_secs(60) {
        if socket.write_all(&chunk).is_err() {
            break;
        }
        sent += 1;
    }
    let grown_kb = hub.status_kb("VmHWM").saturating_sub(before_kb);
    eprintln!("peak RSS grew by {grown_kb} kB over {before_kb} kB; {sent}000 pings written");
    assert!(
        grown_kb < 16 * 1024,
        "the hub grew by {grown_kb} kB under {sent}000 pings"
    );

    // Dropped: the socket ends (EOF or reset) once what the hub sent has been read.
    socket
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut sink = vec![0u8; 64 * 1024];
    let ended = loop {
        match socket.read(&mut sink) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    assert!(
        ended,
        "the flooding client is still connected after {sent}000 pings"
    );
    let metrics = hub.metrics();
    assert!(
        metrics.contains(r#"tether_hub_disconnects_total{reason="flood"} 1"#),
        "{metrics}"
    );
}
