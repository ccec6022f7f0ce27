//! Locking by hand: `try_acquire`, `LockGuard::extend` and `Locker::close`, run against a real
//! redis-server AND the in-memory backend.

mod support;

use std::time::Duration;

use distlock::{LockError, LockOptions, Locker, distributed_lock};
use support::fixture::Fixture;

/// A lease no test outlives: a lock still there was not released, not left to expire.
const LONG: Duration = Duration::from_secs(30);

/// Whether another task can take `key` at once (it releases it again).
async fn is_free(locker: &Locker, key: &str) -> bool {
    let locker = locker.clone();
    let key = key.to_owned();
    // A separate task: outside any scope of the caller's, so it never re-enters.
    tokio::spawn(async move {
        match locker.try_acquire(&key, LockOptions::new()).await {
            Ok(Some(guard)) => {
                guard.release().await.expect("release");
                true
            }
            Ok(None) => false,
            Err(e) => panic!("unexpected {e}"),
        }
    })
    .await
    .expect("task")
}

async fn pttl(fx: &Fixture, key: &str) -> i64 {
    let mut conn = fx.client().await;
    redis::cmd("PTTL")
        .arg(format!("lock:{{{key}}}"))
        .query_async(&mut conn)
        .await
        .expect("PTTL")
}

async fn exists(fx: &Fixture, key: &str) -> bool {
    let mut conn = fx.client().await;
    redis::cmd("EXISTS")
        .arg(format!("lock:{{{key}}}"))
        .query_async(&mut conn)
        .await
        .expect("EXISTS")
}

async fn evalsha_calls(fx: &Fixture) -> u64 {
    fx.command_calls("evalsha").await
}

async fn try_acquire_takes_a_free_lock_and_says_none_when_busy(fx: Fixture) {
    let lease = LockOptions::new().lease(LONG);
    let first = fx
        .locker
        .try_acquire("report", lease)
        .await
        .expect("no error")
        .expect("a free lock is taken");
    let other = fx.other_locker().await;
    let calls_before = evalsha_calls(&fx).await;
    // The wait of the options is not used: a busy lock answers at once, whatever it says.
    let busy = tokio::spawn(async move {
        other
            .try_acquire("report", lease.wait(Duration::from_secs(60)))
            .await
    })
    .await
    .expect("task");
    assert!(
        matches!(busy, Ok(None)),
        "busy is Ok(None), not an error: {busy:?}"
    );
    if fx.is_redis() {
        assert_eq!(
            evalsha_calls(&fx).await - calls_before,
            1,
            "a try is exactly one attempt"
        );
    }
    first.release().await.expect("release");
    let again = fx.locker.try_acquire("report", lease).await;
    assert!(matches!(again, Ok(Some(_))), "free again: {again:?}");
}

async fn try_acquire_reports_real_errors(fx: Fixture) {
    let empty = fx.locker.try_acquire("", LockOptions::new()).await;
    assert!(
        matches!(empty, Err(LockError::InvalidKey { .. })),
        "{empty:?}"
    );
    let no_lease = LockOptions::new().lease(Duration::ZERO);
    let zero = fx.locker.try_acquire("k", no_lease).await;
    assert!(
        matches!(zero, Err(LockError::InvalidOptions { .. })),
        "{zero:?}"
    );
}

