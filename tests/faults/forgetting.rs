//! What the rows of a server that forgets or rewinds its locks share (restore from a snapshot,
//! FLUSHALL, eviction, promotion of a lagging replica): the same work before, during and after
//! the fault, and the same checks.
//!
//! Two torture_worker processes (one with a fixed lease, one with the watchdog) loop on two keys,
//! writing a record per section. Just before the fault, two in-process holders take keys of
//! their own and keep them across it (one with the watchdog, told at its next renewal; one with
//! a fixed lease, told at its release), and a prober on another locker takes each of those keys
//! as soon as the server lets it: the overlap a forgetting server cannot prevent, on purpose.
//!
//! Checked, as the README promises: fencing numbers of one key never repeat, and every number
//! handed out after the fault is above every number of that key handed out before it (the
//! server clock; all servers of a row run on this machine); every overlap has a holder that was
//! told (`lost()`, `is_lost()`, `LeaseLost`); the watchdog holder is told within a renewal
//! interval of the server answering without its lock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use distlock::{LockError, LockOptions, Locker};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::support::checker::{self, CheckReport};
use crate::support::records::{self, Record, monotonic_ns};
use crate::support::worker::{Lease, RunOutcome, RunSpec, RunWorker, start_run_workers};

const TASKS: u32 = 6;
/// How long the worker processes work: a second or two before the fault, the fault, and the
/// recovery after it, within the suite's time budget.
pub const WORK: Duration = Duration::from_secs(5);
/// Short leases, so a lock a restored or promoted server still has (its holder has long moved
/// on) expires within the run: that is how a single Redis recovers from it.
const WORKER_LEASE: Duration = Duration::from_secs(2);
const WATCHDOG_LEASE: Duration = Duration::from_secs(2);
const RENEWAL: Duration = Duration::from_millis(500);
/// The in-process fixed-lease holder keeps its key this long after the fault, then releases:
/// long enough for the prober to be inside with it, well within its lease.
const FIXED_HOLDER_LEASE: Duration = Duration::from_secs(10);
const FIXED_HOLDER_KEEPS: Duration = Duration::from_millis(1500);
/// The prober's pause between tries (wait zero): an application polling a key it saw taken.
const PROBE_PAUSE: Duration = Duration::from_millis(10);
/// The in-process lockers give up on a command this soon, so a killed server is noticed quickly.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(300);
/// The bound on the watchdog holder being told: one renewal after the server answers without
/// its lock; the slack covers a reconnect (its back-off after refused connects) and a loaded
/// 2-core machine running a debug build.
pub const TOLD_BOUND: Duration = Duration::from_millis(500 + 1000);
/// How long the run's tasks may take after their work is done: a hung one fails the row.
const FINISH_GRACE: Duration = Duration::from_secs(30);

/// The processes and in-process holders of one row, running.
pub struct Scene {
    prefix: &'static str,
    url: String,
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    workers: Vec<RunWorker>,
    long: Vec<JoinHandle<Record>>,
    probers: Vec<JoinHandle<(Record, u64)>>,
    /// Set by `holding`: when the in-process watchdog holder was told, in ns on CLOCK_MONOTONIC.
    told: Vec<tokio::sync::oneshot::Receiver<u64>>,
}

/// What a row found.
pub struct Findings {
    pub report: CheckReport,
    pub sections: u64,
    pub lost: u64,
    /// Over the keys, the smallest step from the highest fence handed out before the fault to
    /// the lowest after it (server microseconds: fences follow the server clock).
    pub fence_step: u64,
    /// From the fault's end to the watchdog holder's `lost()` resolving.
    pub watchdog_told: Duration,
    /// From the fault's end to the fixed-lease holder's release returning `LeaseLost`.
    pub fixed_told: Duration,
    /// From the fault's end to the worst key's first section (the workers' keys and the probed
    /// ones).
    pub recovery: Duration,
    /// Backend errors the workers met (and retried after), over both processes.
    pub worker_errors: u64,
}

