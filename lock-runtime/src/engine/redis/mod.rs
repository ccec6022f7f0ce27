//! Redis: one server, a Cluster, or the primary Sentinel names; one script call per step, waiters
//! woken by pub/sub (sharded pub/sub on a Cluster). The topologies differ only in the connection
//! (`connection`), the subscriber (`waiters`, `shard_waiters`) and the publish command.
//!
//! Names for a lock `K` under prefix `P` (default `lock:`):
//! - `P{K}`: the lock, the only key: `<owner token>:<fencing number>:<holder label>` (the label
//!   and its `:` left out when empty) with a PX expiry; on a Cluster, a `K` that starts with `}`
//!   is named `P{~K~` instead (see `lock_key`);
//! - channel `P{K}:released`: a message on every release.
//!
//! The fencing number is the server clock in microseconds at the acquisition (or the previous
//! holder's number + 1 for a hand-over, when that is higher), so it needs no counter that would
//! outlive the lock: no key outlives its lock. The `{K}` hash tag keeps the lock's names in one
//! Cluster slot.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::Script;
use redis::aio::ConnectionManagerConfig;

use super::{Attempt, Engine, Released, Replicas, Subscription};
use crate::error::BackendError;
use crate::lock_info::LockInfo;

mod channels;
mod checks;
mod connection;
mod inspect;
mod replicas;
mod shard_waiters;
pub(crate) mod topology;
mod waiters;

use connection::{Commands, Conn, Remake, SentinelSource};
use replicas::{Acks, ReplicaCounts};
use topology::Topology;
use waiters::{Source, SubscriberSettings, Waiters};

/// Why a command failed: before it was sent (no connection to be had), or in Redis.
enum Failure {
    Engine(BackendError),
    Redis(redis::RedisError),
}

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
    /// The builder's replica acknowledgement default: when set, connecting checks that the
    /// user may send what it needs.
    pub(crate) replica_acks: Option<Duration>,
}

pub(crate) struct RedisEngine {
    commands: Commands,
    prefix: String,
    response_timeout: Duration,
    waiters: Waiters,
    holder_label: String,
    /// A Cluster: its own lock names for some keys, per-slot replica counts, and SPUBLISH.
    cluster: bool,
    /// For replica acknowledgement: how many replicas were connected at the last look.
    replica_counts: ReplicaCounts,
}

/// How many times the command connection retries a lost connection before a command fails;
/// each failure is reported to the caller, so a long retry chain would only hide an outage.
const RECONNECT_RETRIES: usize = 2;

