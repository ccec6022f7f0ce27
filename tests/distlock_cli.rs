//! The operator's tool (`examples/distlock_cli.rs`) as an operator runs it: a process given
//! `REDIS_URL`, against a private redis-server (and a private Cluster and Sentinel setup) where
//! another locker holds locks.

mod support;

use std::process::Output;
use std::time::Duration;

use distlock::{LockGuard, LockOptions, Locker};
use redis::AsyncCommands;
use support::cluster::RedisCluster;
use support::redis_server::RedisServer;
use support::sentinel::RedisSentinel;
use support::worker::example;

/// How long something the test waits for may take: generous for a loaded 2-core CI machine.
const PATIENCE: Duration = Duration::from_secs(30);
/// Leases nobody here waits out.
const LONG_LEASE: Duration = Duration::from_secs(120);
const HOLDER: &str = "worker-A";

/// Runs the tool with `REDIS_URL` (when given) and nothing else of the caller's distlock settings.
async fn cli(url: Option<&str>, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(example("distlock_cli"));
    command
        .args(args)
        .env_remove("REDIS_URL")
        .env_remove("DISTLOCK_KEY_PREFIX")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    if let Some(url) = url {
        command.env("REDIS_URL", url);
    }
    tokio::time::timeout(PATIENCE, command.output())
        .await
        .expect("the tool finishes")
        .expect("the tool runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The data line of `key` in `list`'s output, split at its tabs.
fn row<'a>(listing: &'a str, key: &str) -> Option<Vec<&'a str>> {
    listing
        .lines()
        .map(|line| line.split('\t').collect::<Vec<_>>())
        .find(|fields| fields[0] == key)
}

async fn holder(url: &str, prefix: &str) -> Locker {
    Locker::builder(url)
        .key_prefix(prefix)
        .holder_label(HOLDER)
        .watchdog_lease(LONG_LEASE)
        .renewal_interval(Duration::from_millis(200))
        .build()
        .await
        .expect("build")
}

