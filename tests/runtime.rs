//! The runtime's behaviour, run against a real redis-server AND the in-memory backend.

mod support;

use std::sync::Arc;
use std::time::Duration;

use distlock::{LockError, LockOptions};
use support::fixture::Fixture;
use tokio::sync::Barrier;
use tokio::time::Instant;

const TASKS: usize = 50;
const INCREMENTS: usize = 20;

fn quick() -> LockOptions {
    LockOptions::new().wait(Duration::ZERO)
}

/// Ends when `locker` can take `key` within `wait`; returns how long that took.
async fn time_to_acquire(locker: &distlock::Locker, key: &str, wait: Duration) -> Duration {
    let started = Instant::now();
    let locker = locker.clone();
    let key = key.to_owned();
    // A separate task: the caller may hold the key itself, and reentrancy is per task.
    tokio::spawn(async move {
        let guard = locker
            .acquire(
                &key,
                LockOptions::new().wait(wait).lease(Duration::from_secs(10)),
            )
            .await
            .expect("acquire after release");
        guard.release().await.expect("release");
    })
    .await
    .expect("task");
    started.elapsed()
}

async fn is_free(locker: &distlock::Locker, key: &str) -> bool {
    let locker = locker.clone();
    let key = key.to_owned();
    tokio::spawn(async move {
        match locker.acquire(&key, quick()).await {
            Ok(guard) => {
                guard.release().await.expect("release");
                true
            }
            Err(LockError::NotAcquired { .. }) => false,
            Err(e) => panic!("unexpected {e}"),
        }
    })
    .await
    .expect("task")
}

