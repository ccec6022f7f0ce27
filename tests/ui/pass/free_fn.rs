// A free fn: the key is built from a parameter, the body sees the lock through `current()`.
use distlock::{LockError, Locker, current, distributed_lock, install};

#[distributed_lock(key = "book:{isbn}", wait = "10s", lease = "5s")]
async fn register(isbn: &str) -> Result<String, LockError> {
    let lock = current().map(|lock| lock.key().to_owned());
    Ok(lock.unwrap_or_default())
}

/// Docs, visibility and other attributes stay as written.
#[must_use = "the lock's result says whether the report ran"]
#[distributed_lock(key = "report", wait = "0s")]
pub(crate) async fn nightly_report() -> Result<u32, LockError> {
    #![allow(clippy::needless_return)]
    return Ok(7);
}

#[tokio::main]
async fn main() {
    install(Locker::in_memory());
    assert_eq!(register("978-0").await.unwrap(), "book:978-0");
    assert_eq!(nightly_report().await.unwrap(), 7);
    assert!(
        current().is_none(),
        "the lock is not visible after the body"
    );
}
