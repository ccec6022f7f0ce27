//! Fault 4: the Redis server restarts (no persistence) while locks are held and waited for.
//!
//! Six holders on three lockers keep their locks with the watchdog; a waiter on another locker
//! waits for each lock, and a prober keeps trying fresh keys. The server is killed, stays down for
//! less than a lease (so the loss can only be learnt from the server, not from the clock), and
//! comes back empty. Promised: every holder's `lost()` resolves within one renewal interval of the
//! server answering again (plus the client's reconnect); the lockers reconnect by themselves;
//! new acquisitions succeed within 1 s of the restart; no task hangs; fencing tokens keep
//! growing although the counters were lost.

use std::sync::Arc;
use std::time::Duration;

use distlock::{LockError, LockOptions, Locker};
use tokio::sync::Barrier;
use tokio::time::Instant;

use crate::report::FaultRow;
use crate::support::checker;
use crate::support::records::{Record, monotonic_ns};
use crate::support::redis_server::RedisServer;

const LOCKERS: usize = 3;
const HOLDERS_PER_LOCKER: usize = 2;
/// Short enough for a quick test, long enough that the outage below does not reach it.
const WATCHDOG_LEASE: Duration = Duration::from_secs(4);
const RENEWAL: Duration = Duration::from_millis(500);
/// Shorter than the lease minus a renewal: the holders must learn the loss from the server.
const OUTAGE: Duration = Duration::from_millis(1500);
/// The bound for the loss to be seen: one renewal interval after the server is back.
/// The slack covers the client's reconnect (a connection refused while down makes the command
/// connection back off before it tries again) and a loaded 2-core machine running a debug build.
const LOSS_SLACK: Duration = Duration::from_millis(500);
/// The bound for new acquisitions after the restart.
const REACQUIRE_BOUND: Duration = Duration::from_secs(1);
/// How long the fault's application code pauses before trying again after a Backend error.
const APP_RETRY: Duration = Duration::from_millis(5);
/// No task of this fault may run longer than this after the restart: "no task hangs".
const HANG_BOUND: Duration = Duration::from_secs(10);

pub fn run() -> FaultRow {
    crate::runtime().block_on(restart())
}

async fn locker(server: &RedisServer) -> Locker {
    Locker::builder(server.url())
        .watchdog_lease(WATCHDOG_LEASE)
        .renewal_interval(RENEWAL)
        .response_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300))
        .build()
        .await
        .expect("connect")
}

/// What one holder saw: its section and when its loss was reported.
struct Held {
    record: Record,
    lost_at: Instant,
}

/// What one waiter saw: when it got the lock, and its section.
struct Waited {
    acquired_at: Instant,
    record: Record,
}

