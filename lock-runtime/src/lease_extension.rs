//! Extending a fixed lease while it is held: for a nested call that asks for a longer lease (see
//! `reentry`), and for [`crate::LockGuard::extend`] (ShedLock's `LockExtender`).

use std::time::Duration;

use tokio::time::Instant;

use crate::error::LockError;
use crate::guard::{HeldLock, LeaseEnd};

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
        .locker
        .backend
        .renew(&held.key, &held.token, lease)
        .await
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
        return Err(LockError::LeaseLost {
            key: held.key.clone(),
        });
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
