//! `LockGuard`: proof of holding a lock, with its fencing number, its lease keeper (watchdog or
//! expiry timer), its lost signal, and release (explicit, or in the background on Drop).

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::Released;
use crate::context;
use crate::error::{BackendError, LockError};
use crate::handoff::Handed;
use crate::lease_extension;
use crate::locker::LockerInner;
use crate::options::check_lease;
use crate::run_to_end::RunToEnd;

/// The shared state of one acquisition in Redis. The guards of calls nested in its scope that
/// re-entered it share it. While it lives, its locker's `close` can find it (`shutdown.rs`, which
/// also holds its `Drop`).
pub(crate) struct HeldLock {
    pub(crate) locker: Arc<LockerInner>,
    pub(crate) key: String,
    pub(crate) token: String,
    pub(crate) fence: u64,
    /// When `acquire` returned.
    pub(crate) acquired_at: Instant,
    /// The fixed lease it was taken with; `None`: the watchdog keeps it.
    pub(crate) lease: Option<Duration>,
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
    /// Set by whoever releases in the backend: the last guard, or `Locker::close`.
    pub(crate) release_claimed: AtomicBool,
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
        if Instant::now() >= self.lease_end.get() {
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

    /// Resolves when the lease is lost.
    pub(crate) fn lost(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let held = Arc::clone(self);
        async move {
            // The end may move (a renewal) while we sleep: look again when it is reached.
            while !held.is_lost() {
                tokio::select! {
                    () = held.lost.cancelled() => {}
                    () = tokio::time::sleep_until(held.lease_end.get()) => {}
                }
            }
        }
    }

    /// Marks the lease lost (once), logging why.
    pub(crate) fn mark_lost(key: &str, fence: u64, lost: &CancellationToken, why: &str) {
        if !lost.is_cancelled() {
            tracing::warn!(key, fence, reason = why, "lock lease lost");
            lost.cancel();
        }
    }

    /// One more guard of this acquisition, for a call nested in its scope; `None` once its last
    /// guard has gone (the acquisition is being released).
    pub(crate) fn enter(self: &Arc<Self>) -> Option<LockGuard> {
        self.guards
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n > 0).then_some(n + 1)
            })
            .ok()?;
        Some(LockGuard::new(Arc::clone(self)))
    }

    /// Leaves one guard; true when it was the last, so the caller releases in the backend.
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

    /// Stops the keeper and waits until it has stopped, so no renewal is sent after this returns.
    /// A release runs this to its end (see `RunToEnd`). Dropped mid-way all the same (its runtime
    /// shutting down), the keeper is aborted already and never polled again: at most a renewal
    /// already sent lands late, and a renewal extends only a lock its token still owns.
    async fn stop_keeper(&self) {
        let keeper = self
            .keeper
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(keeper) = keeper {
            keeper.abort();
            let _ = keeper.await;
        }
    }

    /// The release in the backend, done once by the last guard of this acquisition.
    pub(crate) async fn release_in_backend(&self) -> Result<(), LockError> {
        // `Locker::close` released it already, and marked it lost if a guard was still alive.
        if !self.claim_release() {
            return if self.is_lost() {
                Err(self.lease_lost())
            } else {
                Ok(())
            };
        }
        self.release_claimed().await
    }

    /// The release in the backend, by the one caller that claimed it.
    pub(crate) async fn release_claimed(&self) -> Result<(), LockError> {
        self.stop_keeper().await;
        let hold_until = *self
            .hold_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let keep = hold_until
            .map(|until| until.saturating_duration_since(Instant::now()))
            .filter(|rest| !rest.is_zero());
        let released = self
            .hand_over_or_release(keep)
            .await
            .map_err(|e| LockError::backend(Some(&self.key), e))?;
        match released {
            Released::Done if !self.is_lost() => {
                tracing::debug!(
                    key = %self.key,
                    fence = self.fence,
                    held = ?self.acquired_at.elapsed(),
                    kept_for = ?keep,
                    "lock released"
                );
                Ok(())
            }
            Released::Done => Err(self.lease_lost()),
            Released::NotOwner => {
                Self::mark_lost(
                    &self.key,
                    self.fence,
                    &self.lost,
                    "at release the lock had expired or belonged to another holder",
                );
                Err(self.lease_lost())
            }
        }
    }

    /// Passes the lock to the next task of this locker that waits for it, if there is one and
    /// the hand-overs in a row allow; otherwise releases it (or keeps it for `keep`).
    async fn hand_over_or_release(&self, keep: Option<Duration>) -> Result<Released, BackendError> {
        let locker = &self.locker;
        let next = match keep {
            None if self.handovers_in_a_row < locker.max_handovers_in_a_row
                && !locker.shutdown.is_closed() =>
            {
                locker.queues.next_in_line(&self.key)
            }
            _ => None,
        };
        let Some(next) = next else {
            return locker.backend.release(&self.key, &self.token, keep).await;
        };
        let sent_at = Instant::now();
        let handed = locker
            .backend
            .hand_over(&self.key, &self.token, &next.token, next.lease)
            .await;
        match handed {
            Ok(Some(fence)) => {
                let in_a_row = self.handovers_in_a_row + 1;
                tracing::debug!(key = %self.key, fence, in_a_row, "lock handed over to a waiting task");
                let handed = Handed::new(locker, &self.key, &next.token, fence, sent_at, in_a_row);
                next.hand(handed);
                Ok(Released::Done)
            }
            // `next` is dropped: its task learns that nothing was handed, and asks again.
            Ok(None) => Ok(Released::NotOwner),
            Err(error) => {
                // No answer: the lock may have passed to `next`, whose task is told nothing was
                // handed and asks again; so give it up on the task's behalf.
                locker.release_in_background(
                    self.key.clone(),
                    next.token.clone(),
                    "a hand-over that got no answer",
                );
                Err(error)
            }
        }
    }

    /// See [`LockGuard::extend`].
    async fn extend(&self, lease: Duration) -> Result<(), LockError> {
        check_lease("lease", lease).map_err(|reason| LockError::InvalidOptions {
            key: Some(self.key.clone()),
            reason,
        })?;
        if self.is_lost() {
            return Err(self.lease_lost());
        }
        if self.lease.is_none() {
            return Ok(());
        }
        lease_extension::extend(self, lease, "its holder").await
    }

    fn lease_lost(&self) -> LockError {
        LockError::LeaseLost {
            key: self.key.clone(),
        }
    }
}