impl Findings {
    /// The figures as one phrase for the row's notes.
    pub fn figures(&self) -> String {
        format!(
            "fences never repeated, lowest after the fault {} above the highest before; watchdog \
             holder told {:.0} ms after its lock was gone, fixed-lease holder at its release \
             ({:.0} ms after); every key taken again within {:.0} ms of the fault; {} overlaps, \
             every one with a holder told; {} worker backend errors retried",
            self.fence_step,
            ms(self.watchdog_told),
            ms(self.fixed_told),
            ms(self.recovery),
            self.report.total.overlaps,
            self.worker_errors
        )
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// What the workers are told: leases and a wait long enough to outlast any fault here.
pub fn injected(processes: &str) -> String {
    format!(
        "{processes}: 2 processes x {TASKS} tasks on 2 keys (fixed lease {WORKER_LEASE:?}; \
         watchdog {WATCHDOG_LEASE:?} / {RENEWAL:?}) for {WORK:?}, plus a watchdog and a \
         fixed-lease holder kept across the fault with a prober on their keys"
    )
}

async fn locker(url: &str) -> Locker {
    Locker::builder(url)
        .watchdog_lease(WATCHDOG_LEASE)
        .renewal_interval(RENEWAL)
        .response_timeout(RESPONSE_TIMEOUT)
        .connect_timeout(RESPONSE_TIMEOUT)
        .build()
        .await
        .expect("connect the in-process locker")
}

impl Scene {
    /// Starts the worker processes on `<prefix>:0` and `<prefix>:1` against `url`.
    pub fn start(url: &str, prefix: &'static str) -> Scene {
        let dir = tempfile::tempdir().expect("temp dir for the records");
        let path = dir.path().to_owned();
        let keys = [format!("{prefix}:0"), format!("{prefix}:1")];
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let specs = [
            RunSpec::new(url, &path.join("fixed.jsonl"), &keys, WORK)
                .tasks(TASKS)
                .lease(Lease::Fixed(WORKER_LEASE)),
            RunSpec::new(url, &path.join("watchdog.jsonl"), &keys, WORK)
                .tasks(TASKS)
                .lease(Lease::Watchdog {
                    lease: WATCHDOG_LEASE,
                    renewal: RENEWAL,
                }),
        ];
        Scene {
            prefix,
            url: url.to_owned(),
            _dir: dir,
            dir: path,
            workers: start_run_workers(&specs),
            long: Vec::new(),
            probers: Vec::new(),
            told: Vec::new(),
        }
    }

    /// The in-process holders take their keys (call it right before the fault): a watchdog
    /// holder that keeps its key until told, and a fixed-lease holder that keeps it
    /// `FIXED_HOLDER_KEEPS` past `fault_end` (a signal), then releases.
    pub async fn hold_across(&mut self, fault_end: tokio::sync::watch::Receiver<Option<u64>>) {
        let holders = locker(&self.url).await;
        let prober = locker(&self.url).await;
        for watchdog in [true, false] {
            let key = format!(
                "{}:{}",
                self.prefix,
                if watchdog { "watchdog" } else { "fixed" }
            );
            let options = if watchdog {
                LockOptions::new().wait(Duration::ZERO)
            } else {
                LockOptions::new()
                    .wait(Duration::ZERO)
                    .lease(FIXED_HOLDER_LEASE)
            };
            let guard = holders
                .acquire(&key, options)
                .await
                .unwrap_or_else(|e| panic!("{key}: the holder takes its free lock: {e}"));
            let enter_ns = monotonic_ns();
            let (tell, told) = tokio::sync::oneshot::channel();
            self.told.push(told);
            let mut ended = fault_end.clone();
            let held_key = key.clone();
            self.long.push(tokio::spawn(async move {
                let key = held_key;
                let fence = guard.fencing_token();
                let mut tell = Some(tell);
                if watchdog {
                    guard.lost().await;
                    if let Some(tell) = tell.take() {
                        let _ = tell.send(monotonic_ns());
                    }
                } else {
                    let _ = ended.wait_for(Option::is_some).await;
                    tokio::time::sleep(FIXED_HOLDER_KEEPS).await; // the holder's work goes on
                }
                let exit_ns = monotonic_ns();
                let lost_before = guard.is_lost();
                let released = guard.release().await;
                let lost = lost_before || released.as_ref().is_err_and(LockError::is_lease_lost);
                if !watchdog {
                    assert!(
                        lost,
                        "{key}: the fixed-lease holder's release after the fault: {released:?}"
                    );
                    if let Some(tell) = tell.take() {
                        let _ = tell.send(monotonic_ns());
                    }
                }
                Record::section(&key, fence, u32::from(watchdog), enter_ns, exit_ns, lost)
            }));
            // The prober takes the key as soon as the server lets it (once it forgot it).
            let (prober, fault_end) = (prober.clone(), fault_end.clone());
            self.probers
                .push(tokio::spawn(probe(prober, key, fault_end)));
        }
    }

    /// Waits for the workers and the holders, checks the promises, and returns the figures.
    /// `fault` is the fault's start and end on CLOCK_MONOTONIC; the holders' time until told is
    /// counted from the end, or from when their locks were seen gone (`gone`: watchdog, fixed)
    /// where the fault takes a while.
    pub async fn finish(
        self,
        (fault_start, fault_end): (u64, u64),
        gone: Option<[u64; 2]>,
    ) -> Findings {
        let outcomes: Vec<RunOutcome> = tokio::task::spawn_blocking(move || {
            self.workers
                .into_iter()
                .map(|w| w.finish(FINISH_GRACE))
                .collect()
        })
        .await
        .expect("the workers' reader");
        let mut records = records::read_dir(&self.dir).expect("read the workers' records");
        let bound = tokio::time::Instant::now() + FINISH_GRACE;
        for long in self.long {
            let record = tokio::time::timeout_at(bound, long)
                .await
                .expect("a holder kept across the fault hung")
                .expect("holder task");
            records.push(record);
        }
        let mut probed_at = Vec::new();
        for prober in self.probers {
            let (record, at) = tokio::time::timeout_at(bound, prober)
                .await
                .expect("a prober hung")
                .expect("prober task");
            probed_at.push(at);
            records.push(record);
        }
        let mut told_at = Vec::new();
        for told in self.told {
            told_at.push(told.await.expect("the holder says when it was told"));
        }
        let worker_errors = outcomes
            .iter()
            .flat_map(|o| o.errors().into_iter())
            .map(|(_, n)| n.as_u64().unwrap_or(0))
            .sum();

        let report = checker::check(&records);
        println!("  {report}");
        assert_eq!(
            report.total.unreported_overlaps, 0,
            "two holders inside one key at once and neither was told: {report}"
        );
        assert_eq!(
            report.total.unreported_fence_inversions, 0,
            "fences out of order among holders not told of a loss: {report}"
        );
        // Per key: no fence twice; everything after the fault above everything before it.
        let mut by_key: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
        for record in &records {
            by_key.entry(&record.key).or_default().push(record);
        }
        let mut fence_step = u64::MAX;
        let mut recovery = Duration::ZERO;
        for (key, sections) in &by_key {
            let distinct: BTreeSet<u64> = sections.iter().map(|r| r.fence).collect();
            assert_eq!(
                distinct.len(),
                sections.len(),
                "{key}: a fencing number was handed out twice"
            );
            let before = sections
                .iter()
                .filter(|r| r.enter_ns < fault_start)
                .map(|r| r.fence)
                .max();
            let after = sections
                .iter()
                .filter(|r| r.enter_ns > fault_end)
                .map(|r| r.fence)
                .min();
            if let (Some(before), Some(after)) = (before, after) {
                assert!(
                    after > before,
                    "{key}: fence {after} after the fault, {before} before it"
                );
                fence_step = fence_step.min(after - before);
            }
            let first_after = sections
                .iter()
                .filter(|r| r.enter_ns > fault_end)
                .map(|r| r.enter_ns)
                .min()
                .unwrap_or_else(|| panic!("{key}: nobody took it after the fault"));
            recovery = recovery.max(Duration::from_nanos(first_after - fault_end));
        }
        assert!(
            fence_step != u64::MAX,
            "no key had sections on both sides of the fault"
        );
        let gone = gone.unwrap_or([fault_end; 2]);
        let watchdog_told = Duration::from_nanos(told_at[0].saturating_sub(gone[0]));
        let fixed_told = Duration::from_nanos(told_at[1].saturating_sub(gone[1]));
        assert!(
            watchdog_told <= TOLD_BOUND,
            "the watchdog holder was told {watchdog_told:?} after the fault, bound {TOLD_BOUND:?}"
        );
        Findings {
            sections: report.total.sections,
            lost: report.total.lost,
            report,
            fence_step,
            watchdog_told,
            fixed_told,
            recovery,
            worker_errors,
        }
    }
}

/// Tries `key` with a wait of zero until it gets it, from the fault's end on; its section is
/// one yield. Returns its record and when it entered.
async fn probe(
    locker: Locker,
    key: String,
    mut fault_end: tokio::sync::watch::Receiver<Option<u64>>,
) -> (Record, u64) {
    let _ = fault_end.wait_for(Option::is_some).await;
    let deadline = Instant::now() + FINISH_GRACE;
    let guard = loop {
        match locker
            .acquire(&key, LockOptions::new().wait(Duration::ZERO))
            .await
        {
            Ok(guard) => break guard,
            Err(e) if e.is_not_acquired() || matches!(e, LockError::Backend { .. }) => {
                assert!(
                    Instant::now() < deadline,
                    "{key}: never free after the fault"
                );
                tokio::time::sleep(PROBE_PAUSE).await;
            }
            Err(e) => panic!("{key}: the prober: {e}"),
        }
    };
    let enter_ns = monotonic_ns();
    tokio::task::yield_now().await;
    let fence = guard.fencing_token();
    let lost = guard.is_lost();
    let exit_ns = monotonic_ns();
    let released = guard.release().await;
    let lost = lost || released.is_err_and(|e| e.is_lease_lost());
    (
        Record::section(&key, fence, 2, enter_ns, exit_ns, lost),
        enter_ns,
    )
}
