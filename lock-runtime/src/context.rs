//! The holder's view from inside a locked call: [`current`], the innermost lock whose scope the
//! running call is in (the scopes themselves are `shared::scopes`).

use crate::guard::LockHandle;
use crate::shared::scopes;

/// The innermost lock held by the running `#[distributed_lock]` body (or by a
/// [`crate::LockGuard::scope`]), if any.
///
/// Use it to pass the fencing token to the store the body writes to:
///
/// ```
/// # async fn demo() -> Result<(), distlock::LockError> {
/// use distlock::{current, LockOptions, Locker};
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
    scopes::innermost().map(LockHandle::new)
}
