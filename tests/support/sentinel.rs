//! A private Sentinel setup: a primary, a replica of it, and three sentinels watching them
//! (quorum 2), each a `RedisServer` in its own temp dir. Killed with the value, or with the test
//! binary when kept in a `static` (see `process.rs`).
//!
//! Methods that change the topology block until it has settled, within a bound; call them from a
//! multi-threaded runtime (or `spawn_blocking`). They use blocking connections, so a setup in a
//! `static` works from the runtime of every test.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::node::{info_field, must, poll_until, query};
use super::redis_server::RedisServer;

/// The name the sentinels know the primary by, the path of `url()`.
pub const MASTER_NAME: &str = "mymaster";
const SENTINELS: usize = 3;
const QUORUM: usize = 2;
/// How long the primary may be silent before a sentinel thinks it down: short, so a failover
/// test stays short; 1 s still rides out a scheduling hiccup of a loaded 2-core machine.
const DOWN_AFTER: Duration = Duration::from_millis(1000);
/// A failover that has not ended by then is retried by another sentinel (and a restarted old
/// primary is reconfigured no sooner); twice the usual election time on a loaded machine.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(5);
/// Until a fresh setup, or one after a change, is whole: sentinels find each other through
/// hello messages every 2 s and poll INFO every 10 s (1 s during a failover); 60 s means
/// something is broken.
const SETTLE_BOUND: Duration = Duration::from_secs(60);
/// Until the sentinels have promoted the replica: DOWN_AFTER, the vote, the promotion;
/// 30 s leaves room for a loaded machine.
const FAILOVER_BOUND: Duration = Duration::from_secs(30);

pub struct RedisSentinel {
    /// Primary and replica; which is which changes with failovers.
    data: Vec<Mutex<RedisServer>>,
    data_ports: Vec<u16>,
    sentinels: Vec<RedisServer>,
}

