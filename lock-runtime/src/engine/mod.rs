//! The engine seam: what a lock store must do, behind one object-safe trait ([`Engine`]), used as
//! `Arc<dyn Engine>` by every layer above. Today: Redis ([`redis`]: one server, a Cluster, or a
//! primary under Sentinel, one engine with one copy of the scripts) and in-process memory
//! ([`memory`]); an etcd engine would implement the same trait.
//!
//! # Who owns what
//!
//! An engine owns how a lock is stored, how it is fenced, how its lease is kept alive (one
//! owner-checked step that the runtime calls every renewal interval) and how waiters learn that
//! it may have become free (pub/sub, a watch, an in-process `Notify`). The layers above own
//! everything else, once for every engine: tokens (made by the runtime, opaque to the engine),
//! reentrancy, scopes, guards, the watchdog's timing, waiting and its deadline, the local
//! hand-over queues and their policy, cancel-safety of the public futures, metrics and tracing.
//!
//! # The contract
//!
//! A `key` is the lock's name as the user gave it (the engine adds any prefix or hash tag); a
//! `token` is the owner's random 128-bit token as 32 hex digits. Every method must give:
//!
//! - **Owner-checked**: nothing releases, extends or hands over a lock whose current owner is
//!   not the given token; such a call changes nothing and says so (`NotOwner`, `false`, `None`).
//! - **One step**: each method is one atomic step on the store (one round trip for a remote
//!   one), so its effect is all or nothing whatever the network does afterwards.
//! - **Fences strictly increase per name**: every acquisition and hand-over of one name gets a
//!   fencing number greater than every earlier one of that name, across release, expiry and
//!   whatever the store can live through (restart, restore, failover: say which in the engine's
//!   docs, and under which assumption).
//! - **No key outlives its lock** by more than a bounded time the engine documents: nothing
//!   per name stays behind once a lock is released or has expired.
//! - **Leases are kept whole, and no longer**: a lock taken, handed over or renewed with `lease`
//!   stays its owner's for `lease` from when the step is applied (the runtime counts it from when
//!   it sent the request, less a drift allowance, so the holder's view ends first), and expires
//!   then unless renewed, so a crashed holder keeps nobody out for longer. `Busy` tells a waiter
//!   the time that remains.
//! - **Cancel-safety**: a future dropped before its first poll does nothing; dropped later, the
//!   step may or may not have been applied (like a request that got no answer). The runtime
//!   copes with either: it cleans up a possibly taken lock with an owner-checked release under
//!   the same token, so [`Engine::release`] must accept a token that never held the lock.
//!   An error (a timeout above all) likewise does not say whether the step was applied.
//! - **No lost wake-up**: once [`Engine::subscribe`] has returned a live subscription, every
//!   release of that key afterwards wakes it; a subscription that is not live makes its waiter
//!   retry every [`FALLBACK_RETRY_INTERVAL`].
//!
//! # Adding an engine
//!
//! Implement [`Engine`] in a module of its own here (behind a cargo feature if it brings
//! dependencies), give `LockerBuilder` a way to make it, and add one line to the fixture list of
//! the conformance suite (`tests/support/fixture.rs`, `conformance!`). The engine is done when
//! it passes the whole conformance suite (`tests/runtime.rs`, `tests/cancellation.rs`) plus
//! fault rows of its own (`tests/faults`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{Notify, watch};

use crate::error::BackendError;
use crate::lock_info::LockInfo;

pub(crate) mod memory;
pub(crate) mod redis;

/// How often a waiter asks again while releases cannot reach it (the Redis subscriber
/// connection is down, stalled, or not yet subscribed): a free lock is then found within this,
/// never only at the holder's expiry.
pub const FALLBACK_RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// Whether a write (an acquisition, a hand-over, a renewal) counts only once the store's
/// replicas have it: `Some(within)`: every replica connected to the node that took it must
/// acknowledge it within `within`, or the step fails with [`BackendError::is_not_replicated`]
/// (an acquisition or hand-over is then given up again: the caller never holds a lock a failover
/// could hand to someone else); `None`: the node's answer is enough. An engine without replicas
/// ignores it.
pub(crate) type Replicas = Option<Duration>;

