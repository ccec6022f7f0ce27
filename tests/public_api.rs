//! The public API's manners: backend errors a caller can decide on without naming another
//! crate's types, and `Debug` output that neither leaks a password nor changes a lock.

mod support;

use std::error::Error as _;
use std::time::Duration;

use distlock::{BackendError, LockError, LockOptions, Locker};
use support::logs::Captured;
use support::redis_server::RedisServer;

/// Connect and response timeouts for the failure cases: short, so that the tests are quick,
/// and far above a local round trip even on a loaded CI machine.
const SHORT_TIMEOUT: Duration = Duration::from_millis(300);

fn backend_error(err: LockError) -> BackendError {
    match err {
        LockError::Backend { source, .. } => source,
        other => panic!("expected a backend error, got {other}"),
    }
}

#[tokio::test]
async fn a_refused_password_is_a_server_refusal_with_its_code_and_cause() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let wrong = format!("redis://:nope@127.0.0.1:{}/", server.port());
    let err = backend_error(Locker::connect(&wrong).await.unwrap_err());
    assert!(err.is_server_refusal(), "{err} / {err:?}");
    assert!(!err.is_connection() && !err.is_timeout(), "{err:?}");
    // The client's own error stays reachable for logs and reports.
    let cause = err.source().expect("the Redis client's error as source()");
    assert!(
        cause.downcast_ref::<redis::RedisError>().is_some(),
        "{cause:?}"
    );
}

#[tokio::test]
async fn missing_rights_name_the_servers_code() {
    let server = RedisServer::start();
    let mut admin = server.client().await;
    // A user that may connect but not run scripts: connect loads them, and is refused.
    let () = redis::cmd("ACL")
        .arg(&[
            "SETUSER", "reader", "on", ">pw", "~*", "+@read", "+hello", "+auth",
        ])
        .query_async(&mut admin)
        .await
        .unwrap();
    let url = format!("redis://reader:pw@127.0.0.1:{}/", server.port());
    let err = backend_error(Locker::connect(&url).await.unwrap_err());
    assert!(err.is_server_refusal(), "{err:?}");
    assert_eq!(err.server_code(), Some("NOPERM"), "{err}");
}

#[tokio::test]
async fn an_unreachable_server_is_a_connection_error() {
    // A port nobody listens on: bound, then closed again.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = Locker::builder(format!("redis://127.0.0.1:{port}/"))
        .connect_timeout(SHORT_TIMEOUT)
        .response_timeout(SHORT_TIMEOUT)
        .build()
        .await
        .unwrap_err();
    let err = backend_error(err);
    assert!(err.is_connection(), "{err} / {err:?}");
    assert!(!err.is_server_refusal() && !err.is_timeout(), "{err:?}");
    assert!(err.source().is_some(), "{err:?}");
}

