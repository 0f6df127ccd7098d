//! Placeholder until the stack bench lands.
fn main() {}
