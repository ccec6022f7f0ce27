//! What the current task holds: the innermost lock for `current()`, and the owner identity that
//! makes a second acquire of a held key re-entrant.
//!
//! Both are per task, never per thread: tokio moves tasks between threads.

use std::future::Future;

use crate::guard::LockHandle;

tokio::task_local! {
    static CURRENT: LockHandle;
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
    CURRENT.try_with(LockHandle::clone).ok()
}

/// Runs `fut` with `handle` as the task's current lock.
pub(crate) async fn scope<F: Future>(handle: LockHandle, fut: F) -> F::Output {
    CURRENT.scope(handle, fut).await
}

/// Who holds a lock inside this process, for reentrancy: the tokio task, or the thread for code
/// that runs outside any task (the future given to `Runtime::block_on`, `#[tokio::main]`,
/// `#[tokio::test]`), which never leaves its thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Owner {
    Task(tokio::task::Id),
    Thread(std::thread::ThreadId),
}

impl Owner {
    pub(crate) fn current() -> Owner {
        match tokio::task::try_id() {
            Some(id) => Owner::Task(id),
            None => Owner::Thread(std::thread::current().id()),
        }
    }
}
