//! The composed stack: every policy, built from one [`PolicyConfig`], in one
//! fixed order.
//!
//! ```text
//! call ─▶ observe ─▶ deadline ─▶ rate limit ─▶ bulkhead ─▶ circuit breaker
//!      ─▶ retry (budgeted) ─▶ hedge ─▶ attempt timeout ─▶ service
//! ```
//!
//! Why this order:
//!
//! - **Deadline outermost.** The caller's time is what matters: time spent
//!   waiting for a rate-limit permit or a bulkhead slot, in backoff sleeps and
//!   in every attempt all counts against one deadline, and a call that arrives
//!   with no time left is failed before it takes a permit or a slot.
//! - **Rate limit before bulkhead.** A call refused for rate never holds a
//!   concurrency slot.
//! - **Bulkhead before breaker.** The bulkhead bounds what this caller spends
//!   (its own tasks and memory) whatever the breaker thinks of the service; a
//!   call rejected by the bulkhead says nothing about the service's health, so
//!   the breaker never sees it.
//! - **Breaker outside retry.** The breaker sees one outcome per logical call,
//!   after retries: three failed attempts of one call are one failure, so the
//!   failure rate means "calls that failed", as users read it. And a retry
//!   never goes into an open breaker: once the breaker has admitted a call, its
//!   retries run under that one permit; the next call is rejected at once.
//! - **Retry with a budget.** Retries are capped per call (`max_attempts`) and
//!   per service (the budget): when a service is sick, retries can add at most
//!   the budget's ratio of extra load, never multiply it.
//! - **Hedge inside retry.** A hedge is a second attempt of the same try; it
//!   withdraws from the same budget as retries.
//! - **Attempt timeout innermost.** It bounds each attempt (including each
//!   hedge) so a retry still has time left; it never outlives the deadline.
//!
//! A [`FallbackLayer`](crate::fallback::FallbackLayer) goes outside the whole
//! stack, so it can answer for any cause, breaker open and deadline included.
//!
//! ```
//! use switchyard_policy::{Call, Error, Events, Policy, PolicyConfig};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config: PolicyConfig = toml::from_str(r#"
//!     timeout = "2s"
//!     [retry]
//!     max_attempts = 2
//!     [breaker]
//!     minimum_calls = 10
//! "#)?;
//! let policy = Policy::new(config, Events::silent("users"))?;
//! let users = policy.layer(service_fn(|call: Call<u32>| async move {
//!     Ok::<_, Error>(format!("user {}", call.get_ref()))
//! }));
//! assert_eq!(users.oneshot(Call::new(7)).await?, "user 7");
//! # Ok(()) }
//! ```

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use tower::util::Either;
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    DefaultClassifier, Error, Events,
    breaker::{Breaker, BreakerConfig, BreakerLayer, CircuitBreaker},
    bulkhead::{Bulkhead, BulkheadConfig, BulkheadLayer},
    deadline::{AttemptTimeout, AttemptTimeoutLayer, DEFAULT_TIMEOUT, Deadline, DeadlineLayer},
    events::{Observe, ObserveLayer},
    hedge::{Hedge, HedgeConfig, HedgeLayer},
    rate_limit::{GlobalKey, RateLimit, RateLimitConfig, RateLimitLayer, RateLimiter},
    retry::{Retry, RetryBudget, RetryConfig, RetryLayer},
};

/// Every policy for calls to one service. Keys and defaults are listed in
/// `docs/config.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Overall deadline of a call, retries and waits included. Default `"10s"`.
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Bound on each attempt (first try, retry or hedge). Default: none, only
    /// the overall deadline applies.
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Option<Duration>,
    /// Rate limit on calls to the service. Default: none.
    pub rate_limit: Option<RateLimitConfig>,
    /// Concurrency limit on calls to the service. Default: none.
    pub bulkhead: Option<BulkheadConfig>,
    /// Circuit breaker. Default: on, see [`BreakerConfig`].
    pub breaker: BreakerConfig,
    /// Retries and their budget. Default: on, see [`RetryConfig`].
    pub retry: RetryConfig,
    /// Hedged requests. Default: none.
    pub hedge: Option<HedgeConfig>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            timeout: Some(DEFAULT_TIMEOUT),
            attempt_timeout: None,
            rate_limit: None,
            bulkhead: None,
            breaker: BreakerConfig::default(),
            retry: RetryConfig::default(),
            hedge: None,
        }
    }
}

/// A policy config that cannot work; the message names the key and says how
/// to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    /// An error with the given message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl PolicyConfig {
    /// Checks every section; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout == Some(Duration::ZERO) {
            return Err(ConfigError::new(
                "timeout: must be more than 0; remove the key for the default (10s) or set e.g. \"2s\"",
            ));
        }
        if self.attempt_timeout == Some(Duration::ZERO) {
            return Err(ConfigError::new(
                "attempt_timeout: must be more than 0; remove the key to bound only the whole call",
            ));
        }
        if let (Some(attempt), Some(total)) = (self.attempt_timeout, self.timeout)
            && attempt > total
        {
            return Err(ConfigError::new(format!(
                "attempt_timeout: {attempt:?} is longer than timeout {total:?}, so no retry could ever start; \
                 set it below the timeout"
            )));
        }
        if let Some(rate_limit) = &self.rate_limit {
            rate_limit.validate().map_err(ConfigError)?;
        }
        if let Some(bulkhead) = &self.bulkhead {
            bulkhead.validate().map_err(ConfigError)?;
        }
        self.breaker.validate().map_err(ConfigError)?;
        self.retry.validate().map_err(ConfigError)?;
        if let Some(hedge) = &self.hedge {
            hedge.validate().map_err(ConfigError)?;
        }
        Ok(())
    }
}

