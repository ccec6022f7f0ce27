//! Scenario 7: many tasks in one process, each waiting on its own held key: the process's resident
//! memory and the Redis connections it opened. Each implementation runs in a child process of its
//! own (this program, with `--scale-child`), so no other scenario's memory is counted.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::probe::{Probe, client_list_field};
use crate::subject::{Kind, Subject};

/// The held keys outlive the child by far.
const HELD_FOR: Duration = Duration::from_secs(600);
/// The child gets this long to start its waiters and measure.
const CHILD_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scale {
    pub tasks: usize,
    /// VmRSS once every task waits.
    pub rss_kib: u64,
    /// VmRSS after connecting, before the waiters started.
    pub rss_before_kib: u64,
    /// Connections the implementation opened (new entries in `CLIENT LIST`).
    pub connections: usize,
}

/// Parent side: hold the keys, run the child, read its figures.
pub async fn measure(
    probe: &Probe,
    url: &str,
    kind: Kind,
    tag: &str,
    tasks: usize,
    settle: Duration,
) -> Result<Scale> {
    let keys: Vec<String> = (0..tasks).map(|i| kind.redis_key(&key(tag, i))).collect();
    probe.hold_keys(&keys, HELD_FOR).await?;
    let exe = std::env::current_exe().context("finding this program to run the child")?;
    let child = tokio::process::Command::new(exe)
        .arg("--scale-child")
        .args([kind.slug(), url, tag, &tasks.to_string()])
        .arg(settle.as_millis().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the scale child process")?;
    let output = tokio::time::timeout(CHILD_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| {
            format!(
                "{}: the scale child took over {CHILD_TIMEOUT:?}",
                kind.name()
            )
        })?
        .context("waiting for the scale child")?;
    if !output.status.success() {
        bail!(
            "{}: the scale child failed ({})",
            kind.name(),
            output.status
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .last()
        .context("the scale child printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("the scale child printed {line:?}"))
}

fn key(tag: &str, i: usize) -> String {
    format!("s7:{tag}:{i}")
}

/// Child side, `--scale-child KIND URL TAG TASKS SETTLE_MS`: start the waiters, measure, print
/// the figures as one JSON line, and exit without waiting for the waiters.
pub async fn child(args: &[String]) -> Result<()> {
    let [kind, url, tag, tasks, settle_ms] = args else {
        bail!("--scale-child takes KIND URL TAG TASKS SETTLE_MS");
    };
    let kind = Kind::parse(kind)?;
    let tasks: usize = tasks.parse().context("TASKS")?;
    let settle = Duration::from_millis(settle_ms.parse().context("SETTLE_MS")?);

    let client = redis::Client::open(url.as_str())?;
    let mut probe = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting the child's probe")?;
    let before = client_ids(&mut probe).await?;
    let subject = Subject::connect(kind, url).await?;
    let rss_before_kib = rss_kib()?;
    let started = Arc::new(AtomicUsize::new(0));
    let handles: Vec<tokio::task::JoinHandle<Result<()>>> = (0..tasks)
        .map(|i| {
            let (subject, key, started) = (subject.clone(), key(tag, i), Arc::clone(&started));
            tokio::spawn(async move {
                started.fetch_add(1, Ordering::Relaxed);
                subject.acquire(&key).await?;
                bail!("acquired {key:?}, which the benchmark holds")
            })
        })
        .collect();
    while started.load(Ordering::Relaxed) < tasks {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(settle).await;
    if let Some(finished) = handles.into_iter().find(|h| h.is_finished()) {
        match finished.await {
            Ok(Err(e)) => return Err(e.context(format!("{}: a waiter failed", kind.name()))),
            other => bail!("{}: a waiter ended early: {other:?}", kind.name()),
        }
    }
    let rss_kib = rss_kib()?;
    let after = client_ids(&mut probe).await?;
    let scale = Scale {
        tasks,
        rss_kib,
        rss_before_kib,
        connections: after.difference(&before).count(),
    };
    println!("{}", serde_json::to_string(&scale)?);
    // The waiters would wait out their whole wait: leave without them.
    std::process::exit(0)
}

async fn client_ids(conn: &mut redis::aio::MultiplexedConnection) -> Result<HashSet<String>> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .context("CLIENT LIST")?;
    Ok(client_list_field(&list, "id").collect())
}

/// Resident memory of this process, from /proc/self/status.
fn rss_kib() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/self/status")
}
