//! The Cluster wake-up subscriber notices a node connection that went silent (a half-open
//! connection, or a host that vanished, sends no disconnection): it PINGs every primary each
//! health-check interval, and a primary that does not answer makes its waiters retry at a
//! steady pace instead of sleeping beside a free lock until the holder's expiry.

mod support;

use std::time::Duration;

use distlock::{LockOptions, Locker};
use support::cluster::RedisCluster;
use tokio::time::Instant;

/// The holder's lease: the waiter would otherwise sleep until it ends (its first retry saw it
/// busy with this much left), longer than its wait.
const LEASE: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(20);
/// Health check 250 ms: the silent connection is given up within 0.5 s, then paced retries of
/// 200 ms; 5 s leaves room for a loaded 2-core machine and is far below `LEASE` and `WAIT`.
const HEALTH_CHECK: Duration = Duration::from_millis(250);
const WOKEN_WITHIN: Duration = Duration::from_secs(5);

#[test]
fn a_waiter_whose_subscription_went_silent_still_gets_the_free_lock() {
    let cluster = RedisCluster::start_behind_proxies();
    let key = "silent";
    let node = cluster.primary_for_key(&format!("lock:{{{key}}}"));
    let proxy = node.proxy().expect("behind proxies");

    // The waiter's locker is made on a runtime that then ends: on the test's runtime its command
    // connection is made again at its first command, and its subscriber at its first wait, so
    // the proxy's connections of the latter can be told apart.
    let waiter = {
        let made = tokio::runtime::Runtime::new().unwrap();
        made.block_on(
            Locker::builder(cluster.url())
                .subscriber_health_check(HEALTH_CHECK)
                .build(),
        )
        .expect("connect")
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let holder = Locker::connect(&cluster.url()).await.expect("connect");
        let guard = holder
            .acquire(key, LockOptions::new().lease(LEASE))
            .await
            .unwrap();
        // Its command connection, anew on this runtime.
        assert!(waiter.inspect(key).await.unwrap().is_some());
        let before = proxy.accepted();
        let waiting = {
            let waiter = waiter.clone();
            tokio::spawn(async move {
                waiter
                    .acquire(key, LockOptions::new().wait(WAIT).lease(LEASE))
                    .await
            })
        };
        wait_until_subscribed(&cluster, key).await;
        // Only the subscriber's connection to the lock's node goes silent.
        proxy.stall_connections(before..proxy.accepted());
        let released = Instant::now();
        guard.release().await.unwrap();
        let got = waiting.await.unwrap();
        assert!(got.is_ok(), "the waiter never got the free lock: {got:?}");
        assert!(
            released.elapsed() < WOKEN_WITHIN,
            "the waiter got the free lock {:?} after its release",
            released.elapsed()
        );
    });
}

/// Until the lock's channel has a sharded subscriber on its node.
async fn wait_until_subscribed(cluster: &RedisCluster, key: &str) {
    let channel = format!("lock:{{{key}}}:released");
    let port = cluster.primary_for_key(&channel).port();
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, n): (String, u64) = redis::cmd("PUBSUB")
            .arg("SHARDNUMSUB")
            .arg(&channel)
            .query_async(&mut conn)
            .await
            .unwrap();
        if n > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{channel} never got a subscriber"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
