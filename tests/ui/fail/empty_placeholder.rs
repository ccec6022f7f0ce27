use distlock::{LockError, distributed_lock};

#[distributed_lock(key = "book:{}")]
async fn register(isbn: &str) -> Result<(), LockError> {
    let _ = isbn;
    Ok(())
}

fn main() {
    let _ = register("978-0");
}
