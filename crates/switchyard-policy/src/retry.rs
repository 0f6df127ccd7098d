//! Retry with backoff, jitter and a retry budget.
//!
//! [`RetryLayer`] wraps a service so that a call whose outcome the
//! [classifier](crate::Classify) calls *retryable* is sent again, up to
//! [`RetryConfig::max_attempts`] attempts in total, after a delay from the
//! [backoff curve](Backoff) with [jitter](Jitter) applied.
//!
//! # Placement
//!
//! The stack is `deadline → bulkhead → breaker → retry → hedge → balancer`.
//! Retry sits *inside* the bulkhead and the breaker, so the breaker sees one
//! outcome per logical call (after retries) and a bulkhead slot is held for the
//! whole logical call; the breaker's rejection never reaches the retry loop, so
//! a retry never hammers an open breaker. Hedging sits inside retry: each retry
//! attempt may itself be hedged, and both draw from the same [`RetryBudget`].
//!
//! # Behaviour
//!
//! - Every logical call [deposits](RetryBudget::deposit) into the budget once;
//!   every retry [withdraws](RetryBudget::withdraw) first. When the budget is
//!   empty the call ends with [`Error::BudgetExhausted`] instead of retrying
//!   (an [`Event::Rejected`] with kind `budget-exhausted` is emitted).
//! - After each attempt the result is classified (errors are first converted
//!   with [`Error::from_inner`]). A success or a non-retryable outcome is
//!   returned as it is.
//! - When attempts are exhausted, an error becomes
//!   [`Error::RetriesExhausted`] carrying the last error; with
//!   `max_attempts = 1` errors pass through unwrapped.
//! - A *response* classified retryable (say an HTTP 503) is returned as `Ok`
//!   when no retry follows (attempts, budget, deadline): the caller can still
//!   use it.
//! - The delay before retry `n` is `backoff(n)` capped at `max_delay`, then
//!   jittered. If the outcome carried a `Retry-After` no longer than
//!   `max_delay`, that is the delay instead; a longer `Retry-After` ends the
//!   call with the last outcome (as if attempts were exhausted): waiting
//!   longer than we are configured to is the caller's choice, not ours.
//! - A retry is only scheduled when it would start strictly before the
//!   request's [deadline](crate::PolicyRequest::deadline) and before
//!   `max_total_duration` after the call began; otherwise the last outcome is
//!   returned as when attempts are exhausted. No attempt and no sleep ever
//!   starts past the deadline.
//! - A request that can't be copied ([`PolicyRequest::try_clone`] gives
//!   `None`) is sent once and its outcome returned as it is.
//! - The budget is checked last, so a retry that the deadline would forbid
//!   doesn't spend it.
//!
//! # Readiness and cancellation
//!
//! `poll_ready` passes the inner service's readiness through (backpressure
//! reaches the caller unchanged). `call` moves the readied service into the
//! response future and leaves a clone behind (tower's pattern); the future
//! calls the inner service on its *first poll*, not in `call`, so a caller
//! that drops the future before polling it causes no upstream call at all.
//! Before each retry the future drives `poll_ready` on its service again.
//! Dropping the future during a backoff sleep cancels the call: no further
//! attempt is made.
//!
//! # Defaults
//!
//! 3 attempts, exponential backoff from 25ms doubling up to 1s, full jitter,
//! no total-duration cap; budget of 20% extra load plus 10 retries a second,
//! deposits counting for 10s.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::sync::{Arc, atomic::{AtomicU32, Ordering}};
//! use switchyard_policy::{Call, DefaultClassifier, Events, BoxError};
//! use switchyard_policy::retry::{RetryBudget, RetryConfig, RetryLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let config = RetryConfig {
//!     base_delay: std::time::Duration::from_millis(1),
//!     ..RetryConfig::default()
//! };
//! let budget = RetryBudget::new(&config.budget);
//! let calls = Arc::new(AtomicU32::new(0));
//! let counter = calls.clone();
//! let svc = ServiceBuilder::new()
//!     .layer(RetryLayer::new(config, budget, DefaultClassifier, Events::silent("users")))
//!     .service_fn(move |call: Call<&'static str>| {
//!         let n = counter.fetch_add(1, Ordering::SeqCst);
//!         async move {
//!             if n == 0 { Err::<String, BoxError>("connection reset".into()) }
//!             else { Ok(format!("{} ok", call.get_ref())) }
//!         }
//!     });
//! let res = svc.oneshot(Call::new("get user 7")).await.unwrap();
//! assert_eq!(res, "get user 7 ok");
//! assert_eq!(calls.load(Ordering::SeqCst), 2);
//! # }
//! ```

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tower_layer::Layer;
use tower_service::Service;

#[cfg(doc)]
use crate::Event;
use crate::{BoxError, Classify, DefaultClassifier, Error, Events, PolicyRequest};

mod backoff;
mod budget;
mod future;
#[cfg(test)]
mod tests;

