//! Lock metrics through the [`metrics`](https://docs.rs/metrics) facade, with the cargo feature
//! `metrics` (off by default: without it nothing is recorded and every hook compiles to nothing).
//!
//! With the feature on, every lock operation records into whatever recorder the application
//! installed (a Prometheus exporter, StatsD, ...; none installed: the `metrics` crate drops
//! them). `describe()` (with the feature) gives each metric its help text and unit, for exporters
//! that show them.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `distlock_acquired_total` | counter | `key_prefix` | locks taken: free, or handed over by a release of the same locker. A re-entry (a nested call joining a lock it is inside) is not an acquisition and is not counted |
//! | `distlock_not_acquired_total` | counter | `key_prefix` | acquires that gave up: the lock was busy for the whole wait ([`LockError::NotAcquired`](crate::LockError::NotAcquired)) |
//! | `distlock_skipped_total` | counter | `key_prefix` | `on_busy = "skip"` runs skipped because the lock was busy (also counted in `distlock_not_acquired_total`) |
//! | `distlock_wait_seconds` | histogram | `key_prefix`, `outcome` = `acquired` / `not_acquired` | from calling acquire to having the lock, or to giving up |
//! | `distlock_hold_seconds` | histogram | `key_prefix` | from having the lock to its release (by the last guard of the acquisition: explicit, or a dropped guard's) |
//! | `distlock_lease_lost_total` | counter | `key_prefix` | leases found lost while held (ran out, taken by another holder), once per acquisition |
//! | `distlock_handovers_total` | counter | `key_prefix` | releases that passed the lock straight to a waiting task of the same locker |
//! | `distlock_backend_errors_total` | counter | `key_prefix`, `op` = `acquire` / `release` / `renew` | backend calls that failed (connection, timeout, server error), including the watchdog's renewals and background clean-ups |
//!
//! # The `key_prefix` label
//!
//! Never the whole key: keys like `book:{isbn}` are one per resource, and one time series per
//! key would grow a monitoring system's memory without bound (label cardinality). The label is
//! [`key_prefix`]: the part of the key before its first `:`, cut to [`MAX_PREFIX_LEN`] bytes;
//! a key without a `:` gets the empty prefix. So `book:978-0134685991` counts under `book`,
//! `job:daily-report` under `job`, and `ranking` under `""` (Prometheus shows an empty label as
//! no label). Name keys `kind:id` to get one series per kind. (Not to be confused with
//! [`LockerBuilder::key_prefix`](crate::LockerBuilder::key_prefix), the prefix of every Redis
//! name the locker writes.)
//!
//! ```
//! use distlock::metrics::key_prefix;
//! assert_eq!(key_prefix("book:978-0134685991"), "book");
//! assert_eq!(key_prefix("tenant:7:report"), "tenant");
//! assert_eq!(key_prefix("ranking"), "");
//! ```

use std::time::Duration;

/// Counter: locks taken (free or handed over); re-entries are not counted.
pub const ACQUIRED: &str = "distlock_acquired_total";
/// Counter: acquires that gave up after the wait.
pub const NOT_ACQUIRED: &str = "distlock_not_acquired_total";
/// Counter: `on_busy = "skip"` runs skipped on a busy lock.
pub const SKIPPED: &str = "distlock_skipped_total";
/// Histogram, seconds: how long acquires waited, by `outcome`.
pub const WAIT_SECONDS: &str = "distlock_wait_seconds";
/// Histogram, seconds: how long locks were held.
pub const HOLD_SECONDS: &str = "distlock_hold_seconds";
/// Counter: leases lost while held.
pub const LEASE_LOST: &str = "distlock_lease_lost_total";
/// Counter: releases that handed the lock to a waiting task of the same locker.
pub const HANDOVERS: &str = "distlock_handovers_total";
/// Counter: failed backend calls, by `op`.
pub const BACKEND_ERRORS: &str = "distlock_backend_errors_total";

/// The label every metric carries: the key's [`key_prefix`].
pub const KEY_PREFIX_LABEL: &str = "key_prefix";
/// The label of [`WAIT_SECONDS`]: `acquired` or `not_acquired`.
pub const OUTCOME_LABEL: &str = "outcome";
/// The label of [`BACKEND_ERRORS`]: `acquire`, `release` (hand-overs included) or `renew` (the
/// watchdog's renewals, and extensions of a fixed lease).
pub const OP_LABEL: &str = "op";

/// The longest `key_prefix` label, in bytes: a longer prefix is cut (at a character boundary), so
/// label values stay short whatever the keys look like.
pub const MAX_PREFIX_LEN: usize = 32;

/// The `key_prefix` label of `key`: the part before the first `:`, at most [`MAX_PREFIX_LEN`]
/// bytes; `""` for a key without a `:`. See the [module docs](self) for why never the whole key.
pub fn key_prefix(key: &str) -> &str {
    let Some((prefix, _)) = key.split_once(':') else {
        return "";
    };
    let mut end = prefix.len().min(MAX_PREFIX_LEN);
    while !prefix.is_char_boundary(end) {
        end -= 1;
    }
    &prefix[..end]
}

