//! Fault: not written yet.

use crate::report::FaultRow;

pub fn run() -> FaultRow {
    todo!("fault soak")
}
