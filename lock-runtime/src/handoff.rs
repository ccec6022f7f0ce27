//! Local hand-over: a release passes the lock straight to a task of this process that waits for
//! it, in the release's one round trip, instead of deleting it, publishing, and letting a woken
//! waiter ask again (a second round trip, and a wake-up through the subscriber connection).
//!
//! Waiting tasks queue per key, in arrival order. A release that finds a queue takes the first
//! task, runs the acquire script in hand-over mode (the lock passes to that task's token, with its
//! lease and the next fencing number, only if the releaser still holds it) and hands the result
//! to the task in-process. After [`crate::LockerBuilder::max_handovers_in_a_row`] hand-overs in a
//! row, a release deletes and publishes as usual, so waiters in other processes get their turn.
//!
//! A hand-over that nobody claims (its task gave up or was cancelled meanwhile) releases the lock
//! in the background, like a cancelled acquire: a hand-over never leaves a lock without a holder.
//! Each place in a queue has a token of its own, never used by the task's own attempts, so that
//! clean-up can never remove a lock the task took by itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::BackendError;
use crate::locker::{LockerInner, lock, new_token};

/// The waiting tasks of one locker, per key, in arrival order.
#[derive(Default)]
pub(crate) struct Queues {
    next_id: AtomicU64,
    keys: Mutex<HashMap<String, BTreeMap<u64, Candidate>>>,
}

/// A waiting task, as a release sees it.
pub(crate) struct Candidate {
    pub(crate) token: String,
    pub(crate) lease: Duration,
    handed: oneshot::Sender<Handed>,
}

impl Candidate {
    /// Gives the lock (already passed to this candidate's token) to its task; if the task is
    /// gone, the lock is released in the background.
    pub(crate) fn hand(self, handed: Handed) {
        // On failure the returned `Handed` is dropped here, which releases it.
        let _ = self.handed.send(handed);
    }
}

/// A lock passed to a waiting task.
pub(crate) struct Handed {
    claimed: Claimed,
    /// Set until the task claims the lock; dropping an unclaimed hand-over releases it.
    unclaimed: Option<(Arc<LockerInner>, String)>,
}

/// A hand-over the task has taken: the lock is its own from here on.
pub(crate) struct Claimed {
    /// The token the lock was passed to (the place's, not the task's own).
    pub(crate) token: String,
    pub(crate) fence: u64,
    /// When the hand-over was sent: the lease counts from here.
    pub(crate) sent_at: Instant,
    /// How many hand-overs in a row led to this holder (1 for the first).
    pub(crate) in_a_row: u32,
}

impl Handed {
    pub(crate) fn new(
        inner: &Arc<LockerInner>,
        key: &str,
        token: &str,
        fence: u64,
        sent_at: Instant,
        in_a_row: u32,
    ) -> Self {
        Handed {
            claimed: Claimed {
                token: token.to_owned(),
                fence,
                sent_at,
                in_a_row,
            },
            unclaimed: Some((Arc::clone(inner), key.to_owned())),
        }
    }

    /// The task takes the lock: from here on its guard releases it.
    fn claim(mut self) -> Claimed {
        self.unclaimed = None;
        let token = std::mem::take(&mut self.claimed.token);
        Claimed {
            token,
            ..self.claimed
        }
    }
}

impl Drop for Handed {
    fn drop(&mut self) {
        if let Some((inner, key)) = self.unclaimed.take() {
            let token = std::mem::take(&mut self.claimed.token);
            inner.release_in_background(key, token, "a lock handed to a task that had gone");
        }
    }
}

/// A task's place in its key's queue. Dropping it leaves the queue; a hand-over that arrived
/// meanwhile and was not taken is released (see [`Handed`]).
pub(crate) struct Place {
    inner: Arc<LockerInner>,
    key: String,
    id: u64,
    handed: oneshot::Receiver<Handed>,
    /// Set when `try_take` found that a release took this place and handed nothing: the
    /// receiver is finished then, and polling it again would panic.
    spent: bool,
}

impl Place {
    /// The hand-over, if one has arrived.
    pub(crate) fn try_take(&mut self) -> Option<Claimed> {
        match self.handed.try_recv() {
            Ok(handed) => Some(handed.claim()),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => {
                self.spent = true;
                None
            }
        }
    }

