//! Every public future is cancel-safe. Each of `acquire` (free and contended), `release`, a
//! release that hands the lock to a waiting task, and an annotated fn is dropped after its k-th
//! poll, for k = 1, 2, ... until it completes within k polls, on every engine of the conformance
//! suite (`conformance!`, tests/support/fixture.rs). After each drop:
//! (a) no lock is held beyond the background release bound, (b) no lock is handed to nobody (a
//! queued waiter of the same locker gets it promptly), (c) no task is left running.

mod support;

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use distlock::{LockError, LockGuard, LockOptions, Locker, distributed_lock};
use support::fixture::Fixture;
use support::probe::Probe;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long a lock may stay held, and a task alive, after the future that held or released it
/// was dropped. The background release is one round trip (at most the 3 s response timeout on a
/// stalled server); 5 s leaves room for a loaded 2-core CI machine, and stays far below `LEASE`,
/// so a lock that nothing releases fails the check instead of expiring in time.
const BACKGROUND_RELEASE_BOUND: Duration = Duration::from_secs(5);

/// Every lock taken here: only a release, never the expiry, can free it within the bound. The
/// lockers' watchdog lease is the default, the same 30 s.
const LEASE: Duration = Duration::from_secs(30);

/// A contended acquire tries once, then queues, subscribes, and tries again before it waits.
const ATTEMPTS_BEFORE_WAITING: u64 = 2;

/// No future here needs anywhere near this many polls: a guard against a run that never ends.
const MAX_POLLS: usize = 10_000;

/// For a future polled to the end.
const NEVER: Cut = Cut {
    polls: usize::MAX,
    when: When::Pending,
};

#[derive(Debug, Clone, Copy)]
enum Lease {
    Fixed,
    Watchdog,
}

impl Lease {
    fn options(self) -> LockOptions {
        match self {
            Lease::Fixed => LockOptions::new().lease(LEASE),
            Lease::Watchdog => LockOptions::new(),
        }
    }
}

/// Where a future under test is dropped: after its `polls`-th poll (0: unpolled), if that did not
/// complete it.
#[derive(Debug, Clone, Copy)]
struct Cut {
    polls: usize,
    when: When,
}

#[derive(Debug, Clone, Copy)]
enum When {
    /// As soon as that poll returned: a request may be in flight, unanswered.
    Pending,
    /// When it is next woken, without polling it again: the answer it awaited has come, unread
    /// (an outer `select!` whose other branch won the same round).
    Woken,
}

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{:?}", self.polls, self.when)
    }
}

/// Polls `fut` until `cut`, then drops it wherever it has got to, as an outer `timeout` or
/// `select!` would. `Some(output)` when it completed before. `first_pending` is told when the
/// first poll has returned without completing.
async fn poll_until<F: Future>(
    fut: F,
    cut: Cut,
    mut first_pending: Option<oneshot::Sender<()>>,
) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let mut polled = 0;
    let mut waiting_for_wake = false;
    std::future::poll_fn(|cx| {
        if waiting_for_wake || cut.polls == 0 {
            return Poll::Ready(None);
        }
        let poll = fut.as_mut().poll(cx);
        polled += 1;
        match poll {
            Poll::Ready(out) => Poll::Ready(Some(out)),
            Poll::Pending => {
                if let Some(tell) = first_pending.take() {
                    let _ = tell.send(());
                }
                match cut.when {
                    _ if polled < cut.polls => Poll::Pending,
                    When::Pending => Poll::Ready(None),
                    When::Woken => {
                        waiting_for_wake = true;
                        Poll::Pending
                    }
                }
            }
        }
    })
    .await
}

