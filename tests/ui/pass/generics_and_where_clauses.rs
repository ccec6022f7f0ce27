// Generic fns, where clauses, and `?` converting into a generic error type.
use std::fmt::Display;

use distlock::{LockError, Locker, current, distributed_lock, install};

#[distributed_lock(key = "item:{id}")]
async fn load<T, E>(id: T, fail: bool) -> Result<String, E>
where
    T: Display + Send,
    E: From<LockError> + From<std::fmt::Error>,
{
    if fail {
        Err(std::fmt::Error)?;
    }
    Ok(current().unwrap().key().to_owned())
}

#[derive(Debug)]
enum AppError {
    Lock(LockError),
    Format,
}

impl From<LockError> for AppError {
    fn from(error: LockError) -> Self {
        AppError::Lock(error)
    }
}

impl From<std::fmt::Error> for AppError {
    fn from(_: std::fmt::Error) -> Self {
        AppError::Format
    }
}

#[tokio::main]
async fn main() {
    install(Locker::in_memory());
    assert_eq!(load::<_, AppError>(42u32, false).await.unwrap(), "item:42");
    assert!(matches!(
        load::<_, AppError>("x", true).await,
        Err(AppError::Format)
    ));
    if let AppError::Lock(error) = AppError::from(LockError::NoDefaultLocker) {
        assert!(error.to_string().contains("no default locker"));
    }
}