/// A held lock. Release it with [`LockGuard::release`] to learn whether the lease held to the
/// end; dropping it (early return, panic, cancelled future) releases in the background.
///
/// ```
/// # async fn demo() -> Result<(), distlock_runtime::LockError> {
/// use std::time::Duration;
/// use distlock_runtime::{LockOptions, Locker};
///
/// let locker = Locker::in_memory();
/// let guard = locker.acquire("book:978-0", LockOptions::new().lease(Duration::from_secs(5))).await?;
/// let fence = guard.fencing_token(); // pass it to the store so stale writers are refused
/// assert!(fence > 0 && !guard.is_lost());
/// guard.release().await?; // Err(LeaseLost) if the lease ran out meanwhile
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard {
    held: Arc<HeldLock>,
    /// Set by `release`, so Drop does not release a second time.
    released: bool,
}

impl LockGuard {
    pub(crate) fn new(held: Arc<HeldLock>) -> Self {
        LockGuard {
            held,
            released: false,
        }
    }

    /// The key, as given to `acquire`.
    pub fn key(&self) -> &str {
        &self.held.key
    }

    /// The fencing number of this acquisition: strictly greater than every earlier acquisition's
    /// of the same key, even across a restart, a restore or a failover of the server (under the
    /// clock assumption in the crate docs). Give it to the store you write to, and have the store
    /// refuse any number not greater than the last one it accepted: then a holder that lost its
    /// lease (paused, partitioned) cannot overwrite a newer holder's work.
    pub fn fencing_token(&self) -> u64 {
        self.held.fence
    }

