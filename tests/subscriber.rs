//! The wake-up path never hangs and never degrades silently: a locker outlives the runtime it was
//! made on, a stalled or refused subscriber connection is noticed within a bound and waiters fall
//! back to a paced retry, and connecting says at once what the server refuses.

mod support;

use std::time::Duration;

use distlock::{LockError, LockOptions, Locker};
use support::logs::Captured;
use support::proxy::Proxy;
use support::redis_server::RedisServer;
use tokio::time::Instant;

/// Slack on every bound below: the CI machine has 2 cores shared by several test binaries, and a
/// wake-up takes a few scheduler turns and round trips on top of the bound itself.
const SLACK: Duration = Duration::from_millis(1500);
/// The lease of the holders the waiters wait for: far beyond every bound here, so a waiter that
/// gets in early was woken, not let in by the holder's expiry.
const HOLDER_LEASE: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn held() -> LockOptions {
    LockOptions::new().lease(HOLDER_LEASE)
}

fn waiting(wait: Duration) -> LockOptions {
    LockOptions::new().wait(wait).lease(Duration::from_secs(5))
}

async fn acl(server: &RedisServer, args: &[&str]) {
    let mut conn = server.client().await;
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(args)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// A locker made on a runtime that is then dropped, as a `Locker` kept in a static or installed
/// outlives the runtime of, say, the first test.
fn orphaned_locker(server: &RedisServer) -> Locker {
    let first = runtime();
    let locker = first.block_on(Locker::connect(&server.url())).unwrap();
    drop(first);
    locker
}

#[test]
fn a_locker_made_on_a_dropped_runtime_runs_commands_on_the_next_one() {
    let server = RedisServer::start();
    let locker = orphaned_locker(&server);
    runtime().block_on(async {
        // The command connection's driver died with the first runtime: once "broken pipe".
        let guard = tokio::time::timeout(SLACK, locker.acquire("reborn", held()))
            .await
            .expect("the first command is answered")
            .expect("the first command works on the new runtime");
        guard.release().await.unwrap();
    });
}

#[test]
fn a_locker_made_on_a_dropped_runtime_wakes_its_waiters_on_the_next_one() {
    let server = RedisServer::start();
    let locker = orphaned_locker(&server);
    runtime().block_on(async {
        // Past the command connection (see the test above), whatever it answers.
        let _ = locker.acquire("warm-up", held()).await;
        // The subscriber task died with the first runtime too: a waiter must still subscribe
        // and be woken by the release (once it waited forever for the dead task's answer).
        let other = Locker::connect(&server.url()).await.unwrap();
        let holder = other.acquire("reborn", held()).await.unwrap();
        let waiter = {
            let locker = locker.clone();
            tokio::spawn(async move {
                locker
                    .acquire("reborn", waiting(Duration::from_secs(8)))
                    .await
            })
        };
        server.wait_until_subscribed("reborn").await;
        holder.release().await.unwrap();
        let released = Instant::now();
        let guard = waiter.await.unwrap().expect("woken by the release");
        let late = released.elapsed();
        eprintln!("woken {late:?} after the release");
        assert!(late < SLACK, "woken {late:?} after the release");
        guard.release().await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_connection_is_replaced_within_the_health_check_bound() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let holder_locker = Locker::connect(&server.url()).await.unwrap();
    let locker = Locker::connect(&proxy.url()).await.unwrap();
    let holder = holder_locker.acquire("stalled", held()).await.unwrap();
    let waiter = {
        let locker = locker.clone();
        tokio::spawn(async move {
            locker
                .acquire("stalled", waiting(Duration::from_secs(8)))
                .await
        })
    };
    server.wait_until_subscribed("stalled").await;
    // Connection 0 is the locker's command connection, 1 its subscriber: only the subscriber
    // goes half-open, and the release message it would carry is held.
    proxy.stall_connections(1..2);
    holder.release().await.unwrap();
    let released = Instant::now();
    let guard = waiter
        .await
        .unwrap()
        .expect("woken once the stall is noticed");
    let late = released.elapsed();
    eprintln!("stall noticed and waiter woken {late:?} after the release");
    // Noticed within two health-check intervals; then a new connection, a resubscribe and a
    // retry.
    let bound = 2 * distlock::DEFAULT_SUBSCRIBER_HEALTH_CHECK + SLACK;
    assert!(
        late < bound,
        "woken {late:?} after the release (bound {bound:?})"
    );
    guard.release().await.unwrap();
}

#[test]
fn without_a_working_subscription_a_waiter_retries_at_a_steady_pace_and_warns_once() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let logs = Captured::default();
    tracing::subscriber::with_default(logs.subscriber(tracing::Level::DEBUG), || {
        runtime().block_on(async {
            let health_check = Duration::from_millis(200);
            let holder_locker = Locker::connect(&server.url()).await.unwrap();
            let locker = Locker::builder(proxy.url())
                .subscriber_health_check(health_check)
                .connect_timeout(Duration::from_millis(300))
                .build()
                .await
                .unwrap();
            let holder = holder_locker.acquire("paced", held()).await.unwrap();
            let waiter = {
                let locker = locker.clone();
                tokio::spawn(async move {
                    locker
                        .acquire("paced", waiting(Duration::from_secs(8)))
                        .await
                })
            };
            server.wait_until_subscribed("paced").await;
            // The subscriber and every connection after it hang: no subscription can be made
            // again, only the command connection (0) works.
            proxy.stall_connections(1..u64::MAX);
            holder.release().await.unwrap();
            let released = Instant::now();
            let guard = waiter
                .await
                .unwrap()
                .expect("a paced retry finds the lock free");
            let late = released.elapsed();
            eprintln!("waiter got the free lock {late:?} after the release");
            // The stall is noticed within two health-check intervals, then the waiter retries
            // every FALLBACK_RETRY_INTERVAL.
            let bound = 2 * health_check + distlock::FALLBACK_RETRY_INTERVAL + SLACK;
            assert!(
                late < bound,
                "got the lock {late:?} after the release (bound {bound:?})"
            );
            // Further failed reconnects belong to the same outage.
            tokio::time::sleep(4 * health_check).await;
            guard.release().await.unwrap();
        });
    });
    let warnings = logs.lines("WARN", "wake-up subscriber unavailable");
    assert_eq!(warnings.len(), 1, "one WARN per outage:\n{}", logs.text());
    eprintln!("{}", warnings[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscribe_of_one_key_does_not_hold_up_waiters_of_another() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let holder_locker = Locker::connect(&server.url()).await.unwrap();
    // Long timeouts and health checks: the only way out for the waiter of "b" is not to queue
    // behind the stalled SUBSCRIBE of "a".
    let locker = Locker::builder(proxy.url())
        .connect_timeout(Duration::from_secs(10))
        .response_timeout(Duration::from_secs(10))
        .subscriber_health_check(Duration::from_secs(30))
        .build()
        .await
        .unwrap();
    let holder_a = holder_locker.acquire("a", held()).await.unwrap();
    let holder_b = holder_locker.acquire("b", held()).await.unwrap();
    proxy.stall_connections(1..u64::MAX);
    let waiter = |key: &'static str| {
        let locker = locker.clone();
        tokio::spawn(async move { locker.acquire(key, waiting(Duration::from_secs(5))).await })
    };
    // Each waiter's first attempt (busy) is its signal that it went on to subscribe.
    let attempts = server.command_calls("evalsha").await;
    let waiter_a = waiter("a");
    server.wait_for_calls("evalsha", attempts + 1).await;
    let waiter_b = waiter("b");
    server.wait_for_calls("evalsha", attempts + 2).await;
    holder_b.release().await.unwrap();
    let released = Instant::now();
    let guard = waiter_b
        .await
        .unwrap()
        .expect("b's waiter is not held up by a's subscribe");
    let late = released.elapsed();
    eprintln!("b's waiter got the lock {late:?} after its release");
    let bound = distlock::FALLBACK_RETRY_INTERVAL * 2 + SLACK;
    assert!(late < bound, "{late:?} (bound {bound:?})");
    guard.release().await.unwrap();
    holder_a.release().await.unwrap();
    waiter_a.await.unwrap().unwrap().release().await.unwrap();
}

#[tokio::test]
async fn a_full_server_is_reported_in_its_own_words() {
    // The only slot taken: the command connection is refused.
    let server = RedisServer::start_with(&["--maxclients", "1"]);
    let _taken = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    let err = Locker::connect(&server.url()).await.unwrap_err();
    eprintln!("{err}");
    assert!(matches!(err, LockError::Backend { .. }), "{err}");
    assert!(
        err.to_string().contains("max number of clients reached"),
        "{err}"
    );
    drop(_taken);

    // One slot left: the command connection gets it, the subscriber is refused.
    let server = RedisServer::start_with(&["--maxclients", "2"]);
    let _taken = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    let err = Locker::connect(&server.url()).await.unwrap_err();
    let text = err.to_string();
    eprintln!("{text}");
    assert!(text.contains("max number of clients reached"), "{text}");
    assert!(text.contains("subscriber"), "{text}");
}

#[tokio::test]
async fn connect_names_the_permission_the_user_lacks() {
    let server = RedisServer::start();
    let url = |user: &str| format!("redis://{user}:pw@127.0.0.1:{}/", server.port());
    acl(
        &server,
        &["noscripts", "on", ">pw", "~*", "&*", "+@all", "-evalsha"],
    )
    .await;
    acl(
        &server,
        &["nochannels", "on", ">pw", "~*", "resetchannels", "+@all"],
    )
    .await;
    acl(
        &server,
        &["noconfig", "on", ">pw", "~*", "&*", "+@all", "-config"],
    )
    .await;

    let err = Locker::connect(&url("noscripts")).await.unwrap_err();
    let text = err.to_string();
    eprintln!("{text}");
    assert!(text.contains("EVALSHA"), "names what is missing: {text}");
    assert!(
        text.contains("no permissions"),
        "the server's own words: {text}"
    );

    let err = Locker::connect(&url("nochannels")).await.unwrap_err();
    let text = err.to_string();
    eprintln!("{text}");
    assert!(text.contains("channel"), "names what is missing: {text}");
    assert!(
        text.contains("no permissions"),
        "the server's own words: {text}"
    );

    // CONFIG is only asked for the eviction policy: without it the locker works.
    let locker = Locker::connect(&url("noconfig"))
        .await
        .expect("CONFIG is optional");
    locker
        .acquire("k", held())
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

#[test]
fn an_eviction_policy_that_can_drop_locks_is_a_warning_with_the_fix() {
    for (policy, warned) in [
        ("allkeys-lru", true),
        ("volatile-ttl", true),
        ("noeviction", false),
    ] {
        let server = RedisServer::start_with(&["--maxmemory-policy", policy]);
        let logs = Captured::default();
        tracing::subscriber::with_default(logs.subscriber(tracing::Level::DEBUG), || {
            runtime().block_on(async {
                Locker::connect(&server.url()).await.unwrap();
            });
        });
        let warnings = logs.lines("WARN", "maxmemory-policy");
        if !warned {
            assert!(warnings.is_empty(), "{policy}: {warnings:?}");
            continue;
        }
        assert_eq!(warnings.len(), 1, "{policy}:\n{}", logs.text());
        eprintln!("{}", warnings[0]);
        assert!(warnings[0].contains(policy), "{}", warnings[0]);
        assert!(
            warnings[0].contains("CONFIG SET maxmemory-policy noeviction"),
            "{}",
            warnings[0]
        );
    }
}
