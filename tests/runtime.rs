//! The runtime's behaviour, run against a real redis-server AND the in-memory backend. The
//! behaviours listed in `conformance!` at the end are part of the conformance suite that every
//! engine must pass (see tests/support/fixture.rs).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use distlock::{LockError, LockOptions, Locker, distributed_lock};
use support::fixture::Fixture;
use tokio::sync::{Barrier, oneshot};
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
    // A separate task: outside any scope of the caller's, whatever the caller holds.
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

async fn a_call_inside_the_guards_scope_reenters_at_once(fx: Fixture) {
    let outer = fx.locker.acquire("re", LockOptions::new()).await.unwrap();
    outer
        .scope(async {
            let calls_before = evalsha_calls(&fx).await;
            let inner = fx.locker.acquire("re", quick()).await.expect("re-entry");
            assert_eq!(inner.fencing_token(), outer.fencing_token());
            inner.release().await.unwrap();
            if fx.is_redis() {
                assert_eq!(
                    evalsha_calls(&fx).await,
                    calls_before,
                    "re-entry or its release made a round trip"
                );
            }
            assert!(
                !is_free(&fx.locker, "re").await,
                "the inner release released the lock"
            );
        })
        .await;
    outer.release().await.unwrap();
    assert!(is_free(&fx.locker, "re").await);
}

async fn a_call_inside_two_locks_reenters_the_outer_one(fx: Fixture) {
    let outer = fx.locker.acquire("a", LockOptions::new()).await.unwrap();
    outer
        .scope(async {
            let middle = fx.locker.acquire("b", quick()).await.unwrap();
            middle
                .scope(async {
                    let innermost = distlock::current().map(|lock| lock.key().to_owned());
                    assert_eq!(innermost.as_deref(), Some("b"));
                    let again = fx.locker.acquire("a", quick()).await.expect("re-entry");
                    assert_eq!(again.fencing_token(), outer.fencing_token());
                    again.release().await.unwrap();
                })
                .await;
            middle.release().await.unwrap();
        })
        .await;
    outer.release().await.unwrap();
    assert!(is_free(&fx.locker, "a").await);
}

/// Calls of [`locked_section`] joined in one task, started this far apart (the shape of the
/// report: `join_all` over calls that arrive one after another).
const JOINED_CALLS: u32 = 4;
const STAGGER: Duration = Duration::from_millis(10);
/// How long a body stays inside: longer than all the staggers together, so that without the lock
/// every later call arrives while the first is still inside.
const SECTION: Duration = Duration::from_millis(60);

