//! The three lock implementations behind one shape: connect, acquire (waiting up to [`WAIT`]),
//! release. Each is used through its documented API, with its defaults except where noted.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde::Serialize;

/// The same long wait for all three. rslock has no wait bound of its own (`acquire` loops until it
/// gets the lock), so its call is wrapped in a timeout; async-redis-lock's default wait is 1 s,
/// raised to this.
pub const WAIT: Duration = Duration::from_secs(60);
/// The lease given where the API takes one (ours and rslock). async-redis-lock keeps its default:
/// a 3 s TTL renewed every second by its own background task.
pub const LEASE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    #[serde(rename = "distlock")]
    Ours,
    #[serde(rename = "rslock")]
    Rslock,
    #[serde(rename = "async-redis-lock")]
    AsyncRedisLock,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Ours, Kind::Rslock, Kind::AsyncRedisLock];

    pub fn index(self) -> usize {
        match self {
            Kind::Ours => 0,
            Kind::Rslock => 1,
            Kind::AsyncRedisLock => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Ours => "distlock",
            Kind::Rslock => "rslock 0.10",
            Kind::AsyncRedisLock => "async-redis-lock 0.4",
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
        }
    }

    /// The Redis key the implementation stores lock `key` under (scenario 7 holds keys directly).
    pub fn redis_key(self, key: &str) -> String {
        match self {
            Kind::Ours => format!("{}{{{key}}}", distlock::DEFAULT_KEY_PREFIX),
            Kind::Rslock | Kind::AsyncRedisLock => key.to_owned(),
        }
    }
}

/// One connected lock client: what an application process would create once and share.
// Boxing the large variant would add an allocation to one implementation's measured path only.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Subject {
    Ours(distlock::Locker),
    Rslock(rslock::LockManager),
    AsyncRedisLock(async_redis_lock::Locker),
}

/// A held lock of any of the three.
#[allow(clippy::large_enum_variant)]
pub enum Held {
    Ours(distlock::LockGuard),
    Rslock(rslock::LockGuard),
    AsyncRedisLock(async_redis_lock::Lock),
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
        }
        Ok(())
    }
}
