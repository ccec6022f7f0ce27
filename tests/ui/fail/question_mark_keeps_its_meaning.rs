use distlock::{LockError, distributed_lock};

#[derive(Debug)]
struct AppError;

impl From<LockError> for AppError {
    fn from(_: LockError) -> Self {
        AppError
    }
}

#[distributed_lock(key = "config:{path}")]
async fn load(path: &str) -> Result<String, AppError> {
    let text = std::fs::read_to_string(path)?;
    Ok(text)
}

fn main() {
    let _ = load("app.toml");
}
