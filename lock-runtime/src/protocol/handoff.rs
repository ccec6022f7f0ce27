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

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::engine::Released;
use crate::error::BackendError;
use crate::mutex::lock;
use crate::shared::Shared;
use crate::shared::held::HeldLock;
use crate::shared::queues::{Candidate, Handed, Place};
use crate::token::new_token;

/// Puts a task that waits for `key` at the end of its queue, with a fresh token for the
/// hand-over.
pub(crate) fn queue_up(
    shared: &Arc<Shared>,
    key: &str,
    lease: Duration,
    replicas: Option<Duration>,
) -> Result<Place, BackendError> {
    let token = new_token()?;
    let id = shared.queues.next_id.fetch_add(1, Ordering::Relaxed);
    let (handed, receiver) = oneshot::channel();
    let candidate = Candidate {
        token,
        lease,
        replicas,
        handed,
    };
    lock(&shared.queues.keys)
        .entry(key.to_owned())
        .or_default()
        .insert(id, candidate);
    Ok(Place {
        shared: Arc::clone(shared),
        key: key.to_owned(),
        id,
        handed: receiver,
        spent: false,
    })
}

/// Takes the longest-waiting task still waiting for `key` out of its queue.
fn next_in_line(shared: &Shared, key: &str) -> Option<Candidate> {
    let mut keys = lock(&shared.queues.keys);
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

/// Passes the lock to the next task of this locker that waits for it, if there is one and
/// the hand-overs in a row allow; otherwise releases it (or keeps it for `keep`).
pub(crate) async fn hand_over_or_release(
    held: &HeldLock,
    keep: Option<Duration>,
) -> Result<Released, BackendError> {
    let shared = &held.shared;
    let next = match keep {
        None if held.handovers_in_a_row < shared.max_handovers_in_a_row
            && !shared.shutdown.is_closed() =>
        {
            next_in_line(shared, &held.key)
        }
        _ => None,
    };
    let Some(next) = next else {
        return shared.engine.release(&held.key, &held.token, keep).await;
    };
    let sent_at = Instant::now();
    let handed = shared
        .engine
        .hand_over(
            &held.key,
            &held.token,
            &next.token,
            next.lease,
            next.replicas,
        )
        .await;
    match handed {
        Ok(Some(fence)) => {
            let in_a_row = held.handovers_in_a_row + 1;
            crate::metrics::handed_over(&held.key);
            tracing::debug!(key = %held.key, fence, in_a_row, "lock handed over to a waiting task");
            let handed = Handed::new(shared, &held.key, &next.token, fence, sent_at, in_a_row);
            next.hand(handed);
            Ok(Released::Done)
        }
        // `next` is dropped: its task learns that nothing was handed, and asks again.
        Ok(None) => Ok(Released::NotOwner),
        // Passed on, but not to every replica in time: the giver's hold did end, so its release
        // is done; the taker's lock is given up again, and its task asks again.
        Err(error) if error.is_not_replicated() => {
            shared.release_in_background(
                held.key.clone(),
                next.token.clone(),
                "a hand-over the replicas did not acknowledge",
            );
            Ok(Released::Done)
        }
        Err(error) => {
            // No answer: the lock may have passed to `next`, whose task is told nothing was
            // handed and asks again; so give it up on the task's behalf.
            shared.release_in_background(
                held.key.clone(),
                next.token.clone(),
                "a hand-over that got no answer",
            );
            Err(error)
        }
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
        let place = queue_up(&locker.shared, "k", LEASE, None).unwrap();
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
        let mut place = queue_up(&locker.shared, "k", LEASE, None).unwrap();
        // A release took the place, then had nothing to hand (its lease had run out).
        drop(next_in_line(&locker.shared, "k").expect("the place"));
        assert!(place.try_take().is_none());
        // What a waiter does next: wait for the hand-over. It must learn at once to queue again.
        assert!(place.handed().await.is_none());
    }

    #[tokio::test]
    async fn a_place_whose_task_left_is_skipped_and_forgotten() {
        let locker = Locker::in_memory();
        let gone = queue_up(&locker.shared, "k", LEASE, None).unwrap();
        let mut waiting = queue_up(&locker.shared, "k", LEASE, None).unwrap();
        drop(gone);
        let holder = locker.acquire("k", fixed()).await.unwrap();
        holder.release().await.unwrap();
        assert!(waiting.try_take().is_some(), "the second place got it");
        drop(waiting);
        assert!(lock(&locker.shared.queues.keys).is_empty());
    }
}
