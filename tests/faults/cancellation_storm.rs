//! Fault 7: a storm of cancelled acquires.
//!
//! Background holders keep a few keys busy; 1000 acquires on those keys are cancelled at random
//! points: by `tokio::time::timeout` with a random bound (before the first answer, while waiting
//! for a release, just after the answer), by `select!` against a random sleep or against another
//! task's signal, and by being polled once and dropped. Some that do get the lock drop the guard
//! without releasing. Promised: exclusion holds throughout; once the storm is over no lock is left
//! in Redis (the fencing counters stay, by design), no task is left running, no connection was
//! added.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use distlock::{LockGuard, LockOptions, Locker};
use redis::aio::MultiplexedConnection as Connection;
use tokio::sync::{Mutex, oneshot};
use tokio::time::Instant;

use crate::report::FaultRow;
use crate::support::checker;
use crate::support::records::{Record, monotonic_ns};
use crate::support::redis_server::{RedisServer, lock_names};

const STORM: usize = 1000;
/// How many storm acquires are in flight at once.
const IN_FLIGHT: usize = 50;
const KEYS: usize = 4;
const LOCKERS: usize = 3;
const LEASE: Duration = Duration::from_secs(5);
/// The longest random cancellation point: past the usual round trip (~0.1 ms) and into the
/// waiting phase behind holders that keep a key for up to `HOLD_MAX`.
const CANCEL_MAX_US: u64 = 3_000;
const HOLD_MAX_US: u64 = 2_000;
/// Background releases of dropped guards and cleanups of cancelled requests are one round trip
/// each; this bounds how long the suite waits for them on a loaded machine before failing.
const DRAIN_BOUND: Duration = Duration::from_secs(10);

pub fn run() -> FaultRow {
    crate::runtime().block_on(storm())
}

#[derive(Default)]
struct Outcomes {
    cancelled: AtomicU64,
    acquired: AtomicU64,
    dropped_unreleased: AtomicU64,
    not_acquired: AtomicU64,
}

/// The sections of the run, for the overlap checker.
type Sections = Arc<Mutex<Vec<Record>>>;

