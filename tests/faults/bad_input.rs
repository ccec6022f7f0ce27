//! Fault 8: bad input and a server that says no.
//!
//! Arbitrary keys (unicode, 1024 bytes and longer, `{`, `}`, `:`, glob characters, newlines, NUL,
//! look-alikes that differ only in their bytes) go through the runtime: each is either a lock of
//! its own, with exclusion holding for it and no other key touching it, or a clear `InvalidKey`.
//! Then the server refuses in every way a lock can meet: a value someone else wrote at the lock's
//! name (any type, with or without expiry), another client's `MULTI` that overwrites a held
//! lock, a script blocking the server (`BUSY`), the script cache flushed, `OOM` under a tiny
//! maxmemory. Each comes back as a `Backend` error that names the key, or is absorbed where the
//! runtime can recover by itself, and nothing is left locked.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use distlock::{LockError, LockOptions, Locker, MAX_KEY_LEN};
use redis::aio::MultiplexedConnection as Connection;
use tokio::time::Instant;

use crate::report::FaultRow;
use crate::support::redis_server::{RedisServer, lock_names};

const LEASE: Duration = Duration::from_secs(10);
/// Contention per key: tasks on each of two lockers, increments per task.
const TASKS_PER_LOCKER: usize = 4;
const INCREMENTS: usize = 10;
/// Random keys tried on top of the hand-picked ones.
const RANDOM_KEYS: usize = 300;
/// A Backend error must come back well before a wait of this length would end.
const LONG_WAIT: Duration = Duration::from_secs(20);
const ERROR_BOUND: Duration = Duration::from_secs(5);

pub fn run() -> FaultRow {
    crate::runtime().block_on(bad_input())
}

fn options() -> LockOptions {
    LockOptions::new().wait(LONG_WAIT).lease(LEASE)
}

/// Keys chosen to break naive key building, hash tags, channel names and protocols.
fn hand_picked_keys() -> Vec<String> {
    let mut keys: Vec<String> = [
        "book:978-0134685991",
        "книга:📚",
        "é",        // NFC
        "e\u{301}", // NFD: looks the same, other bytes, another lock
        "{",
        "}",
        "{}",
        "{a}",
        "a}b",
        "a",
        "a:fence",  // the name of a's fencing counter in older versions
        "a}:fence", // and a look-alike
        "a:released",
        ":",
        "::",
        "*",
        "?",
        "[a-z]",
        "\\",
        "\"",
        "%s%n",
        "x\ny",
        "x\r\n",
        "\r\n*3\r\n$3\r\nDEL\r\n", // a RESP command as a key
        "nul\0byte",
        "\0",
        "k",
        "k\0",
        " ",
        "\t",
        "lock:{k}", // looks like a name in Redis
        "\u{feff}bom",
        "\u{202e}rtl",
    ]
    .iter()
    .map(|k| k.to_string())
    .collect();
    keys.push("x".repeat(MAX_KEY_LEN)); // the longest accepted
    keys.push("é".repeat(MAX_KEY_LEN / 2)); // 1024 bytes of two-byte characters
    keys
}

/// Random strings over an alphabet of troublemakers, up to a bit past the length limit.
fn random_key() -> String {
    const ALPHABET: &[char] = &[
        'a', 'Z', '0', ':', '{', '}', '*', '?', '[', ']', '\\', '"', '\n', '\r', '\0', ' ', 'é',
        '📚', '\u{301}', '\u{feff}',
    ];
    let len = match fastrand::u8(0..10) {
        0 => 0,
        1 => fastrand::usize(MAX_KEY_LEN - 8..MAX_KEY_LEN + 64),
        _ => fastrand::usize(1..40),
    };
    (0..len)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())])
        .collect()
}