async fn an_extended_lock_outlives_its_first_lease(fx: Fixture) {
    // Long enough that the extension comes well before it ends on a loaded machine.
    let short = Duration::from_millis(500);
    let guard = fx
        .locker
        .acquire("import", LockOptions::new().lease(short))
        .await
        .expect("acquire");
    let calls_before = evalsha_calls(&fx).await;
    guard.extend(LONG).await.expect("extend");
    if fx.is_redis() {
        assert_eq!(
            evalsha_calls(&fx).await - calls_before,
            1,
            "an extension is one owner-checked renewal"
        );
        let left = pttl(&fx, "import").await;
        assert!(
            left > short.as_millis() as i64,
            "PTTL {left} ms: the server's lease did not grow"
        );
    }
    // Past the first lease (twice over, for a loaded machine): still held, by both views.
    tokio::time::sleep(short * 2).await;
    assert!(!guard.is_lost(), "the holder thinks the lease ran out");
    assert!(
        !is_free(&fx.locker, "import").await,
        "the lock expired with its first lease"
    );
    // A shorter lease than the one it has changes nothing and sends nothing.
    let calls_before = evalsha_calls(&fx).await;
    guard.extend(short).await.expect("a shorter extension");
    assert_eq!(evalsha_calls(&fx).await, calls_before);
    guard.release().await.expect("release");
    assert!(is_free(&fx.locker, "import").await);
}

async fn extending_after_the_lease_ran_out_is_lease_lost(fx: Fixture) {
    let guard = fx
        .locker
        .acquire(
            "expired",
            LockOptions::new().lease(Duration::from_millis(50)),
        )
        .await
        .expect("acquire");
    guard.lost().await;
    let other = fx.other_locker().await;
    let next = other
        .acquire("expired", LockOptions::new().lease(LONG))
        .await
        .expect("the next holder gets it after the expiry");
    let extended = guard.extend(LONG).await;
    assert!(
        matches!(extended, Err(LockError::LeaseLost { .. })),
        "{extended:?}"
    );
    assert!(!next.is_lost(), "the next holder's lock was touched");
    next.release().await.expect("the next holder still owns it");
}

async fn extending_a_lock_deleted_behind_its_back_is_lease_lost(fx: Fixture) {
    if !fx.is_redis() {
        return; // deleting a lock behind its holder's back needs the server
    }
    let guard = fx
        .locker
        .acquire("vanished", LockOptions::new().lease(LONG))
        .await
        .expect("acquire");
    let mut conn = fx.client().await;
    let () = redis::cmd("DEL")
        .arg("lock:{vanished}")
        .query_async(&mut conn)
        .await
        .expect("DEL");
    assert!(!guard.is_lost(), "nothing told the holder yet");
    let extended = guard.extend(LONG * 2).await;
    assert!(
        matches!(extended, Err(LockError::LeaseLost { .. })),
        "{extended:?}"
    );
    assert!(guard.is_lost(), "the failed extension marks the guard lost");
    assert!(
        !exists(&fx, "vanished").await,
        "a non-owner re-created the lock"
    );
}

async fn extending_a_watchdog_lock_only_reports_that_it_holds(fx: Fixture) {
    let guard = fx
        .locker
        .acquire("watched", LockOptions::new())
        .await
        .expect("acquire");
    let calls_before = evalsha_calls(&fx).await;
    guard
        .extend(LONG * 10)
        .await
        .expect("the watchdog keeps it");
    assert_eq!(
        evalsha_calls(&fx).await,
        calls_before,
        "the watchdog's lease was changed"
    );
    guard.release().await.expect("release");
}

async fn close_releases_every_lock_it_holds_and_refuses_new_ones(fx: Fixture) {
    let kept = fx
        .locker
        .acquire("kept", LockOptions::new())
        .await
        .expect("acquire");
    let dropped = fx
        .locker
        .acquire("dropped", LockOptions::new().lease(LONG))
        .await
        .expect("acquire");
    drop(dropped);
    fx.locker.close().await;
    if fx.is_redis() {
        // Right after: `close` waited for both releases to be answered.
        assert!(
            !exists(&fx, "kept").await,
            "a live guard's lock outlived close"
        );
        assert!(
            !exists(&fx, "dropped").await,
            "a dropped guard's lock outlived close"
        );
    }
    assert!(
        kept.is_lost(),
        "a guard alive at close is not exclusive any more"
    );
    let after = kept.release().await;
    assert!(
        matches!(after, Err(LockError::LeaseLost { .. })),
        "{after:?}"
    );
    let acquire = fx.locker.acquire("new", LockOptions::new()).await;
    assert!(
        matches!(acquire, Err(LockError::Closed { .. })),
        "{acquire:?}"
    );
    let try_acquire = fx
        .locker
        .clone()
        .try_acquire("new", LockOptions::new())
        .await;
    assert!(
        matches!(try_acquire, Err(LockError::Closed { .. })),
        "{try_acquire:?}"
    );
    // Closing twice is harmless.
    fx.locker.close().await;
}

