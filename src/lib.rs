//! Run an async function under a distributed lock with one attribute.
//!
//! ```
//! use std::time::Duration;
//! use distlock::{distributed_lock, LockError, Locker};
//!
//! struct Ranking {
//!     locks: Locker,
//! }
//!
//! impl Ranking {
//!     // Every replica flushes its own buffer, one at a time: wait up to 10 s, hold 5 s at most.
//!     #[distributed_lock(key = "ranking", wait = "10s", lease = "5s", locker = self.locks)]
//!     async fn flush(&self, keywords: &[&str]) -> Result<usize, LockError> {
//!         // Inside: the lock's fencing token, for a store that refuses stale writers.
//!         let fence = distlock::current().map(|lock| lock.fencing_token());
//!         assert!(fence.is_some());
//!         Ok(keywords.len())
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! // `Locker::connect("redis://host:6379").await?` in production; in memory for this example.
//! let ranking = Ranking { locks: Locker::in_memory() };
//! assert_eq!(ranking.flush(&["rust", "redis"]).await?, 2);
//! # Ok::<(), LockError>(()) }).unwrap();
//! ```
//!
//! # The attribute
//!
//! `#[distributed_lock(key = "...", wait = "10s", lease = "5s", hold_at_least = "...",
//! on_busy = "error" | "skip", on_lost = "report" | "cancel", locker = expr, crate = "path")]`
//! on an `async fn`:
//!
//! - `key` (required): a template; `{param}`, `{param.field}`, `{self.field}` insert values by
//!   `Display`, `{{`/`}}` are literal braces. Built once, before acquiring.
//! - `wait` (default `"10s"`): how long to wait for a busy lock; `"0s"` tries once.
//! - `lease`: a fixed lease. Without it the watchdog renews the lock while the body runs.
//! - `hold_at_least`: a release before this shortens the lock instead of deleting it
//!   (ShedLock's `lockAtLeastFor`), for scheduled jobs on replicas whose clocks differ.
//! - `on_busy = "error"` (default): the fn returns `Result<T, E>` with `E: From<LockError>` (an
//!   alias works too: `anyhow::Result<T>`, `std::io::Result<T>`, your `AppResult<T>`); busy
//!   becomes `Err(LockError::NotAcquired { .. }.into())` and the body does not run.
//!   `on_busy = "skip"`: the fn returns `()`, `Option<T>`, `Result<(), E>` or
//!   `Result<Option<T>, E>`; busy returns `()`, `None`, `Ok(())` or `Ok(None)` (DEBUG log). Any
//!   other failure (the backend, a lost lease) is `Err(From::from(e))` in the `Result` shapes and
//!   is logged at ERROR for `()` and `Option<T>`, which have no place for it.
//! - `on_lost = "report"` (default): a lease lost during the body lets the body finish, then the
//!   call returns `Err(LockError::LeaseLost { .. }.into())`. `"cancel"`: the body is dropped as
//!   soon as the loss is seen, then the same error.
//! - `locker = expr`: the [`Locker`] to use; default: the one given to [`install`].
//! - `crate = "path"`: where this crate is, for crates that re-export it. Without it the
//!   attribute finds this crate under the name your `Cargo.toml` gives it, renamed or not.
//!
//! Durations are string literals checked at compile time (`"250ms"`, `"10s"`, `"1m30s"`,
//! `"2h"`) or any expression of type `Duration`.
//!
//! With `#[async_trait]` and `#[tracing::instrument]` (write `#[distributed_lock]` first to have
//! the lock's events inside the span): see [`distributed_lock`].
//!
//! The body runs as an `async move` block awaited in place, so `return`, `?`, `self`, generics
//! and lifetimes keep their meaning, and its future completes before the release: a transaction
//! committed in the body is committed before the unlock (what Spring needs `REQUIRES_NEW` for).
//! An early return, an error, a panic, or the caller dropping the future all release the lock.
//! Reentrant by call nesting: a call made inside the body that locks the same key through the
//! same [`Locker`] re-enters at once; any other call waits, even a future joined next to it in
//! the same task (`join!`, `join_all`, `select!`). A nested call never gets less protection than
//! it asked for: inside a fixed lease, a longer nested `lease` extends the lock and a nested call
//! without `lease` (the watchdog) is [`LockError::InvalidOptions`]. See [`Locker::acquire`].
//!
//! What a call expands to, in spirit:
//!
//! ```text
//! async fn register(&self, isbn: &str) -> Result<Book, AppError> {
//!     let key = format!("book:{}", isbn);
//!     let guard = match acquire(locker, key, options).await {
//!         Ok(guard) => guard,
//!         Err(e) => return Err(From::from(e)),
//!     };
//!     let out = scope(&guard, async move { BODY }).await;   // current() inside
//!     finish(guard).await.map_err(From::from)?;             // Err(LeaseLost) if lost
//!     out
//! }
//! ```
//!
//! # Side by side with Spring
//!
//! | Spring + Redisson | distlock |
//! |---|---|
//! | `@DistributedLock(key = "'book:' + #isbn", waitTime = 10, leaseTime = 5)` | `#[distributed_lock(key = "book:{isbn}", wait = "10s", lease = "5s")]` |
//! | SpEL key, a typo fails at run time | key template checked against the parameters at compile time |
//! | `tryLock` returns `false`; the aspect decides | `Err(LockError::NotAcquired)` into your error type, or `on_busy = "skip"` |
//! | `leaseTime = -1`: the watchdog | no `lease`: the watchdog |
//! | a lease that ran out mid-work goes unnoticed | `LeaseLost` returned (or the body cancelled) |
//! | commit before unlock needs `REQUIRES_NEW` | the body's future completes before the release |
//! | self-invocation bypasses the proxy | every call is locked: the fn itself is rewritten |
//! | `RLock` reentrant per thread | reentrant by call nesting |
//!
//! # By hand
//!
//! [`Locker::acquire`] with [`LockOptions`] returns a [`LockGuard`]: its fencing token, its lost
//! signal, [`LockGuard::extend`] for a fixed lease, and [`release()`](LockGuard::release).
//! [`Locker::try_acquire`] makes one attempt and returns `Ok(None)` when the lock is busy.
//! [The runtime's documentation](distlock_runtime) describes the Redis data model, the guarantees
//! and their limits.
//!
//! Before the process exits, call [`Locker::close`]: a guard dropped late in `main` releases in a
//! background task that the runtime's shutdown may drop before it runs, and the lock then stays
//! held until its lease runs out.
//!
//! # Operating it
//!
//! [`Locker::from_env`] connects as `REDIS_URL` ([`REDIS_URL_VAR`]) says. Every lock records its
//! holder's label ([`LockerBuilder::holder_label`], `host:pid` by default): [`Locker::inspect`]
//! shows it with the lease left and the fencing number ([`LockInfo`]), and
//! [`Locker::force_release`] takes a lock away from a stuck holder.
//!
//! # Items
//!
//! | item | what it is |
//! |---|---|
//! | [`distributed_lock`] | the attribute |
//! | [`Locker`] | a handle on one lock store: [`Locker::connect`] (Redis), [`Locker::in_memory`] (one process, tests); cheap to clone |
//! | [`LockerBuilder`] | a locker's settings: [`Locker::builder`], [`Locker::in_memory_builder`] |
//! | [`LockOptions`] | how to take one lock by hand: wait, lease, hold at least |
//! | [`LockGuard`] | a lock held by hand: fencing token, lost signal, release |
//! | [`LockHandle`] | a read-only view of a held lock, what [`current`] returns |
//! | [`current`] | the innermost lock held by the running locked body |
//! | [`install`], [`default_locker`] | the process-wide locker the attribute uses without `locker = ...` |
//! | [`LockInfo`] | what a lock records, from [`Locker::inspect`] and [`Locker::force_release`] |
//! | [`LockError`] | why a lock was not taken or kept |
//! | [`BackendError`] | what went wrong with the store, in [`LockError::Backend`] |
//! | [`metrics`] | the names and labels of the lock metrics (recorded with the cargo feature `metrics`) |
//!
//! Constants: the defaults [`DEFAULT_WAIT`], [`DEFAULT_WATCHDOG_LEASE`], [`DEFAULT_KEY_PREFIX`],
//! [`DEFAULT_CONNECT_TIMEOUT`], [`DEFAULT_RESPONSE_TIMEOUT`], [`DEFAULT_SUBSCRIBER_HEALTH_CHECK`],
//! [`DEFAULT_MAX_HANDOVERS_IN_A_ROW`] and [`FALLBACK_RETRY_INTERVAL`]; the limits [`MIN_LEASE`],
//! [`MAX_DURATION`], [`MAX_KEY_LEN`] and [`MAX_HOLDER_LABEL_LEN`]; the environment variables
//! [`REDIS_URL_VAR`], [`KEY_PREFIX_VAR`] and [`HOLDER_LABEL_VAR`]; [`default_holder_label`].
#![warn(missing_docs)]

pub use distlock_macro::distributed_lock;
pub use distlock_runtime::metrics;
pub use distlock_runtime::{
    BackendError, DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEY_PREFIX, DEFAULT_MAX_HANDOVERS_IN_A_ROW,
    DEFAULT_RESPONSE_TIMEOUT, DEFAULT_SUBSCRIBER_HEALTH_CHECK, DEFAULT_WAIT,
    DEFAULT_WATCHDOG_LEASE, FALLBACK_RETRY_INTERVAL, LockError, LockGuard, LockHandle, LockOptions,
    Locker, LockerBuilder, MAX_DURATION, MAX_KEY_LEN, MIN_LEASE, current, default_locker, install,
};
pub use distlock_runtime::{
    HOLDER_LABEL_VAR, KEY_PREFIX_VAR, LockInfo, MAX_HOLDER_LABEL_LEN, REDIS_URL_VAR,
    default_holder_label,
};

/// Items that code generated by `#[distributed_lock]` calls. Not a public API: it changes
/// without notice. User code never names these.
#[doc(hidden)]
pub mod __private {
    pub use distlock_runtime::__private::*;
}
