//! Scenario 6 (report only): tasks looping freely on one key; who got nothing, the longest single
//! wait, and Jain's fairness index over the per-task counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use tokio::sync::Barrier;
use tokio::time::Instant;

use super::abort_tasks;
use crate::stats::jain;
use crate::subject::Subject;

#[derive(Debug, Clone, Serialize)]
pub struct Starvation {
    pub tasks: usize,
    pub seconds: f64,
    pub sections: u64,
    pub starved_tasks: usize,
    pub longest_wait_ms: f64,
    pub jain: f64,
}

/// Nanoseconds since the start; 0 = not waiting.
#[derive(Default)]
struct TaskStats {
    sections: AtomicU64,
    longest_wait_ns: AtomicU64,
    waiting_since_ns: AtomicU64,
}

pub async fn measure(
    subject: &Subject,
    tag: &str,
    tasks: usize,
    duration: Duration,
) -> Result<Starvation> {
    let key = format!("s6:{tag}");
    let start = Arc::new(Barrier::new(tasks + 1));
    let origin = Instant::now();
    let deadline = origin + duration;
    let stats: Arc<Vec<TaskStats>> = Arc::new((0..tasks).map(|_| TaskStats::default()).collect());
    let handles: Vec<_> = (0..tasks)
        .map(|me| {
            let (subject, key, start, stats) = (
                subject.clone(),
                key.clone(),
                Arc::clone(&start),
                Arc::clone(&stats),
            );
            tokio::spawn(async move {
                let mine = &stats[me];
                start.wait().await;
                loop {
                    let asked = Instant::now();
                    mine.waiting_since_ns
                        .store(nanos(asked - origin).max(1), Ordering::Relaxed);
                    let held = subject.acquire(&key).await?;
                    let got = Instant::now();
                    mine.waiting_since_ns.store(0, Ordering::Relaxed);
                    if got <= deadline {
                        mine.sections.fetch_add(1, Ordering::Relaxed);
                        mine.longest_wait_ns
                            .fetch_max(nanos(got - asked), Ordering::Relaxed);
                    }
                    held.release().await?;
                }
            })
        })
        .collect();
    start.wait().await;
    tokio::time::sleep_until(deadline).await;
    let at_deadline = nanos(Instant::now() - origin);
    let mut counts = Vec::with_capacity(tasks);
    let mut longest = 0;
    for task in stats.iter() {
        counts.push(task.sections.load(Ordering::Relaxed));
        longest = longest.max(task.longest_wait_ns.load(Ordering::Relaxed));
        let since = task.waiting_since_ns.load(Ordering::Relaxed);
        if since > 0 {
            longest = longest.max(at_deadline.saturating_sub(since));
        }
    }
    abort_tasks(handles).await?;
    Ok(Starvation {
        tasks,
        seconds: duration.as_secs_f64(),
        sections: counts.iter().sum(),
        starved_tasks: counts.iter().filter(|&&c| c == 0).count(),
        longest_wait_ms: longest as f64 / 1e6,
        jain: jain(&counts),
    })
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
