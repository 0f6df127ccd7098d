//! The Switchyard gateway (being written).

pub mod config;
pub mod problem;
pub mod routes;
pub mod framing;
pub mod server;
pub mod proxy;
