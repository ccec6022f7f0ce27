//! The in-process backend: the same semantics as Redis (owner tokens, expiry, fencing, wake-ups),
//! for unit tests and single-process applications.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Attempt, Released, Subscription, Unregister};

struct Entry {
    token: String,
    expires: Instant,
}

#[derive(Default)]
struct State {
    locks: HashMap<String, Entry>,
    /// Last fencing number handed out per key; kept forever, like the Redis counter.
    fences: HashMap<String, u64>,
}

/// Wake-up registrations per key: the shared `Notify` and how many waiters hold it.
type WaiterMap = HashMap<String, (Arc<Notify>, usize)>;

#[derive(Default)]
pub(crate) struct MemoryBackend {
    state: Mutex<State>,
    waiters: Arc<Mutex<WaiterMap>>,
}

/// A poisoned lock only means another thread panicked while holding it; every update below
/// leaves the maps consistent at each step, so carry on with the data.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryBackend {
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
        state.locks.insert(
            key.to_owned(),
            Entry {
                token: token.to_owned(),
                expires: now + lease,
            },
        );
        let fence = state.fences.entry(key.to_owned()).or_insert(0);
        *fence += 1;
        Attempt::Acquired { fence: *fence }
    }

    pub(crate) fn release(&self, key: &str, token: &str, keep: Option<Duration>) -> Released {
        let now = Instant::now();
        let mut state = lock(&self.state);
        match state.locks.get_mut(key) {
            Some(entry) if entry.token == token && entry.expires > now => {
                match keep {
                    Some(keep) => entry.expires = now + keep,
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
        match state.locks.get_mut(key) {
            Some(entry) if entry.token == giver && entry.expires > now => {
                entry.token = taker.to_owned();
                entry.expires = now + lease;
            }
            _ => return None,
        }
        let fence = state.fences.entry(key.to_owned()).or_insert(0);
        *fence += 1;
        Some(*fence)
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
