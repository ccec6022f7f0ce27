//! A primary holding locks is killed (`kill -9`) and its replica takes over: the scene of faults
//! 16 (Redis Cluster, `cluster_failover.rs`) and 17 (Sentinel, `sentinel_failover.rs`). Two
//! holders run side by side through the same failover, one locker without replica
//! acknowledgement and one with it, so the first is the control of the second.
//!
//! The loss is made certain, not left to luck (loopback replication is so fast that a plain kill
//! rarely catches a write in flight): the replica is frozen (SIGSTOP) and then the primary is
//! given ballast to replicate until it holds replication output that the frozen replica's full
//! socket buffers cannot take. Every write after that exists only in the primary's memory and
//! dies with it, even though the replica, once resumed, still reads what its kernel buffered.
//!
//! 1. Each holder takes `HELD` locks (watchdog leases) on keys of the victim primary, while the
//!    replica is in sync; a write of ours acknowledged by the replica (`WAIT`) proves it has
//!    them all. These must all survive.
//! 2. The replica is frozen and jammed (above). The holder without acknowledgement takes `FRESH`
//!    more: granted, on the primary only. With acknowledgement, `FRESH` attempts must each fail
//!    as not replicated within the bound, and be given up again (nothing left on the primary).
//! 3. kill -9 the primary, SIGCONT the replica, wait for the failover. Probes (one per holder)
//!    try new locks on the victim's keys from the kill on, until one succeeds: the recovery.
//! 4. Measured: granted locks the new primary does not have (lost), of those how many holders
//!    were told by their watchdog (within `REPORT_BOUND` of the failover), surviving locks
//!    wrongly reported lost; then a second locker tries every key once: a key it gets while its
//!    first holder was not told is an unreported overlap, a fencing number not greater than the
//!    first holder's an inversion.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use distlock::{DEFAULT_KEY_PREFIX, LockError, LockGuard, LockOptions, Locker};
use futures::future::join_all;
use redis::aio::MultiplexedConnection as Connection;
use tokio::time::Instant;

use crate::support::worker::{cont, stop, wait_until_stopped};
use crate::within;

/// Locks each holder takes while the replica is in sync.
pub const HELD: usize = 120;
/// Locks (or attempts, with acknowledgement) each holder makes while the replica is frozen.
pub const FRESH: usize = 120;
/// Probe keys per holder: one per attempt, so an attempt whose answer was lost cannot make the
/// next one busy.
pub const PROBES: usize = 200;
/// Keys the scene needs on the victim primary.
pub const KEYS: usize = 2 * (HELD + FRESH + PROBES) + 1;

/// Long enough to outlast the freeze and the failover (about 10 s together here) with renewals
/// failing, so a surviving lock is never reported lost for want of a renewal.
const WATCHDOG_LEASE: Duration = Duration::from_secs(30);
/// Renewals every second: a lost lock is reported about a second after the failover.
const RENEWAL: Duration = Duration::from_secs(1);
/// A loopback replica acknowledges in well under a millisecond; 250 ms rides out a loaded
/// machine's scheduling hiccup, and bounds how long each refused attempt takes.
pub const ACKS_WITHIN: Duration = Duration::from_millis(250);
/// Lockers the refused attempts are spread over: WAIT blocks its connection, so one locker's
/// attempts on a frozen replica take `ACKS_WITHIN` each, one after another.
const REFUSERS: usize = 8;
/// How late a refusal may come beyond `ACKS_WITHIN`: a round trip on a loaded machine.
const REFUSAL_SLACK: Duration = Duration::from_secs(1);
/// Ballast values the primary replicates while the replica is frozen.
const BALLAST_CHUNK: usize = 256 * 1024;
/// Unsent replication output that proves the replica's socket is full: the accounting counts
/// the whole of the block being sent (up to one ballast chunk), so four chunks leave three unsent.
const JAMMED: u64 = 4 * BALLAST_CHUNK as u64;
/// Beyond the largest loopback socket buffers (tcp_rmem + tcp_wmem maxima, 36 MiB here), well
/// below the replica output limit (64 MiB soft) that would drop the replica.
const BALLAST_MAX: usize = 48 * 1024 * 1024;
/// Until lost locks are reported: a renewal interval, and a retry after the failover's errors.
const REPORT_BOUND: Duration = Duration::from_secs(10);
/// From the kill until a probe must have a new lock: the support's failover bound (30 s) plus a
/// response timeout and a new connection.
const RECOVERY_BOUND: Duration = Duration::from_secs(40);
/// Between probe attempts, and between looks at something settling.
const PAUSE: Duration = Duration::from_millis(20);
/// "Nothing hangs": any single step, on a loaded machine, in the middle of a failover.
const STEP_BOUND: Duration = Duration::from_secs(30);
/// Fixed lease of the second holder's locks (no watchdog noise while it looks).
const SECOND_LEASE: Duration = Duration::from_secs(30);

