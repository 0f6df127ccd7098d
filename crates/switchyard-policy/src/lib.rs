//! Resilience policies for calls between services, as `tower` layers.
//!
//! Every outbound call in Switchyard passes through this crate. Each policy
//! is a [`tower::Layer`](tower_layer::Layer) with its service, a serde config
//! (typed durations, documented defaults, unknown keys refused, `validate()`
//! that says how to fix what it refuses), and one error type, [`Error`]:
//!
//! | module | policy |
//! | --- | --- |
//! | [`deadline`] | overall deadline carried with the request, per-attempt timeout |
//! | [`rate_limit`] | GCRA rate limit, global or keyed, reject or bounded wait |
//! | [`bulkhead`] | max concurrent calls, bounded wait queue with a max wait |
//! | [`breaker`] | circuit breaker: count or time windows, failure and slow-call rates, consecutive mode, half-open probes, forced open |
//! | [`retry`] | backoff with jitter, `Retry-After`, a retry budget shared per service |
//! | [`hedge`] | a backup attempt after a fixed delay or a latency percentile, within the budget |
//! | [`fallback`] | answer from a value, a function or another service for chosen failures |
//!
//! [`Policy`] builds all of them from one [`PolicyConfig`] in one fixed
//! order, explained in its module docs: deadline → rate limit → bulkhead →
//! breaker → retry → hedge → attempt timeout. Outcomes are judged by a
//! [`Classify`] implementation ([`HttpClassifier`] for HTTP responses), and
//! every policy reports through one [`Observer`].
//!
//! ```
//! use std::sync::{atomic::{AtomicU32, Ordering}, Arc};
//! use switchyard_policy::{Call, Error, Events, Policy, PolicyConfig};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config: PolicyConfig = toml::from_str(r#"
//!     timeout = "1s"
//!     [retry]
//!     max_attempts = 3
//!     base_delay = "1ms"
//! "#)?;
//! let policy = Policy::new(config, Events::silent("pricing"))?;
//!
//! // A service that fails its first call, then answers.
//! let calls = Arc::new(AtomicU32::new(0));
//! let pricing = policy.layer(service_fn(move |call: Call<&'static str>| {
//!     let n = calls.fetch_add(1, Ordering::SeqCst);
//!     async move {
//!         if n == 0 {
//!             Err(Error::from_inner(std::io::Error::other("connection reset")))
//!         } else {
//!             Ok(format!("price of {}: 42", call.into_inner()))
//!         }
//!     }
//! }));
//!
//! // The retry hides the first failure; the breaker saw one successful call.
//! assert_eq!(pricing.oneshot(Call::new("book")).await?, "price of book: 42");
//! assert_eq!(policy.breaker().snapshot().calls, 1);
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod breaker;
pub mod bulkhead;
pub mod classify;
pub mod clock;
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
pub use events::{CachedMetricsObserver, Event, Events, MetricsObserver, Observer};
pub use policy::{ConfigError, Policy, PolicyConfig, PolicyService};
pub use request::{Call, PolicyRequest, ReplayBody};
