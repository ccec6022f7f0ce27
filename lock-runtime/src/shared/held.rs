//! One acquisition: its token and fencing number, its lease end by this client's clock, its lost
//! signal, its guards (the outer call's and those of calls nested in its scope), and its keeper.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::error::LockError;

/// The shared state of one acquisition in the engine. The guards of calls nested in its scope that
/// re-entered it share it.
pub(crate) struct HeldLock {
    pub(crate) shared: Arc<Shared>,
    pub(crate) key: String,
    pub(crate) token: String,
    pub(crate) fence: u64,
    /// When `acquire` returned.
    pub(crate) acquired_at: Instant,
    /// The fixed lease it was taken with; `None`: the watchdog keeps it.
    pub(crate) lease: Option<Duration>,
    /// How long its renewals wait for replica acknowledgements (`None`: they do not).
    pub(crate) replicas: Option<Duration>,
    /// Until when a release keeps the lock instead of deleting it: the latest end any of its
    /// guards asked for with `hold_at_least`.
    pub(crate) hold_until: Mutex<Option<Instant>>,
    /// How many guards of this acquisition are alive: only the last one releases it.
    pub(crate) guards: AtomicUsize,
    /// Taken while a re-entry extends the fixed lease, so that a shorter extension answered
    /// later never moves the lease end past what the server was last told.
    pub(crate) extending: tokio::sync::Mutex<()>,
    /// How many hand-overs in a row led to this holder (0: it took the lock free).
    pub(crate) handovers_in_a_row: u32,
    /// Cancelled when the lease is lost. Never cancelled by a release.
    pub(crate) lost: CancellationToken,
    /// Where the lease ends by this client's clock (counted from when the acquire, or the last
    /// successful renewal, was sent: never later than the server's end). Fixed for a fixed
    /// lease, moved by the watchdog. `is_lost`, `lost()` and release compare against it, so a
    /// holder that was paused past it knows at its first look, before any task has run.
    pub(crate) lease_end: Arc<LeaseEnd>,
    /// The watchdog (watchdog mode only).
    pub(crate) keeper: Mutex<Option<JoinHandle<()>>>,
    /// Set by whoever releases in the engine: the last guard, or `Locker::close`.
    pub(crate) release_claimed: AtomicBool,
    /// When the release was sent: a lease that ended after it was not lost, it was released.
    pub(crate) released_at: OnceLock<Instant>,
    /// Cancelled once the release is sent, so that `lost()` ends without reporting a loss.
    pub(crate) released: CancellationToken,
}

/// Clocks drift and timers fire late: a client takes its lease as over this much before the
/// server will (Redlock's allowance: 1 % of the lease plus 2 ms), so that a holder is told of the
/// loss before another client can take the lock, not at the same moment.
pub(crate) fn drift_allowance(lease: Duration) -> Duration {
    lease / 100 + Duration::from_millis(2)
}

/// The end of a lease by the client's clock, readable without a lock and moved by the watchdog.
pub(crate) struct LeaseEnd {
    base: Instant,
    /// Nanoseconds after `base`.
    after_base: AtomicU64,
}

impl LeaseEnd {
    pub(crate) fn new(end: Instant) -> Self {
        LeaseEnd {
            base: end,
            after_base: AtomicU64::new(0),
        }
    }

    /// The end, by this client's clock, of a lease whose request was sent at `sent`.
    pub(crate) fn of(sent: Instant, lease: Duration) -> Instant {
        sent + lease.saturating_sub(drift_allowance(lease))
    }

    pub(crate) fn get(&self) -> Instant {
        self.base + Duration::from_nanos(self.after_base.load(Ordering::Acquire))
    }

    /// Moves the end (never before the first one: a renewal only ever extends).
    pub(crate) fn set(&self, end: Instant) {
        let after = end.saturating_duration_since(self.base).as_nanos();
        self.after_base
            .store(u64::try_from(after).unwrap_or(u64::MAX), Ordering::Release);
    }
}

impl HeldLock {
    /// True once the lease is known lost: reported by the watchdog or a release, or its end by
    /// this client's clock has passed (marked, and logged, the first time it is seen).
    pub(crate) fn is_lost(&self) -> bool {
        if self.lost.is_cancelled() {
            return true;
        }
        // After the release, only a lease that had ended before it was sent was lost.
        let seen_at = self.released_at.get().copied().unwrap_or_else(Instant::now);
        if seen_at >= self.lease_end.get() {
            Self::mark_lost(
                &self.key,
                self.fence,
                &self.lost,
                "the lease ran out before release (by this client's clock)",
            );
            return true;
        }
        false
    }

    /// Resolves when the lease is lost, or once the lock was released (a lease that ends after
    /// its release is not lost: nothing is marked or logged then).
    pub(crate) fn lost(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let held = Arc::clone(self);
        async move {
            // The end may move (a renewal) while we sleep: look again when it is reached.
            while !held.is_lost() && !held.released.is_cancelled() {
                tokio::select! {
                    () = held.lost.cancelled() => {}
                    () = held.released.cancelled() => {}
                    () = tokio::time::sleep_until(held.lease_end.get()) => {}
                }
            }
        }
    }

    /// Records that the release is being sent now (see `is_lost`).
    pub(crate) fn mark_released(&self) {
        let _ = self.released_at.set(Instant::now());
        self.released.cancel();
    }

    /// Stops the watchdog without waiting for it: for a release that cannot run (no runtime),
    /// so that nothing renews a lock nobody holds any more.
    pub(crate) fn abort_keeper(&self) {
        if let Some(keeper) = self
            .keeper
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            keeper.abort();
        }
    }

    /// Marks the lease lost (once), logging why.
    pub(crate) fn mark_lost(key: &str, fence: u64, lost: &CancellationToken, why: &str) {
        if !lost.is_cancelled() {
            crate::metrics::lease_lost(key);
            tracing::warn!(key, fence, reason = why, "lock lease lost");
            lost.cancel();
        }
    }

    /// Counts one more guard of this acquisition, for a call nested in its scope; false once its
    /// last guard has gone (the acquisition is being released). The caller wraps the lock in a
    /// guard at once, with no await in between, so a dropped future never leaves one counted.
    pub(crate) fn join(&self) -> bool {
        self.guards
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n > 0).then_some(n + 1)
            })
            .is_ok()
    }

    /// Leaves one guard; true when it was the last, so the caller releases in the engine.
    pub(crate) fn leave(&self) -> bool {
        self.guards.fetch_sub(1, Ordering::AcqRel) == 1
    }

    /// Keeps the lock at release until at least `until` (the later of this and any end asked
    /// for before).
    pub(crate) fn hold_until_at_least(&self, until: Instant) {
        let mut hold_until = self
            .hold_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *hold_until = Some(hold_until.map_or(until, |earlier| earlier.max(until)));
    }

    /// What a release of a lock whose lease was lost returns.
    pub(crate) fn lease_lost(&self) -> LockError {
        LockError::LeaseLost {
            key: self.key.clone(),
        }
    }
}

/// Whether the lease is lost, for `Debug`: a pure read that, unlike `is_lost`, neither marks the
/// loss nor logs it, so that printing a guard never changes what it does next.
pub(crate) fn looks_lost(held: &HeldLock) -> bool {
    let seen_at = held.released_at.get().copied().unwrap_or_else(Instant::now);
    held.lost.is_cancelled() || seen_at >= held.lease_end.get()
}
