//! Single Redis server: one script call per step, waiters woken by pub/sub.
//!
//! Names for a lock `K` under prefix `P` (default `lock:`):
//! - `P{K}`: the lock, the only key: `<owner token>:<fencing number>:<holder label>` (the label
//!   and its `:` left out when empty) with a PX expiry;
//! - channel `P{K}:released`: a message on every release.
//!
//! The fencing number is the server clock in microseconds at the acquisition (or the previous
//! holder's number + 1 for a hand-over, when that is higher), so it needs no counter that would
//! outlive the lock: no key outlives its lock. The `{K}` hash tag keeps the lock's names in one
//! Cluster slot.

use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::oneshot;

use super::{Attempt, Engine, Released, Subscription};
use crate::error::BackendError;
use crate::lock_info::LockInfo;
use crate::mutex::lock;

mod checks;
mod inspect;
mod waiters;

use waiters::{SubscriberSettings, Waiters};

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("acquire.lua")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("release.lua")));
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("renew.lua")));

/// Connection settings the Redis engine needs from the locker's builder.
pub(crate) struct RedisSettings {
    pub(crate) prefix: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) health_check: Duration,
    /// Recorded with every lock taken (empty: none).
    pub(crate) holder_label: String,
}

pub(crate) struct RedisEngine {
    conn: Mutex<CommandConnection>,
    /// What a new command connection is made from, when the runtime of the old one is gone
    /// (boxed: needed rarely, and large).
    remake: Box<(redis::Client, ConnectionManagerConfig)>,
    prefix: String,
    response_timeout: Duration,
    waiters: Waiters,
    holder_label: String,
}

/// The command connection, and a sentinel task on the runtime that drives it.
///
/// The connection's I/O runs in a task of the runtime it was made on. A locker outlives that
/// runtime when it is kept in a static or installed and then used from another one (the next
/// `#[tokio::test]`): its connection is then dead ("broken pipe"), and is replaced on the
/// runtime of the next caller. The sentinel is how that is noticed: it ends with its runtime.
struct CommandConnection {
    manager: ConnectionManager,
    runtime_alive: oneshot::Receiver<()>,
}

impl CommandConnection {
    fn new(manager: ConnectionManager) -> Self {
        let (mut alive, runtime_alive) = oneshot::channel::<()>();
        // Ends when the connection is replaced or dropped (its receiver is gone), or with the
        // runtime.
        tokio::spawn(async move { alive.closed().await });
        CommandConnection {
            manager,
            runtime_alive,
        }
    }

    fn runtime_gone(&mut self) -> bool {
        matches!(
            self.runtime_alive.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        )
    }
}

/// How many times the command connection retries a lost connection before a command fails;
/// each failure is reported to the caller, so a long retry chain would only hide an outage.
const RECONNECT_RETRIES: usize = 2;

