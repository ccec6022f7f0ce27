//! The benchmark's own connection to the server: PING (the unit every latency is divided by),
//! clean-up between blocks, `CLIENT LIST`, and markers in the `MONITOR` stream.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use redis::aio::ConnectionManager;

/// How many `SET`s scenario 7 sends per pipeline when it fills the server with held keys.
const HOLD_CHUNK: usize = 1000;

#[derive(Clone)]
pub struct Probe {
    pub client: redis::Client,
    conn: ConnectionManager,
}

/// What a held key holds: a value in distlock's lock format (`<32 hex token>:<fence>:<holder>`),
/// so distlock waits for it as for another holder's lock (it refuses to wait for a value it did
/// not write); to the other implementations it is just a value at their key.
const HELD_VALUE: &str = "ffffffffffffffffffffffffffffffff:1:the-benchmark";

impl Probe {
    /// A `ConnectionManager`, the same kind of connection distlock sends its commands on
    /// and async-redis-lock too (rslock uses the multiplexed connection inside it).
    pub async fn connect(url: &str) -> Result<Probe> {
        let client = redis::Client::open(url).context("opening the probe client")?;
        let conn = client
            .get_connection_manager()
            .await
            .context("connecting the probe")?;
        Ok(Probe { client, conn })
    }

    /// `n` sequential PINGs, each timed from send to reply.
    pub async fn ping_samples(&self, n: usize) -> Result<Vec<Duration>> {
        let mut conn = self.conn.clone();
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .context("PING")?;
            samples.push(started.elapsed());
        }
        Ok(samples)
    }

    /// `n` samples of two sequential calls of an empty script (`EVALSHA` of `return 1`): the
    /// floor, on this connection, of any lock that makes one script call per step.
    pub async fn empty_script_pairs(&self, n: usize) -> Result<Vec<Duration>> {
        let mut conn = self.conn.clone();
        let script = redis::Script::new("return 1");
        script.load_async(&mut conn).await.context("SCRIPT LOAD")?;
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            for _ in 0..2 {
                let _: i64 = script.invoke_async(&mut conn).await.context("EVALSHA")?;
            }
            samples.push(started.elapsed());
        }
        Ok(samples)
    }

    /// The CPU time the server has used so far (`used_cpu_sys` + `used_cpu_user` of `INFO cpu`).
    pub async fn server_cpu(&self) -> Result<Duration> {
        let mut conn = self.conn.clone();
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .query_async(&mut conn)
            .await
            .context("INFO cpu")?;
        let mut seconds = 0.0;
        for field in ["used_cpu_sys:", "used_cpu_user:"] {
            let value = info
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .with_context(|| format!("INFO cpu without {field}"))?;
            seconds += value.trim().parse::<f64>().context("INFO cpu value")?;
        }
        Ok(Duration::from_secs_f64(seconds))
    }

    /// Empties the database between blocks, so no block sees another's leftovers.
    pub async fn flush(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        redis::cmd("FLUSHALL")
            .query_async::<()>(&mut conn)
            .await
            .context("FLUSHALL")
    }

    /// The `addr=` of every client connected now.
    pub async fn client_addrs(&self) -> Result<HashSet<String>> {
        let mut conn = self.conn.clone();
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await
            .context("CLIENT LIST")?;
        Ok(client_list_field(&list, "addr").collect())
    }

    /// Sends a marker that shows up in a `MONITOR` stream.
    pub async fn mark(&self, marker: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        redis::cmd("ECHO")
            .arg(marker)
            .query_async::<String>(&mut conn)
            .await
            .context("ECHO marker")?;
        Ok(())
    }

    /// Sets each key to a foreign owner's value with an expiry: a lock held by someone else.
    pub async fn hold_keys(&self, keys: &[String], ttl: Duration) -> Result<()> {
        let mut conn = self.conn.clone();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        for chunk in keys.chunks(HOLD_CHUNK) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("SET")
                    .arg(key)
                    .arg(HELD_VALUE)
                    .arg("PX")
                    .arg(ttl_ms)
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn)
                .await
                .context("SET of the held keys")?;
        }
        Ok(())
    }
}

/// The values of `field=` in a `CLIENT LIST` reply, one per client line.
pub fn client_list_field<'a>(list: &'a str, field: &'a str) -> impl Iterator<Item = String> + 'a {
    list.lines().filter_map(move |line| {
        line.split(' ').find_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            (name == field).then(|| value.to_owned())
        })
    })
}
