use distlock::{LockError, distributed_lock};

#[distributed_lock(key = "report:{day}")]
async fn nightly_report() -> Result<(), LockError> {
    Ok(())
}

fn main() {
    let _ = nightly_report();
}
