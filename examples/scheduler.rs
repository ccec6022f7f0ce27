//! The two situations this library exists for, as a replica process of a service that runs
//! several replicas. Run three of them against one Redis (`scripts/demo` does) and compare with
//! `--no-lock`.
//!
//! **Ranking flush (serialise, lose nothing).** Each replica buffers users' search keywords and
//! flushes them to a shared sorted set on a cron schedule. The flush is a read-modify-write of the
//! ranking, deliberately non-atomic (read the score, yield, write score + n): two replicas flushing
//! at once lose counts. `#[distributed_lock(key = "ranking", wait = "10s", lease = "5s")]`
//! serialises the flushes; every replica still flushes its own buffer.
//!
//! **Once-per-tick job (skip, run exactly once).** A job scheduled on every replica must run once
//! per tick across all of them, even when the replicas' clocks differ. `wait = "0s"` +
//! `on_busy = "skip"` lets the first replica run it, and `hold_at_least` (most of a tick) keeps
//! the lock after a fast run so a replica whose tick fires later skips instead of running it again.
//!
//! ```text
//! scheduler --replica 1 [--cron "*/2 * * * * *"] [--duration 10s] [--clock-skew 400] [--no-lock]
//! scheduler report [--check]     # what happened, read from Redis; --check: exit 1 on loss / double run
//! scheduler reset                # delete the demo's keys
//! ```
//! `REDIS_URL` names the server: `redis://host:port`, a Cluster
//! (`redis+cluster://127.0.0.1:7000,127.0.0.1:7001`) or the primary behind Sentinel
//! (`redis+sentinel://127.0.0.1:26379/mymaster`). The original service ran
//! `--cron "0 0 11,23 * * *"` (11:00 and 23:00 every day); the default here fires every 2 seconds
//! so a demo sees several ticks.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use distlock::{Locker, distributed_lock, install};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{AsyncCommands, Cmd, Pipeline, RedisFuture, Value};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The demo's data in Redis (fixed names: the demo never scans the keyspace). One hash tag,
/// `{demo}`: on a Cluster all of them live in one slot, so the pipeline that writes two of them
/// goes to one node.
const RANKING: &str = "{demo}:ranking"; // sorted set: keyword -> searches recorded
const SEARCHED: &str = "{demo}:searched"; // hash: replica -> keywords searched (buffered)
const FLUSHED: &str = "{demo}:flushed"; // hash: replica -> keywords flushed
const FLUSHES: &str = "{demo}:flushes"; // list: "replica requested_us started_us ended_us count"
const JOB_LOG: &str = "{demo}:job-log"; // list: "tick replica"
const DEMO_KEYS: [&str; 5] = [RANKING, SEARCHED, FLUSHED, FLUSHES, JOB_LOG];

/// What users search for; a replica picks from these in turn.
const KEYWORDS: [&str; 12] = [
    "rust",
    "redis",
    "tokio",
    "lock",
    "lease",
    "fence",
    "cron",
    "replica",
    "kubernetes",
    "spring",
    "ranking",
    "search",
];
/// One simulated search per replica every this long.
const SEARCH_EVERY: Duration = Duration::from_millis(5);
/// The pause between reading a score and writing it back: the window in which an unlocked
/// concurrent flush overwrites another's update.
const READ_MODIFY_WRITE_GAP: Duration = Duration::from_millis(1);
/// The job's lease (`lease = "5m"` below); `hold_at_least` may not exceed it.
const JOB_LEASE: Duration = Duration::from_secs(5 * 60);

#[derive(Parser)]
#[command(
    about = "A replica of a service with a cron-scheduled ranking flush and a once-per-tick job"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// This replica's number (shown in the report).
    #[arg(long, default_value_t = 1)]
    replica: u32,
    /// Cron schedule with seconds: "sec min hour day month weekday". The original: "0 0 11,23 * * *".
    #[arg(long, default_value = "*/2 * * * * *")]
    cron: String,
    /// How long to run (humantime: "10s", "1m").
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Fire every tick this many milliseconds late, like a replica whose clock is behind.
    #[arg(long, default_value_t = 0)]
    clock_skew: u64,
    /// The same code without the attribute, to show the damage.
    #[arg(long)]
    no_lock: bool,
    /// The Redis server.
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
}

#[derive(Subcommand)]
enum Mode {
    /// Print what the replicas did, read from Redis.
    Report {
        /// Exit 1 if keywords were lost or a tick's job ran more than once.
        #[arg(long)]
        check: bool,
        #[arg(long, env = "REDIS_URL")]
        redis_url: Option<String>,
    },
    /// Delete the demo's keys.
    Reset {
        #[arg(long, env = "REDIS_URL")]
        redis_url: Option<String>,
    },
}

