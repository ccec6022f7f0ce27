//! The state a locker's clones, guards and waiting tasks share, data only: the engine, the
//! settings, the hand-over queues, the runtime the locker was made on; one acquisition's state
//! ([`held`]); the scopes the running call is inside of ([`scopes`]).
//!
//! It sits below everything that acts on it: `locker` -> `guard`/`context` -> `protocol` ->
//! `shared` -> `engine` -> leaves (`error`, `options`, `token`, `mutex`). Nothing here imports
//! from above, so the protocol is a set of functions over this state, not a circle of types.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::Engine;

pub(crate) mod held;
pub(crate) mod queues;
pub(crate) mod scopes;
pub(crate) mod shutdown;

use queues::Queues;

/// What one `Locker` and its clones share.
pub(crate) struct Shared {
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) watchdog_lease: Duration,
    pub(crate) renewal_interval: Duration,
    /// The runtime the locker was made on: Drop of a guard outside any runtime context still
    /// hands its release to it.
    pub(crate) runtime: Option<tokio::runtime::Handle>,
    /// Tasks of this locker waiting for a lock, for hand-overs.
    pub(crate) queues: Queues,
    pub(crate) max_handovers_in_a_row: u32,
    /// The locks' default for waiting on replica acknowledgements (`LockerBuilder::replica_acks`).
    pub(crate) replica_acks: Option<Duration>,
    /// Live acquisitions and background releases, for `Locker::close`.
    pub(crate) shutdown: shutdown::Shutdown,
}

impl Shared {
    /// Where work that outlives its caller (a background release) runs: the caller's runtime,
    /// else the one the locker was made on; `None` when there is neither.
    pub(crate) fn background_runtime(&self) -> Option<tokio::runtime::Handle> {
        tokio::runtime::Handle::try_current()
            .ok()
            .or_else(|| self.runtime.clone())
    }

    /// Releases `token`'s hold of `key` (if it has one) from a task of its own: the clean-up of
    /// a lock that may have been taken for a task that is gone. Without a runtime (shut down),
    /// the lease's expiry frees it. Here, not in `protocol`, because the data below the protocol
    /// (an unclaimed hand-over being dropped) needs it too.
    pub(crate) fn release_in_background(
        self: &Arc<Self>,
        key: String,
        token: String,
        of: &'static str,
    ) {
        let Some(runtime) = self.background_runtime() else {
            return;
        };
        let shared = Arc::clone(self);
        runtime.spawn(self.shutdown.track(async move {
            if let Err(error) = shared.engine.release(&key, &token, None).await {
                crate::metrics::backend_error(&key, crate::metrics::Op::Release);
                tracing::warn!(key, %error, "clean-up of {of} failed; the lock expires with its lease");
            }
        }));
    }
}
