//! `Locker`: the cheap-clone handle users hold, its builder, and the installed default locker.
//! What an acquire does is `protocol::acquire`; the state clones share is `shared::Shared`.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use crate::engine::Engine;
use crate::engine::memory::MemoryEngine;
use crate::engine::redis::topology;
use crate::engine::redis::{RedisEngine, RedisSettings};
use crate::error::LockError;
use crate::guard::LockGuard;
use crate::holder::{check_holder_label, default_holder_label};
use crate::options::{LockOptions, MAX_DURATION, check_lease};
use crate::protocol::acquire;
use crate::shared::Shared;
use crate::shared::queues::Queues;

/// The key prefix in Redis when none is set.
pub const DEFAULT_KEY_PREFIX: &str = "lock:";
/// The lease the watchdog keeps renewing when a lock is taken without a fixed lease (Redisson's
/// `lockWatchdogTimeout`): how long a crashed holder keeps others out.
pub const DEFAULT_WATCHDOG_LEASE: Duration = Duration::from_secs(30);
/// How long connecting (TCP, TLS, AUTH, SELECT) may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one command may wait for its answer.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the Redis wake-up subscriber connection is checked with a PING; a PING not answered
/// by the next one ends the connection (it is made again and its channels resubscribed). So a
/// half-open subscriber connection is noticed within twice this; see
/// [`LockerBuilder::subscriber_health_check`].
pub const DEFAULT_SUBSCRIBER_HEALTH_CHECK: Duration = Duration::from_secs(1);

/// How many times in a row a release may pass the lock straight to a waiting task of the same
/// locker before it releases for everyone, so that waiters in other processes get a chance at
/// least every fifth section; see [`LockerBuilder::max_handovers_in_a_row`].
pub const DEFAULT_MAX_HANDOVERS_IN_A_ROW: u32 = 4;

/// Lock-takers' handle on one backend. Cheap to clone; clones share the connections.
///
/// ```
/// use std::time::Duration;
/// use distlock::{LockError, LockOptions, Locker};
///
/// #[tokio::main]
/// async fn main() -> Result<(), LockError> {
///     // `Locker::connect("redis://127.0.0.1:6379/0").await?` for Redis; in memory here, so
///     // the example runs as it is.
///     let locker = Locker::in_memory();
///     let options = LockOptions::new().wait(Duration::from_secs(10)).lease(Duration::from_secs(5));
///     let guard = locker.acquire("ranking", options).await?;
///     // ... flush the ranking ...
///     guard.release().await
/// }
/// ```
#[derive(Clone)]
pub struct Locker {
    pub(crate) shared: Arc<Shared>,
}

impl Locker {
    /// Connects with the default settings; the URL says to what:
    /// - one server: `redis://[user:password@]host[:port][/db]`, `rediss://...` (TLS),
    ///   `redis+unix:///path/to/socket`;
    /// - a Redis Cluster: `redis+cluster://[user:password@]host:port,host:port` (some of its
    ///   nodes; `rediss+cluster://` for TLS);
    /// - a primary under Sentinel:
    ///   `redis+sentinel://[user:password@]host:26379,host:26379/<master name>[/db]` (the
    ///   user and password are the primary's; `?sentinel_username=..&sentinel_password=..` the
    ///   sentinels'; `rediss+sentinel://` for TLS).
    pub async fn connect(url: &str) -> Result<Locker, LockError> {
        Locker::builder(url).build().await
    }

    /// An in-process locker with the same semantics (tokens, leases, watchdog, fencing,
    /// reentrancy, wake-ups), for unit tests and single-process applications.
    pub fn in_memory() -> Locker {
        Locker::from_engine(
            Arc::new(MemoryEngine::default()),
            DEFAULT_WATCHDOG_LEASE,
            DEFAULT_WATCHDOG_LEASE / 3,
            DEFAULT_MAX_HANDOVERS_IN_A_ROW,
            None,
        )
    }

