//! `tether bench soak` end to end: a short, small soak against the real binary, its own
//! Redis, hubs and proxy, with faults; the ledger must balance and the outputs exist.
//!
//! Needs `redis-server` on PATH (scripts/provision installs it). The full-size 60-second
//! run is in scripts/test.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tether");

fn out_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-soak-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The value of `key=` in the soak's last line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn a_short_soak_under_faults_loses_nothing_and_leaves_no_process_behind() {
    let dir = out_dir("short");
    let output = Command::new(BIN)
        .args([
            "bench",
            "soak",
            "--duration",
            "20s",
            "--subscribers",
            "200",
            "--channels",
            "20",
            "--http-rate",
            "20",
            "--ws-rate",
            "20",
            "--seed",
            "7",
            "--out",
        ])
        .arg(&dir)
        .output()
        .expect("the tether binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(output.status.success(), "soak failed: {stdout}\n{stderr}");
    assert!(last.starts_with("soak: duration=20s "), "last line: {last}");
    for key in ["lost", "duplicated", "out_of_order", "corrupted", "panics"] {
        assert_eq!(field(last, key), Some("0"), "{key} in {last}");
    }
    let published: u64 = field(last, "published")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let delivered: u64 = field(last, "delivered")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(published > 100, "too few publishes acknowledged: {last}");
    // Ten subscribers per channel: every acknowledged publish is owed ten times.
    let unrecovered: u64 = field(last, "unrecovered")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert_eq!(delivered + unrecovered, published * 10, "{last}");
    let faults: u64 = field(last, "faults")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(faults >= 3, "too few faults injected: {last}");

    let csv = std::fs::read_to_string(dir.join("resources.csv")).expect("resources.csv written");
    let mut rows = csv.lines();
    let header = rows.next().unwrap_or_default();
    assert!(
        header.starts_with("elapsed_s,proxy_fds,proxy_rss_kib,hub1_fds"),
        "{header}"
    );
    assert!(rows.count() >= 15, "about one sample a second");
    assert!(dir.join("proxy.toml").exists());
    assert!(dir.join("summary.txt").exists());

    // Every child was stopped: no process still runs the config or logs of this run.
    assert_no_process_mentions(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_soak_with_impossible_arguments_is_refused_before_starting_anything() {
    let dir = out_dir("refused");
    let output = Command::new(BIN)
        .args([
            "bench",
            "soak",
            "--channels",
            "10",
            "--subscribers",
            "5",
            "--out",
        ])
        .arg(&dir)
        .output()
        .expect("the tether binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--channels"), "{stderr}");
    assert!(!dir.join("proxy.toml").exists());
}

/// Fails if any process's command line names `dir` (the proxy's config lives there).
fn assert_no_process_mentions(dir: &Path) {
    let needle = dir.display().to_string();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(
            !cmdline.contains(&needle),
            "still running after the soak: {cmdline}"
        );
    }
}

#[test]
fn frames_a_subscriber_never_saw_are_reported_lost_and_fail_the_run() {
    // Proves the ledger end to end: subscribers drop every 20th frame on the floor, as a
    // hub that skipped them silently would look; the soak must say `lost` and exit 1.
    let dir = out_dir("drop");
    let output = Command::new(BIN)
        .args([
            "bench",
            "soak",
            "--duration",
            "8s",
            "--subscribers",
            "40",
            "--channels",
            "4",
            "--http-rate",
            "20",
            "--ws-rate",
            "20",
            "--self-test-drop-every",
            "20",
            "--out",
        ])
        .arg(&dir)
        .output()
        .expect("the tether binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let lost: u64 = field(last, "lost")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(lost > 0, "{last}");
    assert!(last.ends_with("result=FAIL"), "{last}");
    let listed = std::fs::read_to_string(dir.join("ledger.txt")).unwrap_or_default();
    assert!(
        listed.lines().count() > 1,
        "missing deliveries listed: {listed}"
    );
    assert_no_process_mentions(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}
