//! Replica acknowledgement (`replica_acks`) on a primary with one replica: a lock counts only once
//! the replica has it, in the same round trip as the acquire; a replica that cannot acknowledge
//! makes the acquisition fail (and leaves nothing held), where without the option the primary
//! grants a lock no replica has, which a failover right then would lose.

mod support;

use std::time::Duration;

use distlock::{LockError, LockOptions, Locker};
use support::redis_server::RedisServer;
use support::worker::{cont, stop, wait_until_stopped};
use tokio::time::Instant;

/// Long enough for a replica on a loaded 2-core machine to acknowledge a write.
const ACKS_WITHIN: Duration = Duration::from_secs(2);
/// How long a test waits for a stopped replica's acknowledgement: short, it never comes (only
/// attempts made while the replica is stopped use it; the others allow `ACKS_WITHIN`).
const STOPPED_ACKS_WITHIN: Duration = Duration::from_millis(300);
const LEASE: Duration = Duration::from_secs(30);

/// A primary and a replica of it, in sync: online as the primary sees it (the replica says its
/// link is up as soon as it has loaded the snapshot, but the primary counts it, and WAIT waits
/// for it, only from its first acknowledgement, up to a second later).
async fn primary_and_replica() -> (RedisServer, RedisServer) {
    let primary = RedisServer::start();
    let port = primary.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    let mut conn = primary.client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await
            .unwrap();
        if info.contains("state=online") {
            return (primary, replica);
        }
        assert!(
            Instant::now() < deadline,
            "the replica never synced: {info}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A locker whose locks wait `STOPPED_ACKS_WITHIN` for the replica unless they say otherwise.
async fn stopped_bound_locker(primary: &RedisServer) -> Locker {
    Locker::builder(primary.url())
        .replica_acks(STOPPED_ACKS_WITHIN)
        .build()
        .await
        .unwrap()
}

/// SIGSTOP: the replica stays connected but answers nothing, acknowledgements included.
struct Stopped(u32);

impl Stopped {
    fn stop(server: &RedisServer) -> Self {
        let pid = server.pid().expect("the server is running");
        stop(pid);
        wait_until_stopped(pid, Duration::from_secs(5));
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        cont(self.0);
    }
}

async fn value(server: &RedisServer, name: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(name)
        .query_async(&mut server.client().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_acknowledged_lock_is_on_the_replica_when_acquire_returns() {
    let (primary, replica) = primary_and_replica().await;
    let locker = Locker::builder(primary.url())
        .replica_acks(ACKS_WITHIN)
        .build()
        .await
        .unwrap();
    for round in 0..20 {
        let guard = locker
            .acquire("acked", LockOptions::new().lease(LEASE))
            .await
            .unwrap();
        let on_replica = value(&replica, "lock:{acked}").await;
        let fence = guard.fencing_token().to_string();
        assert!(
            on_replica.as_deref().is_some_and(|v| v.contains(&fence)),
            "round {round}: the replica has {on_replica:?}, not the lock with fence {fence}"
        );
        guard.release().await.unwrap();
    }
}

#[tokio::test]
async fn after_the_first_step_each_acknowledged_step_is_one_round_trip() {
    let (primary, _replica) = primary_and_replica().await;
    let locker = Locker::builder(primary.url())
        .replica_acks(ACKS_WITHIN)
        .build()
        .await
        .unwrap();
    // The first step learns how many replicas there are: its WAIT for 0 is followed by one for 1.
    let first = locker
        .acquire("rt", LockOptions::new().lease(LEASE))
        .await
        .unwrap();
    first.release().await.unwrap();
    let waits = primary.command_calls("wait").await;
    let scripts = primary.command_calls("evalsha").await;
    for _ in 0..10 {
        let guard = locker
            .acquire("rt", LockOptions::new().lease(LEASE))
            .await
            .unwrap();
        guard.release().await.unwrap();
    }
    // One pipeline per acquire: the script, WAIT, INFO; a release waits for nothing.
    assert_eq!(primary.command_calls("wait").await - waits, 10);
    assert_eq!(primary.command_calls("evalsha").await - scripts, 20);
}

#[tokio::test]
async fn a_lock_no_replica_acknowledges_is_given_up_and_the_caller_told() {
    let (primary, replica) = primary_and_replica().await;
    let locker = stopped_bound_locker(&primary).await;
    // Learn the replica count first, while the replica answers.
    let warm = locker
        .acquire(
            "warm",
            LockOptions::new().lease(LEASE).replica_acks(ACKS_WITHIN),
        )
        .await
        .unwrap();
    warm.release().await.unwrap();

    let stopped = Stopped::stop(&replica);
    let error = locker
        .acquire(
            "unacked",
            LockOptions::new().wait(Duration::ZERO).lease(LEASE),
        )
        .await
        .expect_err("no replica acknowledged it");
    match &error {
        LockError::Backend { source, .. } if source.is_not_replicated() => {}
        other => panic!("expected a not-replicated backend error, got {other:?}"),
    }
    assert!(error.to_string().contains("0 of the 1 replicas"), "{error}");
    // Given up again: the lock is free for the next caller (the release runs in the background).
    let deadline = Instant::now() + Duration::from_secs(5);
    while value(&primary, "lock:{unacked}").await.is_some() {
        assert!(
            Instant::now() < deadline,
            "the unacknowledged lock is still held"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Control: the same lock without acknowledgement is granted though the replica is frozen,
    // so a failover now would lose it.
    let unsafe_guard = locker
        .acquire(
            "unacked",
            LockOptions::new()
                .wait(Duration::ZERO)
                .lease(LEASE)
                .without_replica_acks(),
        )
        .await
        .expect("granted without the replica");
    drop(stopped);
    unsafe_guard.release().await.unwrap();
}

#[tokio::test]
async fn a_per_lock_bound_asks_for_acknowledgement_on_a_locker_without_one() {
    let (primary, replica) = primary_and_replica().await;
    let locker = Locker::connect(&primary.url()).await.unwrap();
    let warm = locker
        .acquire(
            "warm",
            LockOptions::new().lease(LEASE).replica_acks(ACKS_WITHIN),
        )
        .await
        .unwrap();
    warm.release().await.unwrap();
    let _stopped = Stopped::stop(&replica);
    let error = locker
        .acquire(
            "per-lock",
            LockOptions::new()
                .wait(Duration::ZERO)
                .lease(LEASE)
                .replica_acks(STOPPED_ACKS_WITHIN),
        )
        .await
        .expect_err("no replica acknowledged it");
    assert!(
        matches!(&error, LockError::Backend { source, .. } if source.is_not_replicated()),
        "{error:?}"
    );
    // A bound the response timeout (3 s by default) would cut short is refused.
    let error = locker
        .acquire(
            "too-long",
            LockOptions::new().replica_acks(Duration::from_secs(3)),
        )
        .await
        .expect_err("WAIT could not answer within the response timeout");
    assert!(
        matches!(&error, LockError::InvalidOptions { .. }),
        "{error:?}"
    );
    // The locker's own default (none) still grants at once.
    let guard = locker
        .acquire(
            "other",
            LockOptions::new().wait(Duration::ZERO).lease(LEASE),
        )
        .await
        .unwrap();
    guard.release().await.unwrap();
}

#[tokio::test]
async fn a_zero_bound_is_refused() {
    let locker = Locker::in_memory();
    let error = locker
        .acquire("k", LockOptions::new().replica_acks(Duration::ZERO))
        .await
        .expect_err("zero is no bound");
    assert!(
        matches!(error, LockError::InvalidOptions { .. }),
        "{error:?}"
    );
    let error = Locker::in_memory_builder()
        .replica_acks(Duration::ZERO)
        .build()
        .await
        .expect_err("zero is no bound");
    assert!(error.to_string().contains("replica_acks"), "{error}");
}

/// A release that hands the lock to a waiting task of the same locker, when the replicas do not
/// acknowledge the hand-over: the releaser's hold did end, so its release succeeds; the waiter is
/// not handed a lock it cannot trust, and its own acknowledged attempt fails as not replicated.
#[tokio::test]
async fn an_unacknowledged_hand_over_is_still_a_clean_release() {
    let (primary, replica) = primary_and_replica().await;
    let locker = stopped_bound_locker(&primary).await;
    let holder = locker
        .acquire(
            "handed",
            LockOptions::new().lease(LEASE).replica_acks(ACKS_WITHIN),
        )
        .await
        .unwrap();
    let waiting = {
        let locker = locker.clone();
        tokio::spawn(async move {
            locker
                .acquire(
                    "handed",
                    LockOptions::new().wait(Duration::from_secs(5)).lease(LEASE),
                )
                .await
        })
    };
    primary.wait_until_subscribed("handed").await;
    let stopped = Stopped::stop(&replica);
    holder
        .release()
        .await
        .expect("the holder's release ended its hold: not an error");
    let waited = waiting.await.unwrap();
    match &waited {
        Err(LockError::Backend { source, .. }) if source.is_not_replicated() => {}
        other => panic!("the waiter got {other:?}, not a not-replicated error"),
    }
    drop(stopped);
    let deadline = Instant::now() + Duration::from_secs(5);
    while value(&primary, "lock:{handed}").await.is_some() {
        assert!(
            Instant::now() < deadline,
            "the unacknowledged lock is still held"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A user who may take locks but not send WAIT: a locker asked to wait for replicas says so at
/// connect, naming the grant, instead of failing every acquisition later. The control connects
/// the same user without the option.
#[tokio::test]
async fn a_user_without_wait_is_told_at_connect() {
    let server = RedisServer::start();
    let mut admin = server.client().await;
    let () = redis::cmd("ACL")
        .arg(&[
            "SETUSER", "locks", "on", ">pw", "~*", "&*", "+@all", "-wait",
        ])
        .query_async(&mut admin)
        .await
        .unwrap();
    let url = format!("redis://locks:pw@127.0.0.1:{}/", server.port());
    Locker::connect(&url)
        .await
        .expect("the control: no WAIT needed");
    let error = Locker::builder(url.as_str())
        .replica_acks(ACKS_WITHIN)
        .build()
        .await
        .expect_err("WAIT is denied");
    let text = error.to_string();
    assert!(text.contains("WAIT") && text.contains("+wait"), "{text}");
    assert!(
        matches!(&error, LockError::Backend { source, .. } if source.server_code() == Some("NOPERM")),
        "{error:?}"
    );
}
