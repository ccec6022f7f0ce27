//! Fault 14: cancellation at every poll, under load. Tasks on three lockers loop on two
//! contended keys (so releases hand the lock to waiting tasks of the same locker, and to other
//! lockers through Redis); in a random half of the rounds one future of the round is dropped
//! after its k-th poll, k swept from 1 to `MAX_POLLS`: the acquire, the release (also while it
//! hands the lock over), or an annotated `#[distributed_lock]` call (while acquiring or inside
//! its body).
//!
//! Promised (every public future is cancel-safe): no overlap; after each drop the key is free
//! or handed on within the background release bound, never only at the lease's end (the leases
//! here outlast the run, and the waits are shorter than the leases: a waiter that waited out a
//! lease would fail with NotAcquired); no lock left once the run is over; tasks back to the
//! baseline.
//!
//! The control leaks a guard (`mem::forget`: what a future that is not cancel-safe would leave
//! behind, a lock nobody releases) and shows that the next waiter's wait runs out: the check
//! the run relies on would see a leak.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use distlock::{LockError, LockOptions, Locker, distributed_lock};
use tokio::sync::Mutex;

use crate::report::FaultRow;
use crate::support::checker;
use crate::support::records::{Record, monotonic_ns};
use crate::support::redis_server::{RedisServer, wait_until_unlocked};

const LOCKERS: usize = 3;
const TASKS_PER_LOCKER: usize = 6;
const KEYS: [&str; 2] = ["poll:0", "poll:1"];
const RUN: Duration = Duration::from_secs(4);
/// The largest k: past every await point of an acquire that waits, a release that hands over,
/// and an annotated call's acquire and body.
const MAX_POLLS: u32 = 12;
/// Longer than the run: only a release, never the expiry, frees a lock here in time.
const LEASE: Duration = Duration::from_secs(30);
/// Shorter than the lease, and far longer than any queue here: a waiter behind a lock that
/// nothing released fails with NotAcquired instead of waiting it out.
const WAIT: Duration = Duration::from_secs(10);
/// The control: a leaked guard's lease, and a waiter's wait shorter than it (the run's ratio,
/// scaled down to keep the row quick).
const CONTROL_LEASE: Duration = Duration::from_secs(2);
const CONTROL_WAIT: Duration = Duration::from_secs(1);
/// A dropped future's lock is released in the background, one round trip: this bounds it on a
/// loaded 2-core machine, far below the lease (the same bound as tests/cancellation.rs).
const BACKGROUND_RELEASE_BOUND: Duration = Duration::from_secs(5);

pub fn run() -> FaultRow {
    crate::runtime().block_on(storm())
}

/// Which future of a round is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dropped {
    Acquire,
    Release,
    Call,
}

/// A drop: which future, on which key, when (CLOCK_MONOTONIC ns).
struct DropEvent {
    kind: Dropped,
    key: &'static str,
    at_ns: u64,
}