impl RedisEngine {
    pub(crate) async fn connect(
        topology: Topology,
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
        let (source, remake) = match topology {
            Topology::Single(client) => (
                Source::Single(client.clone()),
                Remake::Single(client, config.clone()),
            ),
            Topology::Sentinel(client) => {
                let source = Arc::new(SentinelSource::new(client, bound));
                (
                    Source::Sentinel(Arc::clone(&source)),
                    Remake::Sentinel(source, config.clone()),
                )
            }
            Topology::Cluster(nodes) => {
                let client = nodes
                    .client(None, settings.connect_timeout, settings.response_timeout)
                    .map_err(BackendError::redis)?;
                (Source::Cluster(nodes), Remake::Cluster(client))
            }
        };
        let connect = async {
            let mut conn = match &remake {
                Remake::Single(client, config) => {
                    match client
                        .get_connection_manager_with_config(config.clone())
                        .await
                    {
                        Ok(conn) => Conn::Manager(conn),
                        Err(e) => {
                            return Err(checks::connection_refused(client, "connection", e).await);
                        }
                    }
                }
                Remake::Sentinel(source, config) => {
                    let client = source.primary().await?;
                    match client
                        .get_connection_manager_with_config(config.clone())
                        .await
                    {
                        Ok(conn) => Conn::Manager(conn),
                        Err(e) => {
                            return Err(checks::connection_refused(&client, "connection", e).await);
                        }
                    }
                }
                Remake::Cluster(client) => Conn::Cluster(
                    client
                        .get_async_connection()
                        .await
                        .map_err(BackendError::redis)?,
                ),
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
        let subscriber_settings = SubscriberSettings {
            source,
            connect_timeout: settings.connect_timeout,
            response_timeout: settings.response_timeout,
            health_check: settings.health_check,
        };
        // Made now rather than at the first contended acquire, so that a server that refuses it
        // says so here.
        let cluster = matches!(remake, Remake::Cluster(_));
        let subscriber = checks::open_subscriber(&subscriber_settings, &mut conn, &settings.prefix);
        let initial = tokio::time::timeout(bound, subscriber)
            .await
            .map_err(timed_out)??;
        let waiters = Waiters::start(subscriber_settings, initial);
        let backend = RedisEngine {
            commands: Commands::new(conn.clone(), remake),
            prefix: settings.prefix,
            response_timeout: settings.response_timeout,
            waiters,
            holder_label: settings.holder_label,
            cluster,
            replica_counts: ReplicaCounts::default(),
        };
        // The scripts run under the user's rights on the keys they touch: release a lock nobody
        // holds, which changes nothing.
        backend
            .release(checks::PROBE_KEY, checks::PROBE_KEY, None)
            .await
            .map_err(|e| checks::scripts_refused(e, &backend.prefix))?;
        if settings.replica_acks.is_some() {
            checks::check_replica_commands(&mut conn, settings.response_timeout).await?;
        }
        checks::warn_if_evicting(&mut conn, settings.response_timeout).await;
        Ok(backend)
    }

    /// Stops the wake-up subscriber and lets the command connection go (the locker was closed):
    /// the connection closes once no command uses it. A later command, if any, connects again.
    pub(crate) fn close(&self) {
        self.waiters.stop();
        self.commands.close();
    }

    /// How a release wakes waiters: PUBLISH, or on a Cluster SPUBLISH (heard on the lock's shard
    /// only).
    fn publish(&self) -> &'static str {
        publish_command(self.cluster)
    }

    /// The lock's name: `P{K}`, so that a Cluster keeps it and its channel in the slot of `K`.
    ///
    /// On a Cluster, a key that starts with `}` would give `P{}...}`, whose hash tag is empty:
    /// Redis would then hash the whole name, and the channel's (the name + `:released`) to
    /// another slot than the lock's, where the release script cannot publish. Such keys are
    /// named `P{~` + K + `~` instead (hash tag `~`): a name of that form never ends with `}`, so
    /// it never meets another key's `P{K}`.
    fn lock_key(&self, key: &str) -> String {
        if self.cluster && key.starts_with('}') {
            return format!("{}{{~{}~", self.prefix, key);
        }
        format!("{}{{{}}}", self.prefix, key)
    }

    /// One script step on the lock `lock`: `cmd` (an EVALSHA of `script`) alone, or with `acks`
    /// (the bound) followed by WAIT in the same round trip (see `replicas`).
    async fn call<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        lock: &str,
        cmd: redis::Cmd,
        acks: Option<Duration>,
        what: &'static str,
    ) -> Result<(T, Option<Acks>), BackendError> {
        // WAIT may use its whole bound before it answers.
        let bound = self.response_timeout + acks.unwrap_or(Duration::ZERO);
        let run = async {
            let mut conn = self.commands.conn().await.map_err(Failure::Engine)?;
            match acks {
                None => send(&mut conn, script, &Request::One(cmd))
                    .await
                    .map(|reply| (reply, None)),
                Some(within) => self.send_acked(&mut conn, script, cmd, lock, within).await,
            }
            .map_err(Failure::Redis)
        };
        match tokio::time::timeout(bound, run).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(Failure::Engine(e))) => Err(e),
            Ok(Err(Failure::Redis(e))) => {
                self.commands.failed(Some(&e), lock);
                if e.is_timeout() {
                    Err(BackendError::timeout(bound, what))
                } else {
                    Err(BackendError::redis(e))
                }
            }
            Err(_) => {
                self.commands.failed(None, lock);
                Err(BackendError::timeout(bound, what))
            }
        }
    }

    /// The script, WAIT and `INFO replication` in one pipeline; one more WAIT when more
    /// replicas are connected than were waited for.
    async fn send_acked<T: redis::FromRedisValue>(
        &self,
        conn: &mut Conn,
        script: &Script,
        cmd: redis::Cmd,
        lock: &str,
        within: Duration,
    ) -> redis::RedisResult<(T, Option<Acks>)> {
        let slot = if self.cluster {
            replicas::slot(lock)
        } else {
            0
        };
        let expected = self.replica_counts.expected(slot);
        let mut pipe = redis::pipe();
        pipe.add_command(cmd)
            .cmd("WAIT")
            .arg(expected)
            .arg(millis(within))
            .cmd("INFO")
            .arg("replication");
        let (reply, acknowledged, info): (T, u64, String) =
            send(conn, script, &Request::Acked(pipe)).await?;
        let connected = replicas::connected_replicas(&info);
        self.replica_counts.seen(slot, connected);
        let mut acks = Acks {
            acknowledged,
            connected,
            within,
        };
        if acknowledged < connected && expected < connected {
            // The count waited for was too low: wait for the rest, on the same node (PTTL is
            // routed by the lock's name, and WAIT follows it).
            let (_, acknowledged): (i64, u64) = redis::pipe()
                .cmd("PTTL")
                .arg(lock)
                .cmd("WAIT")
                .arg(connected)
                .arg(millis(within))
                .query_async(conn)
                .await?;
            acks.acknowledged = acknowledged;
        }
        Ok((reply, Some(acks)))
    }

    pub(crate) async fn try_acquire(
        &self,
        key: &str,
        token: &str,
        lease: Duration,
        replicas: Replicas,
    ) -> Result<Attempt, BackendError> {
        let (lock, reply, acks) = self.take(key, token, lease, None, replicas).await?;
        match reply.as_slice() {
            [1, fence] if *fence > 0 => {
                // The caller gives the lock up again: an error leaves its clean-up armed.
                if let Some(short) = acks.and_then(Acks::short) {
                    return Err(not_replicated("the lock", short));
                }
                Ok(Attempt::Acquired {
                    fence: *fence as u64,
                })
            }
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
        replicas: Replicas,
    ) -> Result<Option<u64>, BackendError> {
        let (_, reply, acks) = self.take(key, taker, lease, Some(giver), replicas).await?;
        match reply.as_slice() {
            [1, fence] if *fence > 0 => {
                // The caller gives the taker's lock up again on an error.
                if let Some(short) = acks.and_then(Acks::short) {
                    return Err(not_replicated("the lock", short));
                }
                Ok(Some(*fence as u64))
            }
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
        replicas: Replicas,
    ) -> Result<(String, Vec<i64>, Option<Acks>), BackendError> {
        let lock = self.lock_key(key);
        let mut cmd = eval(&ACQUIRE, &lock);
        cmd.arg(token).arg(millis(lease)).arg(&self.holder_label);
        if let Some(giver) = giver {
            cmd.arg(giver);
        }
        let (reply, acks) = self
            .call(&ACQUIRE, &lock, cmd, replicas, "acquiring")
            .await?;
        Ok((lock, reply, acks))
    }

    pub(crate) async fn release(
        &self,
        key: &str,
        token: &str,
        keep: Option<Duration>,
    ) -> Result<Released, BackendError> {
        let lock = self.lock_key(key);
        let channel = format!("{lock}:released");
        let mut cmd = eval(&RELEASE, &lock);
        cmd.arg(token)
            .arg(keep.map_or(0, |k| millis(k).max(1)))
            .arg(&channel)
            .arg(self.publish());
        let (reply, _): (i64, _) = self.call(&RELEASE, &lock, cmd, None, "releasing").await?;
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
        replicas: Replicas,
    ) -> Result<bool, BackendError> {
        let lock = self.lock_key(key);
        let mut cmd = eval(&RENEW, &lock);
        cmd.arg(token).arg(millis(lease));
        let (reply, acks): (i64, _) = self.call(&RENEW, &lock, cmd, replicas, "renewing").await?;
        if reply == 1
            && let Some(short) = acks.and_then(Acks::short)
        {
            return Err(not_replicated("the renewal", short));
        }
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
        replicas: Replicas,
    ) -> BoxFuture<'a, Result<Attempt, BackendError>> {
        Box::pin(RedisEngine::try_acquire(self, key, token, lease, replicas))
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
        replicas: Replicas,
    ) -> BoxFuture<'a, Result<Option<u64>, BackendError>> {
        Box::pin(RedisEngine::hand_over(
            self, key, giver, taker, lease, replicas,
        ))
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        lease: Duration,
        replicas: Replicas,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(RedisEngine::renew(self, key, token, lease, replicas))
    }

    fn subscribe<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Subscription> {
        Box::pin(RedisEngine::subscribe(self, key))
    }

    fn close(&self) {
        RedisEngine::close(self);
    }

    fn replica_wait_limit(&self) -> Option<Duration> {
        Some(self.response_timeout)
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

pub(super) fn publish_command(cluster: bool) -> &'static str {
    if cluster { "SPUBLISH" } else { "PUBLISH" }
}

/// An EVALSHA of `script` on the lock `lock`, its only key; the caller adds the arguments.
fn eval(script: &Script, lock: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(1).arg(lock);
    cmd
}

/// A script step alone, or in a pipeline with WAIT.
enum Request {
    One(redis::Cmd),
    Acked(redis::Pipeline),
}

/// Sends `request`; when the node does not know the script (a restarted or newly promoted
/// one), loads it and sends once more.
async fn send<T: redis::FromRedisValue>(
    conn: &mut Conn,
    script: &Script,
    request: &Request,
) -> redis::RedisResult<T> {
    let once = async |conn: &mut Conn| match request {
        Request::One(cmd) => cmd.query_async(conn).await,
        Request::Acked(pipe) => pipe.query_async(conn).await,
    };
    match once(conn).await {
        Err(e) if e.code() == Some("NOSCRIPT") => {
            script.load_async(conn).await?;
            once(conn).await
        }
        other => other,
    }
}

fn not_replicated(what: &'static str, acks: Acks) -> BackendError {
    BackendError::not_replicated(what, acks.acknowledged, acks.connected, acks.within)
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
