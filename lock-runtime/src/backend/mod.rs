//! The backends behind one internal interface: single Redis, and in-process memory.
//!
//! A backend answers five questions in one step each: take the lock if free (with a fencing
//! number) or say how long it stays busy; release it if still owned (or shorten it to the minimum
//! hold); pass it from its holder straight to a waiter; extend it if still owned; and tell
//! waiters when it may have become free. For operators, two more: what a lock records (holder
//! label, lease left, fencing number), and deleting it whoever holds it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::error::BackendError;
use crate::lock_info::LockInfo;

pub(crate) mod memory;
pub(crate) mod redis;

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

pub(crate) enum Backend {
    Redis(redis::RedisBackend),
    Memory(memory::MemoryBackend),
}

impl Backend {
    pub(crate) async fn try_acquire(
        &self,
        key: &str,
        token: &str,
        lease: Duration,
    ) -> Result<Attempt, BackendError> {
        match self {
            Backend::Redis(b) => b.try_acquire(key, token, lease).await,
            Backend::Memory(b) => Ok(b.try_acquire(key, token, lease)),
        }
    }

    /// Releases if `token` still owns `key`; `keep` shortens the expiry instead of deleting.
    pub(crate) async fn release(
        &self,
        key: &str,
        token: &str,
        keep: Option<Duration>,
    ) -> Result<Released, BackendError> {
        match self {
            Backend::Redis(b) => b.release(key, token, keep).await,
            Backend::Memory(b) => Ok(b.release(key, token, keep)),
        }
    }

    /// Passes `key` from `giver` to `taker` (a new lease, the next fencing number) if `giver`
    /// still owns it, without waking anyone; `None` when it does not (nothing changed).
    pub(crate) async fn hand_over(
        &self,
        key: &str,
        giver: &str,
        taker: &str,
        lease: Duration,
    ) -> Result<Option<u64>, BackendError> {
        match self {
            Backend::Redis(b) => b.hand_over(key, giver, taker, lease).await,
            Backend::Memory(b) => Ok(b.hand_over(key, giver, taker, lease)),
        }
    }

    /// Extends the lease if `token` still owns `key`; false when it does not.
    pub(crate) async fn renew(
        &self,
        key: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool, BackendError> {
        match self {
            Backend::Redis(b) => b.renew(key, token, lease).await,
            Backend::Memory(b) => Ok(b.renew(key, token, lease)),
        }
    }

    /// What the lock `key` records (holder label, lease left, fencing number), changing nothing;
    /// `None` when it is free.
    pub(crate) async fn inspect(&self, key: &str) -> Result<Option<LockInfo>, BackendError> {
        match self {
            Backend::Redis(b) => b.inspect(key).await,
            Backend::Memory(b) => Ok(b.inspect(key)),
        }
    }

    /// Deletes the lock `key` whoever owns it and wakes its waiters; what it recorded, or `None`
    /// when it was free.
    pub(crate) async fn force_release(&self, key: &str) -> Result<Option<LockInfo>, BackendError> {
        match self {
            Backend::Redis(b) => b.force_release(key).await,
            Backend::Memory(b) => Ok(b.force_release(key)),
        }
    }

    /// Registers interest in `key`'s release. Returns once a release published after this call
    /// is guaranteed to wake the returned subscription (Redis: the channel is subscribed).
    pub(crate) async fn subscribe(&self, key: &str) -> Subscription {
        match self {
            Backend::Redis(b) => b.subscribe(key).await,
            Backend::Memory(b) => b.subscribe(key),
        }
    }
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
    /// on its own at [`crate::FALLBACK_RETRY_INTERVAL`].
    pub(crate) fn is_live(&self) -> bool {
        self.link
            .as_ref()
            .is_none_or(|link| *link.borrow() == Link::Live)
    }

    /// The wake-up source. A release wakes one waiting task of this process per message; a
    /// woken waiter that is dropped before it acts passes its wake-up on (tokio's `Notify`).
    pub(crate) fn notify(&self) -> &Notify {
        &self.notify
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