pub use backoff::{Backoff, Delays, Jitter};
pub use budget::{
    BudgetConfig, DEFAULT_BUDGET_TTL, DEFAULT_MIN_RETRIES_PER_SECOND, DEFAULT_RETRY_RATIO,
    RetryBudget,
};
pub(crate) use future::Attempts;
pub use future::ResponseFuture;

/// Default [`RetryConfig::max_attempts`]: 3.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Default [`RetryConfig::base_delay`]: 25ms.
pub const DEFAULT_BASE_DELAY: Duration = Duration::from_millis(25);
/// Default [`RetryConfig::max_delay`]: 1s.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(1);
/// Default [`RetryConfig::multiplier`]: 2.0.
pub const DEFAULT_MULTIPLIER: f64 = 2.0;

/// How a service's calls are retried.
///
/// ```toml
/// [retry]
/// max_attempts = 3
/// backoff = "exponential"
/// base_delay = "25ms"
/// max_delay = "1s"
/// multiplier = 2.0
/// jitter = "full"
/// max_total_duration = "3s"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in total, the first included; `1` turns retries off. Default `3`.
    pub max_attempts: u32,
    /// The backoff curve. Default `"exponential"`.
    pub backoff: Backoff,
    /// The first delay and the step of the curve. Default `"25ms"`.
    #[serde(with = "humantime_serde")]
    pub base_delay: Duration,
    /// No delay is longer than this (nor any `Retry-After` honoured). Default `"1s"`.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Growth factor of the exponential curve. Default `2.0`.
    pub multiplier: f64,
    /// Randomisation of each delay. Default `"full"`.
    pub jitter: Jitter,
    /// No retry starts later than this after the call began. Default: none.
    #[serde(with = "humantime_serde")]
    pub max_total_duration: Option<Duration>,
    /// The retry budget shared by all calls to the service (and by hedges).
    /// Default: 20% extra load, 10 retries a second, over 10s.
    pub budget: BudgetConfig,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff: Backoff::default(),
            base_delay: DEFAULT_BASE_DELAY,
            max_delay: DEFAULT_MAX_DELAY,
            multiplier: DEFAULT_MULTIPLIER,
            jitter: Jitter::default(),
            max_total_duration: None,
            budget: BudgetConfig::default(),
        }
    }
}

impl RetryConfig {
    /// Checks the values; the message names the key and how to fix it.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err(
                "retry.max_attempts: must be at least 1, got 0; set 1 to turn retries off or 3 to retry twice"
                    .to_owned(),
            );
        }
        if self.base_delay > self.max_delay {
            return Err(format!(
                "retry.base_delay: must not exceed retry.max_delay ({:?}), got {:?}; lower base_delay or raise max_delay",
                self.max_delay, self.base_delay
            ));
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(format!(
                "retry.multiplier: must be a finite number of at least 1.0, got {}; set 2.0 to double each delay",
                self.multiplier
            ));
        }
        if self.max_total_duration == Some(Duration::ZERO) {
            return Err(
                "retry.max_total_duration: must be more than 0; remove the key for no cap or set a duration such as \"2s\""
                    .to_owned(),
            );
        }
        self.budget.validate()
    }

    /// The delays this config produces for one logical call.
    pub fn delays(&self) -> Delays {
        Delays::new(
            self.backoff,
            self.jitter,
            self.base_delay,
            self.max_delay,
            self.multiplier,
        )
    }
}

/// Applies [`Retry`] to a service. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct RetryLayer<C = DefaultClassifier> {
    config: Arc<RetryConfig>,
    budget: RetryBudget,
    classifier: C,
    events: Events,
}

impl<C> RetryLayer<C> {
    /// A layer retrying as `config` says, drawing from `budget` (share one
    /// budget among every layer and service calling the same upstream).
    pub fn new(config: RetryConfig, budget: RetryBudget, classifier: C, events: Events) -> Self {
        Self {
            config: Arc::new(config),
            budget,
            classifier,
            events,
        }
    }
}

impl<S, C: Clone> Layer<S> for RetryLayer<C> {
    type Service = Retry<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            config: self.config.clone(),
            budget: self.budget.clone(),
            classifier: self.classifier.clone(),
            events: self.events.clone(),
        }
    }
}

/// Retries calls to the inner service. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Retry<S, C = DefaultClassifier> {
    inner: S,
    config: Arc<RetryConfig>,
    budget: RetryBudget,
    classifier: C,
    events: Events,
}

impl<S, C> Retry<S, C> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The budget this service draws from.
    pub fn budget(&self) -> &RetryBudget {
        &self.budget
    }
}

impl<S, C, Req> Service<Req> for Retry<S, C>
where
    Req: PolicyRequest,
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S, Req, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.budget.deposit();
        // The readied service goes into the future; the clone stays here and
        // will be made ready by the next `poll_ready`.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(
            service,
            req,
            &self.config,
            self.budget.clone(),
            self.classifier.clone(),
            self.events.clone(),
        )
    }
}
