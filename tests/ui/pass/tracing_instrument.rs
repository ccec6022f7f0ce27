// Stacked with `#[tracing::instrument]`, in both orders.
use distlock::{LockError, Locker, current, distributed_lock, install};

#[tracing::instrument]
#[distributed_lock(key = "outer:{id}")]
async fn instrument_outside(id: u32) -> Result<String, LockError> {
    tracing::info!("locked");
    Ok(current().unwrap().key().to_owned())
}

#[distributed_lock(key = "inner:{id}")]
#[tracing::instrument(err)]
async fn instrument_inside(id: u32) -> Result<String, LockError> {
    Ok(current().unwrap().key().to_owned())
}

#[tokio::main]
async fn main() {
    install(Locker::in_memory());
    assert_eq!(instrument_outside(1).await.unwrap(), "outer:1");
    assert_eq!(instrument_inside(2).await.unwrap(), "inner:2");
}
