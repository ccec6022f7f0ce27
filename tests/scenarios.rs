//! The seed scenarios across real processes: replicas of `examples/scheduler.rs` against a private
//! redis-server (and the demo against a private Cluster and Sentinel setup), each with its control
//! run without the lock.

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use distlock::{LockError, Locker, distributed_lock};
use redis::AsyncCommands;
use support::cluster::RedisCluster;
use support::redis_server::RedisServer;
use support::sentinel::RedisSentinel;
use tokio::sync::Barrier;

struct Run {
    summary: HashMap<String, f64>,
    report: String,
}

/// Runs one replica process per skew against `url`, waits for all, and reads the report.
fn run_replicas(url: &str, cron: &str, duration: &str, skews_ms: &[u64], locked: bool) -> Run {
    let bin = support::worker::example("scheduler");
    let mut children = Vec::new();
    for (i, skew) in skews_ms.iter().enumerate() {
        let mut cmd = Command::new(&bin);
        cmd.env("REDIS_URL", url)
            .args([
                "--replica",
                &(i + 1).to_string(),
                "--cron",
                cron,
                "--duration",
                duration,
            ])
            .args(["--clock-skew", &skew.to_string()])
            .stdout(Stdio::null());
        if !locked {
            cmd.arg("--no-lock");
        }
        children.push(cmd.spawn().expect("start a replica"));
    }
    for mut child in children {
        let status = child.wait().expect("replica");
        assert!(status.success(), "a replica failed: {status}");
    }
    let out = Command::new(&bin)
        .env("REDIS_URL", url)
        .arg("report")
        .output()
        .expect("report");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let summary = report
        .lines()
        .find(|l| l.starts_with("summary "))
        .unwrap_or_else(|| panic!("no summary in:\n{report}"))
        .split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.parse().unwrap_or(f64::NAN)))
        .collect();
    println!(
        "{}{report}",
        if locked {
            "LOCKED\n"
        } else {
            "CONTROL (--no-lock)\n"
        }
    );
    Run { summary, report }
}

/// Ranking flush: three replicas whose ticks fire at the same instant (every second for 4 s,
/// ~800 keywords each). Locked, the ranking records every keyword and waiters are woken by the
/// release; without the lock, concurrent read-modify-writes lose counts.
#[test]
fn ranking_flushes_lose_nothing_under_the_lock_and_waiters_are_woken_at_release() {
    let (locked_server, control_server) = (RedisServer::start(), RedisServer::start());
    let control = std::thread::spawn(move || {
        let run = run_replicas(
            &control_server.url(),
            "* * * * * *",
            "4s",
            &[0, 0, 0],
            false,
        );
        run.summary
    });
    let locked = run_replicas(&locked_server.url(), "* * * * * *", "4s", &[0, 0, 0], true);
    let control = control.join().unwrap();

    let s = &locked.summary;
    assert!(
        s["searched"] >= 3.0 * 300.0,
        "too few keywords for a test: {}",
        locked.report
    );
    assert_eq!(
        s["recorded"], s["searched"],
        "the locked run lost keywords:\n{}",
        locked.report
    );
    assert_eq!(s["overlaps"], 0.0, "two flushes ran at once under the lock");
    assert!(
        control["lost"] > 0.0,
        "the control lost nothing, so there was no contention: {control:?}"
    );

    // Cross-process waiting: replicas that queued behind another's flush got the lock within a
    // few ms of its end (pub/sub wake-up). The flush lease is 5 s, so a waiter that only retried
    // at the holder's expiry would show seconds; 100 ms is generous for a loaded CI machine.
    assert!(
        s["waits"] >= 3.0,
        "too few waits to judge: {}",
        locked.report
    );
    assert!(
        s["max_handoff_ms"] < 100.0,
        "slow handoff:\n{}",
        locked.report
    );
}

/// Once-per-tick job: three replicas whose clocks differ by up to 1 s, ticks every 2 s for at
/// least 5 ticks. Locked (skip + hold_at_least), every tick's job ran exactly once; without the
/// lock it runs on every replica.
#[test]
fn the_scheduled_job_runs_once_per_tick_across_skewed_replicas() {
    let (locked_server, control_server) = (RedisServer::start(), RedisServer::start());
    let skews = [0, 500, 1000];
    let control = std::thread::spawn(move || {
        run_replicas(&control_server.url(), "*/2 * * * * *", "11s", &skews, false).summary
    });
    let locked = run_replicas(&locked_server.url(), "*/2 * * * * *", "11s", &skews, true);
    let control = control.join().unwrap();
    assert!(
        locked.summary["ticks"] >= 5.0,
        "fewer than 5 ticks:\n{}",
        locked.report
    );
    assert_eq!(
        locked.summary["double_runs"], 0.0,
        "a tick ran twice:\n{}",
        locked.report
    );
    assert!(
        control["double_runs"] > 0.0,
        "the control never double-ran: {control:?}"
    );
}

