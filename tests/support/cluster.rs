//! A private Redis Cluster: 3 primaries and 3 replicas on free loopback ports, each a
//! `RedisServer` in its own temp dir, joined by `redis-cli --cluster create`. Killed with the
//! value, or with the test binary when kept in a `static` (see `process.rs`).
//!
//! Every method that changes the topology (kill, failover, slot migration) blocks until the
//! cluster has settled, within a bound; call them from a multi-threaded runtime (or
//! `spawn_blocking`). They use blocking connections, so a cluster in a `static` works from the
//! runtime of every test.
//!
//! `start_behind_proxies` puts a fault proxy (`proxy.rs`) in front of each node and has the node
//! announce the proxy's port: a cluster client then reaches every node through its proxy, and a
//! test can cut it off from one shard while the cluster bus (direct) stays whole.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::node::{info_field, must, poll_until, query};
use super::process::spawn_owned;
use super::proxy::Proxy;
use super::redis_server::{RedisServer, binary, free_port};

const PRIMARIES: usize = 3;
const REPLICAS_PER_PRIMARY: usize = 1;
const SLOTS: u16 = 16384;
/// How long a node may be unreachable before it is failed over. Detection and election take
/// about two of these, so a failover test stays short; 1 s still rides out a scheduling hiccup
/// of a loaded 2-core machine (a node must miss a whole second of pings, seen by a majority).
const NODE_TIMEOUT: Duration = Duration::from_millis(1000);
/// The node timeout while the cluster forms: a node forgets a handshake that has not completed
/// within the node timeout, and `redis-cli --cluster create` never sends its MEET again, so on a
/// loaded machine 1 s can leave it waiting for the join forever (seen once). Redis's default.
const FORMING_NODE_TIMEOUT: Duration = Duration::from_secs(15);
/// Until a fresh cluster, or one after a change, is whole: gossip and replica syncs on a loaded
/// 2-core CI machine take a few seconds; 30 s means something is broken.
const SETTLE_BOUND: Duration = Duration::from_secs(30);
/// Until a replica has taken over a killed primary: detection (2 x NODE_TIMEOUT), the election
/// delay (0.5-1 s plus rank), the vote; 30 s leaves room for a loaded machine.
const FAILOVER_BOUND: Duration = Duration::from_secs(30);
/// `redis-cli --cluster create` waits for the nodes to agree: a few seconds, even loaded.
const CREATE_BOUND: Duration = Duration::from_secs(30);
/// Keys moved per MIGRATE while resharding, and how long one MIGRATE may take.
const MIGRATE_BATCH: usize = 100;
const MIGRATE_TIMEOUT_MS: u64 = 5000;

/// The role a node has in its own view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
}

pub struct ClusterNode {
    port: u16,
    id: String,
    server: Mutex<RedisServer>,
    proxy: Option<Proxy>,
}

impl ClusterNode {
    /// The port the node listens on (tests' own checks talk here, never through the proxy).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port the node tells clients: its proxy's, if it has one.
    pub fn announced_port(&self) -> u16 {
        self.proxy.as_ref().map_or(self.port, Proxy::port)
    }

    /// The fault proxy in front of the node (`start_behind_proxies` only).
    pub fn proxy(&self) -> Option<&Proxy> {
        self.proxy.as_ref()
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn is_running(&self) -> bool {
        self.server().pid().is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.server().pid()
    }

    /// Its role by its own account (`ROLE`); None when it does not answer.
    pub fn role(&self) -> Option<Role> {
        let role: Vec<redis::Value> = query(self.port, &redis::cmd("ROLE")).ok()?;
        match role.first() {
            Some(redis::Value::BulkString(kind)) if kind == b"master" => Some(Role::Primary),
            Some(redis::Value::BulkString(_)) => Some(Role::Replica),
            _ => None,
        }
    }

    fn server(&self) -> std::sync::MutexGuard<'_, RedisServer> {
        self.server.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    /// The announced addresses of the primaries at the start: the seeds of `url()`.
    seeds: Vec<u16>,
}

impl RedisCluster {
    /// A cluster whose nodes clients reach directly.
    pub fn start() -> Self {
        Self::launch(false)
    }

