//! Release: done once, by the last guard of an acquisition, and run to its end once begun.
//!
//! The release stops the keeper, then hands the lock over to a waiting task of this locker or
//! releases it in the engine (see [`super::handoff`]), and tells whether the lease held.

use std::sync::{Arc, PoisonError};

use tokio::time::Instant;

use super::handoff::hand_over_or_release;
use super::run_to_end::RunToEnd;
use crate::engine::Released;
use crate::error::LockError;
use crate::shared::held::HeldLock;

/// The release by an explicit `release()` whose guard was the last: once begun it runs to its
/// end even if this future is dropped. Stopped half-way it would leave the lock held to the end
/// of its lease (watchdog stopped, no script sent), or passed to a waiting task that is never
/// told (hand-over sent, not delivered).
pub(crate) async fn release(held: Arc<HeldLock>) -> Result<(), LockError> {
    let runtime = held.shared.runtime.clone();
    let key = held.key.clone();
    let shared = Arc::clone(&held.shared);
    let release = shared
        .shutdown
        .track(async move { release_in_engine(&held).await });
    RunToEnd::new(release, runtime, &key, "a release").await
}

/// The release of a dropped last guard: handed to the runtime, never blocking or panicking.
/// Without a runtime (dropped after it shut down) the lease's expiry frees the lock.
pub(crate) fn release_dropped(held: Arc<HeldLock>) {
    // `Locker::close` released it already, or is releasing it.
    if held.is_release_claimed() {
        return;
    }
    // Now, not in the release: a release that cannot run (no runtime) must not leave the
    // watchdog renewing, on the runtime it runs on, a lock nobody holds.
    held.abort_keeper();
    let Some(handle) = held.shared.background_runtime() else {
        tracing::warn!(key = %held.key, "lock guard dropped outside a runtime; it expires with its lease");
        return;
    };
    tracing::debug!(key = %held.key, fence = held.fence, "lock guard dropped without release; releasing in the background");
    let shared = Arc::clone(&held.shared);
    handle.spawn(shared.shutdown.track(async move {
        if let Err(error) = release_in_engine(&held).await {
            tracing::warn!(key = %held.key, %error, "background release of a dropped lock guard failed");
        }
    }));
}

/// Stops the keeper and waits until it has stopped, so no renewal is sent after this returns.
/// A release runs this to its end (see `RunToEnd`). Dropped mid-way all the same (its runtime
/// shutting down), the keeper is aborted already and never polled again: at most a renewal
/// already sent lands late, and a renewal extends only a lock its token still owns.
async fn stop_keeper(held: &HeldLock) {
    let keeper = held
        .keeper
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(keeper) = keeper {
        keeper.abort();
        let _ = keeper.await;
    }
}

/// The release in the engine, done once by the last guard of this acquisition, unless
/// `Locker::close` released it first (and marked it lost if a guard was still alive).
async fn release_in_engine(held: &HeldLock) -> Result<(), LockError> {
    if !held.claim_release() {
        return if held.is_lost() {
            Err(held.lease_lost())
        } else {
            Ok(())
        };
    }
    release_claimed(held).await
}

/// The release in the engine, by the one caller that claimed it (see `HeldLock::claim_release`).
pub(crate) async fn release_claimed(held: &HeldLock) -> Result<(), LockError> {
    crate::metrics::held(&held.key, held.acquired_at.elapsed());
    stop_keeper(held).await;
    let hold_until = *held
        .hold_until
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let keep = hold_until
        .map(|until| until.saturating_duration_since(Instant::now()))
        .filter(|rest| !rest.is_zero());
    // An extension under way (a nested call, `extend`) is answered first: sent after the release,
    // it would find the lock gone (or, kept for `hold_at_least`, not ours any more) anyway.
    let _no_extension = held.extending.lock().await;
    held.mark_released();
    let released = hand_over_or_release(held, keep)
        .await
        .inspect_err(|_| crate::metrics::backend_error(&held.key, crate::metrics::Op::Release))
        .map_err(|e| LockError::backend(Some(&held.key), e))?;
    match released {
        Released::Done if !held.is_lost() => {
            tracing::debug!(
                key = %held.key,
                fence = held.fence,
                held = ?held.acquired_at.elapsed(),
                kept_for = ?keep,
                "lock released"
            );
            Ok(())
        }
        Released::Done => Err(held.lease_lost()),
        Released::NotOwner => {
            HeldLock::mark_lost(
                &held.key,
                held.fence,
                &held.lost,
                "at release the lock had expired or belonged to another holder",
            );
            Err(held.lease_lost())
        }
    }
}
