//! Lock metrics through the `metrics` crate (cargo feature `metrics`; `scripts/test` runs this
//! file with it). Each test records into a `DebuggingRecorder` of its own, set for the test's
//! thread: `#[tokio::test]` runs a current-thread runtime, so every task of the test (the
//! watchdog, background releases, the Redis connections) records there too, and tests running
//! side by side never mix their figures.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use distlock::metrics::{
    ACQUIRED, BACKEND_ERRORS, HANDOVERS, HOLD_SECONDS, LEASE_LOST, NOT_ACQUIRED, SKIPPED,
    WAIT_SECONDS,
};
use distlock::{LockError, LockOptions, Locker, distributed_lock};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use support::redis_server::RedisServer;

const LEASE: Duration = Duration::from_secs(5);

fn fixed(wait: Duration) -> LockOptions {
    LockOptions::new().wait(wait).lease(LEASE)
}

/// What a recorder holds, by metric name and label set (sorted `name=value` pairs).
struct Recorded(HashMap<(String, Vec<String>), DebugValue>);

impl Recorded {
    fn of(snapshotter: &Snapshotter) -> Self {
        let values = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let (_, key) = key.into_parts();
                let mut labels: Vec<String> = key
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect();
                labels.sort();
                ((key.name().to_owned(), labels), value)
            })
            .collect();
        Recorded(values)
    }

    fn find(&self, name: &str, labels: &[&str]) -> Option<&DebugValue> {
        let mut labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        labels.sort();
        self.0.get(&(name.to_owned(), labels))
    }

    /// The counter's value; 0 when it was never incremented.
    fn counter(&self, name: &str, labels: &[&str]) -> u64 {
        match self.find(name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            None => 0,
            Some(other) => panic!("{name} {labels:?} is not a counter: {other:?}"),
        }
    }

    /// The values recorded in the histogram, in seconds.
    fn histogram(&self, name: &str, labels: &[&str]) -> Vec<f64> {
        match self.find(name, labels) {
            Some(DebugValue::Histogram(values)) => values.iter().map(|v| v.into_inner()).collect(),
            None => Vec::new(),
            Some(other) => panic!("{name} {labels:?} is not a histogram: {other:?}"),
        }
    }

    fn label_values(&self) -> Vec<&str> {
        self.0
            .keys()
            .flat_map(|(_, labels)| labels.iter())
            .filter_map(|label| label.split_once('=').map(|(_, value)| value))
            .collect()
    }
}

#[tokio::test]
async fn an_acquisition_and_its_release_are_counted_under_the_key_prefix() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let locker = Locker::in_memory();

    let guard = locker
        .acquire("book:978-0134685991", fixed(Duration::ZERO))
        .await
        .unwrap();
    guard.release().await.unwrap();

    let recorded = Recorded::of(&recorder.snapshotter());
    assert_eq!(recorded.counter(ACQUIRED, &["key_prefix=book"]), 1);
    let waited = recorded.histogram(WAIT_SECONDS, &["key_prefix=book", "outcome=acquired"]);
    assert_eq!(waited.len(), 1, "{waited:?}");
    assert_eq!(
        recorded.histogram(HOLD_SECONDS, &["key_prefix=book"]).len(),
        1
    );
    assert_eq!(recorded.counter(HANDOVERS, &["key_prefix=book"]), 0);
    // Cardinality: one series per kind of key, never one per key.
    assert!(
        !recorded.label_values().contains(&"book:978-0134685991"),
        "{:?}",
        recorded.label_values()
    );
    assert!(
        recorded
            .0
            .keys()
            .all(|(name, _)| name.starts_with("distlock_"))
    );
}

#[tokio::test]
async fn keys_without_a_colon_share_the_empty_prefix() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let locker = Locker::in_memory();

    for key in ["ranking", "order-1", "order-2"] {
        let guard = locker.acquire(key, fixed(Duration::ZERO)).await.unwrap();
        guard.release().await.unwrap();
    }

    let recorded = Recorded::of(&recorder.snapshotter());
    assert_eq!(recorded.counter(ACQUIRED, &["key_prefix="]), 3);
}