    /// A cluster whose every node announces the port of a fault proxy of its own.
    pub fn start_behind_proxies() -> Self {
        Self::launch(true)
    }

    fn launch(proxied: bool) -> Self {
        let started = Instant::now();
        let count = PRIMARIES * (1 + REPLICAS_PER_PRIMARY);
        let node_timeout = FORMING_NODE_TIMEOUT.as_millis().to_string();
        let mut servers = Vec::new();
        for _ in 0..count {
            // The bus port explicitly: the default (port + 10000) may be taken, or past 65535.
            let bus_port = free_port().to_string();
            servers.push(RedisServer::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &node_timeout,
                "--cluster-port",
                &bus_port,
                // A replica's first sync starts at once, not after the default 5 s wait for
                // more replicas to share it.
                "--repl-diskless-sync-delay",
                "0",
            ]));
        }
        let proxies: Vec<Option<Proxy>> = servers
            .iter()
            .map(|server| {
                proxied.then(|| {
                    let proxy = Proxy::start(server.port());
                    let () = must(
                        server.port(),
                        redis::cmd("CONFIG")
                            .arg("SET")
                            .arg("cluster-announce-port")
                            .arg(proxy.port()),
                    );
                    proxy
                })
            })
            .collect();
        create(&servers);
        let nodes: Vec<ClusterNode> = servers
            .into_iter()
            .zip(proxies)
            .map(|(server, proxy)| ClusterNode {
                port: server.port(),
                id: must(server.port(), redis::cmd("CLUSTER").arg("MYID")),
                server: Mutex::new(server),
                proxy,
            })
            .collect();
        let mut cluster = RedisCluster {
            nodes,
            seeds: Vec::new(),
        };
        // The nodes have met (redis-cli waited for that). Before the state turns ok: a primary
        // that saw itself in a minority (as each did, alone) waits up to a node timeout first.
        for node in &cluster.nodes {
            let () = must(
                node.port,
                redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("cluster-node-timeout")
                    .arg(NODE_TIMEOUT.as_millis() as u64),
            );
        }
        cluster.wait_until_healthy();
        cluster.seeds = cluster
            .primaries()
            .iter()
            .map(|node| node.announced_port())
            .collect();
        eprintln!(
            "cluster of {count} nodes{} ready in {:?}",
            if proxied { " behind proxies" } else { "" },
            started.elapsed()
        );
        cluster
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/`, the primaries at the start.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .seeds
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis+cluster://{}/", seeds.join(","))
    }

    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// The running nodes that are primaries by their own account.
    pub fn primaries(&self) -> Vec<&ClusterNode> {
        self.nodes
            .iter()
            .filter(|node| node.is_running() && node.role() == Some(Role::Primary))
            .collect()
    }

    pub fn node(&self, port: u16) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|node| node.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    fn any_running(&self) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|node| node.is_running())
            .expect("a running node")
    }

    /// The hash slot of `key` (its `{hash tag}`, if it has one).
    pub fn slot_of(&self, key: &str) -> u16 {
        must(
            self.any_running().port,
            redis::cmd("CLUSTER").arg("KEYSLOT").arg(key),
        )
    }

    /// The running primary that serves `key`'s slot by its own account (during a failover the
    /// old one may still think so; the one with the newer config epoch wins).
    pub fn primary_for_key(&self, key: &str) -> &ClusterNode {
        let slot = self.slot_of(key);
        self.owner_of(slot)
            .unwrap_or_else(|| panic!("no running primary serves slot {slot} of {key:?}"))
    }

    fn owner_of(&self, slot: u16) -> Option<&ClusterNode> {
        self.nodes
            .iter()
            .filter(|node| node.is_running())
            .filter_map(|node| {
                let me = view(node.port).ok()?.into_iter().find(|n| n.myself)?;
                (me.primary && me.serves(slot)).then_some((me.epoch, node))
            })
            .max_by_key(|(epoch, _)| *epoch)
            .map(|(_, node)| node)
    }

    /// The slot ranges the node at `port` serves by its own account (empty for a replica).
    pub fn slots_of(&self, port: u16) -> Vec<(u16, u16)> {
        view(port)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .find(|n| n.myself)
            .map(|me| me.slots)
            .unwrap_or_default()
    }

    /// The running replica of the primary at `port`, by the primary's view.
    pub fn replica_of(&self, port: u16) -> &ClusterNode {
        let id = &self.node(port).id;
        let replica = view(port)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .find(|n| !n.primary && n.primary_id.as_ref() == Some(id))
            .unwrap_or_else(|| panic!("no replica of {port}"));
        self.nodes
            .iter()
            .find(|node| node.id == replica.id && node.is_running())
            .unwrap_or_else(|| panic!("the replica {} of {port} is not running", replica.id))
    }

    /// SIGKILL to the primary serving `key`; returns its port. The cluster is down for that
    /// shard until `wait_for_failover`.
    pub fn kill_primary_of(&self, key: &str) -> u16 {
        let node = self.primary_for_key(key);
        node.server().kill();
        node.port
    }

    /// SIGKILL to the node at `port`, without asking anyone first (`kill_primary_of` asks every
    /// node for its view, which waits out a frozen node's timeout).
    pub fn kill(&self, port: u16) {
        self.node(port).server().kill();
    }

    /// Until a replica has taken over every slot of the killed node at `killed`: every running
    /// node says `cluster_state:ok` and sees the killed one failed. Returns the new primary of
    /// `key`'s slot.
    pub fn wait_for_failover(&self, killed: u16, key: &str) -> u16 {
        let killed_id = self.node(killed).id.clone();
        let slot = self.slot_of(key);
        poll_until("failover", FAILOVER_BOUND, || {
            for node in self.nodes.iter().filter(|n| n.is_running()) {
                cluster_ok(node.port, self.nodes.len())?;
                let seen = view(node.port)?;
                if !seen.iter().any(|n| n.id == killed_id && n.failed) {
                    return Err(format!("{} does not see {killed} failed yet", node.port));
                }
            }
            match self.owner_of(slot) {
                Some(owner) if owner.port != killed => Ok(owner.port),
                _ => Err(format!("no new primary for slot {slot}")),
            }
        })
    }

    /// Starts a killed node again, on its port with its cluster config: it rejoins as a replica
    /// of whoever took over, empty, and syncs. Returns once the cluster is whole again.
    pub fn restart(&self, port: u16) {
        self.node(port).server().restart();
        self.wait_until_healthy();
    }

    /// Moves `key`'s slot with its keys to the primary at `to` the way `redis-cli --cluster
    /// reshard` does: IMPORTING on the target, MIGRATING on the source, MIGRATE the keys in
    /// batches, then SETSLOT NODE on the target, the source and every other primary. Returns once
    /// every running node sees the slot at `to`.
    pub fn migrate_slot_of(&self, key: &str, to: u16) {
        let slot = self.slot_of(key);
        let from = self.primary_for_key(key);
        let target = self.node(to);
        if from.port == to {
            return;
        }
        let setslot = |node: &ClusterNode, state: &str, id: &str| {
            let () = must(
                node.port,
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg(state)
                    .arg(id),
            );
        };
        setslot(target, "IMPORTING", &from.id);
        setslot(from, "MIGRATING", &target.id);
        loop {
            let keys: Vec<Vec<u8>> = must(
                from.port,
                redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(slot)
                    .arg(MIGRATE_BATCH),
            );
            if keys.is_empty() {
                break;
            }
            let () = must(
                from.port,
                redis::cmd("MIGRATE")
                    .arg("127.0.0.1")
                    .arg(to)
                    .arg("")
                    .arg(0)
                    .arg(MIGRATE_TIMEOUT_MS)
                    .arg("KEYS")
                    .arg(keys),
            );
        }
        setslot(target, "NODE", &target.id);
        setslot(from, "NODE", &target.id);
        for other in self.primaries() {
            if other.port != to && other.port != from.port {
                setslot(other, "NODE", &target.id);
            }
        }
        poll_until("slot migration", SETTLE_BOUND, || {
            for node in self.nodes.iter().filter(|n| n.is_running()) {
                let owner = view(node.port)?
                    .into_iter()
                    .find(|n| n.primary && n.serves(slot))
                    .map(|n| n.id);
                if owner.as_deref() != Some(target.id.as_str()) {
                    return Err(format!("{} sees slot {slot} at {owner:?}", node.port));
                }
            }
            Ok(())
        });
    }

