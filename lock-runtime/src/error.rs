//! `LockError`: one variant per thing a caller would handle differently.

use std::fmt;
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
    /// [`BackendError`]'s predicates tell which.
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

    /// The locker was closed ([`crate::Locker::close`]): it takes no more locks, and an acquire
    /// still waiting when it was closed ends with this.
    #[error(
        "lock `{key}` was not acquired: its locker was closed (`Locker::close`); take locks \
         before closing it, or make a new locker"
    )]
    Closed {
        /// The lock's key, as the caller gave it.
        key: String,
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
///
/// Opaque, so that the Redis client and the other crates below it can change without changing
/// this API. The underlying error, when there is one, is reachable through
/// [`source()`](std::error::Error::source); the predicates say what a caller would decide on.
///
/// ```
/// use distlock::{LockError, Locker, LockOptions};
///
/// # async fn demo(locker: Locker) {
/// match locker.acquire("nightly-report", LockOptions::new()).await {
///     Ok(guard) => { /* ... */ }
///     Err(LockError::Backend { source, .. }) if source.is_timeout() || source.is_connection() => {
///         // Transient: the server is slow or unreachable; try again later.
///     }
///     Err(e) => eprintln!("{e}"),
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct BackendError {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Redis(redis::RedisError),
    Timeout {
        after: Duration,
        what: &'static str,
    },
    Random(getrandom::Error),
    NotALock(String),
    /// The message, and the server's own error when there is one (its code, its source).
    Refused(String, Option<Box<BackendError>>),
    UnexpectedReply(String),
    NotReplicated {
        what: &'static str,
        acknowledged: u64,
        connected: u64,
        within: Duration,
    },
}

impl BackendError {
    /// An error of the Redis client: connection, protocol, or the server's own refusal.
    pub(crate) fn redis(e: redis::RedisError) -> Self {
        BackendError {
            kind: Kind::Redis(e),
        }
    }

    /// No answer within `after` while `what` (e.g. "connecting", "acquire").
    pub(crate) fn timeout(after: Duration, what: &'static str) -> Self {
        BackendError {
            kind: Kind::Timeout { after, what },
        }
    }

    /// The OS random generator failed to give an owner token.
    pub(crate) fn random(e: getrandom::Error) -> Self {
        BackendError {
            kind: Kind::Random(e),
        }
    }

    /// The lock's name in Redis holds a value that is not a distlock lock (another program wrote
    /// it, or it has no expiry).
    pub(crate) fn not_a_lock(name: String) -> Self {
        BackendError {
            kind: Kind::NotALock(name),
        }
    }

    /// The server refuses something every lock needs: a connection (`maxclients`), the scripts
    /// or the wake-up channels (ACL). The message quotes the server and says how to grant it.
    pub(crate) fn refused(message: String, cause: Option<BackendError>) -> Self {
        BackendError {
            kind: Kind::Refused(message, cause.map(Box::new)),
        }
    }

    /// The server answered something the lock scripts never return.
    pub(crate) fn unexpected_reply(what: String) -> Self {
        BackendError {
            kind: Kind::UnexpectedReply(what),
        }
    }

    /// A write (`what`: "the lock", "the renewal") reached fewer replicas than were connected,
    /// within the replica acknowledgement bound.
    pub(crate) fn not_replicated(
        what: &'static str,
        acknowledged: u64,
        connected: u64,
        within: Duration,
    ) -> Self {
        BackendError {
            kind: Kind::NotReplicated {
                what,
                acknowledged,
                connected,
                within,
            },
        }
    }

    /// True when replica acknowledgement was asked for ([`LockOptions::replica_acks`],
    /// [`LockerBuilder::replica_acks`]) and fewer of the connected replicas than all acknowledged
    /// the write in time. An acquisition that ends so was given up again (the lock is not held);
    /// a watchdog renewal that ends so is retried like any failed renewal, and
    /// [`LockGuard::extend`](crate::LockGuard::extend) returns it.
    ///
    /// [`LockOptions::replica_acks`]: crate::LockOptions::replica_acks
    /// [`LockerBuilder::replica_acks`]: crate::LockerBuilder::replica_acks
    pub fn is_not_replicated(&self) -> bool {
        matches!(self.kind, Kind::NotReplicated { .. })
    }

    /// True when no answer came within the locker's connect or response timeout: the server is
    /// slow, stalled or unreachable. The operation may still have been applied late.
    pub fn is_timeout(&self) -> bool {
        match &self.kind {
            Kind::Timeout { .. } => true,
            Kind::Redis(e) => e.is_timeout(),
            _ => false,
        }
    }

    /// True when the server could not be reached or the connection broke (refused, reset,
    /// closed, name resolution, TLS): worth retrying once the network or server is back.
    pub fn is_connection(&self) -> bool {
        match &self.kind {
            Kind::Redis(e) => !e.is_timeout() && (e.is_io_error() || e.is_connection_dropped()),
            _ => false,
        }
    }

    /// True when the server answered with an error instead of doing the operation: a wrong
    /// password, missing ACL rights, out of memory, a read-only replica, a server still loading
    /// its data. The server's text is in the message and [`server_code`](Self::server_code)
    /// names it: most need a change of configuration (`WRONGPASS`, `NOPERM`, `OOM`), a few pass
    /// by themselves (`LOADING`, `READONLY` during a failover).
    pub fn is_server_refusal(&self) -> bool {
        match &self.kind {
            Kind::Refused(..) => true,
            Kind::Redis(e) => {
                matches!(
                    e.kind(),
                    redis::ErrorKind::Server(_)
                        | redis::ErrorKind::Extension
                        | redis::ErrorKind::AuthenticationFailed
                )
            }
            _ => false,
        }
    }

    /// The error code the server answered with (`"NOPERM"`, `"OOM"`, `"READONLY"`, `"ERR"`,
    /// ...), when it refused.
    pub fn server_code(&self) -> Option<&str> {
        match &self.kind {
            Kind::Redis(e) => e.code(),
            Kind::Refused(_, Some(cause)) => cause.server_code(),
            _ => None,
        }
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Redis(e) => e.fmt(f),
            Kind::Timeout { after, what } => {
                write!(f, "no answer from the server within {after:?} ({what})")
            }
            Kind::Random(e) => write!(f, "the OS random generator failed: {e}"),
            Kind::NotALock(name) => write!(
                f,
                "`{name}` holds a value that is not a distlock lock (another program wrote it, or \
                 it has no expiry), so it may never be released; delete it if it is stale, or give \
                 the locker another key prefix"
            ),
            Kind::Refused(message, _) => f.write_str(message),
            Kind::UnexpectedReply(what) => write!(f, "unexpected reply from the server: {what}"),
            Kind::NotReplicated {
                what,
                acknowledged,
                connected,
                within,
            } => write!(
                f,
                "only {acknowledged} of the {connected} replicas online at the primary \
                 acknowledged {what} within {within:?}; a failover now could lose it, so it does \
                 not count{}: check the replicas' links and lag, or allow longer with \
                 `replica_acks`",
                if *what == "the lock" {
                    " (the lock was given up again)"
                } else {
                    ""
                }
            ),
        }
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::Redis(e) => Some(e),
            Kind::Random(e) => Some(e),
            Kind::Refused(_, Some(cause)) => cause.source(),
            Kind::Timeout { .. }
            | Kind::NotALock(_)
            | Kind::Refused(_, None)
            | Kind::UnexpectedReply(_)
            | Kind::NotReplicated { .. } => None,
        }
    }
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

