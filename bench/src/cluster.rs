//! A private Redis Cluster on this machine: 3 primaries and 3 replicas (`redis-server
//! --cluster-enabled yes`, joined by `redis-cli --cluster create ... --cluster-replicas 1`), each
//! node on a free port with a temp dir, all killed when dropped.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::server::{RedisServer, free_port, info_field as field};

pub const PRIMARIES: usize = 3;
const REPLICAS_PER_PRIMARY: usize = 1;
/// How long a node may be unreachable before the others count it as failed. Longer than any
/// stall a loaded 2-core machine gives a node: a failover in the middle of a block would measure
/// the failover, not the lock.
const NODE_TIMEOUT_MS: &str = "10000";
/// How long the nodes may take to agree on the slots and the replicas to catch up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

pub struct Cluster {
    nodes: Vec<RedisServer>,
    primaries: Vec<u16>,
}

impl Cluster {
    pub async fn start() -> Result<Cluster> {
        // Started together: each waits until it answers PING.
        let nodes = futures_util::future::try_join_all(
            (0..PRIMARIES * (1 + REPLICAS_PER_PRIMARY)).map(|_| async {
                // The cluster bus port too: its default, the port + 10000, may be taken or
                // above 65535.
                let bus_port = free_port()?.to_string();
                RedisServer::start_with(&args(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &bus_port,
                    "--cluster-node-timeout",
                    NODE_TIMEOUT_MS,
                    // A replica's first sync starts at once, not after the default 5 s.
                    "--repl-diskless-sync-delay",
                    "0",
                ]))
                .await
            }),
        )
        .await?;
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let created = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args([
                "--cluster-replicas",
                &REPLICAS_PER_PRIMARY.to_string(),
                "--cluster-yes",
            ])
            .stdin(Stdio::null())
            .output()
            .await
            .context("running redis-cli --cluster create")?;
        if !created.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&created.stdout)
            );
        }
        let mut cluster = Cluster {
            nodes,
            primaries: Vec::new(),
        };
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// The URL distlock connects with: every node as a seed.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}/", nodes.join(","))
    }

    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The primaries' plain `redis://` URLs.
    pub fn primary_urls(&self) -> Vec<String> {
        self.primaries
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}/0"))
            .collect()
    }

    /// Every node says the cluster is ok, and every primary has its replica online: replica
    /// acknowledgement counts the replicas connected now.
    async fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            match self.check().await {
                Ok(Some(primaries)) => {
                    self.primaries = primaries;
                    return Ok(());
                }
                Ok(None) => {}
                Err(e) if started.elapsed() > READY_TIMEOUT => return Err(e),
                Err(_) => {}
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("the cluster was not ready within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The primaries' ports once the cluster is ready, `None` before.
    async fn check(&self) -> Result<Option<Vec<u16>>> {
        let mut primaries = Vec::new();
        for node in &self.nodes {
            let mut conn = redis::Client::open(node.url())?
                .get_multiplexed_async_connection()
                .await?;
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut conn)
                .await?;
            if field(&info, "cluster_state") != Some("ok") {
                return Ok(None);
            }
            let replication: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut conn)
                .await?;
            if field(&replication, "role") == Some("master") {
                let online = replication
                    .lines()
                    .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                    .count();
                if online < REPLICAS_PER_PRIMARY {
                    return Ok(None);
                }
                primaries.push(node.port());
            }
        }
        Ok((primaries.len() == PRIMARIES).then_some(primaries))
    }

    /// Which primary (its URL) serves each slot range: `(first, last, url)` from `CLUSTER SLOTS`.
    pub async fn slot_owners(&self) -> Result<Vec<(u16, u16, String)>> {
        let first = self.nodes.first().context("a cluster without nodes")?;
        let mut conn = redis::Client::open(first.url())?
            .get_multiplexed_async_connection()
            .await?;
        let slots: Vec<(u16, u16, (String, u16))> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async::<Vec<Vec<redis::Value>>>(&mut conn)
            .await
            .context("CLUSTER SLOTS")?
            .into_iter()
            .map(|range| {
                // [first, last, [host, port, id, ...], replicas ...]
                let mut it = range.into_iter();
                let (Some(a), Some(b), Some(primary)) = (it.next(), it.next(), it.next()) else {
                    bail!("a short CLUSTER SLOTS entry");
                };
                let (a, b): (u16, u16) = (redis::from_redis_value(a)?, redis::from_redis_value(b)?);
                let node: Vec<redis::Value> = redis::from_redis_value(primary)?;
                let mut node = node.into_iter();
                let (Some(host), Some(port)) = (node.next(), node.next()) else {
                    bail!("a CLUSTER SLOTS entry without host and port");
                };
                Ok((
                    a,
                    b,
                    (
                        redis::from_redis_value(host)?,
                        redis::from_redis_value(port)?,
                    ),
                ))
            })
            .collect::<Result<_>>()?;
        Ok(slots
            .into_iter()
            .map(|(a, b, (host, port))| (a, b, format!("redis://{host}:{port}/0")))
            .collect())
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}