    /// FLUSHALL on every running primary (the replicas follow).
    pub fn flushall(&self) {
        for node in self.primaries() {
            let () = must(node.port, &redis::cmd("FLUSHALL"));
        }
    }

    /// A plain cluster client (not distlock's) for reading and writing keys in tests. It talks to
    /// the nodes directly, also when they announce proxies.
    pub async fn client(&self) -> redis::cluster_async::ClusterConnection {
        self.client_builder()
            .build()
            .expect("cluster client")
            .get_async_connection()
            .await
            .expect("connect to the test cluster")
    }

    /// The builder of `client()`: the running nodes as seeds, announced proxies mapped to the
    /// nodes behind them.
    pub fn client_builder(&self) -> redis::cluster::ClusterClientBuilder {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .filter(|node| node.is_running())
            .map(|node| format!("redis://127.0.0.1:{}/", node.port))
            .collect();
        let direct: HashMap<_, _> = self
            .nodes
            .iter()
            .filter(|node| node.proxy.is_some())
            .map(|node| {
                (
                    redis::cluster::NodeAddress::new("127.0.0.1", node.announced_port()),
                    redis::cluster::NodeAddress::new("127.0.0.1", node.port),
                )
            })
            .collect();
        redis::cluster::ClusterClient::builder(seeds).node_address_map(direct)
    }

