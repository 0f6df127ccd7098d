//! The Switchyard gateway (being written).
