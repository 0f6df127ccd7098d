//! Outbound HTTP transport for Switchyard (being written).

mod body;

pub use body::{Body, BodyTooLarge};