struct Replica {
    id: u32,
    data: Data,
    buffer: Mutex<HashMap<&'static str, u64>>,
    searched: AtomicU64,
    /// Most of a tick (capped at the job's lease): how long the job's lock outlives a fast run.
    hold: Duration,
}

impl Replica {
    #[distributed_lock(key = "ranking", wait = "10s", lease = "5s")]
    async fn flush_ranking(&self, requested_us: u64) -> Result<(), Error> {
        self.flush_buffer(requested_us).await
    }

    async fn flush_ranking_unlocked(&self, requested_us: u64) -> Result<(), Error> {
        self.flush_buffer(requested_us).await
    }

    #[distributed_lock(key = "job:daily-report", wait = "0s", lease = "5m", hold_at_least = self.hold, on_busy = "skip")]
    async fn daily_report(&self, tick: i64) {
        self.run_job(tick).await
    }

    async fn daily_report_unlocked(&self, tick: i64) {
        self.run_job(tick).await
    }

    fn search(&self, i: usize) {
        let keyword = KEYWORDS[(i + self.id as usize * 5) % KEYWORDS.len()];
        *lock(&self.buffer).entry(keyword).or_insert(0) += 1;
        self.searched.fetch_add(1, Ordering::SeqCst);
    }

    /// Moves the buffer into the ranking with a read-modify-write per keyword. What could not be
    /// written goes back into the buffer, so a failed flush loses nothing.
    async fn flush_buffer(&self, requested_us: u64) -> Result<(), Error> {
        let started_us = now_us();
        let batch: Vec<(&'static str, u64)> = lock(&self.buffer).drain().collect();
        let mut conn = self.data.clone();
        let mut flushed = 0;
        for (i, &(keyword, n)) in batch.iter().enumerate() {
            let written = async {
                let score: Option<f64> = conn.zscore(RANKING, keyword).await?;
                tokio::time::sleep(READ_MODIFY_WRITE_GAP).await;
                conn.zadd::<_, _, _, ()>(RANKING, keyword, score.unwrap_or(0.0) + n as f64)
                    .await
            };
            if let Err(e) = written.await {
                let mut buffer = lock(&self.buffer);
                for &(keyword, n) in &batch[i..] {
                    *buffer.entry(keyword).or_insert(0) += n;
                }
                return Err(e.into());
            }
            flushed += n;
        }
        let ended_us = now_us();
        let record = format!(
            "{} {requested_us} {started_us} {ended_us} {flushed}",
            self.id
        );
        redis::pipe()
            .hincr(FLUSHED, self.id, flushed)
            .rpush(FLUSHES, record)
            .exec_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn run_job(&self, tick: i64) {
        let mut conn = self.data.clone();
        let logged: redis::RedisResult<()> =
            conn.rpush(JOB_LOG, format!("{tick} {}", self.id)).await;
        if let Err(e) = logged {
            eprintln!("replica {}: could not record the job run: {e}", self.id);
        }
    }

    async fn flush(&self, locked: bool) {
        let requested = now_us();
        let flushed = if locked {
            self.flush_ranking(requested).await
        } else {
            self.flush_ranking_unlocked(requested).await
        };
        if let Err(e) = flushed {
            eprintln!(
                "replica {}: flush failed, keywords kept for the next one: {e}",
                self.id
            );
        }
    }

    async fn job(&self, locked: bool, tick: i64) {
        if locked {
            self.daily_report(tick).await
        } else {
            self.daily_report_unlocked(tick).await
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn redis_url(url: Option<String>) -> Result<String, Error> {
    url.ok_or_else(|| {
        "set REDIS_URL (or --redis-url), or run scripts/demo, which starts a private server".into()
    })
}

#[tokio::main]
async fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.mode {
        Some(Mode::Report {
            check,
            redis_url: url,
        }) => report(redis_url(url), check).await,
        Some(Mode::Reset { redis_url: url }) => reset(redis_url(url)).await,
        None => run_replica(cli).await,
    };
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("scheduler: {e}");
            std::process::exit(2);
        }
    }
}

/// The connection the demo keeps its data through (the locks have the locker's own).
#[derive(Clone)]
enum Data {
    /// One server: `redis://`, `redis+unix://`, or the primary the sentinels named.
    Server(MultiplexedConnection),
    /// Sends each command to the node serving its key's slot.
    Cluster(ClusterConnection),
}

/// The demo's connection for `url`. Of `redis+cluster://` and `redis+sentinel://` URLs it takes
/// the hosts and the master's name only (no password, database 0), enough for a demo; the locker
/// takes every form.
async fn connect(url: &str) -> Result<Data, Error> {
    let hosts = |list: &str| -> Vec<String> {
        list.split(',')
            .map(|host| format!("redis://{host}/"))
            .collect()
    };
    if let Some(rest) = url.strip_prefix("redis+cluster://") {
        let nodes = hosts(rest.trim_end_matches('/'));
        let client = redis::cluster::ClusterClient::new(nodes)?;
        return Ok(Data::Cluster(client.get_async_connection().await?));
    }
    if let Some(rest) = url.strip_prefix("redis+sentinel://") {
        let (sentinels, master) = rest
            .split_once('/')
            .ok_or("a redis+sentinel:// URL ends in /<master name>")?;
        let master = master.split('/').next().unwrap_or_default().to_owned();
        let mut client =
            SentinelClient::build(hosts(sentinels), master, None, SentinelServerType::Master)?;
        return Ok(Data::Server(client.get_async_connection().await?));
    }
    let client = redis::Client::open(url)?;
    Ok(Data::Server(
        client.get_multiplexed_async_connection().await?,
    ))
}

/// What lets `AsyncCommands` and pipelines run on `Data`: each call goes to the connection inside.
impl ConnectionLike for Data {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Data::Server(conn) => conn.req_packed_command(cmd),
            Data::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Data::Server(conn) => conn.req_packed_commands(pipeline, offset, count),
            Data::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Data::Server(conn) => conn.get_db(),
            Data::Cluster(conn) => conn.get_db(),
        }
    }
}

