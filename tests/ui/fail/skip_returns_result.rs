use distlock::{LockError, distributed_lock};

#[distributed_lock(key = "nightly", on_busy = "skip")]
async fn nightly_cleanup() -> Result<u32, LockError> {
    Ok(0)
}

fn main() {
    let _ = nightly_cleanup();
}
