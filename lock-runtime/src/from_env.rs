//! A locker configured by environment variables, for twelve-factor services.

use std::ffi::OsString;

use crate::error::LockError;
use crate::locker::{Locker, LockerBuilder};

/// The Redis URL (required): `redis://[user:password@]host[:port][/db]`, `rediss://...`,
/// `redis+unix:///path`.
pub const REDIS_URL_VAR: &str = "REDIS_URL";
/// The key prefix (optional; [`LockerBuilder::key_prefix`]).
pub const KEY_PREFIX_VAR: &str = "DISTLOCK_KEY_PREFIX";
/// The holder label (optional; [`LockerBuilder::holder_label`]), e.g. the pod's name.
pub const HOLDER_LABEL_VAR: &str = "DISTLOCK_HOLDER_LABEL";

impl LockerBuilder {
    /// A builder for the Redis server named by `REDIS_URL`, with the key prefix from
    /// `DISTLOCK_KEY_PREFIX` and the holder label from `DISTLOCK_HOLDER_LABEL` when they are set;
    /// the other settings at their defaults, for the code to change.
    ///
    /// [`LockError::InvalidOptions`] naming the variable when `REDIS_URL` is missing or empty,
    /// or when a variable is not valid UTF-8. The URL itself is checked by
    /// [`build`](LockerBuilder::build), which never echoes its password.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), distlock::LockError> {
    /// use std::time::Duration;
    /// let locker = distlock::LockerBuilder::from_env()?
    ///     .watchdog_lease(Duration::from_secs(10))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn from_env() -> Result<LockerBuilder, LockError> {
        from_vars(|name| std::env::var_os(name))
    }
}

impl Locker {
    /// Connects as configured by the environment: `REDIS_URL`, and optionally
    /// `DISTLOCK_KEY_PREFIX` and `DISTLOCK_HOLDER_LABEL` (see [`LockerBuilder::from_env`]).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), distlock::LockError> {
    /// distlock::install(distlock::Locker::from_env().await?);
    /// # Ok(()) }
    /// ```
    pub async fn from_env() -> Result<Locker, LockError> {
        LockerBuilder::from_env()?.build().await
    }
}

/// [`LockerBuilder::from_env`] over any source of variables, so that it can be tested without
/// changing the process's environment (which other threads may read meanwhile).
fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Result<LockerBuilder, LockError> {
    let text = |name: &str| match var(name) {
        None => Ok(None),
        Some(value) => value
            .into_string()
            .map(Some)
            .map_err(|_| LockError::InvalidOptions {
                key: None,
                reason: format!("the environment variable {name} is not valid UTF-8"),
            }),
    };
    let url = text(REDIS_URL_VAR)?
        .filter(|url| !url.is_empty())
        .ok_or_else(|| LockError::InvalidOptions {
            key: None,
            reason: format!(
                "the environment variable {REDIS_URL_VAR} is not set; set it to the lock server's \
                 URL, e.g. {REDIS_URL_VAR}=redis://127.0.0.1:6379/0"
            ),
        })?;
    let mut builder = Locker::builder(url);
    if let Some(prefix) = text(KEY_PREFIX_VAR)? {
        builder = builder.key_prefix(prefix);
    }
    if let Some(label) = text(HOLDER_LABEL_VAR)? {
        builder = builder.holder_label(label);
    }
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::ffi::OsString;

    use super::*;

    fn vars(pairs: &[(&str, OsString)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.clone()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn reason(result: Result<LockerBuilder, LockError>) -> String {
        match result {
            Err(LockError::InvalidOptions { reason, .. }) => reason,
            other => panic!("expected InvalidOptions, got {other:?}"),
        }
    }

    #[test]
    fn a_missing_or_empty_redis_url_is_named_with_an_example() {
        for given in [vars(&[]), vars(&[(REDIS_URL_VAR, "".into())])] {
            let reason = reason(from_vars(given));
            assert!(reason.contains("REDIS_URL is not set"), "{reason}");
            assert!(reason.contains("redis://"), "{reason}");
        }
    }

    #[test]
    fn the_optional_variables_reach_the_builder() {
        let builder = from_vars(vars(&[
            (REDIS_URL_VAR, "redis://:secret@cache:6379/2".into()),
            (KEY_PREFIX_VAR, "billing:lock:".into()),
            (HOLDER_LABEL_VAR, "billing-7".into()),
        ]))
        .expect("builder");
        let shown = format!("{builder:?}");
        assert!(shown.contains("cache:6379/2"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("\"billing:lock:\""), "{shown}");
        assert!(shown.contains("\"billing-7\""), "{shown}");
    }

    #[cfg(unix)]
    #[test]
    fn a_variable_that_is_not_utf8_is_named() {
        use std::os::unix::ffi::OsStringExt;
        let reason = reason(from_vars(vars(&[
            (REDIS_URL_VAR, "redis://cache".into()),
            (KEY_PREFIX_VAR, OsString::from_vec(vec![0xff])),
        ])));
        assert!(reason.contains(KEY_PREFIX_VAR), "{reason}");
    }
}
