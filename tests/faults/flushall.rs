//! Fault 11: FLUSHALL while holders work (see `forgetting.rs`): every lock and everything else
//! is gone at once, with no release message.
//!
//! Promised: every holder whose lock was flushed learns it (the watchdog's at its next renewal,
//! a fixed lease's at its release); fencing numbers keep increasing; no overlap without a
//! holder told. A holder with a fixed lease is told only at its release: the overlap with the
//! next holder meanwhile is what a server that forgets cannot prevent (FAULTS.md, below).

use std::time::Duration;

use tokio::sync::watch;

use crate::forgetting::{self, Scene};
use crate::report::FaultRow;
use crate::support::records::monotonic_ns;
use crate::support::redis_server::RedisServer;

/// The workers' rounds before the flush.
const BEFORE: Duration = Duration::from_millis(1500);

pub fn run() -> FaultRow {
    crate::runtime().block_on(flush())
}

async fn flush() -> FaultRow {
    let server = RedisServer::start();
    let mut scene = Scene::start(&server.url(), "flush");
    tokio::time::sleep(BEFORE).await; // the fault's schedule: rounds before the flush
    let mut conn = server.client().await;
    let (end, ended) = watch::channel(None);
    scene.hold_across(ended).await;
    let start_ns = monotonic_ns();
    let flushed: String = redis::cmd("FLUSHALL")
        .query_async(&mut conn)
        .await
        .expect("FLUSHALL");
    assert_eq!(flushed, "OK");
    let end_ns = monotonic_ns();
    let _ = end.send(Some(end_ns));

    let found = scene.finish((start_ns, end_ns), None).await;
    println!("  {}", found.figures());
    FaultRow {
        fault: "FLUSHALL while holders work",
        injected: forgetting::injected("FLUSHALL"),
        sections: found.sections,
        overlaps: found.report.total.unreported_overlaps,
        lost: found.lost,
        lost_reported: found.lost,
        recovery: Some(found.recovery),
        notes: found.figures(),
    }
}
