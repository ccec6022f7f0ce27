//! The private `redis-server` processes every figure is measured against: a free loopback port, a
//! temp dir, no persistence, killed when dropped. The same for the nodes of a Cluster and for the
//! primary, replica and sentinels of a Sentinel setup (see `cluster.rs`, `sentinel.rs`).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const REDIS_SERVER: &str = "redis-server";
/// How long the server may take to accept connections after it was started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Scenario 7 opens 10,000 waiters; a peer that opened a connection per waiter must be measured,
/// not refused by the default limit.
const MAX_CLIENTS: &str = "20000";

pub struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server` on a free port of 127.0.0.1 and waits until it answers PING.
    pub async fn start() -> Result<RedisServer> {
        RedisServer::start_with(&[]).await
    }

    /// The same with `extra` arguments after ours (a later one wins in redis-server).
    pub async fn start_with(extra: &[String]) -> Result<RedisServer> {
        let dir = tempfile::tempdir().context("creating a temp dir for redis-server")?;
        let port = free_port()?;
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--maxclients", MAX_CLIENTS])
            .arg("--dir")
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context(
                "starting redis-server (is it installed? scripts/install-redis installs it)",
            )?;
        let server = RedisServer {
            child,
            port,
            _dir: dir,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    /// A sentinel (`redis-server <conf> --sentinel`) watching the primary at `primary_port` as
    /// `master`, with `quorum` sentinels needed to agree that it is down. Its config file lives in
    /// its temp dir: a sentinel rewrites it as it learns the setup.
    pub async fn start_sentinel(
        primary_port: u16,
        master: &str,
        quorum: usize,
    ) -> Result<RedisServer> {
        let dir = tempfile::tempdir().context("creating a temp dir for a sentinel")?;
        let port = free_port()?;
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {master} 127.0.0.1 \
                 {primary_port} {quorum}\n",
                dir.path().display()
            ),
        )
        .context("writing a sentinel's config file")?;
        let child = Command::new(REDIS_SERVER)
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting redis-server --sentinel")?;
        let server = RedisServer {
            child,
            port,
            _dir: dir,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    async fn wait_ready(&self) -> Result<()> {
        let client = redis::Client::open(self.url())?;
        let started = Instant::now();
        loop {
            let ping = async {
                let mut conn = client.get_multiplexed_async_connection().await?;
                redis::cmd("PING").query_async::<String>(&mut conn).await
            };
            match ping.await {
                Ok(_) => return Ok(()),
                Err(e) if started.elapsed() > STARTUP_TIMEOUT => {
                    bail!(
                        "redis-server on port {} did not answer PING: {e}",
                        self.port
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port the OS just handed out; the tiny race until redis-server binds it is acceptable here.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The value of `name:` in an `INFO`-style reply.
pub fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}
