//! What operators need: who holds a lock (holder label, lease left, fencing number) and taking a
//! lock away from a stuck holder. On both backends, and on Redis the value's format.

mod support;

use std::time::Duration;

use distlock::{LockError, LockOptions, Locker, MAX_HOLDER_LABEL_LEN, default_holder_label};
use redis::aio::MultiplexedConnection as Connection;
use support::fixture::Fixture;
use support::redis_server::RedisServer;
use tokio::time::Instant;

/// A lease nobody in these tests waits out: a waiter that gets the lock within `PATIENCE` got it
/// because it was released, not because it expired.
const LONG_LEASE: Duration = Duration::from_secs(120);
/// How long something the test waits for may take: generous for a loaded 2-core CI machine,
/// and still far below `LONG_LEASE`.
const PATIENCE: Duration = Duration::from_secs(30);
/// The holder's renewal interval where a test waits for the holder to notice the loss.
const RENEWAL: Duration = Duration::from_millis(200);
const LABEL: &str = "billing-7:eu west";

fn fixed(lease: Duration) -> LockOptions {
    LockOptions::new().wait(Duration::ZERO).lease(lease)
}

/// A locker whose locks record `LABEL`, with a long watchdog lease renewed often.
async fn labelled(fx: &Fixture) -> Locker {
    fx.builder()
        .holder_label(LABEL)
        .watchdog_lease(LONG_LEASE)
        .renewal_interval(RENEWAL)
        .build()
        .await
        .expect("build")
}

async fn inspect_names_the_holder_its_lease_left_and_fence_and_changes_nothing(fx: Fixture) {
    let locker = labelled(&fx).await;
    let lease = Duration::from_secs(60);
    let guard = locker
        .acquire("report", fixed(lease))
        .await
        .expect("acquire");

    let first = locker
        .inspect("report")
        .await
        .expect("inspect")
        .expect("held");
    let second = locker
        .inspect("report")
        .await
        .expect("inspect")
        .expect("held");

    assert_eq!(first.holder.as_deref(), Some(LABEL));
    assert_eq!(first.fencing_token, guard.fencing_token());
    assert!(
        first.lease_left <= lease && first.lease_left > lease - PATIENCE,
        "{first:?}"
    );
    // Read only: the lease kept running down, nothing was renewed or taken.
    assert!(
        second.lease_left <= first.lease_left,
        "{first:?} {second:?}"
    );
    assert_eq!(second.fencing_token, first.fencing_token);
    assert!(!guard.is_lost());
    guard.release().await.expect("the holder still owns it");
}

async fn inspect_and_force_release_of_a_free_lock_are_none(fx: Fixture) {
    assert_eq!(fx.locker.inspect("idle").await.expect("inspect"), None);
    assert_eq!(fx.locker.force_release("idle").await.expect("force"), None);
    let guard = fx
        .locker
        .acquire("idle", fixed(LONG_LEASE))
        .await
        .expect("acquire");
    guard.release().await.expect("release");
    assert_eq!(fx.locker.inspect("idle").await.expect("inspect"), None);
}

async fn force_release_wakes_waiters_and_the_holder_learns_it_lost_its_lease(fx: Fixture) {
    let locker = labelled(&fx).await;
    // The watchdog would keep this lock for ever: only the force release lets the waiter in.
    let stuck = locker
        .acquire("nightly", LockOptions::new().wait(Duration::ZERO))
        .await
        .expect("acquire");
    let waiter = tokio::spawn({
        let locker = locker.clone();
        async move {
            let started = Instant::now();
            let guard = locker
                .acquire(
                    "nightly",
                    LockOptions::new().wait(PATIENCE).lease(LONG_LEASE),
                )
                .await;
            (guard, started.elapsed())
        }
    });
    if fx.is_redis() {
        // The waiter subscribes before it retries and sleeps: once it is subscribed, only a
        // release message (or the lease's end, minutes away) wakes it. The memory backend has
        // no such sign, and there the waiter may also find the lock free at its first attempt.
        fx.probe().wait_until_subscribed("nightly").await;
    }

    let removed = locker
        .force_release("nightly")
        .await
        .expect("force release")
        .expect("it was held");

    assert_eq!(removed.holder.as_deref(), Some(LABEL));
    assert_eq!(removed.fencing_token, stuck.fencing_token());
    let (next, waited) = waiter.await.expect("waiter task");
    let next = next.expect("the waiter gets the lock once it is force-released");
    assert!(waited < PATIENCE, "waited {waited:?}");
    assert!(next.fencing_token() > stuck.fencing_token());
    tokio::time::timeout(PATIENCE, stuck.lost())
        .await
        .expect("the holder's next renewal finds the lock gone");
    let late = stuck.release().await;
    assert!(matches!(late, Err(LockError::LeaseLost { .. })), "{late:?}");
    // The stuck holder's late release left the new holder's lock alone.
    assert_eq!(
        locker
            .inspect("nightly")
            .await
            .expect("inspect")
            .map(|i| i.fencing_token),
        Some(next.fencing_token())
    );
    next.release().await.expect("the new holder still owns it");
}

