//! `LockOptions`: how long to wait, how long to hold, how long to hold at least.

use std::time::Duration;

use crate::error::LockError;

/// How long `acquire` waits for a busy lock when no wait is given (Redisson's `waitTime` idiom).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// The shortest lease accepted: Redis expiries are in milliseconds.
pub const MIN_LEASE: Duration = Duration::from_millis(1);
/// The longest lease (and wait) accepted: anything longer is a unit mistake.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// How to take one lock: wait, lease (or the watchdog), hold at least.
///
/// ```
/// use std::time::Duration;
/// use distlock::LockOptions;
///
/// // Wait up to 10 s, hold for 5 s at most (no watchdog).
/// let flush = LockOptions::new().wait(Duration::from_secs(10)).lease(Duration::from_secs(5));
/// // Try once; keep others out for at least 50 s even if the job ends sooner (ShedLock's lockAtLeastFor).
/// let tick = LockOptions::new()
///     .wait(Duration::ZERO)
///     .lease(Duration::from_secs(300))
///     .hold_at_least(Duration::from_secs(50));
/// assert_eq!(tick.wait_time(), Duration::ZERO);
/// assert_eq!(flush.lease_time(), Some(Duration::from_secs(5)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockOptions {
    wait: Duration,
    lease: Option<Duration>,
    hold_at_least: Option<Duration>,
    replica_acks: ReplicaAcks,
}

/// Whether a lock waits for the replicas: as the locker says, not, or within a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplicaAcks {
    LockerDefault,
    Off,
    Within(Duration),
}

impl Default for LockOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl LockOptions {
    /// Wait up to [`DEFAULT_WAIT`], no fixed lease (the watchdog renews while the guard lives),
    /// no minimum hold.
    #[must_use]
    pub const fn new() -> Self {
        LockOptions {
            wait: DEFAULT_WAIT,
            lease: None,
            hold_at_least: None,
            replica_acks: ReplicaAcks::LockerDefault,
        }
    }

    /// How long to wait for a busy lock. `Duration::ZERO` tries exactly once.
    #[must_use = "LockOptions is Copy: this returns new options and leaves `self` unchanged"]
    pub const fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// A fixed lease: the lock expires this long after it was taken, whatever the holder does.
    /// Without it, the locker's watchdog keeps renewing the lock while the guard lives.
    #[must_use = "LockOptions is Copy: this returns new options and leaves `self` unchanged"]
    pub const fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Keep the lock at least this long after acquiring it: a release before then shortens the
    /// expiry to what remains instead of deleting (ShedLock's `lockAtLeastFor`), so a replica whose
    /// clock is late cannot run the same scheduled job again.
    #[must_use = "LockOptions is Copy: this returns new options and leaves `self` unchanged"]
    pub const fn hold_at_least(mut self, hold: Duration) -> Self {
        self.hold_at_least = Some(hold);
        self
    }

    /// Count this lock as taken (and each renewal as done) only once every replica connected to
    /// the Redis node that took it has acknowledged it, within `within`; fewer in time and the
    /// lock is given up again and the acquire fails ([`BackendError::is_not_replicated`]), so a
    /// failover right after cannot hand it to a second holder. Overrides the locker's
    /// [`LockerBuilder::replica_acks`](crate::LockerBuilder::replica_acks); costs about one
    /// replication round trip per step (see the README, "Cluster and Sentinel").
    ///
    /// [`BackendError::is_not_replicated`]: crate::BackendError::is_not_replicated
    #[must_use = "LockOptions is Copy: this returns new options and leaves `self` unchanged"]
    pub const fn replica_acks(mut self, within: Duration) -> Self {
        self.replica_acks = ReplicaAcks::Within(within);
        self
    }

    /// Do not wait for replicas for this lock, whatever the locker's default.
    #[must_use = "LockOptions is Copy: this returns new options and leaves `self` unchanged"]
    pub const fn without_replica_acks(mut self) -> Self {
        self.replica_acks = ReplicaAcks::Off;
        self
    }

    /// How long this lock's steps wait for replica acknowledgements (`None`: they do not), given
    /// the locker's default.
    pub(crate) fn replicas(&self, locker_default: Option<Duration>) -> Option<Duration> {
        match self.replica_acks {
            ReplicaAcks::LockerDefault => locker_default,
            ReplicaAcks::Off => None,
            ReplicaAcks::Within(within) => Some(within),
        }
    }

    /// The wait bound.
    pub const fn wait_time(&self) -> Duration {
        self.wait
    }

    /// The fixed lease, or `None` for the watchdog.
    pub const fn lease_time(&self) -> Option<Duration> {
        self.lease
    }

    /// The minimum hold, if any.
    pub const fn hold_at_least_time(&self) -> Option<Duration> {
        self.hold_at_least
    }

    pub(crate) fn validate(&self, key: &str) -> Result<(), LockError> {
        let invalid = |reason: String| LockError::InvalidOptions {
            key: Some(key.to_owned()),
            reason,
        };
        if self.wait > MAX_DURATION {
            return Err(invalid(format!(
                "wait {:?} is longer than a year; use a shorter wait",
                self.wait
            )));
        }
        if let Some(lease) = self.lease {
            check_lease("lease", lease).map_err(invalid)?;
        }
        if let ReplicaAcks::Within(within) = self.replica_acks {
            check_lease("replica_acks", within).map_err(invalid)?;
        }
        if let Some(hold) = self.hold_at_least {
            check_lease("hold_at_least", hold).map_err(invalid)?;
            if let Some(lease) = self.lease
                && hold > lease
            {
                return Err(invalid(format!(
                    "hold_at_least {hold:?} is longer than the lease {lease:?}; the lock cannot be \
                     held longer than its lease: shorten hold_at_least or lengthen the lease"
                )));
            }
        }
        Ok(())
    }
}

/// Checks a lease-like duration is within [`MIN_LEASE`, `MAX_DURATION`].
pub(crate) fn check_lease(what: &str, d: Duration) -> Result<(), String> {
    if d < MIN_LEASE {
        Err(format!(
            "{what} {d:?} is shorter than 1 ms, the resolution of a Redis expiry; use at least 1 ms"
        ))
    } else if d > MAX_DURATION {
        Err(format!(
            "{what} {d:?} is longer than a year; use a shorter {what}"
        ))
    } else {
        Ok(())
    }
}
