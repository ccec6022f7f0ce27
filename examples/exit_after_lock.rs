//! A process that takes a lock and exits right after: what a cron job does. `tests/shutdown.rs`
//! runs it to check that [`Locker::close`] leaves the lock free once the process has gone.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 exit_after_lock KEY (watchdog | lease) (drop | keep) [--no-close]
//! ```
//!
//! Takes `KEY` with the watchdog or a fixed lease of 30 s, prints `acquired <fencing number>`,
//! then either drops the guard (its release starts in the background) or keeps it to the end of
//! `main`, calls `locker.close().await` (not with `--no-close`: the control, which shows what
//! happens without it) and returns from `main`.

use std::process::ExitCode;
use std::time::Duration;

use distlock::{LockOptions, Locker};

/// Long enough that the lease never runs out while the test looks: a lock still there after the
/// process exited is one that was not released.
const LEASE: Duration = Duration::from_secs(30);

const USAGE: &str = "usage: exit_after_lock KEY (watchdog | lease) (drop | keep) [--no-close]";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (key, options, keep, close) = match args.as_slice() {
        [key, mode, guard, rest @ ..] => {
            let options = match mode.as_str() {
                "watchdog" => LockOptions::new(),
                "lease" => LockOptions::new().lease(LEASE),
                _ => return usage(),
            };
            let keep = match guard.as_str() {
                "drop" => false,
                "keep" => true,
                _ => return usage(),
            };
            let close = match rest {
                [] => true,
                [flag] if flag == "--no-close" => false,
                _ => return usage(),
            };
            (key, options, keep, close)
        }
        _ => return usage(),
    };
    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!("set REDIS_URL, e.g. redis://127.0.0.1:6379");
        return ExitCode::FAILURE;
    };
    let locker = match Locker::connect(&url).await {
        Ok(locker) => locker,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let guard = match locker.acquire(key, options).await {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    println!("acquired {}", guard.fencing_token());
    // Dropped now, its release starts in the background; kept, it is dropped at the end of
    // `main`, after `close` (which released it).
    let _kept = if keep {
        Some(guard)
    } else {
        drop(guard);
        None
    };
    if close {
        locker.close().await;
    }
    ExitCode::SUCCESS
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}
