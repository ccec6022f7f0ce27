use distlock::{LockError, distributed_lock};

// "400d" where "400s" was meant: the runtime would refuse it on every call.
#[distributed_lock(key = "ranking", lease = "400d")]
async fn rebuild_ranking() -> Result<(), LockError> {
    Ok(())
}

fn main() {
    let _ = rebuild_ranking();
}
