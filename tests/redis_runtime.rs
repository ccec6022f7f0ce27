//! Behaviour that only a real server shows: round trips, the data model, outages, auth.

mod support;

use std::time::Duration;

use distlock::{LockError, LockOptions, Locker};
use support::logs::Captured;
use support::redis_server::RedisServer;
use tokio::time::Instant;

#[tokio::test]
async fn uncontended_acquire_and_release_are_one_script_call_each() {
    let server = RedisServer::start();
    let locker = Locker::connect(&server.url()).await.unwrap();
    let before = server.command_calls("evalsha").await;
    let guard = locker
        .acquire("rt", LockOptions::new().lease(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(server.command_calls("evalsha").await - before, 1, "acquire");
    guard.release().await.unwrap();
    assert_eq!(server.command_calls("evalsha").await - before, 2, "release");
    assert_eq!(
        server.command_calls("eval").await,
        0,
        "scripts are preloaded: no EVAL fallback"
    );
}

#[tokio::test]
async fn the_watchdog_renews_once_per_interval() {
    let server = RedisServer::start();
    let lease = Duration::from_millis(600);
    let locker = Locker::builder(server.url())
        .watchdog_lease(lease)
        .build()
        .await
        .unwrap();
    let guard = locker.acquire("wd", LockOptions::new()).await.unwrap();
    let before = server.command_calls("evalsha").await;
    // 3.5 intervals of 200 ms: 3 renewals; allow one either way for scheduling on a busy machine.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let renewals = server.command_calls("evalsha").await - before;
    assert!(
        (2..=4).contains(&renewals),
        "{renewals} renewals in 3.5 intervals"
    );
    guard.release().await.unwrap();
}

#[tokio::test]
async fn the_data_model_is_one_key_holding_token_fence_and_holder_label_with_expiry() {
    let server = RedisServer::start();
    let locker = Locker::builder(server.url())
        .key_prefix("app:")
        .holder_label("worker-3")
        .build()
        .await
        .unwrap();
    let mut conn = server.client().await;
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let before = seconds * 1_000_000 + micros;
    let guard = locker
        .acquire("book:42", LockOptions::new().lease(Duration::from_secs(5)))
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys, ["app:{book:42}"], "one key per lock, nothing else");
    let value: String = redis::cmd("GET")
        .arg("app:{book:42}")
        .query_async(&mut conn)
        .await
        .unwrap();
    let (token, rest) = value.split_once(':').expect("token:fence:label");
    let (fence, label) = rest.split_once(':').expect("fence:label");
    assert_eq!(label, "worker-3");
    assert_eq!(token.len(), 32, "128-bit token as hex: {value}");
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(fence.parse::<u64>().unwrap(), guard.fencing_token());
    assert!(
        guard.fencing_token() >= before,
        "the fence is the server clock in µs: {} before {before}",
        guard.fencing_token()
    );
    let pttl: i64 = redis::cmd("PTTL")
        .arg("app:{book:42}")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 4000 && pttl <= 5000, "{pttl}");
    guard.release().await.unwrap();
    let left: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    assert_eq!(left, 0, "a released lock leaves no key");

    // A second acquisition gets a different token and a greater fence.
    let again = locker.acquire("book:42", LockOptions::new()).await.unwrap();
    let value2: String = redis::cmd("GET")
        .arg("app:{book:42}")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_ne!(value2.split_once(':').unwrap().0, token);
    assert!(again.fencing_token() > fence.parse::<u64>().unwrap());
    again.release().await.unwrap();
}

