//! Blocking talk to one Redis process by its port, for setting up and checking topologies: a
//! command on a fresh connection (a node may just have been killed or restarted, so nothing is
//! kept), and a bounded poll until a condition holds.
//!
//! Blocking on purpose: a topology in a `static` outlives the runtime of the test that started it,
//! and an async connection dies with the runtime it was made on.

use std::time::{Duration, Instant};

use redis::{Cmd, FromRedisValue, RedisResult};

/// Connect and answer timeouts of one command; a live node on loopback answers in microseconds,
/// a loaded 2-core CI machine may take a good part of a second.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Between two looks at a topology that is still settling; gossip runs every 100 ms.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Runs `cmd` on the Redis process at `127.0.0.1:<port>`.
pub fn query<T: FromRedisValue>(port: u16, cmd: &Cmd) -> RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut conn = client.get_connection_with_timeout(QUERY_TIMEOUT)?;
    conn.set_read_timeout(Some(QUERY_TIMEOUT))?;
    conn.set_write_timeout(Some(QUERY_TIMEOUT))?;
    cmd.query(&mut conn)
}

/// `query`, for setup steps that must work: panics with the node and the command on an error.
pub fn must<T: FromRedisValue>(port: u16, cmd: &Cmd) -> T {
    query(port, cmd).unwrap_or_else(|e| panic!("127.0.0.1:{port}: {cmd:?}: {e}"))
}

/// One field of an `INFO` reply (`field:value` lines).
pub fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// Calls `check` until it gives `Ok`, at most `bound`; panics with `what` and the last `Err`
/// (what was still missing) after that.
pub fn poll_until<T>(
    what: &str,
    bound: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    loop {
        match check() {
            Ok(done) => return done,
            Err(missing) if started.elapsed() >= bound => {
                panic!("{what}: not within {bound:?}: {missing}")
            }
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}
