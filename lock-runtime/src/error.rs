//! `LockError`: one variant per thing a caller would handle differently.

use std::time::Duration;

/// Why a lock operation did not succeed.
///
/// Every message names the key where there is one, and says what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another holder kept the lock for the whole wait.
    #[error(
        "lock `{key}` was not acquired: another holder kept it for the whole wait ({waited:?}); \
         wait longer, or treat the work as already being done elsewhere"
    )]
    NotAcquired {
        /// The lock's key, as the caller gave it.
        key: String,
        /// How long the caller waited (monotonic clock).
        waited: Duration,
    },

    /// The lock expired or was taken by another holder while this holder still held the guard.
    /// Work done since then may have overlapped with another holder's: use the fencing token.
    #[error(
        "lease of lock `{key}` was lost: it expired or another holder took it while this guard \
         was alive; work done after the loss was not exclusive (guard writes with the fencing token, \
         or use a longer lease / the watchdog)"
    )]
    LeaseLost {
        /// The lock's key, as the caller gave it.
        key: String,
    },

    /// The backend failed: connection refused or lost, timeout, authentication, server error.
    #[error("lock backend error{}: {source}", key_suffix(.key))]
    Backend {
        /// The lock's key, when the failure happened while working on one.
        key: Option<String>,
        /// The underlying error.
        #[source]
        source: BackendError,
    },

    /// The key cannot be used as a lock key.
    #[error("invalid lock key {key:?}: {reason}")]
    InvalidKey {
        /// The offending key (cut to its first 64 characters when longer).
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The options or the locker configuration are out of range.
    #[error("invalid lock options{}: {reason}", key_suffix(.key))]
    InvalidOptions {
        /// The lock's key, when the options were given for one.
        key: Option<String>,
        /// What is wrong, and the allowed range.
        reason: String,
    },

    /// `#[distributed_lock]` without `locker = ...` ran before a default locker was installed.
    #[error(
        "no default locker is installed: call `distlock::install(Locker::connect(url).await?)` \
         once at start-up, or pass `locker = <expr>` to #[distributed_lock]"
    )]
    NoDefaultLocker,
}

fn key_suffix(key: &Option<String>) -> String {
    match key {
        Some(key) => format!(" for lock `{key}`"),
        None => String::new(),
    }
}

/// What went wrong below the lock: the network, the server, or a timeout.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// An error reported by the Redis client (connection, protocol, server reply).
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// The server did not answer within the configured time.
    #[error("no answer from the server within {0:?} ({1})")]
    Timeout(Duration, &'static str),
    /// The operating system's random generator failed to give an owner token.
    #[error("the OS random generator failed: {0}")]
    Random(getrandom::Error),
    /// The lock's name in Redis holds a value that is not a distlock lock (someone else wrote it,
    /// or it has no expiry), so waiting for its release could wait forever.
    #[error(
        "`{0}` holds a value that is not a distlock lock (another program wrote it, or it has no \
         expiry), so it may never be released; delete it if it is stale, or give the locker \
         another key prefix"
    )]
    NotALock(String),
    /// The server answered something the lock scripts never return.
    #[error("unexpected reply from the server: {0}")]
    UnexpectedReply(String),
}

impl LockError {
    pub(crate) fn backend(key: Option<&str>, source: impl Into<BackendError>) -> Self {
        LockError::Backend {
            key: key.map(str::to_owned),
            source: source.into(),
        }
    }

    /// True for [`LockError::NotAcquired`]: the lock was busy for the whole wait.
    pub fn is_not_acquired(&self) -> bool {
        matches!(self, LockError::NotAcquired { .. })
    }

    /// True for [`LockError::LeaseLost`].
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, LockError::LeaseLost { .. })
    }
}
