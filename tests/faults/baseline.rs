//! Fault 1, the baseline: no fault at all, only contention. 4 torture_worker processes x 16
//! tasks race for 3 keys for 20 s with a fixed 5 s lease; inside each critical section a
//! deliberately non-atomic read-modify-write of a per-key counter in Redis (GET, yield, SET + 1).
//!
//! Promised: no two sections of one key ever overlap (compared on CLOCK_MONOTONIC across the
//! processes), no lease runs out (a section is two round trips; the lease is 5 s), every counter
//! ends equal to the number of sections of its key, and fencing tokens strictly increase in the
//! order the holders entered.
//!
//! The control runs the same shape for 2 s without the lock and must show overlaps and lost
//! increments: proof that the checker and the counters would see a broken lock.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::report::FaultRow;
use crate::support::checker::{self, CheckReport};
use crate::support::records;
use crate::support::redis_server::RedisServer;
use crate::support::worker::{Lease, RunOutcome, RunSpec, start_run_workers};

const PROCESSES: usize = 4;
const TASKS: u32 = 16;
const KEYS: [&str; 3] = ["a", "b", "c"];
/// The control's keys: its own counters, so the locked run's stay exact.
const CONTROL_KEYS: [&str; 3] = ["control-a", "control-b", "control-c"];
const DURATION: Duration = Duration::from_secs(20);
const CONTROL_DURATION: Duration = Duration::from_secs(2);
/// Thousands of times a section's two round trips, even on a loaded debug build.
const LEASE: Duration = Duration::from_secs(5);
/// After the deadline, tasks already waiting still get their turn, then the process reports:
/// well under a second here; the bound only keeps a hung worker from hanging the suite.
const FINISH_GRACE: Duration = Duration::from_secs(30);

/// One run of the processes: what they printed, what they recorded, and the counters.
struct Run {
    outcomes: Vec<RunOutcome>,
    report: CheckReport,
    sections: u64,
    /// Per key: (sections recorded, final counter value).
    counters: BTreeMap<String, (u64, i64)>,
}

impl Run {
    fn increments(&self) -> i64 {
        self.counters.values().map(|(_, value)| value).sum()
    }
}

pub fn run() -> FaultRow {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().expect("temp dir for the records");

    let locked = run_processes(&server, &dir.path().join("locked"), &KEYS, DURATION, false);
    let control = run_processes(
        &server,
        &dir.path().join("control"),
        &CONTROL_KEYS,
        CONTROL_DURATION,
        true,
    );
    print_run("with the lock", &locked, DURATION);
    print_run("control, without the lock", &control, CONTROL_DURATION);

    for outcome in &locked.outcomes {
        assert!(
            outcome.errors().is_empty(),
            "worker {} had errors under plain contention: {}",
            outcome.pid,
            outcome.summary
        );
    }
    let report = &locked.report;
    assert_eq!(
        report.total.unreported_overlaps, 0,
        "two holders were inside one key at once and neither was told: {report}"
    );
    assert_eq!(
        (report.total.overlaps, report.total.lost),
        (0, 0),
        "a 5 s lease ran out under plain contention (sections take milliseconds): {report}"
    );
    assert_eq!(
        report.total.fence_inversions, 0,
        "fencing tokens did not strictly increase in the order the holders entered: {report}"
    );
    for (key, (sections, value)) in &locked.counters {
        assert_eq!(
            *value as u64, *sections,
            "key {key:?}: {sections} sections each incremented the counter once, but it reads \
             {value}: an increment was lost, so two sections interleaved"
        );
    }

    // The control must fail, or this fault could not see a broken lock.
    assert!(
        control.report.total.unreported_overlaps > 0,
        "the control run without the lock showed no overlap: the checker (or the load) cannot \
         see one: {}",
        control.report
    );
    assert!(
        (control.increments() as u64) < control.sections,
        "the control run without the lock lost no increment ({} sections, counters {:?}): the \
         counter cannot show a broken lock",
        control.sections,
        control.counters
    );

    FaultRow {
        fault: "Baseline (contention only)",
        injected: format!(
            "{PROCESSES} processes x {TASKS} tasks x {} keys, {} s, fixed lease {} s, non-atomic \
             counter in each section",
            KEYS.len(),
            DURATION.as_secs(),
            LEASE.as_secs()
        ),
        sections: locked.sections,
        overlaps: report.total.unreported_overlaps,
        lost: report.total.lost,
        lost_reported: report.total.lost,
        recovery: None,
        notes: format!(
            "counters exact ({} increments for {} sections), tokens strictly increasing; control \
             without the lock ({} s): {} overlapping pairs, {} of {} increments lost",
            locked.increments(),
            locked.sections,
            CONTROL_DURATION.as_secs(),
            control.report.total.overlaps,
            control.sections - control.increments() as u64,
            control.sections
        ),
    }
}

fn run_processes(
    server: &RedisServer,
    dir: &Path,
    keys: &[&str],
    duration: Duration,
    control: bool,
) -> Run {
    std::fs::create_dir(dir).expect("records dir");
    let specs: Vec<RunSpec> = (0..PROCESSES)
        .map(|i| {
            let spec = RunSpec::new(
                &server.url(),
                &dir.join(format!("worker-{i}.jsonl")),
                keys,
                duration,
            )
            .tasks(TASKS)
            .lease(Lease::Fixed(LEASE))
            .counter();
            if control { spec.no_lock() } else { spec }
        })
        .collect();
    let outcomes: Vec<RunOutcome> = start_run_workers(&specs)
        .into_iter()
        .map(|worker| worker.finish(FINISH_GRACE))
        .collect();
    let records = records::read_dir(dir).expect("read the records");
    let sections = outcomes.iter().map(RunOutcome::sections).sum::<u64>();
    assert_eq!(
        records.len() as u64,
        sections,
        "the workers reported {sections} sections but wrote {} records",
        records.len()
    );
    let report = checker::check(&records);
    let values = counter_values(server, keys);
    let counters = keys
        .iter()
        .zip(values)
        .map(|(key, value)| {
            let recorded = report.per_key.get(*key).map_or(0, |c| c.sections);
            (key.to_string(), (recorded, value))
        })
        .collect();
    Run {
        outcomes,
        report,
        sections,
        counters,
    }
}

/// The workers' `counter:<key>` values (0 when never written).
pub fn counter_values(server: &RedisServer, keys: &[&str]) -> Vec<i64> {
    let mut conn = redis::Client::open(server.url())
        .and_then(|c| c.get_connection())
        .expect("connect to the test redis-server");
    keys.iter()
        .map(|key| {
            redis::cmd("GET")
                .arg(format!("counter:{key}"))
                .query::<Option<i64>>(&mut conn)
                .expect("GET counter")
                .unwrap_or(0)
        })
        .collect()
}

fn print_run(what: &str, run: &Run, duration: Duration) {
    println!(
        "  {what}: {} sections in {} s ({:.0}/s), {} overlapping pairs ({} unreported), {} lost, \
         {} fence inversions",
        run.sections,
        duration.as_secs(),
        run.sections as f64 / duration.as_secs_f64(),
        run.report.total.overlaps,
        run.report.total.unreported_overlaps,
        run.report.total.lost,
        run.report.total.fence_inversions
    );
    for (key, (sections, value)) in &run.counters {
        println!("    key {key:?}: {sections} sections, counter {value}");
    }
    if let Some(example) = run.report.unreported_overlap_examples.first() {
        println!("    e.g. {example}");
    }
}
