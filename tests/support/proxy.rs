//! The fault proxy: not written yet.