/// Gives each metric above its description and unit in the installed recorder. Call it once,
/// after installing the recorder (exporters show the descriptions as help text); recording works
/// without it.
#[cfg(feature = "metrics")]
pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        ACQUIRED,
        Unit::Count,
        "Locks taken, free or handed over by a release (re-entries not counted)"
    );
    describe_counter!(
        NOT_ACQUIRED,
        Unit::Count,
        "Acquires that gave up: the lock was busy for the whole wait"
    );
    describe_counter!(
        SKIPPED,
        Unit::Count,
        "on_busy = \"skip\" runs skipped because the lock was busy"
    );
    describe_histogram!(
        WAIT_SECONDS,
        Unit::Seconds,
        "Time from calling acquire to having the lock or giving up, by outcome"
    );
    describe_histogram!(
        HOLD_SECONDS,
        Unit::Seconds,
        "Time from having the lock to releasing it"
    );
    describe_counter!(
        LEASE_LOST,
        Unit::Count,
        "Leases found lost while held (ran out, or taken by another holder)"
    );
    describe_counter!(
        HANDOVERS,
        Unit::Count,
        "Releases that passed the lock straight to a waiting task of the same locker"
    );
    describe_counter!(
        BACKEND_ERRORS,
        Unit::Count,
        "Backend calls that failed (connection, timeout, server error), by op"
    );
}

/// What a failed backend call was doing: the `op` label of [`BACKEND_ERRORS`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op {
    Acquire,
    /// A release, a hand-over, or the clean-up of a cancelled acquire.
    Release,
    /// A watchdog renewal, or the extension of a fixed lease for a nested call.
    Renew,
}

#[cfg(feature = "metrics")]
impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Acquire => "acquire",
            Op::Release => "release",
            Op::Renew => "renew",
        }
    }
}

// The hooks the lock code calls, one line each. Without the feature their bodies are empty and
// inlined away; the label is made only when there is somewhere to record it.

#[cfg(feature = "metrics")]
fn prefix_label(key: &str) -> String {
    key_prefix(key).to_owned()
}

/// A lock taken (free or handed over) after waiting `waited`.
#[inline]
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn acquired(key: &str, waited: Duration) {
    #[cfg(feature = "metrics")]
    {
        let prefix = prefix_label(key);
        ::metrics::counter!(ACQUIRED, KEY_PREFIX_LABEL => prefix.clone()).increment(1);
        ::metrics::histogram!(WAIT_SECONDS, KEY_PREFIX_LABEL => prefix, OUTCOME_LABEL => "acquired")
            .record(waited);
    }
}

/// An acquire that gave up after waiting `waited` for a busy lock.
#[inline]
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn not_acquired(key: &str, waited: Duration) {
    #[cfg(feature = "metrics")]
    {
        let prefix = prefix_label(key);
        ::metrics::counter!(NOT_ACQUIRED, KEY_PREFIX_LABEL => prefix.clone()).increment(1);
        ::metrics::histogram!(WAIT_SECONDS, KEY_PREFIX_LABEL => prefix, OUTCOME_LABEL => "not_acquired")
            .record(waited);
    }
}

/// An `on_busy = "skip"` run skipped on a busy lock.
#[inline]
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn skipped(key: &str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(SKIPPED, KEY_PREFIX_LABEL => prefix_label(key)).increment(1);
}

/// A lock released (or handed over) after being held for `held`.
#[inline]
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn held(key: &str, held: Duration) {
    #[cfg(feature = "metrics")]
    ::metrics::histogram!(HOLD_SECONDS, KEY_PREFIX_LABEL => prefix_label(key)).record(held);
}

/// A lease found lost while held.
#[inline]
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn lease_lost(key: &str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(LEASE_LOST, KEY_PREFIX_LABEL => prefix_label(key)).increment(1);
}

/// A release that handed the lock to a waiting task.
#[inline]
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn handed_over(key: &str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(HANDOVERS, KEY_PREFIX_LABEL => prefix_label(key)).increment(1);
}

/// A backend call for `key` that failed.
#[inline]
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn backend_error(key: &str, op: Op) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(BACKEND_ERRORS, KEY_PREFIX_LABEL => prefix_label(key), OP_LABEL => op.label())
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_the_part_before_the_first_colon() {
        assert_eq!(key_prefix("book:978-0134685991"), "book");
        assert_eq!(key_prefix("tenant:7:report:2026-12"), "tenant");
        assert_eq!(key_prefix(":leading"), "");
    }

    #[test]
    fn a_key_without_a_colon_has_the_empty_prefix_never_itself() {
        assert_eq!(key_prefix("ranking"), "");
        assert_eq!(key_prefix("order-12345"), "");
    }

    #[test]
    fn a_long_prefix_is_cut_at_a_character_boundary() {
        let long = format!("{}:1", "a".repeat(100));
        assert_eq!(key_prefix(&long), "a".repeat(MAX_PREFIX_LEN));
        // 'é' is two bytes: 31 ASCII bytes then 'é' would end at byte 33, so it is left out.
        let straddling = format!("{}é:1", "a".repeat(MAX_PREFIX_LEN - 1));
        assert_eq!(key_prefix(&straddling), "a".repeat(MAX_PREFIX_LEN - 1));
    }
}
