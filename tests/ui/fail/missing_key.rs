use distlock::{LockError, distributed_lock};

#[distributed_lock(wait = "5s", lease = "30s")]
async fn nightly_report() -> Result<(), LockError> {
    Ok(())
}

fn main() {
    let _ = nightly_report();
}