#[tokio::test]
async fn a_release_with_another_token_changes_nothing() {
    let server = RedisServer::start();
    let locker = Locker::connect(&server.url()).await.unwrap();
    let guard = locker
        .acquire("owned", LockOptions::new().lease(Duration::from_secs(5)))
        .await
        .unwrap();
    let mut conn = server.client().await;
    // The release script, run as a non-owner would run it.
    let released: i64 =
        redis::Script::new(include_str!("../lock-runtime/src/engine/redis/release.lua"))
            .key("lock:{owned}")
            .arg("00000000000000000000000000000000")
            .arg(0)
            .arg("lock:{owned}:released")
            .invoke_async(&mut conn)
            .await
            .unwrap();
    assert_eq!(released, 0);
    let renewed: i64 =
        redis::Script::new(include_str!("../lock-runtime/src/engine/redis/renew.lua"))
            .key("lock:{owned}")
            .arg("00000000000000000000000000000000")
            .arg(999_999)
            .invoke_async(&mut conn)
            .await
            .unwrap();
    assert_eq!(renewed, 0);
    let pttl: i64 = redis::cmd("PTTL")
        .arg("lock:{owned}")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        pttl > 0 && pttl <= 5000,
        "a non-owner changed the lock: PTTL {pttl}"
    );
    guard.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_is_reported_as_lost_and_a_restarted_one_serves_again() {
    let mut server = RedisServer::start();
    let lease = Duration::from_millis(600);
    let locker = Locker::builder(server.url())
        .watchdog_lease(lease)
        .response_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let guard = locker.acquire("outage", LockOptions::new()).await.unwrap();
    server.kill();
    let killed = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .expect("lost() did not resolve after the server died");
    // The loss is reported once the lease may have run out, not later than lease + a retry.
    assert!(
        killed.elapsed() <= lease + Duration::from_millis(500),
        "{:?}",
        killed.elapsed()
    );
    assert!(matches!(
        guard.release().await,
        Err(LockError::LeaseLost { .. }) | Err(LockError::Backend { .. })
    ));

    server.restart();
    let restarted = Instant::now();
    loop {
        match locker
            .acquire("outage", LockOptions::new().wait(Duration::ZERO))
            .await
        {
            Ok(guard) => {
                guard.release().await.unwrap();
                break;
            }
            Err(LockError::Backend { .. }) if restarted.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("no acquisition after the restart: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_lost_the_lock_is_seen_at_the_next_renewal() {
    let mut server = RedisServer::start();
    let lease = Duration::from_secs(3);
    let locker = Locker::builder(server.url())
        .watchdog_lease(lease)
        .renewal_interval(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let guard = locker.acquire("restart", LockOptions::new()).await.unwrap();
    server.restart();
    let back = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .expect("loss not seen");
    // Within one renewal interval of the server coming back (plus reconnect and scheduling slack).
    assert!(
        back.elapsed() < Duration::from_secs(1),
        "{:?}",
        back.elapsed()
    );
    // Fencing survives the lost counter: the next number is still larger.
    let next = locker
        .acquire("restart", LockOptions::new().wait(Duration::from_secs(2)))
        .await
        .unwrap();
    assert!(next.fencing_token() > guard.fencing_token());
    next.release().await.unwrap();
}

#[tokio::test]
async fn acl_user_password_and_db_number_are_honoured() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let url = format!("redis://:s3cret@127.0.0.1:{}/3", server.port());
    let locker = Locker::connect(&url).await.expect("password and db");
    let guard = locker.acquire("db3", LockOptions::new()).await.unwrap();
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let exists: u64 = redis::cmd("EXISTS")
        .arg("lock:{db3}")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 1, "the lock is not in db 3");
    guard.release().await.unwrap();

    let wrong = format!("redis://:nope@127.0.0.1:{}/", server.port());
    let err = Locker::connect(&wrong).await.unwrap_err();
    assert!(matches!(err, LockError::Backend { .. }), "{err}");
    assert!(
        !err.to_string().contains("nope"),
        "the password leaked into the message: {err}"
    );

    let named = format!("redis://default:s3cret@127.0.0.1:{}/", server.port());
    Locker::connect(&named).await.expect("ACL user default");
}

#[tokio::test]
async fn a_malformed_url_is_a_clear_error() {
    for url in [
        "",
        "http://x",
        "redis://:pw@host:notaport",
        "redis://host/notadb",
    ] {
        let err = Locker::connect(url).await.unwrap_err();
        assert!(
            matches!(err, LockError::InvalidOptions { .. }),
            "{url}: {err}"
        );
        assert!(err.to_string().contains("redis://"), "{err}");
        assert!(!err.to_string().contains("pw@"), "{err}");
    }
}

#[tokio::test]
async fn an_unreachable_server_fails_within_the_connect_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let err = Locker::builder(format!("redis://127.0.0.1:{port}/"))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Backend { .. }), "{err}");
    // Bound: connect timeout + response timeout of the guard around the whole connect.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_against_a_down_server_returns_within_timeout_plus_wait() {
    let mut server = RedisServer::start();
    let locker = Locker::builder(server.url())
        .connect_timeout(Duration::from_millis(300))
        .response_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    server.kill();
    let wait = Duration::from_millis(500);
    let started = Instant::now();
    let err = locker
        .acquire("down", LockOptions::new().wait(wait))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LockError::Backend { key: Some(ref k), .. } if k == "down"),
        "{err}"
    );
    assert!(err.to_string().contains("down"), "{err}");
    // connect timeout + response timeout + wait, with slack for a loaded machine.
    assert!(
        started.elapsed() < Duration::from_millis(300 + 300 + 500 + 1000),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_dropped_guard_is_released_on_a_current_thread_runtime() {
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let locker = Locker::connect(&server.url()).await.unwrap();
        let guard = locker.acquire("ct", LockOptions::new()).await.unwrap();
        drop(guard);
        let started = Instant::now();
        let other = Locker::connect(&server.url()).await.unwrap();
        let again = other
            .acquire("ct", LockOptions::new().wait(Duration::from_secs(5)))
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
        again.release().await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_share_one_subscriber_connection() {
    let server = RedisServer::start();
    let locker = Locker::connect(&server.url()).await.unwrap();
    let mut guards = Vec::new();
    for i in 0..20 {
        guards.push(
            locker
                .acquire(format!("k{i}"), LockOptions::new())
                .await
                .unwrap(),
        );
    }
    let mut waiters = Vec::new();
    for i in 0..20 {
        for _ in 0..5 {
            let locker = locker.clone();
            waiters.push(tokio::spawn(async move {
                let g = locker
                    .acquire(
                        format!("k{i}"),
                        LockOptions::new().wait(Duration::from_secs(10)),
                    )
                    .await
                    .unwrap();
                g.release().await.unwrap();
            }));
        }
    }
    let mut conn = server.client().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let channels: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .query_async(&mut conn)
            .await
            .unwrap();
        if channels.len() == 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} channels subscribed",
            channels.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    // The locker's command connection, its one subscriber, and this inspecting connection.
    assert_eq!(clients.lines().count(), 3, "{clients}");
    for g in guards {
        g.release().await.unwrap();
    }
    for w in waiters {
        w.await.unwrap();
    }
    // Unsubscribed once nobody waits.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let channels: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .query_async(&mut conn)
            .await
            .unwrap();
        if channels.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still subscribed: {channels:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_rediss_url_connects_over_tls() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args([
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is needed to make the test certificate (apt-get install -y openssl)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let server = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
    ]);
    // The certificate is verified: trusted as the root given to the builder.
    let url = format!("rediss://127.0.0.1:{tls_port}/");
    let locker = Locker::builder(&url)
        .tls_root_certificate(std::fs::read(&cert).unwrap())
        .build()
        .await
        .expect("TLS connection");
    let guard = locker.acquire("tls", LockOptions::new()).await.unwrap();
    let mut conn = server.client().await;
    let exists: u64 = redis::cmd("EXISTS")
        .arg("lock:{tls}")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 1);
    guard.release().await.unwrap();

    // Without the root, the OS trust store does not know the certificate: refused, not ignored.
    let err = Locker::connect(&url).await.unwrap_err();
    assert!(matches!(err, LockError::Backend { .. }), "{err}");
}

#[test]
fn acquire_renew_release_and_loss_are_traced() {
    let server = RedisServer::start();
    let captured = Captured::default();
    let subscriber = captured.subscriber(tracing::Level::TRACE);
    // A current-thread runtime keeps every task (the watchdog too) under this thread's subscriber.
    tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let lease = Duration::from_millis(300);
            let locker = Locker::builder(server.url())
                .watchdog_lease(lease)
                .build()
                .await
                .unwrap();
            let guard = locker.acquire("traced", LockOptions::new()).await.unwrap();
            tokio::time::sleep(lease / 2).await; // one renewal
            guard.release().await.unwrap();
            let short = locker
                .acquire(
                    "traced",
                    LockOptions::new().lease(Duration::from_millis(20)),
                )
                .await
                .unwrap();
            short.lost().await;
            let _ = short.release().await;
        });
    });
    let text = captured.text();
    for (level, message) in [
        ("DEBUG", "lock acquired"),
        ("TRACE", "lock lease renewed"),
        ("DEBUG", "lock released"),
        ("WARN", "lock lease lost"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains(level) && l.contains(message) && l.contains("traced")),
            "no {level} {message:?} naming the key in:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_is_a_timeout_and_leaves_no_lock_behind() {
    let server = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let locker = Locker::builder(server.url())
        .response_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let mut stall = server.client().await;
    let mut probe = server.client().await; // connected before the stall
    let stalled = tokio::spawn(async move {
        // The test client gives up waiting before the server wakes; only the stall matters.
        let _: redis::RedisResult<()> = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg("0.8")
            .query_async(&mut stall)
            .await;
    });
    // Let the DEBUG SLEEP reach the server before our acquire does.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let err = locker
        .acquire("stalled", LockOptions::new())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no answer from the server"),
        "{err}"
    );
    assert!(err.to_string().contains("stalled"), "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    stalled.await.unwrap();
    // The acquire ran after the stall; the cleanup queued behind it deleted it again.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let exists: u64 = redis::cmd("EXISTS")
            .arg("lock:{stalled}")
            .query_async(&mut probe)
            .await
            .unwrap();
        if exists == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the timed-out acquire left its lock behind"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A process paused past its lease (GC, SIGSTOP) resumes with its watchdog not yet run: the guard
/// must still say the lease is gone at its first look, before any task gets to run. A blocked
/// current-thread runtime is such a pause: nothing else runs while it sleeps.
#[tokio::test(flavor = "current_thread")]
async fn a_watchdog_holder_paused_past_its_lease_sees_the_loss_at_its_first_look() {
    let server = RedisServer::start();
    let lease = Duration::from_millis(300);
    let locker = Locker::builder(server.url())
        .watchdog_lease(lease)
        .build()
        .await
        .unwrap();
    let guard = locker.acquire("paused", LockOptions::new()).await.unwrap();
    assert!(!guard.is_lost());
    std::thread::sleep(lease + Duration::from_millis(100)); // the pause: the watchdog cannot run
    assert!(
        guard.is_lost(),
        "the lease ended during the pause, yet the guard says it holds"
    );
    assert!(matches!(
        guard.release().await,
        Err(LockError::LeaseLost { .. })
    ));
}

#[tokio::test]
async fn a_release_hands_the_lock_to_local_waiters_in_arrival_order_up_to_the_limit() {
    const WAITERS: usize = 20;
    let limit = distlock::DEFAULT_MAX_HANDOVERS_IN_A_ROW;
    // The control turns hand-overs off: every release publishes, and every woken waiter asks again.
    for handovers in [0, limit] {
        let server = RedisServer::start();
        let locker = Locker::builder(server.url())
            .max_handovers_in_a_row(handovers)
            .build()
            .await
            .unwrap();
        let options = LockOptions::new()
            .wait(Duration::from_secs(20))
            .lease(Duration::from_secs(30));
        let holder = locker.acquire("hand", options).await.unwrap();
        let taken = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..WAITERS {
            let (locker, taken) = (locker.clone(), taken.clone());
            let before = server.command_calls("evalsha").await;
            waiters.push(tokio::spawn(async move {
                let guard = locker.acquire("hand", options).await.unwrap();
                taken.lock().unwrap().push((i, guard.fencing_token()));
                tokio::task::yield_now().await;
                guard.release().await.unwrap();
            }));
            // Its second attempt runs after it queued and subscribed: the queue order is 0, 1, ...
            server.wait_for_calls("evalsha", before + 2).await;
        }
        let (publish, evalsha) = (
            server.command_calls("publish").await,
            server.command_calls("evalsha").await,
        );
        holder.release().await.unwrap();
        for waiter in waiters {
            waiter.await.unwrap();
        }
        let publishes = server.command_calls("publish").await - publish;
        let scripts = server.command_calls("evalsha").await - evalsha;
        let taken = taken.lock().unwrap().clone();
        assert_eq!(taken.len(), WAITERS);
        assert!(
            taken.windows(2).all(|w| w[0].1 < w[1].1),
            "fencing numbers grow: {taken:?}"
        );
        let releases = WAITERS as u64 + 1;
        if handovers == 0 {
            assert_eq!(publishes, releases, "every release publishes");
            assert_eq!(
                scripts,
                releases + WAITERS as u64,
                "every waiter asks again"
            );
            continue;
        }
        // The holders come in runs: one that took the lock free, then `limit` handed it in a
        // row (the first run to waiters 0, 1, ... in arrival order). The last of a run releases
        // for everyone (the limit, or nobody left queued) and the waiter its message wakes takes
        // the lock free. Only those woken waiters ask again.
        let runs = releases.div_ceil(u64::from(limit) + 1);
        let first: Vec<usize> = taken.iter().take(limit as usize).map(|t| t.0).collect();
        assert_eq!(
            first,
            (0..limit as usize).collect::<Vec<_>>(),
            "arrival order"
        );
        assert_eq!(
            publishes, runs,
            "a release for everyone after {limit} hand-overs"
        );
        assert_eq!(scripts, releases + runs - 1, "one script per section");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_hand_overs_do_not_starve_a_waiter_of_another_locker() {
    // Six tasks of one locker want the lock all the time (1 ms of work under it, 1 ms outside),
    // so whenever one releases, others of its process are queued. The control has no limit: the
    // process hands the lock around forever and the other locker's waiter (woken only by a
    // release message, or by the 30 s lease running out) never gets in.
    const TASKS: u64 = 6;
    for (handovers, wait) in [
        (u32::MAX, Duration::from_secs(1)),
        (
            distlock::DEFAULT_MAX_HANDOVERS_IN_A_ROW,
            Duration::from_secs(20),
        ),
    ] {
        let server = RedisServer::start();
        let busy = Locker::builder(server.url())
            .max_handovers_in_a_row(handovers)
            .build()
            .await
            .unwrap();
        let other = Locker::connect(&server.url()).await.unwrap();
        let options = LockOptions::new()
            .wait(Duration::from_secs(30))
            .lease(Duration::from_secs(30));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let (busy, stop) = (busy.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let guard = busy.acquire("busy", options).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(1)).await; // work under the lock
                        guard.release().await.unwrap();
                        tokio::time::sleep(Duration::from_millis(1)).await; // work outside it
                    }
                })
            })
            .collect();
        // All are in: one took the lock, the others asked twice (before and after queueing).
        server.wait_for_calls("evalsha", 1 + (TASKS - 1) * 2).await;
        let started = Instant::now();
        let got_in = other
            .acquire(
                "busy",
                LockOptions::new().wait(wait).lease(Duration::from_secs(30)),
            )
            .await;
        let waited = started.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        match (handovers, got_in) {
            (u32::MAX, Err(LockError::NotAcquired { .. })) => {}
            (u32::MAX, other) => panic!("control: expected starvation, got {other:?}"),
            (_, Ok(guard)) => guard.release().await.unwrap(),
            (_, Err(e)) => panic!("the other locker's waiter starved: {e}"),
        }
        eprintln!("limit {handovers}: the other locker waited {waited:?}");
        for task in tasks {
            task.await.unwrap();
        }
    }
}

