use distlock::{LockError, distributed_lock};

#[distributed_lock(key = "ranking", locker = "redis://127.0.0.1/")]
async fn rebuild_ranking() -> Result<(), LockError> {
    Ok(())
}

fn main() {
    let _ = rebuild_ranking();
}
