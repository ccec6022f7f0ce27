//! The holder's view: `LockGuard`, proof of holding a lock (its fencing number, its lost signal,
//! its scope, its release, explicit or in the background on Drop), and `LockHandle`, a read-only
//! view of it. The acquisition's state is `shared::held`; the release itself, `protocol::release`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::error::LockError;
use crate::protocol::{lease_extension, release};
use crate::shared::held::{HeldLock, looks_lost};
use crate::shared::scopes;

/// A held lock. Release it with [`LockGuard::release`] to learn whether the lease held to the
/// end; dropping it (early return, panic, cancelled future) releases in the background.
///
/// ```
/// # async fn demo() -> Result<(), distlock::LockError> {
/// use std::time::Duration;
/// use distlock::{LockOptions, Locker};
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

    /// Resolves when the lease is lost, or once the lock was released (then [`LockGuard::is_lost`]
    /// says false: a lease that ends after its release was not lost). Never resolves while the
    /// lock is held and its lease lasts.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.held.lost()
    }

    /// A cheap handle with the same read-only view, e.g. for another task.
    pub fn handle(&self) -> LockHandle {
        LockHandle {
            held: Arc::clone(&self.held),
        }
    }

    /// Runs `fut` inside this lock's scope: visible to [`crate::current`], and an acquire of the
    /// same key through the same [`crate::Locker`] within `fut` re-enters this lock (see
    /// [`crate::Locker::acquire`]).
    pub async fn scope<F: Future>(&self, fut: F) -> F::Output {
        scopes::scope(Arc::clone(&self.held), fut).await
    }

    /// Makes a fixed lease last at least `lease` from now (ShedLock's `LockExtender`), for work
    /// that turned out longer than planned: one owner-checked renewal in the engine. A lease that
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
    /// [`crate::MAX_DURATION`], or once the lock was released (through another guard or
    /// handle of it, or [`crate::Locker::close`]).
    ///
    /// Cancel-safe: dropped while the renewal is in flight, the lease end this guard knows stays
    /// the earlier one.
    ///
    /// ```
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
        lease_extension::extend_by_holder(&self.held, lease).await
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
            release::release(held).await
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
        if held.leave() {
            release::release_dropped(held);
        }
    }
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
    pub(crate) fn new(held: Arc<HeldLock>) -> Self {
        LockHandle { held }
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

    /// Resolves when the lease is lost, or once the lock was released; see [`LockGuard::lost`].
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.held.lost()
    }

    /// Makes a fixed lease last at least `lease` from now; see [`LockGuard::extend`]. This is how
    /// the body of a `#[distributed_lock]` fn, which has no guard, extends its own lock.
    ///
    /// ```
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
        lease_extension::extend_by_holder(&self.held, lease).await
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
