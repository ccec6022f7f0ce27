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

/// Scheduled jobs in skip mode that return a `Result`, as jobs written with `anyhow` do.
struct Jobs {
    locks: Locker,
    runs: AtomicUsize,
}

impl Jobs {
    fn new(locks: Locker) -> Arc<Self> {
        Arc::new(Jobs {
            locks,
            runs: AtomicUsize::new(0),
        })
    }

    #[distributed_lock(key = "report", wait = "0s", on_busy = "skip", locker = self.locks)]
    async fn report(&self) -> anyhow::Result<()> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    #[distributed_lock(key = "report", wait = "0s", on_busy = "skip", locker = self.locks)]
    async fn report_rows(&self) -> Result<Option<usize>, AppError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(Some(3))
    }

    /// `()` has no error to return: a failure is logged and the run skipped.
    #[distributed_lock(key = "report", wait = "0s", on_busy = "skip", locker = self.locks)]
    async fn report_quietly(&self) {
        self.runs.fetch_add(1, Ordering::SeqCst);
    }

    #[distributed_lock(key = "report", wait = "0s", locker = self.locks)]
    async fn export(&self) -> std::io::Result<()> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    #[distributed_lock(key = "short", lease = "100ms", on_busy = "skip", locker = self.locks)]
    async fn outlives_its_lease(&self) -> anyhow::Result<()> {
        tokio::time::sleep(Duration::from_millis(400)).await;
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A locker on a server that is gone: every command fails fast (refused connection, or no
/// answer within the short timeouts).
async fn locker_of_a_stopped_server() -> Locker {
    let mut server = support::redis_server::RedisServer::start();
    let locks = Locker::builder(server.url())
        .response_timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    server.kill();
    locks
}

/// The lock error an `io::Error` carries (its `source()` is the `LockError`'s source, not it).
fn lock_error_in_io(error: &std::io::Error) -> Option<&LockError> {
    error.get_ref()?.downcast_ref::<LockError>()
}

/// Runs `call`, failing the test if it hangs: the locker gives up within its 200 ms timeouts,
/// so 10 s leaves a loaded 2-core machine plenty of room.
async fn within<F: std::future::Future>(call: F) -> Result<F::Output, tokio::time::error::Elapsed> {
    tokio::time::timeout(Duration::from_secs(10), call).await
}

/// The lock error inside whatever error type a job returned.
fn lock_error_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a LockError> {
    std::iter::successors(Some(error), |e| e.source()).find_map(|e| e.downcast_ref::<LockError>())
}

#[tokio::test]
async fn skip_mode_in_a_result_fn_returns_ok_without_running_the_body_when_busy() {
    let locks = Locker::in_memory();
    let jobs = Jobs::new(locks.clone());
    let held = locks.acquire("report", LockOptions::new()).await.unwrap();
    // Another task, as another replica's run would be (this task would re-enter its own lock).
    let (report, rows, export) = tokio::spawn({
        let jobs = jobs.clone();
        async move {
            (
                jobs.report().await,
                jobs.report_rows().await,
                jobs.export().await,
            )
        }
    })
    .await
    .unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert!(matches!(rows, Ok(None)), "{rows:?}");
    assert_eq!(jobs.runs.load(Ordering::SeqCst), 0, "a body ran while busy");
    // Error mode in an `io::Result` fn: busy is `ResourceBusy`, the `LockError` inside.
    let export = export.unwrap_err();
    assert_eq!(export.kind(), std::io::ErrorKind::ResourceBusy);
    assert!(lock_error_in_io(&export).is_some_and(LockError::is_not_acquired));
    held.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_mode_in_a_result_fn_returns_a_backend_failure_as_an_error() {
    let jobs = Jobs::new(locker_of_a_stopped_server().await);
    let report = within(jobs.report()).await.expect("hung").unwrap_err();
    assert!(
        matches!(
            lock_error_in(report.as_ref()),
            Some(LockError::Backend { .. })
        ),
        "{report:?}"
    );
    let rows = within(jobs.report_rows()).await.expect("hung");
    assert!(
        matches!(rows, Err(AppError::Lock(LockError::Backend { .. }))),
        "{rows:?}"
    );
    let export = within(jobs.export()).await.expect("hung").unwrap_err();
    assert_eq!(export.kind(), std::io::ErrorKind::Other);
    assert!(matches!(
        lock_error_in_io(&export),
        Some(LockError::Backend { .. })
    ));
    // `()` cannot carry the error: the run is skipped (and the failure logged at ERROR).
    within(jobs.report_quietly()).await.expect("hung");
    assert_eq!(jobs.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_mode_in_a_result_fn_reports_a_lost_lease_as_an_error() {
    let fx = Fixture::redis().await;
    let jobs = Jobs::new(fx.locker.clone());
    let result = jobs.outlives_its_lease().await;
    assert_eq!(
        jobs.runs.load(Ordering::SeqCst),
        1,
        "the body did not finish"
    );
    let error = result.unwrap_err();
    assert!(
        lock_error_in(error.as_ref()).is_some_and(LockError::is_lease_lost),
        "{error:?}"
    );
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
    // Another task, as the caller would be in practice (this task, outside the lock's scope, would
    // be refused the same way).
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

impl Service {
    #[distributed_lock(key = "mixed", lease = "5s", locker = self.locks)]
    async fn fixed_lease_around_watchdog(&self) -> Result<(), LockError> {
        self.watchdog_call().await
    }

    #[distributed_lock(key = "mixed", locker = self.locks)]
    async fn watchdog_call(&self) -> Result<(), LockError> {
        self.finished.store(true, Ordering::SeqCst);
        Ok(())
    }

    #[distributed_lock(key = "grown", lease = "200ms", locker = self.locks)]
    async fn short_lease_around_long_lease(&self) -> Result<(), LockError> {
        self.long_lease_call().await
    }

    /// Outlives the outer call's lease (twice over, for a loaded machine) under its own.
    #[distributed_lock(key = "grown", lease = "10s", locker = self.locks)]
    async fn long_lease_call(&self) -> Result<(), LockError> {
        tokio::time::sleep(Duration::from_millis(400)).await;
        self.finished.store(true, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_watchdog_call_inside_a_fixed_lease_is_refused_before_its_body() {
    let fx = Fixture::redis().await;
    let svc = Service::new(&fx).await;
    let result = svc.fixed_lease_around_watchdog().await;
    assert!(
        matches!(result, Err(LockError::InvalidOptions { key: Some(ref key), .. }) if key == "mixed"),
        "{result:?}"
    );
    assert!(
        !svc.finished.load(Ordering::SeqCst),
        "the nested body ran without the protection it asked for"
    );
    assert!(free_within(&fx.locker, "mixed", Duration::ZERO).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_call_with_a_longer_lease_keeps_the_lock_for_it() {
    let fx = Fixture::redis().await;
    let svc = Service::new(&fx).await;
    svc.short_lease_around_long_lease()
        .await
        .expect("the nested call ran under its own lease, not the outer one");
    assert!(svc.finished.load(Ordering::SeqCst));
    assert!(free_within(&fx.locker, "grown", Duration::ZERO).await);
}
