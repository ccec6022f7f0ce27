//! Spawning `torture_worker` processes (`examples/torture_worker.rs`) and talking to them: `run`
//! workers started together through their start gate, `hold` workers driven line by line, and
//! the signals the faults send them. Every read has a timeout, so a stuck worker fails the test
//! with a message instead of hanging it; a worker still alive when its handle is dropped is
//! killed.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;

/// How long a worker may take to start and connect: generous for a debug build on a loaded
/// 2-core machine.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// An example binary, which `cargo test` builds next to the test binaries.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let bin = dir.join("examples").join(name);
    assert!(
        bin.is_file(),
        "{bin:?} missing: build it with `cargo build --example {name}` (`cargo test` builds it too)"
    );
    bin
}

/// The torture worker binary.
pub fn binary() -> PathBuf {
    example("torture_worker")
}

/// How a worker holds its locks.
#[derive(Debug, Clone, Copy)]
pub enum Lease {
    /// A fixed lease: the lock expires this long after it was taken.
    Fixed(Duration),
    /// No lease option: the watchdog keeps renewing a lease of `lease` every `renewal`.
    Watchdog { lease: Duration, renewal: Duration },
}

impl Lease {
    /// "fixed lease" or "watchdog", for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Lease::Fixed(_) => "fixed lease",
            Lease::Watchdog { .. } => "watchdog",
        }
    }

    fn args(&self) -> Vec<String> {
        match *self {
            Lease::Fixed(lease) => vec!["--lease".into(), human(lease)],
            Lease::Watchdog { lease, renewal } => vec![
                "--watchdog-lease".into(),
                human(lease),
                "--renewal".into(),
                human(renewal),
            ],
        }
    }
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Sends `signal` to process `pid`.
pub fn signal(pid: u32, signal: Signal) {
    let target = Pid::from_raw(pid as i32).expect("a positive pid");
    kill_process(target, signal).unwrap_or_else(|e| panic!("signal {signal:?} to pid {pid}: {e}"));
}

/// `kill -9`.
pub fn kill9(pid: u32) {
    signal(pid, Signal::KILL);
}

/// `kill -STOP`: the process freezes, timers and all, until `cont`.
pub fn stop(pid: u32) {
    signal(pid, Signal::STOP);
}

/// `kill -CONT`.
pub fn cont(pid: u32) {
    signal(pid, Signal::CONT);
}

/// Waits until the kernel shows `pid` stopped (state `T` in /proc), so nothing it does after
/// this can race the test.
pub fn wait_until_stopped(pid: u32, timeout: Duration) {
    let started = Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // "pid (comm) S ...": the state follows the last ')'.
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next());
        if state == Some("T") {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "pid {pid} not stopped {timeout:?} after SIGSTOP (stat: {stat:?})"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A child process whose stdout lines (JSON) arrive on a channel, read by a thread of its own.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Proc {
    fn spawn(mut cmd: Command, name: String) -> Proc {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let name = format!("{name} (pid {})", child.id());
        Proc {
            name,
            child,
            stdin,
            lines,
        }
    }

    /// The next JSON line, or why there is none (timeout, or the process closed stdout).
    fn next(&mut self, timeout: Duration) -> Result<Value, String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => serde_json::from_str(&line).map_err(|e| {
                format!(
                    "{} printed a line that is not JSON ({e}): {line}",
                    self.name
                )
            }),
            Err(RecvTimeoutError::Timeout) => {
                Err(format!("{} printed nothing for {timeout:?}", self.name))
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = match self.child.try_wait() {
                    Ok(Some(status)) => status.to_string(),
                    _ => "still running".to_owned(),
                };
                Err(format!(
                    "{} closed its stdout ({status}) before printing",
                    self.name
                ))
            }
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self
            .stdin
            .as_mut()
            .unwrap_or_else(|| panic!("{}: stdin already closed", self.name));
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("writing {line:?} to {}: {e}", self.name));
    }

    /// Waits for the process to exit, polling, at most `timeout`.
    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if started.elapsed() < timeout => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(None) => panic!(
                    "{} still running {timeout:?} after it should end",
                    self.name
                ),
                Err(e) => panic!("waiting for {}: {e}", self.name),
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGKILL also ends a stopped process; never leave a worker (or a zombie) behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The settings of one `run` worker process.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub url: String,
    pub out: PathBuf,
    pub tasks: u32,
    pub keys: Vec<String>,
    pub duration: Duration,
    pub lease: Lease,
    pub wait: Option<Duration>,
    pub no_lock: bool,
    pub counter: bool,
    pub stats_every: Option<Duration>,
}