    /// Until every node runs and agrees on one whole cluster: `cluster_state:ok`, all 16384
    /// slots served, the same primaries, replicas and slots in every node's view, nobody
    /// failed, and every replica's link to its primary up and synced.
    pub fn wait_until_healthy(&self) {
        poll_until("a healthy cluster", SETTLE_BOUND, || {
            let mut first: Option<(u16, Vec<String>)> = None;
            for node in &self.nodes {
                if !node.is_running() {
                    return Err(format!("{} is not running", node.port));
                }
                cluster_ok(node.port, self.nodes.len())?;
                let seen = view(node.port)?;
                if let Some(bad) = seen.iter().find(|n| n.failed || n.handshake) {
                    return Err(format!("{} sees {} as {}", node.port, bad.id, bad.flags));
                }
                let summary = summary(&seen);
                match &first {
                    None => first = Some((node.port, summary)),
                    Some((port, agreed)) if *agreed != summary => {
                        return Err(format!("{port} sees {agreed:?}, {} {summary:?}", node.port));
                    }
                    Some(_) => {}
                }
                let me = seen
                    .iter()
                    .find(|n| n.myself)
                    .ok_or("no myself line".to_string())?;
                if !me.primary {
                    replica_synced(node.port)?;
                }
            }
            let (_, agreed) = first.ok_or("no nodes")?;
            let primaries = agreed.iter().filter(|l| l.ends_with("primary")).count();
            if primaries != PRIMARIES {
                return Err(format!("{primaries} primaries: {agreed:?}"));
            }
            Ok(())
        });
    }

    /// Every process of the cluster, for checking they end.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(ClusterNode::pid).collect()
    }
}

