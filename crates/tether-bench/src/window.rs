//! The measured window of a timed run: warm-up first, then the span whose numbers count.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use tokio::time::Instant;

use crate::error::BenchError;
use crate::procstat::{ProcSample, Usage, WatchArgs};

/// When measuring starts and stops. Work finished outside it is done but not counted.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    /// A window that opens after `warmup` from now and lasts `duration`.
    pub fn after(warmup: Duration, duration: Duration) -> Window {
        let start = Instant::now() + warmup;
        Window {
            start,
            end: start + duration,
        }
    }

    /// True when `t` falls inside the window.
    pub fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }

    pub fn duration(&self) -> Duration {
        self.end - self.start
    }

    /// Samples the watched processes, and the generator itself, at both edges of the window.
    /// Spawned next to the load so the samples are taken on time, not after the load's tasks
    /// finish.
    pub fn watch(self, watch: WatchArgs) -> JoinHandle<Result<Watched, BenchError>> {
        tokio::spawn(async move {
            let me = WatchArgs::own_process();
            tokio::time::sleep_until(self.start).await;
            let first: Option<ProcSample> = watch.sample()?;
            let my_first = me.sample()?;
            tokio::time::sleep_until(self.end).await;
            let last = watch.sample()?;
            let my_last = me.sample()?;
            Ok(Watched {
                server: Usage::between(&watch, first, last),
                generator_cpu_pct: Usage::between(&me, my_first, my_last)
                    .map(|u| u.cpu_pct_over(self.duration())),
            })
        })
    }
}

/// How often a long window reports on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

impl Window {
    /// Prints `done` (work counted so far) on stderr every few seconds while the window is
    /// open, so a long run shows it is alive. Silent for windows shorter than one period.
    pub fn report_progress(self, what: &'static str, done: Arc<AtomicU64>) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut next = self.start + PROGRESS_EVERY;
            while next < self.end {
                tokio::time::sleep_until(next).await;
                let secs = (next - self.start).as_secs_f64();
                let count = done.load(Ordering::Relaxed);
                crate::progress!(
                    "{what}: {secs:.0}s of {:.0}s, {count} so far ({:.0}/s)",
                    self.duration().as_secs_f64(),
                    count as f64 / secs
                );
                next += PROGRESS_EVERY;
            }
        })
    }
}

/// What the window's watcher saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct Watched {
    /// The processes under test (`None` when none were given).
    pub server: Option<Usage>,
    /// The generator's own CPU use over the window, in percent of one CPU. Near 100 with
    /// `--threads 1` means the generator, not the server, set the pace.
    pub generator_cpu_pct: Option<f64>,
}
