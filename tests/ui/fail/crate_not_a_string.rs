use distlock::{LockError, distributed_lock};

#[distributed_lock(key = "ranking", crate = distributed_lock)]
async fn rebuild_ranking() -> Result<(), LockError> {
    Ok(())
}

fn main() {
    let _ = rebuild_ranking();
}
