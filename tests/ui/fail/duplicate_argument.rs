use distlock::{LockError, distributed_lock};

#[distributed_lock(key = "ranking", wait = "5s", lease = "30s", wait = "10s")]
async fn rebuild_ranking() -> Result<(), LockError> {
    Ok(())
}

fn main() {
    let _ = rebuild_ranking();
}
