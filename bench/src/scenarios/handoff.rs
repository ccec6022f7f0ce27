//! Scenario 3: K tasks on one key. A task that just released waits until someone else has held
//! the lock before it contends again, and a holder keeps the lock until every other task has been
//! inside `acquire()` for a moment, so each release hands the lock to a task already waiting.
//! Handoff latency: from the holder's `release()` returning to the next holder's `acquire()`
//! returning.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Result;
use tokio::sync::watch;
use tokio::time::Instant;

use super::abort_tasks;
use crate::subject::Subject;

/// No task has held the lock yet.
const NOBODY: usize = usize::MAX;

struct Shared {
    /// Tasks inside `acquire()` now.
    contending: watch::Sender<usize>,
    /// The task that took the lock last.
    last_holder: watch::Sender<usize>,
    /// Per acquisition, in the order the lock was held: when `acquire()` returned, and when the
    /// holder's `release()` returned.
    log: Mutex<Vec<(Instant, Option<Instant>)>>,
    stop: AtomicBool,
}

/// The handoff latencies seen during `duration`.
pub async fn latencies(
    subject: &Subject,
    tag: &str,
    k: usize,
    duration: Duration,
    hold: Duration,
) -> Result<Vec<Duration>> {
    let shared = Arc::new(Shared {
        contending: watch::Sender::new(0),
        last_holder: watch::Sender::new(NOBODY),
        log: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    });
    let key = format!("s3:{tag}");
    let handles: Vec<_> = (0..k)
        .map(|me| {
            let (subject, shared, key) = (subject.clone(), Arc::clone(&shared), key.clone());
            tokio::spawn(async move { contend(&subject, &shared, &key, me, k, hold).await })
        })
        .collect();
    tokio::time::sleep(duration).await;
    shared.stop.store(true, Ordering::Relaxed);
    abort_tasks(handles).await?;

    let log = shared.log.lock().unwrap_or_else(PoisonError::into_inner);
    Ok(log
        .windows(2)
        .filter_map(|pair| {
            let released = pair[0].1?;
            // The next acquire can return a hair before the releasing task sees its own
            // release return: that handoff took no time from the releaser's point of view.
            Some(pair[1].0.saturating_duration_since(released))
        })
        .collect())
}

async fn contend(
    subject: &Subject,
    shared: &Shared,
    key: &str,
    me: usize,
    k: usize,
    hold: Duration,
) -> Result<()> {
    let mut last_holder = shared.last_holder.subscribe();
    let mut contending = shared.contending.subscribe();
    while !shared.stop.load(Ordering::Relaxed) {
        last_holder.wait_for(|holder| *holder != me).await?;
        shared.contending.send_modify(|n| *n += 1);
        let acquired = subject.acquire(key).await;
        let acquired_at = Instant::now();
        shared.contending.send_modify(|n| *n -= 1);
        let held = acquired?;
        let entry = {
            let mut log = shared.log.lock().unwrap_or_else(PoisonError::into_inner);
            log.push((acquired_at, None));
            log.len() - 1
        };
        shared.last_holder.send_replace(me);
        contending.wait_for(|n| *n >= k - 1).await?;
        tokio::time::sleep(hold).await;
        held.release().await?;
        let released_at = Instant::now();
        shared.log.lock().unwrap_or_else(PoisonError::into_inner)[entry].1 = Some(released_at);
    }
    Ok(())
}
