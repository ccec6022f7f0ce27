use distlock::{LockError, distributed_lock};

#[distributed_lock(key = "ranking", lease = "0s")]
async fn rebuild_ranking() -> Result<(), LockError> {
    Ok(())
}

fn main() {
    let _ = rebuild_ranking();
}
