//! `#[distributed_lock]` functions against a real redis-server: the annotated fns, not the runtime.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use distlock::{LockError, LockOptions, Locker, distributed_lock};
use support::fixture::{Counter, Fixture};
use tokio::sync::Barrier;
use tokio::time::Instant;

const CALLS: usize = 50;

#[derive(Debug)]
enum AppError {
    Lock(LockError),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Lock(e) => write!(f, "lock: {e}"),
        }
    }
}

impl From<LockError> for AppError {
    fn from(e: LockError) -> Self {
        AppError::Lock(e)
    }
}

struct Service {
    locks: Locker,
    counter: Counter,
    runs: AtomicUsize,
    finished: AtomicBool,
}

impl Service {
    async fn new(fx: &Fixture) -> Arc<Self> {
        Arc::new(Service {
            locks: fx.locker.clone(),
            counter: fx.counter("counter").await,
            runs: AtomicUsize::new(0),
            finished: AtomicBool::new(false),
        })
    }

    #[distributed_lock(key = "counter", wait = "30s", locker = self.locks)]
    async fn increment(&self) -> Result<(), AppError> {
        self.counter.increment_non_atomically().await;
        Ok(())
    }

    /// The control: the same body without the attribute.
    async fn increment_unlocked(&self) -> Result<(), AppError> {
        self.counter.increment_non_atomically().await;
        Ok(())
    }

    #[distributed_lock(key = "job", wait = "0s", lease = "5s", hold_at_least = "2s", on_busy = "skip", locker = self.locks)]
    async fn scheduled_job(&self, start: Arc<Barrier>) {
        let _ = start; // every caller passed the barrier before any could take the lock
        self.runs.fetch_add(1, Ordering::SeqCst);
    }

    #[distributed_lock(key = "book:{isbn}", wait = "5s", lease = "5s", locker = self.locks)]
    async fn register(&self, isbn: &str, both_inside: Arc<Barrier>) -> Result<String, LockError> {
        both_inside.wait().await; // only returns when the other ISBN's call is inside too
        Ok(isbn.to_owned())
    }

    #[distributed_lock(key = "nested", wait = "1s", locker = self.locks)]
    async fn outer(&self) -> Result<u64, LockError> {
        let outer_fence = distlock::current().map(|l| l.fencing_token());
        let inner_fence = self.inner().await?;
        assert_eq!(
            outer_fence,
            Some(inner_fence),
            "the nested call took a new lock"
        );
        Ok(inner_fence)
    }

    #[distributed_lock(key = "nested", wait = "1s", locker = self.locks)]
    async fn inner(&self) -> Result<u64, LockError> {
        Ok(distlock::current().expect("inside a lock").fencing_token())
    }

    #[distributed_lock(key = "hang", locker = self.locks)]
    async fn hang(&self) -> Result<(), LockError> {
        std::future::pending::<()>().await;
        Ok(())
    }

    #[distributed_lock(key = "panics", locker = self.locks)]
    async fn panics(&self) -> Result<(), LockError> {
        panic!("the body failed");
    }

    #[distributed_lock(key = "slow", lease = "100ms", on_lost = "report", locker = self.locks)]
    async fn outlives_its_lease_report(&self) -> Result<(), LockError> {
        tokio::time::sleep(Duration::from_millis(400)).await;
        self.finished.store(true, Ordering::SeqCst);
        Ok(())
    }

    #[distributed_lock(key = "slow", lease = "100ms", on_lost = "cancel", locker = self.locks)]
    async fn outlives_its_lease_cancel(&self) -> Result<(), LockError> {
        tokio::time::sleep(Duration::from_millis(400)).await;
        self.finished.store(true, Ordering::SeqCst);
        Ok(())
    }

    #[distributed_lock(key = "fenced:{id}", lease = "5s", locker = self.locks)]
    async fn fenced_write(&self, id: u32) -> Result<u64, LockError> {
        Ok(distlock::current().expect("inside a lock").fencing_token())
    }
}

