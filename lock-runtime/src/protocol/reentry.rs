//! Re-entry by call nesting: an acquire made inside the scope of a lock of the same locker and
//! key joins that acquisition instead of waiting for itself, and never runs with less protection
//! than it asked for without being told.
//!
//! Ownership belongs to the call, not to the task: only code nested in the lock's scope (the
//! `#[distributed_lock]` body, [`crate::LockGuard::scope`]) re-enters. Futures joined next to the
//! holder in one task are separate callers and exclude each other.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::LockError;
use crate::options::LockOptions;
use crate::shared::Shared;
use crate::shared::held::{HeldLock, LeaseEnd};
use crate::shared::scopes;

/// The enclosing acquisition of `key`, with one more guard counted for the caller (which wraps it
/// in a guard at once) and at least the protection `options` ask for; `None` when the running
/// call is not inside one (or its lease was lost): acquire afresh.
///
/// Cancel-safe: the guard is counted only after the last await, so a dropped future leaves no
/// guard counted. An extension cut short may have reached the server; the lease end this client
/// knows then stays the earlier one, which is the safe side.
pub(crate) async fn reenter(
    shared: &Arc<Shared>,
    key: &str,
    options: LockOptions,
) -> Result<Option<Arc<HeldLock>>, LockError> {
    let Some(held) = scopes::enclosing(shared, key) else {
        return Ok(None);
    };
    // A lost lease is not held any more: take the lock afresh. The enclosing guard still reports
    // the loss at its own release.
    if held.is_lost() {
        return Ok(None);
    }
    if let Some(outer_lease) = held.lease {
        match options.lease_time() {
            Some(lease) => extend(&held, lease).await?,
            None => return Err(watchdog_inside_fixed_lease(key, outer_lease)),
        }
    }
    if !held.join() {
        return Ok(None);
    }
    if let Some(hold) = options.hold_at_least_time() {
        held.hold_until_at_least(Instant::now() + hold);
    }
    tracing::debug!(
        key,
        fence = held.fence,
        "lock re-entered by a call nested in its scope"
    );
    Ok(Some(held))
}

/// Makes the fixed lease of `held` last at least `lease` from now: one owner-checked renewal
/// when that ends later than the lease it has, nothing otherwise.
async fn extend(held: &HeldLock, lease: Duration) -> Result<(), LockError> {
    let _one_at_a_time = held.extending.lock().await;
    let sent = Instant::now();
    let end = LeaseEnd::of(sent, lease);
    if end <= held.lease_end.get() {
        return Ok(());
    }
    let renewed = held
        .shared
        .engine
        .renew(&held.key, &held.token, lease)
        .await
        .inspect_err(|_| crate::metrics::backend_error(&held.key, crate::metrics::Op::Renew))
        .map_err(|e| LockError::backend(Some(&held.key), e))?;
    if !renewed {
        HeldLock::mark_lost(
            &held.key,
            held.fence,
            &held.lost,
            "extending the lease for a nested call found the lock expired or owned by another holder",
        );
        return Err(LockError::LeaseLost {
            key: held.key.clone(),
        });
    }
    held.lease_end.set(end);
    tracing::debug!(
        key = %held.key,
        fence = held.fence,
        ?lease,
        "lock lease extended for a nested call"
    );
    Ok(())
}

fn watchdog_inside_fixed_lease(key: &str, outer_lease: Duration) -> LockError {
    LockError::InvalidOptions {
        key: Some(key.to_owned()),
        reason: format!(
            "this call asked for the watchdog (no lease), but it is nested in a call that holds \
             the lock with a fixed lease of {outer_lease:?}, which nothing renews: the lock could \
             expire under it; give the outer call the watchdog (no `lease`), or give this call \
             a fixed `lease`"
        ),
    }
}
