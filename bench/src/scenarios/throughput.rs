//! Scenario 2: many tasks, each looping acquire+release on its own key, for a fixed time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use tokio::sync::Barrier;
use tokio::time::Instant;

use super::stop_tasks;
use crate::subject::Subject;

/// Critical sections completed within `duration`.
pub async fn sections(
    subject: &Subject,
    tag: &str,
    tasks: usize,
    duration: Duration,
) -> Result<u64> {
    let keys = (0..tasks).map(|task| format!("s2:{tag}:{task}")).collect();
    sections_on(subject, keys, duration).await
}

/// The same with a task per key of `keys` (on a Cluster: keys chosen for their shard).
pub async fn sections_on(subject: &Subject, keys: Vec<String>, duration: Duration) -> Result<u64> {
    let tasks = keys.len();
    let start = Arc::new(Barrier::new(tasks + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Arc::new(std::sync::OnceLock::<Instant>::new());
    let handles: Vec<_> = keys
        .into_iter()
        .map(|key| {
            let (subject, start, stop, done, deadline) = (
                subject.clone(),
                Arc::clone(&start),
                Arc::clone(&stop),
                Arc::clone(&done),
                Arc::clone(&deadline),
            );
            tokio::spawn(async move {
                start.wait().await;
                while !stop.load(Ordering::Relaxed) {
                    subject.acquire(&key).await?.release().await?;
                    if deadline.get().is_some_and(|d| Instant::now() <= *d) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    let _ = deadline.set(Instant::now() + duration);
    start.wait().await;
    let end = *deadline.get().unwrap_or(&Instant::now());
    tokio::time::sleep_until(end).await;
    stop.store(true, Ordering::Relaxed);
    let counted = done.load(Ordering::Relaxed);
    stop_tasks(handles).await?;
    Ok(counted)
}
