//! A process that takes a lock and exits right after (a cron job) leaves the lock free once it has
//! gone, if it calls `Locker::close` before returning from `main`. The control shows why that is
//! needed: without it, the lock outlives the process until its lease runs out.
//!
//! Runs `examples/exit_after_lock.rs` against a private redis-server. A plain `cargo test` builds
//! it; `cargo test --test shutdown` alone does not: run `cargo build --example exit_after_lock`
//! first, or an older build of it is what runs.

mod support;

use std::time::Duration;

use support::redis_server::RedisServer;
use support::worker::example;

/// Runs per way of holding the lock (the bar: 20 of 20).
const RUNS: usize = 20;
/// How long one run may take: start a debug binary, connect twice, one lock, one release, on a
/// loaded 2-core machine; it takes well under a second when idle.
const PROCESS_BOUND: Duration = Duration::from_secs(60);
/// The four ways: watchdog or fixed lease, guard dropped before `close` or alive at it.
const WAYS: [(&str, &str); 4] = [
    ("watchdog", "drop"),
    ("watchdog", "keep"),
    ("lease", "drop"),
    ("lease", "keep"),
];

/// Runs `exit_after_lock` once and returns whether `key` is still locked the moment it has exited.
async fn held_after_exit(server: &RedisServer, key: &str, way: (&str, &str), close: bool) -> bool {
    let mut command = tokio::process::Command::new(example("exit_after_lock"));
    command
        .env("REDIS_URL", server.url())
        .args([key, way.0, way.1])
        .kill_on_drop(true);
    if !close {
        command.arg("--no-close");
    }
    let output = tokio::time::timeout(PROCESS_BOUND, command.output())
        .await
        .unwrap_or_else(|_| {
            panic!("exit_after_lock {key} {way:?} still runs after {PROCESS_BOUND:?}")
        })
        .expect("run exit_after_lock");
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).starts_with("acquired"),
        "exit_after_lock {key} {way:?} failed: {output:?}"
    );
    let mut conn = server.client().await;
    redis::cmd("EXISTS")
        .arg(format!("lock:{{{key}}}"))
        .query_async(&mut conn)
        .await
        .expect("EXISTS")
}

/// For each way: how many of `RUNS` runs left the lock held after the process exited, and the
/// keys they left.
async fn held_counts(
    server: &RedisServer,
    close: bool,
) -> (Vec<((&'static str, &'static str), usize)>, Vec<String>) {
    let mut counts = Vec::new();
    let mut left = Vec::new();
    for way in WAYS {
        let mut held = 0;
        for run in 0..RUNS {
            let key = format!("job-{}-{}-{}-{run}", close, way.0, way.1);
            if held_after_exit(server, &key, way, close).await {
                held += 1;
                left.push(key);
            }
        }
        counts.push((way, held));
    }
    (counts, left)
}

#[tokio::test]
async fn closing_the_locker_before_exit_leaves_no_lock_behind() {
    let server = RedisServer::start();
    let (counts, _) = held_counts(&server, true).await;
    for ((mode, guard), held) in &counts {
        eprintln!("with close ({mode}, guard {guard}): held after exit in {held} of {RUNS} runs");
    }
    assert!(
        counts.iter().all(|(_, held)| *held == 0),
        "a lock outlived the process that closed its locker: {counts:?}"
    );
}

/// The control: the same process without `close`. A guard alive at the end of `main`, or dropped
/// just before, hands its release to a task that the runtime's shutdown drops.
#[tokio::test]
async fn without_close_the_lock_outlives_the_process() {
    let server = RedisServer::start();
    let (counts, left) = held_counts(&server, false).await;
    for ((mode, guard), held) in &counts {
        eprintln!(
            "without close ({mode}, guard {guard}): held after exit in {held} of {RUNS} runs"
        );
    }
    // Not a release still on its way that the check overtook: held once all runs are over (a
    // lease of 30 s, and the runs take seconds), the lock waits for its lease.
    let still_held = support::redis_server::wait_until_unlocked(&server, &left, Duration::ZERO)
        .await
        .err()
        .unwrap_or_default();
    eprintln!(
        "without close: {} of {} runs left a lock still held after all runs",
        still_held.len(),
        RUNS * WAYS.len()
    );
    assert!(
        !still_held.is_empty(),
        "no lock outlived its process even without close: the test cannot tell close's effect \
         apart: {counts:?}"
    );
}