async fn run_replica(cli: Cli) -> Result<bool, Error> {
    let url = redis_url(cli.redis_url)?;
    let schedule = cron::Schedule::from_str(&cli.cron).map_err(|e| {
        format!(
            "--cron {:?} is not a cron expression with seconds: {e}",
            cli.cron
        )
    })?;
    let mut upcoming = schedule.upcoming(chrono::Utc).take(2);
    let tick = match (upcoming.next(), upcoming.next()) {
        (Some(a), Some(b)) => (b - a).to_std()?,
        _ => return Err(format!("--cron {:?} never fires twice", cli.cron).into()),
    };
    install(Locker::connect(&url).await?);
    let replica = std::sync::Arc::new(Replica {
        id: cli.replica,
        data: connect(&url).await?,
        buffer: Mutex::new(HashMap::new()),
        searched: AtomicU64::new(0),
        hold: (tick * 3 / 4).min(JOB_LEASE),
    });
    let locked = !cli.no_lock;
    let skew = chrono::Duration::milliseconds(cli.clock_skew as i64);
    let end = tokio::time::Instant::now() + cli.duration;

    let searcher = tokio::spawn({
        let replica = replica.clone();
        async move {
            let mut every = tokio::time::interval(SEARCH_EVERY);
            for i in 0.. {
                every.tick().await;
                replica.search(i);
            }
        }
    });

    for tick in schedule.upcoming(chrono::Utc) {
        let fire_at = tick + skew;
        let wait = (fire_at - chrono::Utc::now()).to_std().unwrap_or_default();
        if tokio::time::Instant::now() + wait > end {
            break;
        }
        tokio::time::sleep(wait).await;
        tokio::join!(replica.flush(locked), replica.job(locked, tick.timestamp()));
    }

    // Shut down: stop searching, flush what is left, and record the honest tally.
    tokio::time::sleep_until(end).await;
    searcher.abort();
    let _ = searcher.await;
    replica.flush(locked).await;
    // Before the process exits: a release still in the background would otherwise be dropped
    // with the runtime, and its lock held until its lease ran out.
    distlock::default_locker()?.close().await;
    let mut conn = replica.data.clone();
    let searched = replica.searched.load(Ordering::SeqCst);
    conn.hset::<_, _, _, ()>(SEARCHED, replica.id, searched)
        .await?;
    let left = lock(&replica.buffer).values().sum::<u64>();
    if left > 0 {
        return Err(format!(
            "replica {}: {left} keywords could not be flushed",
            replica.id
        )
        .into());
    }
    Ok(true)
}

async fn reset(url: Result<String, Error>) -> Result<bool, Error> {
    let mut conn = connect(&url?).await?;
    conn.del::<_, ()>(&DEMO_KEYS[..]).await?;
    Ok(true)
}