/// For fns that return `std::io::Result<T>` (the orphan rule keeps users from writing this
/// impl). The `LockError` stays inside: `get_ref()`/`into_inner()` and `downcast::<LockError>()`
/// give it back, and the message is its message.
///
/// The kinds:
/// - `NotAcquired` is [`ResourceBusy`](std::io::ErrorKind::ResourceBusy) (EBUSY: someone else
///   holds it). Not `WouldBlock`, which non-blocking I/O reads as "not ready yet, poll again"
///   (tokio's readiness code does), so a busy lock could turn into a silent wait; not
///   `TimedOut`, kept for a server that did not answer, which calls for a different remedy.
/// - `LeaseLost` is [`Other`](std::io::ErrorKind::Other): no kind means "exclusivity was lost",
///   and `Interrupted`, the nearest, is retried automatically by std's I/O helpers.
/// - `Backend` is [`Other`](std::io::ErrorKind::Other): the Redis client does not expose the
///   I/O error under it through `source()`; the backend error stays reachable through the
///   `LockError` inside.
/// - `InvalidKey` and `InvalidOptions` are [`InvalidInput`](std::io::ErrorKind::InvalidInput).
/// - `Closed` is [`Other`](std::io::ErrorKind::Other): the program is shutting down its locks;
///   no kind says that, and `NotConnected` would send a reader looking for a network fault.
/// - `NoDefaultLocker` is [`Other`](std::io::ErrorKind::Other): a set-up mistake, which
///   `NotFound` would disguise as a missing resource (a web framework would answer 404).
///
/// ```
/// use std::io;
/// use std::time::Duration;
///
/// use distlock::LockError;
///
/// let busy = LockError::NotAcquired { key: "report".into(), waited: Duration::from_secs(10) };
/// let error = io::Error::from(busy);
/// assert_eq!(error.kind(), io::ErrorKind::ResourceBusy);
/// let inner = error.get_ref().and_then(|e| e.downcast_ref::<LockError>());
/// assert!(inner.is_some_and(LockError::is_not_acquired));
/// ```
impl From<LockError> for std::io::Error {
    fn from(error: LockError) -> Self {
        use std::io::ErrorKind;
        let kind = match &error {
            LockError::NotAcquired { .. } => ErrorKind::ResourceBusy,
            LockError::LeaseLost { .. }
            | LockError::Backend { .. }
            | LockError::Closed { .. }
            | LockError::NoDefaultLocker => ErrorKind::Other,
            LockError::InvalidKey { .. } | LockError::InvalidOptions { .. } => {
                ErrorKind::InvalidInput
            }
        };
        std::io::Error::new(kind, error)
    }
}