    /// Waits for a hand-over. `None`: a release took this task from the queue but handed
    /// nothing (it no longer held the lock, or got no answer): queue again and retry.
    /// Cancel-safe; once it has returned, or `try_take` has seen that, the place is spent.
    pub(crate) async fn handed(&mut self) -> Option<Claimed> {
        if self.spent {
            return None;
        }
        (&mut self.handed).await.ok().map(Handed::claim)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut keys = lock(&self.inner.queues.keys);
        if let Some(queue) = keys.get_mut(&self.key) {
            queue.remove(&self.id);
            if queue.is_empty() {
                keys.remove(&self.key);
            }
        }
    }
}

impl Queues {
    /// Puts a task that waits for `key` at the end of the queue, with a fresh token for the
    /// hand-over.
    pub(crate) fn queue_up(
        inner: &Arc<LockerInner>,
        key: &str,
        lease: Duration,
    ) -> Result<Place, BackendError> {
        let token = new_token()?;
        let id = inner.queues.next_id.fetch_add(1, Ordering::Relaxed);
        let (handed, receiver) = oneshot::channel();
        let candidate = Candidate {
            token,
            lease,
            handed,
        };
        lock(&inner.queues.keys)
            .entry(key.to_owned())
            .or_default()
            .insert(id, candidate);
        Ok(Place {
            inner: Arc::clone(inner),
            key: key.to_owned(),
            id,
            handed: receiver,
            spent: false,
        })
    }

    /// Takes the longest-waiting task still waiting for `key` out of the queue.
    pub(crate) fn next_in_line(&self, key: &str) -> Option<Candidate> {
        let mut keys = lock(&self.keys);
        let queue = keys.get_mut(key)?;
        let mut next = None;
        while let Some((_, candidate)) = queue.pop_first() {
            if !candidate.handed.is_closed() {
                next = Some(candidate);
                break;
            }
        }
        if queue.is_empty() {
            keys.remove(key);
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LockError, LockOptions, Locker};

    const LEASE: Duration = Duration::from_secs(30);

    fn fixed() -> LockOptions {
        LockOptions::new().wait(Duration::ZERO).lease(LEASE)
    }

    /// Hands "k" from a holder to a queued place, the way a waiting task would be handed it.
    async fn hand_to_a_place(locker: &Locker) -> Place {
        let holder = locker.acquire("k", fixed()).await.unwrap();
        let place = Queues::queue_up(&locker.inner, "k", LEASE).unwrap();
        holder.release().await.unwrap();
        place
    }

    #[tokio::test]
    async fn a_claimed_hand_over_keeps_the_lock() {
        let locker = Locker::in_memory();
        let mut place = hand_to_a_place(&locker).await;
        let claimed = place.try_take().expect("handed over");
        assert_eq!(claimed.in_a_row, 1);
        drop(place);
        tokio::task::yield_now().await;
        let busy = locker.acquire("k", fixed()).await;
        assert!(
            matches!(busy, Err(LockError::NotAcquired { .. })),
            "{busy:?}"
        );
    }

    #[tokio::test]
    async fn a_hand_over_to_a_task_that_has_gone_is_released() {
        let locker = Locker::in_memory();
        let place = hand_to_a_place(&locker).await;
        drop(place); // the task gave up with the hand-over unclaimed in its channel
        let again = locker
            .acquire("k", fixed().wait(Duration::from_secs(5)))
            .await;
        assert!(again.is_ok(), "{again:?}");
    }

    #[tokio::test]
    async fn a_place_taken_without_a_hand_over_says_so_after_a_look() {
        let locker = Locker::in_memory();
        let mut place = Queues::queue_up(&locker.inner, "k", LEASE).unwrap();
        // A release took the place, then had nothing to hand (its lease had run out).
        drop(locker.inner.queues.next_in_line("k").expect("the place"));
        assert!(place.try_take().is_none());
        // What a waiter does next: wait for the hand-over. It must learn at once to queue again.
        assert!(place.handed().await.is_none());
    }

    #[tokio::test]
    async fn a_place_whose_task_left_is_skipped_and_forgotten() {
        let locker = Locker::in_memory();
        let gone = Queues::queue_up(&locker.inner, "k", LEASE).unwrap();
        let mut waiting = Queues::queue_up(&locker.inner, "k", LEASE).unwrap();
        drop(gone);
        let holder = locker.acquire("k", fixed()).await.unwrap();
        holder.release().await.unwrap();
        assert!(waiting.try_take().is_some(), "the second place got it");
        drop(waiting);
        assert!(lock(&locker.inner.queues.keys).is_empty());
    }
}