/// The clock is paused: a wait of 50 ms ends at exactly 50 ms of tokio time, whatever the load.
#[tokio::test(start_paused = true)]
async fn a_busy_lock_counts_not_acquired_with_the_time_waited() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let locker = Locker::in_memory();
    let wait = Duration::from_millis(50);

    let holder = locker
        .acquire("job:x", fixed(Duration::ZERO))
        .await
        .unwrap();
    let busy = locker.acquire("job:x", fixed(wait)).await;
    assert!(
        matches!(busy, Err(LockError::NotAcquired { .. })),
        "{busy:?}"
    );
    holder.release().await.unwrap();

    let recorded = Recorded::of(&recorder.snapshotter());
    assert_eq!(recorded.counter(NOT_ACQUIRED, &["key_prefix=job"]), 1);
    assert_eq!(recorded.counter(ACQUIRED, &["key_prefix=job"]), 1);
    let waited = recorded.histogram(WAIT_SECONDS, &["key_prefix=job", "outcome=not_acquired"]);
    assert_eq!(waited.len(), 1, "{waited:?}");
    assert!(waited[0] >= wait.as_secs_f64(), "{waited:?}");
}

#[distributed_lock(key = "report:{day}", wait = "0s", lease = "5s", on_busy = "skip", locker = locks)]
async fn daily_report(locks: &Locker, day: u32) -> Option<u32> {
    Some(day)
}

#[tokio::test]
async fn a_skipped_run_counts_as_skipped_and_not_acquired() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let locker = Locker::in_memory();

    let holder = locker
        .acquire("report:7", fixed(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(daily_report(&locker, 7).await, None);
    holder.release().await.unwrap();
    assert_eq!(daily_report(&locker, 7).await, Some(7));

    let recorded = Recorded::of(&recorder.snapshotter());
    assert_eq!(recorded.counter(SKIPPED, &["key_prefix=report"]), 1);
    assert_eq!(recorded.counter(NOT_ACQUIRED, &["key_prefix=report"]), 1);
    assert_eq!(recorded.counter(ACQUIRED, &["key_prefix=report"]), 2);
}

/// A nested call that joins the lock it runs inside takes nothing new: counting it would show
/// more acquisitions than releases, and hold times of locks nobody took.
#[tokio::test]
async fn a_re_entry_is_not_an_acquisition() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let locker = Locker::in_memory();

    let outer = locker
        .acquire("book:1", fixed(Duration::ZERO))
        .await
        .unwrap();
    let inner = outer
        .scope(locker.acquire("book:1", fixed(Duration::ZERO)))
        .await
        .unwrap();
    inner.release().await.unwrap();
    outer.release().await.unwrap();

    let recorded = Recorded::of(&recorder.snapshotter());
    assert_eq!(recorded.counter(ACQUIRED, &["key_prefix=book"]), 1);
    assert_eq!(
        recorded.histogram(HOLD_SECONDS, &["key_prefix=book"]).len(),
        1
    );
}

/// Paused clock: the lease runs out by `advance`, not by sleeping through it.
#[tokio::test(start_paused = true)]
async fn a_lost_lease_is_counted_once_with_its_hold_time() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let locker = Locker::in_memory();

    let guard = locker
        .acquire("job:x", fixed(Duration::ZERO))
        .await
        .unwrap();
    tokio::time::advance(LEASE * 2).await;
    assert!(guard.is_lost());
    let released = guard.release().await;
    assert!(
        matches!(released, Err(LockError::LeaseLost { .. })),
        "{released:?}"
    );

    let recorded = Recorded::of(&recorder.snapshotter());
    assert_eq!(recorded.counter(LEASE_LOST, &["key_prefix=job"]), 1);
    let held = recorded.histogram(HOLD_SECONDS, &["key_prefix=job"]);
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(held[0] >= (LEASE * 2).as_secs_f64(), "{held:?}");
}

