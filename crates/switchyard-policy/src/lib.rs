//! Resilience policies for calls between services.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod breaker;
pub mod bulkhead;
pub mod classify;
pub mod deadline;
mod error;
pub mod events;
pub mod fallback;
pub mod hedge;
mod policy;
pub mod rate_limit;
mod request;
pub mod retry;

pub use classify::{Class, Classify, DefaultClassifier, HttpClassifier, Outcome};
pub use error::{BoxError, Error, GrpcCode, is_caused_by};
pub use events::{Event, Events, MetricsObserver, Observer};
pub use policy::{ConfigError, Policy, PolicyConfig, PolicyService};
pub use request::{Call, PolicyRequest};
