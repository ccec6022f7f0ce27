//! Replica acknowledgement: a lock step counts only once every replica connected to the node
//! that took it has it.
//!
//! `WAIT n timeout` waits for the writes sent on *its own* connection, so it must follow the
//! script on the same connection to the same node: both go in one pipeline (one round trip;
//! a Cluster pipeline is routed by the script's key, and WAIT, which has no key, follows it).
//! `INFO replication` closes the pipeline and says how many replicas are connected now.
//!
//! WAIT needs its `n` before the answer says how many replicas there are, so the count seen last
//! is used (per hash slot on a Cluster, whose shards may have different numbers of replicas).
//! When it was too low, one more WAIT for the rest follows (a second round trip, once per change);
//! when too high, WAIT waits out its bound and the count is corrected.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::mutex::lock;

/// How many replicas acknowledged a write, of how many were connected to its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Acks {
    pub(super) acknowledged: u64,
    pub(super) connected: u64,
    pub(super) within: Duration,
}

impl Acks {
    /// Fewer acknowledged than connected: the write could be lost by a failover.
    pub(super) fn short(self) -> Option<Self> {
        (self.acknowledged < self.connected).then_some(self)
    }
}

/// The number of connected replicas seen last, per hash slot (one entry when not a Cluster).
#[derive(Default)]
pub(super) struct ReplicaCounts {
    by_slot: Mutex<HashMap<u16, u64>>,
}

impl ReplicaCounts {
    /// The count to WAIT for: the one seen last for this slot, else the highest seen anywhere
    /// (a cluster's shards usually have as many replicas each), else 0.
    pub(super) fn expected(&self, slot: u16) -> u64 {
        let by_slot = lock(&self.by_slot);
        by_slot
            .get(&slot)
            .copied()
            .unwrap_or_else(|| by_slot.values().copied().max().unwrap_or(0))
    }

    /// `connected` replicas answered for `slot`. Fewer than expected (a replica left, or the
    /// primary failed over to one that has none yet) lowers every slot's count too: after a
    /// failover every slot of that shard would otherwise wait out its bound once, one after the
    /// other, as WAIT holds the connection. A slot whose shard has more replicas pays one more
    /// round trip at its next step instead, and is raised again.
    pub(super) fn seen(&self, slot: u16, connected: u64) {
        let mut by_slot = lock(&self.by_slot);
        let before = by_slot.insert(slot, connected);
        if before.is_some_and(|before| connected < before) {
            for count in by_slot.values_mut() {
                *count = (*count).min(connected);
            }
        }
    }
}

/// The Cluster hash slot of a name: CRC16 (XMODEM) of its hash tag, modulo 16384.
pub(super) fn slot(name: &str) -> u16 {
    const SLOTS: u16 = 16384;
    let tagged = match name.find('{') {
        Some(open) => match name[open + 1..].find('}') {
            Some(len) if len > 0 => &name[open + 1..open + 1 + len],
            _ => name,
        },
        None => name,
    };
    crc16::State::<crc16::XMODEM>::calculate(tagged.as_bytes()) % SLOTS
}

/// The replicas of `INFO replication` that are online (`slaveN:...,state=online,...`): the ones
/// WAIT counts. One still in its first sync is connected but cannot acknowledge yet, and an
/// acknowledged step waits for it only once it can.
pub(super) fn connected_replicas(info: &str) -> u64 {
    let online = info
        .lines()
        .filter(|line| line.starts_with("slave") && line.contains("state=online"))
        .count();
    u64::try_from(online).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_hash_tag() {
        // Known values (CLUSTER KEYSLOT): "foo" 12182, "{user1000}.following" = "user1000" 3443.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("lock:{user1000}"), slot("user1000"));
        assert_eq!(slot("user1000"), 3443);
        assert_eq!(slot("a{}b"), slot("a{}b"));
    }

    #[test]
    fn counts_fall_back_to_the_highest_seen() {
        let counts = ReplicaCounts::default();
        assert_eq!(counts.expected(1), 0);
        counts.seen(1, 2);
        counts.seen(2, 1);
        assert_eq!(counts.expected(2), 1);
        assert_eq!(counts.expected(3), 2);
    }

    #[test]
    fn a_lost_replica_lowers_every_slot() {
        let counts = ReplicaCounts::default();
        counts.seen(1, 1);
        counts.seen(2, 1);
        counts.seen(1, 0);
        assert_eq!(counts.expected(2), 0);
        assert_eq!(counts.expected(3), 0);
        // A raise stays with its slot.
        counts.seen(2, 2);
        assert_eq!(counts.expected(1), 0);
    }

    #[test]
    fn info_gives_the_connected_replicas() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
                    slave0:ip=127.0.0.1,port=7001,state=online,offset=42,lag=0\r\n\
                    slave1:ip=127.0.0.1,port=7002,state=wait_bgsave,offset=0,lag=0\r\n";
        assert_eq!(connected_replicas(info), 1);
        assert_eq!(connected_replicas("role:slave\r\n"), 0);
    }
}
