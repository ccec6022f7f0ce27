//! Fault 3: the holder is paused (`SIGSTOP`, as a long GC pause or a frozen VM would) past its
//! lease, and resumes while a second holder has the lock.
//!
//! A `hold` torture_worker takes the lock and does a fenced write (accepted). The test stops it;
//! a second holder (this process, its own Locker) waits and gets the lock when the paused one's
//! lease runs out on the server, and does its own fenced write (accepted, higher token). Then the
//! paused holder is told to write and release, and resumed. Nothing can stop a resumed process
//! from acting, so what is promised is what makes its action harmless and known:
//!
//! - the second holder gets the lock never before the paused one's lease ended on the server;
//! - the paused holder's fenced write is REJECTED (its token is below the second holder's);
//! - its release reports `LeaseLost` and does not delete the second holder's lock;
//! - the store's accepted writes have strictly increasing tokens;
//! - the records show the two sections overlapping, with the paused one reported lost, so no
//!   unreported overlap.
//!
//! Run with a fixed lease and with the watchdog (which cannot renew while the process is stopped).

use std::path::Path;
use std::time::Duration;

use distlock::{DEFAULT_KEY_PREFIX, LockOptions, Locker};
use serde_json::Value;
use tokio::runtime::Runtime;

use crate::killed_holder::{command_calls, wait_until};
use crate::report::FaultRow;
use crate::support::checker;
use crate::support::records::{self, Record, RecordWriter, monotonic_ns};
use crate::support::redis_server::RedisServer;
use crate::support::worker::{HoldSpec, HoldWorker, Lease, SETUP_TIMEOUT};

const FIXED_LEASE: Duration = Duration::from_secs(2);
const WATCHDOG_LEASE: Duration = Duration::from_secs(2);
const RENEWAL: Duration = Duration::from_millis(500);
/// The second holder's lease: it keeps the lock through the paused one's resumption.
const SECOND_LEASE: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(30);
/// From the paused holder's expiry to the second holder's acquire (measured: milliseconds),
/// generous for a loaded 2-core machine running a debug build.
const MARGIN: Duration = Duration::from_secs(1);
/// How long the resumed holder may take to answer its two commands.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Redis reports PTTL in whole milliseconds.
const PTTL_RESOLUTION_NS: u64 = 1_000_000;

struct Outcome {
    sections: u64,
    overlaps: u64,
    /// The second holder's acquire after the paused holder's expiry.
    recovery: Duration,
    /// From SIGCONT to the resumed holder's `released` line saying LeaseLost.
    loss_reported_after: Duration,
    /// What the resumed holder's `is_lost()` said before its write.
    lost_before_write: bool,
}

pub fn run() -> FaultRow {
    let rt = crate::runtime();
    let server = RedisServer::start();
    let dir = tempfile::tempdir().expect("temp dir for the records");

    let fixed = paused_past_its_lease(&rt, &server, dir.path(), Lease::Fixed(FIXED_LEASE));
    let watchdog = paused_past_its_lease(
        &rt,
        &server,
        dir.path(),
        Lease::Watchdog {
            lease: WATCHDOG_LEASE,
            renewal: RENEWAL,
        },
    );

    let is_lost = |o: &Outcome| if o.lost_before_write { "true" } else { "false" };
    FaultRow {
        fault: "Paused holder (SIGSTOP past the lease)",
        injected: format!(
            "holder process stopped until a second holder had the lock, then resumed to write and \
             release: fixed lease {} s; watchdog lease {} s renewed every {} ms",
            FIXED_LEASE.as_secs(),
            WATCHDOG_LEASE.as_secs(),
            RENEWAL.as_millis()
        ),
        sections: fixed.sections + watchdog.sections,
        overlaps: fixed.overlaps + watchdog.overlaps,
        lost: 2,
        lost_reported: 2,
        recovery: Some(fixed.recovery.max(watchdog.recovery)),
        notes: format!(
            "the resumed holder's fenced write was refused and its release said LeaseLost ({:.1} / \
             {:.1} ms after SIGCONT; is_lost() before the write: {} / {}); the second holder got \
             the lock {:.1} / {:.1} ms after the expiry (fixed / watchdog)",
            fixed.loss_reported_after.as_secs_f64() * 1e3,
            watchdog.loss_reported_after.as_secs_f64() * 1e3,
            is_lost(&fixed),
            is_lost(&watchdog),
            fixed.recovery.as_secs_f64() * 1e3,
            watchdog.recovery.as_secs_f64() * 1e3
        ),
    }
}

