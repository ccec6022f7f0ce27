//! Scenario 1: one task, sequential acquire+release on fresh keys; and what the client sends per
//! critical section, counted with MONITOR on a fresh client.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::monitor::Monitor;
use crate::probe::Probe;
use crate::subject::{Kind, Subject};

/// Critical sections run on the fresh client before counting: lazy connections and script loads
/// are start-up, not the per-section cost.
pub const COUNT_WARMUP: usize = 20;

/// Latency of each acquire+release, on keys never used before.
pub async fn latencies(subject: &Subject, tag: &str, n: usize) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("s1:{tag}:{i}");
        let started = Instant::now();
        let held = subject.acquire(&key).await?;
        held.release().await?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// Client commands per critical section.
pub async fn commands_per_section(
    probe: &Probe,
    url: &str,
    kind: Kind,
    tag: &str,
    n: usize,
) -> Result<f64> {
    let others = probe.client_addrs().await?;
    let subject = Subject::connect(kind, url).await?;
    latencies(&subject, &format!("{tag}-warm"), COUNT_WARMUP).await?;
    let monitor = Monitor::start(&probe.client).await?;
    let window = monitor.open_window(probe).await?;
    latencies(&subject, tag, n).await?;
    let commands = monitor.close_window(probe, window, &others).await?;
    Ok(commands as f64 / n as f64)
}
