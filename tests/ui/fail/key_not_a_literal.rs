use distlock::{LockError, distributed_lock};

const RANKING_KEY: &str = "ranking";

#[distributed_lock(key = RANKING_KEY)]
async fn rebuild_ranking() -> Result<(), LockError> {
    Ok(())
}

fn main() {
    let _ = rebuild_ranking();
}