/// What the scene needs from a topology. Blocking calls: they run on `spawn_blocking`.
pub trait Topology: Send + Sync + 'static {
    /// The URL lockers connect with.
    fn url(&self) -> String;
    /// The port of the primary that is killed.
    fn primary(&self) -> u16;
    /// The process id of its replica.
    fn replica_pid(&self) -> u32;
    /// `count` distinct lock keys (`name-<n>`) whose locks the victim primary holds.
    fn keys(&self, name: &str, count: usize) -> Vec<String>;
    /// SIGKILL to the victim primary; returns once it is dead.
    fn kill_primary(&self);
    /// Until the replica has taken over; returns its port.
    fn wait_for_failover(&self) -> u16;
}

/// The Redis name of a lock.
fn lock_name(key: &str) -> String {
    format!("{DEFAULT_KEY_PREFIX}{{{key}}}")
}

/// What one holder (without or with acknowledgement) saw.
#[derive(Debug, Default)]
pub struct Half {
    /// Locks granted while the replica was in sync, and of those lost.
    pub held: usize,
    pub held_lost: usize,
    /// Locks granted while it was frozen (without acknowledgement), and of those lost.
    pub fresh_granted: usize,
    pub fresh_lost: usize,
    /// Attempts refused as not replicated (with acknowledgement), their slowest, other errors,
    /// and locks left on the primary after the refusals.
    pub refused: usize,
    pub slowest_refusal: Duration,
    pub refusal_errors: usize,
    pub left_held: usize,
    /// Lost locks whose holder was told, and when (after the kill) the last was.
    pub reported: usize,
    pub last_report: Duration,
    /// Surviving locks whose guard says lost.
    pub false_alarms: usize,
    /// Keys a second locker got afterwards, overlaps with an untold first holder, inversions.
    pub second_got: usize,
    pub unreported_overlaps: usize,
    pub inversions: usize,
    /// From the kill to the probe's first new lock, and the probe's failed attempts before.
    pub recovery: Duration,
    pub probe_errors: usize,
}

impl Half {
    pub fn lost(&self) -> usize {
        self.held_lost + self.fresh_lost
    }

    pub fn granted(&self) -> usize {
        self.held + self.fresh_granted + self.second_got
    }
}

/// What the scene measured.
pub struct Found {
    pub plain: Half,
    pub acked: Half,
    /// Ballast written until the replica's socket was full.
    pub ballast: usize,
    /// From the kill to the topology's report of a new primary.
    pub failover: Duration,
}

impl Found {
    /// The figures of both halves, for the row's notes.
    pub fn notes(&self) -> String {
        let p = &self.plain;
        let a = &self.acked;
        format!(
            "without acks: {}/{} in-sync and {}/{} frozen-time locks lost, {} reported (last \
             {:.1} s after the kill), a second locker got {}; with acks ({} ms): {}/{} \
             in-sync locks lost, {}/{} frozen-time attempts refused as not replicated (slowest \
             {:.0} ms), {} left held, the second locker got {}; new locks {:.2} s / {:.2} s after \
             the kill; unreported overlaps {}, fencing inversions {}, false loss reports {}",
            p.held_lost,
            p.held,
            p.fresh_lost,
            p.fresh_granted,
            p.reported,
            p.last_report.as_secs_f64(),
            p.second_got,
            ACKS_WITHIN.as_millis(),
            a.held_lost,
            a.held,
            a.refused,
            FRESH,
            a.slowest_refusal.as_secs_f64() * 1e3,
            a.left_held,
            a.second_got,
            p.recovery.as_secs_f64(),
            a.recovery.as_secs_f64(),
            p.unreported_overlaps + a.unreported_overlaps,
            p.inversions + a.inversions,
            p.false_alarms + a.false_alarms,
        )
    }

    pub fn sections(&self) -> u64 {
        (self.plain.granted() + self.acked.granted()) as u64
    }

    pub fn unreported_overlaps(&self) -> u64 {
        (self.plain.unreported_overlaps + self.acked.unreported_overlaps) as u64
    }

