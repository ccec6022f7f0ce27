//! Proof under faults: the torture suite (issue #5).
//!
//! One trial per fault, run one at a time (they kill, pause and restart processes, and their
//! time bounds assume the machine is not running another fault meanwhile). Each trial asserts its
//! promises and returns one row of the report. With `FAULTS_REPORT=<path>` set and every trial
//! run, the rows are written there as the report (see `report.rs`):
//!
//! ```sh
//! FAULTS_REPORT=FAULTS.md cargo test --test faults
//! ```
//!
//! `TORTURE_SOAK_SECS` sets the soak's length (default 15 s, the CI setting).

#[path = "../support/mod.rs"]
mod support;

mod report;

mod bad_input;
mod baseline;
mod cancellation_at_every_poll;
mod cancellation_storm;
mod eviction;
mod flushall;
mod forgetting;
mod killed_holder;
mod network_cut;
mod paused_holder;
mod promotion;
mod redis_restart;
mod resharding;
mod shard_cut;
mod slow_server;
mod snapshot_restore;
mod soak;
mod subscriber_fault;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use libtest_mimic::{Arguments, Trial};
use report::FaultRow;

/// One fault: its test name, and its entry point.
type Fault = (&'static str, fn() -> FaultRow);

/// Every fault, in report order.
const FAULTS: &[Fault] = &[
    ("f1_baseline", baseline::run),
    ("f2_killed_holder", killed_holder::run),
    ("f3_paused_holder", paused_holder::run),
    ("f4_redis_restart", redis_restart::run),
    ("f5_network_cut", network_cut::run),
    ("f6_slow_server", slow_server::run),
    ("f7_cancellation_storm", cancellation_storm::run),
    ("f8_bad_input", bad_input::run),
    ("f9_soak", soak::run),
    ("f10_snapshot_restore", snapshot_restore::run),
    ("f11_flushall", flushall::run),
    ("f12_eviction", eviction::run),
    ("f13_promotion", promotion::run),
    (
        "f14_cancellation_at_every_poll",
        cancellation_at_every_poll::run,
    ),
    ("f15_subscriber", subscriber_fault::run),
    ("f16_cluster_resharding", resharding::run),
    ("f17_cluster_shard_cut", shard_cut::run),
];

/// Awaits `fut`, panicking with `what` if it takes longer than `bound`: "nothing hangs".
pub async fn within<F: std::future::Future>(bound: Duration, what: &str, fut: F) -> F::Output {
    tokio::time::timeout(bound, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} hung: nothing after {bound:?}"))
}

/// The runtime a fault runs on: several workers, so that a task blocked by the fault does not
/// hold up the ones measuring it.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn main() {
    let mut args = Arguments::from_args();
    // One fault at a time: see the module docs.
    args.test_threads = Some(1);
    let rows: Arc<Mutex<Vec<(usize, FaultRow)>>> = Arc::default();
    let trials = FAULTS
        .iter()
        .enumerate()
        .map(|(i, &(name, run))| {
            let rows = Arc::clone(&rows);
            Trial::test(name, move || {
                let row = run();
                println!("{}", row.summary());
                rows.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((i, row));
                Ok(())
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    let mut rows = std::mem::take(&mut *rows.lock().unwrap_or_else(|e| e.into_inner()));
    rows.sort_by_key(|(i, _)| *i);
    let rows: Vec<FaultRow> = rows.into_iter().map(|(_, row)| row).collect();
    if !rows.is_empty() {
        println!("\n{}", report::table(&rows));
    }
    if let Some(path) = std::env::var_os("FAULTS_REPORT") {
        if conclusion.has_failed() || rows.len() != FAULTS.len() {
            eprintln!(
                "FAULTS_REPORT not written: {} of {} faults ran and passed",
                rows.len(),
                FAULTS.len()
            );
            std::process::exit(1);
        }
        std::fs::write(&path, report::document(&rows)).expect("write the FAULTS_REPORT file");
        println!("report written to {}", path.to_string_lossy());
    }
    conclusion.exit();
}
