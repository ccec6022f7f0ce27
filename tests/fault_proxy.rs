//! The fault proxy itself (tests/support/proxy.rs), against a real redis-server: what the
//! network faults of the torture suite rely on.

mod support;

use std::io::ErrorKind;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use support::proxy::Proxy;
use support::redis_server::RedisServer;

/// Long enough to show that nothing arrives, short enough to keep the suite quick.
const QUIET: Duration = Duration::from_millis(300);
/// How long a forwarded answer may take on a loaded 2-core CI machine.
const ANSWER: Duration = Duration::from_secs(2);

/// A raw connection through the proxy: the tests see exactly the bytes that pass.
async fn raw(proxy: &Proxy) -> TcpStream {
    TcpStream::connect(("127.0.0.1", proxy.port()))
        .await
        .expect("connect to the proxy")
}

/// Reads whatever arrives within `within`: Ok(bytes) (empty at end of stream), Err on a
/// connection error, None when nothing came.
async fn read_within(stream: &mut TcpStream, within: Duration) -> Option<std::io::Result<Vec<u8>>> {
    let mut buf = vec![0u8; 1024];
    match timeout(within, stream.read(&mut buf)).await {
        Ok(Ok(n)) => Some(Ok(buf[..n].to_vec())),
        Ok(Err(e)) => Some(Err(e)),
        Err(_) => None,
    }
}

/// Reads until `expected` bytes came, within `within`.
async fn read_exact_within(stream: &mut TcpStream, expected: &[u8], within: Duration) {
    let mut buf = vec![0u8; expected.len()];
    timeout(within, stream.read_exact(&mut buf))
        .await
        .expect("the answer arrives")
        .expect("read the answer");
    assert_eq!(
        String::from_utf8_lossy(&buf),
        String::from_utf8_lossy(expected)
    );
}

async fn get(server: &RedisServer, key: &str) -> Option<String> {
    let mut conn = server.client().await;
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("GET directly")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_passes_through_and_connections_are_counted() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let client = redis::Client::open(proxy.url()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect through the proxy");

    let pong: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .expect("PING");

    assert_eq!(pong, "PONG");
    assert_eq!(proxy.accepted(), 1);
    assert_eq!(proxy.open(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_holds_every_chunk_in_each_direction_and_keeps_their_order() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let mut stream = raw(&proxy).await;
    let delay = Duration::from_millis(200);

    proxy.delay(delay);
    let sent = Instant::now();
    stream.write_all(b"PING\r\n").await.expect("write");
    read_exact_within(&mut stream, b"+PONG\r\n", ANSWER).await;
    let round_trip = sent.elapsed();

    // A round trip crosses the proxy twice.
    assert!(
        round_trip >= 2 * delay && round_trip < 2 * delay + ANSWER,
        "round trip {round_trip:?} with a delay of {delay:?} each way"
    );

    // Chunks keep their order, also when the delay is lifted while some are held: the list
    // is pushed in the order the commands were written.
    let mut answers = Vec::new();
    for i in 1..=20 {
        if i == 11 {
            proxy.delay(Duration::ZERO);
        }
        stream
            .write_all(format!("RPUSH order {i}\r\n").as_bytes())
            .await
            .expect("write");
        answers.extend_from_slice(format!(":{i}\r\n").as_bytes());
    }
    read_exact_within(&mut stream, &answers, ANSWER).await;
    let mut conn = server.client().await;
    let order: Vec<u32> = redis::cmd("LRANGE")
        .arg("order")
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("LRANGE");
    assert_eq!(order, (1..=20).collect::<Vec<u32>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_holds_bytes_and_new_connections_until_heal_delivers_them() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let mut stream = raw(&proxy).await;
    stream.write_all(b"PING\r\n").await.expect("write");
    read_exact_within(&mut stream, b"+PONG\r\n", ANSWER).await;

    proxy.stall();
    stream
        .write_all(b"SET stalled yes\r\n")
        .await
        .expect("write");
    let mut late = raw(&proxy).await; // a connection made during the stall is held too
    late.write_all(b"PING\r\n").await.expect("write");

    // Held, not lost and not refused: nothing reached the server, nothing came back.
    assert!(read_within(&mut stream, QUIET).await.is_none());
    assert!(read_within(&mut late, Duration::ZERO).await.is_none());
    assert_eq!(get(&server, "stalled").await, None);
    assert_eq!(proxy.open(), 2);

    proxy.heal();
    read_exact_within(&mut stream, b"+OK\r\n", ANSWER).await;
    read_exact_within(&mut late, b"+PONG\r\n", ANSWER).await;
    assert_eq!(get(&server, "stalled").await.as_deref(), Some("yes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_resets_open_connections_and_refuses_new_ones_until_heal() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let mut stream = raw(&proxy).await;
    stream.write_all(b"PING\r\n").await.expect("write");
    read_exact_within(&mut stream, b"+PONG\r\n", ANSWER).await;
    let client = redis::Client::open(proxy.url()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect through the proxy");

    proxy.cut();

    assert_eq!(
        proxy.open(),
        0,
        "cut() returns once every connection is closed"
    );
    match read_within(&mut stream, ANSWER).await {
        Some(Err(e)) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        other => panic!("expected a connection reset, got {other:?}"),
    }
    let ping: redis::RedisResult<String> =
        timeout(ANSWER, redis::cmd("PING").query_async(&mut conn))
            .await
            .expect("a cut connection fails at once, it does not hang");
    assert!(ping.is_err(), "PING over a cut connection: {ping:?}");
    // A new connection is reset as soon as it is accepted: the client cannot get through.
    let fresh = timeout(ANSWER, client.get_multiplexed_async_connection())
        .await
        .expect("connecting during a cut fails at once, it does not hang");
    assert!(fresh.is_err(), "connected through a cut proxy");
    assert!(proxy.refused() >= 1);

    proxy.heal();
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect after heal");
    let pong: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .expect("PING after heal");
    assert_eq!(pong, "PONG");
}
