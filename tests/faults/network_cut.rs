//! Fault 5: the network between some lockers and Redis breaks, two ways: cut (every connection
//! reset, new ones refused) and stalled (a blackhole: connections stay open, nothing gets
//! through, so every request hangs until its response timeout). Then it heals.
//!
//! Three lockers reach Redis through the fault proxy (`support/proxy.rs`): a holder keeping a
//! lock with the watchdog, and two waiters. A fourth locker reaches Redis directly and waits for
//! the holder's lock. Promised, for each way of breaking:
//!
//! - the holder reports the loss (`lost()` resolves) before the direct waiter can take the lock,
//!   that is before the lease ends on the server, and at the latest when its own view of the
//!   lease ends (counted from the last renewal that got an answer), even when a renewal hangs;
//! - an acquire behind the fault returns `Backend` or `NotAcquired` within
//!   max(wait, response timeout), never later, whether it was already waiting or started during
//!   the fault;
//! - nothing the fault swallowed leaves a lock behind once the network heals (a stalled acquire
//!   reaches the server late, followed by its compare-and-delete);
//! - after the heal every locker works again by itself (reconnects), including the pub/sub
//!   wake-ups; the time to the first successful acquire is reported.

use std::time::Duration;

use distlock::{LockError, LockGuard, LockOptions, Locker};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::report::FaultRow;
use crate::support::checker;
use crate::support::proxy::Proxy;
use crate::support::records::{Record, monotonic_ns};
use crate::support::redis_server::{RedisServer, wait_until_unlocked};
use crate::within;

/// Short, so a trial takes seconds; the renewal leaves room for three renewals per lease.
const WATCHDOG_LEASE: Duration = Duration::from_secs(2);
const RENEWAL: Duration = Duration::from_millis(600);
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(300);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The waiters' wait: longer than a response timeout, shorter than the fault.
const WAIT: Duration = Duration::from_millis(1500);
/// Scheduling slack on top of every promised bound: a loaded 2-core CI machine, debug build.
const MARGIN: Duration = Duration::from_millis(250);
/// A fixed lease long enough that a lock left behind would still be there when we look, so
/// "the key vanished" can only mean a compare-and-delete removed it.
const LONG_LEASE: Duration = Duration::from_secs(30);
/// After the heal: how long until every locker must have acquired again. The command
/// connection reconnects on the first request after the fault (its backoff restarts there).
const RECOVERY_BOUND: Duration = Duration::from_secs(2);
/// A release must wake a waiter on another locker within this once the network is back
/// (through pub/sub: the holder's lease is far longer).
const WAKE_BOUND: Duration = Duration::from_secs(1);
/// Nothing in this fault may take longer than this: "nothing hangs".
const HANG_BOUND: Duration = Duration::from_secs(10);
/// The application's pause before trying again after a Backend error.
const APP_RETRY: Duration = Duration::from_millis(10);

pub fn run() -> FaultRow {
    crate::runtime().block_on(network_cut())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Break {
    Cut,
    Stall,
}

impl Break {
    fn name(self) -> &'static str {
        match self {
            Break::Cut => "cut",
            Break::Stall => "stall",
        }
    }

    fn inject(self, proxy: &Proxy) {
        match self {
            Break::Cut => proxy.cut(),
            Break::Stall => proxy.stall(),
        }
    }
}

/// The lockers of the trial: three through the proxy, one direct.
struct Lockers {
    holder: Locker,
    waiters: [Locker; 2],
    direct: Locker,
}

