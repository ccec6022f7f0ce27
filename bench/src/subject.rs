//! The lock implementations behind one shape: connect, acquire (waiting up to [`WAIT`]), release.
//! Each is used through its documented API, with its defaults except where noted. The floor is a
//! reference, not a competitor: it runs scenarios 1 and 2 only.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use distributed_lock_core::traits::{DistributedLock, LockHandle, LockProvider};
use serde::Serialize;

use crate::backoff;
use crate::floor::{Floor, FloorHeld};

/// The same long wait for all. rslock has no wait bound of its own (`acquire` loops until it
/// gets the lock), so its call is wrapped in a timeout; async-redis-lock's default wait is 1 s,
/// raised to this; distributed-lock does not wait at all on one server, so its tries are
/// retried up to this by [`backoff::retry`].
pub const WAIT: Duration = Duration::from_secs(60);
/// The lease given where the API takes one (ours, rslock, distributed-lock's expiry, the floor).
/// async-redis-lock keeps its default: a 3 s TTL renewed every second by its own background task.
pub const LEASE: Duration = Duration::from_secs(30);

/// How many implementations there are, the floor included.
pub const KINDS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    #[serde(rename = "distlock")]
    Ours,
    #[serde(rename = "rslock")]
    Rslock,
    #[serde(rename = "async-redis-lock")]
    AsyncRedisLock,
    #[serde(rename = "distributed-lock")]
    DistributedLock,
    #[serde(rename = "floor")]
    Floor,
}

impl Kind {
    pub const ALL: [Kind; KINDS] = [
        Kind::Ours,
        Kind::Rslock,
        Kind::AsyncRedisLock,
        Kind::DistributedLock,
        Kind::Floor,
    ];
    /// The implementations the contended scenarios (3 to 8) run: all but the floor.
    pub const CONTENDERS: [Kind; KINDS - 1] = [
        Kind::Ours,
        Kind::Rslock,
        Kind::AsyncRedisLock,
        Kind::DistributedLock,
    ];
    /// The peers ours is compared with.
    pub const PEERS: [Kind; 3] = [Kind::Rslock, Kind::AsyncRedisLock, Kind::DistributedLock];

    pub fn index(self) -> usize {
        match self {
            Kind::Ours => 0,
            Kind::Rslock => 1,
            Kind::AsyncRedisLock => 2,
            Kind::DistributedLock => 3,
            Kind::Floor => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Ours => "distlock",
            Kind::Rslock => "rslock 0.10",
            Kind::AsyncRedisLock => "async-redis-lock 0.4",
            Kind::DistributedLock => "distributed-lock 0.2",
            Kind::Floor => "floor (reference)",
        }
    }

    pub fn parse(s: &str) -> Result<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.slug() == s)
            .ok_or_else(|| anyhow!("unknown implementation {s:?}"))
    }

    pub fn slug(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::Rslock => "rslock",
            Kind::AsyncRedisLock => "async-redis-lock",
            Kind::DistributedLock => "distributed-lock",
            Kind::Floor => "floor",
        }
    }

    /// The Redis key the implementation stores lock `key` under (scenario 7 holds keys directly).
    pub fn redis_key(self, key: &str) -> String {
        match self {
            Kind::Ours => format!("{}{{{key}}}", distlock::DEFAULT_KEY_PREFIX),
            Kind::DistributedLock => format!("{DISTRIBUTED_LOCK_PREFIX}{key}"),
            Kind::Rslock | Kind::AsyncRedisLock | Kind::Floor => key.to_owned(),
        }
    }
}

/// What distributed-lock puts before a lock's name (not configurable).
const DISTRIBUTED_LOCK_PREFIX: &str = "distributed-lock:";

/// One connected lock client: what an application process would create once and share.
// Boxing the large variant would add an allocation to one implementation's measured path only.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Subject {
    Ours(distlock::Locker),
    Rslock(rslock::LockManager),
    AsyncRedisLock(async_redis_lock::Locker),
    /// The provider is not `Clone`; its clients are shared handles anyway.
    DistributedLock(Arc<distributed_lock_redis::RedisLockProvider>),
    Floor(Floor),
}

/// A held lock of any of them.
#[allow(clippy::large_enum_variant)]
pub enum Held {
    Ours(distlock::LockGuard),
    Rslock(rslock::LockGuard),
    AsyncRedisLock(async_redis_lock::Lock),
    DistributedLock(distributed_lock_redis::RedisLockHandle),
    Floor(FloorHeld),
}