async fn free_within(locker: &Locker, key: &str, bound: Duration) -> bool {
    let started = Instant::now();
    loop {
        let locker = locker.clone();
        let k = key.to_owned();
        let got = tokio::spawn(async move {
            locker
                .acquire(&k, LockOptions::new().wait(Duration::ZERO))
                .await
        })
        .await
        .unwrap();
        match got {
            Ok(guard) => {
                guard.release().await.unwrap();
                return true;
            }
            Err(LockError::NotAcquired { .. }) if started.elapsed() < bound => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            Err(_) => return false,
        }
    }
}

async fn run_concurrently(svc: &Arc<Service>, locked: bool) -> i64 {
    svc.counter.set(0).await;
    let start = Arc::new(Barrier::new(CALLS));
    let mut tasks = Vec::new();
    for _ in 0..CALLS {
        let (svc, start) = (svc.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            if locked {
                svc.increment().await
            } else {
                svc.increment_unlocked().await
            }
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    svc.counter.get().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_attribute_makes_a_read_modify_write_exact() {
    let fx = Fixture::redis().await;
    let svc = Service::new(&fx).await;
    let control = run_concurrently(&svc, false).await;
    let locked = run_concurrently(&svc, true).await;
    assert!(
        control < CALLS as i64,
        "the control lost nothing ({control}): no contention"
    );
    assert_eq!(locked, CALLS as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skip_runs_the_body_once_among_concurrent_callers() {
    let fx = Fixture::redis().await;
    let svc = Service::new(&fx).await;
    let start = Arc::new(Barrier::new(10));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (svc, start) = (svc.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            svc.scheduled_job(start.clone()).await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // hold_at_least keeps the lock after the fast body, so late callers skip too.
    assert_eq!(svc.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn different_key_arguments_do_not_block_each_other() {
    let fx = Fixture::redis().await;
    let svc = Service::new(&fx).await;
    let both_inside = Arc::new(Barrier::new(2));
    let a = tokio::spawn({
        let (svc, b) = (svc.clone(), both_inside.clone());
        async move { svc.register("978-1", b).await }
    });
    let b = tokio::spawn({
        let (svc, b) = (svc.clone(), both_inside.clone());
        async move { svc.register("978-2", b).await }
    });
    // If one ISBN blocked the other, neither would pass the barrier: the wait would run out.
    let (a, b) = tokio::time::timeout(Duration::from_secs(4), async { (a.await, b.await) })
        .await
        .expect("one key blocked the other");
    assert_eq!(a.unwrap().unwrap(), "978-1");
    assert_eq!(b.unwrap().unwrap(), "978-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_call_with_the_same_key_reenters() {
    let fx = Fixture::redis().await;
    let svc = Service::new(&fx).await;
    let started = Instant::now();
    svc.outer()
        .await
        .expect("nested call deadlocked into NotAcquired");
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(free_within(&fx.locker, "nested", Duration::ZERO).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cancelled_by_timeout_frees_the_lock_at_once() {
    let fx = Fixture::redis().await;
    let svc = Service::new(&fx).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(100), svc.hang())
            .await
            .is_err()
    );
    assert!(free_within(&fx.locker, "hang", Duration::from_millis(100)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_body_frees_the_lock() {
    let fx = Fixture::redis().await;
    let svc = Service::new(&fx).await;
    let joined = tokio::spawn({
        let svc = svc.clone();
        async move { svc.panics().await }
    })
    .await;
    assert!(joined.unwrap_err().is_panic());
    assert!(free_within(&fx.locker, "panics", Duration::from_millis(100)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_reported_after_the_body_finishes() {
    let fx = Fixture::redis().await;
    let svc = Service::new(&fx).await;
    let result = svc.outlives_its_lease_report().await;
    assert!(
        svc.finished.load(Ordering::SeqCst),
        "report mode must let the body finish"
    );
    assert!(
        matches!(result, Err(LockError::LeaseLost { ref key }) if key == "slow"),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_cancels_the_body_in_cancel_mode() {
    let fx = Fixture::redis().await;
    let svc = Service::new(&fx).await;
    let started = Instant::now();
    let result = svc.outlives_its_lease_cancel().await;
    assert!(
        matches!(result, Err(LockError::LeaseLost { .. })),
        "{result:?}"
    );
    assert!(
        !svc.finished.load(Ordering::SeqCst),
        "cancel mode let the body finish"
    );
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_gives_the_guards_fencing_token() {
    let fx = Fixture::redis().await;
    let svc = Service::new(&fx).await;
    let mut conn = fx.server().client().await;
    let before = server_micros(&mut conn).await;
    let first = svc.fenced_write(7).await.unwrap();
    let after = server_micros(&mut conn).await;
    // The acquisition's number is the server clock at the acquisition (the data model).
    assert!(
        (before..=after).contains(&first),
        "{before} {first} {after}"
    );
    assert!(svc.fenced_write(7).await.unwrap() > first);
    assert!(
        distlock::current().is_none(),
        "current() outside a locked body"
    );
}

/// The server's clock in microseconds (`TIME`).
async fn server_micros(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    seconds * 1_000_000 + micros
}

#[distributed_lock(key = "default:{n}", wait = "1s", lease = "2s")]
async fn uses_the_default_locker(n: u32) -> Result<u32, LockError> {
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_locker_argument_the_installed_default_is_used() {
    let fx = Fixture::redis().await;
    distlock::install(fx.locker.clone());
    let before = fx.server().command_calls("evalsha").await;
    assert_eq!(uses_the_default_locker(5).await.unwrap(), 5);
    assert_eq!(
        fx.server().command_calls("evalsha").await - before,
        2,
        "the call did not acquire and release on the installed locker"
    );
}

#[tokio::test]
async fn busy_in_error_mode_returns_not_acquired_without_running_the_body() {
    let fx = Fixture::redis().await;
    let svc = Service::new(&fx).await;
    let held = fx.locker.acquire("slow", LockOptions::new()).await.unwrap();
    let svc2 = svc.clone();
    // Another task: the holder's own task would re-enter.
    let result = tokio::spawn(async move { svc2.busy_try_once().await })
        .await
        .unwrap();
    assert!(
        matches!(result, Err(LockError::NotAcquired { ref key, .. }) if key == "slow"),
        "{result:?}"
    );
    assert!(
        !svc.finished.load(Ordering::SeqCst),
        "the body ran although the lock was busy"
    );
    held.release().await.unwrap();
}

impl Service {
    #[distributed_lock(key = "slow", wait = "0s", locker = self.locks)]
    async fn busy_try_once(&self) -> Result<(), LockError> {
        self.finished.store(true, Ordering::SeqCst);
        Ok(())
    }
}

struct Outage {
    locks: Locker,
    entered: Arc<tokio::sync::Notify>,
}

impl Outage {
    #[distributed_lock(key = "outage", locker = self.locks)]
    async fn work_until_lost(&self) -> Result<(), LockError> {
        self.entered.notify_one();
        distlock::current().expect("inside a lock").lost().await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_lost_to_a_dead_server_is_reported_although_the_release_fails_too() {
    let mut server = support::redis_server::RedisServer::start();
    let locks = Locker::builder(server.url())
        .watchdog_lease(Duration::from_millis(300))
        .response_timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let entered = Arc::new(tokio::sync::Notify::new());
    let outage = Outage {
        locks,
        entered: entered.clone(),
    };
    let call = tokio::spawn(async move { outage.work_until_lost().await });
    entered.notified().await; // the call holds the lock and runs its body
    server.kill();
    let result = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("hung")
        .unwrap();
    assert!(
        matches!(result, Err(LockError::LeaseLost { ref key }) if key == "outage"),
        "{result:?}"
    );
}
