//! The Switchyard gateway (being written).

pub mod config;
pub mod framing;
pub mod problem;
pub mod proxy;
pub mod routes;
pub mod server;
