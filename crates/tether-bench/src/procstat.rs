//! CPU time and resident memory of the processes under test, read from /proc.
//!
//! The comparison divides a proxy's CPU time by the work it did (round trips, handshakes) and
//! its memory growth by the tunnels it holds. Sampling here, at the exact edges of the
//! measured window, keeps warm-up and connection setup out of those figures.

use std::time::Duration;

use serde::Serialize;

use crate::error::BenchError;

/// The processes a run watches (`--watch-pid`, repeatable: nginx's master and worker, say).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WatchArgs {
    /// PID of a process under test whose CPU time (utime+stime) and VmRSS are sampled at the
    /// start and end of the measured window. Repeat for every process of the server.
    #[arg(long = "watch-pid", value_name = "PID")]
    pub pids: Vec<u32>,
}

/// One reading of the watched processes, summed over all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// VmRSS, in KiB.
    pub rss_kib: u64,
}

impl WatchArgs {
    /// True when no process is watched, and reports leave the figures out.
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }

    /// Watches the calling process (the generator's own CPU use).
    pub fn own_process() -> WatchArgs {
        WatchArgs {
            pids: vec![std::process::id()],
        }
    }

    /// Reads every watched process now.
    pub fn sample(&self) -> Result<Option<ProcSample>, BenchError> {
        if self.pids.is_empty() {
            return Ok(None);
        }
        let mut total = ProcSample {
            cpu_ticks: 0,
            rss_kib: 0,
        };
        for &pid in &self.pids {
            let one = sample_pid(pid)?;
            total.cpu_ticks += one.cpu_ticks;
            total.rss_kib += one.rss_kib;
        }
        Ok(Some(total))
    }
}

/// What the watched processes spent between two samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Usage {
    pub pids: usize,
    /// CPU seconds (user + system) spent in the window.
    pub cpu_s: f64,
    pub rss_kib_start: u64,
    pub rss_kib_end: u64,
}

impl Usage {
    /// The usage between `start` and `end`, or `None` when nothing was watched.
    pub fn between(
        watch: &WatchArgs,
        start: Option<ProcSample>,
        end: Option<ProcSample>,
    ) -> Option<Usage> {
        let (start, end) = (start?, end?);
        Some(Usage {
            pids: watch.pids.len(),
            cpu_s: end.cpu_ticks.saturating_sub(start.cpu_ticks) as f64 / clock_ticks_per_sec(),
            rss_kib_start: start.rss_kib,
            rss_kib_end: end.rss_kib,
        })
    }

    /// CPU time per unit of work, in microseconds (`None` when no work was done).
    pub fn cpu_us_per(&self, units: u64) -> Option<f64> {
        (units > 0).then(|| round2(self.cpu_s * 1e6 / units as f64))
    }

    /// CPU use over `wall` as a percentage of one CPU.
    pub fn cpu_pct_over(&self, wall: Duration) -> f64 {
        let secs = wall.as_secs_f64();
        if secs > 0.0 {
            (self.cpu_s / secs * 1000.0).round() / 10.0
        } else {
            0.0
        }
    }

    /// Memory growth per unit held, in bytes (may be negative when the allocator gave back).
    pub fn rss_bytes_per(&self, units: u64) -> Option<f64> {
        (units > 0).then(|| {
            round2((self.rss_kib_end as f64 - self.rss_kib_start as f64) * 1024.0 / units as f64)
        })
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a constant of the running system; it has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// How long one tick of CPU accounting is; a window should be many of these long.
pub fn tick() -> Duration {
    Duration::from_secs_f64(1.0 / clock_ticks_per_sec())
}

fn sample_pid(pid: u32) -> Result<ProcSample, BenchError> {
    let err = |source| BenchError::Proc { pid, source };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(err)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(err)?;
    let malformed = |what: &str| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected {what} format"),
        ))
    };
    let cpu_ticks = parse_cpu_ticks(&stat).ok_or_else(|| malformed("stat"))?;
    let rss_kib = parse_rss_kib(&status).ok_or_else(|| malformed("status"))?;
    Ok(ProcSample { cpu_ticks, rss_kib })
}

/// utime + stime from /proc/PID/stat. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // After the name: state(3) ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
    // cmajflt utime(14) stime(15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn parse_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_past_a_name_with_spaces() {
        let stat = "42 (a) b) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 10 1000 50";
        assert_eq!(parse_cpu_ticks(stat), Some(12));
    }

    #[test]
    fn rss_is_read_from_status() {
        let status = "Name:\tx\nVmPeak:\t 100 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(parse_rss_kib(status), Some(2048));
    }

    #[test]
    fn own_process_can_be_sampled() {
        let watch = WatchArgs {
            pids: vec![std::process::id()],
        };
        let sample = watch.sample().unwrap().unwrap();
        assert!(sample.rss_kib > 0);
    }

    #[test]
    fn vanished_process_is_an_error_not_a_panic() {
        let watch = WatchArgs {
            pids: vec![u32::MAX - 1],
        };
        assert!(matches!(watch.sample(), Err(BenchError::Proc { .. })));
    }
}
