//! The lock protocol, as functions over the shared state (`crate::shared`): acquire and its wait,
//! re-entry by call nesting, the watchdog, release, and the local hand-over. The same for every
//! engine: what differs per engine is behind `crate::engine::Engine`.

pub(crate) mod acquire;
pub(crate) mod close;
pub(crate) mod handoff;
pub(crate) mod lease_extension;
pub(crate) mod reentry;
pub(crate) mod release;
pub(crate) mod run_to_end;
pub(crate) mod watchdog;
