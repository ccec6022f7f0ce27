//! `LockInfo`: a held lock as its backend records it.

use std::time::Duration;

/// A held lock as its backend records it, from [`Locker::inspect`](crate::Locker::inspect) or
/// [`Locker::force_release`](crate::Locker::force_release).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockInfo {
    /// The holder's label ([`LockerBuilder::holder_label`](crate::LockerBuilder::holder_label),
    /// `host:pid` by default); `None` when the holder recorded none.
    pub holder: Option<String>,
    /// How long the lease still runs unless the holder renews it (Redis: to the millisecond).
    pub lease_left: Duration,
    /// The fencing number of the holder's acquisition, as
    /// [`LockGuard::fencing_token`](crate::LockGuard::fencing_token) gives it to the holder;
    /// 0 for a lock taken by a version of distlock that stored none with the lock.
    pub fencing_token: u64,
}