impl RedisSentinel {
    pub fn start() -> Self {
        let started = Instant::now();
        // The replica's first sync starts at once, not after the default 5 s wait for more
        // replicas to share it.
        let primary = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]);
        let primary_port = primary.port().to_string();
        let replica = RedisServer::start_with(&[
            "--replicaof",
            "127.0.0.1",
            &primary_port,
            "--repl-diskless-sync-delay",
            "0",
        ]);
        let config = format!(
            "sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} {QUORUM}\n\
             sentinel down-after-milliseconds {MASTER_NAME} {}\n\
             sentinel failover-timeout {MASTER_NAME} {}\n",
            DOWN_AFTER.as_millis(),
            FAILOVER_TIMEOUT.as_millis(),
        );
        let sentinels = (0..SENTINELS)
            .map(|_| RedisServer::start_configured(Some(&config), &["--sentinel"]))
            .collect();
        let setup = RedisSentinel {
            data_ports: vec![primary.port(), replica.port()],
            data: vec![Mutex::new(primary), Mutex::new(replica)],
            sentinels,
        };
        setup.wait_until_healthy();
        eprintln!("sentinel setup ready in {:?}", started.elapsed());
        setup
    }

    /// `redis+sentinel://127.0.0.1:s1,127.0.0.1:s2,127.0.0.1:s3/mymaster`
    pub fn url(&self) -> String {
        let sentinels: Vec<String> = self
            .sentinel_ports()
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", sentinels.join(","))
    }

    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(RedisServer::port).collect()
    }

    /// The ports of the primary and the replica (in no particular order).
    pub fn data_ports(&self) -> &[u16] {
        &self.data_ports
    }

    /// The primary's port as the first sentinel that answers reports it.
    pub fn primary_port(&self) -> u16 {
        self.sentinel_ports()
            .into_iter()
            .find_map(|sentinel| reported_primary(sentinel).ok())
            .expect("no sentinel reports a primary")
    }

    /// The data nodes other than the reported primary.
    pub fn replica_ports(&self) -> Vec<u16> {
        let primary = self.primary_port();
        self.data_ports
            .iter()
            .copied()
            .filter(|&p| p != primary)
            .collect()
    }

    /// The process id of the data node at `port`, while it runs.
    pub fn pid_of(&self, port: u16) -> Option<u32> {
        self.data_node(port).pid()
    }

    /// SIGKILL to the primary; returns its port.
    pub fn kill_primary(&self) -> u16 {
        let port = self.primary_port();
        self.data_node(port).kill();
        port
    }

    /// Until every sentinel reports a new primary in place of the killed one at `killed`, and
    /// that node says it is a primary. Returns its port.
    pub fn wait_for_failover(&self, killed: u16) -> u16 {
        poll_until("sentinel failover", FAILOVER_BOUND, || {
            let reported = self.agreed_primary()?;
            if reported == killed {
                return Err(format!("the sentinels still report {killed}"));
            }
            is_primary(reported)?;
            Ok(reported)
        })
    }

    /// Starts a killed data node again on its port, empty, as a replica of the current primary.
    /// Returns once the setup is whole again.
    pub fn restart(&self, port: u16) {
        self.data_node(port).restart();
        // What the sentinels would do only after their next INFO of it, up to 10 s away.
        let () = must(
            port,
            redis::cmd("REPLICAOF")
                .arg("127.0.0.1")
                .arg(self.primary_port()),
        );
        self.wait_until_healthy();
    }

    /// FLUSHALL on the current primary (the replica follows).
    pub fn flushall(&self) {
        let () = must(self.primary_port(), &redis::cmd("FLUSHALL"));
    }

    /// A plain connection to the current primary (not distlock's), for reading and writing keys.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.primary_port()))
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test primary")
    }

    /// Until all sentinels agree on a primary that says so, know the other data node as its
    /// replica with a working link, and know each other; and the replica has synced.
    pub fn wait_until_healthy(&self) {
        poll_until("a healthy sentinel setup", SETTLE_BOUND, || {
            let primary = self.agreed_primary()?;
            is_primary(primary)?;
            for sentinel in self.sentinel_ports() {
                let master = fields(sentinel, "MASTER")?;
                let field = |name: &str| {
                    master
                        .windows(2)
                        .find(|pair| pair[0] == name)
                        .map(|pair| pair[1].clone())
                        .unwrap_or_default()
                };
                let wanted = [
                    ("flags", "master".to_string()),
                    ("num-slaves", (self.data.len() - 1).to_string()),
                    ("num-other-sentinels", (SENTINELS - 1).to_string()),
                ];
                for (name, want) in wanted {
                    if field(name) != want {
                        return Err(format!("sentinel {sentinel}: {name} {}", field(name)));
                    }
                }
                let replicas: Vec<Vec<String>> = query(
                    sentinel,
                    redis::cmd("SENTINEL").arg("REPLICAS").arg(MASTER_NAME),
                )
                .map_err(|e| format!("sentinel {sentinel}: {e}"))?;
                for replica in replicas {
                    let field = |name: &str| {
                        replica
                            .windows(2)
                            .find(|pair| pair[0] == name)
                            .map(|pair| pair[1].clone())
                            .unwrap_or_default()
                    };
                    // Not its `master-link-status`: sentinels refresh it by INFO every 10 s;
                    // the replica's own INFO is checked below.
                    if field("flags") != "slave" {
                        return Err(format!("sentinel {sentinel}: replica {replica:?}"));
                    }
                }
            }
            for &port in self.data_ports.iter().filter(|&&p| p != primary) {
                let info: String = query(port, redis::cmd("INFO").arg("replication"))
                    .map_err(|e| format!("{port}: {e}"))?;
                let link = info_field(&info, "master_link_status");
                let of = info_field(&info, "master_port");
                let syncing = info_field(&info, "master_sync_in_progress");
                if link != Some("up")
                    || of != Some(primary.to_string().as_str())
                    || syncing != Some("0")
                {
                    return Err(format!("replica {port}: link {link:?} to {of:?}"));
                }
            }
            Ok(())
        });
    }

    /// Every process of the setup, for checking they end.
    pub fn pids(&self) -> Vec<u32> {
        let data = self.data.iter().filter_map(|node| lock(node).pid());
        data.chain(self.sentinels.iter().filter_map(RedisServer::pid))
            .collect()
    }

    fn data_node(&self, port: u16) -> std::sync::MutexGuard<'_, RedisServer> {
        let index = self
            .data_ports
            .iter()
            .position(|&p| p == port)
            .unwrap_or_else(|| panic!("no data node on port {port}"));
        lock(&self.data[index])
    }

    /// The primary every sentinel reports.
    fn agreed_primary(&self) -> Result<u16, String> {
        let reports = self
            .sentinel_ports()
            .into_iter()
            .map(reported_primary)
            .collect::<Result<Vec<_>, _>>()?;
        match reports.as_slice() {
            [first, rest @ ..] if rest.iter().all(|r| r == first) => Ok(*first),
            _ => Err(format!("the sentinels report {reports:?}")),
        }
    }
}

fn lock(node: &Mutex<RedisServer>) -> std::sync::MutexGuard<'_, RedisServer> {
    node.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `SENTINEL get-master-addr-by-name` of the sentinel at `sentinel`.
fn reported_primary(sentinel: u16) -> Result<u16, String> {
    let (_host, port): (String, u16) = query(
        sentinel,
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(MASTER_NAME),
    )
    .map_err(|e| format!("sentinel {sentinel}: {e}"))?;
    Ok(port)
}

/// `SENTINEL <what> mymaster` as its flat list of names and values.
fn fields(sentinel: u16, what: &str) -> Result<Vec<String>, String> {
    query(sentinel, redis::cmd("SENTINEL").arg(what).arg(MASTER_NAME))
        .map_err(|e| format!("sentinel {sentinel}: {e}"))
}

/// The node at `port` answers `role:master`.
fn is_primary(port: u16) -> Result<(), String> {
    let info: String =
        query(port, redis::cmd("INFO").arg("replication")).map_err(|e| format!("{port}: {e}"))?;
    match info_field(&info, "role") {
        Some("master") => Ok(()),
        role => Err(format!("{port} has role {role:?}")),
    }
}
