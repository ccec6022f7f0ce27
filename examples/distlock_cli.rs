//! An operator's tool for distlock's locks on a Redis server: who holds what, and taking away a
//! lock whose holder is stuck.
//!
//! ```text
//! distlock_cli [--prefix P] list [PATTERN]      # held locks whose key matches PATTERN (glob, default *)
//! distlock_cli [--prefix P] show KEY            # one lock: holder, lease left, fencing token
//! distlock_cli [--prefix P] force-release KEY   # delete it whoever holds it (logged at WARN)
//! ```
//!
//! `REDIS_URL` names the server, a Cluster (`redis+cluster://h1:p1,h2:p2`) or the primary behind
//! Sentinel (`redis+sentinel://s1:p1,s2:p2/<master name>`); the key prefix is `--prefix`, else
//! `DISTLOCK_KEY_PREFIX`, else `lock:`. `list` walks the prefix with SCAN (on a Cluster, on every
//! primary): it is for operators, and no lock path ever does.
//! Exit status: 0 done, 1 the lock is free (`show`, `force-release`), 2 an error.
//!
//! Run it with `cargo run --example distlock_cli -- list`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use distlock::{
    DEFAULT_KEY_PREFIX, KEY_PREFIX_VAR, LockInfo, Locker, LockerBuilder, REDIS_URL_VAR,
};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncCommands, IntoConnectionInfo};

#[derive(Parser)]
#[command(about = "Inspect and force-release distlock locks on a Redis server (REDIS_URL)")]
struct Cli {
    /// The lockers' key prefix.
    #[arg(long, global = true, env = KEY_PREFIX_VAR, default_value = DEFAULT_KEY_PREFIX)]
    prefix: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Held locks whose key matches PATTERN (a Redis glob: *, ?, [abc]): key, holder, lease
    /// left, fencing token.
    List {
        #[arg(default_value = "*")]
        pattern: String,
    },
    /// One lock: its holder, lease left and fencing token.
    Show { key: String },
    /// Delete the lock whoever holds it; its waiters are woken, its holder loses its lease.
    ForceRelease { key: String },
}

/// Exit status for a lock that is free: the thing asked about is not there, as grep's 1.
const FREE: u8 = 1;
/// Exit status for an error (no server, a value that is not a lock, a bad argument).
const FAILED: u8 = 2;
/// Keys asked for per SCAN call: the server's work per call stays small on a busy instance.
const SCAN_BATCH: usize = 1000;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // force_release logs at WARN: an operator sees it, and it reaches their log collection.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(FAILED)
        }
    }
}

type Failure = Box<dyn std::error::Error>;

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let locker = LockerBuilder::from_env()?
        .key_prefix(&cli.prefix)
        .build()
        .await?;
    match cli.command {
        Command::List { pattern } => list(&locker, &cli.prefix, &pattern).await,
        Command::Show { key } => Ok(match locker.inspect(&key).await? {
            Some(info) => {
                println!("key:           {key}");
                println!("holder:        {}", holder(&info));
                println!("lease left:    {}", lease_left(&info));
                println!("fencing token: {}", info.fencing_token);
                ExitCode::SUCCESS
            }
            None => {
                println!("{key} is free");
                ExitCode::from(FREE)
            }
        }),
        Command::ForceRelease { key } => Ok(match locker.force_release(&key).await? {
            Some(info) => {
                println!(
                    "released {key}: holder {}, fencing token {}, {} of lease left",
                    holder(&info),
                    info.fencing_token,
                    lease_left(&info)
                );
                ExitCode::SUCCESS
            }
            None => {
                println!("{key} is free: nothing released");
                ExitCode::from(FREE)
            }
        }),
    }
}

