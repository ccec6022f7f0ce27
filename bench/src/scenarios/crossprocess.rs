//! Scenario 8: handoff across processes. K worker processes (this program, with
//! `--handoff-worker`), one task each, one client each, all on one key: replicas of a service,
//! where a hand-over inside one process does not apply. The same protocol as scenario 3, driven
//! by this process over the workers' stdin and stdout: a worker that released contends again only
//! after another one took the lock, and a holder is told to release once every other worker is
//! inside `acquire()`; it then keeps the lock `hold` more, so each release hands the lock to a
//! waiter in another process. Handoff latency: from the holder's `release()` returning to the next
//! holder's `acquire()` returning, both read from `CLOCK_MONOTONIC`, which all processes of the
//! machine share.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::subject::{Kind, Subject, WAIT};

/// The flag that makes this program a worker.
pub const WORKER_FLAG: &str = "--handoff-worker";
/// How long the workers may take to start, connect and warm up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Sections each worker runs on a key of its own before it reports ready: lazily opened
/// connections and script loads are start-up, not handoff.
pub const WORKER_WARMUP: usize = 5;
/// In the warm-up's one contended section, how long the worker holds its own key while a second
/// task of it waits: long enough for that task to be waiting (a single-threaded runtime runs it
/// as soon as the holder sleeps). Were it not waiting yet, its section would merely be
/// uncontended: the warm-up would miss what is opened lazily, nothing else.
const WARMUP_HOLD: Duration = Duration::from_millis(20);

/// What a worker prints, one per line.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// Connected and warmed up.
    Ready,
    /// About to call `acquire()`.
    Entering,
    /// `acquire()` returned at this `CLOCK_MONOTONIC` time, in nanoseconds.
    Acquired(u64),
    /// `release()` returned at this time.
    Released(u64),
}

impl Event {
    fn parse(line: &str) -> Result<Event> {
        let (word, time) = line.split_once(' ').unwrap_or((line, ""));
        let time = || {
            time.parse::<u64>()
                .with_context(|| format!("worker said {line:?}"))
        };
        Ok(match word {
            "ready" => Event::Ready,
            "entering" => Event::Entering,
            "acquired" => Event::Acquired(time()?),
            "released" => Event::Released(time()?),
            _ => bail!("a worker said {line:?}"),
        })
    }
}

/// What the parent tells a worker, one per line.
const CONTEND: &str = "contend";
const RELEASE: &str = "release";

/// What the workers said, each line with the worker's number.
type Inbox = mpsc::UnboundedReceiver<(usize, Result<Event>)>;

struct Worker {
    child: Child,
    stdin: ChildStdin,
}

impl Worker {
    async fn tell(&mut self, what: &str) -> Result<()> {
        self.stdin
            .write_all(format!("{what}\n").as_bytes())
            .await
            .context("writing to a handoff worker")
    }
}

/// One acquisition: which worker, when `acquire()` returned, when its `release()` returned.
struct Section {
    worker: usize,
    acquired: u64,
    released: Option<u64>,
}

/// The handoff latencies seen during `duration` among `k` worker processes of `kind`.
pub async fn latencies(
    url: &str,
    kind: Kind,
    tag: &str,
    k: usize,
    duration: Duration,
    hold: Duration,
) -> Result<Vec<Duration>> {
    let key = format!("s8:{tag}");
    let exe = std::env::current_exe().context("finding this program to run the workers")?;
    let (events, mut inbox) = mpsc::unbounded_channel::<(usize, Result<Event>)>();
    let mut workers = Vec::with_capacity(k);
    let mut readers = Vec::with_capacity(k);
    for me in 0..k {
        let mut child = tokio::process::Command::new(&exe)
            .arg(WORKER_FLAG)
            .args([kind.slug(), url, &key, &hold.as_micros().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a handoff worker")?;
        let stdin = child.stdin.take().context("a handoff worker's stdin")?;
        let stdout = child.stdout.take().context("a handoff worker's stdout")?;
        let events = events.clone();
        readers.push(tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            loop {
                let event = match lines.next_line().await {
                    Ok(Some(line)) => Event::parse(&line),
                    Ok(None) => Err(anyhow!("a handoff worker exited")),
                    Err(e) => Err(anyhow!(e).context("reading a handoff worker's output")),
                };
                let failed = event.is_err();
                if events.send((me, event)).is_err() || failed {
                    return;
                }
            }
        }));
        workers.push(Worker { child, stdin });
    }
    drop(events);

    let outcome = drive(&mut workers, &mut inbox, kind, duration).await;
    // Workers may be inside `acquire()` and would wait out their whole wait: stop them, before
    // their output is closed (a worker printing into a closed pipe fails loudly).
    for worker in &mut workers {
        let _ = worker.child.start_kill();
    }
    for worker in &mut workers {
        let _ = worker.child.wait().await;
    }
    for reader in &readers {
        reader.abort();
    }
    Ok(handoffs(outcome?))
}

