//! The `switchyard` binary (being written).
fn main() {}
