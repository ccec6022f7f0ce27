// `crate = "path"`: a crate (here a module) that re-exports distlock.
mod my_reexport {
    pub use distlock::*;
}

mod jobs {
    use crate::my_reexport::{LockError, distributed_lock};

    #[distributed_lock(key = "nested", crate = "crate::my_reexport")]
    pub async fn nested() -> Result<u8, LockError> {
        Ok(2)
    }
}

use my_reexport::{LockError, Locker, distributed_lock, install};

#[distributed_lock(key = "reexported", crate = "my_reexport")]
async fn reexported() -> Result<u8, LockError> {
    Ok(1)
}

#[distributed_lock(key = "absolute", crate = "::distlock", on_busy = "skip")]
async fn absolute() -> Option<u8> {
    Some(3)
}

#[tokio::main]
async fn main() {
    install(Locker::in_memory());
    assert_eq!(reexported().await.unwrap(), 1);
    assert_eq!(jobs::nested().await.unwrap(), 2);
    assert_eq!(absolute().await, Some(3));
}
