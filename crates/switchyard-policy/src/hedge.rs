//! hedge (being written).