#[derive(Default)]
struct Shared {
    sections: Mutex<Vec<Record>>,
    drops: Mutex<Vec<DropEvent>>,
    /// Waits that ran out: the key, the task, and when the wait began (CLOCK_MONOTONIC ns).
    ran_out: Mutex<Vec<(&'static str, u32, u64)>>,
    rounds: AtomicU64,
}

/// Polls `fut` at most `polls` times; `None` when it was dropped unfinished, as an outer
/// `timeout` or `select!` drops it.
async fn poll_at_most<F: Future>(fut: F, polls: u32) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let mut polled = 0;
    std::future::poll_fn(|cx| {
        polled += 1;
        match fut.as_mut().poll(cx) {
            Poll::Ready(out) => Poll::Ready(Some(out)),
            Poll::Pending if polled >= polls => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// The section of an annotated call, written when the body ends or is dropped.
struct Section {
    key: &'static str,
    task: u32,
    enter_ns: u64,
    shared: Arc<Shared>,
}

impl Drop for Section {
    fn drop(&mut self) {
        // The annotated body has no guard to ask for the token: fence 0, overlaps still checked.
        let record = Record::section(self.key, 0, self.task, self.enter_ns, monotonic_ns(), false);
        let shared = Arc::clone(&self.shared);
        // Drop never blocks: the lock is taken by a task of its own.
        tokio::spawn(async move { shared.sections.lock().await.push(record) });
    }
}

#[distributed_lock(key = "{key}", wait = "10s", lease = "30s", locker = locker)]
async fn locked_call(
    locker: &Locker,
    key: &'static str,
    task: u32,
    shared: Arc<Shared>,
) -> Result<(), LockError> {
    let _section = Section {
        key,
        task,
        enter_ns: monotonic_ns(),
        shared,
    };
    tokio::task::yield_now().await;
    Ok(())
}

async fn storm() -> FaultRow {
    let server = RedisServer::start();
    let mut lockers = Vec::new();
    for _ in 0..LOCKERS {
        lockers.push(Locker::connect(&server.url()).await.expect("connect"));
    }
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    let shared = Arc::new(Shared::default());
    let started_ns = monotonic_ns();
    let deadline = tokio::time::Instant::now() + RUN;
    let mut tasks = Vec::new();
    for (l, locker) in lockers.iter().enumerate() {
        for t in 0..TASKS_PER_LOCKER {
            let task = (l * TASKS_PER_LOCKER + t) as u32;
            let (locker, shared) = (locker.clone(), Arc::clone(&shared));
            tasks.push(tokio::spawn(async move {
                let mut k = task % MAX_POLLS;
                while tokio::time::Instant::now() < deadline {
                    k = k % MAX_POLLS + 1; // the sweep
                    round(&locker, task, k, &shared).await;
                }
            }));
        }
    }
    // A wait may begin just before the end of the run: the bound is the run and one wait.
    for task in tasks {
        crate::within(
            RUN + WAIT + BACKGROUND_RELEASE_BOUND,
            "a cancelling task",
            task,
        )
        .await
        .expect("cancelling task");
    }
    let ended = tokio::time::Instant::now();
    let ran_out = std::mem::take(&mut *shared.ran_out.lock().await);
    let keys: Vec<String> = KEYS.iter().map(|k| k.to_string()).collect();
    let left = wait_until_unlocked(&server, &keys, BACKGROUND_RELEASE_BOUND).await;
    if !ran_out.is_empty() {
        // Who had the key meanwhile: sections that began after the wait did, by locker.
        let records = shared.sections.lock().await;
        let waits: Vec<String> = ran_out
            .iter()
            .map(|&(key, task, began)| {
                let mut by_locker = [0u64; LOCKERS];
                for r in records
                    .iter()
                    .filter(|r| r.key == key && r.enter_ns > began)
                {
                    by_locker[r.task as usize / TASKS_PER_LOCKER] += 1;
                }
                format!(
                    "{key} on locker {} from {:.3} s into the run, while sections of it ran on \
                     each locker: {by_locker:?}",
                    task as usize / TASKS_PER_LOCKER,
                    (began - started_ns) as f64 / 1e9
                )
            })
            .collect();
        panic!(
            "waits ran out ({WAIT:?}) behind a lock nothing released or a wake-up that never \
             came; locked after the run: {left:?}:\n  {}",
            waits.join("\n  ")
        );
    }
    left.unwrap_or_else(|left| panic!("locks left after the run: {left:?}"));
    let drained = ended.elapsed();
    let settle = tokio::time::Instant::now() + BACKGROUND_RELEASE_BOUND;
    while metrics.num_alive_tasks() > tasks_before && tokio::time::Instant::now() < settle {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await; // background tasks finishing
    }
    let tasks_after = metrics.num_alive_tasks();

    let records = std::mem::take(&mut *shared.sections.lock().await);
    let drops = std::mem::take(&mut *shared.drops.lock().await);
    let report = checker::check(&records);
    // Per drop: how long until the next holder of its key entered.
    let mut entries: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for record in &records {
        entries
            .entry(&record.key)
            .or_default()
            .push(record.enter_ns);
    }
    for list in entries.values_mut() {
        list.sort_unstable();
    }
    let mut per_kind: BTreeMap<Dropped, (u64, Duration)> = BTreeMap::new();
    for drop in &drops {
        let next = entries
            .get(drop.key)
            .and_then(|list| list.iter().find(|&&enter| enter > drop.at_ns));
        let entry = per_kind.entry(drop.kind).or_default();
        entry.0 += 1;
        if let Some(next) = next {
            entry.1 = entry.1.max(Duration::from_nanos(next - drop.at_ns));
        }
    }
    let worst = per_kind.values().map(|(_, d)| *d).max().unwrap_or_default();
    let rounds = shared.rounds.load(Ordering::Relaxed);
    let figures = per_kind
        .iter()
        .map(|(kind, (n, worst))| {
            format!(
                "{n} {kind:?} drops (next holder in {:.1} ms at worst)",
                worst.as_secs_f64() * 1e3
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "  {rounds} rounds, {} sections; {figures}; no wait ran out; locks gone \
         {drained:?} after the run; tasks {tasks_before} -> {tasks_after}; {report}",
        records.len()
    );
    assert_eq!(report.total.overlaps, 0, "two holders at once: {report}");
    assert!(
        worst < BACKGROUND_RELEASE_BOUND,
        "a key stayed taken {worst:?} after a drop, bound {BACKGROUND_RELEASE_BOUND:?}"
    );
    assert!(
        tasks_after <= tasks_before,
        "tasks left running: {tasks_before} before, {tasks_after} after"
    );
    for kind in [Dropped::Acquire, Dropped::Release, Dropped::Call] {
        assert!(
            per_kind.get(&kind).is_some_and(|(n, _)| *n > 0),
            "no {kind:?} was dropped: the sweep did not reach it"
        );
    }

    let control = control(&server).await;

    FaultRow {
        fault: "Cancellation at every poll, under load",
        injected: format!(
            "{LOCKERS} lockers x {TASKS_PER_LOCKER} tasks on {} keys for {RUN:?}; in half the \
             rounds the acquire, the release (hand-overs too) or a #[distributed_lock] call \
             dropped after its k-th poll, k = 1..{MAX_POLLS}; leases {LEASE:?}, waits {WAIT:?}",
            KEYS.len()
        ),
        sections: records.len() as u64,
        overlaps: report.total.unreported_overlaps,
        lost: 0,
        lost_reported: 0,
        recovery: Some(worst),
        notes: format!(
            "{figures}; no wait ran out; no lock left {:.0} ms after the run; tasks \
             {tasks_before} -> {tasks_after}; control: a guard leaked with mem::forget made the \
             next waiter's wait run out (NotAcquired after {:.0} ms)",
            drained.as_secs_f64() * 1e3,
            control.as_secs_f64() * 1e3
        ),
    }
}

/// Leaks a guard of a fixed lease, and returns how long a waiter on another locker waited
/// before it ran out.
async fn control(server: &RedisServer) -> Duration {
    let leaker = Locker::connect(&server.url()).await.expect("connect");
    let waiter = Locker::connect(&server.url()).await.expect("connect");
    let guard = leaker
        .acquire("poll:control", LockOptions::new().lease(CONTROL_LEASE))
        .await
        .expect("the control's lock");
    std::mem::forget(guard);
    let started = tokio::time::Instant::now();
    let waited = waiter
        .acquire("poll:control", LockOptions::new().wait(CONTROL_WAIT))
        .await;
    let waited_for = started.elapsed();
    assert!(
        waited.as_ref().is_err_and(LockError::is_not_acquired),
        "the control: a leaked lock did not keep the waiter out: {:?}",
        waited.map(|g| g.fencing_token())
    );
    println!("  control: leaked guard, the waiter gave up after {waited_for:?}");
    waited_for
}

/// One round: acquire, section, release, or the annotated call; one of them maybe dropped.
async fn round(locker: &Locker, task: u32, k: u32, shared: &Arc<Shared>) {
    shared.rounds.fetch_add(1, Ordering::Relaxed);
    let key = KEYS[fastrand::usize(..KEYS.len())];
    let drop_one = fastrand::bool();
    let dropped = |kind| DropEvent {
        kind,
        key,
        at_ns: monotonic_ns(),
    };
    if fastrand::u8(..3) == 0 {
        let call = locked_call(locker, key, task, Arc::clone(shared));
        let polls = if drop_one { k } else { u32::MAX };
        let began = monotonic_ns();
        match poll_at_most(call, polls).await {
            None => shared.drops.lock().await.push(dropped(Dropped::Call)),
            Some(Ok(())) => {}
            Some(Err(e)) => not_acquired(shared, key, task, began, e).await,
        }
        return;
    }
    let options = if fastrand::bool() {
        LockOptions::new().wait(WAIT).lease(LEASE)
    } else {
        LockOptions::new().wait(WAIT) // the watchdog, at the default 30 s lease
    };
    let drop_acquire = drop_one && fastrand::bool();
    let polls = if drop_acquire { k } else { u32::MAX };
    let began = monotonic_ns();
    let guard = match poll_at_most(locker.acquire(key, options), polls).await {
        None => {
            shared.drops.lock().await.push(dropped(Dropped::Acquire));
            return;
        }
        Some(Ok(guard)) => guard,
        Some(Err(e)) => return not_acquired(shared, key, task, began, e).await,
    };
    let enter_ns = monotonic_ns();
    tokio::task::yield_now().await;
    let record = Record::section(
        key,
        guard.fencing_token(),
        task,
        enter_ns,
        monotonic_ns(),
        guard.is_lost(),
    );
    shared.sections.lock().await.push(record);
    let polls = if drop_one && !drop_acquire {
        k
    } else {
        u32::MAX
    };
    match poll_at_most(guard.release(), polls).await {
        None => shared.drops.lock().await.push(dropped(Dropped::Release)),
        Some(Ok(())) => {}
        Some(Err(e)) => panic!("{key}: release failed: {e}"),
    }
}

async fn not_acquired(shared: &Shared, key: &'static str, task: u32, began: u64, e: LockError) {
    assert!(e.is_not_acquired(), "acquire failed: {e}");
    shared.ran_out.lock().await.push((key, task, began));
}
