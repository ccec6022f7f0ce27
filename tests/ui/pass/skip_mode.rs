// `on_busy = "skip"`: `()`, `-> ()` and `Option<T>` fns; `return` inside the body.
use std::sync::atomic::{AtomicU32, Ordering};

use distlock::{Locker, distributed_lock, install};

static RUNS: AtomicU32 = AtomicU32::new(0);

#[distributed_lock(
    key = "nightly",
    on_busy = "skip",
    lease = "10m",
    hold_at_least = "1ms"
)]
async fn nightly() {
    RUNS.fetch_add(1, Ordering::SeqCst);
}

#[distributed_lock(key = "hourly", on_busy = "skip")]
async fn hourly(early: bool) -> () {
    if early {
        return;
    }
    RUNS.fetch_add(1, Ordering::SeqCst);
}

#[distributed_lock(key = "count:{name}", on_busy = "skip", wait = "0s")]
async fn count(name: &str) -> Option<usize> {
    if name.is_empty() {
        return None;
    }
    Some(name.len())
}

#[tokio::main]
async fn main() {
    install(Locker::in_memory());
    nightly().await;
    hourly(true).await;
    hourly(false).await;
    assert_eq!(RUNS.load(Ordering::SeqCst), 2);
    assert_eq!(count("four").await, Some(4));
    assert_eq!(count("").await, None);
}
