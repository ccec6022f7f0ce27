//! Fault 12: eviction under `maxmemory-policy allkeys-lru`. While holders work (see
//! `forgetting.rs`), the server's memory limit is set just above what it uses and junk values
//! are written until it has evicted both kept locks; then the limit is lifted. Locks of the
//! workers are evicted along the way as LRU's samples pick them.
//!
//! The server samples one key per eviction (`maxmemory-samples 1`) so that the renewed locks are
//! picked within a bounded number of writes; with more samples the same happens, only later.
//! Same promises as FLUSHALL: holders learn the loss, fencing numbers keep increasing, no
//! overlap without a holder told. (At connect the locker logs a WARN naming this policy, with the
//! fix, `noeviction`.)

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::forgetting::{self, Scene, ms};
use crate::report::FaultRow;
use crate::support::records::monotonic_ns;
use crate::support::redis_server::RedisServer;

/// The workers' rounds before the memory fills.
const BEFORE: Duration = Duration::from_millis(1500);
/// Junk values: a few hundred fill the headroom below.
const JUNK_VALUE_BYTES: usize = 8 * 1024;
/// Memory the server may use above what it uses when the fill starts.
const HEADROOM_BYTES: u64 = 2 * 1024 * 1024;
/// Junk writes after which both kept locks must have gone: a sampled LRU picks each of ~300 keys
/// with about the same chance, so this is many times what it needs.
const MAX_JUNK: usize = 200_000;

pub fn run() -> FaultRow {
    crate::runtime().block_on(evict())
}

async fn info_field(
    conn: &mut redis::aio::MultiplexedConnection,
    section: &str,
    field: &str,
) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|l| l.strip_prefix(':')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("INFO {section} has no {field}"))
}

async fn exists(conn: &mut redis::aio::MultiplexedConnection, name: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(name)
        .query_async(conn)
        .await
        .expect("EXISTS")
}

async fn evict() -> FaultRow {
    let server = RedisServer::start_with(&[
        "--maxmemory-policy",
        "allkeys-lru",
        "--maxmemory-samples",
        "1",
    ]);
    let mut scene = Scene::start(&server.url(), "evict");
    tokio::time::sleep(BEFORE).await; // the fault's schedule: rounds before the fill
    let mut conn = server.client().await;
    let (end, ended) = watch::channel(None);
    scene.hold_across(ended).await;

    let start_ns = monotonic_ns();
    let filling = Instant::now();
    let used = info_field(&mut conn, "memory", "used_memory").await;
    let limit = (used + HEADROOM_BYTES).to_string();
    let set: String = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(&limit)
        .query_async(&mut conn)
        .await
        .expect("CONFIG SET maxmemory");
    assert_eq!(set, "OK");
    let junk = "x".repeat(JUNK_VALUE_BYTES);
    let kept = ["lock:{evict:watchdog}", "lock:{evict:fixed}"];
    // When each kept lock was first seen gone: its holder's time until told counts from there.
    let mut gone = [0u64; 2];
    let mut written = 0;
    loop {
        for (name, gone) in kept.iter().zip(&mut gone) {
            if *gone == 0 && !exists(&mut conn, name).await {
                *gone = monotonic_ns();
            }
        }
        if gone.iter().all(|&at| at != 0) {
            break;
        }
        assert!(written < MAX_JUNK, "the kept locks were not evicted");
        let _: () = redis::cmd("SET")
            .arg(format!("junk:{written}"))
            .arg(&junk)
            .query_async(&mut conn)
            .await
            .expect("SET junk");
        written += 1;
    }
    let lifted: String = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query_async(&mut conn)
        .await
        .expect("CONFIG SET maxmemory 0");
    assert_eq!(lifted, "OK");
    let end_ns = monotonic_ns();
    let fill = filling.elapsed();
    let _ = end.send(Some(end_ns));
    let evicted = info_field(&mut conn, "stats", "evicted_keys").await;

    let found = scene.finish((start_ns, end_ns), Some(gone)).await;
    println!(
        "  {written} junk values in {fill:?}, {evicted} keys evicted; {}",
        found.figures()
    );
    FaultRow {
        fault: "Eviction (allkeys-lru)",
        injected: forgetting::injected(&format!(
            "maxmemory = used + 2 MiB, allkeys-lru (1 sample), junk written until both kept \
             locks were evicted ({written} values, {evicted} keys evicted in {:.0} ms)",
            ms(fill)
        )),
        sections: found.sections,
        overlaps: found.report.total.unreported_overlaps,
        lost: found.lost,
        lost_reported: found.lost,
        recovery: Some(found.recovery),
        notes: found.figures(),
    }
}
