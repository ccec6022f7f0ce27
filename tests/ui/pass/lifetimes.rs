// Explicit and elided lifetimes in parameters and return types.
use distlock::{LockError, Locker, distributed_lock, install};

#[distributed_lock(key = "first:{text}")]
async fn first_word<'a>(text: &'a str) -> Result<&'a str, LockError> {
    Ok(text.split(' ').next().unwrap_or(text))
}

#[distributed_lock(key = "longest")]
async fn longest<'a, 'b: 'a>(a: &'a str, b: &'b str) -> Result<&'a str, LockError> {
    Ok(if a.len() >= b.len() { a } else { b })
}

struct Shelf {
    name: String,
}

impl Shelf {
    #[distributed_lock(key = "shelf:{self.name}")]
    async fn name(&self) -> Result<&str, LockError> {
        Ok(&self.name)
    }
}

#[tokio::main]
async fn main() {
    install(Locker::in_memory());
    assert_eq!(first_word("hello world").await.unwrap(), "hello");
    assert_eq!(longest("ab", "abc").await.unwrap(), "abc");
    let shelf = Shelf { name: "a".into() };
    assert_eq!(shelf.name().await.unwrap(), "a");
}
