use distlock::{LockError, distributed_lock};

#[distributed_lock(key = "ranking", lease = "99999999999999999d")]
async fn rebuild_ranking() -> Result<(), LockError> {
    Ok(())
}

fn main() {
    let _ = rebuild_ranking();
}
