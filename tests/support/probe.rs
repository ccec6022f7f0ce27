//! The conformance suite's Redis-only checks on any Redis topology (one server, a Cluster, a
//! Sentinel setup), each asked where the answer lives: keyed commands where the key lives,
//! command counts summed over the primaries (where lock scripts run), subscribers over every
//! data node (a Cluster waiter subscribes on its shard, with SSUBSCRIBE), connections over every
//! process (sentinels too).
//!
//! Made per test, on the test's runtime (an async connection dies with the runtime it was made
//! on, and the Cluster and Sentinel setups outlive each test).

use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::cluster::RedisCluster;
use super::redis_server::commandstat_calls;
use super::sentinel::RedisSentinel;

/// The name of the probe's own connections, so counting a locker's connections leaves them out.
const PROBE_NAME: &str = "distlock-test-probe";
/// Until a waiter has subscribed, or the server has run some commands: a round trip or two when
/// idle; 10 s for a loaded 2-core machine.
const WAIT_BOUND: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// A connection for keyed commands (GET, SET, PTTL, DEL ...) that reaches the key's node.
#[derive(Clone)]
pub enum KeyedConnection {
    Node(MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for KeyedConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            KeyedConnection::Node(conn) => conn.req_packed_command(cmd),
            KeyedConnection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            KeyedConnection::Node(conn) => conn.req_packed_commands(pipeline, offset, count),
            KeyedConnection::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            KeyedConnection::Node(conn) => conn.get_db(),
            KeyedConnection::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Where keyed commands go.
#[derive(Clone)]
enum Keys {
    Node(u16),
    /// Seeds and the announced-to-real address map are the cluster's; a fresh client each time.
    Cluster(Box<redis::cluster::ClusterClient>),
}

#[derive(Clone)]
pub struct Probe {
    keys: Keys,
    /// Where lock scripts run.
    primaries: Vec<MultiplexedConnection>,
    /// Primaries and replicas: where a waiter may subscribe.
    data: Vec<MultiplexedConnection>,
    /// Every process of the topology: where a locker may hold connections.
    all: Vec<MultiplexedConnection>,
}

impl Probe {
    pub async fn single(port: u16) -> Self {
        let conn = connect(port).await;
        Probe {
            keys: Keys::Node(port),
            primaries: vec![conn.clone()],
            data: vec![conn.clone()],
            all: vec![conn],
        }
    }

    pub async fn cluster(cluster: &RedisCluster) -> Self {
        let mut primaries = Vec::new();
        let mut data = Vec::new();
        for node in cluster.nodes().iter().filter(|node| node.is_running()) {
            let conn = connect(node.port()).await;
            if node.role() == Some(super::cluster::Role::Primary) {
                primaries.push(conn.clone());
            }
            data.push(conn);
        }
        Probe {
            keys: Keys::Cluster(Box::new(
                cluster.client_builder().build().expect("cluster client"),
            )),
            primaries,
            all: data.clone(),
            data,
        }
    }

    pub async fn sentinel(setup: &RedisSentinel) -> Self {
        let primary = setup.primary_port();
        let mut data = Vec::new();
        for &port in setup.data_ports() {
            data.push(connect(port).await);
        }
        let mut all = data.clone();
        for port in setup.sentinel_ports() {
            all.push(connect(port).await);
        }
        Probe {
            keys: Keys::Node(primary),
            primaries: vec![connect(primary).await],
            data,
            all,
        }
    }

    /// A plain connection (not distlock's) for keyed commands.
    pub async fn client(&self) -> KeyedConnection {
        match &self.keys {
            Keys::Node(port) => KeyedConnection::Node(plain(*port).await),
            Keys::Cluster(client) => KeyedConnection::Cluster(
                client
                    .get_async_connection()
                    .await
                    .expect("connect to the test cluster"),
            ),
        }
    }

    /// How many times any of `commands` (lower case, e.g. "evalsha") ran on the primaries, from
    /// `INFO commandstats`. Commands run inside scripts count under their own names.
    pub async fn calls_of(&self, commands: &[&str]) -> u64 {
        let mut calls = 0;
        for conn in &self.primaries {
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query_async(&mut conn.clone())
                .await
                .expect("INFO commandstats");
            calls += commands
                .iter()
                .map(|command| commandstat_calls(&info, command))
                .sum::<u64>();
        }
        calls
    }

    pub async fn command_calls(&self, command: &str) -> u64 {
        self.calls_of(&[command]).await
    }

    /// Polls until `command` has run `calls` times in all.
    pub async fn wait_for_calls(&self, command: &str, calls: u64) {
        let deadline = Instant::now() + WAIT_BOUND;
        loop {
            let now = self.command_calls(command).await;
            if now >= calls {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{command}: {now} of {calls} calls"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Subscribers of `channel` on every data node, plain and sharded.
    pub async fn subscribers(&self, channel: &str) -> u64 {
        let mut subscribers = 0;
        for conn in &self.data {
            for kind in ["NUMSUB", "SHARDNUMSUB"] {
                let (_, n): (String, u64) = redis::cmd("PUBSUB")
                    .arg(kind)
                    .arg(channel)
                    .query_async(&mut conn.clone())
                    .await
                    .expect("PUBSUB NUMSUB");
                subscribers += n;
            }
        }
        subscribers
    }

    /// The channels matching `pattern` that have a subscriber on some data node, plain or sharded.
    pub async fn channels(&self, pattern: &str) -> Vec<String> {
        let mut channels = Vec::new();
        for conn in &self.data {
            for kind in ["CHANNELS", "SHARDCHANNELS"] {
                let found: Vec<String> = redis::cmd("PUBSUB")
                    .arg(kind)
                    .arg(pattern)
                    .query_async(&mut conn.clone())
                    .await
                    .expect("PUBSUB CHANNELS");
                channels.extend(found);
            }
        }
        channels
    }

    /// Polls until the release channel of the lock `key` (default prefix) has a subscriber.
    pub async fn wait_until_subscribed(&self, key: &str) {
        let channel = format!("lock:{{{key}}}:released");
        let deadline = Instant::now() + WAIT_BOUND;
        while self.subscribers(&channel).await == 0 {
            assert!(
                Instant::now() < deadline,
                "{channel} never got a subscriber"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Client connections on every process of the topology, leaving out the probe's own and the
    /// topology's own (replication links, sentinels' links).
    pub async fn client_connections(&self) -> usize {
        let mut count = 0;
        for conn in &self.all {
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut conn.clone())
                .await
                .expect("CLIENT LIST");
            count += list.lines().filter(|line| !is_internal(line)).count();
        }
        count
    }
}

/// A `CLIENT LIST` line of the probe, of a replication link (flags S on the primary, M on the
/// replica) or of a sentinel (named `sentinel-<id>-cmd`/`-pubsub`).
fn is_internal(line: &str) -> bool {
    let field = |name: &str| {
        line.split(' ')
            .find_map(|field| field.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_default()
    };
    field("name") == PROBE_NAME
        || field("name").starts_with("sentinel-")
        || field("flags").contains(['S', 'M'])
}

async fn plain(port: u16) -> MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
}

/// A connection of the probe, named so it is not counted.
async fn connect(port: u16) -> MultiplexedConnection {
    let mut conn = plain(port).await;
    let () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(PROBE_NAME)
        .query_async(&mut conn)
        .await
        .expect("CLIENT SETNAME");
    conn
}