    pub fn lost(&self) -> u64 {
        (self.plain.lost() + self.acked.lost()) as u64
    }

    pub fn reported(&self) -> u64 {
        (self.plain.reported + self.acked.reported) as u64
    }

    /// The slower of the two holders' first new lock after the kill.
    pub fn recovery(&self) -> Duration {
        self.plain.recovery.max(self.acked.recovery)
    }

    /// The promises: asserted here so that both topologies make the same ones.
    pub fn check(&self) {
        let (p, a) = (&self.plain, &self.acked);
        assert_eq!(p.held_lost, 0, "in-sync locks lost without acks: {p:?}");
        assert_eq!(a.held_lost, 0, "in-sync locks lost with acks: {a:?}");
        // The control: the jammed replica never got them, so the failover lost every one.
        assert_eq!(p.fresh_granted, FRESH, "{p:?}");
        assert_eq!(p.fresh_lost, FRESH, "the control lost less than all: {p:?}");
        assert_eq!(
            p.reported,
            p.lost(),
            "lost locks whose holder was never told: {p:?}"
        );
        assert_eq!(a.fresh_granted, 0, "granted without the replica: {a:?}");
        assert_eq!(
            a.refused, FRESH,
            "attempts not refused as not replicated: {a:?}"
        );
        assert!(
            a.slowest_refusal <= ACKS_WITHIN + REFUSAL_SLACK,
            "a refusal took {:?}",
            a.slowest_refusal
        );
        assert_eq!(a.left_held, 0, "refused locks left held: {a:?}");
        for half in [p, a] {
            assert_eq!(half.unreported_overlaps, 0, "{half:?}");
            assert_eq!(half.inversions, 0, "{half:?}");
        }
        // The second locker gets what was lost or never granted, and nothing that survived.
        assert_eq!(p.second_got, p.lost(), "{p:?}");
        assert_eq!(a.second_got, FRESH, "{a:?}");
    }
}

/// Plays the scene on `topology` (started at `started`) and makes its row: `what` names the
/// topology in the log, `fault` the row, `victim` whose keys the locks are on.
pub fn row<T: Topology>(
    topology: T,
    started: std::time::Instant,
    what: &str,
    fault: &'static str,
    victim: &str,
) -> crate::report::FaultRow {
    let found = crate::runtime().block_on(scene(Arc::new(topology)));
    println!(
        "  {what} failover row: {:.1} s, failover {:.2} s; {}",
        started.elapsed().as_secs_f64(),
        found.failover.as_secs_f64(),
        found.notes()
    );
    found.check();
    crate::report::FaultRow {
        fault,
        injected: injected(victim, &found),
        sections: found.sections(),
        overlaps: found.unreported_overlaps(),
        lost: found.lost(),
        lost_reported: found.reported(),
        recovery: Some(found.recovery()),
        notes: found.notes(),
    }
}

/// The row's "injected" column: `victim` names whose keys the locks are on.
fn injected(victim: &str, found: &Found) -> String {
    format!(
        "{victim} keys: 2 lockers (watchdog, one with replica acks) take {HELD} locks each with \
         the replica in sync; replica SIGSTOPped and {:.0} MiB of ballast queued behind it; \
         {FRESH} more locks (attempts) each; kill -9 the primary, SIGCONT, failover in {:.1} s",
        found.ballast as f64 / (1024.0 * 1024.0),
        found.failover.as_secs_f64()
    )
}

/// One holder's lockers, keys and guards.
struct Holder {
    locker: Locker,
    held_keys: Vec<String>,
    fresh_keys: Vec<String>,
    probe_keys: Vec<String>,
    held: Vec<LockGuard>,
    fresh: Vec<LockGuard>,
    half: Half,
}

impl Holder {
    async fn new(url: &str, acks: bool, keys: &mut impl Iterator<Item = String>) -> Holder {
        let mut builder = Locker::builder(url)
            .watchdog_lease(WATCHDOG_LEASE)
            .renewal_interval(RENEWAL);
        if acks {
            builder = builder.replica_acks(ACKS_WITHIN);
        }
        Holder {
            locker: builder.build().await.expect("connect the holder"),
            held_keys: keys.take(HELD).collect(),
            fresh_keys: keys.take(FRESH).collect(),
            probe_keys: keys.take(PROBES).collect(),
            held: Vec::new(),
            fresh: Vec::new(),
            half: Half::default(),
        }
    }