    /// True once the lease is known to be lost (expired, or taken by another holder).
    pub fn is_lost(&self) -> bool {
        self.held.is_lost()
    }

    /// Resolves when the lease is lost; never resolves while it holds.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.held.lost()
    }

    /// A cheap handle with the same read-only view, e.g. for another task.
    pub fn handle(&self) -> LockHandle {
        LockHandle {
            held: Arc::clone(&self.held),
        }
    }

    /// Makes a fixed lease last at least `lease` from now (ShedLock's `LockExtender`), for work
    /// that turned out longer than planned: one owner-checked renewal in the backend. A lease that
    /// already ends later is left as it is (never shortened).
    ///
    /// On a lock kept by the watchdog (taken without a fixed lease) there is nothing to extend:
    /// the watchdog renews it while the guard lives, so this only reports whether it still holds.
    ///
    /// Errors: [`LockError::LeaseLost`] when the lock is gone (expired, or taken by another
    /// holder): the guard is then marked lost, as [`LockGuard::is_lost`] says. A
    /// [`LockError::Backend`] error means no answer came: the lease may or may not have been
    /// extended, and the guard goes on counting with the lease it knew (the safe side).
    /// [`LockError::InvalidOptions`] for a lease outside [`crate::MIN_LEASE`] to
    /// [`crate::MAX_DURATION`].
    ///
    /// Cancel-safe: dropped while the renewal is in flight, the lease end this guard knows stays
    /// the earlier one.
    ///
    /// ```
    /// # use distlock_runtime as distlock; // what a user of the `distlock` facade writes
    /// # async fn demo() -> Result<(), distlock::LockError> {
    /// use std::time::Duration;
    /// use distlock::{LockOptions, Locker};
    ///
    /// let locker = Locker::in_memory();
    /// let guard = locker.acquire("import", LockOptions::new().lease(Duration::from_secs(60))).await?;
    /// // ... the import is larger than usual: keep the lock for 5 more minutes from now ...
    /// guard.extend(Duration::from_secs(300)).await?;
    /// guard.release().await?;
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn extend(&self, lease: Duration) -> Result<(), LockError> {
        self.held.extend(lease).await
    }

    /// Runs `fut` inside this lock's scope: visible to [`crate::current`], and an acquire of the
    /// same key through the same [`crate::Locker`] within `fut` re-enters this lock (see
    /// [`crate::Locker::acquire`]).
    pub async fn scope<F: Future>(&self, fut: F) -> F::Output {
        context::scope(self.handle(), fut).await
    }

    /// Releases the lock: deletes it in Redis if this is the last guard of its acquisition (the
    /// outermost call's, unless a nested call's guard outlives it) and it still owns it
    /// (or shortens it to what remains of `hold_at_least`), and stops the watchdog first.
    ///
    /// Returns [`LockError::LeaseLost`] when the lease was lost while held: work done under it may
    /// have overlapped another holder's. A [`LockError::Backend`] error means no answer came: the
    /// release may still have been applied late, or not at all, in which case the lock expires
    /// by its lease. Either way it is not this guard's any more.
    ///
    /// Cancel-safe: once polled, the release is finished even if this future is dropped at any
    /// await (an outer `timeout` or `select!`): the rest (stopping the watchdog, the release or
    /// hand-over script) runs in the background on the runtime, like the release of a dropped
    /// guard, and a hand-over under way still reaches the waiting task. Dropped before its first
    /// poll, it is a dropped guard. Only the outcome is lost: a failure in the background is
    /// logged at WARN.
    pub async fn release(mut self) -> Result<(), LockError> {
        self.released = true;
        let held = Arc::clone(&self.held);
        drop(self);
        if held.leave() {
            // Once begun, a release runs to its end even if this future is dropped: stopped
            // half-way it would leave the lock held to the end of its lease (watchdog stopped, no
            // script sent), or passed to a waiting task that is never told (hand-over sent, not
            // delivered).
            let runtime = held.locker.runtime.clone();
            let key = held.key.clone();
            let locker = Arc::clone(&held.locker);
            let release = locker
                .shutdown
                .track(async move { held.release_in_backend().await });
            RunToEnd::new(release, runtime, &key, "a release").await
        } else if held.is_lost() {
            Err(held.lease_lost())
        } else {
            Ok(())
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let held = Arc::clone(&self.held);
        if !held.leave() || held.is_release_claimed() {
            return;
        }
        // Never block or panic here: hand the release to the runtime. Without a runtime (dropped
        // after it shut down) the lease's expiry frees the lock.
        let handle = tokio::runtime::Handle::try_current()
            .ok()
            .or_else(|| held.locker.runtime.clone());
        let Some(handle) = handle else {
            tracing::warn!(key = %held.key, "lock guard dropped outside a runtime; it expires with its lease");
            return;
        };
        tracing::debug!(key = %held.key, fence = held.fence, "lock guard dropped without release; releasing in the background");
        let locker = Arc::clone(&held.locker);
        handle.spawn(locker.shutdown.track(async move {
            if let Err(error) = held.release_in_backend().await {
                tracing::warn!(key = %held.key, %error, "background release of a dropped lock guard failed");
            }
        }));
    }
}

