//! Scenario 5: waiters queued behind one holder, each running a short critical section (one yield
//! to the scheduler, no I/O) once it has the lock: the time from the holder's release until all of
//! them have released in turn.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::time::Instant;

use super::join_tasks;
use crate::subject::{Kind, Subject, WAIT};

pub async fn duration(
    url: &str,
    kind: Kind,
    tag: &str,
    waiters: usize,
    settle: Duration,
) -> Result<Duration> {
    let key = format!("s5:{tag}");
    let holder = Subject::connect(kind, url).await?;
    let subject = Subject::connect(kind, url).await?;
    let held = holder.acquire(&key).await?;
    let entered = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..waiters)
        .map(|_| {
            let (subject, key, entered) = (subject.clone(), key.clone(), Arc::clone(&entered));
            tokio::spawn(async move {
                entered.fetch_add(1, Ordering::Relaxed);
                let held = subject.acquire(&key).await?;
                tokio::task::yield_now().await;
                held.release().await?;
                anyhow::Ok(Instant::now())
            })
        })
        .collect();
    while entered.load(Ordering::Relaxed) < waiters {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(settle).await;
    let released = Instant::now();
    held.release().await?;
    let served = join_tasks(handles, WAIT).await?;
    let last = served.into_iter().max().context("no waiter was served")?;
    Ok(last.saturating_duration_since(released))
}
