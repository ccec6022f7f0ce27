// `impl Trait` in argument position (keyed by Display) and in the return type.
use std::fmt::Display;

use distlock::{LockError, Locker, current, distributed_lock, install};

#[distributed_lock(key = "user:{user}")]
async fn greet(user: impl Display, greeting: impl AsRef<str>) -> Result<String, LockError> {
    Ok(format!("{} {user}", greeting.as_ref()))
}

#[distributed_lock(key = "counter")]
async fn counter() -> Result<impl Display, LockError> {
    Ok(current().unwrap().key().len())
}

#[tokio::main]
async fn main() {
    install(Locker::in_memory());
    assert_eq!(greet(7, "hi").await.unwrap(), "hi 7");
    assert_eq!(counter().await.unwrap().to_string(), "7");
}
