//! The command connection, whatever the deployment: one server (a `ConnectionManager`), a Cluster
//! (redis-rs `cluster-async`, which follows MOVED/ASK and topology changes itself), or the primary
//! the sentinels name (a `ConnectionManager` to it, made anew when it may have changed).
//!
//! A connection's I/O runs in a task of the runtime it was made on. A locker outlives that
//! runtime when it is kept in a static or installed and then used from another one (the next
//! `#[tokio::test]`): its connection is then dead ("broken pipe"), and is made anew on the
//! runtime of the next caller. A liveness task on the old runtime is how that is noticed: it
//! ends with its runtime.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::oneshot;

use super::topology::SentinelClients;
use crate::error::BackendError;
use crate::mutex::lock;

/// A connection to send commands on; cheap to clone (clones share it).
#[derive(Clone)]
pub(crate) enum Conn {
    Manager(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where the primary is, for a deployment under Sentinel: asked of the sentinels each time,
/// since a failover moves it, through a client made for the question (no connection to a
/// sentinel stays open in between).
pub(crate) struct SentinelSource {
    clients: SentinelClients,
    timeout: Duration,
}

impl SentinelSource {
    pub(crate) fn new(clients: SentinelClients, timeout: Duration) -> Self {
        SentinelSource { clients, timeout }
    }

    /// A client for the current primary: the address a sentinel gives, once it answers `ROLE`
    /// as a primary.
    pub(crate) async fn primary(&self) -> Result<redis::Client, BackendError> {
        let mut sentinels = (self.clients)().map_err(BackendError::redis)?;
        let ask = sentinels.async_get_client();
        match tokio::time::timeout(self.timeout, ask).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(BackendError::redis(e)),
            Err(_) => Err(BackendError::timeout(
                self.timeout,
                "asking the sentinels for the primary",
            )),
        }
    }
}

/// How a new command connection is made.
pub(crate) enum Remake {
    Single(redis::Client, ConnectionManagerConfig),
    Cluster(ClusterClient),
    Sentinel(Arc<SentinelSource>, ConnectionManagerConfig),
}

impl Remake {
    async fn make(&self) -> Result<Conn, BackendError> {
        match self {
            // Connects at its first command.
            Remake::Single(client, config) => {
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                    .map(Conn::Manager)
                    .map_err(BackendError::redis)
            }
            Remake::Cluster(client) => client
                .get_async_connection()
                .await
                .map(Conn::Cluster)
                .map_err(BackendError::redis),
            Remake::Sentinel(source, config) => {
                let client = source.primary().await?;
                ConnectionManager::new_lazy_with_config(client, config.clone())
                    .map(Conn::Manager)
                    .map_err(BackendError::redis)
            }
        }
    }
}

/// The command connection of one locker.
pub(crate) struct Commands {
    current: Arc<Mutex<Option<Driven>>>,
    /// Sentinel: set when the primary may have moved; the next command asks the sentinels and
    /// connects anew.
    stale: AtomicBool,
    /// One caller at a time makes a new connection; the others then use it.
    remaking: tokio::sync::Mutex<()>,
    remake: Arc<Remake>,
    /// Cluster: when the last new connection was started beside the current one (see
    /// [`Commands::failed`]), and whether one is being made now.
    rebuilt_at: Arc<Mutex<Option<Instant>>>,
    rebuilding: Arc<AtomicBool>,
}

/// On a Cluster, the least time between two new connections made after failures: a shard that
/// stays unreachable must not have the client reconnect to every node on each command.
const CLUSTER_REBUILD_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How long making a new cluster connection beside the current one may take.
const CLUSTER_REBUILD_BOUND: Duration = Duration::from_secs(10);

/// A connection and a liveness task on the runtime that drives it.
struct Driven {
    conn: Conn,
    runtime_alive: oneshot::Receiver<()>,
}

impl Driven {
    fn new(conn: Conn) -> Self {
        let (mut alive, runtime_alive) = oneshot::channel::<()>();
        // Ends when the connection is replaced or dropped (its receiver is gone), or with the
        // runtime.
        tokio::spawn(async move { alive.closed().await });
        Driven {
            conn,
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

impl Commands {
    /// Starts with `conn`, made (and checked) at connect.
    pub(crate) fn new(conn: Conn, remake: Remake) -> Self {
        Commands {
            current: Arc::new(Mutex::new(Some(Driven::new(conn)))),
            stale: AtomicBool::new(false),
            remaking: tokio::sync::Mutex::new(()),
            remake: Arc::new(remake),
            rebuilt_at: Arc::new(Mutex::new(None)),
            rebuilding: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The connection to send a command on: the current one, or a new one when its runtime is
    /// gone, it was let go at close, or (Sentinel) the primary may have moved.
    pub(crate) async fn conn(&self) -> Result<Conn, BackendError> {
        if let Some(conn) = self.usable() {
            return Ok(conn);
        }
        let _turn = self.remaking.lock().await;
        // Someone else made one while this caller waited for its turn.
        if let Some(conn) = self.usable() {
            return Ok(conn);
        }
        // Stale until a new one is in place, also when this future is dropped meanwhile.
        let conn = self.remake.make().await?;
        tracing::debug!("lock command connection made anew");
        *lock(&self.current) = Some(Driven::new(conn.clone()));
        self.stale.store(false, Ordering::SeqCst);
        Ok(conn)
    }

    fn usable(&self) -> Option<Conn> {
        let mut current = lock(&self.current);
        let driven = current.as_mut()?;
        if driven.runtime_gone() || self.stale.load(Ordering::SeqCst) {
            return None;
        }
        Some(driven.conn.clone())
    }

    /// A command on the lock `lock` failed with `error` (`None`: no answer in time). Under Sentinel, a lost
    /// connection, a timeout, or a write refused as READONLY (the node was demoted) may mean a
    /// failover: the next command asks the sentinels where the primary is.
    ///
    /// On a Cluster the same failures start a new cluster connection beside the current one,
    /// which learns the slots afresh, and replaces it if it reaches the failed lock's node (at
    /// most one a second). The
    /// client library's own recovery can keep a slot map read in the middle of a failover (the
    /// shard's primary dead, its replica left out while it had been unreachable) and then time
    /// out every command on that shard long after the cluster has recovered: seen by the fault
    /// suite's cluster failover row, over 80 s and counting. Commands meanwhile go on through
    /// the current connection, so the other shards never wait for a shard that is cut off; and a
    /// new connection that cannot reach that shard either is not put in place: reconnecting to
    /// a node that does not answer would hold up its commands to every shard for a connect
    /// timeout (the fault suite's shard-cut row).
    pub(crate) fn failed(&self, error: Option<&redis::RedisError>, lock: &str) {
        if matches!(*self.remake, Remake::Single(..)) {
            return;
        }
        let moved = match error {
            None => true,
            Some(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
            }
        };
        if !moved {
            return;
        }
        if matches!(*self.remake, Remake::Cluster(..)) {
            self.rebuild_beside(lock);
        } else if !self.stale.swap(true, Ordering::SeqCst) {
            tracing::debug!("lock command connection failed; asking the sentinels for the primary");
        }
    }

    /// Cluster: makes a new connection in the background and puts it in place of the current
    /// one if it reaches the node of `lock`, unless one is being made or was made less than a
    /// second ago.
    fn rebuild_beside(&self, lock_name: &str) {
        {
            let mut rebuilt_at = lock(&self.rebuilt_at);
            if rebuilt_at.is_some_and(|at| at.elapsed() < CLUSTER_REBUILD_MIN_INTERVAL)
                || self.rebuilding.swap(true, Ordering::SeqCst)
            {
                return;
            }
            *rebuilt_at = Some(Instant::now());
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.rebuilding.store(false, Ordering::SeqCst);
            return;
        };
        let (remake, current, rebuilding, rebuilt_at) = (
            Arc::clone(&self.remake),
            Arc::clone(&self.current),
            Arc::clone(&self.rebuilding),
            Arc::clone(&self.rebuilt_at),
        );
        let name = lock_name.to_owned();
        tracing::debug!("lock command connection failed; connecting to the cluster anew beside it");
        runtime.spawn(async move {
            let reaching = async {
                let mut conn = remake.make().await?;
                // Read-only, on the failed lock's slot: does the new map lead to a live node?
                let _: i64 = redis::cmd("PTTL")
                    .arg(&name)
                    .query_async(&mut conn)
                    .await
                    .map_err(BackendError::redis)?;
                Ok::<_, BackendError>(conn)
            };
            match tokio::time::timeout(CLUSTER_REBUILD_BOUND, reaching).await {
                Ok(Ok(conn)) => {
                    let mut current = lock(&current);
                    // Not after close, which let the connection go for good.
                    if current.is_some() {
                        tracing::debug!(
                            "lock command connection replaced by a new cluster connection"
                        );
                        *current = Some(Driven::new(conn));
                    }
                }
                Ok(Err(error)) => tracing::debug!(%error, "new cluster connection not used"),
                Err(_) => tracing::debug!("new cluster connection took too long; not used"),
            }
            *lock(&rebuilt_at) = Some(Instant::now());
            rebuilding.store(false, Ordering::SeqCst);
        });
    }

    /// Lets the connection go (the locker was closed): it closes once no command uses it. A
    /// later command, if any, connects again.
    pub(crate) fn close(&self) {
        lock(&self.current).take();
    }
}