async fn take(locker: &Locker, key: &str, options: LockOptions) -> LockGuard {
    locker
        .acquire(key, options.wait(Duration::ZERO))
        .await
        .expect("acquire")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_shows_and_force_releases_the_locks_under_a_prefix() {
    let server = RedisServer::start();
    let url = server.url();
    let locker = holder(&url, "lock:").await;
    let elsewhere = holder(&url, "app:").await;
    let watched = take(&locker, "orders:1", LockOptions::new()).await;
    let fixed = take(&locker, "orders:2", LockOptions::new().lease(LONG_LEASE)).await;
    let other_prefix = take(&elsewhere, "orders:9", LockOptions::new().lease(LONG_LEASE)).await;
    let mut conn = server.client().await;
    let () = redis::cmd("SET")
        .arg(&["lock:{junk}", "someone-else"])
        .query_async(&mut conn)
        .await
        .expect("SET");

    let listed = cli(Some(&url), &["list"]).await;
    let listing = stdout(&listed);
    assert!(listed.status.success(), "{listed:?}");
    assert!(
        listing.starts_with("KEY\tHOLDER\tLEASE LEFT\tFENCING TOKEN\n"),
        "{listing}"
    );
    for guard in [&watched, &fixed] {
        let fields = row(&listing, guard.key()).expect("listed");
        assert_eq!(fields[1], HOLDER, "{listing}");
        assert_eq!(fields[3], guard.fencing_token().to_string(), "{listing}");
    }
    assert_eq!(
        listing.lines().count(),
        3,
        "header and two locks: {listing}"
    );
    assert!(
        stderr(&listed).contains("not a distlock lock"),
        "{listed:?}"
    );

    let one = stdout(&cli(Some(&url), &["list", "*:1"]).await);
    assert!(
        row(&one, "orders:1").is_some() && row(&one, "orders:2").is_none(),
        "{one}"
    );
    let app = stdout(&cli(Some(&url), &["--prefix", "app:", "list"]).await);
    let fields = row(&app, "orders:9").expect("listed under app:");
    assert_eq!(fields[3], other_prefix.fencing_token().to_string(), "{app}");

    let shown = cli(Some(&url), &["show", "orders:2"]).await;
    assert!(shown.status.success(), "{shown:?}");
    let shown = stdout(&shown);
    assert!(
        shown.contains(&format!("holder:        {HOLDER}\n")),
        "{shown}"
    );
    let fence_line = format!("fencing token: {}\n", fixed.fencing_token());
    assert!(shown.contains(&fence_line), "{shown}");

    let forced = cli(Some(&url), &["force-release", "orders:1"]).await;
    assert!(forced.status.success(), "{forced:?}");
    let said = format!(
        "released orders:1: holder {HOLDER}, fencing token {}",
        watched.fencing_token()
    );
    assert!(stdout(&forced).contains(&said), "{forced:?}");
    let log = stderr(&forced);
    assert!(
        log.contains("WARN") && log.contains("force-released"),
        "{log}"
    );
    assert!(log.contains(HOLDER), "{log}");

    let after = cli(Some(&url), &["show", "orders:1"]).await;
    assert_eq!(after.status.code(), Some(1), "{after:?}");
    assert!(stdout(&after).contains("orders:1 is free"), "{after:?}");
    let again = cli(Some(&url), &["force-release", "orders:1"]).await;
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    tokio::time::timeout(PATIENCE, watched.lost())
        .await
        .expect("the holder's next renewal finds the lock gone");
    fixed
        .release()
        .await
        .expect("untouched by the force release");
    other_prefix.release().await.expect("release");
}

/// Other keys on every primary: more than the tool's SCAN batch (1000), so each primary's cursor
/// is followed past its first reply.
const FILLER_PER_LOCK: usize = 1500;

/// On a Cluster the locks' names are spread over the primaries, and a SCAN cursor belongs to
/// one node: `list` walks every primary; show and force-release reach the lock's own shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_it_lists_the_locks_of_every_primary() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("cluster");
    let url = cluster.url();
    let locker = holder(&url, "lock:").await;
    let primaries = cluster.primaries().len();
    let mut shards = std::collections::HashSet::new();
    let mut guards = Vec::new();
    let mut data = cluster.client().await;
    for i in 0.. {
        let key = format!("orders:{i}");
        // The lock `lock:{orders:i}` and the filler `{orders:i}:n` share a slot.
        let filler: Vec<(String, u8)> = (0..FILLER_PER_LOCK)
            .map(|n| (format!("{{{key}}}:{n}"), 0))
            .collect();
        let () = data.mset(&filler).await.expect("MSET");
        shards.insert(cluster.primary_for_key(&format!("lock:{{{key}}}")).port());
        guards.push(take(&locker, &key, LockOptions::new().lease(LONG_LEASE)).await);
        if shards.len() == primaries {
            break;
        }
    }

    let listed = cli(Some(&url), &["list"]).await;
    let listing = stdout(&listed);
    assert!(listed.status.success(), "{listed:?}");
    for guard in &guards {
        let fields = row(&listing, guard.key()).expect("listed");
        assert_eq!(fields[1], HOLDER, "{listing}");
        assert_eq!(fields[3], guard.fencing_token().to_string(), "{listing}");
    }
    assert_eq!(
        listing.lines().count(),
        1 + guards.len(),
        "header and the locks of {primaries} primaries: {listing}"
    );

    let last = guards.pop().expect("a lock");
    let shown = cli(Some(&url), &["show", last.key()]).await;
    assert!(shown.status.success(), "{shown:?}");
    let fence_line = format!("fencing token: {}\n", last.fencing_token());
    assert!(stdout(&shown).contains(&fence_line), "{shown:?}");
    let forced = cli(Some(&url), &["force-release", last.key()]).await;
    assert!(forced.status.success(), "{forced:?}");
    let after = cli(Some(&url), &["show", last.key()]).await;
    assert_eq!(after.status.code(), Some(1), "{after:?}");
    for guard in guards {
        guard
            .release()
            .await
            .expect("untouched by the force release");
    }
}

/// Behind Sentinel, `list` walks the primary the sentinels name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_sentinel_it_lists_the_locks_of_the_primary() {
    let sentinel = tokio::task::spawn_blocking(RedisSentinel::start)
        .await
        .expect("sentinel setup");
    let url = sentinel.url();
    let locker = holder(&url, "lock:").await;
    let held = take(&locker, "orders:1", LockOptions::new().lease(LONG_LEASE)).await;

    let listed = cli(Some(&url), &["list"]).await;
    let listing = stdout(&listed);
    assert!(listed.status.success(), "{listed:?}");
    let fields = row(&listing, "orders:1").expect("listed");
    assert_eq!(fields[3], held.fencing_token().to_string(), "{listing}");
    held.release().await.expect("release");
}

#[tokio::test]
async fn without_redis_url_it_says_what_to_set() {
    let output = cli(None, &["list"]).await;
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let said = stderr(&output);
    assert!(said.contains("REDIS_URL is not set"), "{said}");
}