async fn close_ends_a_waiting_acquire(fx: Fixture) {
    let holder = fx.other_locker().await;
    let _held = holder
        .acquire("busy", LockOptions::new().lease(LONG))
        .await
        .expect("acquire");
    let locker = fx.locker.clone();
    let wait = LONG;
    let waiter = tokio::spawn(async move {
        locker
            .acquire("busy", LockOptions::new().wait(wait).lease(LONG))
            .await
    });
    fx.locker.close().await;
    // Bounded well below the wait: a closed locker does not keep its callers waiting.
    let outcome = tokio::time::timeout(wait / 2, waiter)
        .await
        .expect("the waiter still waits after close")
        .expect("task");
    assert!(
        matches!(outcome, Err(LockError::Closed { .. })),
        "{outcome:?}"
    );
}

/// Dropping the guard and then closing is the usual end of a job: nothing went wrong, so nothing
/// is logged as if it had. (A runtime of one thread: the dropped guard's release has not run yet
/// when `close` starts, and the log subscriber of this thread sees every task.)
#[tokio::test]
async fn a_guard_dropped_before_close_is_released_without_warnings() {
    let captured = support::logs::Captured::default();
    let _log = tracing::subscriber::set_default(captured.subscriber(tracing::Level::WARN));
    let locker = Locker::in_memory();
    let guard = locker
        .acquire("job", LockOptions::new())
        .await
        .expect("acquire");
    drop(guard);
    locker.close().await;
    let warnings = captured.lines("WARN", "");
    assert!(warnings.is_empty(), "{warnings:#?}");
}

/// The body of a locked fn has no guard: it extends through `current()`.
#[distributed_lock(key = "nightly", lease = "500ms", locker = locker)]
async fn locked_job_that_runs_long(locker: &Locker) -> Result<bool, LockError> {
    let lock = distlock::current().expect("inside the locked body");
    lock.extend(LONG).await?;
    // Past the fn's lease (twice over, for a loaded machine).
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(lock.is_lost())
}

async fn a_locked_body_extends_its_lock_through_current(fx: Fixture) {
    let lost = locked_job_that_runs_long(&fx.locker)
        .await
        .expect("the job's lock held past its lease");
    assert!(!lost, "the extended lease ran out");
}

async fn close_stops_the_lockers_connections(fx: Fixture) {
    if !fx.is_redis() {
        return; // the memory backend has no connections
    }
    let guard = fx
        .locker
        .acquire("connected", LockOptions::new())
        .await
        .expect("acquire");
    drop(guard);
    let probe = fx.probe();
    assert!(
        probe.client_connections().await > 0,
        "the locker's connections are not there to begin with"
    );
    fx.locker.close().await;
    // A closed connection leaves the server's list once the server has read the close: a round
    // trip when idle; 10 s for a loaded machine.
    let bound = Duration::from_secs(10);
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let left = probe.client_connections().await;
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} connections of the closed locker still open after {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

conformance!(
    try_acquire_takes_a_free_lock_and_says_none_when_busy,
    try_acquire_reports_real_errors,
    an_extended_lock_outlives_its_first_lease,
    extending_after_the_lease_ran_out_is_lease_lost,
    extending_a_lock_deleted_behind_its_back_is_lease_lost,
    extending_a_watchdog_lock_only_reports_that_it_holds,
    close_releases_every_lock_it_holds_and_refuses_new_ones,
    close_ends_a_waiting_acquire,
    close_stops_the_lockers_connections,
    a_locked_body_extends_its_lock_through_current,
);