    /// Settings for a Redis locker: key prefix, watchdog lease, renewal interval, timeouts.
    ///
    /// `build()` connects, so this example needs a Redis server and is only compiled:
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), distlock::LockError> {
    /// use std::time::Duration;
    /// let locker = distlock::Locker::builder("redis://:secret@cache:6379/2")
    ///     .key_prefix("billing:lock:")
    ///     .watchdog_lease(Duration::from_secs(10))
    ///     .connect_timeout(Duration::from_secs(2))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[must_use = "a builder does nothing until `.build()` is awaited"]
    pub fn builder(url: impl Into<String>) -> LockerBuilder {
        LockerBuilder::new(Target::Redis(url.into()))
    }

    /// Settings for a locker on a Redis Cluster, given some of its nodes (`host:port` each; the
    /// client learns the rest). The same as [`Locker::builder`] with
    /// `redis+cluster://host:port,host:port`; for a password or TLS, use that URL form.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), distlock::LockError> {
    /// let locker = distlock::Locker::cluster_builder(["10.0.0.1:7000", "10.0.0.2:7000"])
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[must_use = "a builder does nothing until `.build()` is awaited"]
    pub fn cluster_builder<I, S>(nodes: I) -> LockerBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        LockerBuilder::new(Target::Cluster(nodes.into_iter().map(Into::into).collect()))
    }

    /// Settings for a locker on the primary that `sentinels` (`host:port` each) know as
    /// `master`. The same as [`Locker::builder`] with
    /// `redis+sentinel://host:26379,host:26379/<master>`; for passwords or TLS, use that URL form.
    #[must_use = "a builder does nothing until `.build()` is awaited"]
    pub fn sentinel_builder<I, S>(sentinels: I, master: impl Into<String>) -> LockerBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        LockerBuilder::new(Target::Sentinel {
            sentinels: sentinels.into_iter().map(Into::into).collect(),
            master: master.into(),
        })
    }

    /// The same settings for an in-process locker (only the watchdog settings apply).
    #[must_use = "a builder does nothing until `.build()` is awaited"]
    pub fn in_memory_builder() -> LockerBuilder {
        LockerBuilder::new(Target::Memory)
    }

    fn from_engine(
        engine: Arc<dyn Engine>,
        watchdog_lease: Duration,
        renewal_interval: Duration,
        max_handovers_in_a_row: u32,
        replica_acks: Option<Duration>,
    ) -> Self {
        // An engine that cannot hand over gets plain releases only.
        let max_handovers_in_a_row = if engine.supports_hand_over() {
            max_handovers_in_a_row
        } else {
            0
        };
        Locker {
            shared: Arc::new(Shared {
                engine,
                watchdog_lease,
                renewal_interval,
                runtime: tokio::runtime::Handle::try_current().ok(),
                queues: Queues::default(),
                max_handovers_in_a_row,
                replica_acks,
                shutdown: Default::default(),
            }),
        }
    }

    /// Takes the lock `key`, waiting up to `options`' wait for a holder to release it.
    ///
    /// - Uncontended: one round trip. Busy: the caller subscribes to the lock's release channel,
    ///   retries once, then sleeps until a release message or the holder's expiry (no polling).
    ///   While its subscription does not work (the subscriber connection is down or stalled), it
    ///   retries every [`crate::FALLBACK_RETRY_INTERVAL`] instead.
    /// - Re-entrant by call nesting: inside the scope of a lock of this locker (the body of a
    ///   `#[distributed_lock]` fn, or [`LockGuard::scope`]), an acquire of the same key joins that
    ///   lock at once, with no round trip; only the last guard of the acquisition releases in
    ///   Redis. Anywhere else the caller is a caller like any other and waits, even a future
    ///   joined next to the holder in the same task (`join!`, `join_all`, `select!`). A guard
    ///   moved to another task takes its ownership with it; a task spawned inside a scope starts
    ///   outside it. A lock whose lease was lost is taken afresh, not re-entered.
    /// - A re-entry never gets less protection than it asked for. Under a watchdog lock any
    ///   options re-enter. Under a fixed lease, a fixed lease that would end later extends the
    ///   lock (one owner-checked renewal; [`LockError::LeaseLost`] if it is gone), and asking
    ///   for the watchdog is [`LockError::InvalidOptions`]: give the outer call the watchdog, or
    ///   the nested call a fixed lease. `hold_at_least` keeps the lock until the later of the
    ///   ends asked for.
    /// - Cancel-safe: dropping the returned future never leaves the lock held.
    ///
    /// - Bounded: returns within the wait, or within one response timeout when that is longer
    ///   (the first attempt needs an answer, even with a wait of zero); after the first attempt
    ///   nothing waits past the wait, not even a request that a stalled network swallowed.
    ///
    /// Errors: [`LockError::NotAcquired`] after the wait, [`LockError::Backend`] at once on a
    /// connection or server fault, [`LockError::InvalidKey`] / [`LockError::InvalidOptions`],
    /// [`LockError::Closed`] once [`Locker::close`] was called (also for an acquire still waiting
    /// then).
    pub async fn acquire(
        &self,
        key: impl AsRef<str>,
        options: LockOptions,
    ) -> Result<LockGuard, LockError> {
        let key = key.as_ref();
        let shutdown = &self.shared.shutdown;
        let closed = || LockError::Closed {
            key: key.to_owned(),
        };
        if shutdown.is_closed() {
            return Err(closed());
        }
        // An acquire dropped mid-way leaves nothing held (it is cancel-safe), so closing may cut
        // a wait short.
        let guard = tokio::select! {
            biased;
            () = shutdown.closed.cancelled() => return Err(closed()),
            acquired = acquire::acquire(&self.shared, key, options) => LockGuard::new(acquired?),
        };
        if shutdown.is_closed() {
            // Taken while `close` ran: dropping the guard releases it, and `close` waits for that.
            drop(guard);
            return Err(closed());
        }
        Ok(guard)
    }

    /// Takes the lock `key` if it is free, with one attempt and no wait (tokio's `try_lock`):
    /// `Ok(None)` when another holder has it. `options` give the lease (or the watchdog) and
    /// `hold_at_least`; their wait is not used. Like [`Locker::acquire`] otherwise: re-entrant by
    /// call nesting, cancel-safe.
    ///
    /// Errors are real errors only, never "busy": [`LockError::Backend`],
    /// [`LockError::InvalidKey`] / [`LockError::InvalidOptions`], [`LockError::LeaseLost`] (a
    /// nested call that had to extend the enclosing lock found it gone), [`LockError::Closed`].
    ///
    /// ```
    /// # async fn demo() -> Result<(), distlock::LockError> {
    /// use std::time::Duration;
    /// use distlock::{LockOptions, Locker};
    ///
    /// let locker = Locker::in_memory();
    /// let lease = LockOptions::new().lease(Duration::from_secs(30));
    /// let Some(guard) = locker.try_acquire("nightly-report", lease).await? else {
    ///     return Ok(()); // another replica runs it
    /// };
    /// assert!(locker.try_acquire("nightly-report", lease).await?.is_none()); // busy, not an error
    /// // ... write the report ...
    /// guard.release().await?;
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn try_acquire(
        &self,
        key: impl AsRef<str>,
        options: LockOptions,
    ) -> Result<Option<LockGuard>, LockError> {
        // A zero wait is exactly one attempt (see `acquire`): busy is then `NotAcquired`.
        match self.acquire(key, options.wait(Duration::ZERO)).await {
            Ok(guard) => Ok(Some(guard)),
            Err(LockError::NotAcquired { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Releases every lock this locker holds, waits for the releases running in the background,
    /// and stops its watchdogs and connections; call it before the program exits.
    ///
    /// Without it, a guard dropped late in `main` (or still alive when `main` returns) may never
    /// be released: its release runs in a task, and a runtime that is shutting down drops that
    /// task before it has run. The lock then stays held until its lease runs out: the watchdog
    /// lease ([`DEFAULT_WATCHDOG_LEASE`] by default), or the fixed lease, so the next run of a cron
    /// job gets [`LockError::NotAcquired`].
    ///
    /// It closes every clone of this locker. Afterwards:
    /// - [`Locker::acquire`] and [`Locker::try_acquire`] return [`LockError::Closed`], and so do
    ///   acquires that were waiting when it was called (they stop waiting);
    /// - a guard that was still alive is released and marked lost (its [`LockGuard::lost`]
    ///   resolves, its [`LockGuard::release`] returns [`LockError::LeaseLost`]): its work is not
    ///   exclusive any more. Release guards first to learn whether their leases held.
    ///
    /// Returns when each release has been answered or has failed (a failure is logged at WARN,
    /// and that lock expires with its lease). The releases run side by side, each bounded by the
    /// response timeout, so even with the server unreachable this takes about one response
    /// timeout ([`DEFAULT_RESPONSE_TIMEOUT`] by default). Calling it again does nothing more.
    /// Cancel-safe: releases already begun finish in the background.
    ///
    /// ```
    /// # async fn demo() -> Result<(), distlock::LockError> {
    /// use distlock::{LockError, LockOptions, Locker};
    ///
    /// let locker = Locker::in_memory();
    /// let guard = locker.acquire("cleanup", LockOptions::new()).await?;
    /// drop(guard); // released in the background...
    /// locker.close().await; // ...and by now released for sure
    /// let after = locker.acquire("cleanup", LockOptions::new()).await;
    /// assert!(matches!(after, Err(LockError::Closed { .. })));
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn close(&self) {
        crate::protocol::close::close(&self.shared).await;
    }

    /// The watchdog lease of this locker.
    pub fn watchdog_lease(&self) -> Duration {
        self.shared.watchdog_lease
    }
}

impl AsRef<Locker> for Locker {
    fn as_ref(&self) -> &Locker {
        self
    }
}

impl fmt::Debug for Locker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locker")
            .field("backend", &self.shared.engine.name())
            .field("watchdog_lease", &self.shared.watchdog_lease)
            .field("renewal_interval", &self.shared.renewal_interval)
            .finish()
    }
}

enum Target {
    Redis(String),
    Cluster(Vec<String>),
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
    Memory,
}

/// Settings for a [`Locker`]; made by [`Locker::builder`] or [`Locker::in_memory_builder`].
pub struct LockerBuilder {
    target: Target,
    key_prefix: String,
    watchdog_lease: Duration,
    renewal_interval: Option<Duration>,
    connect_timeout: Duration,
    response_timeout: Duration,
    subscriber_health_check: Duration,
    max_handovers_in_a_row: u32,
    replica_acks: Option<Duration>,
    /// `None`: [`default_holder_label`], made at `build()`.
    holder_label: Option<String>,
    #[cfg(feature = "tls")]
    tls_root_certificate: Option<Vec<u8>>,
}

impl LockerBuilder {
    fn new(target: Target) -> Self {
        LockerBuilder {
            target,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            watchdog_lease: DEFAULT_WATCHDOG_LEASE,
            renewal_interval: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            subscriber_health_check: DEFAULT_SUBSCRIBER_HEALTH_CHECK,
            max_handovers_in_a_row: DEFAULT_MAX_HANDOVERS_IN_A_ROW,
            replica_acks: None,
            holder_label: None,
            #[cfg(feature = "tls")]
            tls_root_certificate: None,
        }
    }

    /// For `rediss://` URLs: trust this CA certificate (PEM) instead of the OS trust store, e.g.
    /// for a server whose certificate comes from a private CA.
    #[cfg(feature = "tls")]
    #[must_use = "builder methods return the changed builder; use it, e.g. call `.build()` on it"]
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_certificate = Some(pem.into());
        self
    }

    /// The prefix of every Redis name this locker uses (default [`DEFAULT_KEY_PREFIX`]).
    #[must_use = "builder methods return the changed builder; use it, e.g. call `.build()` on it"]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// The lease the watchdog keeps renewing for locks taken without a fixed lease (default
    /// [`DEFAULT_WATCHDOG_LEASE`]): how long a crashed holder keeps the lock.
    #[must_use = "builder methods return the changed builder; use it, e.g. call `.build()` on it"]
    pub fn watchdog_lease(mut self, lease: Duration) -> Self {
        self.watchdog_lease = lease;
        self
    }

    /// How often the watchdog renews (default: a third of the watchdog lease).
    #[must_use = "builder methods return the changed builder; use it, e.g. call `.build()` on it"]
    pub fn renewal_interval(mut self, interval: Duration) -> Self {
        self.renewal_interval = Some(interval);
        self
    }

    /// How long connecting may take (default [`DEFAULT_CONNECT_TIMEOUT`]).
    #[must_use = "builder methods return the changed builder; use it, e.g. call `.build()` on it"]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one command may wait for its answer (default [`DEFAULT_RESPONSE_TIMEOUT`]).
    #[must_use = "builder methods return the changed builder; use it, e.g. call `.build()` on it"]
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How often the wake-up subscriber connection is checked (default
    /// [`DEFAULT_SUBSCRIBER_HEALTH_CHECK`]): a PING every `interval`, which must be answered
    /// within the same time. A half-open connection is noticed within twice this; meanwhile
    /// waiters may miss releases, and from then on they retry every [`crate::FALLBACK_RETRY_INTERVAL`]
    /// until the connection is back.
    #[must_use]
    pub fn subscriber_health_check(mut self, interval: Duration) -> Self {
        self.subscriber_health_check = interval;
        self
    }

    /// How many times in a row a release may pass the lock straight to a task of this locker
    /// that waits for it (default [`DEFAULT_MAX_HANDOVERS_IN_A_ROW`]).
    ///
    /// A hand-over takes one round trip (the release's), where releasing, publishing and letting
    /// a woken waiter ask again takes two and a wake-up; local waiters get the lock in the order
    /// they came. But while a process hands a lock around, waiters in other processes are not
    /// woken: after this many hand-overs in a row a release releases for everyone, and all
    /// waiters race for the lock as usual. `0` turns hand-overs off.
    #[must_use = "builder methods return the changed builder; use it, e.g. call `.build()` on it"]
    pub fn max_handovers_in_a_row(mut self, n: u32) -> Self {
        self.max_handovers_in_a_row = n;
        self
    }

    /// Make every lock of this locker count as taken (and each renewal as done) only once every
    /// replica connected to the node that took it has acknowledged it, within `within` (default:
    /// off; per lock: [`LockOptions::replica_acks`], [`LockOptions::without_replica_acks`]).
    ///
    /// Without it, a primary that dies after answering but before its replica has the lock can be
    /// replaced by that replica, and a second holder gets in. With it, the acquire script and a
    /// `WAIT` go to the primary in one round trip; fewer acknowledgements in time and the lock
    /// is given up again, and the acquire fails with
    /// [`BackendError::is_not_replicated`](crate::BackendError::is_not_replicated). It cannot
    /// cover a replica that was disconnected at the time (it is not counted, and may still be
    /// promoted): see the README, "Cluster and Sentinel".
    #[must_use = "builder methods return the changed builder; use it, e.g. call `.build()` on it"]
    pub fn replica_acks(mut self, within: Duration) -> Self {
        self.replica_acks = Some(within);
        self
    }

    /// What the locks this locker takes record as their holder, for operators
    /// ([`Locker::inspect`], the `distlock_cli` example): default `host:pid`
    /// ([`default_holder_label`]). Any text up to
    /// [`MAX_HOLDER_LABEL_LEN`](crate::MAX_HOLDER_LABEL_LEN) bytes, e.g. a pod name; empty
    /// records none. Anyone who can read the lock's key sees it: no secrets in it.
    #[must_use = "builder methods return the changed builder; use it, e.g. call `.build()` on it"]
    pub fn holder_label(mut self, label: impl Into<String>) -> Self {
        self.holder_label = Some(label.into());
        self
    }

    /// Checks the settings and connects. For Redis: the command connection and the wake-up
    /// subscriber connection; fails at once, quoting the server, when it refuses either (e.g.
    /// `maxclients`) or denies the user the lock scripts or the wake-up channels (ACL). Logs a
    /// WARN when the server's `maxmemory-policy` can evict lock keys.
    pub async fn build(self) -> Result<Locker, LockError> {
        let invalid = |reason: String| LockError::InvalidOptions { key: None, reason };
        check_lease("watchdog_lease", self.watchdog_lease).map_err(invalid)?;
        let holder_label = self.holder_label.unwrap_or_else(default_holder_label);
        check_holder_label(&holder_label).map_err(invalid)?;
        let renewal_interval = self.renewal_interval.unwrap_or(self.watchdog_lease / 3);
        if renewal_interval.is_zero() || renewal_interval >= self.watchdog_lease {
            return Err(invalid(format!(
                "renewal_interval {renewal_interval:?} must be above zero and below the watchdog \
                 lease {:?} (default: a third of it)",
                self.watchdog_lease
            )));
        }
        for (what, d) in [
            ("connect_timeout", self.connect_timeout),
            ("response_timeout", self.response_timeout),
            ("subscriber_health_check", self.subscriber_health_check),
            (
                "replica_acks",
                self.replica_acks.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            ),
        ] {
            if d.is_zero() || d > MAX_DURATION {
                return Err(invalid(format!(
                    "{what} {d:?} must be above zero and at most a year"
                )));
            }
        }
        #[cfg(feature = "tls")]
        let root_certificate = self.tls_root_certificate;
        #[cfg(not(feature = "tls"))]
        let root_certificate = None;
        let topology = match self.target {
            Target::Memory => None,
            Target::Redis(url) => Some(topology::from_url(&url, root_certificate)),
            Target::Cluster(nodes) => Some(topology::cluster_from_nodes(&nodes, root_certificate)),
            Target::Sentinel { sentinels, master } => Some(topology::sentinel_from_parts(
                &sentinels,
                &master,
                root_certificate,
            )),
        };
        if matches!(topology, Some(Ok(topology::Topology::Cluster(_))))
            && self.key_prefix.contains(['{', '}'])
        {
            return Err(invalid(format!(
                "key_prefix {:?} has a brace: on a Redis Cluster the lock's own `{{key}}` must be \
                 the hash tag of its name and its channel, so they share a slot; leave braces out \
                 of the prefix",
                self.key_prefix
            )));
        }
        if topology.is_some()
            && let Some(within) = self.replica_acks
            && within >= self.response_timeout
        {
            return Err(invalid(format!(
                "replica_acks {within:?} must be shorter than response_timeout {:?}: a step is \
                 abandoned when the response timeout ends, before WAIT would answer",
                self.response_timeout
            )));
        }
        let engine: Arc<dyn Engine> = match topology {
            None => Arc::new(MemoryEngine::with_holder(&holder_label)),
            Some(topology) => {
                let topology = topology.map_err(invalid_url)?;
                let settings = RedisSettings {
                    prefix: self.key_prefix,
                    connect_timeout: self.connect_timeout,
                    response_timeout: self.response_timeout,
                    health_check: self.subscriber_health_check,
                    holder_label,
                    replica_acks: self.replica_acks,
                };
                Arc::new(
                    RedisEngine::connect(topology, settings)
                        .await
                        .map_err(|e| LockError::backend(None, e))?,
                )
            }
        };
        Ok(Locker::from_engine(
            engine,
            self.watchdog_lease,
            renewal_interval,
            self.max_handovers_in_a_row,
            self.replica_acks,
        ))
    }
}

/// What `Debug` shows instead of a password.
const REDACTED: &str = "***";

impl fmt::Debug for LockerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("LockerBuilder");
        match &self.target {
            Target::Redis(url) => out.field("url", &redacted(url)),
            Target::Cluster(nodes) => out.field("cluster", &redacted_nodes(nodes)),
            Target::Sentinel { sentinels, master } => out
                .field("sentinels", &redacted_nodes(sentinels))
                .field("master", master),
            Target::Memory => out.field("backend", &"in memory"),
        };
        out.field("key_prefix", &self.key_prefix)
            .field("watchdog_lease", &self.watchdog_lease)
            .field("renewal_interval", &self.renewal_interval)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("max_handovers_in_a_row", &self.max_handovers_in_a_row)
            .field("replica_acks", &self.replica_acks)
            .field("holder_label", &self.holder_label);
        #[cfg(feature = "tls")]
        out.field(
            "tls_root_certificate",
            &self
                .tls_root_certificate
                .as_ref()
                .map(|pem| format!("{} bytes of PEM", pem.len())),
        );
        out.finish()
    }
}

