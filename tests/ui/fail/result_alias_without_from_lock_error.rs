use distlock::distributed_lock;

#[derive(Debug)]
enum AppError {
    NotFound,
}

type AppResult<T> = Result<T, AppError>;

#[distributed_lock(key = "book:{isbn}")]
async fn register(isbn: &str) -> AppResult<()> {
    if isbn.is_empty() {
        return Err(AppError::NotFound);
    }
    Ok(())
}

fn main() {
    let _ = register("978-0");
}
