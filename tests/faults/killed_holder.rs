//! Fault 2: the holder is killed (`kill -9`) while a waiter in another process waits for its lock.
//!
//! A `hold` torture_worker takes the lock; the waiter (this process, its own Locker) starts
//! waiting and is subscribed to the lock's release channel; the holder dies without releasing, so
//! no release message ever comes. The waiter must get the lock when the dead holder's lease runs
//! out on the server: never before, and without a long delay after.
//!
//! - Fixed lease L: not before the holder's `sent_ns + L` (the earliest the server can expire
//!   it), and within the holder's `enter_ns + L` + a margin.
//! - Watchdog (lease W renewed every R; killed half an interval after its second renewal): not before the expiry the
//!   server reports (PTTL read right after the kill), nor before `kill - R + W` (the last renewal
//!   was at most R before the kill, give or take a late timer), and within `kill + W` + a margin.
//!
//! Recovery: from the lock's expiry (the server's PTTL read right after the kill, on
//! CLOCK_MONOTONIC) to the waiter's acquire returning.

use std::path::Path;
use std::time::Duration;

use distlock::{DEFAULT_KEY_PREFIX, LockOptions, Locker};
use tokio::runtime::Runtime;

use crate::report::FaultRow;
use crate::support::checker;
use crate::support::records::{Record, monotonic_ns};
use crate::support::redis_server::{RedisServer, commandstat_calls};
use crate::support::worker::{HoldSpec, HoldWorker, Lease, SETUP_TIMEOUT};

const FIXED_LEASE: Duration = Duration::from_secs(3);
const WATCHDOG_LEASE: Duration = Duration::from_secs(3);
const RENEWAL: Duration = Duration::from_secs(1);
/// Renewals the watchdog holder makes before it is killed.
const RENEWALS_BEFORE_KILL: u64 = 2;
/// How late the watchdog's last renewal may be before it counts against `kill - R + W`: one
/// timer wake-up and a round trip, on a loaded 2-core machine running a debug build.
const LATE_RENEWAL: Duration = Duration::from_millis(300);
/// From the lock's expiry to the waiter's acquire: the waiter sleeps until the PTTL it was given
/// (+1 ms), then one round trip. Measured in milliseconds; the bound leaves room for a loaded box.
const MARGIN: Duration = Duration::from_secs(1);
/// The waiter's wait: longer than any lease here.
const WAIT: Duration = Duration::from_secs(30);
/// Redis reports PTTL in whole milliseconds.
const PTTL_RESOLUTION_NS: u64 = 1_000_000;

/// What one variant measured (CLOCK_MONOTONIC ns).
struct Outcome {
    holder: Record,
    waiter: Record,
    recovery: Duration,
}

pub fn run() -> FaultRow {
    let rt = crate::runtime();
    let server = RedisServer::start();
    let dir = tempfile::tempdir().expect("temp dir for the records");

    let fixed = killed_while_waited_for(&rt, &server, dir.path(), Lease::Fixed(FIXED_LEASE));
    let watchdog = killed_while_waited_for(
        &rt,
        &server,
        dir.path(),
        Lease::Watchdog {
            lease: WATCHDOG_LEASE,
            renewal: RENEWAL,
        },
    );

    let records = [
        fixed.holder.clone(),
        fixed.waiter.clone(),
        watchdog.holder.clone(),
        watchdog.waiter.clone(),
    ];
    let report = checker::check(&records);
    assert!(
        report.is_sound() && report.total.overlaps == 0,
        "the waiter was inside while the killed holder still held the lock: {report}"
    );
    let worst = fixed.recovery.max(watchdog.recovery);
    FaultRow {
        fault: "Killed holder (kill -9)",
        injected: format!(
            "holder process SIGKILLed while a waiter waits: fixed lease {} s; watchdog lease {} s \
             renewed every {} s, killed between its renewals {RENEWALS_BEFORE_KILL} and 3",
            FIXED_LEASE.as_secs(),
            WATCHDOG_LEASE.as_secs(),
            RENEWAL.as_secs()
        ),
        sections: records.len() as u64,
        overlaps: report.total.unreported_overlaps,
        lost: 0,
        lost_reported: 0,
        recovery: Some(worst),
        notes: format!(
            "the waiter got the lock {:.1} ms (fixed) and {:.1} ms (watchdog) after the dead \
             holder's lease expired on the server, never before; no release message was needed",
            fixed.recovery.as_secs_f64() * 1e3,
            watchdog.recovery.as_secs_f64() * 1e3
        ),
    }
}

