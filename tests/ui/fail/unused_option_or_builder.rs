// `LockOptions` is `Copy`: a setter whose result is dropped changes nothing, and so does a
// builder method whose builder is dropped. Both are errors under `deny(unused_must_use)`.
#![deny(unused_must_use)]

use std::time::Duration;

use distlock::{LockOptions, Locker};

fn main() {
    let options = LockOptions::new();
    options.wait(Duration::ZERO);
    let _ = options;

    let builder = Locker::in_memory_builder();
    builder.watchdog_lease(Duration::from_secs(5));
}
