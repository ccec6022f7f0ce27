//! Owner tokens: what every owner-checked step of an engine compares.

use crate::error::BackendError;

/// A fresh 128-bit owner token from the OS CSPRNG, as 32 hex digits.
pub(crate) fn new_token() -> Result<String, BackendError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(BackendError::random)?;
    Ok(format!("{:032x}", u128::from_ne_bytes(bytes)))
}
