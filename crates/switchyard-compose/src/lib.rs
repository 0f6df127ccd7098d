#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod config;
mod execute;
mod plan;
mod template;

pub use config::{CallConfig, ComposeConfig, Fallback, ResponseConfig};
pub use execute::{
    CallError, CallName, CallService, ComposeError, ComposeRequest, ComposeResponse,
    DEGRADED_HEADER, KIND_DEADLINE_EXCEEDED, KIND_DEPENDENCY_OMITTED, KIND_OMITTED, KIND_TEMPLATE,
    KIND_UPSTREAM_STATUS,
};
pub use plan::ComposePlan;
