// `locker = <expr>`: a field, an `Arc<Locker>`, a `&Locker` parameter, a function call.
use std::sync::{Arc, OnceLock};

use distlock::{LockError, Locker, distributed_lock};

struct Service {
    locks: Locker,
    shared: Arc<Locker>,
}

impl Service {
    #[distributed_lock(key = "a", locker = self.locks)]
    async fn by_field(&self) -> Result<u8, LockError> {
        Ok(1)
    }

    #[distributed_lock(key = "b", locker = self.shared)]
    async fn by_arc(&mut self) -> Result<u8, LockError> {
        Ok(2)
    }

    #[distributed_lock(key = "c", locker = self.locks.clone())]
    async fn by_value(self) -> Result<u8, LockError> {
        Ok(3)
    }
}

#[distributed_lock(key = "d", locker = locker)]
async fn by_param(locker: &Locker) -> Result<u8, LockError> {
    let _ = locker;
    Ok(4)
}

fn global() -> &'static Locker {
    static LOCKER: OnceLock<Locker> = OnceLock::new();
    LOCKER.get_or_init(Locker::in_memory)
}

#[distributed_lock(key = "e", locker = global())]
async fn by_call() -> Result<u8, LockError> {
    Ok(5)
}

#[tokio::main]
async fn main() {
    // No default locker is installed: every call uses the one it names.
    let mut service = Service {
        locks: Locker::in_memory(),
        shared: Arc::new(Locker::in_memory()),
    };
    assert_eq!(service.by_field().await.unwrap(), 1);
    assert_eq!(service.by_arc().await.unwrap(), 2);
    assert_eq!(service.by_value().await.unwrap(), 3);
    assert_eq!(by_param(&Locker::in_memory()).await.unwrap(), 4);
    assert_eq!(by_call().await.unwrap(), 5);
}
