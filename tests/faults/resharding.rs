//! Fault 16: the slot of a held lock, with a waiter blocked on it, is resharded to another
//! primary of a Redis Cluster (3 primaries + 3 replicas) the way `redis-cli --cluster reshard`
//! does it: IMPORTING / MIGRATING, MIGRATE of the keys, SETSLOT NODE everywhere. The holder and
//! the waiter are two lockers (two sets of connections), so the waiter can only learn of the
//! release from the cluster.
//!
//! Promised (issue 12, Cluster 1-2): the holder keeps its lock (no loss reported), its watchdog's
//! renewals and its release follow the slot to the new node (the client library follows MOVED),
//! the waiter's SSUBSCRIBE follows it too (the old node sends `sunsubscribe`), so the release on
//! the new node wakes the waiter by its message, far below the holder's lease; no overlap.
//!
//! How the wake-up is told apart from the fallback: every primary logs every command
//! (`slowlog-log-slower-than 0`). Once the waiter's channel shows on the new node, the row counts
//! the waiter's acquire attempts (the only scripts carrying the waiter's holder label) on that
//! node over a quiet window of two fallback intervals: zero means the waiter sleeps on a live
//! subscription (a waiter without one retries every `FALLBACK_RETRY_INTERVAL`), so the release's
//! message is what woke it. The last round is the method's control: the waiter's user loses its
//! channels (ACL) on the new node before the migration, so it cannot subscribe there and must
//! retry at the fallback pace; the count has to see those retries.

use std::time::Duration;

use distlock::{LockOptions, Locker};
use redis::Value;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::report::FaultRow;
use crate::support::checker;
use crate::support::cluster::RedisCluster;
use crate::support::node::{must, poll_until};
use crate::support::records::{Record, monotonic_ns};

const ROUNDS: usize = 12;
/// The holder's watchdog lease: the time a waiter that missed the release would sleep.
const HOLDER_LEASE: Duration = Duration::from_secs(10);
/// Renewals this often, so that some are sent while the slot is half-way moved (the key already
/// on the new node: the old one answers ASK) and one soon after the migration.
const RENEWAL_INTERVAL: Duration = Duration::from_millis(50);
const WAIT: Duration = Duration::from_secs(20);
/// Until a subscription shows on a node, or a renewal on the new node: a MOVED, a slot map
/// refresh and a reconnect on a loaded 2-core machine take well under a second; 10 s means it
/// never comes.
const FOLLOW_BOUND: Duration = Duration::from_secs(10);
/// The release to the waiter's acquire: a message and one attempt take milliseconds; 2 s leaves
/// room for a loaded 2-core machine and a debug build, and is still a fifth of the lease that a
/// missed release would cost.
const WAKE_BOUND: Duration = Duration::from_secs(2);
/// A waiter without a live subscription retries at least once in this window.
const QUIET_WINDOW: Duration = Duration::from_millis(2 * 200);
const HOLDER_LABEL: &str = "reshard-holder";
const WAITER_LABEL: &str = "reshard-waiter";
const WAITER_USER: &str = "reshard-waiter";
const WAITER_PASSWORD: &str = "reshard-waiter-password";
const SLOWLOG_ENTRIES: usize = 4096;
/// PTTL is in whole milliseconds: two readings may differ by one more than the time between them.
const PTTL_ROUNDING_MS: i64 = 1;

pub fn run() -> FaultRow {
    crate::runtime().block_on(resharding())
}

/// What one round measured.
struct Round {
    migration: Duration,
    resubscribed: Duration,
    renewed: Duration,
    /// Requests (renewals, the waiter's attempts) that reached the new node by an ASK redirection.
    asked: usize,
    woken: Duration,
    by_message: bool,
}

