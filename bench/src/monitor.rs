//! Counting what clients send, with a `MONITOR` connection. `INFO commandstats` would also count
//! the commands a Lua script runs; MONITOR shows those as coming from `lua`, so they are left out.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use crate::probe::Probe;

/// How long the end marker may take to come through the MONITOR stream.
const MARKER_TIMEOUT: Duration = Duration::from_secs(30);

static NEXT_MARKER: AtomicU64 = AtomicU64::new(0);

/// A running MONITOR capture; dropping it closes the connection (and so the MONITOR).
pub struct Monitor {
    lines: Arc<Mutex<Vec<String>>>,
    reader: JoinHandle<()>,
}

/// A window of the stream between two markers the probe sent.
pub struct Window {
    start: String,
    end: String,
}

impl Monitor {
    pub async fn start(client: &redis::Client) -> Result<Monitor> {
        let monitor = client
            .get_async_monitor()
            .await
            .context("starting MONITOR")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let reader = tokio::spawn(async move {
            let mut stream = monitor.into_on_message::<String>();
            while let Some(line) = stream.next().await {
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
        });
        Ok(Monitor { lines, reader })
    }

    /// Marks the start of a counted window.
    pub async fn open_window(&self, probe: &Probe) -> Result<Window> {
        let n = NEXT_MARKER.fetch_add(1, Ordering::Relaxed);
        let window = Window {
            start: format!("bench-window-start-{n}"),
            end: format!("bench-window-end-{n}"),
        };
        probe.mark(&window.start).await?;
        Ok(window)
    }

    /// Closes `window` and counts the commands in it sent by clients whose address is not in
    /// `exclude` (the probe, holders), leaving out the commands scripts ran.
    pub async fn close_window(
        &self,
        probe: &Probe,
        window: Window,
        exclude: &HashSet<String>,
    ) -> Result<u64> {
        probe.mark(&window.end).await?;
        let quoted_start = format!("\"{}\"", window.start);
        let quoted_end = format!("\"{}\"", window.end);
        let waited = Instant::now();
        loop {
            {
                let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
                let start = lines.iter().position(|l| l.ends_with(&quoted_start));
                let end = lines.iter().position(|l| l.ends_with(&quoted_end));
                if let (Some(start), Some(end)) = (start, end) {
                    let counted = lines[start + 1..end]
                        .iter()
                        .filter_map(|line| source(line))
                        .filter(|addr| *addr != "lua" && !exclude.contains(*addr))
                        .count();
                    return Ok(counted as u64);
                }
            }
            if waited.elapsed() > MARKER_TIMEOUT || self.reader.is_finished() {
                bail!("the MONITOR stream did not show the window's end marker");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The client address of a MONITOR line: `1700000000.123456 [0 127.0.0.1:5555] "GET" "k"`.
fn source(line: &str) -> Option<&str> {
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    line[open + 1..close].split(' ').nth(1)
}

#[cfg(test)]
mod tests {
    use super::source;

    #[test]
    fn source_is_the_address_or_lua() {
        assert_eq!(
            source(r#"1700000000.123456 [0 127.0.0.1:5555] "GET" "k""#),
            Some("127.0.0.1:5555")
        );
        assert_eq!(source(r#"1700000000.1 [0 lua] "SET" "k" "v""#), Some("lua"));
    }
}