/// Paused clock: the holder's `sleep` returns only once every other task is idle, i.e. the
/// waiter has queued for a hand-over and sleeps (tokio advances a paused clock only then).
#[tokio::test(start_paused = true)]
async fn a_release_to_a_waiting_task_counts_a_hand_over_and_two_acquisitions() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let locker = Locker::in_memory();

    let holder = locker
        .acquire("queue:a", fixed(Duration::ZERO))
        .await
        .unwrap();
    let waiter = tokio::spawn({
        let locker = locker.clone();
        async move { locker.acquire("queue:a", fixed(LEASE)).await }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    holder.release().await.unwrap();
    waiter.await.unwrap().unwrap().release().await.unwrap();

    let recorded = Recorded::of(&recorder.snapshotter());
    assert_eq!(recorded.counter(HANDOVERS, &["key_prefix=queue"]), 1);
    assert_eq!(recorded.counter(ACQUIRED, &["key_prefix=queue"]), 2);
    let waits = recorded.histogram(WAIT_SECONDS, &["key_prefix=queue", "outcome=acquired"]);
    assert_eq!(waits.len(), 2, "{waits:?}");
    assert_eq!(
        recorded
            .histogram(HOLD_SECONDS, &["key_prefix=queue"])
            .len(),
        2
    );
}

/// Timeouts short enough for a quick test; the server is gone, so every call fails at once or
/// within them.
async fn locker_of(server: &RedisServer) -> Locker {
    Locker::builder(server.url())
        .response_timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn backend_errors_are_counted_by_operation() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut server = RedisServer::start();
    let locker = locker_of(&server).await;
    let guard = locker
        .acquire("order:1", fixed(Duration::ZERO))
        .await
        .unwrap();

    server.kill();
    let released = guard.release().await;
    assert!(
        matches!(released, Err(LockError::Backend { .. })),
        "{released:?}"
    );
    let after_release = Recorded::of(&recorder.snapshotter());
    let acquired = locker.acquire("order:2", fixed(Duration::ZERO)).await;
    assert!(
        matches!(acquired, Err(LockError::Backend { .. })),
        "{acquired:?}"
    );
    // A snapshot of its own (a snapshot empties the counters): the failed acquire also sends a
    // clean-up release in the background, whose failure may be counted before or after this.
    let after_acquire = Recorded::of(&recorder.snapshotter());

    let errors =
        |recorded: &Recorded, op: &str| recorded.counter(BACKEND_ERRORS, &["key_prefix=order", op]);
    assert_eq!(errors(&after_release, "op=release"), 1);
    assert_eq!(errors(&after_release, "op=acquire"), 0);
    assert_eq!(errors(&after_acquire, "op=acquire"), 1);
    assert_eq!(after_release.counter(ACQUIRED, &["key_prefix=order"]), 1);
}

#[tokio::test]
async fn failed_renewals_count_as_renew_errors_until_the_lease_is_lost() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut server = RedisServer::start();
    // A short watchdog lease, so the loss comes within a second of the server going.
    let locker = Locker::builder(server.url())
        .watchdog_lease(Duration::from_millis(900))
        .renewal_interval(Duration::from_millis(300))
        .response_timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let guard = locker
        .acquire("order:1", LockOptions::new().wait(Duration::ZERO))
        .await
        .unwrap();

    server.kill();
    // Bounded by the watchdog lease (0.9 s); 10 s leaves a loaded 2-core machine room.
    tokio::time::timeout(Duration::from_secs(10), guard.lost())
        .await
        .expect("the lease is reported lost once it runs out");
    drop(guard);

    let recorded = Recorded::of(&recorder.snapshotter());
    let renew_errors = recorded.counter(BACKEND_ERRORS, &["key_prefix=order", "op=renew"]);
    assert!(renew_errors >= 1, "{renew_errors}");
    assert_eq!(recorded.counter(LEASE_LOST, &["key_prefix=order"]), 1);
}
