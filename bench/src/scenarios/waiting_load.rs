//! Scenario 4: waiters blocked on a held lock; the commands they send per second each, counted
//! with MONITOR over a window that starts once their first attempts are behind them.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::join_tasks;
use crate::monitor::Monitor;
use crate::probe::Probe;
use crate::subject::{Kind, Subject, WAIT};

#[derive(Debug, Clone, Serialize)]
pub struct WaitingLoad {
    pub waiters: usize,
    pub window_s: f64,
    pub commands: u64,
    pub per_waiter_per_s: f64,
}

pub async fn measure(
    probe: &Probe,
    url: &str,
    kind: Kind,
    tag: &str,
    waiters: usize,
    settle: Duration,
    window: Duration,
) -> Result<WaitingLoad> {
    let key = format!("s4:{tag}");
    // The holder is another client (another replica): its own commands are not the waiters'.
    let holder = Subject::connect(kind, url).await?;
    let held = holder.acquire(&key).await?;
    let not_waiters = probe.client_addrs().await?;
    let subject = Subject::connect(kind, url).await?;
    let monitor = Monitor::start(&probe.client).await?;
    let handles: Vec<_> = (0..waiters)
        .map(|_| {
            let (subject, key) = (subject.clone(), key.clone());
            tokio::spawn(async move { subject.acquire(&key).await?.release().await })
        })
        .collect();
    tokio::time::sleep(settle).await;
    let counted = monitor.open_window(probe).await?;
    tokio::time::sleep(window).await;
    let commands = monitor.close_window(probe, counted, &not_waiters).await?;
    held.release().await?;
    join_tasks(handles, WAIT).await?;
    Ok(WaitingLoad {
        waiters,
        window_s: window.as_secs_f64(),
        commands,
        per_waiter_per_s: commands as f64 / window.as_secs_f64() / waiters as f64,
    })
}
