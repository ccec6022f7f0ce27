//! What the servers of a topology executed, from `INFO commandstats` summed over its primaries:
//! unlike MONITOR it counts the commands scripts run too (a script's `SET` is a `set`), which is
//! the work a shard does per critical section. Also `FLUSHALL` and `INFO cpu` per primary.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use redis::aio::MultiplexedConnection;

/// Commands the topology sends by itself, or the benchmark does, not the lock: sentinels' and
/// replicas' health checks (`PING` about once a second per sentinel, `REPLCONF ACK` once a
/// second per replica), and our own `CONFIG RESETSTAT`. `INFO` stays in: with replica
/// acknowledgement, each acquisition sends `INFO replication`. (The sentinels' `INFO`, one every
/// 10 s each, and their hello messages, `PUBLISH`es about 1.5 a second for three sentinels, are
/// under 0.01 per critical section in a block, so they are left in too.)
const NOT_THE_LOCK: [&str; 3] = ["ping", "replconf", "config|resetstat"];
/// The cluster client's topology queries (`CLUSTER SLOTS` ...) are also left out.
const NOT_THE_LOCK_PREFIX: &str = "cluster|";

/// Calls per command name.
pub type Counts = BTreeMap<String, u64>;

pub struct Primaries {
    conns: Vec<MultiplexedConnection>,
}

impl Primaries {
    pub async fn connect(urls: &[String]) -> Result<Primaries> {
        let mut conns = Vec::new();
        for url in urls {
            conns.push(
                redis::Client::open(url.as_str())?
                    .get_multiplexed_async_connection()
                    .await
                    .with_context(|| format!("connecting to the primary {url}"))?,
            );
        }
        Ok(Primaries { conns })
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Zeroes every primary's command statistics.
    pub async fn reset(&self) -> Result<()> {
        for conn in &self.conns {
            redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query_async::<()>(&mut conn.clone())
                .await
                .context("CONFIG RESETSTAT")?;
        }
        Ok(())
    }

    /// Each primary's calls per command since the last reset, in the order of the URLs.
    pub async fn counts(&self) -> Result<Vec<Counts>> {
        let mut out = Vec::new();
        for conn in &self.conns {
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query_async(&mut conn.clone())
                .await
                .context("INFO commandstats")?;
            out.push(parse(&info));
        }
        Ok(out)
    }

    /// The CPU time primary `i` has used so far (`used_cpu_sys` + `used_cpu_user`).
    pub async fn cpu(&self, i: usize) -> Result<Duration> {
        let mut conn = self.conns.get(i).context("no such primary")?.clone();
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .query_async(&mut conn)
            .await
            .context("INFO cpu")?;
        let mut seconds = 0.0;
        for name in ["used_cpu_sys", "used_cpu_user"] {
            seconds += crate::server::info_field(&info, name)
                .with_context(|| format!("INFO cpu without {name}"))?
                .parse::<f64>()
                .context("INFO cpu value")?;
        }
        Ok(Duration::from_secs_f64(seconds))
    }

    /// Empties every primary between blocks (their replicas follow).
    pub async fn flush(&self) -> Result<()> {
        for conn in &self.conns {
            redis::cmd("FLUSHALL")
                .query_async::<()>(&mut conn.clone())
                .await
                .context("FLUSHALL")?;
        }
        Ok(())
    }
}

/// The lock's commands in an `INFO commandstats` reply: `cmdstat_<name>:calls=<n>,usec=...`.
fn parse(info: &str) -> Counts {
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|pair| pair.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .filter(|(name, _)| {
            !NOT_THE_LOCK.contains(&name.as_str()) && !name.starts_with(NOT_THE_LOCK_PREFIX)
        })
        .collect()
}

/// The counts of several primaries added up.
pub fn sum<'a>(counts: impl IntoIterator<Item = &'a Counts>) -> Counts {
    let mut total = Counts::new();
    for counts in counts {
        for (name, calls) in counts {
            *total.entry(name.clone()).or_default() += calls;
        }
    }
    total
}

pub fn total(counts: &Counts) -> u64 {
    counts.values().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_keeps_the_lock_commands_and_their_calls() {
        let info = "# Commandstats\r\n\
            cmdstat_evalsha:calls=4,usec=40,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_set:calls=2,usec=2,usec_per_call=1.00,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_ping:calls=9,usec=1,usec_per_call=0.11,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_config|resetstat:calls=1,usec=9,usec_per_call=9.00,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_cluster|slots:calls=1,usec=5,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\n";
        let counts = parse(info);
        assert_eq!(
            counts.into_iter().collect::<Vec<_>>(),
            [("evalsha".to_owned(), 4), ("set".to_owned(), 2)]
        );
    }

    #[test]
    fn sum_adds_per_name() {
        let a = Counts::from([("set".to_owned(), 1), ("get".to_owned(), 2)]);
        let b = Counts::from([("set".to_owned(), 3)]);
        let total_counts = sum([&a, &b]);
        assert_eq!(total_counts["set"], 4);
        assert_eq!(total(&total_counts), 6);
    }
}
