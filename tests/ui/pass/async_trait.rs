// Methods of `#[async_trait]` impls and traits (tonic services are written so). `#[async_trait]`
// on the impl expands first, so `#[distributed_lock]` sees the rewritten fn (not `async`, its
// body `Box::pin(async move { .. })`) and locks inside that future, as `#[tracing::instrument]`
// does. A parameter used only by the key is no unused variable.
#![deny(unused_variables)]

use async_trait::async_trait;
use distlock::{LockError, Locker, current, distributed_lock, install};

#[async_trait]
trait Registry {
    async fn register(&self, isbn: String, copies: u32) -> Result<String, LockError>;
    async fn sweep(&self) -> Option<u32>;

    /// A provided method carries the attribute too.
    #[distributed_lock(key = "registry:describe")]
    async fn describe(&self) -> Result<String, LockError> {
        Ok(current().unwrap().key().to_owned())
    }
}

struct Library {
    shelf: u32,
    locks: Locker,
}

#[async_trait]
impl Registry for Library {
    #[distributed_lock(key = "book:{self.shelf}:{isbn}", locker = self.locks)]
    async fn register(&self, isbn: String, copies: u32) -> Result<String, LockError> {
        Ok(format!("{} x{copies}", current().unwrap().key()))
    }

    #[distributed_lock(key = "sweep", on_busy = "skip", locker = self.locks)]
    async fn sweep(&self) -> Option<u32> {
        Some(self.shelf)
    }
}

// Futures that need not be `Send`.
#[async_trait(?Send)]
trait Local {
    async fn run(&self, day: u32) -> Result<u32, LockError>;
}

#[async_trait(?Send)]
impl Local for Library {
    #[distributed_lock(key = "local:{day}")]
    async fn run(&self, day: u32) -> Result<u32, LockError> {
        Ok(current().unwrap().key().len() as u32 + day)
    }
}

fn assert_send<T: Send>(_: &T) {}

#[tokio::main]
async fn main() {
    install(Locker::in_memory());
    let library = Library {
        shelf: 7,
        locks: Locker::in_memory(),
    };
    let register = library.register("978-0".to_owned(), 2);
    assert_send(&register);
    assert_eq!(register.await.unwrap(), "book:7:978-0 x2");
    assert_eq!(library.sweep().await, Some(7));
    assert_eq!(library.describe().await.unwrap(), "registry:describe");
    assert_eq!(Local::run(&library, 3).await.unwrap(), 10);
}