/// Cluster and Sentinel URLs that cannot work say why at `build`, without echoing the password
/// (a key prefix with a brace cannot work on a Cluster either);
/// nodes nobody listens on are a connection error within the connect timeout, not a hang.
#[tokio::test]
async fn bad_or_unreachable_cluster_and_sentinel_urls_are_clear_errors() {
    for (url, says) in [
        ("redis+cluster://:hunter2@a:1,,b:2/", "empty"),
        ("redis+cluster://:hunter2@a:1/5", "database 0"),
        ("redis+sentinel://:hunter2@a:26379", "<master name>"),
        ("redis+sentinel://a:26379/m?color=blue", "unknown parameter"),
        (
            "redis+cluster://:hunter2@a:7000?pass=hunter2",
            "no query parameters",
        ),
    ] {
        let err = Locker::connect(url).await.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, LockError::InvalidOptions { .. }),
            "{url}: {err:?}"
        );
        assert!(text.contains(says), "{url}: {text}");
        assert!(text.contains("redis+cluster://"), "names the forms: {text}");
        assert!(!text.contains("hunter2"), "the password leaked: {text}");
    }
    let err = Locker::builder("redis+cluster://127.0.0.1:1/")
        .key_prefix("{app}:")
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("brace"), "{err}");
    let err = Locker::builder("redis://127.0.0.1:1/")
        .replica_acks(Duration::from_secs(3))
        .response_timeout(Duration::from_secs(3))
        .build()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("shorter than response_timeout"),
        "{err}"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for url in [
        format!("redis+cluster://127.0.0.1:{port}/"),
        format!("redis+sentinel://127.0.0.1:{port}/mymaster"),
    ] {
        let started = std::time::Instant::now();
        let err = Locker::builder(url.as_str())
            .connect_timeout(SHORT_TIMEOUT)
            .response_timeout(SHORT_TIMEOUT)
            .build()
            .await
            .unwrap_err();
        assert!(matches!(err, LockError::Backend { .. }), "{url}: {err:?}");
        // Connect and response timeout bound it; a generous margin for a loaded machine.
        assert!(
            started.elapsed() < SHORT_TIMEOUT * 2 + Duration::from_secs(5),
            "{url}: took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_timeout() {
    // Accepts connections (the kernel's backlog does) but never reads or answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let err = Locker::builder(format!("redis://127.0.0.1:{port}/"))
        .connect_timeout(SHORT_TIMEOUT)
        .response_timeout(SHORT_TIMEOUT)
        .build()
        .await
        .unwrap_err();
    let err = backend_error(err);
    assert!(err.is_timeout(), "{err} / {err:?}");
    assert!(!err.is_server_refusal() && !err.is_connection(), "{err:?}");
    drop(silent);
}

#[test]
fn a_builders_debug_shows_its_settings_but_never_the_password() {
    for (url, shown) in [
        ("redis://:hunter2@cache:6379/2", "redis://:***@cache:6379/2"),
        (
            "redis://billing:hunter2@cache/",
            "redis://billing:***@cache/",
        ),
        (
            "redis+unix:///run/redis.sock?db=1&pass=hunter2",
            "redis+unix:///run/redis.sock?db=1&pass=***",
        ),
        ("redis://cache:6379/", "redis://cache:6379/"),
        ("redis://:hunter2@cache:notaport", "<not a valid URL>"),
        (
            "redis+cluster://billing:hunter2@a:7000,b:7000/",
            "redis+cluster://billing:***@a:7000,b:7000/",
        ),
        (
            "rediss+sentinel://:hunter2@s1,s2:26380/mymaster/2?sentinel_password=hunter2",
            "rediss+sentinel://:***@s1,s2:26380/mymaster/2?sentinel_password=***",
        ),
    ] {
        let builder = Locker::builder(url).key_prefix("billing:lock:");
        let debug = format!("{builder:?}");
        assert!(!debug.contains("hunter2"), "the password leaked: {debug}");
        assert!(debug.contains(shown), "{url}: {debug}");
        assert!(debug.contains("billing:lock:"), "{debug}");
    }
    let debug = format!(
        "{:?}",
        Locker::cluster_builder(["billing:hunter2@a:7000", "b:7000"])
    );
    assert!(!debug.contains("hunter2"), "the password leaked: {debug}");
    assert!(debug.contains("billing:***@a:7000"), "{debug}");
    let debug = format!("{:?}", Locker::in_memory_builder());
    assert!(debug.contains("in memory"), "{debug}");
}

/// `Debug` of a guard whose lease ran out says so, but leaves the telling to the guard's own
/// calls: it neither logs the loss nor marks it. `is_lost` afterwards is the control that shows
/// the loss is logged, and so that the capture would have seen a log from `Debug`.
#[tokio::test(start_paused = true)]
async fn debug_of_an_expired_guard_neither_logs_nor_marks_the_loss() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // The test's runtime is current-thread: everything below runs on this thread.
    let _default = tracing::subscriber::set_default(subscriber);

    let lease = Duration::from_millis(100);
    let locker = Locker::in_memory();
    let guard = locker
        .acquire("printed", LockOptions::new().lease(lease))
        .await
        .unwrap();
    let handle = guard.handle();
    tokio::time::advance(lease * 2).await;

    let shown = format!("{guard:?} {handle:?}");
    assert_eq!(shown.matches("lost: true").count(), 2, "{shown}");
    assert!(
        !captured.text().contains("lease lost"),
        "Debug logged: {}",
        captured.text()
    );

    assert!(guard.is_lost());
    assert!(
        captured.text().contains("lock lease lost"),
        "the control: is_lost logs the loss once it is seen: {}",
        captured.text()
    );
}
