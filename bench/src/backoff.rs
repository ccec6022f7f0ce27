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