impl RedisEngine {
    pub(crate) async fn connect(
        client: redis::Client,
        settings: RedisSettings,
    ) -> Result<Self, BackendError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(Some(settings.response_timeout))
            .set_number_of_retries(RECONNECT_RETRIES);
        // Each connection (commands, wake-ups) within one connect timeout plus one response
        // timeout.
        let bound = settings.connect_timeout + settings.response_timeout;
        let timed_out = |_| BackendError::timeout(settings.connect_timeout, "connecting");
        let connect = async {
            let mut conn = match client
                .get_connection_manager_with_config(config.clone())
                .await
            {
                Ok(conn) => conn,
                Err(e) => return Err(checks::connection_refused(&client, "connection", e).await),
            };
            // Load the scripts now: the first acquire is then one EVALSHA like every other, and a
            // wrong password or an unusable server shows up here rather than at the first lock.
            for script in [&*ACQUIRE, &*RELEASE, &*RENEW] {
                script.load_async(&mut conn).await.map_err(|e| {
                    checks::scripts_refused(BackendError::redis(e), &settings.prefix)
                })?;
            }
            Ok(conn)
        };
        let mut conn = tokio::time::timeout(bound, connect)
            .await
            .map_err(timed_out)??;
        // Made now rather than at the first contended acquire, so that a server that refuses it
        // says so here.
        let subscriber = checks::open_subscriber(&client, &mut conn, &settings.prefix);
        let pubsub = tokio::time::timeout(bound, subscriber)
            .await
            .map_err(timed_out)??;
        let waiters = Waiters::start(
            SubscriberSettings {
                client: client.clone(),
                connect_timeout: settings.connect_timeout,
                response_timeout: settings.response_timeout,
                health_check: settings.health_check,
            },
            pubsub,
        );
        let backend = RedisEngine {
            conn: Mutex::new(CommandConnection::new(conn.clone())),
            remake: Box::new((client, config)),
            prefix: settings.prefix,
            response_timeout: settings.response_timeout,
            waiters,
            holder_label: settings.holder_label,
        };
        // The scripts run under the user's rights on the keys they touch: release a lock nobody
        // holds, which changes nothing.
        backend
            .release(checks::PROBE_KEY, checks::PROBE_KEY, None)
            .await
            .map_err(|e| checks::scripts_refused(e, &backend.prefix))?;
        checks::warn_if_evicting(&mut conn, settings.response_timeout).await;
        Ok(backend)
    }

    /// The command connection; a new one, driven by the current runtime, when the runtime of
    /// the old one is gone.
    fn command_connection(&self) -> ConnectionManager {
        let mut conn = lock(&self.conn);
        if conn.runtime_gone() {
            // Connects at its first command, in the caller's runtime.
            let (client, config) = &*self.remake;
            match ConnectionManager::new_lazy_with_config(client.clone(), config.clone()) {
                Ok(manager) => {
                    tracing::debug!(
                        "the runtime of the lock command connection is gone; reconnecting on \
                         this one"
                    );
                    *conn = CommandConnection::new(manager);
                }
                Err(error) => tracing::debug!(%error, "lock command connection not replaced"),
            }
        }
        conn.manager.clone()
    }

    /// Stops the wake-up subscriber and lets the command connection go (the locker was closed):
    /// the connection closes once no command uses it. A later command, if any, connects again.
    pub(crate) fn close(&self) {
        self.waiters.stop();
        let (client, config) = &*self.remake;
        match ConnectionManager::new_lazy_with_config(client.clone(), config.clone()) {
            Ok(idle) => *lock(&self.conn) = CommandConnection::new(idle),
            Err(error) => tracing::debug!(%error, "lock command connection kept at close"),
        }
    }

    fn lock_key(&self, key: &str) -> String {
        format!("{}{{{}}}", self.prefix, key)
    }

    async fn call<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
        what: &'static str,
    ) -> Result<T, BackendError> {
        let mut conn = self.command_connection();
        match tokio::time::timeout(self.response_timeout, invocation.invoke_async(&mut conn)).await
        {
            Ok(Err(e)) if e.is_timeout() => Err(BackendError::timeout(self.response_timeout, what)),
            Ok(result) => result.map_err(BackendError::redis),
            Err(_) => Err(BackendError::timeout(self.response_timeout, what)),
        }
    }

    pub(crate) async fn try_acquire(
        &self,
        key: &str,
        token: &str,
        lease: Duration,
    ) -> Result<Attempt, BackendError> {
        let (lock, reply) = self.take(key, token, lease, None).await?;
        match reply.as_slice() {
            [1, fence] if *fence > 0 => Ok(Attempt::Acquired {
                fence: *fence as u64,
            }),
            [0, pttl] if *pttl >= 0 => Ok(Attempt::Busy {
                ttl: Duration::from_millis(*pttl as u64),
            }),
            // A value someone else wrote (-1), or one of ours without expiry (PTTL -1): waiting
            // for its release could wait forever, and "another holder kept it" would be wrong.
            [-1, _] | [0, -1] => Err(BackendError::not_a_lock(lock)),
            other => Err(unexpected("acquire", other)),
        }
    }

    /// Passes the lock from `giver` to `taker` with a new lease and fencing number, if `giver`
    /// still holds it; `None` when it does not (nothing changed).
    pub(crate) async fn hand_over(
        &self,
        key: &str,
        giver: &str,
        taker: &str,
        lease: Duration,
    ) -> Result<Option<u64>, BackendError> {
        let (_, reply) = self.take(key, taker, lease, Some(giver)).await?;
        match reply.as_slice() {
            [1, fence] if *fence > 0 => Ok(Some(*fence as u64)),
            [0, -2] => Ok(None),
            other => Err(unexpected("hand-over", other)),
        }
    }

    /// The acquire script: free locks only, or (with `giver`) a hand-over from their holder.
    async fn take(
        &self,
        key: &str,
        token: &str,
        lease: Duration,
        giver: Option<&str>,
    ) -> Result<(String, Vec<i64>), BackendError> {
        let lock = self.lock_key(key);
        let mut invocation = ACQUIRE.prepare_invoke();
        invocation
            .key(&lock)
            .arg(token)
            .arg(millis(lease))
            .arg(&self.holder_label);
        if let Some(giver) = giver {
            invocation.arg(giver);
        }
        let reply = self.call(invocation, "acquiring").await?;
        Ok((lock, reply))
    }

    pub(crate) async fn release(
        &self,
        key: &str,
        token: &str,
        keep: Option<Duration>,
    ) -> Result<Released, BackendError> {
        let lock = self.lock_key(key);
        let channel = format!("{lock}:released");
        let mut invocation = RELEASE.prepare_invoke();
        invocation
            .key(&lock)
            .arg(token)
            .arg(keep.map_or(0, |k| millis(k).max(1)))
            .arg(&channel);
        let reply: i64 = self.call(invocation, "releasing").await?;
        Ok(if reply == 1 {
            Released::Done
        } else {
            Released::NotOwner
        })
    }

    pub(crate) async fn renew(
        &self,
        key: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool, BackendError> {
        let mut invocation = RENEW.prepare_invoke();
        invocation
            .key(self.lock_key(key))
            .arg(token)
            .arg(millis(lease));
        let reply: i64 = self.call(invocation, "renewing").await?;
        Ok(reply == 1)
    }

    pub(crate) async fn subscribe(&self, key: &str) -> Subscription {
        let channel = format!("{}:released", self.lock_key(key));
        self.waiters.subscribe(channel).await
    }
}