impl RunSpec {
    /// 16 tasks with a fixed 5 s lease on `keys` for `duration`, records into `out`.
    pub fn new(url: &str, out: &Path, keys: &[&str], duration: Duration) -> Self {
        RunSpec {
            url: url.to_owned(),
            out: out.to_owned(),
            tasks: 16,
            keys: keys.iter().map(|k| k.to_string()).collect(),
            duration,
            lease: Lease::Fixed(Duration::from_secs(5)),
            wait: None,
            no_lock: false,
            counter: false,
            stats_every: None,
        }
    }

    pub fn tasks(mut self, tasks: u32) -> Self {
        self.tasks = tasks;
        self
    }

    pub fn lease(mut self, lease: Lease) -> Self {
        self.lease = lease;
        self
    }

    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// The control: the same loop without the lock.
    pub fn no_lock(mut self) -> Self {
        self.no_lock = true;
        self
    }

    /// A non-atomic counter increment inside each section.
    pub fn counter(mut self) -> Self {
        self.counter = true;
        self
    }

    pub fn stats_every(mut self, every: Duration) -> Self {
        self.stats_every = Some(every);
        self
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(binary());
        cmd.arg("run")
            .args(["--url", &self.url])
            .arg("--out")
            .arg(&self.out)
            .args(["--tasks", &self.tasks.to_string()])
            .args(["--keys", &self.keys.join(",")])
            .args(["--duration", &human(self.duration)])
            .args(self.lease.args())
            .arg("--gate");
        if let Some(wait) = self.wait {
            cmd.args(["--wait", &human(wait)]);
        }
        if self.no_lock {
            cmd.arg("--no-lock");
        }
        if self.counter {
            cmd.arg("--counter");
        }
        if let Some(every) = self.stats_every {
            cmd.args(["--stats-every", &human(every)]);
        }
        cmd
    }
}

/// A running `run` worker.
pub struct RunWorker {
    proc: Proc,
    spec: RunSpec,
}

/// What a `run` worker printed: its stats lines, in order, and its summary.
#[derive(Debug)]
pub struct RunOutcome {
    pub pid: u32,
    pub stats: Vec<Value>,
    pub summary: Value,
}

impl RunOutcome {
    /// The summary's errors by kind (empty when there were none).
    pub fn errors(&self) -> serde_json::Map<String, Value> {
        self.summary["errors"]
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    pub fn sections(&self) -> u64 {
        self.summary["sections"].as_u64().unwrap_or(0)
    }
}

/// Starts one worker per spec, waits until every one has connected and spawned its tasks, then
/// opens all their gates at once: the processes start within a few writes of each other.
pub fn start_run_workers(specs: &[RunSpec]) -> Vec<RunWorker> {
    let mut workers: Vec<RunWorker> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| RunWorker {
            proc: Proc::spawn(spec.command(), format!("run worker {i}")),
            spec: spec.clone(),
        })
        .collect();
    for worker in &mut workers {
        let ready = worker
            .proc
            .next(SETUP_TIMEOUT)
            .unwrap_or_else(|e| panic!("waiting for a worker to be ready: {e}"));
        assert!(
            ready.get("ready").is_some(),
            "{}: expected a ready line, got {ready}",
            worker.proc.name
        );
    }
    for worker in &mut workers {
        worker.proc.send("go");
        worker.proc.stdin = None;
    }
    workers
}

