//! Reloading certificates when their files change.
//!
//! Renewal tools (certbot, cert-manager, a Kubernetes secret volume) replace files in place
//! or swap a symlink. The watch polls the metadata of every file a TLS listener reads —
//! through symlinks, so a swapped `..data` link counts — and reloads that listener when any
//! of it changes. Polling a handful of `stat`s every two seconds costs nothing measurable and
//! works on every filesystem, where inotify misses symlink swaps and network mounts.
//!
//! A reload that fails (a tool wrote the certificate but not yet its key) keeps the old
//! certificates; the next change (the key arriving) triggers another try.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::shared::Shared;

/// How often the files are looked at.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// What identifies a version of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamps(files: &[PathBuf]) -> Vec<Option<Stamp>> {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f).ok().map(|m| Stamp {
                modified: m.modified().ok(),
                len: m.len(),
                inode: m.ino(),
            })
        })
        .collect()
}

/// Watches the files of every TLS listener until the task is dropped.
pub(crate) async fn run(shared: Arc<Shared>, interval: Duration) {
    let watched: Vec<_> = shared
        .frontends
        .iter()
        .filter(|f| f.tls.is_some())
        .cloned()
        .collect();
    if watched.is_empty() {
        return;
    }
    let files = |f: &crate::frontend::Frontend| -> Vec<PathBuf> {
        f.tls
            .as_ref()
            .map(|t| {
                t.settings()
                    .files()
                    .into_iter()
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut seen: Vec<Vec<Option<Stamp>>> = watched.iter().map(|f| stamps(&files(f))).collect();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        for (frontend, last) in watched.iter().zip(seen.iter_mut()) {
            let Some(tls) = &frontend.tls else { continue };
            let now = stamps(&files(frontend));
            if now == *last {
                continue;
            }
            *last = now;
            match tls.reload_files() {
                Ok(()) => {
                    shared.metrics.tls.set_certificates(&tls.certificates());
                    tracing::info!(
                        listener = frontend.index,
                        "certificate files changed; reloaded"
                    );
                }
                Err(e) => tracing::warn!(
                    listener = frontend.index,
                    error = %e,
                    "certificate files changed but do not load; keeping the current certificates"
                ),
            }
        }
    }
}