fn redacted_nodes(nodes: &[String]) -> Vec<String> {
    nodes
        .iter()
        .map(|node| topology::redact_node(node, REDACTED))
        .collect()
}

/// The URL with its password (in the user info, or the `pass` query parameter of a
/// `redis+unix://` URL) replaced, so that builders can be logged. A URL that does not parse is not
/// shown at all: where its password is cannot be known.
fn redacted(url: &str) -> String {
    if let Some(redacted) = topology::redact_multi_host(url, REDACTED) {
        return redacted;
    }
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "<not a valid URL>".to_owned();
    };
    if parsed.password().is_some() {
        // Fails only for URLs that cannot carry a password, and this one carries one.
        let _ = parsed.set_password(Some(REDACTED));
    }
    if parsed.query_pairs().any(|(name, _)| name == "pass") {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let value = if name == "pass" {
                    REDACTED.into()
                } else {
                    value
                };
                (name.into_owned(), value.into_owned())
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// The URL may carry a password: the message never echoes it back.
fn invalid_url(e: String) -> LockError {
    LockError::InvalidOptions {
        key: None,
        reason: format!(
            "the Redis URL is not valid ({e}); expected redis://[user:password@]host[:port][/db], \
             rediss://... for TLS, redis+unix:///path, \
             redis+cluster://[user:password@]host:port,host:port for a Cluster, or \
             redis+sentinel://[user:password@]host:26379,host:26379/<master name>[/db] for \
             Sentinel"
        ),
    }
}

static DEFAULT_LOCKER: RwLock<Option<Locker>> = RwLock::new(None);

/// Sets the process-wide default locker that `#[distributed_lock]` uses when it is given no
/// `locker = ...`. Returns the one it replaces, if any.
///
/// ```
/// use distlock::{LockError, Locker, distributed_lock, install};
///
/// #[distributed_lock(key = "nightly-report", wait = "0s", on_busy = "skip")]
/// async fn nightly_report() {
///     // ...
/// }
///
/// #[tokio::main]
/// async fn main() -> Result<(), LockError> {
///     // Once at start-up, before the first locked call. For Redis:
///     // `install(Locker::connect("redis://127.0.0.1:6379").await?);`
///     install(Locker::in_memory());
///     nightly_report().await;
///     Ok(())
/// }
/// ```
pub fn install(locker: Locker) -> Option<Locker> {
    DEFAULT_LOCKER
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .replace(locker)
}

/// The locker set by [`install`], or [`LockError::NoDefaultLocker`] saying how to set one.
pub fn default_locker() -> Result<Locker, LockError> {
    DEFAULT_LOCKER
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .ok_or(LockError::NoDefaultLocker)
}
