use distlock::distributed_lock;

#[distributed_lock(key = "nightly", lease = "5m", hold_at_least = "10m", on_busy = "skip")]
async fn nightly_cleanup() {}

fn main() {
    let _ = nightly_cleanup();
}
