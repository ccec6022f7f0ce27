use distlock::{LockError, distributed_lock};

#[distributed_lock(key = "report")]
fn nightly_report() -> Result<(), LockError> {
    Ok(())
}

fn main() {
    let _ = nightly_report();
}
