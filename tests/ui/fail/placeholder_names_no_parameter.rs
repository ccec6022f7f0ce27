use distlock::{LockError, distributed_lock};

#[distributed_lock(key = "book:{isbn}")]
async fn register(book_id: &str, shelf: u32) -> Result<(), LockError> {
    let _ = (book_id, shelf);
    Ok(())
}

fn main() {
    let _ = register("978-0", 1);
}
