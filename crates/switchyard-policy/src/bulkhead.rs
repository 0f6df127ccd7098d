//! bulkhead (being written).