    /// Takes every in-sync lock; with acknowledgement, an attempt a slow replica did not
    /// acknowledge in time is tried again (the replica is healthy: a hiccup, not the fault).
    async fn take_held(&mut self) {
        let locker = &self.locker;
        let taken = join_all(self.held_keys.iter().map(|key| async move {
            loop {
                match locker.try_acquire(key, LockOptions::new()).await {
                    Ok(Some(guard)) => return guard,
                    Err(LockError::Backend { source, .. }) if source.is_not_replicated() => {}
                    other => panic!("in-sync lock {key}: {other:?}"),
                }
            }
        }));
        self.held = within(STEP_BOUND, "taking the in-sync locks", taken).await;
        self.half.held = self.held.len();
    }
}

/// Runs the scene on `topology`; blocking topology calls go to `spawn_blocking`.
pub async fn scene<T: Topology>(topology: Arc<T>) -> Found {
    let began = Instant::now();
    let step = |what: &str| eprintln!("  [{:6.2} s] {what}", began.elapsed().as_secs_f64());
    let url = topology.url();
    let victim = topology.primary();
    let replica_pid = topology.replica_pid();
    let mut keys = {
        let topology = Arc::clone(&topology);
        tokio::task::spawn_blocking(move || topology.keys("failover", KEYS))
            .await
            .expect("keys")
            .into_iter()
    };
    let ballast_tag = keys.next().expect("a key for the ballast");
    let mut plain = Holder::new(&url, false, &mut keys).await;
    let mut acked = Holder::new(&url, true, &mut keys).await;
    let refusers = join_all((0..REFUSERS).map(|_| {
        Locker::builder(url.as_str())
            .replica_acks(ACKS_WITHIN)
            .build()
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()
    .expect("connect the refusers");
    let second = Locker::connect(&url)
        .await
        .expect("connect the second locker");
    let mut on_victim = direct(victim).await;

    step("connected");
    // 1. In sync.
    plain.take_held().await;
    acked.take_held().await;
    for refuser in &refusers {
        // Each learns the replica count while the replica answers, as a long-running one has.
        let warm = refuser
            .acquire(&acked.probe_keys[0], LockOptions::new())
            .await
            .expect("warm-up lock");
        warm.release().await.expect("warm-up release");
    }
    replica_has_everything(&mut on_victim, &ballast_tag).await;
    step("in-sync locks taken");

    // 2. Frozen and jammed.
    stop(replica_pid);
    wait_until_stopped(replica_pid, STEP_BOUND);
    let ballast = jam(&mut on_victim, &ballast_tag).await;
    step("frozen and jammed");
    let granted = join_all(
        plain
            .fresh_keys
            .iter()
            .map(|key| plain.locker.try_acquire(key, LockOptions::new())),
    );
    for granted in within(STEP_BOUND, "frozen-time locks", granted).await {
        match granted {
            Ok(Some(guard)) => plain.fresh.push(guard),
            other => panic!("a frozen-time lock without acks: {other:?}"),
        }
    }
    plain.half.fresh_granted = plain.fresh.len();
    step("frozen-time locks taken");
    refuse(&refusers, &mut acked).await;
    acked.half.left_held = left_held(&mut on_victim, &acked.fresh_keys).await;
    step("acked attempts done");

    // 3. The kill and the failover. When each guard learns its lock is lost, from now on.
    let told = |holder: &Holder| -> Vec<tokio::task::JoinHandle<Instant>> {
        holder
            .held
            .iter()
            .chain(&holder.fresh)
            .map(|guard| {
                let lost = guard.lost();
                tokio::spawn(async move {
                    lost.await;
                    Instant::now()
                })
            })
            .collect()
    };
    let (plain_told, acked_told) = (told(&plain), told(&acked));
    {
        let topology = Arc::clone(&topology);
        tokio::task::spawn_blocking(move || topology.kill_primary())
            .await
            .expect("kill");
    }
    // The process is gone (the kill waits for it): from here on the primary is dead.
    let killed = Instant::now();
    cont(replica_pid);
    let probes = [&plain, &acked].map(|holder| {
        let locker = holder.locker.clone();
        let keys = holder.probe_keys.clone();
        tokio::spawn(probe(locker, keys, killed))
    });
    let new_primary = {
        let topology = Arc::clone(&topology);
        tokio::task::spawn_blocking(move || topology.wait_for_failover())
            .await
            .expect("failover")
    };
    let failed_over = Instant::now();
    step("failed over");
    let failover = failed_over - killed;
    for (holder, probe) in [&mut plain, &mut acked].into_iter().zip(probes) {
        (holder.half.recovery, holder.half.probe_errors) = probe.await.expect("probe");
    }

    // 4. What the new primary has, who was told, what a second locker gets.
    step("probes done");
    let mut on_new = direct(new_primary).await;
    for (holder, told) in [(&mut plain, plain_told), (&mut acked, acked_told)] {
        let held_lost = missing(&mut on_new, &holder.held).await;
        let fresh_lost = missing(&mut on_new, &holder.fresh).await;
        holder.half.held_lost = held_lost.len();
        holder.half.fresh_lost = fresh_lost.len();
        let deadline = failed_over + REPORT_BOUND;
        for (guard, told) in holder.held.iter().chain(&holder.fresh).zip(told) {
            let lost = held_lost.contains(guard.key()) || fresh_lost.contains(guard.key());
            if !lost {
                // A surviving lock's guard must not say lost (looked at once the losses are known).
                holder.half.false_alarms += usize::from(guard.is_lost());
                told.abort();
                continue;
            }
            if let Ok(Ok(at)) = tokio::time::timeout_at(deadline, told).await {
                holder.half.reported += 1;
                holder.half.last_report = holder.half.last_report.max(at - killed);
            }
        }
    }
    step("reports in");
    let mut second_guards = Vec::new();
    for holder in [&mut plain, &mut acked] {
        let firsts: Vec<(&str, Option<&LockGuard>)> = holder
            .held
            .iter()
            .chain(&holder.fresh)
            .map(|g| (g.key(), Some(g)))
            .chain(
                holder
                    .fresh_keys
                    .iter()
                    .filter(|k| !holder.fresh.iter().any(|g| g.key() == k.as_str()))
                    .map(|k| (k.as_str(), None)),
            )
            .collect();
        let tries = join_all(firsts.iter().map(|&(key, _)| second_try(&second, key)));
        let tries = within(STEP_BOUND, "the second locker", tries).await;
        for ((_, first), got) in firsts.iter().zip(tries) {
            let Some(got) = got else { continue };
            holder.half.second_got += 1;
            if let Some(first) = first {
                if !first.is_lost() {
                    holder.half.unreported_overlaps += 1;
                }
                if got.fencing_token() <= first.fencing_token() {
                    holder.half.inversions += 1;
                }
            }
            second_guards.push(got);
        }
    }

    let release = async {
        for guard in second_guards {
            let _ = guard.release().await;
        }
        for holder in [plain.locker.clone(), acked.locker.clone(), second.clone()] {
            holder.close().await;
        }
        for refuser in &refusers {
            refuser.close().await;
        }
    };
    within(STEP_BOUND, "closing the lockers", release).await;
    step("closed");
    Found {
        plain: plain.half,
        acked: acked.half,
        ballast,
        failover,
    }
}

/// A plain connection to one node (not distlock's), for the checks.
async fn direct(port: u16) -> Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
}

/// Until the replica has everything written so far: WAIT covers the writes of its own
/// connection, so write once on it, after all the locks (the stream is in order).
async fn replica_has_everything(conn: &mut Connection, tag: &str) {
    let () = redis::cmd("SET")
        .arg(format!("{{{tag}}}:in-sync"))
        .arg(1)
        .query_async(conn)
        .await
        .expect("SET");
    let acknowledged: u64 = redis::cmd("WAIT")
        .arg(1)
        .arg(STEP_BOUND.as_millis() as u64)
        .query_async(conn)
        .await
        .expect("WAIT");
    assert_eq!(acknowledged, 1, "the replica never caught up");
}

/// Writes ballast (on a key of the victim's) until the primary holds replication output it
/// cannot send: the frozen replica's socket buffers are full. Returns the bytes written.
async fn jam(conn: &mut Connection, tag: &str) -> usize {
    let chunk = vec![b'x'; BALLAST_CHUNK];
    let mut written = 0;
    loop {
        let () = redis::cmd("SET")
            .arg(format!("{{{tag}}}:ballast"))
            .arg(&chunk)
            .query_async(conn)
            .await
            .expect("SET ballast");
        written += BALLAST_CHUNK;
        let replicas: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("replica")
            .query_async(conn)
            .await
            .expect("CLIENT LIST");
        let unsent: Vec<u64> = replicas
            .lines()
            .filter_map(|line| {
                line.split_whitespace()
                    .find_map(|field| field.strip_prefix("omem="))
                    .and_then(|n| n.parse().ok())
            })
            .collect();
        assert_eq!(unsent.len(), 1, "one replica connected: {replicas}");
        if unsent[0] > JAMMED {
            return written;
        }
        assert!(
            written < BALLAST_MAX,
            "{written} bytes of ballast and the frozen replica's socket still takes more"
        );
    }
}

/// The acknowledged attempts while the replica is frozen, spread over the refusers.
async fn refuse(refusers: &[Locker], holder: &mut Holder) {
    let shares = holder.fresh_keys.chunks(FRESH.div_ceil(REFUSERS));
    let runs = refusers
        .iter()
        .zip(shares)
        .map(|(locker, keys)| async move {
            let mut outcomes = Vec::new();
            for key in keys {
                let started = Instant::now();
                let outcome = locker.try_acquire(key, LockOptions::new()).await;
                outcomes.push((started.elapsed(), outcome));
            }
            outcomes
        });
    for (took, outcome) in within(STEP_BOUND, "refused attempts", join_all(runs))
        .await
        .into_iter()
        .flatten()
    {
        match outcome {
            Err(LockError::Backend { source, .. }) if source.is_not_replicated() => {
                holder.half.refused += 1;
                holder.half.slowest_refusal = holder.half.slowest_refusal.max(took);
            }
            Ok(Some(guard)) => holder.fresh.push(guard),
            other => {
                eprintln!("  an acknowledged attempt on a frozen replica: {other:?}");
                holder.half.refusal_errors += 1;
            }
        }
    }
    holder.half.fresh_granted = holder.fresh.len();
}

/// Locks of `keys` still on the primary once the refusals' background releases are done
/// (waited for up to `STEP_BOUND`).
async fn left_held(conn: &mut Connection, keys: &[String]) -> usize {
    let deadline = Instant::now() + STEP_BOUND;
    loop {
        let mut left = 0;
        for key in keys {
            let exists: u64 = redis::cmd("EXISTS")
                .arg(lock_name(key))
                .query_async(conn)
                .await
                .expect("EXISTS");
            left += exists as usize;
        }
        if left == 0 || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// New locks from the kill on until one is granted: the time that took, and the failed attempts.
async fn probe(locker: Locker, keys: Vec<String>, killed: Instant) -> (Duration, usize) {
    let mut errors = 0;
    for key in &keys {
        assert!(
            killed.elapsed() < RECOVERY_BOUND,
            "no new lock within {RECOVERY_BOUND:?} of the kill ({errors} attempts failed)"
        );
        let attempt = locker.try_acquire(key, LockOptions::new().lease(SECOND_LEASE));
        match within(STEP_BOUND, "a probe attempt", attempt).await {
            Ok(Some(guard)) => {
                let recovery = killed.elapsed();
                let _ = guard.release().await;
                return (recovery, errors);
            }
            Ok(None) => panic!("probe key {key} busy: nobody else takes it"),
            Err(e) => {
                errors += 1;
                eprintln!(
                    "  [{:6.2} s after the kill] probe: {e}",
                    killed.elapsed().as_secs_f64()
                );
            }
        }
        tokio::time::sleep(PAUSE).await;
    }
    panic!("no new lock in {} attempts after the kill", keys.len());
}

/// Keys of `guards` whose lock the node does not have (absent, or another fencing number).
async fn missing(conn: &mut Connection, guards: &[LockGuard]) -> HashSet<String> {
    let mut gone = HashSet::new();
    for guard in guards {
        let value: Option<String> = redis::cmd("GET")
            .arg(lock_name(guard.key()))
            .query_async(conn)
            .await
            .expect("GET");
        let fence = value
            .as_deref()
            .and_then(|v| v.split(':').nth(1))
            .and_then(|f| f.parse::<u64>().ok());
        if fence != Some(guard.fencing_token()) {
            gone.insert(guard.key().to_owned());
        }
    }
    gone
}

/// One attempt of the second locker on `key`; an error (a stale view of the topology, right
/// after the failover) is tried again until it answers.
async fn second_try(second: &Locker, key: &str) -> Option<LockGuard> {
    loop {
        match second
            .try_acquire(key, LockOptions::new().lease(SECOND_LEASE))
            .await
        {
            Ok(got) => return got,
            Err(e) => {
                eprintln!("  second locker on {key}: {e}; again");
                tokio::time::sleep(PAUSE).await;
            }
        }
    }
}
