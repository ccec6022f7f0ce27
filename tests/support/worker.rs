//! Spawning torture_worker processes: not written yet.
