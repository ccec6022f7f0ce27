//! One process of the fault suite (`tests/faults`): takes locks against a real Redis and writes
//! one record per critical section (see `tests/support/records.rs`), so the suite can check
//! across processes that no two holders were ever inside one key at once.
//!
//! ```text
//! torture_worker run  --url URL --out FILE --tasks 16 --keys a,b,c --duration 20s
//!                     (--lease 5s | --watchdog-lease 3s [--renewal 1s]) [--wait 30s]
//!                     [--no-lock] [--counter] [--stats-every 1s] [--gate]
//! torture_worker hold --url URL --key K --out FILE (--lease 2s | --watchdog-lease 3s [--renewal 1s])
//! ```
//!
//! **run**: `--tasks` tasks loop until the deadline: pick a key at random, acquire, record the
//! entry on `CLOCK_MONOTONIC`, do the section, record the exit and whether the guard says the
//! lease was lost, release (`LeaseLost` counts as lost), write the record. `--counter` makes the
//! section a deliberately non-atomic read-modify-write of `counter:<key>` (GET, yield, SET + 1) on
//! a plain connection of its own, so a broken lock shows as lost increments. `--no-lock` runs the
//! same loop without the lock (token 0): the control. With `--gate` the process connects, spawns
//! its tasks, prints `{"ready":..}` and starts when a line arrives on stdin, so a test starts all
//! its processes at once. Prints `{"stats":..}` every `--stats-every` (resident memory, alive tokio
//! tasks) and one `{"summary":..}` at the end (sections, errors by kind). Exits 0 unless the setup
//! failed.
//!
//! **hold**: acquires once, prints `{"acquired":{"fence","sent_ns","enter_ns","pid"}}`, then
//! obeys stdin lines: `write <store>` does a fenced write (`records::FENCED_WRITE_SCRIPT`) with
//! its token and prints `{"write":{"accepted","lost_before"}}`; `status` prints
//! `{"status":{"lost"}}`; `release` writes the record, releases and prints
//! `{"released":{"ok","lease_lost"}}`, then exits. EOF on stdin exits at once, still holding.

#[allow(dead_code)] // the readers are for the tests
#[path = "../tests/support/records.rs"]
mod records;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use distlock::{LockError, LockOptions, Locker};
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::sync::Barrier;

use records::{Record, RecordWriter, monotonic_ns};

/// After a backend error, pause this long before the next attempt: a server that is down (a
/// fault under test) must not turn the loop into a busy spin.
const BACKEND_ERROR_PAUSE: Duration = Duration::from_millis(10);

#[derive(Parser)]
#[command(about = "A torture worker process for the fault suite")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Many tasks taking locks in a loop until the deadline, one record per critical section.
    Run(RunArgs),
    /// Take one lock, then obey commands on stdin.
    Hold(HoldArgs),
}

/// How to reach Redis and how to hold a lock: shared by both modes.
#[derive(Args)]
struct LockArgs {
    /// The Redis server.
    #[arg(long, env = "REDIS_URL")]
    url: String,
    /// A fixed lease; without it the watchdog renews the lock while it is held.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "watchdog_lease")]
    lease: Option<Duration>,
    /// The watchdog's lease (the locker's setting; default 30 s).
    #[arg(long, value_parser = humantime::parse_duration)]
    watchdog_lease: Option<Duration>,
    /// How often the watchdog renews (default a third of its lease).
    #[arg(long, value_parser = humantime::parse_duration, requires = "watchdog_lease")]
    renewal: Option<Duration>,
    /// How long one acquire may wait for a busy lock.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    wait: Duration,
    /// How long one command may wait for its answer (the locker's setting).
    #[arg(long, value_parser = humantime::parse_duration)]
    response_timeout: Option<Duration>,
}