impl Engine for RedisEngine {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn try_acquire<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Attempt, BackendError>> {
        Box::pin(RedisEngine::try_acquire(self, key, token, lease))
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        keep: Option<Duration>,
    ) -> BoxFuture<'a, Result<Released, BackendError>> {
        Box::pin(RedisEngine::release(self, key, token, keep))
    }

    fn supports_hand_over(&self) -> bool {
        true
    }

    fn hand_over<'a>(
        &'a self,
        key: &'a str,
        giver: &'a str,
        taker: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Option<u64>, BackendError>> {
        Box::pin(RedisEngine::hand_over(self, key, giver, taker, lease))
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(RedisEngine::renew(self, key, token, lease))
    }

    fn subscribe<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Subscription> {
        Box::pin(RedisEngine::subscribe(self, key))
    }

    fn close(&self) {
        RedisEngine::close(self);
    }

    fn inspect<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<LockInfo>, BackendError>> {
        Box::pin(RedisEngine::inspect(self, key))
    }

    fn force_release<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<LockInfo>, BackendError>> {
        Box::pin(RedisEngine::force_release(self, key))
    }
}

fn unexpected(script: &str, reply: &[i64]) -> BackendError {
    BackendError::unexpected_reply(format!("{script} script returned {reply:?}"))
}

/// Milliseconds for PX/PEXPIRE, rounded up so a sub-millisecond remainder never becomes 0.
fn millis(d: Duration) -> u64 {
    let ms = d.as_millis();
    let ms = if d > Duration::from_millis(ms as u64) {
        ms + 1
    } else {
        ms
    };
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}
