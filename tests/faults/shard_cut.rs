//! Fault 17: a client cut off from one shard of a Redis Cluster. Every node announces the port of
//! a fault proxy of its own (`RedisCluster::start_behind_proxies`), so the locker reaches each
//! primary through its proxy; the proxy of one primary is cut (every connection reset, new ones
//! refused) while the cluster bus stays whole, so the cluster itself stays healthy; healed; then
//! stalled (a blackhole: connections stay open, no byte passes, the held requests reach the node
//! at the heal); healed.
//!
//! Promised (issue 12, "a client cut off from one shard"): locks on the other shards are
//! unaffected (acquire and release keep working, at their usual latency, a waiter there is woken
//! by another client's release at once, and locks held there keep being renewed); an acquire on
//! the cut shard fails with a backend error within the response timeout, never hangs; a lock
//! held on the cut shard is reported lost when its lease runs out unrenewed; after the heal the
//! cut shard's locks work again.

use std::time::Duration;

use distlock::{LockError, LockGuard, LockOptions, Locker};
use tokio::time::Instant;

use crate::report::FaultRow;
use crate::support::checker;
use crate::support::cluster::RedisCluster;
use crate::support::node::{must, poll_until};
use crate::support::records::{Record, monotonic_ns};

/// Short, so that a failure shows quickly and the row stays short; a loopback answer takes
/// microseconds, so 1 s is never reached by a healthy shard even on a loaded 2-core machine.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The watchdog lease of the held locks: the cut must outlast it, so that the held locks on the
/// healthy shards are renewed during the cut and the one on the cut shard runs out.
const LEASE: Duration = Duration::from_secs(3);
/// Acquire-release cycles per shard in each phase (before, during and after each fault).
const CYCLES: usize = 30;
/// Acquires tried on the cut shard while it is cut, and how long each may wait for the lock
/// (it never gets an answer, so it fails on the response timeout, not on the wait).
const CUT_ATTEMPTS: usize = 3;
const CUT_WAIT: Duration = Duration::from_secs(1);
/// An acquire on the cut shard fails within one response timeout (1 s) plus one connect timeout
/// (0.5 s, a reconnect attempt), plus 1 s of room for a loaded 2-core machine.
const FAIL_BOUND: Duration = Duration::from_millis(1000 + 500 + 1000);
/// A held lock on the cut shard is reported lost by the end of its lease (3 s), plus a renewal's
/// response timeout (1 s) and 2 s of room for a loaded machine.
const LOSS_BOUND: Duration = Duration::from_secs(3 + 1 + 2);
/// Until the healed shard takes a lock: a reconnect, at most a slot map refresh; 10 s means it
/// does not come back by itself.
const RECOVERY_BOUND: Duration = Duration::from_secs(10);
/// Between two tries on the healed shard.
const RECOVERY_POLL: Duration = Duration::from_millis(10);
/// Hand-overs between two clients per shard and phase, how long the waiter may wait, and the
/// bound on its wake-up: a message and an attempt take milliseconds; a waiter that missed the
/// message would retry only at the holder's expiry (`LEASE`), or at the fallback pace (200 ms)
/// while its subscription is down; 500 ms leaves room for a loaded 2-core machine.
const WAKE_ROUNDS: usize = 2;
const WAKE_WAIT: Duration = Duration::from_secs(5);
const WAKE_BOUND: Duration = Duration::from_millis(500);
/// An acquire-release cycle on a healthy shard stays far below a response timeout.
const CYCLE_BOUND: Duration = RESPONSE_TIMEOUT;

pub fn run() -> FaultRow {
    crate::runtime().block_on(shard_cut())
}

/// The keys of one shard: one for acquire-release cycles, one held through the cut.
struct Shard {
    port: u16,
    cycled: String,
    held: String,
}