/// The demo's replicas against `url`: first without the lock (the control: concurrent flushes
/// lose keywords, every replica runs each tick's job), then, after `scheduler reset`, with it
/// (nothing lost, one run per tick). Ticks every second for 3 s, all replicas at the same instant.
fn demo_loses_nothing_under_the_lock_on(url: &str) {
    let control = run_replicas(url, "* * * * * *", "3s", &[0, 0, 0], false).summary;
    let reset = Command::new(support::worker::example("scheduler"))
        .env("REDIS_URL", url)
        .arg("reset")
        .status()
        .expect("reset");
    assert!(reset.success(), "scheduler reset: {reset}");
    let locked = run_replicas(url, "* * * * * *", "3s", &[0, 0, 0], true);

    let s = &locked.summary;
    assert!(
        s["searched"] >= 3.0 * 200.0 && s["ticks"] >= 2.0,
        "too little happened for a test:\n{}",
        locked.report
    );
    assert_eq!(
        s["recorded"], s["searched"],
        "lost keywords:\n{}",
        locked.report
    );
    assert_eq!(s["overlaps"], 0.0, "flushes overlapped:\n{}", locked.report);
    assert_eq!(
        s["double_runs"], 0.0,
        "a tick ran twice:\n{}",
        locked.report
    );
    assert!(
        control["lost"] > 0.0 && control["double_runs"] > 0.0,
        "the control lost nothing or never double-ran, so there was no contention: {control:?}"
    );
}

/// `REDIS_URL=redis+cluster://... scripts/demo`: the locks and the demo's data on different
/// shards (the data under one hash tag, its pipeline to one node).
#[test]
fn the_demo_runs_against_a_cluster() {
    let cluster = RedisCluster::start();
    demo_loses_nothing_under_the_lock_on(&cluster.url());
}

/// `REDIS_URL=redis+sentinel://.../mymaster scripts/demo`: locks and data on the primary the
/// sentinels name.
#[test]
fn the_demo_runs_against_a_primary_found_through_sentinel() {
    let sentinel = RedisSentinel::start();
    demo_loses_nothing_under_the_lock_on(&sentinel.url());
}

struct Books {
    data: redis::aio::MultiplexedConnection,
    locks: Locker,
}

impl Books {
    #[distributed_lock(key = "book:{isbn}", wait = "10s", lease = "5s", locker = self.locks)]
    async fn register_book(&self, isbn: &str) -> Result<bool, LockError> {
        Ok(self.check_then_insert(isbn).await)
    }

    async fn register_book_unlocked(&self, isbn: &str) -> Result<bool, LockError> {
        Ok(self.check_then_insert(isbn).await)
    }

    /// The seed's bug: look for the book, then insert it if absent, as two steps.
    async fn check_then_insert(&self, isbn: &str) -> bool {
        let mut conn = self.data.clone();
        let exists: bool = conn.sismember("registered", isbn).await.unwrap();
        if exists {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await; // the gap another server's request hits
        let () = conn.rpush("books", isbn).await.unwrap();
        let () = conn.sadd("registered", isbn).await.unwrap();
        true
    }

    async fn records(&self) -> HashMap<String, usize> {
        let mut conn = self.data.clone();
        let books: Vec<String> = conn.lrange("books", 0, -1).await.unwrap();
        let mut counts = HashMap::new();
        for b in books {
            *counts.entry(b).or_default() += 1;
        }
        counts
    }
}

async fn register_concurrently(books: &Arc<Books>, isbns: &[String], locked: bool) {
    let start = Arc::new(Barrier::new(isbns.len()));
    let mut tasks = Vec::new();
    for isbn in isbns {
        let (books, start, isbn) = (books.clone(), start.clone(), isbn.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            if locked {
                books.register_book(&isbn).await
            } else {
                books.register_book_unlocked(&isbn).await
            }
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registering_the_same_book_concurrently_creates_one_record() {
    let (locked_server, control_server) = (RedisServer::start(), RedisServer::start());
    let books = |server: &RedisServer| {
        let url = server.url();
        async move {
            Arc::new(Books {
                data: redis::Client::open(url.as_str())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap(),
                locks: Locker::connect(&url).await.unwrap(),
            })
        }
    };
    let (locked, control) = (books(&locked_server).await, books(&control_server).await);
    let same: Vec<String> = vec!["978-0134685991".to_owned(); 10];
    let different: Vec<String> = (0..10).map(|i| format!("978-000000000{i}")).collect();

    register_concurrently(&control, &same, false).await;
    register_concurrently(&locked, &same, true).await;
    register_concurrently(&locked, &different, true).await;

    let control = control.records().await;
    assert!(
        control["978-0134685991"] > 1,
        "the control created no duplicate: {control:?}"
    );
    let records = locked.records().await;
    assert_eq!(records["978-0134685991"], 1, "{records:?}");
    assert_eq!(records.len(), 11, "10 different ISBNs + 1: {records:?}");
    assert!(records.values().all(|&n| n == 1), "{records:?}");
}
