// Error types reached through `From`: boxed errors, aliases named `Result`, a user enum.
use std::error::Error;

use distlock::{LockError, distributed_lock};

type BoxError = Box<dyn Error + Send + Sync>;

mod app {
    pub type Result<T> = std::result::Result<T, super::BoxError>;
}

#[distributed_lock(key = "boxed")]
async fn boxed() -> Result<(), BoxError> {
    Ok(())
}

#[distributed_lock(key = "alias")]
async fn alias() -> app::Result<u8> {
    let n: u8 = "7".parse()?;
    Ok(n)
}

#[tokio::main]
async fn main() {
    // No default locker: the macro's error path converts NoDefaultLocker through `From`.
    let error = boxed().await.unwrap_err();
    assert!(error.downcast_ref::<LockError>().is_some());
    assert!(alias().await.is_err());
}