async fn storm() -> FaultRow {
    let server = RedisServer::start();
    let mut lockers = Vec::new();
    for _ in 0..LOCKERS {
        lockers.push(Locker::connect(&server.url()).await.expect("connect"));
    }
    let keys: Vec<String> = (0..KEYS).map(|i| format!("storm:{i}")).collect();
    // One connection of the test's own to look at the server, open for the whole fault.
    let mut probe = server.client().await;
    // Make every locker's subscriber connection exist before the baseline is taken.
    for (i, locker) in lockers.iter().enumerate() {
        warm_up(locker, &format!("storm:warm-up:{i}"), &mut probe).await;
    }
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    let clients_before = clients(&mut probe).await;

    let sections: Sections = Arc::default();
    let outcomes = Arc::new(Outcomes::default());

    // Holders: keep the keys busy so storm acquires are cancelled while waiting too.
    let stop = Arc::new(AtomicBool::new(false));
    let mut holders = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let (locker, key) = (lockers[i % LOCKERS].clone(), key.clone());
        let (stop, sections) = (Arc::clone(&stop), Arc::clone(&sections));
        holders.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let options = LockOptions::new()
                    .wait(Duration::from_secs(10))
                    .lease(LEASE);
                let guard = locker.acquire(&key, options).await.expect("holder acquire");
                let enter = monotonic_ns();
                tokio::time::sleep(Duration::from_micros(fastrand::u64(0..HOLD_MAX_US))).await;
                finish(guard, enter, u32::MAX, &sections).await;
            }
        }));
    }

    let started = Instant::now();
    let mut in_flight = tokio::task::JoinSet::new();
    for n in 0..STORM {
        if in_flight.len() >= IN_FLIGHT {
            in_flight
                .join_next()
                .await
                .expect("a storm task")
                .expect("storm task");
        }
        let locker = lockers[fastrand::usize(..LOCKERS)].clone();
        let key = keys[fastrand::usize(..KEYS)].clone();
        let (sections, outcomes) = (Arc::clone(&sections), Arc::clone(&outcomes));
        in_flight.spawn(cancelled_acquire(n as u32, locker, key, sections, outcomes));
    }
    while let Some(done) = in_flight.join_next().await {
        done.expect("storm task");
    }
    let storm_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for holder in holders {
        holder.await.expect("holder task");
    }

    // Everything the storm started in the background (releases of dropped guards, cleanups of
    // cancelled requests, unsubscribes) ends within a few round trips: observe it, bounded.
    let drain_started = Instant::now();
    let left = loop {
        let left = lock_names(&mut probe).await;
        let tasks = metrics.num_alive_tasks();
        let subscribed = subscribed_channels(&mut probe).await;
        if left.is_empty() && tasks <= tasks_before && subscribed.is_empty() {
            break left;
        }
        if drain_started.elapsed() > DRAIN_BOUND {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let drained = drain_started.elapsed();
    let tasks_after = metrics.num_alive_tasks();
    let clients_after = clients(&mut probe).await;
    let subscribed = subscribed_channels(&mut probe).await;
    let records = sections.lock().await.clone();
    let report = checker::check(&records);
    let cancelled = outcomes.cancelled.load(Ordering::Relaxed);
    let acquired = outcomes.acquired.load(Ordering::Relaxed);
    let dropped = outcomes.dropped_unreleased.load(Ordering::Relaxed);
    println!(
        "  {STORM} acquires in {storm_time:?}: {cancelled} cancelled, {acquired} acquired ({dropped} \
         guards dropped unreleased), {} timed out; {} sections, overlaps {}; drained in {drained:?}; \
         tasks {tasks_before} -> {tasks_after}; clients {clients_before} -> {clients_after}",
        outcomes.not_acquired.load(Ordering::Relaxed),
        records.len(),
        report.total.overlaps,
    );
    assert!(
        left.is_empty(),
        "locks left in Redis after the storm: {left:?}"
    );
    assert!(
        subscribed.is_empty(),
        "wake-up channels still subscribed after the storm (an unbalanced subscribe): {subscribed:?}"
    );
    assert!(
        tasks_after <= tasks_before,
        "tasks left running after the storm: {tasks_before} before, {tasks_after} after"
    );
    assert_eq!(
        clients_after, clients_before,
        "the storm changed the number of connections"
    );
    assert_eq!(report.total.overlaps, 0, "two holders at once: {report:?}");
    assert!(
        cancelled >= STORM as u64 / 4 && acquired > 0,
        "the storm did not cancel at enough different points: {cancelled} cancelled, {acquired} acquired"
    );

    FaultRow {
        fault: "Cancellation storm",
        injected: format!(
            "{STORM} acquires on {KEYS} busy keys cancelled at random points (timeout, select!, \
             polled once), some guards dropped unreleased; {LOCKERS} lockers"
        ),
        sections: records.len() as u64,
        overlaps: report.total.unreported_overlaps,
        lost: 0,
        lost_reported: 0,
        recovery: Some(drained),
        notes: format!(
            "{cancelled} cancelled, {acquired} acquired ({dropped} dropped unreleased); no lock left \
             {:.0} ms after the storm, tasks {tasks_before} -> {tasks_after}, connections \
             {clients_before} -> {clients_after}",
            drained.as_secs_f64() * 1e3
        ),
    }
}

/// One storm acquire, cancelled at a random point by a random means.
async fn cancelled_acquire(
    n: u32,
    locker: Locker,
    key: String,
    sections: Sections,
    outcomes: Arc<Outcomes>,
) {
    let options = LockOptions::new()
        .wait(Duration::from_secs(10))
        .lease(LEASE);
    let point = Duration::from_micros(fastrand::u64(0..CANCEL_MAX_US));
    let acquire = locker.acquire(&key, options);
    let outcome = match fastrand::u8(0..4) {
        0 => tokio::time::timeout(point, acquire).await.ok(),
        1 => tokio::select! {
            acquired = acquire => Some(acquired),
            () = tokio::time::sleep(point) => None,
        },
        2 => {
            // Cancelled by another task's signal, as a shutdown or a client disconnect would.
            let (cancel, cancelled) = oneshot::channel::<()>();
            tokio::spawn(async move {
                tokio::time::sleep(point).await;
                let _ = cancel.send(());
            });
            tokio::select! {
                acquired = acquire => Some(acquired),
                _ = cancelled => None,
            }
        }
        // Polled exactly once, then dropped: the request may be on the wire already.
        _ => tokio::time::timeout(Duration::ZERO, acquire).await.ok(),
    };
    match outcome {
        None => {
            outcomes.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        Some(Ok(guard)) => {
            outcomes.acquired.fetch_add(1, Ordering::Relaxed);
            let enter = monotonic_ns();
            if fastrand::bool() {
                // Dropped without release (an early return, a panic): released in the background.
                let record = record(&guard, enter, n, false);
                drop(guard);
                outcomes.dropped_unreleased.fetch_add(1, Ordering::Relaxed);
                sections.lock().await.push(record);
            } else {
                finish(guard, enter, n, &sections).await;
            }
        }
        Some(Err(e)) if e.is_not_acquired() => {
            outcomes.not_acquired.fetch_add(1, Ordering::Relaxed);
        }
        Some(Err(e)) => panic!("storm acquire failed: {e}"),
    }
}

async fn finish(guard: LockGuard, enter: u64, task: u32, sections: &Sections) {
    let record = record(&guard, enter, task, false);
    let released = guard.release().await;
    let lost = released.as_ref().is_err_and(|e| e.is_lease_lost());
    if let Err(e) = &released
        && !lost
    {
        panic!("release failed: {e}");
    }
    sections.lock().await.push(Record { lost, ..record });
}

/// The section so far; its exit is now, as the guard is about to be released or dropped.
fn record(guard: &LockGuard, enter_ns: u64, task: u32, lost: bool) -> Record {
    let lost = lost || guard.is_lost();
    Record::section(
        guard.key(),
        guard.fencing_token(),
        task,
        enter_ns,
        monotonic_ns(),
        lost,
    )
}

/// A contended acquire, so the locker's subscriber connection is made before the baseline.
async fn warm_up(locker: &Locker, key: &str, probe: &mut Connection) {
    let guard = locker
        .acquire(key, LockOptions::new().lease(LEASE))
        .await
        .expect("warm-up acquire");
    let waiter = {
        let (locker, key) = (locker.clone(), key.to_owned());
        tokio::spawn(async move {
            // A different task: the holder's task would re-enter instead of waiting.
            locker
                .acquire(&key, LockOptions::new().lease(LEASE))
                .await
                .expect("warm-up waiter")
                .release()
                .await
                .expect("warm-up release");
        })
    };
    // Release once the waiter is subscribed (seen on the server), so it does wait.
    let deadline = Instant::now() + DRAIN_BOUND;
    let channel = format!("lock:{{{key}}}:released");
    while !subscribed_channels(probe).await.contains(&channel) {
        assert!(
            Instant::now() < deadline,
            "the warm-up waiter never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    guard.release().await.expect("warm-up release");
    waiter.await.expect("warm-up waiter task");
}

/// Wake-up channels with a subscriber.
async fn subscribed_channels(probe: &mut Connection) -> Vec<String> {
    redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg("lock:*")
        .query_async(probe)
        .await
        .expect("PUBSUB CHANNELS")
}

/// Connections the server has open, less the one asking.
async fn clients(probe: &mut Connection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(probe)
        .await
        .expect("CLIENT LIST");
    list.lines().count() - 1
}
