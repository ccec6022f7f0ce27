//! The locks the running call is inside of: the scopes opened by `#[distributed_lock]` bodies and
//! [`crate::LockGuard::scope`], innermost first. `current()` reads the innermost; an acquire of a
//! key that an enclosing scope holds re-enters it (see `reentry`).
//!
//! The scopes are task-local and follow the nesting of futures, not tasks or threads: a future
//! joined next to a locked body (`join!`, `select!`) is outside its scope, and a task spawned
//! from inside starts outside every scope.

use std::future::Future;
use std::sync::Arc;

use crate::guard::{HeldLock, LockHandle};
use crate::locker::LockerInner;

tokio::task_local! {
    static CURRENT: Arc<Scope>;
}

/// One open scope and the scopes around it: an immutable chain, so a nested scope shares its
/// outer ones instead of copying them.
struct Scope {
    handle: LockHandle,
    outer: Option<Arc<Scope>>,
}

/// The innermost lock held by the running `#[distributed_lock]` body (or by a
/// [`crate::LockGuard::scope`]), if any.
///
/// Use it to pass the fencing token to the store the body writes to:
///
/// ```
/// # async fn demo() -> Result<(), distlock_runtime::LockError> {
/// use distlock_runtime::{current, LockOptions, Locker};
/// let locker = Locker::in_memory();
/// let guard = locker.acquire("ranking", LockOptions::new()).await?;
/// let fence = guard
///     .scope(async { current().map(|lock| lock.fencing_token()) })
///     .await;
/// assert_eq!(fence, Some(guard.fencing_token()));
/// guard.release().await
/// # }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
pub fn current() -> Option<LockHandle> {
    CURRENT.try_with(|scope| scope.handle.clone()).ok()
}

/// Runs `fut` inside the scope of `handle`'s lock, nested in the scopes it is polled in.
pub(crate) async fn scope<F: Future>(handle: LockHandle, fut: F) -> F::Output {
    let outer = CURRENT.try_with(Arc::clone).ok();
    CURRENT.scope(Arc::new(Scope { handle, outer }), fut).await
}

/// The acquisition of `key` through `locker` that the running call is inside of, innermost first.
pub(crate) fn enclosing(locker: &Arc<LockerInner>, key: &str) -> Option<Arc<HeldLock>> {
    CURRENT
        .try_with(|innermost| {
            let mut scope = Some(innermost);
            while let Some(open) = scope {
                let held = open.handle.held();
                if Arc::ptr_eq(&held.locker, locker) && held.key == key {
                    return Some(Arc::clone(held));
                }
                scope = open.outer.as_ref();
            }
            None
        })
        .ok()
        .flatten()
}
