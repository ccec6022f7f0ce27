use distlock::{LockError, distributed_lock};

const WAIT_SECONDS: u64 = 10;

#[distributed_lock(key = "ranking", wait = WAIT_SECONDS)]
async fn rebuild_ranking() -> Result<(), LockError> {
    Ok(())
}

fn main() {
    let _ = rebuild_ranking();
}
