//! Fault 17: under Sentinel, the primary holding locks is killed (`kill -9`) and the sentinels
//! promote its replica (primary + replica + 3 sentinels, down after 1 s), with and without
//! replica acknowledgement: the scene of `failover.rs`.

use std::time::Instant;

use crate::failover::{self, Topology};
use crate::report::FaultRow;
use crate::support::sentinel::RedisSentinel;

struct Sentinel {
    setup: RedisSentinel,
    primary: u16,
}

impl Topology for Sentinel {
    fn url(&self) -> String {
        self.setup.url()
    }

    fn primary(&self) -> u16 {
        self.primary
    }

    fn replica_pid(&self) -> u32 {
        let replica = self.setup.replica_ports()[0];
        self.setup.pid_of(replica).expect("the replica runs")
    }

    fn keys(&self, name: &str, count: usize) -> Vec<String> {
        (0..count).map(|n| format!("{name}-{n}")).collect()
    }

    fn kill_primary(&self) {
        let killed = self.setup.kill_primary();
        assert_eq!(killed, self.primary);
    }

    fn wait_for_failover(&self) -> u16 {
        self.setup.wait_for_failover(self.primary)
    }
}

pub fn run() -> FaultRow {
    let started = Instant::now();
    let setup = RedisSentinel::start();
    let primary = setup.primary_port();
    failover::row(
        Sentinel { setup, primary },
        started,
        "sentinel",
        "Sentinel primary killed (kill -9), with and without replica acks",
        "primary + replica + 3 sentinels, the primary's",
    )
}
