// The rewritten fn's future is `Send` when the user's is, so it can be spawned (and used as an
// axum/tonic handler); the lock is held across `.await`s inside the body.
use std::sync::Arc;
use std::time::Duration;

use distlock::{LockError, Locker, distributed_lock, install};

struct Store {
    locks: Arc<Locker>,
}

impl Store {
    #[distributed_lock(key = "item:{id}", locker = self.locks, lease = "5s")]
    async fn update(self: Arc<Self>, id: u64) -> Result<u64, LockError> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(id)
    }
}

#[distributed_lock(key = "job:{name}", on_busy = "skip", on_lost = "cancel")]
async fn job(name: String) -> Option<usize> {
    tokio::task::yield_now().await;
    Some(name.len())
}

fn assert_send<T: Send + 'static>(value: T) -> T {
    value
}

#[tokio::main]
async fn main() {
    install(Locker::in_memory());
    let store = Arc::new(Store {
        locks: Arc::new(Locker::in_memory()),
    });
    let update = tokio::spawn(assert_send(Arc::clone(&store).update(9)));
    let job = tokio::spawn(assert_send(job("abc".to_owned())));
    assert_eq!(update.await.unwrap().unwrap(), 9);
    assert_eq!(job.await.unwrap(), Some(3));
}
