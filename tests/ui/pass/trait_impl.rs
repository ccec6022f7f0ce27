// `async fn` in a trait impl (native async fn in traits).
use distlock::{LockError, Locker, current, distributed_lock, install};

trait Job {
    async fn run(&self, day: u32) -> Result<String, LockError>;
    async fn run_quietly(&self);

    /// A provided method carries the attribute too.
    #[distributed_lock(key = "job:{name}")]
    async fn describe(&self, name: &str) -> Result<String, LockError> {
        Ok(current().unwrap().key().to_owned())
    }
}

struct Cleanup;

impl Job for Cleanup {
    #[distributed_lock(key = "cleanup:{day}")]
    async fn run(&self, day: u32) -> Result<String, LockError> {
        Ok(current().unwrap().key().to_owned())
    }

    #[distributed_lock(key = "cleanup:quiet", on_busy = "skip")]
    async fn run_quietly(&self) {}
}

#[tokio::main]
async fn main() {
    install(Locker::in_memory());
    assert_eq!(Cleanup.run(3).await.unwrap(), "cleanup:3");
    Cleanup.run_quietly().await;
    assert_eq!(Cleanup.describe("x").await.unwrap(), "job:x");
}