fn paused_past_its_lease(rt: &Runtime, server: &RedisServer, dir: &Path, lease: Lease) -> Outcome {
    let name = lease.name();
    let slug = name.replace(' ', "-");
    let key = format!("paused:{slug}");
    let lock_name = format!("{DEFAULT_KEY_PREFIX}{{{key}}}");
    let store = format!("store:{slug}");
    let records_dir = dir.join(&slug);
    std::fs::create_dir(&records_dir).expect("records dir");
    let mut inspect = redis::Client::open(server.url())
        .and_then(|c| c.get_connection())
        .expect("connect to the test redis-server");
    let locker = rt
        .block_on(Locker::connect(&server.url()))
        .expect("the second holder's locker connects");
    let renewals_before = command_calls(&mut inspect, "pexpire");

    let mut paused = HoldWorker::spawn(&HoldSpec::new(
        &server.url(),
        &key,
        &records_dir.join("paused.jsonl"),
        lease,
    ));
    let first = paused.acquired(SETUP_TIMEOUT);
    paused.send(&format!("write {store}"));
    let write = paused.expect("write", ANSWER_TIMEOUT);
    assert!(
        flag(&write, "accepted") && !flag(&write, "lost_before"),
        "{name}: the holder's first fenced write, inside its lease, should be accepted: {write}"
    );
    if let Lease::Watchdog { .. } = lease {
        wait_until(
            || command_calls(&mut inspect, "pexpire") > renewals_before,
            "the watchdog's first renewal",
        );
    }

    paused.stop();
    let stopped_ns = monotonic_ns();
    let pttl_sent_ns = monotonic_ns();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&lock_name)
        .query(&mut inspect)
        .expect("PTTL");
    assert!(
        pttl > 0,
        "{name}: the stopped holder's lock is gone already (PTTL {pttl})"
    );
    let expiry_ns = pttl_sent_ns + pttl as u64 * 1_000_000;

    // The second holder waits for the lease to run out: the pause is the fault.
    let second = rt
        .block_on(locker.acquire(&key, LockOptions::new().wait(WAIT).lease(SECOND_LEASE)))
        .unwrap_or_else(|e| panic!("{name}: the second holder did not get the lock: {e}"));
    let second_enter_ns = monotonic_ns();
    let second_fence = second.fencing_token();
    let accepted: i64 = redis::Script::new(records::FENCED_WRITE_SCRIPT)
        .key(&store)
        .key(records::fenced_store_log(&store))
        .arg(second_fence)
        .arg(std::process::id())
        .invoke(&mut inspect)
        .expect("the second holder's fenced write");

    // The paused holder wakes up with two commands already waiting for it.
    paused.send(&format!("write {store}"));
    paused.send("release");
    let cont_ns = monotonic_ns();
    paused.cont();
    let late_write = paused.expect("write", ANSWER_TIMEOUT);
    let released = paused.expect("released", ANSWER_TIMEOUT);
    let reported_ns = monotonic_ns();
    paused.wait_exit(ANSWER_TIMEOUT);

    let second_exit_ns = monotonic_ns();
    let second_lost = second.is_lost();
    let second_released = rt.block_on(second.release());

    let ms = |ns: i128| ns as f64 / 1e6;
    let recovery_ns = second_enter_ns as i128 - expiry_ns as i128;
    println!(
        "  {name}: holder (fence {}) stopped {:.1} ms after its acquire, its lease ended on the \
         server {:.1} ms later; second holder (fence {second_fence}) acquired {:.2} ms after \
         that; resumed holder: write accepted {}, release lease_lost {}, {:.1} ms after SIGCONT",
        first.fence,
        ms(stopped_ns as i128 - first.enter_ns as i128),
        ms(expiry_ns as i128 - stopped_ns as i128),
        ms(recovery_ns),
        flag(&late_write, "accepted"),
        flag(&released, "lease_lost"),
        ms(reported_ns as i128 - cont_ns as i128)
    );

    assert!(
        second_enter_ns + PTTL_RESOLUTION_NS >= expiry_ns,
        "{name}: the second holder got the lock {:.1} ms before the paused holder's lease ended \
         on the server",
        ms(-recovery_ns)
    );
    if let Lease::Fixed(_) = lease {
        assert!(
            second_enter_ns >= first.sent_ns + FIXED_LEASE.as_nanos() as u64,
            "{name}: the second holder got the lock before the earliest end of the paused \
             holder's fixed lease"
        );
    }
    assert!(
        recovery_ns <= MARGIN.as_nanos() as i128,
        "{name}: the second holder got the lock {:.1} ms after the lease ended (bound \
         {MARGIN:?})",
        ms(recovery_ns)
    );
    assert!(
        second_fence > first.fence,
        "{name}: the second holder's token {second_fence} is not above the paused one's {}",
        first.fence
    );
    assert_eq!(
        accepted, 1,
        "{name}: the second holder's fenced write was refused"
    );
    assert!(
        !flag(&late_write, "accepted"),
        "{name}: the store accepted the resumed holder's stale write: {late_write}"
    );
    assert!(
        !flag(&released, "ok") && flag(&released, "lease_lost"),
        "{name}: the resumed holder's release should report LeaseLost: {released}"
    );
    assert!(
        second_released.is_ok() && !second_lost,
        "{name}: the paused holder's release must not have touched the second holder's lock: \
         {second_released:?}, lost {second_lost}"
    );
    // Both kinds of lease: the guard compares its lease's end (fixed, or moved by the last
    // renewal) itself, so it knows at its first look after the resume, before any task has run.
    assert!(
        flag(&late_write, "lost_before"),
        "{name}: after the pause, is_lost() should already be true: {late_write}"
    );

    let log: Vec<String> = redis::cmd("LRANGE")
        .arg(records::fenced_store_log(&store))
        .arg(0)
        .arg(-1)
        .query(&mut inspect)
        .expect("LRANGE the accepted writes");
    let tokens: Vec<u64> = log
        .iter()
        .map(|entry| {
            entry
                .split(':')
                .next()
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("{name}: malformed store entry {entry:?}"))
        })
        .collect();
    assert_eq!(
        tokens,
        [first.fence, second_fence],
        "{name}: the store should hold the paused holder's write before the pause and the second \
         holder's, in token order, and nothing else: {log:?}"
    );

    RecordWriter::create(&records_dir.join("second.jsonl"))
        .and_then(|mut w| {
            w.write(&Record {
                key: key.clone(),
                fence: second_fence,
                pid: std::process::id(),
                task: 0,
                enter_ns: second_enter_ns,
                exit_ns: second_exit_ns,
                lost: second_lost,
            })
        })
        .expect("write the second holder's record");
    let records = records::read_dir(&records_dir).expect("read the records");
    let report = checker::check(&records);
    assert_eq!(
        (
            report.total.sections,
            report.total.overlaps,
            report.total.lost
        ),
        (2, 1, 1),
        "{name}: expected the two sections to overlap, the paused one reported lost: {report}"
    );
    assert!(
        report.is_sound(),
        "{name}: an overlap nobody was told about: {report}"
    );

    Outcome {
        sections: report.total.sections,
        overlaps: report.total.unreported_overlaps,
        recovery: Duration::from_nanos(recovery_ns.max(0) as u64),
        loss_reported_after: Duration::from_nanos(reported_ns.saturating_sub(cont_ns)),
        lost_before_write: flag(&late_write, "lost_before"),
    }
}

fn flag(line: &Value, name: &str) -> bool {
    line[name].as_bool().unwrap_or(false)
}
