use distlock::{LockError, distributed_lock};

// The Spring/Redisson spelling gets a pointer to ours.
#[distributed_lock(key = "ranking", waitTime = "10s")]
async fn rebuild_ranking() -> Result<(), LockError> {
    Ok(())
}

fn main() {
    let _ = rebuild_ranking();
}