async fn resharding() -> FaultRow {
    let started = Instant::now();
    assert_eq!(
        QUIET_WINDOW,
        2 * distlock::FALLBACK_RETRY_INTERVAL,
        "the quiet window is two fallback intervals"
    );
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let primaries: Vec<u16> = cluster.primaries().iter().map(|n| n.port()).collect();
    for &port in &primaries {
        let () = must(
            port,
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("slowlog-log-slower-than")
                .arg(0)
                .arg("slowlog-max-len")
                .arg(SLOWLOG_ENTRIES),
        );
    }
    let locker = |url: String, label: &'static str| {
        Locker::builder(url)
            .watchdog_lease(HOLDER_LEASE)
            .renewal_interval(RENEWAL_INTERVAL)
            .holder_label(label)
            .build()
    };
    // The waiter's client logs in as a user of its own, whose channels the control round takes
    // away on the new node.
    for node in cluster.nodes() {
        let () = must(
            node.port(),
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg(WAITER_USER)
                .arg("on")
                .arg(format!(">{WAITER_PASSWORD}"))
                .arg("~*")
                .arg("&*")
                .arg("+@all"),
        );
    }
    let holders = locker(cluster.url(), HOLDER_LABEL)
        .await
        .expect("connect the holder");
    let waiters = locker(
        cluster
            .url()
            .replacen("://", &format!("://{WAITER_USER}:{WAITER_PASSWORD}@"), 1),
        WAITER_LABEL,
    )
    .await
    .expect("connect the waiter");
    let setup = started.elapsed();

    let mut records = Vec::new();
    let mut control = Vec::new();
    let mut rounds = Vec::new();
    let mut denied = None;
    // The last round is the method's control: the waiter may not subscribe on the new node.
    for n in 0..=ROUNDS {
        let deny = n == ROUNDS;
        let key = format!("reshard:{n}");
        let name = format!("lock:{{{key}}}");
        let channel = format!("{name}:released");
        let from = cluster.primary_for_key(&name).port();
        let to = primaries[(primaries
            .iter()
            .position(|&p| p == from)
            .expect("a primary")
            + 1)
            % primaries.len()];

        let holder = holders
            .acquire(&key, LockOptions::new())
            .await
            .expect("the holder takes its free lock");
        let holder_enter = monotonic_ns();
        let fence = holder.fencing_token();
        let asked = monotonic_ns();
        // The waiter says when it has the lock, and releases when told: in the control round its
        // release (an SPUBLISH) must wait until its channels are given back.
        let (acquired, acquired_rx) = oneshot::channel();
        let (may_release, may_release_rx) = oneshot::channel::<()>();
        let waiter = {
            let (waiters, key) = (waiters.clone(), key.clone());
            tokio::spawn(async move {
                let guard = waiters
                    .acquire(&key, LockOptions::new().wait(WAIT))
                    .await
                    .unwrap_or_else(|e| panic!("{key}: the waiter: {e}"));
                let enter_ns = monotonic_ns();
                let _ = acquired.send(Instant::now());
                let _ = may_release_rx.await;
                let fence = guard.fencing_token();
                let exit_ns = monotonic_ns();
                guard.release().await.expect("the waiter's release");
                Record::section(&key, fence, 1, enter_ns, exit_ns, false)
            })
        };
        tokio::task::block_in_place(|| {
            poll_until("the waiter's subscription", FOLLOW_BOUND, || {
                subscribed(from, &channel)
            })
        });

        if deny {
            let () = must(
                to,
                redis::cmd("ACL")
                    .arg("SETUSER")
                    .arg(WAITER_USER)
                    .arg("resetchannels"),
            );
        }
        let () = must(to, redis::cmd("SLOWLOG").arg("RESET"));
        let migrating = Instant::now();
        tokio::task::block_in_place(|| cluster.migrate_slot_of(&name, to));
        let migrated = Instant::now();
        let migration = migrated - migrating;
        // The key moved with its expiry, which only runs down from here unless a renewal sets it
        // back to the full lease. `since` starts after the reading and each later look's clock
        // before its request, so the server's time between the two readings is at least `since`:
        // without a renewal the reading is at most `moved_ttl - since` (+1 ms of rounding).
        let moved_ttl: i64 = must(to, redis::cmd("PTTL").arg(&name));
        let since = Instant::now();
        assert!(
            moved_ttl > 0,
            "{name} did not move with the slot: {moved_ttl}"
        );
        let (resubscribed, renewed) = tokio::task::block_in_place(|| {
            let resubscribed = if deny {
                Duration::ZERO
            } else {
                poll_until(
                    "the waiter's subscription on the new node",
                    FOLLOW_BOUND,
                    || subscribed(to, &channel),
                ) - migrated
            };
            let renewed = poll_until("a renewal on the new node", FOLLOW_BOUND, || {
                let elapsed = since.elapsed().as_millis() as i64;
                let ttl: i64 = must(to, redis::cmd("PTTL").arg(&name));
                if ttl > moved_ttl - elapsed + PTTL_ROUNDING_MS {
                    Ok(Instant::now())
                } else {
                    Err(format!(
                        "PTTL {ttl}, {moved_ttl} {elapsed} ms before, at the migration"
                    ))
                }
            });
            (resubscribed, renewed - migrated)
        });
        let asked_on_the_way =
            slowlog_count(to, |args| args.first().is_some_and(|a| is(a, "ASKING")));
        let value: Option<String> = must(to, redis::cmd("GET").arg(&name));
        assert!(
            value
                .as_deref()
                .is_some_and(|v| v.ends_with(&format!(":{fence}:{HOLDER_LABEL}"))),
            "{name} on the new node is not the holder's lock: {value:?}"
        );
        assert!(
            !holder.is_lost(),
            "{key}: the holder lost its lock to the migration"
        );

        let () = must(to, redis::cmd("SLOWLOG").arg("RESET"));
        tokio::time::sleep(QUIET_WINDOW).await; // a window to count in, not a synchronisation
        let retries_while_asleep = waiter_attempts(to);
        let () = must(to, redis::cmd("SLOWLOG").arg("RESET"));

        let holder_exit = monotonic_ns();
        // From the release call: the message may wake the waiter before the release's answer.
        let released = Instant::now();
        holder
            .release()
            .await
            .unwrap_or_else(|e| panic!("{key}: the holder's release after the migration: {e}"));
        let at = crate::within(WAIT, "the waiter", acquired_rx)
            .await
            .expect("the waiter's task");
        if deny {
            let () = must(
                to,
                redis::cmd("ACL")
                    .arg("SETUSER")
                    .arg(WAITER_USER)
                    .arg("allchannels"),
            );
        }
        let _ = may_release.send(());
        let record = crate::within(WAIT, "the waiter's release", waiter)
            .await
            .expect("the waiter's task");
        let woken = at.saturating_duration_since(released);
        let attempts_after_release = waiter_attempts(to);
        assert!(
            woken < WAKE_BOUND,
            "{key}: the waiter got the lock {woken:?} after the release on the new node \
             (bound {WAKE_BOUND:?}, holder's lease {HOLDER_LEASE:?})"
        );
        assert!(
            attempts_after_release >= 1,
            "{key}: the waiter took the lock without an attempt on the new node"
        );
        let round = Round {
            migration,
            resubscribed,
            renewed,
            asked: asked_on_the_way,
            woken,
            by_message: retries_while_asleep == 0,
        };
        if deny {
            assert!(
                !round.by_message,
                "control: a waiter that cannot subscribe on the new node made no paced retry \
                 in {QUIET_WINDOW:?} the slow log saw"
            );
            denied = Some((retries_while_asleep, woken));
            records.push(Record::section(
                &key,
                fence,
                0,
                holder_enter,
                holder_exit,
                false,
            ));
            records.push(record);
            continue;
        }
        rounds.push(round);
        // The control: the waiter as if it had entered when it asked, which a lock prevents.
        control.push(Record::section(
            &key,
            fence,
            0,
            holder_enter,
            holder_exit,
            false,
        ));
        control.push(Record {
            enter_ns: asked,
            ..record.clone()
        });
        records.push(Record::section(
            &key,
            fence,
            0,
            holder_enter,
            holder_exit,
            false,
        ));
        records.push(record);
    }

    let (denied_retries, denied_woken) = denied.expect("the control round ran");
    let report = checker::check(&records);
    assert!(
        report.is_sound(),
        "sections across the migrations: {report}"
    );
    assert_eq!(report.total.overlaps, 0, "two holders at once: {report}");
    let control = checker::check(&control);
    assert_eq!(
        control.total.unreported_overlaps, ROUNDS as u64,
        "the control (each waiter entering when it asked) must overlap every round: {control}"
    );
    let by_message = rounds.iter().filter(|r| r.by_message).count();
    assert_eq!(
        by_message, ROUNDS,
        "waiters retrying on the fallback pace after the migration instead of sleeping on \
         their moved subscription"
    );
    let worst = |f: fn(&Round) -> Duration| rounds.iter().map(f).max().unwrap_or_default();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let elapsed = started.elapsed();
    let notes = format!(
        "holder kept every lock; a renewal on the new node at worst {:.0} ms after the \
         migration (every {} ms), its release there Ok; the waiter's SSUBSCRIBE on the new node \
         at worst {:.0} ms after; release call to the waiter's acquire at worst {:.1} ms (lease \
         {HOLDER_LEASE:?}), {by_message} of {ROUNDS} by the release's message (no retry in the \
         {} ms before it), {} by the fallback retry (control: a waiter denied SSUBSCRIBE on the \
         new node by ACL made {} paced retries in that window and got the lock {:.0} ms after \
         the release); {} request(s) followed an ASK to the new node mid-migration; control \
         (waiter entering when it asked): {} overlaps seen; migration {:.0} ms at worst; row \
         {:.1} s (cluster start {:.1} s)",
        ms(worst(|r| r.renewed)),
        RENEWAL_INTERVAL.as_millis(),
        ms(worst(|r| r.resubscribed)),
        ms(worst(|r| r.woken)),
        QUIET_WINDOW.as_millis(),
        ROUNDS - by_message,
        denied_retries,
        ms(denied_woken),
        rounds.iter().map(|r| r.asked).sum::<usize>(),
        control.total.unreported_overlaps,
        ms(worst(|r| r.migration)),
        elapsed.as_secs_f64(),
        setup.as_secs_f64(),
    );
    println!(
        "  per round (migration, resubscribed, renewed, woken ms, ASKs): {:?}",
        rounds
            .iter()
            .map(|r| (
                ms(r.migration).round(),
                ms(r.resubscribed).round(),
                ms(r.renewed).round(),
                (ms(r.woken) * 10.0).round() / 10.0,
                r.asked
            ))
            .collect::<Vec<_>>()
    );
    FaultRow {
        fault: "Cluster: slot of a held and waited-for lock resharded",
        injected: format!(
            "3+3 cluster; {ROUNDS} rounds: a lock held (watchdog, lease {HOLDER_LEASE:?}) with a \
             waiter of another locker, its slot migrated to another primary (IMPORTING / \
             MIGRATING, MIGRATE, SETSLOT NODE), then released"
        ),
        sections: records.len() as u64,
        overlaps: report.total.unreported_overlaps,
        lost: 0,
        lost_reported: 0,
        recovery: Some(worst(|r| r.woken)),
        notes,
    }
}

