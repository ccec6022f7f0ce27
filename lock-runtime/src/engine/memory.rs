//! The in-process engine: the same semantics as Redis (owner tokens, expiry, fencing, wake-ups),
//! for unit tests and single-process applications. Each step is one critical section, done when
//! its future is first polled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Attempt, Engine, Released, Replicas, Subscription, Unregister};
use crate::error::BackendError;
use crate::holder::default_holder_label;
use crate::lock_info::LockInfo;
use crate::mutex::lock;

/// The token of a lock kept after its release for `hold_at_least`: nobody's (a real token is
/// 32 random hex digits, so never all zeros).
const RELEASED_TOKEN: &str = "00000000000000000000000000000000";

struct Entry {
    token: String,
    expires: Instant,
    /// The acquisition's fencing number and its holder's label, for operators (`inspect`).
    fence: u64,
    holder: Option<Arc<str>>,
}

impl Entry {
    fn info(&self, now: Instant) -> LockInfo {
        LockInfo {
            holder: self.holder.as_deref().map(str::to_owned),
            lease_left: self.expires - now,
            fencing_token: self.fence,
        }
    }
}

/// Expired entries are swept after this many new entries at least, so a sweep's cost (one pass
/// over the map) is spread over as many acquisitions as the map holds: amortised O(1).
const SWEEP_FLOOR: usize = 64;

#[derive(Default)]
struct State {
    /// Live locks, plus those that expired since the last sweep (at most as many as the map
    /// held then, or `SWEEP_FLOOR`): bounded by the number of live locks, never by the number
    /// of names ever locked.
    locks: HashMap<String, Entry>,
    /// The last fencing number handed out, for any key. One source for all keys, following the
    /// system clock in microseconds, so numbers never repeat for a key without a per-key counter
    /// that would outlive its lock (as the Redis backend's scripts do with the server clock).
    last_fence: u64,
    /// New entries since the last sweep of expired ones, and how many entries that sweep left.
    inserted_since_sweep: usize,
    left_by_sweep: usize,
}

impl State {
    /// `max(last + 1, system clock in µs)`: strictly increasing, and above every number an
    /// earlier backend in this process or before a restart handed out, unless the clock went back.
    fn next_fence(&mut self) -> u64 {
        let clock = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        self.last_fence = self.last_fence.saturating_add(1).max(clock);
        self.last_fence
    }

    /// Counts a new entry; drops the expired ones once as many entries were added as the last
    /// sweep left (at least `SWEEP_FLOOR`). Counting insertions rather than the map's growth
    /// also sweeps under churn (names locked once, map size steady), where growth never comes.
    fn inserted(&mut self, now: Instant) {
        self.inserted_since_sweep += 1;
        if self.inserted_since_sweep >= self.left_by_sweep.max(SWEEP_FLOOR) {
            self.locks.retain(|_, entry| entry.expires > now);
            self.left_by_sweep = self.locks.len();
            self.inserted_since_sweep = 0;
        }
    }
}

/// Wake-up registrations per key: the shared `Notify` and how many waiters hold it.
type WaiterMap = HashMap<String, (Arc<Notify>, usize)>;

pub(crate) struct MemoryEngine {
    state: Mutex<State>,
    waiters: Arc<Mutex<WaiterMap>>,
    /// What this locker's locks record as their holder; `None` for an empty label.
    holder: Option<Arc<str>>,
}

impl Default for MemoryEngine {
    fn default() -> Self {
        MemoryEngine::with_holder(&default_holder_label())
    }
}

impl MemoryEngine {
    /// An engine whose locks record `holder` (none when empty).
    pub(crate) fn with_holder(holder: &str) -> Self {
        MemoryEngine {
            state: Mutex::default(),
            waiters: Arc::default(),
            holder: (!holder.is_empty()).then(|| Arc::from(holder)),
        }
    }

    pub(crate) fn try_acquire(&self, key: &str, token: &str, lease: Duration) -> Attempt {
        let now = Instant::now();
        let mut state = lock(&self.state);
        if let Some(entry) = state.locks.get(key)
            && entry.expires > now
        {
            return Attempt::Busy {
                ttl: entry.expires - now,
            };
        }
        let fence = state.next_fence();
        let replaced = state.locks.insert(
            key.to_owned(),
            Entry {
                token: token.to_owned(),
                expires: now + lease,
                fence,
                holder: self.holder.clone(),
            },
        );
        if replaced.is_none() {
            state.inserted(now);
        }
        Attempt::Acquired { fence }
    }

    pub(crate) fn release(&self, key: &str, token: &str, keep: Option<Duration>) -> Released {
        let now = Instant::now();
        let mut state = lock(&self.state);
        match state.locks.get_mut(key) {
            Some(entry) if entry.token == token && entry.expires > now => {
                match keep {
                    // Kept for hold_at_least, but no longer anyone's (as in Redis).
                    Some(keep) => {
                        entry.expires = now + keep;
                        entry.token = RELEASED_TOKEN.to_owned();
                    }
                    None => {
                        state.locks.remove(key);
                    }
                }
                drop(state);
                self.wake(key);
                Released::Done
            }
            _ => Released::NotOwner,
        }
    }

