// The return type is checked by the type system, not by its name: aliases of `Result`
// (`anyhow::Result`, `io::Result`, an application's own) work in both modes, and skip mode takes
// `Result<(), E>` and `Result<Option<T>, E>` (busy is `Ok(())` / `Ok(None)`).
use std::io;

use distlock::{LockError, Locker, distributed_lock, install};

#[derive(Debug)]
struct AppError;

impl From<LockError> for AppError {
    fn from(_: LockError) -> Self {
        AppError
    }
}

type AppResult<T> = Result<T, AppError>;

#[distributed_lock(key = "book:{id}")]
async fn find_book(id: u32) -> AppResult<u32> {
    Ok(id)
}

#[distributed_lock(key = "config")]
async fn read_config() -> io::Result<String> {
    Ok("config".to_owned())
}

#[distributed_lock(key = "total")]
async fn total() -> anyhow::Result<u8> {
    Ok(1)
}

#[distributed_lock(key = "nightly", on_busy = "skip")]
async fn nightly() -> anyhow::Result<()> {
    Ok(())
}

#[distributed_lock(key = "rows", on_busy = "skip")]
async fn rows() -> AppResult<Option<usize>> {
    Ok(Some(3))
}

#[distributed_lock(key = "sync", on_busy = "skip", on_lost = "cancel")]
async fn sync() -> Result<(), io::Error> {
    Ok(())
}

#[tokio::main]
async fn main() {
    install(Locker::in_memory());
    assert_eq!(find_book(4).await.unwrap(), 4);
    assert_eq!(read_config().await.unwrap(), "config");
    assert_eq!(total().await.unwrap(), 1);
    nightly().await.unwrap();
    assert_eq!(rows().await.unwrap(), Some(3));
    sync().await.unwrap();
}