impl LockArgs {
    async fn locker(&self) -> Result<Locker, LockError> {
        let mut builder = Locker::builder(&self.url);
        if let Some(lease) = self.watchdog_lease {
            builder = builder.watchdog_lease(lease);
        }
        if let Some(renewal) = self.renewal {
            builder = builder.renewal_interval(renewal);
        }
        if let Some(timeout) = self.response_timeout {
            builder = builder.response_timeout(timeout);
        }
        builder.build().await
    }

    fn options(&self) -> LockOptions {
        let options = LockOptions::new().wait(self.wait);
        match self.lease {
            Some(lease) => options.lease(lease),
            None => options,
        }
    }

    async fn plain_connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        // redis-rs answers Io after 500 ms by default: a loaded 2-core CI machine stalls that long
        // now and then, which is not what the suite tests. The lock has its own timeouts.
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(COUNTER_RESPONSE_TIMEOUT));
        redis::Client::open(self.url.as_str())?
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }
}

/// How long the counter's GET or SET may take (the counter is the suite's store, not the lock).
const COUNTER_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    lock: LockArgs,
    /// The records file (JSON lines, appended).
    #[arg(long)]
    out: PathBuf,
    /// Concurrent tasks in this process.
    #[arg(long, default_value_t = 16)]
    tasks: u32,
    /// The lock keys, comma separated; each section picks one at random.
    #[arg(long, value_delimiter = ',', required = true)]
    keys: Vec<String>,
    /// How long the tasks keep taking locks.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The control: the same loop without the lock (records carry token 0).
    #[arg(long)]
    no_lock: bool,
    /// Inside the section: GET counter:<key>, yield, SET it + 1.
    #[arg(long)]
    counter: bool,
    /// Print a stats line this often.
    #[arg(long, value_parser = humantime::parse_duration)]
    stats_every: Option<Duration>,
    /// Print a ready line once set up, and start when a line arrives on stdin.
    #[arg(long)]
    gate: bool,
}

#[derive(Args)]
struct HoldArgs {
    #[command(flatten)]
    lock: LockArgs,
    /// The lock key.
    #[arg(long)]
    key: String,
    /// The records file (JSON lines, appended): one record at `release`.
    #[arg(long)]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().mode {
        Mode::Run(args) => run(args).await,
        Mode::Hold(args) => hold(args).await,
    }
}

/// One JSON line on stdout, flushed at once: the test reads them as they come.
fn emit(value: Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

/// A setup failure: say what, and exit non-zero.
fn setup_failed(what: &str, error: impl std::fmt::Display) -> ExitCode {
    emit(json!({ "error": { "kind": "setup", "message": format!("{what}: {error}") } }));
    ExitCode::from(2)
}

fn error_kind(error: &LockError) -> &'static str {
    match error {
        LockError::NotAcquired { .. } => "not_acquired",
        LockError::LeaseLost { .. } => "lease_lost",
        LockError::Backend { .. } => "backend",
        LockError::InvalidKey { .. } => "invalid_key",
        LockError::InvalidOptions { .. } => "invalid_options",
        _ => "other",
    }
}

/// Resident memory in KiB, from /proc/self/status (0 where unavailable).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// What the tasks of a `run` share.
struct Shared {
    locker: Option<Locker>,
    options: LockOptions,
    keys: Vec<String>,
    counter: Option<MultiplexedConnection>,
    records: Mutex<RecordWriter>,
    /// Set before the start barrier opens.
    deadline_ns: AtomicU64,
    sections: AtomicU64,
    lost: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn count_error(&self, kind: &str) {
        let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        *errors.entry(kind.to_owned()).or_default() += 1;
    }
}