async fn a_fixed_lease_holder_learns_at_its_release(fx: Fixture) {
    let guard = fx
        .locker
        .acquire("export", fixed(LONG_LEASE))
        .await
        .expect("acquire");
    fx.locker
        .force_release("export")
        .await
        .expect("force release")
        .expect("it was held");
    let released = guard.release().await;
    assert!(
        matches!(released, Err(LockError::LeaseLost { .. })),
        "{released:?}"
    );
}

async fn the_default_holder_label_is_host_and_pid(fx: Fixture) {
    let guard = fx
        .locker
        .acquire("who", fixed(LONG_LEASE))
        .await
        .expect("acquire");
    let info = fx
        .locker
        .inspect("who")
        .await
        .expect("inspect")
        .expect("held");
    let label = info.holder.expect("a label");
    assert_eq!(label, default_holder_label());
    assert!(
        label.ends_with(&format!(":{}", std::process::id())),
        "{label}"
    );
    guard.release().await.expect("release");
}

async fn a_holder_label_over_the_cap_is_refused_when_built(fx: Fixture) {
    let built = fx
        .builder()
        .holder_label("x".repeat(MAX_HOLDER_LABEL_LEN + 1))
        .build()
        .await;
    let reason = match built {
        Err(LockError::InvalidOptions { reason, .. }) => reason,
        other => panic!("expected InvalidOptions, got {other:?}"),
    };
    assert!(reason.contains("holder_label"), "{reason}");
}

async fn an_empty_holder_label_records_none(fx: Fixture) {
    let locker = fx.builder().holder_label("").build().await.expect("build");
    let guard = locker
        .acquire("quiet", fixed(LONG_LEASE))
        .await
        .expect("acquire");
    let info = locker
        .inspect("quiet")
        .await
        .expect("inspect")
        .expect("held");
    assert_eq!(info.holder, None);
    assert_eq!(info.fencing_token, guard.fencing_token());
    guard.release().await.expect("release");
}

conformance!(
    inspect_names_the_holder_its_lease_left_and_fence_and_changes_nothing,
    inspect_and_force_release_of_a_free_lock_are_none,
    force_release_wakes_waiters_and_the_holder_learns_it_lost_its_lease,
    a_fixed_lease_holder_learns_at_its_release,
    the_default_holder_label_is_host_and_pid,
    a_holder_label_over_the_cap_is_refused_when_built,
    an_empty_holder_label_records_none,
);

// ---- Redis: the value's format, and values of other writers ----

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

async fn get(conn: &mut Connection, name: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(name)
        .query_async(conn)
        .await
        .expect("GET")
}

async fn set(conn: &mut Connection, args: &[&str]) {
    let () = redis::cmd("SET")
        .arg(args)
        .query_async(conn)
        .await
        .expect("SET");
}