/// Runs `case(cut)` (which drops its future at `cut`, checks (a) and (b), and says whether the
/// future completed first) for every cut until the future completes, and checks (c) after each.
async fn at_every_poll<C, F>(what: &str, mut case: C)
where
    C: FnMut(Cut) -> F,
    F: Future<Output = bool>,
{
    let baseline = alive_tasks();
    let started = Instant::now();
    let mut completed_in = Vec::new();
    // Dropped before its first poll, a future has done nothing yet (a release still owns its
    // guard): once is enough.
    for (when, first) in [(When::Pending, 0), (When::Woken, 1)] {
        for polls in first..=MAX_POLLS {
            let cut = Cut { polls, when };
            let completed = case(cut).await;
            no_task_left_running(baseline, what, cut).await;
            if completed {
                completed_in.push(format!("at poll {polls} with {when:?} cuts"));
                break;
            }
            assert!(
                polls < MAX_POLLS,
                "{what}: not completed in {MAX_POLLS} polls"
            );
        }
    }
    eprintln!(
        "{what}: completed {}; {:?} in all",
        completed_in.join(", "),
        started.elapsed()
    );
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// (c): background work started by the drop ends within the bound.
async fn no_task_left_running(baseline: usize, what: &str, cut: Cut) {
    let deadline = Instant::now() + BACKGROUND_RELEASE_BOUND;
    while alive_tasks() > baseline {
        assert!(
            Instant::now() < deadline,
            "{what}, dropped at {cut}: {} tasks still alive, {baseline} before",
            alive_tasks()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// (a) and (b): `key` is free, or freed by a background release within the bound. Taken by a
/// task of the same locker, which queues like any local waiter: a lock handed to a place nobody
/// claims would keep it out for the whole lease. A task of its own, too: a task re-enters the
/// locks it holds, and this must ask the backend.
async fn freed_within_bound(locker: &Locker, key: &str, what: &str, cut: Cut) {
    let locker = locker.clone();
    let key = key.to_owned();
    let took = tokio::spawn(async move {
        let options = LockOptions::new()
            .wait(BACKGROUND_RELEASE_BOUND)
            .lease(LEASE);
        let guard = locker.acquire(&key, options).await?;
        guard.release().await
    })
    .await
    .expect("task");
    if let Err(error) = took {
        panic!("{what}, dropped at {cut}: the lock stayed held: {error}");
    }
}

/// Takes `key` from a task of its own (not re-entrant with the caller), and hands the guard back.
async fn hold_elsewhere(locker: &Locker, key: &str, options: LockOptions) -> LockGuard {
    let locker = locker.clone();
    let key = key.to_owned();
    tokio::spawn(async move { locker.acquire(&key, options).await })
        .await
        .expect("task")
        .expect("take the lock")
}

/// The probe for watching subscriptions and script calls (Redis only), made before the task
/// baseline.
async fn watcher(fx: &Fixture) -> Option<Probe> {
    fx.is_redis().then(|| fx.probe().clone())
}

/// Until a waiter for `key` has reached its wait, once its first poll has returned. Memory: that
/// first poll already queued and registered it (no I/O). Redis: it queues before it subscribes,
/// so a subscriber on the lock's channel (named by its hash tag) says it is queued.
async fn until_waiting(watcher: Option<Probe>, key: &str) {
    let Some(probe) = watcher else {
        return;
    };
    let pattern = format!("*{{{key}}}*");
    let deadline = Instant::now() + BACKGROUND_RELEASE_BOUND;
    loop {
        let channels = probe.channels(&pattern).await;
        if !channels.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the waiter for {key} never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Script calls the primaries have run (every lock step is one), whichever way they are sent.
async fn script_calls(probe: &Probe) -> u64 {
    probe
        .calls_of(&[
            "eval",
            "evalsha",
            "eval_ro",
            "evalsha_ro",
            "fcall",
            "fcall_ro",
        ])
        .await
}

/// Until a contended acquire, whose first poll has returned, waits for the release: Memory: that
/// first poll got it there (no I/O). Redis: once the server has run both its attempts (the first,
/// and the retry after it queued and subscribed) since `before` script calls; a release any
/// earlier would let the retry take the lock without ever waiting.
async fn until_retried(watcher: Option<Probe>, before: Option<u64>) {
    let (Some(probe), Some(before)) = (watcher, before) else {
        return;
    };
    let deadline = Instant::now() + BACKGROUND_RELEASE_BOUND;
    while script_calls(&probe).await < before + ATTEMPTS_BEFORE_WAITING {
        assert!(
            Instant::now() < deadline,
            "the contended acquire never sent its retry"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A task of `fx.locker` that waits for `key` (held by someone else); returned once it waits in
/// the queue. It resolves to when it got the lock (it then releases it).
async fn queued_waiter(
    fx: &Fixture,
    watcher: Option<Probe>,
    key: &str,
) -> JoinHandle<Result<Instant, LockError>> {
    let (first_poll_done, first_poll) = oneshot::channel();
    let locker = fx.locker.clone();
    let waited_key = key.to_owned();
    let waiter = tokio::spawn(async move {
        let options = LockOptions::new()
            .wait(BACKGROUND_RELEASE_BOUND)
            .lease(LEASE);
        let acquire = locker.acquire(&waited_key, options);
        let guard = poll_until(acquire, NEVER, Some(first_poll_done))
            .await
            .expect("polled to the end")?;
        let got = Instant::now();
        guard.release().await?;
        Ok(got)
    });
    let _ = first_poll.await;
    until_waiting(watcher, key).await;
    waiter
}

/// One contended acquire, so that the locker's long-lived tasks (connections, the subscriber)
/// run before the task baseline is taken.
async fn warm_up(fx: &Fixture, watcher: Option<Probe>) {
    let guard = fx
        .locker
        .acquire("warm-up", LockOptions::new().lease(LEASE))
        .await
        .expect("warm-up");
    let waiter = queued_waiter(fx, watcher, "warm-up").await;
    guard.release().await.expect("warm-up release");
    waiter.await.expect("task").expect("warm-up waiter");
}

async fn a_dropped_acquire_of_a_free_lock_leaves_nothing_behind(fx: Fixture) {
    let watcher = watcher(&fx).await;
    warm_up(&fx, watcher).await;
    let what = "acquire (free)";
    at_every_poll(what, |cut| {
        let fx = &fx;
        async move {
            let key = format!("free:{cut}");
            let acquire = fx.locker.acquire(&key, Lease::Fixed.options());
            let out = poll_until(acquire, cut, None).await;
            if let Some(guard) = &out {
                assert!(guard.is_ok(), "{guard:?}");
            }
            let completed = out.is_some();
            drop(out);
            freed_within_bound(&fx.locker, &key, what, cut).await;
            completed
        }
    })
    .await;
}

async fn a_dropped_contended_acquire_leaves_nothing_behind(fx: Fixture) {
    let watcher = watcher(&fx).await;
    // Held through the same locker, the lock is handed to the waiting acquire. Held through a
    // locker with connections of its own (Redis only: in memory that is the same store through a
    // clone), the acquire is woken by the release message and asks again.
    let mut holders = vec![("the same locker", fx.locker.clone())];
    if fx.is_redis() {
        holders.push(("another locker", fx.other_locker().await));
    }
    warm_up(&fx, watcher.clone()).await;
    for (through, holding) in &holders {
        let what = format!("acquire (contended, held through {through})");
        at_every_poll(&what, |cut| {
            let (fx, what, watcher) = (&fx, &what, watcher.clone());
            async move {
                let key = format!("contended:{through}:{cut}");
                let holder = hold_elsewhere(holding, &key, Lease::Fixed.options()).await;
                let (first_poll_done, first_poll) = oneshot::channel();
                let (dropped, dropped_rx) = oneshot::channel::<()>();
                let before = match &watcher {
                    Some(probe) => Some(script_calls(probe).await),
                    None => None,
                };
                // Releases once the acquire waits (so it has passed the queue, the subscription
                // and the retry), or once it was dropped before it got there.
                let releaser = tokio::spawn(async move {
                    let _ = first_poll.await;
                    tokio::select! {
                        () = until_retried(watcher, before) => {}
                        _ = dropped_rx => {}
                    }
                    holder.release().await
                });
                let options = Lease::Fixed.options().wait(LEASE);
                let acquire = fx.locker.acquire(&key, options);
                let out = poll_until(acquire, cut, Some(first_poll_done)).await;
                drop(dropped);
                releaser.await.expect("task").expect("holder's release");
                let completed = match out {
                    Some(guard) => {
                        guard.expect("acquire").release().await.expect("release");
                        true
                    }
                    None => false,
                };
                freed_within_bound(&fx.locker, &key, what, cut).await;
                completed
            }
        })
        .await;
    }
}

async fn a_dropped_release_still_releases(fx: Fixture) {
    let watcher = watcher(&fx).await;
    warm_up(&fx, watcher).await;
    for lease in [Lease::Fixed, Lease::Watchdog] {
        let what = format!("release ({lease:?} lease)");
        at_every_poll(&what, |cut| {
            let (fx, what) = (&fx, &what);
            async move {
                let key = format!("release:{lease:?}:{cut}");
                let guard = fx.locker.acquire(&key, lease.options()).await.unwrap();
                let out = poll_until(guard.release(), cut, None).await;
                if let Some(released) = &out {
                    assert!(released.is_ok(), "{released:?}");
                }
                freed_within_bound(&fx.locker, &key, what, cut).await;
                out.is_some()
            }
        })
        .await;
    }
}

async fn a_release_dropped_during_a_hand_over_still_hands_the_lock_over(fx: Fixture) {
    let watcher = watcher(&fx).await;
    warm_up(&fx, watcher.clone()).await;
    for lease in [Lease::Fixed, Lease::Watchdog] {
        let what = format!("release handing over ({lease:?} lease)");
        let slowest = Cell::new(Duration::ZERO);
        at_every_poll(&what, |cut| {
            let (fx, what, watcher, slowest) = (&fx, &what, watcher.clone(), &slowest);
            async move {
                let key = format!("hand-over:{lease:?}:{cut}");
                let guard = fx.locker.acquire(&key, lease.options()).await.unwrap();
                let waiter = queued_waiter(fx, watcher, &key).await;
                let out = poll_until(guard.release(), cut, None).await;
                let dropped_at = Instant::now();
                if let Some(released) = &out {
                    assert!(released.is_ok(), "{released:?}");
                }
                // (b): the waiter's wait is the bound, far below the lease: a lock handed to
                // nobody makes it give up with NotAcquired.
                match waiter.await.expect("task") {
                    Ok(got) => {
                        slowest.set(slowest.get().max(got.saturating_duration_since(dropped_at)))
                    }
                    Err(error) => panic!(
                        "{what}, dropped at {cut}: the queued waiter never got the lock: \
                         {error}"
                    ),
                }
                freed_within_bound(&fx.locker, &key, what, cut).await;
                out.is_some()
            }
        })
        .await;
        let slowest = slowest.get();
        eprintln!("{what}: the waiter got the lock at most {slowest:?} after the drop");
    }
}

#[distributed_lock(key = "fn-fixed:{cut}", wait = "5s", lease = "30s", locker = locker)]
async fn locked_with_a_fixed_lease(locker: &Locker, cut: Cut) -> Result<(), LockError> {
    tokio::task::yield_now().await; // a cancellation point inside the body
    Ok(())
}

#[distributed_lock(key = "fn-watchdog:{cut}", wait = "5s", locker = locker)]
async fn locked_with_the_watchdog(locker: &Locker, cut: Cut) -> Result<(), LockError> {
    tokio::task::yield_now().await; // a cancellation point inside the body
    Ok(())
}

/// Skip mode releases through another generated path (`finish_skip`).
#[distributed_lock(key = "fn-skip:{cut}", wait = "5s", lease = "30s", on_busy = "skip", locker = locker)]
async fn locked_or_skipped(locker: &Locker, cut: Cut) -> Option<()> {
    tokio::task::yield_now().await; // a cancellation point inside the body
    Some(())
}

#[derive(Debug, Clone, Copy)]
enum Annotated {
    FixedLease,
    Watchdog,
    SkipWhenBusy,
}

async fn a_dropped_annotated_call_leaves_nothing_behind(fx: Fixture) {
    let watcher = watcher(&fx).await;
    warm_up(&fx, watcher).await;
    for annotated in [
        Annotated::FixedLease,
        Annotated::Watchdog,
        Annotated::SkipWhenBusy,
    ] {
        let what = format!("annotated fn ({annotated:?})");
        at_every_poll(&what, |cut| {
            let (fx, what, locker) = (&fx, &what, &fx.locker);
            async move {
                let (completed, key) = match annotated {
                    Annotated::FixedLease => {
                        let out = poll_until(locked_with_a_fixed_lease(locker, cut), cut, None);
                        let out = out.await;
                        assert!(out.as_ref().is_none_or(Result::is_ok), "{out:?}");
                        (out.is_some(), format!("fn-fixed:{cut}"))
                    }
                    Annotated::Watchdog => {
                        let out = poll_until(locked_with_the_watchdog(locker, cut), cut, None);
                        let out = out.await;
                        assert!(out.as_ref().is_none_or(Result::is_ok), "{out:?}");
                        (out.is_some(), format!("fn-watchdog:{cut}"))
                    }
                    Annotated::SkipWhenBusy => {
                        let out = poll_until(locked_or_skipped(locker, cut), cut, None).await;
                        assert_ne!(out, Some(None), "the free lock was skipped");
                        (out.is_some(), format!("fn-skip:{cut}"))
                    }
                };
                freed_within_bound(&fx.locker, &key, what, cut).await;
                completed
            }
        })
        .await;
    }
}

conformance!(
    a_dropped_acquire_of_a_free_lock_leaves_nothing_behind,
    a_dropped_contended_acquire_leaves_nothing_behind,
    a_dropped_release_still_releases,
    a_release_dropped_during_a_hand_over_still_hands_the_lock_over,
    a_dropped_annotated_call_leaves_nothing_behind,
);

/// The Redis runs again, the locker under test talking through a proxy that delays every chunk:
/// then no answer can arrive within the poll that sent its request, so each await of a Redis step
/// is surely a cut point (on loopback a fast answer may not leave one).
mod redis_backend_slow_link {
    use std::time::Duration;

    use distlock::Locker;

    use super::support::fixture::Fixture;
    use super::support::proxy::Proxy;
    use super::support::redis_server::RedisServer;

    /// Each direction: a round trip takes at least 2 ms, far longer than a poll.
    const DELAY: Duration = Duration::from_millis(1);

    macro_rules! slow_link {
        ($($name:ident),* $(,)?) => {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let server = RedisServer::start();
                    let proxy = Proxy::start(server.port());
                    proxy.delay(DELAY);
                    let locker = Locker::connect(&proxy.url()).await.expect("connect");
                    let fx = Fixture::on_server(server, locker).await;
                    super::$name(fx).await;
                    drop(proxy);
                }
            )*
        };
    }

    slow_link!(
        a_dropped_acquire_of_a_free_lock_leaves_nothing_behind,
        a_dropped_contended_acquire_leaves_nothing_behind,
        a_dropped_release_still_releases,
        a_release_dropped_during_a_hand_over_still_hands_the_lock_over,
        a_dropped_annotated_call_leaves_nothing_behind,
    );
}

/// A waker that records that it was woken, for a future polled by hand.
struct Woken(std::sync::atomic::AtomicBool);

impl std::task::Wake for Woken {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A release message wakes one waiter of a locker. If that waiter takes the wake-up, sends its
/// retry and is dropped before the answer, the next waiter of the same locker must be woken in
/// its place: otherwise it sleeps beside a free lock until its wait runs out (seen in the fault
/// suite's cancellation row). Redis only: the memory engine answers within the first poll.
#[tokio::test]
async fn a_woken_waiter_dropped_before_its_retry_is_answered_passes_the_wake_up_on() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::task::{Context, Waker};

    let fx = Fixture::redis().await;
    let key = "passed-on";
    let holders = fx.other_locker().await;
    let watcher = fx.probe().clone();
    let holder = holders
        .acquire(key, LockOptions::new().lease(LEASE))
        .await
        .expect("holder");

    // The first waiter, polled by hand: whenever woken, until the server has run both its
    // attempts (it then sleeps, first in line for the locker's wake-up).
    let before = script_calls(&watcher).await;
    let woken = Arc::new(Woken(std::sync::atomic::AtomicBool::new(true)));
    let waker = Waker::from(Arc::clone(&woken));
    let mut cx = Context::from_waker(&waker);
    let mut first = Box::pin(
        fx.locker.acquire(
            key,
            LockOptions::new()
                .wait(BACKGROUND_RELEASE_BOUND * 2)
                .lease(LEASE),
        ),
    );
    let deadline = Instant::now() + BACKGROUND_RELEASE_BOUND;
    while script_calls(&watcher).await < before + ATTEMPTS_BEFORE_WAITING {
        if woken.0.swap(false, Ordering::SeqCst) {
            assert!(
                first.as_mut().poll(&mut cx).is_pending(),
                "the lock is held"
            );
        }
        assert!(Instant::now() < deadline, "the first waiter never retried");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Let it take in the answer to its retry, and sleep.
    while woken.0.swap(false, Ordering::SeqCst) {
        assert!(
            first.as_mut().poll(&mut cx).is_pending(),
            "the lock is held"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    // The second waiter, on its own task, behind it.
    let second = {
        let locker = fx.locker.clone();
        tokio::spawn(async move {
            let options = LockOptions::new()
                .wait(BACKGROUND_RELEASE_BOUND)
                .lease(LEASE);
            let guard = locker.acquire(key, options).await?;
            let got = Instant::now();
            guard.release().await?;
            Ok::<_, LockError>(got)
        })
    };
    until_retried(Some(watcher.clone()), Some(before + 2)).await;

    // The release's message wakes the first waiter; it takes the wake-up, sends its retry, and
    // is dropped before the answer.
    holder.release().await.expect("release");
    let released = Instant::now();
    while !woken.0.load(Ordering::SeqCst) {
        assert!(
            released.elapsed() < BACKGROUND_RELEASE_BOUND,
            "the first waiter was never woken"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        first.as_mut().poll(&mut cx).is_pending(),
        "the retry needs a round trip"
    );
    drop(first);

    let got = second.await.expect("task").expect("the second waiter");
    assert!(
        got - released < BACKGROUND_RELEASE_BOUND,
        "the second waiter got the free lock only {:?} after the release",
        got - released
    );
}