/// Runs `redis-cli --cluster create` on the nodes: the first three become primaries, each of the
/// others a replica of one of them.
fn create(servers: &[RedisServer]) {
    let cli = binary().with_file_name("redis-cli");
    let mut command = Command::new(&cli);
    command.arg("--cluster").arg("create");
    command.args(servers.iter().map(|s| format!("127.0.0.1:{}", s.port())));
    command
        .args(["--cluster-replicas", &REPLICAS_PER_PRIMARY.to_string()])
        .arg("--cluster-yes")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_owned(command).unwrap_or_else(|e| panic!("running {cli:?}: {e}"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("redis-cli status") {
            break status;
        }
        if started.elapsed() > CREATE_BOUND {
            let _ = child.kill();
            let output = child.wait_with_output().expect("redis-cli output");
            panic!(
                "redis-cli --cluster create did not end within {CREATE_BOUND:?}\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !status.success() {
        let output = child.wait_with_output().expect("redis-cli output");
        panic!(
            "redis-cli --cluster create: {status}\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// `CLUSTER INFO` of the node at `port` says the cluster is whole as far as it knows.
fn cluster_ok(port: u16, nodes: usize) -> Result<(), String> {
    let info: String =
        query(port, redis::cmd("CLUSTER").arg("INFO")).map_err(|e| format!("{port}: {e}"))?;
    let expected = [
        ("cluster_state", "ok".to_string()),
        ("cluster_slots_assigned", SLOTS.to_string()),
        ("cluster_slots_ok", SLOTS.to_string()),
        ("cluster_known_nodes", nodes.to_string()),
    ];
    for (field, want) in expected {
        let got = info_field(&info, field);
        if got != Some(want.as_str()) {
            return Err(format!("{port}: {field} is {got:?}, not {want}"));
        }
    }
    Ok(())
}

/// The replica at `port` has its link to the primary up and no sync under way.
fn replica_synced(port: u16) -> Result<(), String> {
    let info: String =
        query(port, redis::cmd("INFO").arg("replication")).map_err(|e| format!("{port}: {e}"))?;
    let link = info_field(&info, "master_link_status");
    let syncing = info_field(&info, "master_sync_in_progress");
    if link != Some("up") || syncing != Some("0") {
        return Err(format!(
            "replica {port}: link {link:?}, sync in progress {syncing:?}"
        ));
    }
    Ok(())
}

/// One line of `CLUSTER NODES`.
#[derive(Debug)]
struct NodeLine {
    id: String,
    flags: String,
    myself: bool,
    primary: bool,
    failed: bool,
    handshake: bool,
    primary_id: Option<String>,
    epoch: u64,
    slots: Vec<(u16, u16)>,
}

impl NodeLine {
    fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
}

/// The node at `port`'s view of the cluster (`CLUSTER NODES`).
fn view(port: u16) -> Result<Vec<NodeLine>, String> {
    let text: String =
        query(port, redis::cmd("CLUSTER").arg("NODES")).map_err(|e| format!("{port}: {e}"))?;
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| parse_line(line).ok_or_else(|| format!("{port}: odd line {line:?}")))
        .collect()
}

fn parse_line(line: &str) -> Option<NodeLine> {
    // <id> <ip:port@cport> <flags> <primary> <ping-sent> <pong-recv> <epoch> <link> <slot>...
    let fields: Vec<&str> = line.split_whitespace().collect();
    let flags: Vec<&str> = fields.get(2)?.split(',').collect();
    let slots = fields
        .get(8..)
        .unwrap_or_default()
        .iter()
        // `[slot->-id]` and `[slot-<-id]`: a migration under way, not ownership.
        .filter(|slot| !slot.starts_with('['))
        .map(|slot| match slot.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => slot.parse().ok().map(|s| (s, s)),
        })
        .collect::<Option<Vec<_>>>()?;
    Some(NodeLine {
        id: fields.first()?.to_string(),
        flags: fields.get(2)?.to_string(),
        myself: flags.contains(&"myself"),
        primary: flags.contains(&"master"),
        failed: flags.contains(&"fail") || flags.contains(&"fail?"),
        handshake: flags.contains(&"handshake") || flags.contains(&"noaddr"),
        primary_id: fields.get(3).filter(|m| **m != "-").map(|m| m.to_string()),
        epoch: fields.get(6)?.parse().ok()?,
        slots,
    })
}

/// What every node must agree on: each node's role, primary and slots (not its own flags).
fn summary(view: &[NodeLine]) -> Vec<String> {
    let mut lines: Vec<String> = view
        .iter()
        .map(|n| {
            let role = if n.primary { "primary" } else { "replica" };
            format!(
                "{} of {} slots {:?} {role}",
                n.id,
                n.primary_id.as_deref().unwrap_or("-"),
                n.slots
            )
        })
        .collect();
    lines.sort();
    lines
}
