//! The operator's tool (`examples/distlock_cli.rs`) as an operator runs it: a process given
//! `REDIS_URL`, against a private redis-server where another locker holds locks.

mod support;

use std::process::Output;
use std::time::Duration;

use distlock::{LockGuard, LockOptions, Locker};
use support::redis_server::RedisServer;
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

async fn holder(server: &RedisServer, prefix: &str) -> Locker {
    Locker::builder(server.url())
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
    let locker = holder(&server, "lock:").await;
    let elsewhere = holder(&server, "app:").await;
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

#[tokio::test]
async fn without_redis_url_it_says_what_to_set() {
    let output = cli(None, &["list"]).await;
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let said = stderr(&output);
    assert!(said.contains("REDIS_URL is not set"), "{said}");
}
