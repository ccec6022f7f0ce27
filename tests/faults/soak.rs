//! Fault 9, the soak: high contention for a while (`TORTURE_SOAK_SECS`, default 15 s, the CI
//! setting; run it for minutes or hours by hand). 4 torture_worker processes x 16 tasks on 2 keys,
//! two processes with a fixed lease and two with the watchdog, a non-atomic counter in each
//! section.
//!
//! Promised: no unreported overlap and tokens increasing (the checker), counters exact, no error,
//! no lock key left in Redis once the workers are gone (SCAN here, in the test: the library never
//! scans), and nothing that grows with time: each worker's resident memory at the end is within
//! 1.5 x its first sample + 4 MiB (allocator pools settle after the first second; a leak of one
//! allocation per section would be megabytes), its tokio task count never exceeds its first
//! sample by more than one watchdog per key plus 2, and the server's connection count stays at
//! 3 per worker during the run (the locker's 2: commands and the shared subscriber; plus the
//! worker's own counter connection) and drops to none after.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::baseline::counter_values;
use crate::report::FaultRow;
use crate::support::checker;
use crate::support::records;
use crate::support::redis_server::RedisServer;
use crate::support::worker::{Lease, RunOutcome, RunSpec, start_run_workers};

const DEFAULT_SECS: u64 = 15;
/// The first stats sample comes after a second, and connections are counted once a second.
const MIN_SECS: u64 = 3;
const FIXED_PROCESSES: usize = 2;
const WATCHDOG_PROCESSES: usize = 2;
const TASKS: u32 = 16;
const KEYS: [&str; 2] = ["soak-a", "soak-b"];
const FIXED_LEASE: Duration = Duration::from_secs(5);
const WATCHDOG_LEASE: Duration = Duration::from_secs(3);
const RENEWAL: Duration = Duration::from_secs(1);
const STATS_EVERY: Duration = Duration::from_secs(1);
/// How often the test counts the server's connections during the run.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Per worker: the locker's command and subscriber connections, and the counter's.
const CONNECTIONS_PER_WORKER: u64 = 3;
const RSS_GROWTH: f64 = 1.5;
const RSS_SLACK_KIB: u64 = 4096;
/// Beyond the first sample: a watchdog task per held key, and 2 for what comes and goes.
const TASK_SLACK: u64 = KEYS.len() as u64 + 2;
const FINISH_GRACE: Duration = Duration::from_secs(30);

/// One worker's resource figures: first stats sample, end, and the most tasks seen.
struct Resources {
    rss_start_kib: u64,
    rss_end_kib: u64,
    tasks_start: u64,
    tasks_max: u64,
}

/// The soak's length in seconds: `TORTURE_SOAK_SECS`, or the CI default.
pub fn seconds() -> u64 {
    let secs = match std::env::var("TORTURE_SOAK_SECS") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("TORTURE_SOAK_SECS={s:?}: expected whole seconds")),
        Err(_) => DEFAULT_SECS,
    };
    assert!(
        secs >= MIN_SECS,
        "TORTURE_SOAK_SECS={secs}: at least {MIN_SECS} s, so that resources are sampled during \
         the run"
    );
    secs
}

