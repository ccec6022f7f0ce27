use distlock::{LockError, distributed_lock};

#[distributed_lock(key = "counter")]
async fn next_value() -> Result<u64, LockError> {
    Ok("one")
}

fn main() {
    let _ = next_value();
}
