//! Closing a locker: every lock it holds released, every release in the background finished, its
//! engine's connections stopped (see `Locker::close`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::release::release_claimed;
use crate::mutex::lock;
use crate::shared::Shared;
use crate::shared::held::HeldLock;
use crate::shared::shutdown::CLOSED_WHILE_HELD;

/// See `Locker::close`.
pub(crate) async fn close(shared: &Arc<Shared>) {
    let shutdown = &shared.shutdown;
    shutdown.closed.cancel();
    let live = lock(&shutdown.held).take().unwrap_or_default();
    for held in live.values().filter_map(Weak::upgrade) {
        if !held.claim_release() {
            // Its guard is releasing it already, in a task `background` tracks.
            continue;
        }
        // With no guard left, its last guard's release is on its way: nobody is working under
        // it, so nobody is to be told of a loss.
        if held.guards.load(Ordering::Acquire) > 0 {
            HeldLock::mark_lost(&held.key, held.fence, &held.lost, CLOSED_WHILE_HELD);
        }
        // Spawned, so that the releases run side by side and each finishes even if this future
        // is dropped.
        shutdown.background.spawn(async move {
            if let Err(error) = release_claimed(&held).await
                && !error.is_lease_lost()
            {
                tracing::warn!(key = %held.key, %error, "release at close failed; the lock expires with its lease");
            }
        });
    }
    // `close` lets `wait` end once no task is left; releases started meanwhile (a hand-over to a
    // waiter that is gone) are waited for too.
    shutdown.background.close();
    shutdown.background.wait().await;
    shared.engine.close();
    tracing::debug!("locker closed");
}