#[cfg(test)]
mod io_error_tests {
    use std::io::{self, ErrorKind};
    use std::time::Duration;

    use super::LockError;

    fn kind(error: LockError) -> ErrorKind {
        io::Error::from(error).kind()
    }

    #[test]
    fn each_variant_has_its_kind() {
        let key = || "k".to_string();
        assert_eq!(
            kind(LockError::NotAcquired {
                key: key(),
                waited: Duration::ZERO
            }),
            ErrorKind::ResourceBusy
        );
        assert_eq!(kind(LockError::LeaseLost { key: key() }), ErrorKind::Other);
        assert_eq!(
            kind(LockError::InvalidKey {
                key: key(),
                reason: "empty"
            }),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            kind(LockError::InvalidOptions {
                key: None,
                reason: "zero".into()
            }),
            ErrorKind::InvalidInput
        );
        assert_eq!(kind(LockError::Closed { key: key() }), ErrorKind::Other);
        assert_eq!(kind(LockError::NoDefaultLocker), ErrorKind::Other);
    }

    #[test]
    fn the_lock_error_stays_inside() {
        let error = io::Error::from(LockError::LeaseLost { key: "k".into() });
        assert!(error.to_string().contains("lease of lock `k` was lost"));
        let inner = error
            .into_inner()
            .and_then(|e| e.downcast::<LockError>().ok());
        assert!(inner.is_some_and(|e| e.is_lease_lost()));
    }
}