/// A release that keeps the lock for the rest of `hold_at_least` leaves it nobody's: its token
/// becomes zeros, so a late renewal or extension by the releaser (on a connection that lagged)
/// finds it not its own and cannot bring it back for a whole lease.
#[tokio::test]
async fn a_lock_kept_for_hold_at_least_is_nobodys() {
    let server = RedisServer::start();
    let locker = Locker::connect(&server.url()).await.unwrap();
    let mut conn = server.client().await;
    let guard = locker
        .acquire(
            "kept",
            LockOptions::new()
                .lease(Duration::from_secs(30))
                .hold_at_least(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    let held: String = redis::cmd("GET")
        .arg("lock:{kept}")
        .query_async(&mut conn)
        .await
        .unwrap();
    let token = held.split(':').next().unwrap().to_owned();
    guard.release().await.unwrap();
    let kept: String = redis::cmd("GET")
        .arg("lock:{kept}")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(kept.starts_with(&"0".repeat(32)), "{kept}");
    assert_eq!(&kept[32..], &held[32..], "fence and label kept");
    // The releaser's token renews nothing any more.
    let renewed: i64 =
        redis::Script::new(include_str!("../lock-runtime/src/engine/redis/renew.lua"))
            .key("lock:{kept}")
            .arg(&token)
            .arg(30_000)
            .invoke_async(&mut conn)
            .await
            .unwrap();
    assert_eq!(renewed, 0);
    let pttl: i64 = redis::cmd("PTTL")
        .arg("lock:{kept}")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 5_000, "{pttl}");
}

/// A Cluster client sends a request again after a connection reset, so the acquire script may
/// run twice for one attempt: the second run must answer "taken", with the first run's fencing
/// number, not "busy" (the caller would then wait on its own lock). Likewise for a hand-over.
#[tokio::test]
async fn the_acquire_script_run_twice_answers_taken_both_times() {
    let server = RedisServer::start();
    let mut conn = server.client().await;
    let script = redis::Script::new(include_str!("../lock-runtime/src/engine/redis/acquire.lua"));
    // One run of the acquire script for `token`, handed over from `giver` if there is one.
    let mut take = async |token: &str, giver: Option<&str>| -> Vec<i64> {
        let mut invocation = script.key("lock:{twice}");
        invocation.arg(token).arg(30_000).arg("label");
        if let Some(giver) = giver {
            invocation.arg(giver);
        }
        invocation.invoke_async(&mut conn).await.unwrap()
    };
    let token = "0123456789abcdef0123456789abcdef";
    let first = take(token, None).await;
    let second = take(token, None).await;
    assert_eq!(first[0], 1, "{first:?}");
    assert_eq!(second, first, "a second run of the same acquire");
    let taker = "fedcba9876543210fedcba9876543210";
    let handed = take(taker, Some(token)).await;
    let again = take(taker, Some(token)).await;
    assert_eq!(handed[0], 1, "{handed:?}");
    assert!(handed[1] > first[1], "{handed:?} after {first:?}");
    assert_eq!(again, handed, "a second run of the same hand-over");
}