async fn bad_input() -> FaultRow {
    let server = RedisServer::start();
    let a = Locker::connect(&server.url()).await.expect("connect");
    let b = Locker::connect(&server.url()).await.expect("connect");
    let mut probe = server.client().await;

    // 1. Exclusion per hand-picked key, with its control.
    let keys = hand_picked_keys();
    let mut sections = 0u64;
    for key in &keys {
        let lost_updates = race(Some((&a, &b)), key).await;
        assert_eq!(lost_updates, 0, "exclusion failed for key {key:?}");
        sections += (2 * TASKS_PER_LOCKER * INCREMENTS) as u64;
    }
    let control = race(None, "control").await;
    assert!(
        control > 0,
        "the control without the lock lost no update: the race creates no contention"
    );

    // 2. All at once: every key is its own lock (no two share a name in Redis).
    let mut held = Vec::new();
    for key in &keys {
        held.push(
            a.acquire(key, LockOptions::new().wait(Duration::ZERO).lease(LEASE))
                .await
                .unwrap_or_else(|e| panic!("{key:?} was not free while the others were held: {e}")),
        );
    }
    let blocked = {
        let b = b.clone();
        let keys = keys.clone();
        tokio::spawn(async move {
            let mut blocked = 0;
            for key in &keys {
                match b
                    .acquire(key, LockOptions::new().wait(Duration::ZERO))
                    .await
                {
                    Err(e) if e.is_not_acquired() => blocked += 1,
                    other => panic!("{key:?} held by a, but b got {other:?}"),
                }
            }
            blocked
        })
        .await
        .expect("task")
    };
    assert_eq!(blocked, keys.len());
    for guard in held {
        guard.release().await.expect("release");
    }

    // 3. Random keys: a lock of their own, or a clear InvalidKey.
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..RANDOM_KEYS {
        let key = random_key();
        match a.acquire(&key, options()).await {
            Ok(guard) => {
                let other = b
                    .acquire(&key, LockOptions::new().wait(Duration::ZERO))
                    .await;
                assert!(
                    other.as_ref().is_err_and(|e| e.is_not_acquired()),
                    "{key:?}: held by a, yet b's acquire gave {other:?}"
                );
                guard.release().await.expect("release");
                accepted += 1;
            }
            Err(LockError::InvalidKey { key: shown, reason }) => {
                assert!(
                    key.is_empty() || key.len() > MAX_KEY_LEN,
                    "{key:?} refused: {reason}"
                );
                assert!(shown.chars().count() <= 64, "the error repeats a huge key");
                refused += 1;
            }
            Err(e) => panic!("{key:?}: {e}"),
        }
    }
    for refused_key in [String::new(), "x".repeat(MAX_KEY_LEN + 1)] {
        let e = a.acquire(&refused_key, options()).await.unwrap_err();
        assert!(
            matches!(e, LockError::InvalidKey { .. }),
            "{refused_key:?}: {e}"
        );
    }
    println!(
        "  {} hand-picked keys excluded ({sections} sections, control lost {control} updates); \
         random keys: {accepted} locks, {refused} InvalidKey",
        keys.len()
    );

    // 4. The server refuses.
    let mut refusals = Vec::new();
    refusals.push(foreign_values_at_the_lock(&a, &mut probe).await);
    refusals.push(a_multi_overwrites_the_lock(&a, &server).await);
    refusals.push(busy_script(&a, &server).await);
    refusals.push(script_cache_flushed(&a, &mut probe).await);
    refusals.push(out_of_memory(&a, &mut probe).await);
    for line in &refusals {
        println!("  {line}");
    }
    let left = lock_names(&mut probe).await;
    assert!(left.is_empty(), "locks left behind: {left:?}");

    FaultRow {
        fault: "Bad input, server errors",
        injected: format!(
            "{} hand-picked + {RANDOM_KEYS} random keys (unicode, 1024+ bytes, braces, colons, \
             globs, CR/LF, NUL); foreign values at a lock (any type, with or without expiry), \
             foreign MULTI/EXEC, BUSY script, SCRIPT FLUSH, OOM",
            keys.len()
        ),
        sections,
        overlaps: 0,
        lost: 1,
        lost_reported: 1,
        recovery: None,
        notes: format!(
            "every key its own lock or InvalidKey ({refused} random ones: empty or > 1024 bytes); \
             control lost {control} of {} updates; every server refusal a Backend error naming \
             the key; the lock overwritten by a MULTI was reported lost",
            2 * TASKS_PER_LOCKER * INCREMENTS
        ),
    }
}

