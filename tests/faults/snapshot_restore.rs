//! Fault 10: the server comes back from an old RDB snapshot. Workers and holders work (see
//! `forgetting.rs`); the server SAVEs, more rounds run that the snapshot misses, then it is
//! killed with SIGKILL and restarted from that snapshot: it has forgotten the later locks and
//! their fencing numbers, and brings back locks whose holders have long moved on.
//!
//! Promised: fencing numbers of each key never repeat and every number after the restore is
//! above every number before it (they follow the server clock, not a stored counter); holders
//! whose locks the restore dropped are told; no overlap without a holder told; the old locks the
//! snapshot brought back expire within their lease and the keys are taken again.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::forgetting::{self, Scene, ms};
use crate::report::FaultRow;
use crate::support::records::monotonic_ns;
use crate::support::redis_server::RedisServer;

/// The workers' rounds before the snapshot, and the rounds the snapshot misses.
const BEFORE_SAVE: Duration = Duration::from_millis(1000);
const AFTER_SAVE: Duration = Duration::from_millis(800);

pub fn run() -> FaultRow {
    crate::runtime().block_on(restore())
}

async fn restore() -> FaultRow {
    let mut server = RedisServer::start();
    let dump = server.dir().join("dump.rdb");
    let aside = server.dir().join("snapshot.rdb");
    let mut scene = Scene::start(&server.url(), "restore");
    tokio::time::sleep(BEFORE_SAVE).await; // the fault's schedule: rounds before the snapshot
    let mut conn = server.client().await;
    let saved: String = redis::cmd("SAVE")
        .query_async(&mut conn)
        .await
        .expect("SAVE");
    assert_eq!(saved, "OK");
    std::fs::copy(&dump, &aside).expect("copy the snapshot aside");
    tokio::time::sleep(AFTER_SAVE).await; // rounds the snapshot will not have
    drop(conn);

    let (end, ended) = watch::channel(None);
    scene.hold_across(ended).await;
    let start_ns = monotonic_ns();
    let killed = Instant::now();
    server.kill();
    std::fs::copy(&aside, &dump).expect("put the old snapshot back");
    server.restart();
    let down = killed.elapsed();
    let end_ns = monotonic_ns();
    let _ = end.send(Some(end_ns));
    let restored_keys: u64 = redis::cmd("DBSIZE")
        .query_async(&mut server.client().await)
        .await
        .expect("DBSIZE");

    let found = scene.finish((start_ns, end_ns), None).await;
    println!(
        "  down {down:?}; {restored_keys} keys restored; {}",
        found.figures()
    );
    FaultRow {
        fault: "Restore from an RDB snapshot",
        injected: forgetting::injected(&format!(
            "SAVE, {AFTER_SAVE:?} more rounds, kill -9, the old dump put back, restart \
             ({:.0} ms down)",
            ms(down)
        )),
        sections: found.sections,
        overlaps: found.report.total.unreported_overlaps,
        lost: found.lost,
        lost_reported: found.lost,
        recovery: Some(found.recovery),
        notes: found.figures(),
    }
}