async fn run(args: RunArgs) -> ExitCode {
    let pid = std::process::id();
    let locker = if args.no_lock {
        None
    } else {
        match args.lock.locker().await {
            Ok(locker) => Some(locker),
            Err(e) => return setup_failed("connecting the locker", e),
        }
    };
    let counter = if args.counter {
        match args.lock.plain_connection().await {
            Ok(conn) => Some(conn),
            Err(e) => return setup_failed("connecting the counter", e),
        }
    } else {
        None
    };
    let records = match RecordWriter::create(&args.out) {
        Ok(w) => w,
        Err(e) => return setup_failed(&format!("creating {:?}", args.out), e),
    };
    let shared = Arc::new(Shared {
        locker,
        options: args.lock.options(),
        keys: args.keys.clone(),
        counter,
        records: Mutex::new(records),
        deadline_ns: AtomicU64::new(0),
        sections: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        errors: Mutex::default(),
    });

    // Every task waits at the barrier, so they all start at the same instant.
    let start = Arc::new(Barrier::new(args.tasks as usize + 1));
    let tasks: Vec<_> = (0..args.tasks)
        .map(|task| {
            let shared = Arc::clone(&shared);
            let start = Arc::clone(&start);
            tokio::spawn(async move {
                start.wait().await;
                run_task(&shared, pid, task).await;
            })
        })
        .collect();

    if args.gate {
        emit(json!({ "ready": { "pid": pid } }));
        let line = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|n| n > 0)
        })
        .await;
        if !matches!(line, Ok(Ok(true))) {
            return setup_failed("waiting for the start line", "stdin closed");
        }
    }
    let started_ns = monotonic_ns();
    shared.deadline_ns.store(
        started_ns + args.duration.as_nanos() as u64,
        Ordering::SeqCst,
    );
    let rss_at_start = rss_kib();
    start.wait().await;

    let stats = args.stats_every.map(|every| {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                emit(json!({ "stats": {
                    "pid": pid,
                    "elapsed_ms": (monotonic_ns() - started_ns) / 1_000_000,
                    "rss_kib": rss_kib(),
                    "alive_tasks": alive_tasks(),
                    "sections": shared.sections.load(Ordering::Relaxed),
                }}));
            }
        })
    });
    for task in tasks {
        if task.await.is_err() {
            shared.count_error("task_panicked");
        }
    }
    if let Some(stats) = stats {
        stats.abort();
        let _ = stats.await;
    }
    let errors = shared
        .errors
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    emit(json!({ "summary": {
        "pid": pid,
        "sections": shared.sections.load(Ordering::SeqCst),
        "lost": shared.lost.load(Ordering::SeqCst),
        "errors": errors,
        "elapsed_ms": (monotonic_ns() - started_ns) / 1_000_000,
        "rss_kib_start": rss_at_start,
        "rss_kib": rss_kib(),
        "alive_tasks": alive_tasks(),
    }}));
    ExitCode::SUCCESS
}

