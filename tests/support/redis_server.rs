//! A private `redis-server` on a free loopback port in a temp dir, killed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::spawn_owned;

/// How long a fresh server may take to answer PING; generous for a loaded 2-core CI machine.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at finding a port nobody else grabbed between our probe and the server's bind.
const PORT_ATTEMPTS: usize = 5;

pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    /// Written to `redis.conf` in `dir` and given first (a sentinel needs a file it can rewrite).
    config: Option<String>,
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server without persistence.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `--name value` arguments (e.g. `["--requirepass", "pw"]`).
    pub fn start_with(extra_args: &[&str]) -> Self {
        Self::start_configured(None, extra_args)
    }

    /// Starts a server from the config file text `config` (the file in its temp dir) plus extra
    /// arguments (e.g. `["--sentinel"]`).
    pub fn start_configured(config: Option<&str>, extra_args: &[&str]) -> Self {
        let binary = binary();
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let mut server = RedisServer {
                port,
                dir: tempfile::tempdir().expect("temp dir for redis-server"),
                config: config.map(str::to_owned),
                extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
                child: None,
            };
            match server.spawn(&binary) {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("could not start redis-server: {last_error}");
    }

    fn spawn(&mut self, binary: &Path) -> Result<(), String> {
        let log = self.dir.path().join("redis.log");
        let mut cmd = Command::new(binary);
        if let Some(config) = &self.config {
            let file = self.dir.path().join("redis.conf");
            // Only on the first start: a sentinel rewrites its file, and keeps what it learnt.
            if !file.exists() {
                std::fs::write(&file, config).map_err(|e| format!("writing {file:?}: {e}"))?;
            }
            cmd.arg(file);
        }
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn_owned(cmd).map_err(|e| format!("spawning {binary:?}: {e}"))?;
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("redis-server exited with {status}: {log}"));
            }
            if self.answers_ping() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        Err(format!(
            "redis-server did not answer PING within {START_TIMEOUT:?}"
        ))
    }

    fn answers_ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        // +PONG without a password; -NOAUTH with one: either way the server is up.
        matches!(stream.read(&mut buf), Ok(n) if n > 0)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id while it runs (killed: None).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A plain client for inspecting the data directly in tests.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis-server")
    }

    /// How many times `command` (lower case, e.g. "evalsha") ran, from `INFO commandstats`.
    /// Commands run inside scripts are counted under their own names, not under evalsha.
    pub async fn command_calls(&self, command: &str) -> u64 {
        let mut conn = self.client().await;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .expect("INFO commandstats");
        commandstat_calls(&info, command)
    }

    /// Polls `INFO commandstats` until `command` has run `calls` times in all.
    pub async fn wait_for_calls(&self, command: &str, calls: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.command_calls(command).await;
            if now >= calls {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{command}: {now} of {calls} calls"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Polls until the release channel of the lock `key` (default prefix) has a subscriber.
    pub async fn wait_until_subscribed(&self, key: &str) {
        let mut conn = self.client().await;
        let channel = format!("lock:{{{key}}}:released");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, n): (String, u64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async(&mut conn)
                .await
                .expect("PUBSUB NUMSUB");
            if n > 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{channel} never got a subscriber"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// SIGKILL: the server dies at once, losing everything (no persistence).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty, as after a crash without persistence).
    pub fn restart(&mut self) {
        self.kill();
        let binary = binary();
        let started = Instant::now();
        // The port can stay busy for a moment after the kill.
        loop {
            match self.spawn(&binary) {
                Ok(()) => return,
                Err(e) if started.elapsed() > START_TIMEOUT => panic!("restart failed: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The `redis-server` binary: `$REDIS_SERVER`, or on PATH, or Debian's place.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("REDIS_SERVER") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "redis-server not found: the tests start their own. Install it with \
                 `sudo apt-get install -y redis-server` (or run scripts/test, which does), \
                 or point REDIS_SERVER at the binary"
            )
        })
}

/// How many times `command` ran, from the text of `INFO commandstats`.
pub fn commandstat_calls(info: &str, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:");
    info.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.split(['=', ',']).nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The locks present in Redis under the default prefix (a lock is its only key). KEYS is fine in
/// a test; the library never uses it.
pub async fn lock_names(conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    redis::cmd("KEYS")
        .arg("lock:*")
        .query_async(conn)
        .await
        .expect("KEYS in the test")
}

/// Waits until none of `keys` is locked (a background release or cleanup is a round trip away);
/// Err with the ones still locked after `bound`.
pub async fn wait_until_unlocked(
    server: &RedisServer,
    keys: &[String],
    bound: Duration,
) -> Result<(), Vec<String>> {
    let mut conn = server.client().await;
    let deadline = Instant::now() + bound;
    loop {
        let mut left = Vec::new();
        for key in keys {
            let exists: bool = redis::cmd("EXISTS")
                .arg(format!("lock:{{{key}}}"))
                .query_async(&mut conn)
                .await
                .expect("EXISTS");
            if exists {
                left.push(key.clone());
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(left);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