impl Lockers {
    fn through_proxy(&self) -> [(&'static str, &Locker); 3] {
        [
            ("holder", &self.holder),
            ("waiter 1", &self.waiters[0]),
            ("waiter 2", &self.waiters[1]),
        ]
    }
}

async fn locker(url: String) -> Locker {
    Locker::builder(url)
        .watchdog_lease(WATCHDOG_LEASE)
        .renewal_interval(RENEWAL)
        .response_timeout(RESPONSE_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .await
        .expect("connect")
}

/// What one round (one way of breaking) measured.
struct Round {
    /// From the fault to the holder's loss report.
    loss_after_fault: Duration,
    /// What the holder's lease had left on the server right after the holder was told (None:
    /// it had ended there already).
    server_left_at_report: Option<Duration>,
    /// How long before the direct waiter got the lock the holder was told (negative: after).
    loss_lead_ms: f64,
    /// The latest any acquire behind the fault returned, relative to its bound.
    worst_acquire_vs_bound_ms: f64,
    /// What the acquires behind the fault returned, e.g. "4 Backend, 2 NotAcquired".
    outcomes: String,
    /// From the heal to the last through-proxy locker's first successful acquire.
    recovery: Duration,
    /// From the heal until a new waiter's subscription reached the server (the recovery
    /// acquires and the holder's release come first).
    subscribed_after_heal: Duration,
    /// From a release to a waiter on another through-proxy locker getting the lock, after heal.
    wake_after_heal: Duration,
    /// From the heal until every key the fault touched was free again.
    cleaned_after_heal: Duration,
    /// New connections the proxy accepted from the heal to the end of the round.
    reconnections: u64,
    records: Vec<Record>,
    broken: Vec<String>,
}

async fn network_cut() -> FaultRow {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let lockers = Lockers {
        holder: locker(proxy.url()).await,
        waiters: [locker(proxy.url()).await, locker(proxy.url()).await],
        direct: locker(server.url()).await,
    };

    let mut rounds = Vec::new();
    for kind in [Break::Cut, Break::Stall] {
        let round = round(kind, &server, &proxy, &lockers).await;
        println!(
            "  {}: loss reported {:.0} ms after the fault (lease on the server: {}), \
             {:.1} ms before the direct waiter got the lock; acquires behind it: {} (latest \
             {:+.0} ms vs its bound); after heal: reacquired in {:.1} ms, subscribed at {:.1} ms, \
             wake-up in {:.1} ms, keys clean in {:.1} ms, {} reconnections",
            kind.name(),
            round.loss_after_fault.as_secs_f64() * 1e3,
            left_on_server(round.server_left_at_report),
            round.loss_lead_ms,
            round.outcomes,
            round.worst_acquire_vs_bound_ms,
            round.recovery.as_secs_f64() * 1e3,
            round.subscribed_after_heal.as_secs_f64() * 1e3,
            round.wake_after_heal.as_secs_f64() * 1e3,
            round.cleaned_after_heal.as_secs_f64() * 1e3,
            round.reconnections,
        );
        rounds.push(round);
    }

    let records: Vec<Record> = rounds.iter().flat_map(|r| r.records.clone()).collect();
    let report = checker::check(&records);
    let mut broken: Vec<String> = rounds.iter().flat_map(|r| r.broken.clone()).collect();
    if report.total.unreported_overlaps > 0 {
        broken.push(format!(
            "a holder was still inside, not told, when another holder entered: {report}"
        ));
    }
    assert!(
        broken.is_empty(),
        "network faults broke {} promise(s):\n  - {}",
        broken.len(),
        broken.join("\n  - ")
    );

    let (cut, stall) = (&rounds[0], &rounds[1]);
    let worst_recovery = rounds.iter().map(|r| r.recovery).max();
    FaultRow {
        fault: "Network cut / blackhole (proxy)",
        injected: format!(
            "proxy between 3 lockers and Redis: cut (RST), then stalled; watchdog lease \
             {WATCHDOG_LEASE:?}, renewal {RENEWAL:?}, response timeout {RESPONSE_TIMEOUT:?}, \
             waiters' wait {WAIT:?}"
        ),
        sections: records.len() as u64,
        overlaps: report.total.unreported_overlaps,
        lost: rounds.len() as u64,
        lost_reported: rounds.len() as u64,
        recovery: worst_recovery,
        notes: format!(
            "loss reported {:.1} ms (cut) / {:.1} ms (stall) before the direct waiter got the \
             lock (lease on the server then: {} / {}); every acquire behind the fault returned \
             within max(wait, response timeout) (latest {:+.0} / {:+.0} ms vs bound); nothing \
             left locked; lockers reconnected by themselves ({} / {} new connections)",
            cut.loss_lead_ms,
            stall.loss_lead_ms,
            left_on_server(cut.server_left_at_report),
            left_on_server(stall.server_left_at_report),
            cut.worst_acquire_vs_bound_ms,
            stall.worst_acquire_vs_bound_ms,
            cut.reconnections,
            stall.reconnections,
        ),
    }
}

/// An acquire behind the fault: when it started and ended, what it returned.
struct Behind {
    who: String,
    started: Instant,
    ended: Instant,
    outcome: Outcome,
    /// On a free key NotAcquired would be a lie: nobody holds it.
    free_key: bool,
}

enum Outcome {
    Backend,
    NotAcquired,
    /// Anything else, as its message ("acquired" when it got through).
    Other(String),
}

impl Outcome {
    fn describe(&self) -> &str {
        match self {
            Outcome::Backend => "Backend",
            Outcome::NotAcquired => "NotAcquired",
            Outcome::Other(what) => what,
        }
    }
}

impl Behind {
    /// Backend, or NotAcquired on a key someone holds.
    fn acceptable(&self) -> bool {
        match self.outcome {
            Outcome::Backend => true,
            Outcome::NotAcquired => !self.free_key,
            Outcome::Other(_) => false,
        }
    }
}

/// Spawns an acquire of `key` that is expected to fail because of the fault.
fn behind_the_fault(
    who: String,
    locker: &Locker,
    key: String,
    options: LockOptions,
    free_key: bool,
) -> JoinHandle<Behind> {
    let locker = locker.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let result = locker.acquire(&key, options).await;
        let ended = Instant::now();
        let outcome = match result {
            Err(LockError::Backend { .. }) => Outcome::Backend,
            Err(LockError::NotAcquired { .. }) => Outcome::NotAcquired,
            Err(e) => Outcome::Other(e.to_string()),
            Ok(guard) => {
                let _ = guard.release().await;
                Outcome::Other("acquired".to_owned())
            }
        };
        Behind {
            who,
            started,
            ended,
            outcome,
            free_key,
        }
    })
}

