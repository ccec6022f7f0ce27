//! Fault 13: a lagging replica is promoted. Workers and holders (see `forgetting.rs`) reach the
//! primary through a proxy, "the address of the current primary"; a replica follows the primary
//! through another proxy, the replication link. The link is stalled (the replica stops
//! receiving), more rounds run, the primary is killed with SIGKILL, the replica is promoted with
//! `REPLICAOF NO ONE`, and the clients' proxy is pointed at it and its connections cut, so every
//! client reconnects to the new primary: one that never saw the latest locks, and still has old
//! ones.
//!
//! Promised: fencing numbers of each key never repeat and never go down across the promotion
//! (the new primary's clock, one machine here: the docs' clock assumption); holders whose locks
//! the new primary does not have are told; no overlap without a holder told.

use std::time::Duration;

use redis::aio::MultiplexedConnection as Connection;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::forgetting::{self, Scene, ms};
use crate::report::FaultRow;
use crate::support::proxy::Proxy;
use crate::support::records::monotonic_ns;
use crate::support::redis_server::RedisServer;

/// The workers' rounds with the replica in sync, then the rounds it misses.
const IN_SYNC: Duration = Duration::from_millis(1200);
const LAGGING: Duration = Duration::from_millis(600);
/// How long the replica may take to sync at the start: generous for a loaded machine.
const SYNC_BOUND: Duration = Duration::from_secs(20);

pub fn run() -> FaultRow {
    crate::runtime().block_on(promote())
}

async fn command(conn: &mut Connection, args: &[&str]) -> redis::Value {
    redis::cmd(args[0])
        .arg(&args[1..])
        .query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

async fn promote() -> FaultRow {
    let mut primary = RedisServer::start();
    let replica = RedisServer::start();
    let link = Proxy::start(primary.port());
    let front = Proxy::start(primary.port());
    let mut on_replica = replica.client().await;
    command(
        &mut on_replica,
        &["REPLICAOF", "127.0.0.1", &link.port().to_string()],
    )
    .await;
    let deadline = Instant::now() + SYNC_BOUND;
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut on_replica)
            .await
            .expect("INFO replication");
        if info.contains("master_link_status:up") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never synced: {info}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut scene = Scene::start(&front.url(), "promote");
    tokio::time::sleep(IN_SYNC).await; // the fault's schedule: rounds the replica receives
    link.stall();
    tokio::time::sleep(LAGGING).await; // rounds the replica misses
    let (end, ended) = watch::channel(None);
    scene.hold_across(ended).await;

    let start_ns = monotonic_ns();
    let failing_over = Instant::now();
    primary.kill();
    command(&mut on_replica, &["REPLICAOF", "NO", "ONE"]).await;
    front.redirect(replica.port());
    front.cut();
    front.heal();
    let failover = failing_over.elapsed();
    let end_ns = monotonic_ns();
    let _ = end.send(Some(end_ns));

    let found = scene.finish((start_ns, end_ns), None).await;
    println!("  failover took {failover:?}; {}", found.figures());
    FaultRow {
        fault: "Promotion of a lagging replica",
        injected: forgetting::injected(&format!(
            "replication link stalled for {LAGGING:?} of rounds, primary killed, REPLICAOF NO \
             ONE, clients' proxy re-pointed and cut ({:.0} ms)",
            ms(failover)
        )),
        sections: found.sections,
        overlaps: found.report.total.unreported_overlaps,
        lost: found.lost,
        lost_reported: found.lost,
        recovery: Some(found.recovery),
        notes: found.figures(),
    }
}
