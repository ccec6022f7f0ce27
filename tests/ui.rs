//! Compile-time behaviour of `#[distributed_lock]`: every misuse is a compile error that names
//! the problem and the fix (tests/ui/fail, each with its expected `.stderr`), and every
//! supported shape of fn compiles and runs against the in-memory locker (tests/ui/pass).
//!
//! Regenerate the expected output after changing a message with
//! `TRYBUILD=overwrite cargo test --test ui`, then read every changed `.stderr`.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/fail/*.rs");
    cases.pass("tests/ui/pass/*.rs");
}