async fn report(url: Result<String, Error>, check: bool) -> Result<bool, Error> {
    let mut conn = connect(&url?).await?;
    let searched: HashMap<u32, u64> = conn.hgetall(SEARCHED).await?;
    let flushed: HashMap<u32, u64> = conn.hgetall(FLUSHED).await?;
    let ranking: Vec<(String, f64)> = conn.zrange_withscores(RANKING, 0, -1).await?;
    let job_log: Vec<String> = conn.lrange(JOB_LOG, 0, -1).await?;
    let flushes: Vec<String> = conn.lrange(FLUSHES, 0, -1).await?;

    let searched_total: u64 = searched.values().sum();
    let flushed_total: u64 = flushed.values().sum();
    let recorded: u64 = ranking.iter().map(|(_, s)| *s as u64).sum();
    let lost = searched_total.saturating_sub(recorded);
    println!("Ranking flush (lock \"ranking\"):");
    let mut replicas: Vec<_> = searched.keys().collect();
    replicas.sort();
    for r in replicas {
        println!(
            "  replica {r}: searched {:>5}, flushed {:>5}",
            searched[r],
            flushed.get(r).copied().unwrap_or(0)
        );
    }
    println!(
        "  keywords searched {searched_total}, flushed {flushed_total}, recorded in the ranking {recorded}: {}",
        if lost == 0 {
            "nothing lost".to_owned()
        } else {
            format!("{lost} LOST")
        }
    );

    let mut ticks: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    for entry in &job_log {
        let mut parts = entry.split(' ');
        if let (Some(Ok(tick)), Some(Ok(replica))) =
            (parts.next().map(str::parse), parts.next().map(str::parse))
        {
            ticks.entry(tick).or_default().push(replica);
        }
    }
    println!("Once-per-tick job (lock \"job:daily-report\"):");
    let mut double_runs = 0;
    for (tick, ran_on) in &ticks {
        let time = chrono::DateTime::from_timestamp(*tick, 0)
            .map(|t| t.format("%H:%M:%S").to_string())
            .unwrap_or_else(|| tick.to_string());
        let list: Vec<String> = ran_on.iter().map(|r| format!("replica {r}")).collect();
        let note = if ran_on.len() == 1 {
            ""
        } else {
            "  <- RAN MORE THAN ONCE"
        };
        println!(
            "  tick {time}: {} run(s) on {}{note}",
            ran_on.len(),
            list.join(", ")
        );
        if ran_on.len() > 1 {
            double_runs += 1;
        }
    }
    let (handoffs, overlaps) = handoffs_ms(&flushes);
    if overlaps > 0 {
        println!("  {overlaps} flushes ran while another replica's flush was still running");
    } else if !handoffs.is_empty() {
        let mut sorted = handoffs.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "Replicas that waited for another's flush got the lock {:.1} ms (median), {:.1} ms (max) after it ended ({} waits)",
            sorted[sorted.len() / 2],
            sorted[sorted.len() - 1],
            sorted.len()
        );
    }
    let max_handoff = handoffs.iter().copied().fold(0.0, f64::max);
    println!(
        "summary searched={searched_total} recorded={recorded} lost={lost} ticks={} double_runs={double_runs} overlaps={overlaps} waits={} max_handoff_ms={max_handoff:.1}",
        ticks.len(),
        handoffs.len()
    );
    Ok(!check || (lost == 0 && double_runs == 0 && flushed_total == recorded))
}

/// For each flush that was requested while another was running: how long after that one ended
/// it started (waiting on a poll interval would show here; a pub/sub wake-up is milliseconds).
/// Also how many flushes started before the previous one ended: only possible without the lock.
fn handoffs_ms(flushes: &[String]) -> (Vec<f64>, usize) {
    let mut runs: Vec<(u64, u64, u64)> = flushes
        .iter()
        .filter_map(|f| {
            let v: Vec<u64> = f.split(' ').filter_map(|x| x.parse().ok()).collect();
            (v.len() == 5).then(|| (v[1], v[2], v[3])) // requested, started, ended
        })
        .collect();
    runs.sort_by_key(|r| r.1);
    let overlaps = runs.windows(2).filter(|w| w[1].1 < w[0].2).count();
    let handoffs = runs
        .windows(2)
        .filter(|w| w[1].0 < w[0].2) // requested before the previous one ended: it waited
        .map(|w| (w[1].1.saturating_sub(w[0].2)) as f64 / 1000.0)
        .collect();
    (handoffs, overlaps)
}
