//! Extending a fixed lease while it is held: for a nested call that asks for a longer lease (see
//! `reentry`), and for [`crate::LockGuard::extend`] (ShedLock's `LockExtender`).

use std::time::Duration;

use tokio::time::Instant;

use crate::error::LockError;
use crate::options::check_lease;
use crate::shared::held::{HeldLock, LeaseEnd};

/// Makes the fixed lease of `held` last at least `lease` from now: one owner-checked renewal
/// when that ends later than the lease it has, nothing otherwise (a lease is never shortened:
/// this client's idea of its end must never be later than the server's). `asker` names who
/// asked, for the logs.
///
/// Cancel-safe: an extension cut short may have reached the server; the lease end this client
/// knows then stays the earlier one, which is the safe side.
pub(crate) async fn extend(
    held: &HeldLock,
    lease: Duration,
    asker: &'static str,
) -> Result<(), LockError> {
    let _one_at_a_time = held.extending.lock().await;
    let sent = Instant::now();
    let end = LeaseEnd::of(sent, lease);
    if end <= held.lease_end.get() {
        return Ok(());
    }
    let renewed = held
        .shared
        .engine
        .renew(&held.key, &held.token, lease, held.replicas)
        .await
        .inspect_err(|_| crate::metrics::backend_error(&held.key, crate::metrics::Op::Renew))
        .map_err(|e| LockError::backend(Some(&held.key), e))?;
    if !renewed {
        HeldLock::mark_lost(
            &held.key,
            held.fence,
            &held.lost,
            &format!(
                "extending the lease for {asker} found the lock expired or owned by another holder"
            ),
        );
        return Err(held.lease_lost());
    }
    held.lease_end.set(end);
    tracing::debug!(
        key = %held.key,
        fence = held.fence,
        ?lease,
        asker,
        "lock lease extended"
    );
    Ok(())
}

/// See [`crate::LockGuard::extend`]: a fixed lease extended by its holder; nothing to do under
/// the watchdog, which renews while the guard lives.
pub(crate) async fn extend_by_holder(held: &HeldLock, lease: Duration) -> Result<(), LockError> {
    check_lease("lease", lease).map_err(|reason| LockError::InvalidOptions {
        key: Some(held.key.clone()),
        reason,
    })?;
    if held.is_release_claimed() {
        return Err(LockError::InvalidOptions {
            key: Some(held.key.clone()),
            reason: "the lock was released (or is being released): `extend` works only while it \
                     is held"
                .to_owned(),
        });
    }
    if held.is_lost() {
        return Err(held.lease_lost());
    }
    if held.lease.is_none() {
        return Ok(());
    }
    extend(held, lease, "its holder").await
}
