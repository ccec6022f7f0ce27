//! The overlap checker: not written yet.
