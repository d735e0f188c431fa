//! The broker lane: one thread of the process that carries every node's traffic with its
//! broker — the publisher's queue, the pub/sub feed and the per-channel dispatchers.
//!
//! Why a thread of its own: a node under fan-out load spends its runtime writing to
//! subscribers, one task per connection, and a runtime polls its ready tasks in turn. A
//! publication arriving from the broker while a thousand sessions wait in that queue would
//! wait a whole pass over them before it is even handed out, and each hop of the way in
//! (the pub/sub connection, the feed, the dispatcher) could wait again. On its own thread
//! the way in is woken by the kernel as soon as the broker's bytes arrive, and only the
//! final write waits its turn. Measured with `tether bench fanout` (docs/hub.md, "Inside a
//! node"): what this shortened is the pass from a message's first delivery to its last,
//! which took twice as long as the writes themselves needed while dispatch shared the
//! sessions' runtime.
//!
//! Nothing on the lane blocks: it runs tasks that wait on sockets and channels only.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// Spawns `future` on the lane, or on the caller's runtime if the lane could not start.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match lane() {
        Some(handle) => handle.spawn(future),
        None => tokio::spawn(future),
    }
}

/// The lane's runtime, started on first use; `None` if its thread could not be started
/// (then everything stays on the caller's runtime, as it would without a lane).
fn lane() -> Option<&'static Handle> {
    static LANE: OnceLock<Option<Handle>> = OnceLock::new();
    LANE.get_or_init(|| match start() {
        Ok(handle) => Some(handle),
        Err(error) => {
            tracing::warn!(%error, "cannot start the broker lane; broker traffic shares the node's runtime");
            None
        }
    })
    .as_ref()
}

fn start() -> std::io::Result<Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    // The thread parks in `block_on` for the life of the process; the runtime is never
    // dropped, so tasks left on it when a node stops simply end as their channels close.
    std::thread::Builder::new()
        .name("tether-broker".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lane_tasks_run_off_the_callers_thread() {
        let caller = std::thread::current().id();
        let on = spawn(async { std::thread::current().id() }).await.unwrap();
        assert_ne!(on, caller);
        let name = spawn(async { std::thread::current().name().map(str::to_owned) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("tether-broker"));
    }
}
