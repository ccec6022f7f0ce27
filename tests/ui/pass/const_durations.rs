// Durations given as `Duration` expressions: consts, calls, and a mix with literals.
use std::time::Duration;

use distlock::{LockError, Locker, distributed_lock, install};

const WAIT: Duration = Duration::from_secs(2);
const LEASE: Duration = Duration::from_secs(30);

#[distributed_lock(key = "a", wait = WAIT, lease = LEASE, hold_at_least = Duration::from_millis(1))]
async fn consts() -> Result<(), LockError> {
    Ok(())
}

#[distributed_lock(key = "b", wait = "250ms", lease = "1m30s", hold_at_least = "1ms")]
async fn literals() -> Result<(), LockError> {
    Ok(())
}

struct Job {
    wait: Duration,
}

impl Job {
    #[distributed_lock(key = "c", wait = self.wait, lease = "1h")]
    async fn run(&self) -> Result<(), LockError> {
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    install(Locker::in_memory());
    consts().await.unwrap();
    literals().await.unwrap();
    Job {
        wait: Duration::ZERO,
    }
    .run()
    .await
    .unwrap();
}
