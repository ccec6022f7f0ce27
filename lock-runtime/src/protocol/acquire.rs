//! Acquire: the first attempt, then the wait (queue for a hand-over, subscribe, retry, sleep
//! until a release, a hand-over, the holder's expiry or the deadline), and the state of a lock
//! just taken. Re-entry by call nesting is tried first (see [`super::reentry`]).

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::handoff::queue_up;
use super::reentry::reenter;
use super::watchdog::{Kept, watchdog};
use crate::engine::{Attempt, FALLBACK_RETRY_INTERVAL};
use crate::error::LockError;
use crate::options::{LockOptions, MAX_DURATION};
use crate::shared::Shared;
use crate::shared::held::{HeldLock, LeaseEnd};
use crate::shared::queues::Claimed;
use crate::token::new_token;

/// The longest key accepted, in bytes: a longer one is almost surely a value passed by mistake.
pub const MAX_KEY_LEN: usize = 1024;

/// Takes the lock `key` for a call (see `Locker::acquire` for what it promises): the state of the
/// acquisition, with one guard counted for the caller, who wraps it in a guard at once.
pub(crate) async fn acquire(
    shared: &Arc<Shared>,
    key: &str,
    options: LockOptions,
) -> Result<Arc<HeldLock>, LockError> {
    validate_key(key)?;
    options.validate(key)?;
    check_replica_wait(shared, key, options.replicas(shared.replica_acks))?;
    if let Some(held) = reenter(shared, key, options).await? {
        return Ok(held);
    }

    let started = Instant::now();
    let deadline = started
        .checked_add(options.wait_time())
        .unwrap_or(started + MAX_DURATION);
    let lease = options.lease_time().unwrap_or(shared.watchdog_lease);
    let replicas = options.replicas(shared.replica_acks);
    let token = new_token().map_err(|e| LockError::backend(Some(key), e))?;
    let not_acquired = || {
        let waited = started.elapsed();
        crate::metrics::not_acquired(key, waited);
        tracing::debug!(key, ?waited, "lock not acquired within the wait");
        LockError::NotAcquired {
            key: key.to_owned(),
            waited,
        }
    };

    let first = attempt(shared, key, &token, lease, replicas).await?;
    if let (Attempt::Acquired { fence }, sent_at) = first {
        return Ok(hold(
            shared,
            key,
            token,
            (fence, 0),
            sent_at,
            started,
            options,
        ));
    }
    if Instant::now() >= deadline {
        return Err(not_acquired());
    }

    // From here on nothing waits past the deadline, not even a request the network swallowed
    // (a request cut short sends its cleanup; see `attempt`). The last answer said "busy",
    // so running out of time here is NotAcquired.
    // Queue for a hand-over from a holder of this locker, and subscribe to releases by
    // everyone else, BEFORE retrying: a release between our retry and our sleep still reaches
    // us. A hand-over that arrives at any point wins: the lock is already ours.
    let queue_up =
        || queue_up(shared, key, lease, replicas).map_err(|e| LockError::backend(Some(key), e));
    let mut place = queue_up()?;
    let handed = |lock: Claimed| {
        let fence = (lock.fence, lock.in_a_row);
        Ok(hold(
            shared,
            key,
            lock.token,
            fence,
            lock.sent_at,
            started,
            options,
        ))
    };
    let Ok(subscription) = tokio::time::timeout_at(deadline, shared.engine.subscribe(key)).await
    else {
        return place.try_take().map_or_else(|| Err(not_acquired()), handed);
    };
    // A release message wakes one waiter of this locker. The one woken owes the others a retry:
    // if it goes away (dropped, out of time, an error) before its retry got an answer, the
    // wake-up passes to the next waiter, which would otherwise sleep on beside a free lock.
    let mut wake_up = WakeUp(None);
    loop {
        let notified = subscription.notify().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let attempt =
            tokio::time::timeout_at(deadline, attempt(shared, key, &token, lease, replicas)).await;
        if let Some(lock) = place.try_take() {
            // Ours now: its release wakes the others.
            wake_up.spent();
            return handed(lock);
        }
        let Ok(attempt) = attempt else {
            return Err(not_acquired());
        };
        let attempt = attempt?;
        // An answer: either the lock is ours (its release wakes the others) or another holder
        // has it (its release will).
        wake_up.spent();
        match attempt {
            (Attempt::Acquired { fence }, sent_at) => {
                let fence = (fence, 0);
                return Ok(hold(shared, key, token, fence, sent_at, started, options));
            }
            (Attempt::Busy { ttl }, _) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(not_acquired());
                }
                // Also retry when the holder's lease runs out: a crashed holder never publishes.
                let mut wake_at = (now + ttl + Duration::from_millis(1)).min(deadline);
                // A release may not reach us: ask at a steady pace. A subscription that comes
                // up wakes us (`notified` was enabled before the attempt), so none is missed.
                if !subscription.is_live() {
                    wake_at = wake_at.min(now + FALLBACK_RETRY_INTERVAL);
                }
                let woken = tokio::select! {
                    lock = place.handed() => Some(lock),
                    _ = &mut notified => {
                        wake_up = WakeUp(Some(subscription.notify_handle()));
                        None
                    }
                    _ = tokio::time::sleep_until(wake_at) => None,
                };
                match woken {
                    Some(Some(lock)) => return handed(lock),
                    // Taken from the queue by a release that handed nothing (its lease had
                    // run out, or no answer came): queue again and retry at once.
                    Some(None) => place = queue_up()?,
                    None => {}
                }
            }
        }
    }
}

