//! The locks the running call is inside of: the scopes opened by `#[distributed_lock]` bodies and
//! [`crate::LockGuard::scope`], innermost first. [`crate::current`] reads the innermost; an
//! acquire of a key that an enclosing scope holds re-enters it (see `protocol::reentry`).
//!
//! The scopes are task-local and follow the nesting of futures, not tasks or threads: a future
//! joined next to a locked body (`join!`, `select!`) is outside its scope, and a task spawned
//! from inside starts outside every scope.

use std::future::Future;
use std::sync::Arc;

use super::Shared;
use super::held::HeldLock;

tokio::task_local! {
    static CURRENT: Arc<Scope>;
}

/// One open scope and the scopes around it: an immutable chain, so a nested scope shares its
/// outer ones instead of copying them.
struct Scope {
    held: Arc<HeldLock>,
    outer: Option<Arc<Scope>>,
}

/// The innermost lock the running call is inside of.
pub(crate) fn innermost() -> Option<Arc<HeldLock>> {
    CURRENT.try_with(|scope| Arc::clone(&scope.held)).ok()
}

/// Runs `fut` inside the scope of `held`, nested in the scopes it is polled in.
pub(crate) async fn scope<F: Future>(held: Arc<HeldLock>, fut: F) -> F::Output {
    let outer = CURRENT.try_with(Arc::clone).ok();
    CURRENT.scope(Arc::new(Scope { held, outer }), fut).await
}

/// The acquisition of `key` through the locker of `shared` that the running call is inside of,
/// innermost first.
pub(crate) fn enclosing(shared: &Arc<Shared>, key: &str) -> Option<Arc<HeldLock>> {
    CURRENT
        .try_with(|innermost| {
            let mut scope = Some(innermost);
            while let Some(open) = scope {
                let held = &open.held;
                if Arc::ptr_eq(&held.shared, shared) && held.key == key {
                    return Some(Arc::clone(held));
                }
                scope = open.outer.as_ref();
            }
            None
        })
        .ok()
        .flatten()
}