/// Two lockers' tasks increment a counter with a read-modify-write under `key`'s lock (or
/// without a lock for the control, `None`); returns how many updates were lost.
async fn race(lockers: Option<(&Locker, &Locker)>, key: &str) -> i64 {
    let counter = Arc::new(AtomicI64::new(0));
    let mut tasks = Vec::new();
    for i in 0..2 * TASKS_PER_LOCKER {
        let locker = lockers.map(|(a, b)| if i % 2 == 0 { a.clone() } else { b.clone() });
        let (counter, key) = (Arc::clone(&counter), key.to_owned());
        tasks.push(tokio::spawn(async move {
            for _ in 0..INCREMENTS {
                let guard = match &locker {
                    Some(locker) => Some(
                        locker
                            .acquire(&key, options())
                            .await
                            .unwrap_or_else(|e| panic!("{key:?}: {e}")),
                    ),
                    None => None,
                };
                let seen = counter.load(Ordering::SeqCst);
                // Let the other tasks run between the read and the write.
                tokio::task::yield_now().await;
                counter.store(seen + 1, Ordering::SeqCst);
                if let Some(guard) = guard {
                    guard
                        .release()
                        .await
                        .unwrap_or_else(|e| panic!("{key:?}: {e}"));
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("race task");
    }
    (2 * TASKS_PER_LOCKER * INCREMENTS) as i64 - counter.load(Ordering::SeqCst)
}

/// Asserts `result` is a Backend error naming `key` whose message contains `needle`, returned
/// within `ERROR_BOUND`; returns the message.
fn backend_error(
    key: &str,
    result: Result<distlock::LockGuard, LockError>,
    started: Instant,
    needle: &str,
) -> String {
    let took = started.elapsed();
    let e = match result {
        Err(e @ LockError::Backend { .. }) => e,
        other => panic!("{key}: expected a Backend error containing {needle:?}, got {other:?}"),
    };
    let message = e.to_string();
    assert!(
        matches!(&e, LockError::Backend { key: Some(k), .. } if k == key),
        "{message}"
    );
    assert!(
        message.contains(key),
        "the error does not name the key: {message}"
    );
    assert!(message.contains(needle), "{message}");
    assert!(took < ERROR_BOUND, "the error took {took:?}: {message}");
    message
}

async fn foreign_values_at_the_lock(a: &Locker, probe: &mut Connection) -> String {
    let mut lines = Vec::new();
    for (key, write) in [
        (
            "foreign",
            vec!["SET", "lock:{foreign}", "someone-else", "PX", "60000"],
        ),
        ("forever", vec!["SET", "lock:{forever}", "someone-else"]),
        ("alist", vec!["RPUSH", "lock:{alist}", "x"]),
        // Our format, but without expiry: it would never be released either.
        (
            "persisted",
            vec![
                "SET",
                "lock:{persisted}",
                "0123456789abcdef0123456789abcdef:1",
            ],
        ),
    ] {
        cmd(probe, &write).await;
        let started = Instant::now();
        // A long wait: without the check it would sit here for all of it.
        lines.push(backend_error(
            key,
            a.acquire(key, options()).await,
            started,
            "not a distlock lock",
        ));
        let name = format!("lock:{{{key}}}");
        let still: u64 = redis::cmd("EXISTS")
            .arg(&name)
            .query_async(probe)
            .await
            .expect("EXISTS");
        assert_eq!(still, 1, "the foreign value at {name} was touched");
        cmd(probe, &["DEL", &name]).await;
    }
    format!(
        "foreign values at the lock (text with and without expiry, a list, ours without \
         expiry): {}",
        lines.join(" / ")
    )
}

async fn a_multi_overwrites_the_lock(a: &Locker, server: &RedisServer) -> String {
    let key = "multi";
    let guard = a.acquire(key, options()).await.expect("acquire");
    // Another client opens a transaction on the lock's name; while it is open nothing changes
    // for us, and when it commits it overwrites the lock with a value of its own.
    let mut other = server.client().await;
    cmd(&mut other, &["MULTI"]).await;
    cmd(&mut other, &["SET", "lock:{multi}", "theirs"]).await;
    // Queued, not run: the lock still excludes others.
    let other_task = {
        let a = a.clone();
        tokio::spawn(async move {
            a.acquire(key, LockOptions::new().wait(Duration::ZERO))
                .await
        })
        .await
        .expect("task")
    };
    assert!(
        other_task.as_ref().is_err_and(|e| e.is_not_acquired()),
        "{other_task:?}"
    );
    cmd(&mut other, &["EXEC"]).await;
    let released = guard.release().await;
    assert!(
        matches!(&released, Err(LockError::LeaseLost { key: k }) if k == key),
        "the holder whose lock was overwritten must be told: {released:?}"
    );
    let value: Option<String> = redis::cmd("GET")
        .arg("lock:{multi}")
        .query_async(&mut other)
        .await
        .expect("GET");
    assert_eq!(
        value.as_deref(),
        Some("theirs"),
        "the release deleted another client's value"
    );
    cmd(&mut other, &["DEL", "lock:{multi}"]).await;
    "foreign MULTI/EXEC overwrote a held lock: the holder got LeaseLost, their value kept"
        .to_owned()
}

async fn busy_script(a: &Locker, server: &RedisServer) -> String {
    let key = "busy";
    let mut busy = server.client().await;
    let mut probe = server.client().await;
    // Another client's script that spins for 1.5 s: after busy-reply-threshold (100 ms here)
    // the server answers everyone else with -BUSY.
    cmd(
        &mut probe,
        &["CONFIG", "SET", "busy-reply-threshold", "100"],
    )
    .await;
    let spin = tokio::spawn(async move {
        let _: redis::RedisResult<()> = redis::cmd("EVAL")
            .arg(
                "local t = redis.call('TIME') local s = t[1] * 1e6 + t[2] \
                 while true do local n = redis.call('TIME') if n[1] * 1e6 + n[2] - s > 1.5e6 then \
                 return end end",
            )
            .arg(0)
            .query_async(&mut busy)
            .await;
    });
    // Until the spin starts, PING answers; once it has run past the threshold, -BUSY.
    let deadline = Instant::now() + ERROR_BOUND;
    loop {
        let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut probe).await;
        if pong.is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the spinning script never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let message = backend_error(key, a.acquire(key, options()).await, started, "BUSY");
    spin.await.expect("spin task");
    // The spinning client may give up waiting before its script ends: watch for the end.
    let deadline = Instant::now() + ERROR_BOUND;
    loop {
        let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut probe).await;
        if pong.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the spinning script never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The script ended: the same locker works again by itself.
    a.acquire(key, options())
        .await
        .expect("acquire after the script ended")
        .release()
        .await
        .expect("release");
    format!("a script blocking the server: {message}")
}

async fn script_cache_flushed(a: &Locker, probe: &mut Connection) -> String {
    cmd(probe, &["SCRIPT", "FLUSH"]).await;
    let guard = a
        .acquire("flushed", options())
        .await
        .expect("an acquire after SCRIPT FLUSH reloads the script");
    cmd(probe, &["SCRIPT", "FLUSH"]).await;
    guard
        .release()
        .await
        .expect("a release after SCRIPT FLUSH reloads the script");
    "SCRIPT FLUSH: absorbed (the scripts are loaded again on NOSCRIPT)".to_owned()
}

async fn out_of_memory(a: &Locker, probe: &mut Connection) -> String {
    let held = a
        .acquire("held-before-oom", options())
        .await
        .expect("acquire");
    cmd(probe, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]).await;
    cmd(probe, &["CONFIG", "SET", "maxmemory", "1"]).await;
    let key = "oom";
    let started = Instant::now();
    let message = backend_error(key, a.acquire(key, options()).await, started, "OOM");
    // A holder can still let go: releasing frees memory, so the server allows it.
    held.release().await.expect("a release under OOM");
    cmd(probe, &["CONFIG", "SET", "maxmemory", "0"]).await;
    a.acquire(key, options())
        .await
        .expect("acquire once memory is back")
        .release()
        .await
        .expect("release");
    format!("maxmemory 1 (OOM): {message}; a holder could still release")
}

async fn cmd(conn: &mut Connection, args: &[&str]) {
    let mut c = redis::cmd(args[0]);
    for arg in &args[1..] {
        c.arg(*arg);
    }
    let _: redis::Value = c
        .query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
}