pub fn run() -> FaultRow {
    let secs = seconds();
    let duration = Duration::from_secs(secs);
    let server = RedisServer::start();
    let dir = tempfile::tempdir().expect("temp dir for the records");
    let mut inspect = redis::Client::open(server.url())
        .and_then(|c| c.get_connection())
        .expect("connect to the test redis-server");
    let idle = connections(&mut inspect);

    let specs: Vec<RunSpec> = (0..FIXED_PROCESSES + WATCHDOG_PROCESSES)
        .map(|i| {
            let lease = if i < FIXED_PROCESSES {
                Lease::Fixed(FIXED_LEASE)
            } else {
                Lease::Watchdog {
                    lease: WATCHDOG_LEASE,
                    renewal: RENEWAL,
                }
            };
            RunSpec::new(
                &server.url(),
                &dir.path().join(format!("worker-{i}.jsonl")),
                &KEYS,
                duration,
            )
            .tasks(TASKS)
            .lease(lease)
            .counter()
            .stats_every(STATS_EVERY)
        })
        .collect();
    let workers = start_run_workers(&specs);
    let started = Instant::now();
    // The soak itself: sample the server's connections while the workers run.
    let mut samples = Vec::new();
    while started.elapsed() + 2 * SAMPLE_EVERY < duration {
        std::thread::sleep(SAMPLE_EVERY);
        samples.push(connections(&mut inspect) - idle);
    }
    let outcomes: Vec<RunOutcome> = workers
        .into_iter()
        .map(|worker| worker.finish(FINISH_GRACE))
        .collect();
    let after = connections(&mut inspect) - idle;

    let records = records::read_dir(dir.path()).expect("read the records");
    let report = checker::check(&records);
    let sections = outcomes.iter().map(RunOutcome::sections).sum::<u64>();
    let counters = counter_values(&server, &KEYS);
    let leaked = lock_keys(&mut inspect);
    let resources: Vec<Resources> = outcomes.iter().map(resources).collect();
    let expected_connections = CONNECTIONS_PER_WORKER * specs.len() as u64;

    println!(
        "  {sections} sections in {secs} s ({:.0}/s): {report}",
        sections as f64 / secs as f64
    );
    for (key, value) in KEYS.iter().zip(&counters) {
        let recorded = report.per_key.get(*key).map_or(0, |c| c.sections);
        println!("  key {key:?}: {recorded} sections, counter {value}");
    }
    for (outcome, r) in outcomes.iter().zip(&resources) {
        println!(
            "  worker {}: {} sections, RSS {} -> {} KiB, tokio tasks {} at the first sample, at \
             most {}",
            outcome.pid,
            outcome.sections(),
            r.rss_start_kib,
            r.rss_end_kib,
            r.tasks_start,
            r.tasks_max
        );
    }
    let (fewest, most) = (
        samples.iter().copied().min().unwrap_or(0),
        samples.iter().copied().max().unwrap_or(0),
    );
    println!(
        "  connections during the run: {fewest} to {most} over {} samples (expected \
         {expected_connections}), after: {after}; lock keys left: {leaked:?}",
        samples.len()
    );

    assert_eq!(
        records.len() as u64,
        sections,
        "the workers reported {sections} sections but wrote {} records",
        records.len()
    );
    for outcome in &outcomes {
        assert!(
            outcome.errors().is_empty(),
            "worker {} had errors: {}",
            outcome.pid,
            outcome.summary
        );
    }
    assert!(
        report.is_sound(),
        "two holders inside one key at once without being told, or tokens out of order: {report}"
    );
    for (key, value) in KEYS.iter().zip(&counters) {
        let counts = report.per_key.get(*key).copied().unwrap_or_default();
        // A lost lease excuses an interleaving, so the counter is only exact without one.
        if counts.lost == 0 {
            assert_eq!(
                *value as u64, counts.sections,
                "key {key:?}: {} sections each incremented the counter once, but it reads {value}",
                counts.sections
            );
        }
    }
    assert!(
        leaked.is_empty(),
        "lock keys left in Redis after every worker released and exited: {leaked:?}"
    );
    for (outcome, r) in outcomes.iter().zip(&resources) {
        let bound = (r.rss_start_kib as f64 * RSS_GROWTH) as u64 + RSS_SLACK_KIB;
        assert!(
            r.rss_end_kib <= bound,
            "worker {}: resident memory grew from {} to {} KiB (bound {bound} KiB: {RSS_GROWTH} x \
             the first sample + {RSS_SLACK_KIB} KiB)",
            outcome.pid,
            r.rss_start_kib,
            r.rss_end_kib
        );
        assert!(
            r.tasks_max <= r.tasks_start + TASK_SLACK,
            "worker {}: tokio tasks grew from {} to {} (bound + {TASK_SLACK}: a watchdog per key \
             and 2)",
            outcome.pid,
            r.tasks_start,
            r.tasks_max
        );
    }
    assert!(
        most <= expected_connections,
        "the workers held {most} connections at once; {CONNECTIONS_PER_WORKER} per worker \
         expected: {samples:?}"
    );
    assert_eq!(after, 0, "connections left open after every worker exited");

    let mib = |kib: u64| kib as f64 / 1024.0;
    let rss_start = resources.iter().map(|r| r.rss_start_kib).max().unwrap_or(0);
    let rss_end = resources.iter().map(|r| r.rss_end_kib).max().unwrap_or(0);
    FaultRow {
        fault: "Soak",
        injected: format!(
            "{secs} s: {} processes ({FIXED_PROCESSES} fixed lease {} s, {WATCHDOG_PROCESSES} \
             watchdog {} s / {} s) x {TASKS} tasks on {} keys, non-atomic counter",
            FIXED_PROCESSES + WATCHDOG_PROCESSES,
            FIXED_LEASE.as_secs(),
            WATCHDOG_LEASE.as_secs(),
            RENEWAL.as_secs(),
            KEYS.len()
        ),
        sections,
        overlaps: report.total.unreported_overlaps,
        lost: report.total.lost,
        lost_reported: report.total.lost,
        recovery: None,
        notes: format!(
            "counters exact; largest worker RSS {:.1} MiB at 1 s, {:.1} MiB at the end; tokio \
             tasks flat; {most} connections during (3 per worker), 0 after; no lock key left",
            mib(rss_start),
            mib(rss_end)
        ),
    }
}

fn resources(outcome: &RunOutcome) -> Resources {
    let field = |v: &Value, name: &str| v[name].as_u64().unwrap_or(0);
    let first = outcome.stats.first().unwrap_or_else(|| {
        panic!(
            "worker {} printed no stats line in its run: {}",
            outcome.pid, outcome.summary
        )
    });
    Resources {
        rss_start_kib: field(first, "rss_kib"),
        rss_end_kib: field(&outcome.summary, "rss_kib"),
        tasks_start: field(first, "alive_tasks"),
        tasks_max: outcome
            .stats
            .iter()
            .map(|s| field(s, "alive_tasks"))
            .max()
            .unwrap_or(0),
    }
}

/// Clients connected to the server (CLIENT LIST, one line each), this connection included.
fn connections(conn: &mut redis::Connection) -> u64 {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(conn)
        .expect("CLIENT LIST");
    list.lines().filter(|l| !l.trim().is_empty()).count() as u64
}

/// Lock keys still in Redis (a lock is its only key).
fn lock_keys(conn: &mut redis::Connection) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg(format!("{}*", distlock::DEFAULT_KEY_PREFIX))
        .arg("COUNT")
        .arg(1000)
        .clone()
        .iter::<String>(conn)
        .expect("SCAN")
        .collect::<Result<_, _>>()
        .expect("SCAN");
    keys.sort();
    keys
}