/// A lock store, as the runtime sees it; see the module docs for the guarantees each method
/// must give. Object-safe: the runtime holds an `Arc<dyn Engine>`. Async steps return boxed
/// futures (one allocation per call) that borrow their arguments and must be `Send`.
pub(crate) trait Engine: Send + Sync + 'static {
    /// A short name for `Debug` output and logs ("redis", "memory").
    fn name(&self) -> &'static str;

    /// Takes `key` for `token` with `lease` if it is free (expired counts as free), with a new
    /// fencing number; otherwise says how long its holder keeps it unless renewed. A value at
    /// the name that is not a lock of ours is an error ([`BackendError::not_a_lock`]), never
    /// `Busy`.
    fn try_acquire<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        lease: Duration,
        replicas: Replicas,
    ) -> BoxFuture<'a, Result<Attempt, BackendError>>;

    /// Releases `key` if `token` still owns it, and wakes its waiters; with `keep`, shortens its
    /// expiry to `keep` from now instead of deleting it (still waking them). A token that does
    /// not own it (never did, or lost it) changes nothing: [`Released::NotOwner`].
    fn release<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        keep: Option<Duration>,
    ) -> BoxFuture<'a, Result<Released, BackendError>>;

    /// Whether [`Engine::hand_over`] can pass a lock; when false, the runtime never calls it and
    /// every release is a plain release (waiters of the same process are woken like any other).
    fn supports_hand_over(&self) -> bool {
        false
    }

    /// Passes `key` from `giver` to `taker` in one step (a new `lease`, the next fencing number,
    /// which must be greater than the giver's), if `giver` still owns it, without waking
    /// anyone; `None` when it does not (nothing changed).
    fn hand_over<'a>(
        &'a self,
        key: &'a str,
        giver: &'a str,
        taker: &'a str,
        lease: Duration,
        replicas: Replicas,
    ) -> BoxFuture<'a, Result<Option<u64>, BackendError>> {
        let _ = (key, giver, taker, lease, replicas);
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Extends the lease of `key` to `lease` from now if `token` still owns it; false when it
    /// does not (nothing changed).
    fn renew<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        lease: Duration,
        replicas: Replicas,
    ) -> BoxFuture<'a, Result<bool, BackendError>>;

    /// Registers interest in `key`'s release. Returns once a release after this call is sure to
    /// wake the returned subscription (Redis: the channel is subscribed), or, when that cannot
    /// be had soon, with a subscription that is not live ([`Subscription::is_live`]). Never
    /// fails and never waits long: the waiter's deadline bounds it from outside too.
    fn subscribe<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Subscription>;

    /// The longest replica acknowledgement bound a step can wait for, if there is one: a step
    /// must be answered within the engine's response timeout, so WAIT's bound must be shorter.
    fn replica_wait_limit(&self) -> Option<Duration> {
        None
    }

    /// The locker was closed (`Locker::close`): stop background work and let connections go. A
    /// later call, if any, may start them again.
    fn close(&self) {}

    /// For operators: what the lock `key` records (holder label, lease left, fencing number),
    /// changing nothing; `None` when it is free. One round trip.
    fn inspect<'a>(&'a self, key: &'a str)
    -> BoxFuture<'a, Result<Option<LockInfo>, BackendError>>;

    /// For operators: deletes the lock `key` whoever owns it and wakes its waiters (the one
    /// write that does not compare the owner, for a stale lock); what it recorded, or `None` when
    /// it was free. Never deletes a value that is not a lock. One round trip.
    fn force_release<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<LockInfo>, BackendError>>;
}

/// The result of one acquisition attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The lock is ours, with this fencing number.
    Acquired { fence: u64 },
    /// Someone else holds it; it expires in `ttl` unless renewed.
    Busy { ttl: Duration },
}

/// What a release found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Released {
    /// The lock was ours and is now released (or shortened to the minimum hold).
    Done,
    /// The lock was no longer ours: it expired, or another holder has it now.
    NotOwner,
}

/// A waiter's registration for one key's wake-ups. Dropping it unregisters.
pub(crate) struct Subscription {
    notify: Arc<Notify>,
    /// Whether a release reaches `notify` right now (Redis: the channel is subscribed on a
    /// working connection); `None` for a backend whose wake-ups cannot fail.
    link: Option<watch::Receiver<Link>>,
    _unregister: Unregister,
}

/// The state of a subscription's wake-up path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    /// Being set up (connecting, or SUBSCRIBE sent): worth a short wait.
    Pending,
    /// Releases reach the waiter. Entering this state wakes every waiter of the channel, so one
    /// that retried before it and saw the lock busy retries once more (no lost wake-up).
    Live,
    /// Releases may not reach the waiter: it has to retry at a steady pace.
    Down,
}

impl Subscription {
    pub(crate) fn new(notify: Arc<Notify>, unregister: Unregister) -> Self {
        Subscription {
            notify,
            link: None,
            _unregister: unregister,
        }
    }

    /// A subscription whose wake-ups may fail; `link` says when they work.
    pub(crate) fn with_link(
        notify: Arc<Notify>,
        link: watch::Receiver<Link>,
        unregister: Unregister,
    ) -> Self {
        Subscription {
            notify,
            link: Some(link),
            _unregister: unregister,
        }
    }

    /// True while a release is sure to wake this subscription; false when the waiter must retry
    /// on its own at [`FALLBACK_RETRY_INTERVAL`].
    pub(crate) fn is_live(&self) -> bool {
        self.link
            .as_ref()
            .is_none_or(|link| *link.borrow() == Link::Live)
    }

    /// The wake-up source. A release wakes one waiting task of this process per message; a
    /// woken waiter that is dropped before it takes the wake-up passes it on (tokio's `Notify`),
    /// and one that took it and is dropped before its retry got an answer passes it on too
    /// (`protocol::acquire`'s `WakeUp`).
    pub(crate) fn notify(&self) -> &Notify {
        &self.notify
    }

    /// The wake-up source, to pass a taken wake-up on after this subscription has gone.
    pub(crate) fn notify_handle(&self) -> Arc<Notify> {
        Arc::clone(&self.notify)
    }
}

/// Runs the backend's unregistration when a [`Subscription`] is dropped.
pub(crate) struct Unregister(Option<Box<dyn FnOnce() + Send + Sync>>);

impl Unregister {
    pub(crate) fn new(f: impl FnOnce() + Send + Sync + 'static) -> Self {
        Unregister(Some(Box::new(f)))
    }
}

impl Drop for Unregister {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}