/// Whether the lease is lost, for `Debug`: a pure read that, unlike `is_lost`, neither marks the
/// loss nor logs it, so that printing a guard never changes what it does next.
fn looks_lost(held: &HeldLock) -> bool {
    held.lost.is_cancelled() || Instant::now() >= held.lease_end.get()
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.held.key)
            .field("fencing_token", &self.held.fence)
            .field("lost", &looks_lost(&self.held))
            .finish()
    }
}

/// A read-only view of a held lock: what [`crate::current`] returns inside a locked body.
#[derive(Clone)]
pub struct LockHandle {
    held: Arc<HeldLock>,
}

impl LockHandle {
    pub(crate) fn held(&self) -> &Arc<HeldLock> {
        &self.held
    }

    /// The key, as given to `acquire`.
    pub fn key(&self) -> &str {
        &self.held.key
    }

    /// The acquisition's fencing number; see [`LockGuard::fencing_token`].
    pub fn fencing_token(&self) -> u64 {
        self.held.fence
    }

    /// True once the lease is known to be lost.
    pub fn is_lost(&self) -> bool {
        self.held.is_lost()
    }

    /// Resolves when the lease is lost.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.held.lost()
    }

    /// Makes a fixed lease last at least `lease` from now; see [`LockGuard::extend`]. This is how
    /// the body of a `#[distributed_lock]` fn, which has no guard, extends its own lock.
    ///
    /// ```
    /// # use distlock_runtime as distlock; // what a user of the `distlock` facade writes
    /// # async fn demo() -> Result<(), distlock::LockError> {
    /// use std::time::Duration;
    /// use distlock::{LockOptions, Locker};
    ///
    /// let locker = Locker::in_memory();
    /// let guard = locker.acquire("import", LockOptions::new().lease(Duration::from_secs(60))).await?;
    /// guard
    ///     .scope(async {
    ///         // ... deep inside the locked work, with no guard at hand ...
    ///         if let Some(lock) = distlock::current() {
    ///             lock.extend(Duration::from_secs(300)).await?;
    ///         }
    ///         Ok::<(), distlock::LockError>(())
    ///     })
    ///     .await?;
    /// guard.release().await?;
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn extend(&self, lease: Duration) -> Result<(), LockError> {
        self.held.extend(lease).await
    }
}

impl fmt::Debug for LockHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockHandle")
            .field("key", &self.held.key)
            .field("fencing_token", &self.held.fence)
            .field("lost", &looks_lost(&self.held))
            .finish()
    }
}
