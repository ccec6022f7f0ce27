// One-line bodies raise no `unused_braces` (which `cargo fix` would "fix" by deleting the fn's
// own braces): the body's statements are moved into the generated block, not the block itself.
#![deny(unused_braces)]

use distlock::{LockError, Locker, distributed_lock, install};

#[distributed_lock(key = "ok")]
async fn ok() -> Result<(), LockError> { Ok(()) }

#[distributed_lock(key = "value", on_busy = "skip")]
async fn value() -> Option<u8> { Some(1) }

#[distributed_lock(key = "unit", on_busy = "skip")]
async fn unit() {}

#[tokio::main]
async fn main() {
    install(Locker::in_memory());
    ok().await.unwrap();
    assert_eq!(value().await, Some(1));
    unit().await;
}