    /// Passes the lock from `giver` to `taker` if `giver` still holds it.
    pub(crate) fn hand_over(
        &self,
        key: &str,
        giver: &str,
        taker: &str,
        lease: Duration,
    ) -> Option<u64> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let held_by_giver = state
            .locks
            .get(key)
            .is_some_and(|entry| entry.token == giver && entry.expires > now);
        if !held_by_giver {
            return None;
        }
        let fence = state.next_fence();
        let entry = state.locks.get_mut(key)?;
        entry.token = taker.to_owned();
        entry.expires = now + lease;
        entry.fence = fence;
        Some(fence)
    }

    pub(crate) fn renew(&self, key: &str, token: &str, lease: Duration) -> bool {
        let now = Instant::now();
        let mut state = lock(&self.state);
        match state.locks.get_mut(key) {
            Some(entry) if entry.token == token && entry.expires > now => {
                entry.expires = now + lease;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn inspect(&self, key: &str) -> Option<LockInfo> {
        let now = Instant::now();
        let state = lock(&self.state);
        let entry = state.locks.get(key)?;
        (entry.expires > now).then(|| entry.info(now))
    }

    pub(crate) fn force_release(&self, key: &str) -> Option<LockInfo> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let entry = state.locks.remove(key)?;
        drop(state);
        if entry.expires <= now {
            return None;
        }
        self.wake(key);
        Some(entry.info(now))
    }

    pub(crate) fn subscribe(&self, key: &str) -> Subscription {
        let notify = {
            let mut waiters = lock(&self.waiters);
            let (notify, count) = waiters
                .entry(key.to_owned())
                .or_insert_with(|| (Arc::new(Notify::new()), 0));
            *count += 1;
            notify.clone()
        };
        let waiters = Arc::clone(&self.waiters);
        let key = key.to_owned();
        Subscription::new(
            notify,
            Unregister::new(move || {
                let mut waiters = lock(&waiters);
                if let Some((_, count)) = waiters.get_mut(&key) {
                    *count -= 1;
                    if *count == 0 {
                        waiters.remove(&key);
                    }
                }
            }),
        )
    }

    fn wake(&self, key: &str) {
        if let Some((notify, _)) = lock(&self.waiters).get(key) {
            notify.notify_one();
        }
    }
}

// Each step runs inside `async move`, not before the future is made: a future dropped unpolled
// (a `select!` branch that lost) must do nothing, as the contract says.
impl Engine for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn try_acquire<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        lease: Duration,
        _replicas: Replicas,
    ) -> BoxFuture<'a, Result<Attempt, BackendError>> {
        Box::pin(async move { Ok(MemoryEngine::try_acquire(self, key, token, lease)) })
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        keep: Option<Duration>,
    ) -> BoxFuture<'a, Result<Released, BackendError>> {
        Box::pin(async move { Ok(MemoryEngine::release(self, key, token, keep)) })
    }

    fn supports_hand_over(&self) -> bool {
        true
    }

    fn hand_over<'a>(
        &'a self,
        key: &'a str,
        giver: &'a str,
        taker: &'a str,
        lease: Duration,
        _replicas: Replicas,
    ) -> BoxFuture<'a, Result<Option<u64>, BackendError>> {
        Box::pin(async move { Ok(MemoryEngine::hand_over(self, key, giver, taker, lease)) })
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        lease: Duration,
        _replicas: Replicas,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move { Ok(MemoryEngine::renew(self, key, token, lease)) })
    }

    fn subscribe<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Subscription> {
        Box::pin(async move { MemoryEngine::subscribe(self, key) })
    }

    fn inspect<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<LockInfo>, BackendError>> {
        Box::pin(async move { Ok(MemoryEngine::inspect(self, key)) })
    }

    fn force_release<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<LockInfo>, BackendError>> {
        Box::pin(async move { Ok(MemoryEngine::force_release(self, key)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: usize = 10_000;
    const LEASE: Duration = Duration::from_millis(100);

    #[tokio::test(start_paused = true)]
    async fn maps_hold_only_live_locks_after_many_names_expire_or_are_released() {
        let backend = MemoryEngine::default();
        let mut last = 0;
        let mut fenced = |attempt: Attempt| match attempt {
            Attempt::Acquired { fence } => {
                assert!(fence > last, "fence {fence} after {last}");
                last = fence;
            }
            Attempt::Busy { .. } => panic!("a fresh name was busy"),
        };
        for i in 0..NAMES {
            let key = format!("expiring:{i}");
            let _subscription = backend.subscribe(&key);
            fenced(backend.try_acquire(&key, "a", LEASE));
        }
        tokio::time::advance(LEASE * 2).await;
        for i in 0..NAMES {
            let key = format!("released:{i}");
            fenced(backend.try_acquire(&key, "b", LEASE));
            assert_eq!(backend.release(&key, "b", None), Released::Done);
        }
        let held = backend.try_acquire("held", "c", LEASE);
        fenced(held);

        let locks = lock(&backend.state).locks.len();
        assert!(
            locks <= SWEEP_FLOOR,
            "{locks} entries left for 1 live lock after {NAMES} names expired"
        );
        assert!(lock(&backend.waiters).is_empty());
    }

    /// The integration test of force release cannot tell on this backend whether its waiter was
    /// asleep when the lock went; here the subscription is in place first.
    #[tokio::test]
    async fn force_release_wakes_a_subscribed_waiter_whoever_held_the_lock() {
        let backend = MemoryEngine::with_holder("stuck");
        fenced_acquire(&backend, "k");
        let subscription = backend.subscribe("k");

        let removed = backend.force_release("k").expect("held");

        assert_eq!(removed.holder.as_deref(), Some("stuck"));
        // A wake-up sent before the waiter sleeps is kept for it (Notify's permit): it returns
        // at once, the timeout only turns a missing wake-up into a failure.
        tokio::time::timeout(LEASE, subscription.notify().notified())
            .await
            .expect("the waiter is woken");
        assert!(backend.inspect("k").is_none());
    }

    fn fenced_acquire(backend: &MemoryEngine, key: &str) {
        let attempt = backend.try_acquire(key, "a", LEASE);
        assert!(matches!(attempt, Attempt::Acquired { .. }), "{attempt:?}");
    }
}
