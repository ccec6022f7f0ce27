//! The hand-over queues, as data: the tasks of one locker that wait for a key, in arrival order,
//! and what passes between a release and a waiting task. How they are used is
//! `protocol::handoff`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Shared;
use crate::mutex::lock;

/// The waiting tasks of one locker, per key, in arrival order.
#[derive(Default)]
pub(crate) struct Queues {
    pub(crate) next_id: AtomicU64,
    pub(crate) keys: Mutex<HashMap<String, BTreeMap<u64, Candidate>>>,
}

/// A waiting task, as a release sees it.
pub(crate) struct Candidate {
    pub(crate) token: String,
    pub(crate) lease: Duration,
    /// The waiter's replica acknowledgement bound, for the hand-over's write.
    pub(crate) replicas: Option<Duration>,
    pub(crate) handed: oneshot::Sender<Handed>,
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
    unclaimed: Option<(Arc<Shared>, String)>,
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
        shared: &Arc<Shared>,
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
            unclaimed: Some((Arc::clone(shared), key.to_owned())),
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
        if let Some((shared, key)) = self.unclaimed.take() {
            let token = std::mem::take(&mut self.claimed.token);
            shared.release_in_background(key, token, "a lock handed to a task that had gone");
        }
    }
}

/// A task's place in its key's queue. Dropping it leaves the queue; a hand-over that arrived
/// meanwhile and was not taken is released (see [`Handed`]).
pub(crate) struct Place {
    pub(crate) shared: Arc<Shared>,
    pub(crate) key: String,
    pub(crate) id: u64,
    pub(crate) handed: oneshot::Receiver<Handed>,
    /// Set when `try_take` found that a release took this place and handed nothing: the
    /// receiver is finished then, and polling it again would panic.
    pub(crate) spent: bool,
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
        let mut keys = lock(&self.shared.queues.keys);
        if let Some(queue) = keys.get_mut(&self.key) {
            queue.remove(&self.id);
            if queue.is_empty() {
                keys.remove(&self.key);
            }
        }
    }
}
