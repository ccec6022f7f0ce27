//! The floor: the least a lock with an owner check does, as a reference, not a competitor. `SET
//! key token NX PX lease` to acquire, a compare-and-delete script to release, on one redis-rs
//! `ConnectionManager`: two commands per critical section, no fencing number, no renewal, no
//! notification of waiters (they retry, see [`crate::backoff`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use redis::aio::ConnectionManager;

use crate::backoff;

/// Deletes the key only if it still holds this owner's token, so a lock that expired and was
/// taken by someone else is not released by its former owner.
const RELEASE: &str = r"if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0";

#[derive(Clone)]
pub struct Floor {
    conn: ConnectionManager,
    /// Shared: cloning a `Script` copies its text, and every held lock keeps a `Floor`.
    release: Arc<redis::Script>,
    lease_ms: u64,
}

/// A lock the floor holds.
pub struct FloorHeld {
    floor: Floor,
    key: String,
    token: String,
}

impl Floor {
    pub async fn connect(url: &str, lease: Duration) -> Result<Floor> {
        let client = redis::Client::open(url).context("floor: opening the client")?;
        let conn = client
            .get_connection_manager()
            .await
            .context("floor: connecting")?;
        Ok(Floor {
            conn,
            release: Arc::new(redis::Script::new(RELEASE)),
            lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// Takes `key`, retrying while someone else holds it.
    pub async fn acquire(&self, key: &str) -> Result<FloorHeld> {
        // One token per acquisition: the owner check must tell two acquisitions of one process
        // apart.
        let token = format!("{:032x}", rand::random::<u128>());
        backoff::retry("floor", || async {
            let mut conn = self.conn.clone();
            let set: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(self.lease_ms)
                .query_async(&mut conn)
                .await
                .with_context(|| format!("floor: SET NX of {key:?}"))?;
            Ok(set.map(|_| ()))
        })
        .await?;
        Ok(FloorHeld {
            floor: self.clone(),
            key: key.to_owned(),
            token,
        })
    }
}

impl FloorHeld {
    pub async fn release(self) -> Result<()> {
        let mut conn = self.floor.conn.clone();
        let deleted: i64 = self
            .floor
            .release
            .key(&self.key)
            .arg(&self.token)
            .invoke_async(&mut conn)
            .await
            .with_context(|| format!("floor: releasing {:?}", self.key))?;
        if deleted != 1 {
            bail!("floor: {:?} was no longer ours at release", self.key);
        }
        Ok(())
    }
}
