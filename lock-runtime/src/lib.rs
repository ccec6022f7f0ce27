//! The runtime of `distlock`: owner-safe Redis locks with waiting, leases, watchdog
//! renewal and fencing tokens. Most users reach it through the `distlock` facade and its
//! `#[distributed_lock]` attribute; everything here can also be called by hand.
//!
//! # Data model (one server, a Cluster, or Sentinel: the same)
//!
//! For a lock `K` with the key prefix `P` (default `lock:`):
//!
//! | name | type | content |
//! |---|---|---|
//! | `P{K}` | string, PX expiry | `<token>:<fence>:<label>`: the holder's 128-bit random token (32 hex digits), the acquisition's fencing number (decimal) and the holder's label ([`LockerBuilder::holder_label`]: any text, the rest of the value; `:<label>` left out when empty) |
//! | `P{K}:released` | pub/sub channel | one message per release (payload: ms still held, 0 if deleted) |
//!
//! That is all: one key per lock, and no key outlives its lock (a release deletes it, the
//! lease's expiry removes it). The `{K}` hash tag keeps a lock's names in one Cluster slot. Every
//! step is one script call (one round trip) that names every key it touches in `KEYS`:
//!
//! - **acquire**: `TIME`, then `SET P{K} token:now:label NX PX lease` and return `now`, the
//!   server clock in microseconds, as the fencing number; else return the holder's `PTTL`. Only
//!   then, off the uncontended path, a value that is not in this format (someone else wrote it,
//!   or it has no expiry) is reported as not a lock instead of being waited for; a bare token or
//!   `token:fence` without a label, the values of earlier versions' locks, are waited for
//!   (rolling upgrades).
//! - **release**: if the token part of `GET P{K}` is the caller's: `DEL` (or `PEXPIRE` to what
//!   remains of `hold_at_least`) and `PUBLISH P{K}:released`. A non-owner changes nothing.
//! - **renew** (watchdog, every renewal interval): if the token part is the caller's: `PEXPIRE`.
//! - **hand-over** (the acquire script with the releaser's token as a fourth argument): if the
//!   token part is the releaser's: `SET P{K} waiter's-token:fence:label PX lease`, with
//!   `fence = max(releaser's fence + 1, now)`.
//! - **inspect** (operators, [`Locker::inspect`]): `GET` and `PTTL`, changing nothing.
//! - **force release** (operators, [`Locker::force_release`]): whatever the token, `DEL P{K}` and
//!   `PUBLISH P{K}:released`; the holder's next renewal or release finds the lock gone.
//!
//! On a Redis Cluster every script runs on the node serving the slot of `{K}` (the client follows
//! MOVED, ASK and topology changes), and releases wake waiters with `SPUBLISH` on the channel,
//! which is in the same slot: sharded pub/sub (Redis >= 7.0), heard on that shard only. Under
//! Sentinel the locker talks to the primary the sentinels name, and asks them again after a lost
//! connection, a timeout or a `READONLY` refusal. With replica acknowledgement
//! ([`LockerBuilder::replica_acks`], [`LockOptions::replica_acks`]) an acquisition, hand-over or
//! renewal is followed by `WAIT` for every online replica in the same round trip (one more when
//! the number of replicas changed since the last step), and counts only once they all have it.
//!
//! Fencing numbers follow the server clock, so they need no counter and keep growing across
//! release, expiry, a restart with or without persistence, a restore from a snapshot, `FLUSHALL`,
//! eviction and the promotion of a replica that lagged, under one assumption: **no Redis server's
//! wall clock ever reads earlier than when the last fencing number of a lock was handed out: not
//! stepped back on a running server, nor behind it after a restart or a failover.** (Two acquisitions of one lock never fall in the same microsecond:
//! each is a script call of its own, after the release or expiry of the one before.)
//!
//! Waiters subscribe to `P{K}:released` before retrying, through one subscriber connection per
//! [`Locker`] shared by all waiting tasks, and sleep until a message or the holder's expiry. The
//! subscriber connection is PINGed every [`LockerBuilder::subscriber_health_check`] (a half-open
//! one is replaced within twice that; on a Cluster every primary is PINGed, and one that does
//! not answer has its channels subscribed again); a waiter whose subscription does not work retries every
//! [`FALLBACK_RETRY_INTERVAL`] instead.
//! Tasks of one [`Locker`] that wait for the same key also queue in arrival order: a release
//! through that locker passes the lock straight to the first of them (a hand-over: one round
//! trip, no message), up to [`LockerBuilder::max_handovers_in_a_row`] times in a row; then it
//! releases for everyone, so waiters in other processes get their chance.
//!
//! # Guarantees and their limits
//!
//! Nothing deletes or extends a lock it does not own, except an operator's explicit
//! [`Locker::force_release`]. A holder learns that its lease was lost
//! ([`LockGuard::lost`], [`LockGuard::release`] returning [`LockError::LeaseLost`]). It counts its
//! lease from when the request was sent, less a drift allowance of 1 % + 2 ms (Redlock's), so its
//! own view of the lease ends before the server's: it is told before another client can get in.
//! A Redis server that loses its data (restart without persistence, failover to a replica that
//! missed the write (unless the lock was acknowledged by the replicas), eviction) can let a
//! second holder in while the first still works: the
//! first is told, but only the fencing token, checked by the store you write to, makes its late
//! writes harmless. The second holder's number is greater than the first's (clock assumption
//! above), so a store that refuses any number not greater than the last one it accepted refuses
//! the first holder's late writes.
#![warn(missing_docs)]

mod context;
mod engine;
mod error;
mod from_env;
mod guard;
mod holder;
mod inspect;
mod lock_info;
mod locker;
pub mod metrics;
mod mutex;
mod options;
mod protocol;
mod shared;
mod token;

#[doc(hidden)]
pub mod __private {
    //! For generated code only.
    pub use crate::expansion::*;
}
mod expansion;

pub use context::current;
pub use engine::FALLBACK_RETRY_INTERVAL;
pub use error::{BackendError, LockError};
pub use from_env::{HOLDER_LABEL_VAR, KEY_PREFIX_VAR, REDIS_URL_VAR};
pub use guard::{LockGuard, LockHandle};
pub use holder::{MAX_HOLDER_LABEL_LEN, default_holder_label};
pub use lock_info::LockInfo;
pub use locker::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEY_PREFIX, DEFAULT_MAX_HANDOVERS_IN_A_ROW,
    DEFAULT_RESPONSE_TIMEOUT, DEFAULT_SUBSCRIBER_HEALTH_CHECK, DEFAULT_WATCHDOG_LEASE, Locker,
    LockerBuilder, default_locker, install,
};
pub use options::{DEFAULT_WAIT, LockOptions, MAX_DURATION, MIN_LEASE};
pub use protocol::acquire::MAX_KEY_LEN;
