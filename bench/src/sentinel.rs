//! A private Sentinel setup on this machine: a primary, one replica and three sentinels
//! (`redis-server <conf> --sentinel`), each on a free port with a temp dir, all killed when
//! dropped.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::server::{RedisServer, info_field as field};

/// The name the sentinels know the primary by.
pub const MASTER: &str = "mymaster";
const SENTINELS: usize = 3;
/// Sentinels that must agree the primary is down: a majority.
const QUORUM: usize = 2;
/// How long the replica may take to sync and the sentinels to answer for the primary.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

pub struct Sentinel {
    primary: RedisServer,
    _replica: RedisServer,
    sentinels: Vec<RedisServer>,
}

impl Sentinel {
    pub async fn start() -> Result<Sentinel> {
        // A replica's first sync starts at once, not after the default 5 s.
        let no_delay = ["--repl-diskless-sync-delay".to_owned(), "0".to_owned()];
        let primary = RedisServer::start_with(&no_delay).await?;
        let mut replica_args = no_delay.to_vec();
        replica_args.extend([
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            primary.port().to_string(),
        ]);
        let replica = RedisServer::start_with(&replica_args).await?;
        let mut sentinels = Vec::new();
        for _ in 0..SENTINELS {
            sentinels.push(RedisServer::start_sentinel(primary.port(), MASTER, QUORUM).await?);
        }
        let setup = Sentinel {
            primary,
            _replica: replica,
            sentinels,
        };
        setup.wait_ready().await?;
        Ok(setup)
    }

    /// The URL distlock connects with: the sentinels and the primary's name.
    pub fn url(&self) -> String {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        format!("redis+sentinel://{}/{MASTER}", sentinels.join(","))
    }

    pub fn primary_url(&self) -> String {
        self.primary.url()
    }

    /// The replica is online at the primary, and every sentinel names the primary.
    async fn wait_ready(&self) -> Result<()> {
        let started = Instant::now();
        loop {
            if self.ready().await.unwrap_or(false) {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("the Sentinel setup was not ready within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn ready(&self) -> Result<bool> {
        let mut conn = redis::Client::open(self.primary.url())?
            .get_multiplexed_async_connection()
            .await?;
        let replication: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await?;
        let online = replication
            .lines()
            .any(|l| l.starts_with("slave") && l.contains("state=online"));
        if !online || field(&replication, "role") != Some("master") {
            return Ok(false);
        }
        for sentinel in &self.sentinels {
            let mut conn = redis::Client::open(sentinel.url())?
                .get_multiplexed_async_connection()
                .await?;
            let (_, port): (String, u16) = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(MASTER)
                .query_async(&mut conn)
                .await?;
            if port != self.primary.port() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
