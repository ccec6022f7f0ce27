use distlock::{LockError, distributed_lock};

#[distributed_lock(key = "account:{self.id}")]
async fn close_account(id: u64) -> Result<(), LockError> {
    let _ = id;
    Ok(())
}

fn main() {
    let _ = close_account(7);
}