/// SCAN for `prefix{pattern}`, then one inspection per lock (a lock that expires meanwhile is
/// left out). Tab-separated, with a header, sorted by key.
async fn list(locker: &Locker, prefix: &str, pattern: &str) -> Result<ExitCode, Failure> {
    let url = std::env::var(REDIS_URL_VAR)?;
    let glob = format!("{}{{{pattern}}}", escape_glob(prefix));
    let mut names = scan(&url, &glob).await?;
    // SCAN may return a name more than once.
    names.sort();
    names.dedup();
    println!("KEY\tHOLDER\tLEASE LEFT\tFENCING TOKEN");
    for name in names {
        let Some(key) = lock_key(&name, prefix) else {
            continue;
        };
        match locker.inspect(key).await {
            Ok(Some(info)) => println!(
                "{key}\t{}\t{}\t{}",
                holder(&info),
                lease_left(&info),
                info.fencing_token
            ),
            Ok(None) => {}
            // A value someone else wrote under the prefix: say so, and go on with the others.
            Err(error) => eprintln!("warning: {error}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The names matching `glob` on the server `url` names: on each primary of a Cluster, on the
/// primary the sentinels name, or on the one server.
async fn scan(url: &str, glob: &str) -> Result<Vec<String>, Failure> {
    let (scheme, rest) = url.split_once("://").ok_or("REDIS_URL is not a URL")?;
    // `user:password@` belongs to the data nodes, never to the sentinels.
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((auth, rest)) => (format!("{auth}@"), rest),
        None => (String::new(), rest),
    };
    let rest = rest.split('?').next().unwrap_or_default();
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    let hosts = hosts.split(',');
    let mut conn = match scheme {
        "redis+cluster" => {
            let nodes = hosts.map(|host| format!("redis://{auth}{host}/"));
            let client = redis::cluster::ClusterClient::new(nodes.collect::<Vec<_>>())?;
            return scan_cluster(client.get_async_connection().await?, glob).await;
        }
        "redis+sentinel" => {
            let (master, db) = path.split_once('/').unwrap_or((path, "0"));
            // A String: `SentinelClient::build` takes one without the `tls` feature, any
            // `AsRef<str>` with it.
            let master = master.to_owned();
            let primary = format!("redis://{auth}localhost/{db}").into_connection_info()?;
            let primary = SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(primary.redis_settings().clone());
            let sentinels = hosts.map(|host| format!("redis://{host}/")).collect();
            let mut client = SentinelClient::build(
                sentinels,
                master,
                Some(primary),
                SentinelServerType::Master,
            )?;
            client.get_async_connection().await?
        }
        "rediss+cluster" | "rediss+sentinel" => {
            return Err("list: this tool walks Cluster and Sentinel URLs without TLS only".into());
        }
        _ => {
            redis::Client::open(url)?
                .get_multiplexed_async_connection()
                .await?
        }
    };
    let mut names = Vec::new();
    let options = redis::ScanOptions::default()
        .with_pattern(glob)
        .with_count(SCAN_BATCH);
    let mut iter = conn.scan_options::<String>(options).await?;
    while let Some(name) = iter.next_item().await {
        names.push(name?);
    }
    Ok(names)
}

/// SCAN on every primary of the Cluster: the first call goes to all of them, and each one's
/// cursor is followed on that node (a cursor means nothing to another).
async fn scan_cluster(mut conn: ClusterConnection, glob: &str) -> Result<Vec<String>, Failure> {
    let scan_from = |cursor: u64| {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(glob)
            .arg("COUNT")
            .arg(SCAN_BATCH);
        scan
    };
    let all_primaries = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
    // No way to merge cursors: the reply is each primary's "host:port" with its own SCAN reply.
    let firsts: HashMap<String, (u64, Vec<String>)> =
        redis::from_redis_value(conn.route_command(scan_from(0), all_primaries).await?)?;
    let mut names = Vec::new();
    for (address, (mut cursor, batch)) in firsts {
        names.extend(batch);
        let (host, port) = address
            .rsplit_once(':')
            .ok_or("a Cluster node's address without a port")?;
        let node = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
            host: host.to_owned(),
            port: port.parse()?,
        });
        while cursor != 0 {
            let reply = conn.route_command(scan_from(cursor), node.clone()).await?;
            let batch: Vec<String>;
            (cursor, batch) = redis::from_redis_value(reply)?;
            names.extend(batch);
        }
    }
    Ok(names)
}

/// `K` of a lock's name `P{K}`.
fn lock_key<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    name.strip_prefix(prefix)?
        .strip_prefix('{')?
        .strip_suffix('}')
}

/// The prefix as a literal in a SCAN MATCH glob.
fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn holder(info: &LockInfo) -> String {
    // One line per lock whatever the label holds.
    info.holder
        .as_deref()
        .map_or_else(|| "-".to_owned(), |label| label.escape_debug().to_string())
}

fn lease_left(info: &LockInfo) -> String {
    let millis = Duration::from_millis(info.lease_left.as_millis() as u64);
    format!("{millis:?}")
}