impl RunWorker {
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Reads the worker's lines until it exits (at most its duration + `grace`), and checks it
    /// exited 0 with a summary.
    pub fn finish(mut self, grace: Duration) -> RunOutcome {
        let deadline = Instant::now() + self.spec.duration + grace;
        let mut stats = Vec::new();
        let mut summary = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.proc.lines.recv_timeout(left) {
                Ok(line) => {
                    let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                        panic!("{} printed a non-JSON line ({e}): {line}", self.proc.name)
                    });
                    if let Some(s) = value.get("stats") {
                        stats.push(s.clone());
                    } else if let Some(s) = value.get("summary") {
                        summary = Some(s.clone());
                    } else {
                        panic!("{} reported: {value}", self.proc.name);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{} did not finish within its duration {:?} + {grace:?}",
                    self.proc.name, self.spec.duration
                ),
            }
        }
        let status = self.proc.wait(grace);
        assert!(status.success(), "{} exited with {status}", self.proc.name);
        let summary =
            summary.unwrap_or_else(|| panic!("{} exited without a summary", self.proc.name));
        RunOutcome {
            pid: self.proc.pid(),
            stats,
            summary,
        }
    }
}

/// The settings of one `hold` worker process.
#[derive(Debug, Clone)]
pub struct HoldSpec {
    pub url: String,
    pub key: String,
    pub out: PathBuf,
    pub lease: Lease,
    pub wait: Option<Duration>,
}

impl HoldSpec {
    pub fn new(url: &str, key: &str, out: &Path, lease: Lease) -> Self {
        HoldSpec {
            url: url.to_owned(),
            key: key.to_owned(),
            out: out.to_owned(),
            lease,
            wait: None,
        }
    }
}

/// What a `hold` worker printed when it got its lock (instants on `CLOCK_MONOTONIC`).
#[derive(Debug, Clone, Copy)]
pub struct Acquired {
    pub fence: u64,
    /// Just before `acquire` was called.
    pub sent_ns: u64,
    /// Just after it returned.
    pub enter_ns: u64,
    pub pid: u32,
}

/// A running `hold` worker.
pub struct HoldWorker {
    proc: Proc,
}

impl HoldWorker {
    pub fn spawn(spec: &HoldSpec) -> HoldWorker {
        let mut cmd = Command::new(binary());
        cmd.arg("hold")
            .args(["--url", &spec.url, "--key", &spec.key])
            .arg("--out")
            .arg(&spec.out)
            .args(spec.lease.args());
        if let Some(wait) = spec.wait {
            cmd.args(["--wait", &human(wait)]);
        }
        HoldWorker {
            proc: Proc::spawn(cmd, format!("hold worker on {:?}", spec.key)),
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Waits for the `acquired` line (at most `timeout`).
    pub fn acquired(&mut self, timeout: Duration) -> Acquired {
        let line = self.read_line(timeout);
        let a = line
            .get("acquired")
            .unwrap_or_else(|| panic!("{}: expected `acquired`, got {line}", self.proc.name));
        let field = |name: &str| {
            a[name]
                .as_u64()
                .unwrap_or_else(|| panic!("{}: `acquired` without {name}: {line}", self.proc.name))
        };
        Acquired {
            fence: field("fence"),
            sent_ns: field("sent_ns"),
            enter_ns: field("enter_ns"),
            pid: field("pid") as u32,
        }
    }

    /// Sends one command line (`write <store>`, `status`, `release`).
    pub fn send(&mut self, command: &str) {
        self.proc.send(command);
    }

    /// The next line the worker prints; panics after `timeout` or when it exits.
    pub fn read_line(&mut self, timeout: Duration) -> Value {
        self.proc.next(timeout).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The next line, which must be `{what: {...}}`; returns the inner object.
    pub fn expect(&mut self, what: &str, timeout: Duration) -> Value {
        let line = self.read_line(timeout);
        line.get(what)
            .cloned()
            .unwrap_or_else(|| panic!("{}: expected `{what}`, got {line}", self.proc.name))
    }

    /// `kill -9`, then reaps it: when this returns the process is gone.
    pub fn kill(&mut self) {
        kill9(self.pid());
        let _ = self.proc.child.wait();
    }

    pub fn stop(&self) {
        stop(self.pid());
        wait_until_stopped(self.pid(), SETUP_TIMEOUT);
    }

    pub fn cont(&self) {
        cont(self.pid());
    }

    /// Waits for the worker to exit by itself (after `release`).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.proc.wait(timeout)
    }
}