/// The node at `port` has a subscriber on the shard channel `channel`.
fn subscribed(port: u16, channel: &str) -> Result<Instant, String> {
    let (_, n): (String, u64) = must(port, redis::cmd("PUBSUB").arg("SHARDNUMSUB").arg(channel));
    if n > 0 {
        Ok(Instant::now())
    } else {
        Err(format!("no subscriber to {channel} on {port}"))
    }
}

/// The waiter's acquire attempts in the slow log of the node at `port` (every command is logged):
/// scripts whose arguments carry the waiter's holder label, which only the acquire script takes.
fn waiter_attempts(port: u16) -> usize {
    slowlog_count(port, |args| {
        args.first()
            .is_some_and(|a| is(a, "EVALSHA") || is(a, "EVAL"))
            && args.iter().any(|a| is(a, WAITER_LABEL))
    })
}

/// The commands in the slow log of the node at `port` whose arguments match `matching`.
fn slowlog_count(port: u16, matching: impl Fn(&[Value]) -> bool) -> usize {
    let entries: Vec<Value> = must(port, redis::cmd("SLOWLOG").arg("GET").arg(SLOWLOG_ENTRIES));
    entries
        .iter()
        .filter(|entry| match entry {
            Value::Array(fields) => match fields.get(3) {
                Some(Value::Array(args)) => matching(args),
                _ => false,
            },
            _ => false,
        })
        .count()
}

/// `v` is the bulk string `s`, in any case.
fn is(v: &Value, s: &str) -> bool {
    matches!(v, Value::BulkString(b) if b.eq_ignore_ascii_case(s.as_bytes()))
}