/// The state one service's policies share across every call: build it once
/// per service and layer every client of that service with it.
#[derive(Debug, Clone)]
pub struct Policy<C = DefaultClassifier> {
    config: PolicyConfig,
    classifier: C,
    events: Events,
    breaker: CircuitBreaker,
    budget: RetryBudget,
    bulkhead: Option<BulkheadLayer>,
    rate_limiter: Option<RateLimiter>,
}

impl Policy {
    /// Validates `config` and builds the shared state, with the
    /// [`DefaultClassifier`].
    pub fn new(config: PolicyConfig, events: Events) -> Result<Self, ConfigError> {
        Self::with_classifier(config, DefaultClassifier, events)
    }
}

impl<C> Policy<C> {
    /// Validates `config` and builds the shared state, classifying outcomes
    /// with `classifier` (for HTTP, [`HttpClassifier`](crate::HttpClassifier)).
    pub fn with_classifier(
        config: PolicyConfig,
        classifier: C,
        events: Events,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let breaker = CircuitBreaker::new(config.breaker.clone(), events.clone());
        let budget = RetryBudget::new(&config.retry.budget);
        let bulkhead = config
            .bulkhead
            .as_ref()
            .map(|b| BulkheadLayer::new(b.clone(), events.clone()));
        let rate_limiter = match &config.rate_limit {
            Some(rate_limit) => Some(RateLimiter::new(rate_limit.clone()).map_err(ConfigError)?),
            None => None,
        };
        Ok(Self {
            config,
            classifier,
            events,
            breaker,
            budget,
            bulkhead,
            rate_limiter,
        })
    }

    /// The config this policy was built from.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// The service's circuit breaker (state, snapshot, manual control).
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The service's retry budget, shared by retries and hedges.
    pub fn budget(&self) -> &RetryBudget {
        &self.budget
    }

    /// The service's bulkhead, if one is configured.
    pub fn bulkhead(&self) -> Option<&BulkheadLayer> {
        self.bulkhead.as_ref()
    }

    /// The reporting handle (service name and observer).
    pub fn events(&self) -> &Events {
        &self.events
    }
}

type Attempts<S, C> = Either<Hedge<AttemptTimeout<S>, C>, AttemptTimeout<S>>;
type Guarded<S, C> = Breaker<Retry<Attempts<S, C>, C>, C>;
type Bounded<S, C> = Either<Bulkhead<Guarded<S, C>>, Guarded<S, C>>;
type Limited<S, C> = Either<RateLimit<Bounded<S, C>, (), GlobalKey>, Bounded<S, C>>;
type Stack<S, C> = Observe<Deadline<Limited<S, C>>, C>;

impl<S, C: Clone> Layer<S> for Policy<C> {
    type Service = PolicyService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        let config = &self.config;
        let attempts = AttemptTimeoutLayer::new(config.attempt_timeout).layer(inner);
        let attempts = match &config.hedge {
            Some(hedge) => Either::Left(
                HedgeLayer::new(
                    *hedge,
                    self.budget.clone(),
                    self.classifier.clone(),
                    self.events.clone(),
                )
                .layer(attempts),
            ),
            None => Either::Right(attempts),
        };
        let retried = RetryLayer::new(
            config.retry.clone(),
            self.budget.clone(),
            self.classifier.clone(),
            self.events.clone(),
        )
        .layer(attempts);
        let guarded =
            BreakerLayer::new(self.breaker.clone(), self.classifier.clone()).layer(retried);
        let bounded = match &self.bulkhead {
            Some(bulkhead) => Either::Left(bulkhead.layer(guarded)),
            None => Either::Right(guarded),
        };
        let limited = match &self.rate_limiter {
            Some(limiter) => Either::Left(
                RateLimitLayer::global(limiter.clone(), self.events.clone()).layer(bounded),
            ),
            None => Either::Right(bounded),
        };
        let deadline = DeadlineLayer::new(config.timeout, self.events.clone());
        // Without a bulkhead or rate limiter inside, nothing waits past the
        // deadline: each attempt is bounded by it and the retry's waits stop
        // at it. The deadline layer then needs no timer of its own.
        let deadline = if self.bulkhead.is_none() && self.rate_limiter.is_none() {
            deadline.enforced_inside()
        } else {
            deadline
        };
        let deadline = deadline.layer(limited);
        PolicyService {
            inner: ObserveLayer::new(self.classifier.clone(), self.events.clone()).layer(deadline),
        }
    }
}

/// A service behind the whole policy stack; built by [`Policy`].
///
/// Backpressure: `poll_ready` is the inner service's readiness, passed
/// through every layer; the bulkhead and rate limiter reject or wait in
/// `call`, not in `poll_ready`, so one full bulkhead never stalls a caller that
/// holds the service.
#[derive(Debug, Clone)]
pub struct PolicyService<S, C = DefaultClassifier> {
    inner: Stack<S, C>,
}

impl<S, C, Req> Service<Req> for PolicyService<S, C>
where
    Stack<S, C>: Service<Req, Error = Error>,
{
    type Response = <Stack<S, C> as Service<Req>>::Response;
    type Error = Error;
    type Future = ResponseFuture<<Stack<S, C> as Service<Req>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ResponseFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    /// Response future of [`PolicyService`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for ResponseFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}
