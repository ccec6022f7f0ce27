//! The waiting of a lock that can only try: retry with a jittered, doubling pause until [`WAIT`].
//! distributed-lock's Redis lock does not wait on one server (its `acquire(timeout)` makes one
//! `SET NX` and reports `Timeout` at once when the key is held), so a user has to write this loop;
//! the floor waits with it too.

use std::future::Future;
use std::time::Duration;

use anyhow::{Result, anyhow};
use rand::Rng;
use tokio::time::Instant;

use crate::subject::WAIT;

/// The first pause after a failed try: about one round trip on a LAN, so a lock released at once
/// is taken soon.
pub const FIRST_PAUSE: Duration = Duration::from_millis(2);
/// The longest pause: a held lock costs the server at most ~20 tries per second per waiter.
pub const MAX_PAUSE: Duration = Duration::from_millis(50);

/// Calls `attempt` until it returns `Some`, pausing between tries; an error once [`WAIT`] has
/// passed. Each pause is drawn from the upper half of the current step (so waiters that failed
/// together do not retry together), and the step doubles up to [`MAX_PAUSE`].
pub async fn retry<T, F, Fut>(what: &str, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + WAIT;
    let mut step = FIRST_PAUSE;
    loop {
        if let Some(acquired) = attempt().await? {
            return Ok(acquired);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(anyhow!("{what}: not acquired within {WAIT:?}"));
        }
        let pause = rand::thread_rng().gen_range(step / 2..=step);
        tokio::time::sleep_until((now + pause).min(deadline)).await;
        step = (step * 2).min(MAX_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use distributed_lock_core::error::LockError;
    use distributed_lock_core::traits::{DistributedLock, LockHandle, LockProvider};

    use crate::server::RedisServer;

    /// Far longer than one `SET NX` on loopback, far shorter than the timeout asked for.
    const AT_ONCE: Duration = Duration::from_secs(1);
    const ASKED: Duration = Duration::from_secs(10);

    /// Why the retry loop exists: distributed-lock's `acquire(timeout)` on one server gives up
    /// at once when the key is held, whatever the timeout.
    #[tokio::test]
    async fn distributed_lock_acquire_does_not_wait_on_one_server() {
        let server = RedisServer::start().await.unwrap();
        let provider = distributed_lock_redis::RedisLockProvider::builder()
            .url(server.url())
            .build()
            .await
            .unwrap();
        let held = provider
            .create_lock("k")
            .try_acquire()
            .await
            .unwrap()
            .unwrap();
        let started = tokio::time::Instant::now();
        let second = provider.create_lock("k").acquire(Some(ASKED)).await;
        assert!(
            matches!(second, Err(LockError::Timeout(_))),
            "{:?}",
            second.err()
        );
        assert!(
            started.elapsed() < AT_ONCE,
            "waited {:?}",
            started.elapsed()
        );
        held.release().await.unwrap();
    }
}
