use distlock::{LockError, distributed_lock};

#[distributed_lock(key = "ranking", wait = "5min")]
async fn rebuild_ranking() -> Result<(), LockError> {
    Ok(())
}

fn main() {
    let _ = rebuild_ranking();
}
