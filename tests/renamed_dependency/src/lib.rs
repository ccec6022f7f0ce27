//! `#[distributed_lock]` in a crate whose `Cargo.toml` renames the facade to `lock`: no
//! `distlock` is in scope, so the generated code compiles only if it found the facade as `::lock`.

use lock::{LockError, distributed_lock};

/// Locked under its default locker; no `crate = "..."` given.
#[distributed_lock(key = "renamed", wait = "1s")]
pub async fn locked() -> Result<u8, LockError> {
    Ok(7)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_attribute_finds_the_facade_under_the_name_cargo_toml_gives_it() {
        lock::install(lock::Locker::in_memory());
        assert_eq!(super::locked().await.unwrap(), 7);
    }
}