async fn race(fx: &Fixture, counter_name: &str, locked: bool) -> i64 {
    let counter = fx.counter(counter_name).await;
    let start = Arc::new(Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (locker, counter, start) = (fx.locker.clone(), counter.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            for _ in 0..INCREMENTS {
                let guard = if locked {
                    let options = LockOptions::new().wait(Duration::from_secs(30));
                    Some(locker.acquire("counter", options).await.expect("acquire"))
                } else {
                    None
                };
                counter.increment_non_atomically().await;
                if let Some(guard) = guard {
                    guard.release().await.expect("release");
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    counter.get().await
}

async fn counter_is_exact_under_the_lock_and_loses_updates_without_it(fx: Fixture) {
    let expected = (TASKS * INCREMENTS) as i64;
    let unlocked = race(&fx, "control", false).await;
    let locked = race(&fx, "locked", true).await;
    assert!(
        unlocked < expected,
        "control run without the lock lost nothing ({unlocked}), so the test creates no contention"
    );
    assert_eq!(locked, expected, "the lock let updates get lost");
}

async fn an_elapsed_wait_is_not_acquired_close_to_the_wait(fx: Fixture) {
    let _held = fx.locker.acquire("busy", LockOptions::new()).await.unwrap();
    let locker = fx.locker.clone();
    let wait = Duration::from_millis(300);
    let started = Instant::now();
    let result =
        tokio::spawn(async move { locker.acquire("busy", LockOptions::new().wait(wait)).await })
            .await
            .unwrap();
    let elapsed = started.elapsed();
    match result {
        Err(LockError::NotAcquired { key, waited }) => {
            assert_eq!(key, "busy");
            assert!(waited >= wait, "gave up early: {waited:?}");
        }
        other => panic!("expected NotAcquired, got {other:?}"),
    }
    // Generous upper bound for a loaded 2-core machine; a hang would be the real failure.
    assert!(
        elapsed >= wait && elapsed < wait + Duration::from_secs(1),
        "{elapsed:?}"
    );
}

async fn wait_zero_tries_once(fx: Fixture) {
    let _held = fx.locker.acquire("once", LockOptions::new()).await.unwrap();
    let calls_before = evalsha_calls(&fx).await;
    let locker = fx.locker.clone();
    let started = Instant::now();
    let result = tokio::spawn(async move { locker.acquire("once", quick()).await })
        .await
        .unwrap();
    assert!(
        matches!(result, Err(LockError::NotAcquired { .. })),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    if fx.is_redis() {
        assert_eq!(
            evalsha_calls(&fx).await - calls_before,
            1,
            "wait 0 must try exactly once"
        );
    }
}

async fn a_fixed_lease_expires_and_lets_another_acquire(fx: Fixture) {
    let lease = Duration::from_millis(300);
    let guard = fx
        .locker
        .acquire("lease", LockOptions::new().lease(lease))
        .await
        .unwrap();
    let waited = time_to_acquire(&fx.locker, "lease", Duration::from_secs(5)).await;
    // Not before the lease ran out (minus the time between our acquire and the measurement start).
    assert!(waited >= lease - Duration::from_millis(50), "{waited:?}");
    assert!(guard.is_lost(), "the holder was not told its lease ran out");
    assert!(matches!(
        guard.release().await,
        Err(LockError::LeaseLost { .. })
    ));
}

async fn the_watchdog_keeps_a_lock_alive_for_three_leases(fx: Fixture) {
    let lease = Duration::from_millis(300);
    let locker = fx.builder().watchdog_lease(lease).build().await.unwrap();
    let guard = locker.acquire("watched", LockOptions::new()).await.unwrap();
    tokio::time::sleep(lease * 3).await;
    assert!(
        !is_free(&locker, "watched").await,
        "the lock expired while its guard lived"
    );
    assert!(!guard.is_lost());
    guard.release().await.expect("release after renewals");
    assert!(is_free(&locker, "watched").await);
}

async fn no_renewal_is_sent_after_release(fx: Fixture) {
    if !fx.is_redis() {
        return; // counting commands needs the server's statistics
    }
    let lease = Duration::from_millis(150);
    let locker = fx.builder().watchdog_lease(lease).build().await.unwrap();
    let guard = locker.acquire("renewed", LockOptions::new()).await.unwrap();
    tokio::time::sleep(lease * 2).await; // a few renewals run
    guard.release().await.unwrap();
    let after_release = evalsha_calls(&fx).await;
    tokio::time::sleep(lease * 3).await; // several renewal intervals
    assert_eq!(
        evalsha_calls(&fx).await,
        after_release,
        "a renewal ran after release"
    );
}

async fn a_release_after_expiry_is_lease_lost_and_keeps_the_new_owner(fx: Fixture) {
    let old = fx
        .locker
        .acquire("k", LockOptions::new().lease(Duration::from_millis(100)))
        .await
        .unwrap();
    let other = fx.other_locker().await;
    let new = tokio::spawn(async move {
        other
            .acquire("k", LockOptions::new().wait(Duration::from_secs(5)))
            .await
    })
    .await
    .unwrap()
    .unwrap();
    assert!(matches!(
        old.release().await,
        Err(LockError::LeaseLost { .. })
    ));
    assert!(
        !is_free(&fx.locker, "k").await,
        "the stale release freed the new owner's lock"
    );
    assert!(!new.is_lost());
    new.release().await.unwrap();
}

async fn fencing_numbers_strictly_increase_across_lockers(fx: Fixture) {
    let lockers = [fx.locker.clone(), fx.other_locker().await];
    let mut last = 0;
    for i in 0..1000 {
        let guard = lockers[i % 2]
            .acquire("fenced", LockOptions::new())
            .await
            .unwrap();
        let fence = guard.fencing_token();
        assert!(
            fence > last,
            "fence {fence} after {last} at acquisition {i}"
        );
        last = fence;
        guard.release().await.unwrap();
    }
}

async fn a_task_reenters_its_own_lock(fx: Fixture) {
    let outer = fx.locker.acquire("re", LockOptions::new()).await.unwrap();
    let calls_before = evalsha_calls(&fx).await;
    let inner = fx.locker.acquire("re", quick()).await.expect("re-entry");
    assert_eq!(inner.fencing_token(), outer.fencing_token());
    if fx.is_redis() {
        assert_eq!(
            evalsha_calls(&fx).await,
            calls_before,
            "re-entry made a round trip"
        );
    }
    inner.release().await.unwrap();
    assert!(
        !is_free(&fx.locker, "re").await,
        "the inner release released the lock"
    );
    outer.release().await.unwrap();
    assert!(is_free(&fx.locker, "re").await);
}

async fn another_task_waits_for_the_holder(fx: Fixture) {
    let guard = fx.locker.acquire("excl", LockOptions::new()).await.unwrap();
    assert!(
        !is_free(&fx.locker, "excl").await,
        "another task of the process got a held lock"
    );
    guard.release().await.unwrap();
}

async fn a_dropped_guard_frees_the_lock_promptly(fx: Fixture) {
    let guard = fx
        .locker
        .acquire("dropped", LockOptions::new())
        .await
        .unwrap();
    let started = Instant::now();
    drop(guard);
    let waited = time_to_acquire(&fx.locker, "dropped", Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_millis(100), "{waited:?}");
}

async fn a_panicking_holder_frees_the_lock_promptly(fx: Fixture) {
    let locker = fx.locker.clone();
    let task = tokio::spawn(async move {
        let _guard = locker
            .acquire("panicked", LockOptions::new())
            .await
            .unwrap();
        panic!("the body failed");
    });
    assert!(task.await.unwrap_err().is_panic());
    let started = Instant::now();
    time_to_acquire(&fx.locker, "panicked", Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_millis(100));
}

async fn a_cancelled_holder_frees_the_lock_promptly(fx: Fixture) {
    let locker = fx.locker.clone();
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let _guard = locker
            .acquire("cancelled", LockOptions::new())
            .await
            .unwrap();
        let _ = held_tx.send(());
        std::future::pending::<()>().await;
    });
    held_rx.await.unwrap();
    task.abort();
    let _ = task.await;
    let started = Instant::now();
    time_to_acquire(&fx.locker, "cancelled", Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_millis(100));
}

async fn a_dropped_acquire_leaves_no_lock(fx: Fixture) {
    // Cancel a waiting acquire.
    let holder = fx
        .locker
        .acquire("contended", LockOptions::new())
        .await
        .unwrap();
    let waiting = fx.locker.clone();
    let cancelled = tokio::spawn(async move {
        tokio::time::timeout(
            Duration::from_millis(50),
            waiting.acquire("contended", LockOptions::new()),
        )
        .await
    })
    .await
    .unwrap();
    assert!(
        cancelled.is_err(),
        "the acquire should still have been waiting"
    );
    holder.release().await.unwrap();
    assert!(is_free(&fx.locker, "contended").await);

    // Cancel acquires at random points, including while the request is in flight.
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let locker = fx.locker.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("storm:{i}");
            let cut = Duration::from_micros((i * 37) % 1500);
            let _ = tokio::time::timeout(cut, locker.acquire(&key, LockOptions::new())).await;
            key
        }));
    }
    let mut keys = Vec::new();
    for task in tasks {
        keys.push(task.await.unwrap());
    }
    // Cleanups run in the background; give them a moment, then every key must be free.
    let deadline = Instant::now() + Duration::from_secs(2);
    for key in keys {
        loop {
            if is_free(&fx.locker, &key).await {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{key} stayed locked after its acquire was dropped"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn a_waiter_is_woken_by_the_release_not_by_polling(fx: Fixture) {
    // The holder's lease is long, so only a wake-up (not an expiry or a poll) can explain a fast
    // handoff.
    let holder = fx
        .locker
        .acquire("handoff", LockOptions::new().lease(Duration::from_secs(30)))
        .await
        .unwrap();
    let locker = fx.locker.clone();
    let waiter = tokio::spawn(async move {
        let guard = locker
            .acquire("handoff", LockOptions::new().wait(Duration::from_secs(20)))
            .await
            .unwrap();
        let got = Instant::now();
        guard.release().await.unwrap();
        got
    });
    wait_until_subscribed(&fx, "handoff").await;
    let released = {
        holder.release().await.unwrap();
        Instant::now()
    };
    let got = waiter.await.unwrap();
    let handoff = got.saturating_duration_since(released);
    // A few ms on loopback; 50 ms leaves room for a loaded CI machine. Polling would take ~30 s.
    assert!(
        handoff < Duration::from_millis(50),
        "handoff took {handoff:?}"
    );
}

async fn hold_at_least_keeps_the_lock_after_an_early_release(fx: Fixture) {
    let hold = Duration::from_millis(400);
    let options = LockOptions::new()
        .lease(Duration::from_secs(5))
        .hold_at_least(hold);
    let guard = fx.locker.acquire("job", options).await.unwrap();
    let acquired = Instant::now();
    guard.release().await.unwrap();
    assert!(
        !is_free(&fx.locker, "job").await,
        "an early release deleted the lock"
    );
    if fx.is_redis() {
        let mut conn = fx.server().client().await;
        let pttl: i64 = redis::cmd("PTTL")
            .arg("lock:{job}")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(pttl > 0 && pttl <= 400, "PTTL {pttl}");
    }
    time_to_acquire(&fx.locker, "job", Duration::from_secs(5)).await;
    assert!(acquired.elapsed() >= hold - Duration::from_millis(20));
}

async fn bad_keys_and_options_are_clear_errors(fx: Fixture) {
    let l = &fx.locker;
    let err = l.acquire("", LockOptions::new()).await.unwrap_err();
    assert!(
        matches!(err, LockError::InvalidKey { .. }) && err.to_string().contains("empty"),
        "{err}"
    );
    let long = "k".repeat(1025);
    let err = l.acquire(&long, LockOptions::new()).await.unwrap_err();
    assert!(err.to_string().contains("1024 bytes"), "{err}");
    let max_len = "k".repeat(1024);
    l.acquire(&max_len, quick())
        .await
        .expect("1024 bytes is allowed")
        .release()
        .await
        .unwrap();

    for (options, words) in [
        (
            LockOptions::new().lease(Duration::ZERO),
            "shorter than 1 ms",
        ),
        (
            LockOptions::new().lease(Duration::from_micros(999)),
            "shorter than 1 ms",
        ),
        (
            LockOptions::new().lease(Duration::from_secs(366 * 86400)),
            "longer than a year",
        ),
        (
            LockOptions::new()
                .lease(Duration::from_secs(1))
                .hold_at_least(Duration::from_secs(2)),
            "longer than the lease",
        ),
    ] {
        let err = l.acquire("opt", options).await.unwrap_err();
        assert!(matches!(err, LockError::InvalidOptions { .. }), "{err}");
        assert!(
            err.to_string().contains(words) && err.to_string().contains("`opt`"),
            "{err}"
        );
    }
    let err = fx
        .builder()
        .watchdog_lease(Duration::ZERO)
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("watchdog_lease"), "{err}");
}

async fn unusual_keys_lock_distinct_resources(fx: Fixture) {
    let keys = [
        "a}b",
        "{a}",
        "a",
        "a:b",
        "ключ",
        "line\nbreak",
        "nul\0byte",
        "}{",
        "{",
        "}",
    ];
    let mut guards = Vec::new();
    for key in keys {
        guards.push(
            fx.locker
                .acquire(key, quick())
                .await
                .unwrap_or_else(|e| panic!("{key:?}: {e}")),
        );
    }
    for key in keys {
        assert!(!is_free(&fx.locker, key).await, "{key:?} is not held");
    }
    for guard in guards {
        guard.release().await.unwrap();
    }
}

async fn evalsha_calls(fx: &Fixture) -> u64 {
    match &fx.server {
        Some(server) => server.command_calls("evalsha").await,
        None => 0,
    }
}

/// Redis: until the lock's release channel has a subscriber. Memory: the waiter registers
/// in-process without I/O, so a short pause lets it reach its wait.
async fn wait_until_subscribed(fx: &Fixture, key: &str) {
    let Some(server) = &fx.server else {
        tokio::time::sleep(Duration::from_millis(50)).await;
        return;
    };
    let mut conn = server.client().await;
    let channel = format!("lock:{{{key}}}:released");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, n): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query_async(&mut conn)
            .await
            .unwrap();
        if n > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the waiter never subscribed");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

both_backends!(
    counter_is_exact_under_the_lock_and_loses_updates_without_it,
    an_elapsed_wait_is_not_acquired_close_to_the_wait,
    wait_zero_tries_once,
    a_fixed_lease_expires_and_lets_another_acquire,
    the_watchdog_keeps_a_lock_alive_for_three_leases,
    no_renewal_is_sent_after_release,
    a_release_after_expiry_is_lease_lost_and_keeps_the_new_owner,
    fencing_numbers_strictly_increase_across_lockers,
    a_task_reenters_its_own_lock,
    another_task_waits_for_the_holder,
    a_dropped_guard_frees_the_lock_promptly,
    a_panicking_holder_frees_the_lock_promptly,
    a_cancelled_holder_frees_the_lock_promptly,
    a_dropped_acquire_leaves_no_lock,
    a_waiter_is_woken_by_the_release_not_by_polling,
    hold_at_least_keeps_the_lock_after_an_early_release,
    bad_keys_and_options_are_clear_errors,
    unusual_keys_lock_distinct_resources,
);

/// Nothing in this test binary installs a default locker.
#[test]
fn without_an_installed_locker_the_default_is_a_clear_error() {
    let err = distlock::default_locker().unwrap_err();
    assert!(matches!(err, LockError::NoDefaultLocker));
    assert!(err.to_string().contains("distlock::install("), "{err}");
}
