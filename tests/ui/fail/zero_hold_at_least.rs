use distlock::{LockError, distributed_lock};

#[distributed_lock(key = "nightly", lease = "10m", hold_at_least = "0s")]
async fn nightly() -> Result<(), LockError> {
    Ok(())
}

fn main() {
    let _ = nightly();
}
