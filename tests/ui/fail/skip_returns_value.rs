use distlock::distributed_lock;

#[distributed_lock(key = "nightly", on_busy = "skip")]
async fn nightly_cleanup() -> u32 {
    0
}

fn main() {
    let _ = nightly_cleanup();
}