/// Waits (polling: PUBSUB has no notification) until `channel` has a subscriber.
async fn wait_for_subscriber(conn: &mut Connection, channel: &str) {
    let started = Instant::now();
    loop {
        let (_, count): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(conn)
            .await
            .expect("PUBSUB NUMSUB");
        if count > 0 {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "nobody subscribed to {channel}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_lock_value_is_token_fence_and_the_label_as_given() {
    let server = RedisServer::start();
    let mut conn = server.client().await;
    for (label, suffix) in [
        (LABEL, format!(":{LABEL}")),
        ("a:b:c", ":a:b:c".to_owned()),
        ("", String::new()),
    ] {
        let locker = Locker::builder(server.url())
            .holder_label(label)
            .build()
            .await
            .expect("build");
        let guard = locker
            .acquire("fmt", fixed(LONG_LEASE))
            .await
            .expect("acquire");
        let value = get(&mut conn, "lock:{fmt}").await.expect("held");
        let (token, rest) = value.split_at(32);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{value}");
        assert_eq!(rest, format!(":{}{suffix}", guard.fencing_token()));
        guard.release().await.expect("release");
    }
}

/// The acquire script tells our values from other writers' by their shape; a labelled value of
/// another process is a lock to wait for, not a foreign value.
#[tokio::test]
async fn a_labelled_lock_of_another_process_is_waited_for_and_shown() {
    let server = RedisServer::start();
    let locker = Locker::connect(&server.url()).await.expect("connect");
    let mut conn = server.client().await;
    let value = format!("{TOKEN}:1700000000000001:web-1:4242\n(eu)");
    set(&mut conn, &["lock:{billing}", &value, "PX", "300"]).await;

    let info = locker
        .inspect("billing")
        .await
        .expect("inspect")
        .expect("held");
    assert_eq!(info.holder.as_deref(), Some("web-1:4242\n(eu)"));
    assert_eq!(info.fencing_token, 1_700_000_000_000_001);
    let guard = locker
        .acquire("billing", LockOptions::new().wait(PATIENCE))
        .await
        .expect("the other process's lock, once expired, is ours");
    guard.release().await.expect("release");
}

#[tokio::test]
async fn the_earlier_forms_are_shown_without_a_label() {
    let server = RedisServer::start();
    let locker = Locker::connect(&server.url()).await.expect("connect");
    let mut conn = server.client().await;
    set(&mut conn, &["lock:{bare}", TOKEN, "PX", "60000"]).await;
    let unlabelled = format!("{TOKEN}:42");
    set(
        &mut conn,
        &["lock:{unlabelled}", &unlabelled, "PX", "60000"],
    )
    .await;

    let bare = locker
        .inspect("bare")
        .await
        .expect("inspect")
        .expect("held");
    let unlabelled = locker
        .inspect("unlabelled")
        .await
        .expect("inspect")
        .expect("held");

    assert_eq!((bare.holder, bare.fencing_token), (None, 0));
    assert_eq!((unlabelled.holder, unlabelled.fencing_token), (None, 42));
    assert!(locker.force_release("bare").await.expect("force").is_some());
    assert_eq!(get(&mut conn, "lock:{bare}").await, None);
}

#[tokio::test]
async fn force_release_leaves_a_value_someone_else_wrote_alone() {
    let server = RedisServer::start();
    let locker = Locker::connect(&server.url()).await.expect("connect");
    let mut conn = server.client().await;
    let ours_without_expiry = format!("{TOKEN}:1:web-1");
    for (key, value, expiry) in [
        ("text", "someone-else", Some("60000")),
        ("forever", ours_without_expiry.as_str(), None),
    ] {
        let name = format!("lock:{{{key}}}");
        match expiry {
            Some(px) => set(&mut conn, &[&name, value, "PX", px]).await,
            None => set(&mut conn, &[&name, value]).await,
        }
        for result in [locker.inspect(key).await, locker.force_release(key).await] {
            let message = match result {
                Err(e @ LockError::Backend { .. }) => e.to_string(),
                other => panic!("{key}: expected a Backend error, got {other:?}"),
            };
            assert!(message.contains("not a distlock lock"), "{message}");
        }
        assert_eq!(get(&mut conn, &name).await.as_deref(), Some(value));
    }
}

/// A second process force-releases: the holder (another locker, another connection) learns it
/// at its next renewal, and its waiters in a third locker are woken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_release_from_another_process_reaches_holder_and_waiters() {
    let server = RedisServer::start();
    let holder = Locker::builder(server.url())
        .holder_label(LABEL)
        .watchdog_lease(LONG_LEASE)
        .renewal_interval(RENEWAL)
        .build()
        .await
        .expect("build");
    let operator = Locker::connect(&server.url()).await.expect("connect");
    let other = Locker::connect(&server.url()).await.expect("connect");
    let stuck = holder
        .acquire("sync", LockOptions::new().wait(Duration::ZERO))
        .await
        .expect("acquire");
    let waiter = tokio::spawn(async move {
        other
            .acquire("sync", LockOptions::new().wait(PATIENCE).lease(LONG_LEASE))
            .await
    });
    wait_for_subscriber(&mut server.client().await, "lock:{sync}:released").await;

    let removed = operator.force_release("sync").await.expect("force");

    assert_eq!(removed.and_then(|i| i.holder).as_deref(), Some(LABEL));
    let next = waiter.await.expect("task").expect("woken, not expired");
    tokio::time::timeout(PATIENCE, stuck.lost())
        .await
        .expect("the holder's next renewal finds the lock gone");
    next.release().await.expect("release");
}
