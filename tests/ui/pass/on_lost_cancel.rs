// `on_lost = "cancel"` in both modes, with `?` and early returns in the body.
use distlock::{LockError, Locker, distributed_lock, install};

#[derive(Debug)]
enum AppError {
    Lock(LockError),
    Parse(std::num::ParseIntError),
}

impl From<LockError> for AppError {
    fn from(error: LockError) -> Self {
        AppError::Lock(error)
    }
}

impl From<std::num::ParseIntError> for AppError {
    fn from(error: std::num::ParseIntError) -> Self {
        AppError::Parse(error)
    }
}

#[distributed_lock(key = "parse:{text}", lease = "30s", on_lost = "cancel")]
async fn parse(text: &str) -> Result<u32, AppError> {
    if text == "zero" {
        return Ok(0);
    }
    Ok(text.parse::<u32>()?)
}

#[distributed_lock(key = "tick", on_busy = "skip", on_lost = "cancel")]
async fn tick() -> Option<u8> {
    Some(1)
}

#[distributed_lock(key = "tock", on_busy = "skip", on_lost = "report")]
async fn tock() {}

#[tokio::main]
async fn main() {
    install(Locker::in_memory());
    assert_eq!(parse("12").await.unwrap(), 12);
    assert_eq!(parse("zero").await.unwrap(), 0);
    assert!(matches!(parse("x").await, Err(AppError::Parse(_))));
    assert_eq!(tick().await, Some(1));
    tock().await;
    if let AppError::Lock(error) = AppError::from(LockError::NoDefaultLocker) {
        assert!(error.to_string().contains("no default locker"));
    }
}
