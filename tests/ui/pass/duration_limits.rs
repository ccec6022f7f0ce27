// The longest lease and wait the runtime accepts (a year) and the shortest `hold_at_least`
// compile and run: the compile-time limits are the runtime's, not stricter.
use distlock::{LockError, Locker, distributed_lock, install};

#[distributed_lock(key = "yearly", wait = "365d", lease = "365d", hold_at_least = "1ms")]
async fn yearly() -> Result<(), LockError> {
    Ok(())
}

#[distributed_lock(key = "hourly", wait = "8760h", hold_at_least = "365d")]
async fn hourly() -> Result<(), LockError> {
    Ok(())
}

#[tokio::main]
async fn main() {
    install(Locker::in_memory());
    yearly().await.unwrap();
    hourly().await.unwrap();
}
