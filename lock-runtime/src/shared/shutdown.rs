//! What closing a locker needs to know: its live acquisitions and its releases under way in the
//! background (see `protocol::close` and `Locker::close`).
//!
//! Why it is needed: a guard dropped without `release().await` hands its release to a task. At
//! the end of `#[tokio::main]` the runtime shuts down right after, and drops that task before
//! (or while) it runs: the lock then stays held until its lease runs out. `Locker::close` awaits
//! what a Drop can only start.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TrackedFuture;

use super::held::HeldLock;
use crate::mutex::lock;

/// Why a lock released by `close` counts as lost for the guard that is still alive: from then on
/// its holder's work is not exclusive any more.
pub(crate) const CLOSED_WHILE_HELD: &str = "the locker was closed while the guard was alive";

/// A locker's live acquisitions and its releases in the background.
pub(crate) struct Shutdown {
    /// Live acquisitions by address (an entry leaves when its `HeldLock` is dropped); `None` once
    /// closed, so that a registration racing with `close` is told under the same lock.
    pub(crate) held: Mutex<Option<HashMap<usize, Weak<HeldLock>>>>,
    /// Cancelled by `close`: acquires waiting at that moment end with `LockError::Closed`.
    pub(crate) closed: CancellationToken,
    /// Every release under way: an explicit `release()` (also one finishing in the background
    /// after its future was dropped), a dropped guard's, a cancelled acquire's clean-up.
    pub(crate) background: TaskTracker,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            held: Mutex::new(Some(HashMap::new())),
            closed: CancellationToken::new(),
            background: TaskTracker::new(),
        }
    }
}

/// The registry's key of an acquisition: its address, unique while it lives (and it leaves the
/// registry in its Drop, before the address can be reused).
fn id(held: &HeldLock) -> usize {
    std::ptr::from_ref(held) as usize
}

impl Shutdown {
    /// Records a lock just taken, for `close`. Taken after `close` (an acquire that was past its
    /// last await when the locker closed), it is marked lost at once and released by its guard.
    pub(crate) fn register(&self, held: &Arc<HeldLock>) {
        match lock(&self.held).as_mut() {
            Some(live) => {
                live.insert(id(held), Arc::downgrade(held));
            }
            None => HeldLock::mark_lost(&held.key, held.fence, &held.lost, CLOSED_WHILE_HELD),
        }
    }

    /// True once `close` began: releases then release for everyone, with no hand-over to a
    /// waiting task of this locker (whose acquire is ending with `Closed`).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Counts `work` among the background releases that `close` waits for.
    pub(crate) fn track<F: Future>(&self, work: F) -> TrackedFuture<F> {
        self.background.track_future(work)
    }
}

impl HeldLock {
    /// True for the one caller that gets to release this acquisition in the engine: its last
    /// guard, or `close`, whichever comes first.
    pub(crate) fn claim_release(&self) -> bool {
        !self.release_claimed.swap(true, Ordering::AcqRel)
    }

    /// True once released in the engine, or being released: by `close`, if asked from a guard.
    pub(crate) fn is_release_claimed(&self) -> bool {
        self.release_claimed.load(Ordering::Acquire)
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        // Whatever became of the release: nothing renews a lock nobody holds any more.
        self.abort_keeper();
        if let Some(live) = lock(&self.shared.shutdown.held).as_mut() {
            live.remove(&id(self));
        }
    }
}
