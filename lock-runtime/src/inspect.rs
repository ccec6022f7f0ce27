//! What operators need: who holds a lock, and taking away a lock whose holder is stuck.

use crate::error::LockError;
use crate::lock_info::LockInfo;
use crate::locker::Locker;
use crate::protocol::acquire::validate_key;

impl Locker {
    /// Who holds `key`, for how long still, and with which fencing number; `Ok(None)` when it is
    /// free. Reads only (one round trip): the holder, its lease and any waiter are untouched.
    ///
    /// A value at the lock's name that distlock did not write (or one without expiry) is
    /// [`LockError::Backend`], as for [`Locker::acquire`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), distlock::LockError> {
    /// use std::time::Duration;
    /// use distlock::{LockOptions, Locker};
    ///
    /// let locker = Locker::in_memory_builder().holder_label("billing-7").build().await?;
    /// let guard = locker.acquire("ranking", LockOptions::new().lease(Duration::from_secs(5))).await?;
    /// let info = locker.inspect("ranking").await?.expect("held");
    /// assert_eq!(info.holder.as_deref(), Some("billing-7"));
    /// assert_eq!(info.fencing_token, guard.fencing_token());
    /// assert!(info.lease_left <= Duration::from_secs(5));
    /// guard.release().await?;
    /// assert_eq!(locker.inspect("ranking").await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn inspect(&self, key: impl AsRef<str>) -> Result<Option<LockInfo>, LockError> {
        let key = key.as_ref();
        validate_key(key)?;
        self.shared
            .engine
            .inspect(key)
            .await
            .map_err(|e| LockError::backend(Some(key), e))
    }

    /// Deletes `key`'s lock whoever holds it, for a holder that is stuck or gone while its lease
    /// keeps being renewed (or is too long to wait for). Waiters are woken as by a release. Logged
    /// at WARN with the holder's label and fencing number.
    ///
    /// The holder, if it still runs, is not told at once: its next renewal (watchdog) finds the
    /// lock gone and reports the lease lost ([`LockGuard::lost`](crate::LockGuard::lost)), and its
    /// release returns [`LockError::LeaseLost`]. Until then it may still work as if it held the
    /// lock, next to the next holder: only the fencing token makes its late writes harmless.
    ///
    /// Returns what was removed, or `None` when the lock was free. A value distlock did not
    /// write (or one without expiry) is left alone and reported as [`LockError::Backend`].
    pub async fn force_release(&self, key: impl AsRef<str>) -> Result<Option<LockInfo>, LockError> {
        let key = key.as_ref();
        validate_key(key)?;
        let removed = self
            .shared
            .engine
            .force_release(key)
            .await
            .map_err(|e| LockError::backend(Some(key), e))?;
        if let Some(info) = &removed {
            tracing::warn!(
                key,
                holder = info.holder.as_deref().unwrap_or("(none recorded)"),
                fence = info.fencing_token,
                lease_left = ?info.lease_left,
                "lock force-released: its holder, if alive, loses its lease"
            );
        }
        Ok(removed)
    }
}