/// Runs the protocol until `duration` has passed; the sections in the order they were held.
async fn drive(
    workers: &mut [Worker],
    inbox: &mut Inbox,
    kind: Kind,
    duration: Duration,
) -> Result<Vec<Section>> {
    let k = workers.len();
    let ready_by = Instant::now() + READY_TIMEOUT;
    let mut ready = 0;
    while ready < k {
        let (worker, event) = tokio::time::timeout_at(ready_by, next(inbox, kind))
            .await
            .map_err(|_| anyhow!("{}: handoff workers not ready in time", kind.name()))??;
        if event != Event::Ready {
            bail!("handoff worker {worker} said {event:?} before it was ready");
        }
        ready += 1;
    }

    let mut sections: Vec<Section> = Vec::new();
    let mut contending: HashSet<usize> = HashSet::new();
    // The worker holding the lock now, and whether it was told to release.
    let mut holder: Option<(usize, bool)> = None;
    let mut last_holder: Option<usize> = None;
    for worker in workers.iter_mut() {
        worker.tell(CONTEND).await?;
    }
    let deadline = Instant::now() + duration;
    loop {
        let (worker, event) = match tokio::time::timeout_at(deadline, next(inbox, kind)).await {
            Ok(received) => received?,
            Err(_) => return Ok(sections),
        };
        match event {
            Event::Entering => {
                contending.insert(worker);
            }
            Event::Acquired(at) => {
                contending.remove(&worker);
                // The last holder's `released` may still be on its way through another pipe.
                holder = Some((worker, false));
                sections.push(Section {
                    worker,
                    acquired: at,
                    released: None,
                });
                // The one before may contend again now that someone else took the lock.
                if let Some(previous) = last_holder.replace(worker)
                    && previous != worker
                {
                    workers[previous].tell(CONTEND).await?;
                }
            }
            Event::Released(at) => {
                let section = sections
                    .iter_mut()
                    .rev()
                    .find(|s| s.worker == worker)
                    .context("a release without an acquisition")?;
                section.released = Some(at);
                if holder.is_some_and(|(held_by, _)| held_by == worker) {
                    holder = None;
                }
            }
            Event::Ready => bail!("handoff worker {worker} said it was ready twice"),
        }
        if let Some((held_by, false)) = holder
            && contending.len() == k - 1
        {
            workers[held_by].tell(RELEASE).await?;
            holder = Some((held_by, true));
        }
    }
}

/// The next worker's event; an error if a worker failed or all are gone.
async fn next(inbox: &mut Inbox, kind: Kind) -> Result<(usize, Event)> {
    let (worker, event) = inbox
        .recv()
        .await
        .ok_or_else(|| anyhow!("every handoff worker is gone"))?;
    let event = event.with_context(|| format!("{}: handoff worker {worker}", kind.name()))?;
    Ok((worker, event))
}

/// From each section's release to the next one's acquisition.
fn handoffs(mut sections: Vec<Section>) -> Vec<Duration> {
    // Lines of different workers reach this process in any order; the clock orders them.
    sections.sort_by_key(|s| s.acquired);
    sections
        .windows(2)
        .filter_map(|pair| {
            let released = pair[0].released?;
            // The next holder can see its acquire return a hair before the releaser sees its
            // release return: that handoff took no time from the releaser's point of view.
            Some(Duration::from_nanos(
                pair[1].acquired.saturating_sub(released),
            ))
        })
        .collect()
}

/// Worker side, `--handoff-worker KIND URL KEY HOLD_US`: warm up, say `ready`, then follow the
/// parent's `contend` and `release` until stdin closes or the parent kills it.
pub async fn worker(args: &[String]) -> Result<()> {
    let [kind, url, key, hold_us] = args else {
        bail!("{WORKER_FLAG} takes KIND URL KEY HOLD_US");
    };
    let kind = Kind::parse(kind)?;
    let hold = Duration::from_micros(hold_us.parse().context("HOLD_US")?);
    let subject = Subject::connect(kind, url).await?;
    let own = format!("{key}:warm:{}", std::process::id());
    for _ in 0..WORKER_WARMUP {
        subject.acquire(&own).await?.release().await?;
    }
    // One wait too: some implementations open a connection only when they first wait (ours: the
    // subscriber).
    let held = subject.acquire(&own).await?;
    let waiter = {
        let (subject, own) = (subject.clone(), own.clone());
        tokio::spawn(async move { subject.acquire(&own).await?.release().await })
    };
    tokio::time::sleep(WARMUP_HOLD).await;
    held.release().await?;
    waiter.await.context("the warm-up waiter panicked")??;
    say("ready");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line != CONTEND {
            bail!("a handoff worker was told {line:?} while not holding the lock");
        }
        say("entering");
        let held = subject.acquire(key).await?;
        say(&format!("acquired {}", monotonic_ns()));
        let told = tokio::time::timeout(WAIT, lines.next_line()).await;
        match told {
            Ok(Ok(Some(line))) if line == RELEASE => {}
            Ok(Ok(None)) => return Ok(()),
            other => bail!("a handoff worker holding the lock was told {other:?}"),
        }
        tokio::time::sleep(hold).await;
        held.release().await?;
        say(&format!("released {}", monotonic_ns()));
    }
    Ok(())
}

/// One line to the parent; stdout is line-buffered, so it leaves at once.
fn say(line: &str) {
    println!("{line}");
}

/// `CLOCK_MONOTONIC`, the same for every process of the machine (unlike `Instant`, whose origin
/// a process cannot share).
fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_and_junk_does_not() {
        assert_eq!(Event::parse("ready").unwrap(), Event::Ready);
        assert_eq!(Event::parse("acquired 42").unwrap(), Event::Acquired(42));
        assert_eq!(Event::parse("released 7").unwrap(), Event::Released(7));
        assert!(Event::parse("acquired").is_err());
        assert!(Event::parse("hello").is_err());
    }

    #[test]
    fn handoffs_pair_each_release_with_the_next_acquisition_in_clock_order() {
        let section = |worker, acquired, released| Section {
            worker,
            acquired,
            released,
        };
        // Reported out of order, the last one still held.
        let sections = vec![
            section(1, 300, Some(350)),
            section(0, 100, Some(200)),
            section(0, 400, None),
        ];
        assert_eq!(
            handoffs(sections),
            [Duration::from_nanos(100), Duration::from_nanos(50)]
        );
        // An acquisition seen just before the release it follows counts as no time.
        assert_eq!(
            handoffs(vec![section(0, 100, Some(205)), section(1, 200, None)]),
            [Duration::ZERO]
        );
    }
}