impl Subject {
    pub async fn connect(kind: Kind, url: &str) -> Result<Subject> {
        Ok(match kind {
            Kind::Ours => Subject::Ours(
                distlock::Locker::connect(url)
                    .await
                    .context("distlock: connecting")?,
            ),
            // Connects lazily at the first lock; default retry settings (3 tries, 0-200 ms apart).
            Kind::Rslock => Subject::Rslock(rslock::LockManager::from_clients(vec![
                redis::Client::open(url).context("rslock: opening the client")?,
            ])),
            Kind::AsyncRedisLock => Subject::AsyncRedisLock(
                async_redis_lock::Locker::from_redis_url(url)
                    .await
                    .context("async-redis-lock: connecting")?,
            ),
            // Its defaults otherwise: renewal every 10 s, and 27 s of the expiry left after the
            // `SET NX` (which bounds that one command to 3 s).
            Kind::DistributedLock => Subject::DistributedLock(Arc::new(
                distributed_lock_redis::RedisLockProvider::builder()
                    .url(url)
                    .expiry(LEASE)
                    .build()
                    .await
                    .context("distributed-lock: connecting")?,
            )),
            Kind::Floor => Subject::Floor(Floor::connect(url, LEASE).await?),
        })
    }

    /// Takes `key`, waiting up to [`WAIT`]; an error if it was not acquired by then.
    pub async fn acquire(&self, key: &str) -> Result<Held> {
        match self {
            Subject::Ours(locker) => {
                let options = distlock::LockOptions::new().wait(WAIT).lease(LEASE);
                let guard = locker
                    .acquire(key, options)
                    .await
                    .with_context(|| format!("distlock: acquiring {key:?}"))?;
                Ok(Held::Ours(guard))
            }
            Subject::Rslock(manager) => {
                let guard = tokio::time::timeout(WAIT, manager.acquire(key, LEASE))
                    .await
                    .map_err(|_| anyhow!("rslock: {key:?} not acquired within {WAIT:?}"))?
                    .with_context(|| format!("rslock: acquiring {key:?}"))?;
                Ok(Held::Rslock(guard))
            }
            Subject::AsyncRedisLock(locker) => {
                let options = async_redis_lock::Options::new().timeout(Some(WAIT));
                let lock = locker
                    .acquire_with_options(&options, key)
                    .await
                    .with_context(|| format!("async-redis-lock: acquiring {key:?}"))?;
                Ok(Held::AsyncRedisLock(lock))
            }
            Subject::DistributedLock(provider) => {
                // A lock object draws its owner token when it is created: one per acquisition.
                // `try_acquire`, not `acquire(Some(WAIT))`: on one server both make one `SET NX`
                // and give up when the key is held, and `acquire` also leaves a task sleeping for
                // the whole timeout behind every call.
                //
                // Boxed: its future is ~11 KB, six times ours, and would otherwise set the size of
                // this function's future for every implementation (scenario 7 holds 10,000).
                let lock = provider.create_lock(key);
                let handle = Box::pin(backoff::retry("distributed-lock", || async {
                    lock.try_acquire()
                        .await
                        .with_context(|| format!("distributed-lock: acquiring {key:?}"))
                }))
                .await?;
                Ok(Held::DistributedLock(handle))
            }
            Subject::Floor(floor) => Ok(Held::Floor(floor.acquire(key).await?)),
        }
    }
}

impl Held {
    pub async fn release(self) -> Result<()> {
        match self {
            Held::Ours(guard) => guard.release().await.context("distlock: releasing")?,
            // Best effort by design: rslock reports nothing.
            Held::Rslock(guard) => guard.release().await,
            Held::AsyncRedisLock(lock) => lock
                .release()
                .await
                .context("async-redis-lock: releasing")?,
            Held::DistributedLock(handle) => handle
                .release()
                .await
                .context("distributed-lock: releasing")?,
            Held::Floor(held) => held.release().await?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::RedisServer;

    /// What dispatching over the implementations may add to a future: the borrowed arguments
    /// and the state of the `match`.
    const DISPATCH_BYTES: usize = 128;

    /// Scenario 7 holds thousands of these futures: the shared one must be ours's own size, not
    /// the largest peer's, or every implementation's memory per waiter is the largest one's.
    #[tokio::test]
    async fn the_shared_acquire_future_is_not_larger_than_ours() {
        let server = RedisServer::start().await.unwrap();
        let locker = distlock::Locker::connect(&server.url()).await.unwrap();
        let ours = std::mem::size_of_val(&locker.acquire("k", distlock::LockOptions::new()));
        for kind in Kind::ALL {
            let subject = Subject::connect(kind, &server.url()).await.unwrap();
            let shared = std::mem::size_of_val(&subject.acquire("k"));
            assert!(
                shared <= ours + DISPATCH_BYTES,
                "{}: {shared} bytes, ours alone {ours}",
                kind.name()
            );
        }
    }
}
