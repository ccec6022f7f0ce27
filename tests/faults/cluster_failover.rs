//! Fault 16: a Redis Cluster primary holding locks is killed (`kill -9`) and its replica fails
//! over (3 primaries + 3 replicas, node timeout 1 s), with and without replica acknowledgement:
//! the scene of `failover.rs`, on the keys of one shard.

use std::time::Instant;

use crate::failover::{self, Topology};
use crate::report::FaultRow;
use crate::support::cluster::RedisCluster;

/// Candidate keys asked about per round trip while looking for the victim's keys.
const SLOT_BATCH: usize = 1000;

struct Cluster {
    cluster: RedisCluster,
    victim: u16,
    /// A key of the victim's, by which the support follows its slots.
    victim_key: String,
}

impl Topology for Cluster {
    fn url(&self) -> String {
        self.cluster.url()
    }

    fn primary(&self) -> u16 {
        self.victim
    }

    fn replica_pid(&self) -> u32 {
        let replica = self.cluster.replica_of(self.victim);
        replica.pid().expect("the replica runs")
    }

    fn keys(&self, name: &str, count: usize) -> Vec<String> {
        keys_on(&self.cluster, self.victim, name, count)
    }

    fn kill_primary(&self) {
        self.cluster.kill(self.victim);
    }

    fn wait_for_failover(&self) -> u16 {
        self.cluster
            .wait_for_failover(self.victim, &self.victim_key)
    }
}

/// `count` keys `name-<n>` whose locks live on the primary at `port`.
fn keys_on(cluster: &RedisCluster, port: u16, name: &str, count: usize) -> Vec<String> {
    let slots = cluster.slots_of(port);
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .and_then(|client| client.get_connection())
        .expect("connect to the victim");
    let mut keys = Vec::new();
    let mut next = 0;
    while keys.len() < count {
        let candidates: Vec<String> = (next..next + SLOT_BATCH)
            .map(|n| format!("{name}-{n}"))
            .collect();
        next += SLOT_BATCH;
        let mut pipe = redis::pipe();
        for key in &candidates {
            pipe.cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(format!("{}{{{key}}}", distlock::DEFAULT_KEY_PREFIX));
        }
        let found: Vec<u16> = pipe.query(&mut conn).expect("CLUSTER KEYSLOT");
        keys.extend(
            candidates
                .into_iter()
                .zip(found)
                .filter(|(_, slot)| slots.iter().any(|&(a, b)| a <= *slot && *slot <= b))
                .map(|(key, _)| key),
        );
    }
    keys.truncate(count);
    keys
}

pub fn run() -> FaultRow {
    let started = Instant::now();
    let cluster = RedisCluster::start();
    let victim = cluster.primaries()[0].port();
    let victim_key = keys_on(&cluster, victim, "victim", 1).remove(0);
    failover::row(
        Cluster {
            cluster,
            victim,
            victim_key,
        },
        started,
        "cluster",
        "Cluster primary killed (kill -9), with and without replica acks",
        "3+3 cluster, a shard's",
    )
}