async fn round(kind: Break, server: &RedisServer, proxy: &Proxy, lockers: &Lockers) -> Round {
    let name = kind.name();
    let held_key = format!("net:{name}:held");
    let busy_key = format!("net:{name}:busy");
    let mut broken = Vec::new();
    let mut records = Vec::new();

    // The holder keeps its lock with the watchdog, through the proxy.
    let guard = lockers
        .holder
        .acquire(&held_key, LockOptions::new().wait(Duration::ZERO))
        .await
        .expect("the holder takes its free lock");
    let holder_enter = monotonic_ns();
    let holder_fence = guard.fencing_token();
    let loss = {
        let lost = guard.lost();
        let mut admin = server.client().await;
        let key = held_key.clone();
        tokio::spawn(async move {
            lost.await;
            let (at, ns) = (Instant::now(), monotonic_ns());
            // Where the server stood when the holder was told.
            let left = lease_left_on_server(&mut admin, &key, holder_fence).await;
            (at, ns, left)
        })
    };
    // Another holder, direct, keeps the waiters' key busy for longer than the fault.
    let blocker = lockers
        .direct
        .acquire(
            &busy_key,
            LockOptions::new().wait(Duration::ZERO).lease(LONG_LEASE),
        )
        .await
        .expect("the blocker takes its free lock");
    // The direct waiter: it gets the holder's lock when the lease runs out on the server.
    let successor = {
        let (locker, key) = (lockers.direct.clone(), held_key.clone());
        tokio::spawn(async move {
            let guard = locker
                .acquire(&key, LockOptions::new().wait(HANG_BOUND))
                .await;
            let (acquired_at, enter_ns) = (Instant::now(), monotonic_ns());
            (acquired_at, enter_ns, guard)
        })
    };

    // Let the holder renew at least once, then break the network at a random point of its
    // renewal cycle: which renewal the fault swallows is part of the fault.
    let phase = RENEWAL + RENEWAL.mul_f64(fastrand::f64());
    tokio::time::sleep(phase).await;

    // Waiters through the proxy, already waiting (subscribed) when the fault hits.
    let mut behind = Vec::new();
    for (i, waiter) in lockers.waiters.iter().enumerate() {
        behind.push(behind_the_fault(
            format!("waiter {} (already waiting)", i + 1),
            waiter,
            busy_key.clone(),
            LockOptions::new().wait(WAIT),
            false,
        ));
    }
    wait_until_subscribed(server, &[(&busy_key, 2), (&held_key, 1)]).await;

    kind.inject(proxy);
    let fault_at = Instant::now();

    // Acquires started during the fault, one per locker through the proxy, on free keys with a
    // long lease: a stalled one reaches the server after the heal and must not stay locked.
    let mut fresh_keys = Vec::new();
    for (who, locker) in lockers.through_proxy() {
        let key = format!("net:{name}:fresh:{who}");
        behind.push(behind_the_fault(
            format!("{who} (fresh, free key)"),
            locker,
            key.clone(),
            LockOptions::new().wait(WAIT).lease(LONG_LEASE),
            true,
        ));
        fresh_keys.push(key);
    }

    // The holder's report and the direct waiter's acquire: the order is the promise.
    let (lost_at, lost_ns, server_left_at_report) =
        within(HANG_BOUND, "the holder's loss report", loss)
            .await
            .expect("loss watcher");
    let (acquired_at, successor_enter, successor_guard) =
        within(HANG_BOUND, "the direct waiter's acquire", successor)
            .await
            .expect("successor task");
    let successor_guard = successor_guard.unwrap_or_else(|e| {
        panic!("{name}: the direct waiter did not get the lock the holder lost: {e}")
    });
    let successor_fence = successor_guard.fencing_token();
    let successor_exit = monotonic_ns();
    successor_guard
        .release()
        .await
        .unwrap_or_else(|e| panic!("{name}: the direct waiter's release failed: {e}"));
    // The holder believed it held until it was told; the successor from its acquire.
    records.push(Record::section(
        &held_key,
        holder_fence,
        0,
        holder_enter,
        lost_ns,
        false,
    ));
    records.push(Record::section(
        &held_key,
        successor_fence,
        1,
        successor_enter,
        successor_exit,
        false,
    ));

    let loss_after_fault = lost_at - fault_at;
    let loss_lead_ms = signed_ms(acquired_at, lost_at);
    if lost_at >= acquired_at {
        broken.push(format!(
            "{name}: the holder was told of its loss {:.1} ms AFTER the direct waiter got the \
             lock (the lease had ended on the server)",
            -loss_lead_ms
        ));
    }
    // The last renewal that got an answer was sent before the fault, so the holder's own view
    // of the lease ends before fault + lease.
    if loss_after_fault > WATCHDOG_LEASE + MARGIN {
        broken.push(format!(
            "{name}: the loss was reported {loss_after_fault:?} after the fault, past the \
             watchdog lease {WATCHDOG_LEASE:?} + {MARGIN:?}"
        ));
    }

    // Every acquire behind the fault returned in time, with Backend or NotAcquired.
    let bound = WAIT.max(RESPONSE_TIMEOUT) + MARGIN;
    let mut worst_acquire_vs_bound_ms = f64::MIN;
    let (mut backend, mut not_acquired) = (0, 0);
    for task in behind {
        let b = within(HANG_BOUND, "an acquire behind the fault", task)
            .await
            .expect("acquire task");
        let took = b.ended - b.started;
        worst_acquire_vs_bound_ms = worst_acquire_vs_bound_ms
            .max(signed_ms(b.ended, b.started + WAIT.max(RESPONSE_TIMEOUT)));
        match b.outcome {
            Outcome::Backend => backend += 1,
            Outcome::NotAcquired => not_acquired += 1,
            Outcome::Other(_) => {}
        }
        if !b.acceptable() {
            broken.push(format!(
                "{name}: {} through the broken network returned {}; expected Backend{}",
                b.who,
                b.outcome.describe(),
                if b.free_key { "" } else { " or NotAcquired" }
            ));
        }
        if took > bound {
            broken.push(format!(
                "{name}: {} returned after {took:?}, past max(wait {WAIT:?}, response timeout \
                 {RESPONSE_TIMEOUT:?}) + {MARGIN:?}",
                b.who
            ));
        }
    }
    let outcomes = format!("{backend} Backend, {not_acquired} NotAcquired");

    blocker
        .release()
        .await
        .unwrap_or_else(|e| panic!("{name}: the blocker's release failed: {e}"));

    // Heal: every locker through the proxy must work again by itself.
    let accepted_before = proxy.accepted();
    proxy.heal();
    let healed_at = Instant::now();
    let mut firsts = Vec::new();
    for (i, (who, locker)) in lockers.through_proxy().into_iter().enumerate() {
        let (locker, key) = (locker.clone(), format!("net:{name}:after:{i}"));
        firsts.push(tokio::spawn(async move {
            let guard = first_success(&locker, &key, healed_at).await;
            let (at, enter) = (Instant::now(), monotonic_ns());
            let fence = guard.fencing_token();
            guard
                .release()
                .await
                .unwrap_or_else(|e| panic!("{who}: release after the heal failed: {e}"));
            (
                at - healed_at,
                Record::section(&key, fence, 10 + i as u32, enter, monotonic_ns(), false),
            )
        }));
    }
    let mut recovery = Duration::ZERO;
    for task in firsts {
        let (took, record) = task.await.expect("recovery task");
        recovery = recovery.max(took);
        records.push(record);
    }
    if recovery > RECOVERY_BOUND {
        broken.push(format!(
            "{name}: a locker through the proxy first acquired {recovery:?} after the heal, \
             bound {RECOVERY_BOUND:?}"
        ));
    }

    // The holder learns at release what it was told: the lease is gone.
    let released = guard.release().await;
    if !matches!(released, Err(LockError::LeaseLost { .. })) {
        broken.push(format!(
            "{name}: the holder's release after the heal returned {released:?}, expected \
             LeaseLost"
        ));
    }

    // The pub/sub wake-ups work again too: a release on one locker wakes a waiter on another
    // long before the lease would (a fixed 30 s lease here).
    let wake_key = format!("net:{name}:wake");
    let wake_holder = lockers
        .holder
        .acquire(
            &wake_key,
            LockOptions::new().wait(Duration::ZERO).lease(LONG_LEASE),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: acquire after the heal: {e}"));
    let woken = {
        let (locker, key) = (lockers.waiters[0].clone(), wake_key.clone());
        tokio::spawn(async move {
            let guard = locker
                .acquire(&key, LockOptions::new().wait(HANG_BOUND))
                .await;
            (Instant::now(), guard)
        })
    };
    wait_until_subscribed(server, &[(&wake_key, 1)]).await;
    let subscribed_after_heal = healed_at.elapsed();
    let released_at = Instant::now();
    wake_holder
        .release()
        .await
        .unwrap_or_else(|e| panic!("{name}: release after the heal: {e}"));
    let (woken_at, woken_guard) = within(HANG_BOUND, "the woken waiter", woken)
        .await
        .expect("woken waiter task");
    let woken_guard =
        woken_guard.unwrap_or_else(|e| panic!("{name}: the waiter after the heal: {e}"));
    woken_guard
        .release()
        .await
        .unwrap_or_else(|e| panic!("{name}: release after the heal: {e}"));
    let wake_after_heal = woken_at - released_at;
    if wake_after_heal > WAKE_BOUND {
        broken.push(format!(
            "{name}: a waiter on another locker got a released lock {wake_after_heal:?} after \
             the release, bound {WAKE_BOUND:?} (pub/sub not back?)"
        ));
    }

    // Nothing the fault swallowed is still locked: bytes held by a stall reach the server after
    // the heal, each acquire followed by its compare-and-delete.
    let mut touched = vec![held_key.clone(), busy_key.clone(), wake_key];
    touched.extend(fresh_keys);
    let cleaned_after_heal = match wait_until_unlocked(server, &touched, LONG_LEASE / 4).await {
        Ok(()) => healed_at.elapsed(),
        Err(left) => {
            broken.push(format!(
                "{name}: locks left behind after the heal: {left:?} (their lease is \
                 {LONG_LEASE:?}: nobody deleted them)"
            ));
            healed_at.elapsed()
        }
    };

    Round {
        loss_after_fault,
        server_left_at_report,
        loss_lead_ms,
        worst_acquire_vs_bound_ms,
        outcomes,
        recovery,
        subscribed_after_heal,
        wake_after_heal,
        cleaned_after_heal,
        reconnections: proxy.accepted() - accepted_before,
        records,
        broken,
    }
}

/// Tries `key` until it is acquired: what an application does after a Backend error.
async fn first_success(locker: &Locker, key: &str, since: Instant) -> LockGuard {
    loop {
        match locker
            .acquire(
                key,
                LockOptions::new().wait(Duration::ZERO).lease(LONG_LEASE),
            )
            .await
        {
            Ok(guard) => return guard,
            Err(LockError::Backend { .. }) if since.elapsed() < HANG_BOUND => {
                tokio::time::sleep(APP_RETRY).await;
            }
            Err(e) => panic!("{key}: no acquire after the heal: {e}"),
        }
    }
}

/// `later - earlier` in milliseconds, negative when `later` is in fact earlier.
fn signed_ms(later: Instant, earlier: Instant) -> f64 {
    if later >= earlier {
        (later - earlier).as_secs_f64() * 1e3
    } else {
        -((earlier - later).as_secs_f64() * 1e3)
    }
}

/// What the holder's lease (fencing number `fence`) has left on the server, read directly in
/// one transaction; None when it has ended (expired, or taken by a later holder).
async fn lease_left_on_server(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    fence: u64,
) -> Option<Duration> {
    let (pttl, value): (i64, Option<String>) = redis::pipe()
        .atomic()
        .cmd("PTTL")
        .arg(format!("lock:{{{key}}}"))
        .cmd("GET")
        .arg(format!("lock:{{{key}}}"))
        .query_async(conn)
        .await
        .expect("PTTL and the lock's value");
    // The value is `<token>:<fence>[:<holder label>]`.
    let latest: Option<u64> = value
        .as_deref()
        .and_then(|v| v.split(':').nth(1))
        .and_then(|fence| fence.parse().ok());
    let still_ours = latest == Some(fence) && pttl >= 0;
    still_ours.then(|| Duration::from_millis(pttl as u64))
}

fn left_on_server(left: Option<Duration>) -> String {
    match left {
        Some(left) => format!("{} ms left", left.as_millis()),
        None => "already ended".to_owned(),
    }
}

/// The Redis name of a lock's wake-up channel (default prefix).
fn channel(key: &str) -> String {
    format!("lock:{{{key}}}:released")
}

/// Waits until each lock's channel has at least `n` subscribers, as the server sees it: the
/// waiters are registered and a release would wake them. Observation, bounded.
async fn wait_until_subscribed(server: &RedisServer, keys: &[(&str, i64)]) {
    let mut conn = server.client().await;
    let deadline = Instant::now() + HANG_BOUND;
    loop {
        let mut cmd = redis::cmd("PUBSUB");
        cmd.arg("NUMSUB");
        for (key, _) in keys {
            cmd.arg(channel(key));
        }
        let counts: Vec<(String, i64)> = cmd.query_async(&mut conn).await.expect("PUBSUB NUMSUB");
        if counts.iter().zip(keys).all(|((_, n), (_, want))| n >= want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the waiters never subscribed: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