async fn run_task(shared: &Shared, pid: u32, task: u32) {
    let deadline = shared.deadline_ns.load(Ordering::SeqCst);
    let mut rng = fastrand::Rng::new();
    while monotonic_ns() < deadline {
        let key = &shared.keys[rng.usize(..shared.keys.len())];
        let guard = match &shared.locker {
            None => None,
            Some(locker) => match locker.acquire(key, shared.options).await {
                Ok(guard) => Some(guard),
                Err(e) => {
                    shared.count_error(error_kind(&e));
                    if matches!(e, LockError::Backend { .. }) {
                        tokio::time::sleep(BACKEND_ERROR_PAUSE).await;
                    }
                    continue;
                }
            },
        };
        let enter_ns = monotonic_ns();
        match &shared.counter {
            Some(conn) => {
                if let Err(e) = increment_non_atomically(conn.clone(), key).await {
                    shared.count_error(&format!("counter: {:?}", e.kind()));
                }
            }
            None => tokio::task::yield_now().await,
        }
        let exit_ns = monotonic_ns();
        let (fence, lost) = match guard {
            None => (0, false),
            Some(guard) => {
                let fence = guard.fencing_token();
                let mut lost = guard.is_lost();
                match guard.release().await {
                    Ok(()) => {}
                    Err(e) if e.is_lease_lost() => lost = true,
                    Err(e) => shared.count_error(&format!("release: {}", error_kind(&e))),
                }
                (fence, lost)
            }
        };
        let record = Record {
            key: key.clone(),
            fence,
            pid,
            task,
            enter_ns,
            exit_ns,
            lost,
        };
        let written = shared
            .records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write(&record);
        if written.is_err() {
            shared.count_error("record_write");
        }
        shared.sections.fetch_add(1, Ordering::Relaxed);
        if lost {
            shared.lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// GET, yield to the other tasks, SET + 1: correct only while no one else does it at once.
async fn increment_non_atomically(
    mut conn: MultiplexedConnection,
    key: &str,
) -> redis::RedisResult<()> {
    let name = format!("counter:{key}");
    let value: Option<i64> = redis::cmd("GET").arg(&name).query_async(&mut conn).await?;
    tokio::task::yield_now().await;
    redis::cmd("SET")
        .arg(&name)
        .arg(value.unwrap_or(0) + 1)
        .query_async(&mut conn)
        .await
}

async fn hold(args: HoldArgs) -> ExitCode {
    let pid = std::process::id();
    let locker = match args.lock.locker().await {
        Ok(locker) => locker,
        Err(e) => return setup_failed("connecting the locker", e),
    };
    let mut store = match args.lock.plain_connection().await {
        Ok(conn) => conn,
        Err(e) => return setup_failed("connecting the store", e),
    };
    let mut records = match RecordWriter::create(&args.out) {
        Ok(w) => w,
        Err(e) => return setup_failed(&format!("creating {:?}", args.out), e),
    };
    let fenced_write = redis::Script::new(records::FENCED_WRITE_SCRIPT);

    let sent_ns = monotonic_ns();
    let guard = match locker.acquire(&args.key, args.lock.options()).await {
        Ok(guard) => guard,
        Err(e) => {
            emit(json!({ "error": { "kind": error_kind(&e), "message": e.to_string() } }));
            return ExitCode::from(1);
        }
    };
    let enter_ns = monotonic_ns();
    let fence = guard.fencing_token();
    emit(json!({ "acquired": {
        "fence": fence, "sent_ns": sent_ns, "enter_ns": enter_ns, "pid": pid,
    }}));

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        let Ok(Some(line)) = lines.next_line().await else {
            // The test went away or wants us to die holding: no release, no destructors.
            std::process::exit(0);
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["write", store_key] => {
                let lost_before = guard.is_lost();
                let accepted: redis::RedisResult<i64> = fenced_write
                    .key(*store_key)
                    .key(records::fenced_store_log(store_key))
                    .arg(fence)
                    .arg(pid)
                    .invoke_async(&mut store)
                    .await;
                match accepted {
                    Ok(n) => emit(json!({ "write": {
                        "accepted": n == 1, "lost_before": lost_before, "fence": fence,
                    }})),
                    Err(e) => emit(json!({ "write": {
                        "accepted": false, "lost_before": lost_before, "error": e.to_string(),
                    }})),
                }
            }
            ["status"] => emit(json!({ "status": { "lost": guard.is_lost() } })),
            ["release"] => {
                let exit_ns = monotonic_ns();
                let mut lost = guard.is_lost();
                let released = guard.release().await;
                lost |= matches!(&released, Err(e) if e.is_lease_lost());
                let record = Record {
                    key: args.key.clone(),
                    fence,
                    pid,
                    task: 0,
                    enter_ns,
                    exit_ns,
                    lost,
                };
                let written = records.write(&record).err().map(|e| e.to_string());
                emit(json!({ "released": {
                    "ok": released.is_ok(),
                    "lease_lost": matches!(&released, Err(e) if e.is_lease_lost()),
                    "error": released.err().map(|e| e.to_string()),
                    "record_error": written,
                    "exit_ns": exit_ns,
                }}));
                return ExitCode::SUCCESS;
            }
            _ => emit(json!({ "error": { "kind": "bad_command", "message": line } })),
        }
    }
}