async fn restart() -> FaultRow {
    let mut server = RedisServer::start();
    let mut lockers = Vec::new();
    for _ in 0..=LOCKERS {
        lockers.push(locker(&server).await);
    }
    let waiter_locker = lockers.pop().expect("one locker for the waiters");
    let holders = LOCKERS * HOLDERS_PER_LOCKER;
    let keys: Vec<String> = (0..holders).map(|i| format!("restart:{i}")).collect();

    // Every holder holds, then every waiter waits, before the server goes away.
    let held = Arc::new(Barrier::new(holders + 1));
    let mut holder_tasks = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let locker = lockers[i % LOCKERS].clone();
        let (key, held) = (key.clone(), Arc::clone(&held));
        holder_tasks.push(tokio::spawn(async move {
            let guard = locker
                .acquire(&key, LockOptions::new().wait(Duration::ZERO))
                .await
                .expect("the holder takes its free lock");
            let enter_ns = monotonic_ns();
            held.wait().await;
            guard.lost().await;
            let lost_at = Instant::now();
            let exit_ns = monotonic_ns();
            let fence = guard.fencing_token();
            let released = guard.release().await;
            assert!(
                matches!(released, Err(LockError::LeaseLost { .. })),
                "{key}: release after the restart should say LeaseLost: {released:?}"
            );
            Held {
                record: Record::section(&key, fence, i as u32, enter_ns, exit_ns, true),
                lost_at,
            }
        }));
    }
    held.wait().await;
    let fences_before = max_fence(&server).await;

    let mut waiter_tasks = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let (locker, key) = (waiter_locker.clone(), key.clone());
        waiter_tasks.push(tokio::spawn(async move {
            // A waiter whose retry meets the server down gets Backend at once (it cannot know
            // when the server comes back); like an application, it tries again a moment later.
            let guard = loop {
                match locker
                    .acquire(&key, LockOptions::new().wait(Duration::from_secs(30)))
                    .await
                {
                    Ok(guard) => break guard,
                    Err(LockError::Backend { .. }) => {
                        tokio::time::sleep(APP_RETRY).await;
                    }
                    Err(e) => panic!("{key}: the waiter did not get the lock: {e}"),
                }
            };
            let acquired_at = Instant::now();
            let enter_ns = monotonic_ns();
            let fence = guard.fencing_token();
            let lost = guard.is_lost();
            let exit_ns = monotonic_ns();
            guard
                .release()
                .await
                .unwrap_or_else(|e| panic!("{key}: the waiter's release failed: {e}"));
            Waited {
                acquired_at,
                record: Record::section(&key, fence, 100 + i as u32, enter_ns, exit_ns, lost),
            }
        }));
    }
    // The waiters are subscribed once a release would wake them; one round trip through each
    // locker's queue after they started is enough for that, and the outage covers the rest.
    wait_until_subscribed(&server, keys.len()).await;

    server.kill();
    let killed = Instant::now();
    tokio::time::sleep(OUTAGE).await; // the fault itself: the server is away this long
    server.restart();
    let back = Instant::now();
    println!("  server down for {:?}", back - killed);

    // A fresh acquire on a locker that held locks before: the first success after the restart.
    let prober = lockers[0].clone();
    let first_new = loop {
        match prober
            .acquire("restart:fresh", LockOptions::new().wait(Duration::ZERO))
            .await
        {
            Ok(guard) => {
                let at = Instant::now();
                guard.release().await.expect("release the probe");
                break at;
            }
            Err(LockError::Backend { .. }) if back.elapsed() < HANG_BOUND => {
                tokio::time::sleep(APP_RETRY).await;
            }
            Err(e) => panic!("no fresh acquisition after the restart: {e}"),
        }
    };

    let mut records = Vec::new();
    let mut worst_loss = Duration::ZERO;
    for task in holder_tasks {
        let held = tokio::time::timeout_at(back + HANG_BOUND, task)
            .await
            .expect("a holder hung after the restart")
            .expect("holder task");
        worst_loss = worst_loss.max(held.lost_at.saturating_duration_since(back));
        records.push(held.record);
    }
    let mut worst_reacquire = first_new.saturating_duration_since(back);
    let mut fences_after = Vec::new();
    for task in waiter_tasks {
        let waited = tokio::time::timeout_at(back + HANG_BOUND, task)
            .await
            .expect("a waiter hung after the restart")
            .expect("waiter task");
        worst_reacquire = worst_reacquire.max(waited.acquired_at.saturating_duration_since(back));
        fences_after.push(waited.record.fence);
        records.push(waited.record);
    }

    let report = checker::check(&records);
    println!(
        "  holders {holders}: worst loss report {worst_loss:?} after the server was back \
         (renewal interval {RENEWAL:?}); first fresh acquire {:?}, worst waiter {worst_reacquire:?}; \
         overlaps {} (unreported {})",
        first_new.saturating_duration_since(back),
        report.total.overlaps,
        report.total.unreported_overlaps
    );
    assert!(
        worst_loss <= RENEWAL + LOSS_SLACK,
        "a holder learnt of its loss {worst_loss:?} after the server was back, bound {:?}",
        RENEWAL + LOSS_SLACK
    );
    assert!(
        worst_reacquire <= REACQUIRE_BOUND,
        "an acquisition after the restart took {worst_reacquire:?}, bound {REACQUIRE_BOUND:?}"
    );
    assert_eq!(
        report.total.unreported_overlaps, 0,
        "two holders at once without either being told: {report:?}"
    );
    let lowest_after = fences_after.iter().copied().min().unwrap_or(u64::MAX);
    assert!(
        lowest_after > fences_before,
        "fencing went backwards across the restart: {lowest_after} after, {fences_before} before"
    );

    FaultRow {
        fault: "Redis restart, no persistence",
        injected: format!(
            "server killed with {holders} watchdog locks held (lease {WATCHDOG_LEASE:?}, renewal \
             {RENEWAL:?}) and {holders} waiters, back empty after {OUTAGE:?}"
        ),
        sections: records.len() as u64,
        overlaps: report.total.unreported_overlaps,
        lost: holders as u64,
        lost_reported: holders as u64,
        recovery: Some(worst_loss.max(worst_reacquire)),
        notes: format!(
            "loss seen {:.0} ms after the server was back (bound: one renewal, {} ms, + {} ms); \
             every waiter had the lock within {:.0} ms; {} overlaps, each with a holder told of \
             its loss (what a server that forgets cannot prevent); fencing kept growing",
            worst_loss.as_secs_f64() * 1e3,
            RENEWAL.as_millis(),
            LOSS_SLACK.as_millis(),
            worst_reacquire.as_secs_f64() * 1e3,
            report.total.overlaps
        ),
    }
}

/// The highest fencing number among the locks held now (a lock's value is `<token>:<fence>`).
async fn max_fence(server: &RedisServer) -> u64 {
    let mut conn = server.client().await;
    let names: Vec<String> = redis::cmd("KEYS")
        .arg("lock:*")
        .query_async(&mut conn)
        .await
        .expect("KEYS in the test");
    let mut highest = 0;
    for name in names {
        let value: String = redis::cmd("GET")
            .arg(&name)
            .query_async(&mut conn)
            .await
            .expect("GET a lock");
        // `<token>:<fence>[:<holder label>]`
        let fence = value
            .split(':')
            .nth(1)
            .and_then(|fence| fence.parse().ok())
            .unwrap_or_else(|| panic!("{name} holds {value:?}, not <token>:<fence>[:<label>]"));
        highest = highest.max(fence);
    }
    highest
}

/// Waits until `n` lock channels have a subscriber (the waiters are registered), bounded.
async fn wait_until_subscribed(server: &RedisServer, n: usize) {
    let mut conn = server.client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let channels: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg("lock:*:released")
            .query_async(&mut conn)
            .await
            .expect("PUBSUB CHANNELS");
        if channels.len() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the waiters never subscribed: {channels:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