async fn shard_cut() -> FaultRow {
    let started = Instant::now();
    let cluster = tokio::task::block_in_place(RedisCluster::start_behind_proxies);
    let connect = || {
        Locker::builder(cluster.url())
            .response_timeout(RESPONSE_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .watchdog_lease(LEASE)
            .build()
    };
    let locker = connect().await.expect("connect through the proxies");
    // A second client, whose releases the first one's waiters must hear from the cluster.
    let releaser = connect().await.expect("connect through the proxies");
    let shards = shards(&cluster);
    let (cut, healthy) = shards.split_first().expect("three shards");
    let proxy = cluster.node(cut.port).proxy().expect("a proxy in front");

    let held = |shard: &Shard| {
        let locker = locker.clone();
        let key = shard.held.clone();
        async move {
            locker
                .acquire(&key, LockOptions::new())
                .await
                .unwrap_or_else(|e| panic!("{key}: {e}"))
        }
    };
    let held_cut = held(cut).await;
    let mut held_healthy = Vec::new();
    for shard in healthy {
        held_healthy.push(held(shard).await);
    }
    let before = cycles(&locker, healthy).await;
    let mut records = Vec::new();
    let woken = wake_ups(&releaser, &locker, healthy, &mut records).await;
    assert!(
        proxy.accepted() > 0,
        "the locker did not go through the proxy"
    );

    // When the loss is reported, seen as it happens while the cut's other checks run.
    let lost = {
        let lost = held_cut.lost();
        tokio::spawn(async move {
            lost.await;
            Instant::now()
        })
    };
    tokio::task::block_in_place(|| proxy.cut());
    let cut_at = Instant::now();
    let cut_failures = failing_acquires(&locker, &cut.cycled).await;
    let during_cut = cycles(&locker, healthy).await;
    let woken_cut = wake_ups(&releaser, &locker, healthy, &mut records).await;
    let lost_at = tokio::time::timeout_at(cut_at + LOSS_BOUND, lost)
        .await
        .unwrap_or_else(|_| {
            panic!("the cut shard's lock not reported lost {LOSS_BOUND:?} after the cut")
        })
        .expect("the loss's watcher");
    let lost_reported = lost_at.saturating_duration_since(cut_at);
    assert!(held_cut.is_lost());
    // Hold the cut past a lease, so that the healthy shards' locks need renewals through it.
    tokio::time::sleep_until(cut_at + LEASE).await;
    for guard in &held_healthy {
        assert!(
            !guard.is_lost(),
            "{}: a lock on a healthy shard was lost during another shard's cut",
            guard.key()
        );
    }
    proxy.heal();
    let cut_recovered = recovery(&locker, &cut.cycled).await;
    let after_cut = cycles(&locker, &shards).await;
    match held_cut.release().await {
        Err(LockError::LeaseLost { .. }) => {}
        other => panic!("the cut shard's lost lock released: {other:?}"),
    }
    for guard in held_healthy {
        release(guard).await;
    }

    // A blackhole: the requests to the shard stay unanswered, and reach it late, at the heal.
    proxy.stall();
    let stall_failures = failing_acquires(&locker, &cut.cycled).await;
    let during_stall = cycles(&locker, healthy).await;
    let woken_stall = wake_ups(&releaser, &locker, healthy, &mut records).await;
    proxy.heal();
    let stall_recovered = recovery(&locker, &cut.cycled).await;
    let after_stall = cycles(&locker, &shards).await;

    let phases = [
        &before,
        &during_cut,
        &after_cut,
        &during_stall,
        &after_stall,
    ];
    // The cycles run one after another in one task; the hand-overs between the two clients are
    // where two holders could meet.
    let report = checker::check(&records);
    assert!(
        report.is_sound(),
        "hand-overs between the clients: {report}"
    );
    // The cycles, the hand-overs' sections, the three held locks and the two acquisitions that
    // showed the recovery.
    let sections =
        phases.iter().map(|p| p.len() as u64).sum::<u64>() + records.len() as u64 + 3 + 2;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let slowest =
        |failures: &[(Duration, String)]| failures.iter().map(|(d, _)| ms(*d)).fold(0.0, f64::max);
    let figures = |p: fn(&[Duration]) -> String| {
        phases
            .iter()
            .map(|phase| p(phase))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let notes = format!(
        "other shards (before / cut / after / stalled / after): {} acquire-release cycles, all \
         Ok, median {} ms, worst {} ms; a waiter woken by another client's release at worst in \
         {} ms (before / cut / stalled, {WAKE_ROUNDS} per shard each); their held locks renewed \
         through the cut. The isolated shard: each acquire failed within {:.0} ms cut, {:.0} ms \
         stalled (response timeout {} ms; \"{}\"); its held lock reported lost {:.2} s after the \
         cut (lease {LEASE:?} from its last renewal); locks again {:.0} ms after healing the \
         cut, {:.0} ms after healing the stall; row {:.1} s",
        figures(|p| p.len().to_string()),
        figures(median),
        figures(worst),
        [&woken, &woken_cut, &woken_stall]
            .map(|w| worst(w))
            .join(" / "),
        slowest(&cut_failures),
        slowest(&stall_failures),
        RESPONSE_TIMEOUT.as_millis(),
        cut_failures
            .last()
            .map(|(_, e)| e.as_str())
            .unwrap_or_default(),
        lost_reported.as_secs_f64(),
        ms(cut_recovered),
        ms(stall_recovered),
        started.elapsed().as_secs_f64(),
    );
    FaultRow {
        fault: "Cluster: client cut off from one shard",
        injected: format!(
            "3+3 cluster behind fault proxies; the proxy of one primary cut (connections reset, \
             new ones refused) for more than a lease ({LEASE:?}) with one lock held on each \
             shard, healed, then stalled (a blackhole), healed; response timeout \
             {RESPONSE_TIMEOUT:?}"
        ),
        sections,
        overlaps: report.total.unreported_overlaps,
        lost: 1,
        lost_reported: 1,
        recovery: Some(cut_recovered.max(stall_recovered)),
        notes,
    }
}

/// `CUT_ATTEMPTS` acquires of `key` on the unreachable shard: each a backend error (a timeout or
/// a connection error), within `FAIL_BOUND`. Returns how long each took, with its message.
async fn failing_acquires(locker: &Locker, key: &str) -> Vec<(Duration, String)> {
    let mut failures = Vec::new();
    for _ in 0..CUT_ATTEMPTS {
        let asked = Instant::now();
        let outcome = crate::within(
            2 * FAIL_BOUND,
            "an acquire on the unreachable shard",
            locker.acquire(key, LockOptions::new().wait(CUT_WAIT)),
        )
        .await;
        let took = asked.elapsed();
        match outcome {
            Err(e)
                if matches!(&e, LockError::Backend { source, .. }
                    if source.is_connection() || source.is_timeout()) =>
            {
                failures.push((took, e.to_string()));
            }
            other => panic!("an acquire on the unreachable shard: {other:?}"),
        }
        assert!(
            took < FAIL_BOUND,
            "an acquire on the unreachable shard failed only after {took:?} (bound {FAIL_BOUND:?})"
        );
    }
    failures
}

/// From the heal until `key`'s shard gives a lock again (a late acquire of the stall, if any, is
/// undone by its clean-up first: busy until then).
async fn recovery(locker: &Locker, key: &str) -> Duration {
    let healed_at = Instant::now();
    loop {
        match locker.try_acquire(key, LockOptions::new()).await {
            Ok(Some(guard)) => {
                let recovered = healed_at.elapsed();
                release(guard).await;
                return recovered;
            }
            Ok(None) | Err(_) if healed_at.elapsed() < RECOVERY_BOUND => {
                tokio::time::sleep(RECOVERY_POLL).await;
            }
            other => panic!("{key}: no lock {RECOVERY_BOUND:?} after the heal: {other:?}"),
        }
    }
}

/// A key for cycles and one to hold on each primary, the first primary's first.
fn shards(cluster: &RedisCluster) -> Vec<Shard> {
    let mut shards: Vec<Shard> = cluster
        .primaries()
        .iter()
        .map(|node| Shard {
            port: node.port(),
            cycled: String::new(),
            held: String::new(),
        })
        .collect();
    for n in 0.. {
        if shards.iter().all(|s| !s.held.is_empty()) {
            break;
        }
        let key = format!("shard:{n}");
        let port = cluster.primary_for_key(&format!("lock:{{{key}}}")).port();
        let shard = shards
            .iter_mut()
            .find(|s| s.port == port)
            .expect("a primary serves every slot");
        if shard.cycled.is_empty() {
            shard.cycled = key;
        } else if shard.held.is_empty() {
            shard.held = key;
        }
    }
    shards
}

/// `WAKE_ROUNDS` times on each shard: `releaser` holds the shard's cycled key, `waiter` waits for
/// it, `releaser` releases once the wait shows on the node. Returns the times from the release
/// call to the waiter having the lock, each below `WAKE_BOUND`.
async fn wake_ups(
    releaser: &Locker,
    waiter: &Locker,
    shards: &[Shard],
    records: &mut Vec<Record>,
) -> Vec<Duration> {
    let mut woken = Vec::new();
    for _ in 0..WAKE_ROUNDS {
        for shard in shards {
            let key = shard.cycled.clone();
            let holder = releaser
                .acquire(&key, LockOptions::new())
                .await
                .unwrap_or_else(|e| panic!("{key}: the releaser: {e}"));
            let holder_enter = monotonic_ns();
            let waiting = {
                let (waiter, key) = (waiter.clone(), key.clone());
                tokio::spawn(async move {
                    let guard = waiter
                        .acquire(&key, LockOptions::new().wait(WAKE_WAIT))
                        .await
                        .unwrap_or_else(|e| panic!("{key}: the waiter: {e}"));
                    let (at, enter_ns) = (Instant::now(), monotonic_ns());
                    let fence = guard.fencing_token();
                    let exit_ns = monotonic_ns();
                    release(guard).await;
                    (
                        at,
                        Record::section(&key, fence, 1, enter_ns, exit_ns, false),
                    )
                })
            };
            let channel = format!("lock:{{{key}}}:released");
            tokio::task::block_in_place(|| {
                poll_until("the waiter's subscription", WAKE_WAIT, || {
                    let (_, n): (String, u64) = must(
                        shard.port,
                        redis::cmd("PUBSUB").arg("SHARDNUMSUB").arg(&channel),
                    );
                    if n > 0 {
                        Ok(())
                    } else {
                        Err(format!("nobody on {channel}"))
                    }
                })
            });
            records.push(Record::section(
                &key,
                holder.fencing_token(),
                0,
                holder_enter,
                monotonic_ns(),
                false,
            ));
            let released = Instant::now();
            release(holder).await;
            let (at, record) = crate::within(WAKE_WAIT, "the waiter", waiting)
                .await
                .expect("the waiter's task");
            let took = at.saturating_duration_since(released);
            assert!(
                took < WAKE_BOUND,
                "{key}: the waiter got the released lock only {took:?} after the release"
            );
            woken.push(took);
            records.push(record);
        }
    }
    woken
}

/// `CYCLES` acquire-release cycles on each shard's cycled key, each timed, each Ok and fast.
async fn cycles(locker: &Locker, shards: &[Shard]) -> Vec<Duration> {
    let mut took = Vec::new();
    for _ in 0..CYCLES {
        for shard in shards {
            let key = &shard.cycled;
            let asked = Instant::now();
            let guard = locker
                .acquire(key, LockOptions::new().wait(CYCLE_BOUND))
                .await
                .unwrap_or_else(|e| panic!("{key}: an acquire on a healthy shard: {e}"));
            release(guard).await;
            let cycle = asked.elapsed();
            assert!(
                cycle < CYCLE_BOUND,
                "{key}: an acquire-release cycle on a healthy shard took {cycle:?}"
            );
            took.push(cycle);
        }
    }
    took
}

async fn release(guard: LockGuard) {
    let key = guard.key().to_owned();
    guard
        .release()
        .await
        .unwrap_or_else(|e| panic!("{key}: a release on a healthy shard: {e}"));
}

fn median(took: &[Duration]) -> String {
    let mut sorted = took.to_vec();
    sorted.sort();
    format!(
        "{:.1}",
        sorted
            .get(sorted.len() / 2)
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3
    )
}

fn worst(took: &[Duration]) -> String {
    format!(
        "{:.1}",
        took.iter().max().copied().unwrap_or_default().as_secs_f64() * 1e3
    )
}
