//! The Switchyard gateway (being written).

pub mod config;
