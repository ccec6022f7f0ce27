//! The watchdog: keeps a lock taken without a fixed lease alive while its guard lives, one
//! owner-checked renewal per renewal interval, and reports the loss as soon as it is known.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::shared::Shared;
use crate::shared::held::{HeldLock, LeaseEnd};

/// Bounds for the pause before retrying a failed renewal: short enough to renew before the lease
/// runs out, long enough not to hammer a server that is down.
const RENEW_RETRY_MIN: Duration = Duration::from_millis(10);
const RENEW_RETRY_MAX: Duration = Duration::from_secs(1);

/// The lock a watchdog keeps: its name, owner token, fencing number, and how long its renewals
/// wait for replica acknowledgements.
pub(crate) struct Kept {
    pub(crate) key: String,
    pub(crate) token: String,
    pub(crate) fence: u64,
    pub(crate) replicas: Option<Duration>,
}

/// The watchdog: renew every renewal interval while the guard lives; report the loss when a
/// renewal finds the lock gone or taken, or when the lease runs out with renewals failing.
pub(crate) async fn watchdog(
    shared: Arc<Shared>,
    kept: Kept,
    lost: CancellationToken,
    sent_at: Instant,
    lease_end: Arc<LeaseEnd>,
) {
    let Kept {
        key,
        token,
        fence,
        replicas,
    } = kept;
    let lease = shared.watchdog_lease;
    let every = shared.renewal_interval;
    let retry = (every / 4).clamp(RENEW_RETRY_MIN, RENEW_RETRY_MAX);
    let mut next = sent_at + every;
    loop {
        let expires = lease_end.get();
        tokio::time::sleep_until(next.min(expires)).await;
        if Instant::now() >= expires {
            HeldLock::mark_lost(
                &key,
                fence,
                &lost,
                "the lease ran out while renewals were failing",
            );
            return;
        }
        let sent = Instant::now();
        // A renewal the network swallowed must not hold the report back past the lease's end:
        // from then on another holder may have the lock.
        let renewed = tokio::select! {
            renewed = shared.engine.renew(&key, &token, lease, replicas) => renewed,
            () = tokio::time::sleep_until(expires) => {
                HeldLock::mark_lost(
                    &key,
                    fence,
                    &lost,
                    "the lease ran out while a renewal got no answer",
                );
                return;
            }
        };
        match renewed {
            Ok(true) => {
                tracing::trace!(key, fence, "lock lease renewed");
                lease_end.set(LeaseEnd::of(sent, lease));
                next = sent + every;
            }
            Ok(false) => {
                HeldLock::mark_lost(
                    &key,
                    fence,
                    &lost,
                    "a renewal found the lock expired or owned by another holder",
                );
                return;
            }
            Err(error) => {
                crate::metrics::backend_error(&key, crate::metrics::Op::Renew);
                tracing::debug!(key, fence, %error, "lock renewal failed; retrying");
                next = Instant::now() + retry;
            }
        }
    }
}
