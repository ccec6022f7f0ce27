//! Locking a `std::sync::Mutex` that another thread may have poisoned.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// A poisoned mutex only means another thread panicked while holding it; every update of the
/// runtime's maps leaves them consistent at each step, so carry on with the data.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