/// How many bodies are inside at once, and the most there ever were.
#[derive(Default)]
struct Inside {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl Inside {
    async fn section(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(SECTION).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[distributed_lock(key = "joined", wait = "10s", locker = locker)]
async fn locked_section(locker: &Locker, inside: &Inside) -> Result<(), LockError> {
    inside.section().await;
    Ok(())
}

async fn most_inside_at_once(locker: &Locker, locked: bool) -> usize {
    let inside = Inside::default();
    let calls = (0..JOINED_CALLS).map(|i| {
        let inside = &inside;
        async move {
            tokio::time::sleep(STAGGER * i).await;
            if locked {
                locked_section(locker, inside).await.expect("locked call");
            } else {
                inside.section().await;
            }
        }
    });
    futures::future::join_all(calls).await;
    inside.most.load(Ordering::SeqCst)
}

async fn calls_of_a_locked_fn_joined_in_one_task_never_overlap(fx: Fixture) {
    let control = most_inside_at_once(&fx.locker, false).await;
    let locked = most_inside_at_once(&fx.locker, true).await;
    assert!(
        control > 1,
        "the control without the lock never overlapped, so the test shows nothing"
    );
    assert_eq!(locked, 1, "joined calls were inside the lock at once");
}

async fn acquires_joined_in_one_task_wait_for_each_other(fx: Fixture) {
    let (held_tx, held_rx) = oneshot::channel();
    let (got_tx, mut got_rx) = oneshot::channel();
    let first = async {
        let guard = fx
            .locker
            .acquire("joined", LockOptions::new())
            .await
            .unwrap();
        held_tx.send(()).unwrap();
        // Keep the lock until the second acquire is seen waiting for it.
        tokio::select! {
            biased;
            _ = &mut got_rx => panic!("the second acquire got the lock while the first held it"),
            () = wait_until_subscribed(&fx, "joined") => {}
        }
        guard.release().await.unwrap();
    };
    let second = async {
        held_rx.await.unwrap();
        let guard = fx
            .locker
            .acquire("joined", LockOptions::new())
            .await
            .expect("the second acquire, after the first released");
        let _ = got_tx.send(());
        guard.release().await.unwrap();
    };
    tokio::join!(first, second);
}

async fn a_guard_moved_to_another_task_takes_its_ownership_along(fx: Fixture) {
    let guard = fx
        .locker
        .acquire("moved", LockOptions::new())
        .await
        .unwrap();
    let (moved_tx, moved_rx) = oneshot::channel();
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let locker = fx.locker.clone();
    let new_owner = tokio::spawn(async move {
        let nested = guard
            .scope(locker.acquire("moved", quick()))
            .await
            .expect("the task holding the guard re-enters in its scope");
        nested.release().await.unwrap();
        moved_tx.send(()).unwrap();
        let _ = done_rx.await;
        guard.release().await
    });
    moved_rx.await.unwrap();
    let again = fx.locker.acquire("moved", quick()).await;
    assert!(
        matches!(again, Err(LockError::NotAcquired { .. })),
        "the task that gave its guard away still re-entered: {again:?}"
    );
    done_tx.send(()).unwrap();
    new_owner.await.unwrap().expect("release by the new owner");
    assert!(is_free(&fx.locker, "moved").await);
}

async fn pttl(fx: &Fixture, key: &str) -> i64 {
    let mut conn = fx.client().await;
    redis::cmd("PTTL")
        .arg(format!("lock:{{{key}}}"))
        .query_async(&mut conn)
        .await
        .unwrap()
}

async fn a_nested_call_with_a_longer_fixed_lease_extends_the_lock(fx: Fixture) {
    // Long enough that the re-entries below come well before it ends on a loaded machine.
    let short = Duration::from_millis(500);
    let long = Duration::from_secs(10);
    let outer = fx
        .locker
        .acquire("extended", LockOptions::new().lease(short))
        .await
        .unwrap();
    let calls_before = evalsha_calls(&fx).await;
    let shorter = outer
        .scope(fx.locker.acquire("extended", quick().lease(short / 2)))
        .await
        .expect("re-entry with a shorter lease");
    if fx.is_redis() {
        assert_eq!(
            evalsha_calls(&fx).await,
            calls_before,
            "a re-entry the outer lease covers made a round trip"
        );
    }
    let longer = outer
        .scope(fx.locker.acquire("extended", quick().lease(long)))
        .await
        .expect("re-entry with a longer lease");
    assert_eq!(longer.fencing_token(), outer.fencing_token());
    if fx.is_redis() {
        assert_eq!(
            evalsha_calls(&fx).await - calls_before,
            1,
            "an extension is one owner-checked renewal"
        );
        let left = pttl(&fx, "extended").await;
        assert!(
            left > short.as_millis() as i64,
            "PTTL {left} ms: not extended"
        );
    }
    // Past the outer lease (twice over, for a loaded machine): still held, by both views.
    tokio::time::sleep(short * 2).await;
    assert!(
        !outer.is_lost(),
        "the holder thinks the extended lease ran out"
    );
    assert!(
        !is_free(&fx.locker, "extended").await,
        "the lock expired with the outer lease"
    );
    shorter.release().await.unwrap();
    longer.release().await.unwrap();
    outer.release().await.unwrap();
    assert!(is_free(&fx.locker, "extended").await);
}

async fn extending_a_lock_that_is_gone_is_lease_lost(fx: Fixture) {
    if !fx.is_redis() {
        return; // deleting a lock behind its holder's back needs the server
    }
    let outer = fx
        .locker
        .acquire("vanished", LockOptions::new().lease(Duration::from_secs(1)))
        .await
        .unwrap();
    let mut conn = fx.client().await;
    let () = redis::cmd("DEL")
        .arg("lock:{vanished}")
        .query_async(&mut conn)
        .await
        .unwrap();
    let nested = outer
        .scope(
            fx.locker
                .acquire("vanished", quick().lease(Duration::from_secs(10))),
        )
        .await;
    assert!(
        matches!(nested, Err(LockError::LeaseLost { ref key }) if key == "vanished"),
        "{nested:?}"
    );
    assert!(outer.is_lost(), "the outer guard was not told");
    assert!(matches!(
        outer.release().await,
        Err(LockError::LeaseLost { .. })
    ));
}

async fn a_nested_watchdog_call_inside_a_fixed_lease_is_a_clear_error(fx: Fixture) {
    let fixed = fx
        .locker
        .acquire("fixed", LockOptions::new().lease(Duration::from_secs(5)))
        .await
        .unwrap();
    let err = fixed
        .scope(fx.locker.acquire("fixed", quick()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LockError::InvalidOptions { key: Some(ref key), .. } if key == "fixed"),
        "{err:?}"
    );
    let message = err.to_string();
    for words in [
        "watchdog",
        "fixed lease",
        "give the outer call the watchdog",
    ] {
        assert!(message.contains(words), "{message}");
    }
    fixed.release().await.unwrap();

    // The other way round is covered: the watchdog keeps the lock for a nested fixed lease.
    let watched = fx
        .locker
        .acquire("watched", LockOptions::new())
        .await
        .unwrap();
    let nested = watched
        .scope(
            fx.locker
                .acquire("watched", quick().lease(Duration::from_secs(1))),
        )
        .await
        .expect("a fixed lease nested in a watchdog lock");
    assert_eq!(nested.fencing_token(), watched.fencing_token());
    nested.release().await.unwrap();
    watched.release().await.unwrap();
}

async fn a_nested_hold_at_least_keeps_the_lock_after_the_outer_release(fx: Fixture) {
    let hold = Duration::from_millis(400);
    let outer = fx.locker.acquire("kept", LockOptions::new()).await.unwrap();
    let inner = outer
        .scope(fx.locker.acquire("kept", quick().hold_at_least(hold)))
        .await
        .expect("re-entry");
    let entered = Instant::now();
    inner.release().await.unwrap();
    outer.release().await.unwrap();
    assert!(
        !is_free(&fx.locker, "kept").await,
        "the release ignored the nested call's hold_at_least"
    );
    if fx.is_redis() {
        let left = pttl(&fx, "kept").await;
        assert!(left > 0 && left <= 400, "PTTL {left}");
    }
    time_to_acquire(&fx.locker, "kept", Duration::from_secs(5)).await;
    assert!(entered.elapsed() >= hold - Duration::from_millis(20));
}

#[distributed_lock(key = "nested", wait = "0s", locker = fx.locker)]
async fn outer_call(fx: &Fixture) -> Result<(), LockError> {
    let outer_fence = distlock::current().map(|lock| lock.fencing_token());
    let calls_before = evalsha_calls(fx).await;
    let inner_fence = inner_call(fx).await?;
    assert_eq!(
        Some(inner_fence),
        outer_fence,
        "the nested call took a new lock"
    );
    if fx.is_redis() {
        assert_eq!(
            evalsha_calls(fx).await,
            calls_before,
            "the nested call or its release made a round trip"
        );
    }
    assert!(
        !is_free(&fx.locker, "nested").await,
        "the nested call's release freed the lock"
    );
    Ok(())
}

#[distributed_lock(key = "nested", wait = "0s", locker = fx.locker)]
async fn inner_call(fx: &Fixture) -> Result<u64, LockError> {
    Ok(distlock::current().expect("inside a lock").fencing_token())
}

async fn a_nested_locked_call_reenters_at_once(fx: Fixture) {
    outer_call(&fx).await.expect("nested call");
    assert!(
        is_free(&fx.locker, "nested").await,
        "the outer release left the lock"
    );
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
        let mut conn = fx.client().await;
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
    fx.command_calls("evalsha").await
}

/// Redis: until the lock's release channel has a subscriber. Memory: the waiter registers
/// in-process without I/O, so a short pause lets it reach its wait.
async fn wait_until_subscribed(fx: &Fixture, key: &str) {
    if !fx.is_redis() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        return;
    }
    fx.probe().wait_until_subscribed(key).await;
}

conformance!(
    counter_is_exact_under_the_lock_and_loses_updates_without_it,
    an_elapsed_wait_is_not_acquired_close_to_the_wait,
    wait_zero_tries_once,
    a_fixed_lease_expires_and_lets_another_acquire,
    the_watchdog_keeps_a_lock_alive_for_three_leases,
    no_renewal_is_sent_after_release,
    a_release_after_expiry_is_lease_lost_and_keeps_the_new_owner,
    fencing_numbers_strictly_increase_across_lockers,
    a_call_inside_the_guards_scope_reenters_at_once,
    a_call_inside_two_locks_reenters_the_outer_one,
    calls_of_a_locked_fn_joined_in_one_task_never_overlap,
    acquires_joined_in_one_task_wait_for_each_other,
    a_guard_moved_to_another_task_takes_its_ownership_along,
    a_nested_call_with_a_longer_fixed_lease_extends_the_lock,
    extending_a_lock_that_is_gone_is_lease_lost,
    a_nested_watchdog_call_inside_a_fixed_lease_is_a_clear_error,
    a_nested_hold_at_least_keeps_the_lock_after_the_outer_release,
    a_nested_locked_call_reenters_at_once,
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

/// A watchdog guard dropped where no runtime can run its release (outside any runtime, on a
/// locker made outside one): the release cannot run, but the watchdog must not go on renewing a
/// lock nobody holds, on the runtime it runs on. The lock then expires with its lease.
#[test]
fn a_guard_dropped_outside_a_runtime_stops_its_watchdog() {
    // Made outside any runtime: the locker knows no runtime to fall back on.
    let locker = Locker::in_memory();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let guard = runtime
        .block_on(locker.acquire("orphan", LockOptions::new()))
        .expect("acquire");
    drop(guard); // outside the runtime's context
    // The paused clock runs past the watchdog lease; a watchdog still running would renew it.
    let after = runtime.block_on(async {
        tokio::time::sleep(locker.watchdog_lease() * 2).await;
        locker.try_acquire("orphan", LockOptions::new()).await
    });
    assert!(
        matches!(after, Ok(Some(_))),
        "the lock of a dropped guard was still renewed: {after:?}"
    );
}

/// A lease that runs out after its lock was released was not lost: neither `is_lost()` nor
/// `lost()` reports a loss then (no WARN, no lease-lost metric), and `lost()` ends.
#[tokio::test(start_paused = true)]
async fn a_lease_ending_after_a_clean_release_is_not_lost() {
    let locker = Locker::in_memory();
    let lease = Duration::from_secs(1);
    let guard = locker
        .acquire("released", LockOptions::new().lease(lease))
        .await
        .expect("acquire");
    let handle = guard.handle();
    let lost = guard.lost();
    guard.release().await.expect("a clean release");
    tokio::time::sleep(lease * 2).await;
    assert!(!handle.is_lost(), "reported lost after a clean release");
    tokio::time::timeout(lease, lost)
        .await
        .expect("lost() ends once the lock is released");
    assert!(!handle.is_lost());
}

/// `extend` on a lock that was released is an error, never a renewal of a lock that is nobody's.
#[tokio::test]
async fn extending_a_released_lock_is_refused() {
    let locker = Locker::in_memory();
    let guard = locker
        .acquire(
            "released",
            LockOptions::new()
                .lease(Duration::from_secs(5))
                .hold_at_least(Duration::from_secs(2)),
        )
        .await
        .expect("acquire");
    let handle = guard.handle();
    guard.release().await.expect("release");
    let extended = handle.extend(Duration::from_secs(60)).await;
    assert!(
        matches!(extended, Err(LockError::InvalidOptions { .. })),
        "{extended:?}"
    );
}
