//! Fault 15: the waiters' wake-up subscriber connection is stalled or killed. Waiters reach
//! Redis through the fault proxy; a holder on a direct connection keeps each round's key. Once
//! the waiter is subscribed, its subscriber connection is (a) stalled (half-open: the release
//! message is held), (b) killed by the server (`CLIENT KILL TYPE pubsub`: the message is
//! published to nobody), or (c) stalled together with every connection made after it (no
//! subscription can be made again); then the holder releases.
//!
//! Promised (lib.rs, `DEFAULT_SUBSCRIBER_HEALTH_CHECK`, `FALLBACK_RETRY_INTERVAL`): the waiter
//! gets the free lock within two health-check intervals plus one paced retry, never only at the
//! holder's expiry (30 s here); no overlap.

use std::time::Duration;

use distlock::{LockOptions, Locker};
use redis::aio::MultiplexedConnection as Connection;
use tokio::time::Instant;

use crate::report::FaultRow;
use crate::support::checker;
use crate::support::proxy::Proxy;
use crate::support::records::{Record, monotonic_ns};
use crate::support::redis_server::RedisServer;

/// The waiters' locker checks its subscriber this often (the default is 1 s; shorter keeps the
/// row quick, and the bound scales with it).
const HEALTH_CHECK: Duration = Duration::from_millis(250);
const ROUNDS_PER_KIND: usize = 3;
const HOLDER_LEASE: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(10);
/// Above the bound: a reconnect (connect, HELLO, SUBSCRIBE) and a retry on a loaded 2-core
/// machine running a debug build.
const SLACK: Duration = Duration::from_millis(1500);
/// How long a subscription may take to show on the server.
const SUBSCRIBE_BOUND: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stalled,
    Killed,
    NoneWorks,
}

pub fn run() -> FaultRow {
    crate::runtime().block_on(subscriber())
}

async fn subscribed(conn: &mut Connection, key: &str) -> bool {
    let (_, n): (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("lock:{{{key}}}:released"))
        .query_async(conn)
        .await
        .expect("PUBSUB NUMSUB");
    n > 0
}

async fn subscriber() -> FaultRow {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let mut probe = server.client().await;
    let holders = Locker::connect(&server.url()).await.expect("connect");
    let waiters = Locker::builder(proxy.url())
        .subscriber_health_check(HEALTH_CHECK)
        .connect_timeout(Duration::from_millis(300))
        .build()
        .await
        .expect("connect through the proxy");
    let bound = 2 * HEALTH_CHECK + distlock::FALLBACK_RETRY_INTERVAL + SLACK;
    let mut records = Vec::new();
    let mut woken: Vec<(Kind, Duration)> = Vec::new();
    let mut previous_subscriber = None;
    let kinds = [Kind::Stalled, Kind::Killed, Kind::NoneWorks];
    for (n, kind) in kinds
        .iter()
        .flat_map(|k| std::iter::repeat_n(*k, ROUNDS_PER_KIND))
        .enumerate()
    {
        let key = format!("subscriber:{n}");
        let holder = holders
            .acquire(&key, LockOptions::new().lease(HOLDER_LEASE))
            .await
            .expect("the holder takes its free lock");
        let holder_enter = monotonic_ns();
        let waiter = {
            let (waiters, key) = (waiters.clone(), key.clone());
            tokio::spawn(async move {
                let guard = waiters
                    .acquire(&key, LockOptions::new().wait(WAIT))
                    .await
                    .unwrap_or_else(|e| panic!("{key}: the waiter: {e}"));
                let (at, enter_ns) = (Instant::now(), monotonic_ns());
                let record = Record::section(
                    &key,
                    guard.fencing_token(),
                    1,
                    enter_ns,
                    monotonic_ns(),
                    false,
                );
                guard.release().await.expect("the waiter's release");
                (at, record)
            })
        };
        let deadline = Instant::now() + SUBSCRIBE_BOUND;
        while !subscribed(&mut probe, &key).await {
            assert!(
                Instant::now() < deadline,
                "{key}: the waiter never subscribed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The connection made last is the subscriber: the command connection is made at
        // connect and stays, and each replaced subscriber comes after it.
        // Usually this round's subscriber is a new one. But the waiter may get the lock by a
        // paced retry before the health check has given up on a stalled subscriber, and the
        // heal then lets that connection answer again, so it stays: still the last one made.
        let subscriber_id = proxy.accepted() - 1;
        if let Some(previous) = previous_subscriber {
            assert!(
                subscriber_id >= previous,
                "round {n}: the connection counter went back"
            );
        }
        previous_subscriber = Some(subscriber_id);
        match kind {
            Kind::Stalled => proxy.stall_connections(subscriber_id..subscriber_id + 1),
            Kind::NoneWorks => proxy.stall_connections(subscriber_id..u64::MAX),
            Kind::Killed => {
                let killed: u64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("pubsub")
                    .query_async(&mut probe)
                    .await
                    .expect("CLIENT KILL TYPE pubsub");
                assert!(killed >= 1, "no subscriber connection to kill");
            }
        }
        let fence = holder.fencing_token();
        let holder_exit = monotonic_ns();
        holder.release().await.expect("the holder's release");
        let released = Instant::now();
        let (at, record) = crate::within(WAIT, "a waiter", waiter)
            .await
            .expect("waiter task");
        proxy.heal();
        let late = at.saturating_duration_since(released);
        assert!(
            late < bound,
            "{kind:?}: the waiter got the free lock {late:?} after the release, bound {bound:?}"
        );
        woken.push((kind, late));
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
    let report = checker::check(&records);
    assert_eq!(report.total.overlaps, 0, "two holders at once: {report}");
    let worst = |kind: Kind| {
        woken
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, d)| *d)
            .max()
            .unwrap_or_default()
    };
    let figures = format!(
        "release to the waiter's acquire at worst {:.0} ms stalled, {:.0} ms killed, {:.0} ms \
         with no connection working (bound 2 x {} ms health check + {} ms paced retry + {} ms); \
         never the holder's expiry ({HOLDER_LEASE:?})",
        worst(Kind::Stalled).as_secs_f64() * 1e3,
        worst(Kind::Killed).as_secs_f64() * 1e3,
        worst(Kind::NoneWorks).as_secs_f64() * 1e3,
        HEALTH_CHECK.as_millis(),
        distlock::FALLBACK_RETRY_INTERVAL.as_millis(),
        SLACK.as_millis()
    );
    println!("  {woken:?}; {figures}");
    FaultRow {
        fault: "Subscriber stalled or killed",
        injected: format!(
            "a waiter's subscriber connection (through the proxy) stalled, killed (CLIENT KILL \
             TYPE pubsub), or stalled with every later connection, just before the release; \
             {ROUNDS_PER_KIND} rounds each; health check {HEALTH_CHECK:?}"
        ),
        sections: records.len() as u64,
        overlaps: report.total.unreported_overlaps,
        lost: 0,
        lost_reported: 0,
        recovery: woken.iter().map(|(_, d)| *d).max(),
        notes: figures,
    }
}