fn killed_while_waited_for(
    rt: &Runtime,
    server: &RedisServer,
    dir: &Path,
    lease: Lease,
) -> Outcome {
    let key = format!("killed:{}", lease.name().replace(' ', "-"));
    let lock_name = format!("{DEFAULT_KEY_PREFIX}{{{key}}}");
    let mut inspect = redis::Client::open(server.url())
        .and_then(|c| c.get_connection())
        .expect("connect to the test redis-server");
    let locker = rt
        .block_on(Locker::connect(&server.url()))
        .expect("the waiter's locker connects");
    let renewals_before = command_calls(&mut inspect, "pexpire");

    let mut holder = HoldWorker::spawn(&HoldSpec::new(
        &server.url(),
        &key,
        &dir.join(format!("{key}.jsonl")),
        lease,
    ));
    let acquired = holder.acquired(SETUP_TIMEOUT);

    // The waiter, on its own locker in this process, waits for the whole story below.
    let waiter = rt.spawn({
        let (locker, key) = (locker.clone(), key.clone());
        async move {
            let guard = locker
                .acquire(&key, LockOptions::new().wait(WAIT).lease(WAIT))
                .await;
            (guard, monotonic_ns())
        }
    });
    // Waiting means subscribed to the release channel: a release would wake it from now on.
    wait_until(
        || {
            redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(format!("{lock_name}:released"))
                .query::<(String, u64)>(&mut inspect)
                .is_ok_and(|(_, n)| n >= 1)
        },
        "the waiter to subscribe to the lock's release channel",
    );
    if let Lease::Watchdog { .. } = lease {
        wait_until(
            || command_calls(&mut inspect, "pexpire") - renewals_before >= RENEWALS_BEFORE_KILL,
            "the watchdog's renewals",
        );
        // Half an interval more: the kill falls between two renewals, so the lock outlives
        // its holder by less than a full lease and `kill - R + W` is a bound that can bite.
        std::thread::sleep(RENEWAL / 2);
    }

    let kill_ns = monotonic_ns();
    holder.kill();
    let pttl_sent_ns = monotonic_ns();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&lock_name)
        .query(&mut inspect)
        .expect("PTTL");
    assert!(
        pttl > 0,
        "{}: right after the kill the dead holder's lock should still be there, PTTL {pttl}",
        lease.name()
    );
    let expiry_ns = pttl_sent_ns + pttl as u64 * 1_000_000;

    let (guard, waiter_enter_ns) = rt.block_on(waiter).expect("waiter task");
    let guard = guard.unwrap_or_else(|e| {
        panic!(
            "{}: the waiter did not get the dead holder's lock: {e}",
            lease.name()
        )
    });
    let waiter_fence = guard.fencing_token();
    let waiter_exit_ns = monotonic_ns();
    let lost = guard.is_lost();
    rt.block_on(guard.release())
        .expect("the waiter releases its lock");

    let ms = |ns: i128| ns as f64 / 1e6;
    let after_kill = waiter_enter_ns as i128 - kill_ns as i128;
    let recovery_ns = waiter_enter_ns as i128 - expiry_ns as i128;
    println!(
        "  {}: holder acquired (fence {}), killed {:.1} ms later; lock expired on the server \
         {:.1} ms after the kill; waiter acquired (fence {waiter_fence}) {:.1} ms after the \
         kill, {:.2} ms after the expiry",
        lease.name(),
        acquired.fence,
        ms(kill_ns as i128 - acquired.enter_ns as i128),
        ms(expiry_ns as i128 - kill_ns as i128),
        ms(after_kill),
        ms(recovery_ns)
    );

    // Never before the lock expired on the server.
    assert!(
        waiter_enter_ns + PTTL_RESOLUTION_NS >= expiry_ns,
        "{}: the waiter got the lock {:.1} ms before the dead holder's lease expired on the server",
        lease.name(),
        ms(expiry_ns as i128 - waiter_enter_ns as i128)
    );
    let (earliest, latest) = match lease {
        Lease::Fixed(_) => (
            acquired.sent_ns + FIXED_LEASE.as_nanos() as u64,
            acquired.enter_ns + (FIXED_LEASE + MARGIN).as_nanos() as u64,
        ),
        Lease::Watchdog { .. } => (
            kill_ns + (WATCHDOG_LEASE - RENEWAL - LATE_RENEWAL).as_nanos() as u64,
            kill_ns + (WATCHDOG_LEASE + MARGIN).as_nanos() as u64,
        ),
    };
    assert!(
        waiter_enter_ns >= earliest,
        "{}: the waiter got the lock {:.1} ms before the earliest moment the dead holder's lease \
         could end",
        lease.name(),
        ms(earliest as i128 - waiter_enter_ns as i128)
    );
    assert!(
        waiter_enter_ns <= latest,
        "{}: the waiter got the lock {:.1} ms after the dead holder's lease ended (bound {MARGIN:?})",
        lease.name(),
        ms(recovery_ns)
    );
    assert!(
        waiter_fence > acquired.fence,
        "{}: the waiter's token {waiter_fence} is not above the dead holder's {}",
        lease.name(),
        acquired.fence
    );
    assert!(!lost, "{}: the waiter's own lease was lost", lease.name());

    Outcome {
        // The dead holder's section, as far as anyone can tell: from its acquire to its death.
        holder: Record {
            key: key.clone(),
            fence: acquired.fence,
            pid: acquired.pid,
            task: 0,
            enter_ns: acquired.enter_ns,
            exit_ns: kill_ns,
            lost: false,
        },
        waiter: Record::section(&key, waiter_fence, 0, waiter_enter_ns, waiter_exit_ns, lost),
        recovery: Duration::from_nanos(recovery_ns.max(0) as u64),
    }
}

/// Polls `condition` every millisecond until it holds, or panics after the setup timeout.
pub fn wait_until(mut condition: impl FnMut() -> bool, what: &str) {
    let started = std::time::Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < SETUP_TIMEOUT,
            "gave up waiting for {what} after {SETUP_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// How many times `command` ran on the server (commands run by scripts are counted under their
/// own names, so `pexpire` counts the watchdog's renewals).
pub fn command_calls(conn: &mut redis::Connection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(conn)
        .expect("INFO commandstats");
    commandstat_calls(&info, command)
}
