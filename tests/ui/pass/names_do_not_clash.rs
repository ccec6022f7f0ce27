// The user's names never clash with the generated ones (hygiene).
#![deny(unused_variables)]

use distlock::{LockError, Locker, distributed_lock, install};

#[distributed_lock(key = "k:{guard}:{key}")]
async fn shadowing(guard: u8, key: u8, out: u8, error: u8) -> Result<u8, LockError> {
    let __distributed_lock_guard = 1u8;
    let __distributed_lock_key = 2u8;
    Ok(out + error + __distributed_lock_guard + __distributed_lock_key)
}

#[tokio::main]
async fn main() {
    install(Locker::in_memory());
    assert_eq!(shadowing(0, 0, 3, 4).await.unwrap(), 10);
}