/// A release's wake-up taken by this waiter and not acted on yet; dropped armed, it wakes the
/// next waiter of the same subscription in its place.
struct WakeUp(Option<Arc<tokio::sync::Notify>>);

impl WakeUp {
    /// Acted on: the retry got an answer, or the lock is ours.
    fn spent(&mut self) {
        self.0 = None;
    }
}

impl Drop for WakeUp {
    fn drop(&mut self) {
        if let Some(notify) = self.0.take() {
            notify.notify_one();
        }
    }
}

/// One acquisition attempt; returns the outcome and when the request was sent (the lease is
/// counted from then, so our idea of the expiry is never later than the server's).
///
/// If this future is dropped while the request is in flight, or the request fails without an
/// answer, the lock may have been taken on the server with our token: a compare-and-delete
/// with the same token is then sent in the background, behind the acquire on the same
/// connection, so a cancelled or failed acquire never leaves the lock held.
async fn attempt(
    shared: &Arc<Shared>,
    key: &str,
    token: &str,
    lease: Duration,
    replicas: Option<Duration>,
) -> Result<(Attempt, Instant), LockError> {
    let sent_at = Instant::now();
    let mut in_flight = InFlight {
        shared: Some(shared),
        key,
        token,
    };
    // An error (a timeout above all) does not say the script did not run: keep the cleanup
    // armed for it too. Only an answer disarms it.
    let attempt = shared
        .engine
        .try_acquire(key, token, lease, replicas)
        .await
        .inspect_err(|_| crate::metrics::backend_error(key, crate::metrics::Op::Acquire))
        .map_err(|e| LockError::backend(Some(key), e))?;
    in_flight.shared = None;
    Ok((attempt, sent_at))
}

/// The state of a lock just taken, with its one guard counted; `(fence, in_a_row)`: its fencing number and how many
/// hand-overs in a row led to it (0 when it was taken free).
fn hold(
    shared: &Arc<Shared>,
    key: &str,
    token: String,
    (fence, handovers_in_a_row): (u64, u32),
    sent_at: Instant,
    started: Instant,
    options: LockOptions,
) -> Arc<HeldLock> {
    let lost = CancellationToken::new();
    let lease = options.lease_time();
    let replicas = options.replicas(shared.replica_acks);
    let lease_end = Arc::new(LeaseEnd::new(LeaseEnd::of(
        sent_at,
        lease.unwrap_or(shared.watchdog_lease),
    )));
    // Only the watchdog needs a task; a fixed lease is a deadline compared when observed.
    let keeper = lease.is_none().then(|| {
        tokio::spawn(watchdog(
            Arc::clone(shared),
            Kept {
                key: key.to_owned(),
                token: token.clone(),
                fence,
                replicas,
            },
            lost.clone(),
            sent_at,
            Arc::clone(&lease_end),
        ))
    });
    let acquired_at = Instant::now();
    let held = Arc::new(HeldLock {
        shared: Arc::clone(shared),
        key: key.to_owned(),
        token,
        fence,
        acquired_at,
        lease,
        replicas,
        hold_until: Mutex::new(options.hold_at_least_time().map(|hold| acquired_at + hold)),
        guards: AtomicUsize::new(1),
        extending: tokio::sync::Mutex::new(()),
        handovers_in_a_row,
        lost,
        lease_end,
        keeper: Mutex::new(keeper),
        release_claimed: AtomicBool::new(false),
        released_at: std::sync::OnceLock::new(),
        released: CancellationToken::new(),
    });
    shared.shutdown.register(&held);
    crate::metrics::acquired(key, started.elapsed());
    tracing::debug!(
        key,
        fence,
        waited = ?started.elapsed(),
        lease = ?options.lease_time(),
        "lock acquired"
    );
    held
}

/// Armed while an acquire request is in flight; see [`attempt`].
struct InFlight<'a> {
    shared: Option<&'a Arc<Shared>>,
    key: &'a str,
    token: &'a str,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        shared.release_in_background(
            self.key.to_owned(),
            self.token.to_owned(),
            "a cancelled acquire",
        );
    }
}

/// A replica acknowledgement bound the engine can wait for: WAIT answers within its bound, and a
/// step not answered within the response timeout is abandoned (as a timeout, not as "not
/// replicated").
pub(crate) fn check_replica_wait(
    shared: &Shared,
    key: &str,
    replicas: Option<Duration>,
) -> Result<(), LockError> {
    match (replicas, shared.engine.replica_wait_limit()) {
        (Some(within), Some(limit)) if within >= limit => Err(LockError::InvalidOptions {
            key: Some(key.to_owned()),
            reason: format!(
                "replica_acks {within:?} must be shorter than the response timeout {limit:?}: a \
                 step is abandoned when the response timeout ends, before WAIT would answer; \
                 shorten replica_acks or lengthen response_timeout"
            ),
        }),
        _ => Ok(()),
    }
}

pub(crate) fn validate_key(key: &str) -> Result<(), LockError> {
    let reason = if key.is_empty() {
        "the key is empty; name the resource the lock protects, e.g. \"book:{isbn}\""
    } else if key.len() > MAX_KEY_LEN {
        "the key is longer than 1024 bytes; lock on an id or a hash of the resource instead"
    } else {
        return Ok(());
    };
    Err(LockError::InvalidKey {
        key: key.chars().take(64).collect(),
        reason,
    })
}
