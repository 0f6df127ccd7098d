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
//! Without a rate limit, bulkhead or hedge (the defaults), [`Policy::layer`]
//! builds the stack fused: the same steps in the same order, done by one
//! service with one future rather than by seven nested around the attempt
//! timeout. See [`Fused`] for why.
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
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use tower::util::Either;
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    BoxError, Classify, DefaultClassifier, Error, Events, PolicyRequest,
    breaker::{Breaker, BreakerConfig, BreakerLayer, CircuitBreaker, Permit, admit},
    bulkhead::{Bulkhead, BulkheadConfig, BulkheadLayer},
    deadline::{
        AttemptTimeout, AttemptTimeoutLayer, DEFAULT_TIMEOUT, Deadline, DeadlineLayer, earlier,
        report_late,
    },
    events::{Observe, ObserveLayer, Report},
    hedge::{Hedge, HedgeConfig, HedgeLayer},
    rate_limit::{GlobalKey, RateLimit, RateLimitConfig, RateLimitLayer, RateLimiter},
    retry::{Attempts, Retry, RetryBudget, RetryConfig, RetryLayer},
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

type Hedged<S, C> = Either<Hedge<AttemptTimeout<S>, C>, AttemptTimeout<S>>;
type Guarded<S, C> = Breaker<Retry<Hedged<S, C>, C>, C>;
type Bounded<S, C> = Either<Bulkhead<Guarded<S, C>>, Guarded<S, C>>;
type Limited<S, C> = Either<RateLimit<Bounded<S, C>, (), GlobalKey>, Bounded<S, C>>;
type Stack<S, C> = Observe<Deadline<Limited<S, C>>, C>;

impl<S, C: Clone> Layer<S> for Policy<C> {
    type Service = PolicyService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        let fused =
            self.config.hedge.is_none() && self.bulkhead.is_none() && self.rate_limiter.is_none();
        self.build(inner, fused)
    }
}

impl<C: Clone> Policy<C> {
    /// The stack as nested layers, also where [`layer`](Layer::layer)
    /// fuses it: for the tests that hold the two forms to one behaviour.
    #[doc(hidden)]
    pub fn layer_nested<S>(&self, inner: S) -> PolicyService<S, C> {
        self.build(inner, false)
    }

    fn build<S>(&self, inner: S, fused: bool) -> PolicyService<S, C> {
        let config = &self.config;
        let attempts = AttemptTimeoutLayer::new(config.attempt_timeout).layer(inner);
        if fused {
            return PolicyService {
                inner: Layers::Fused(Fused {
                    inner: attempts,
                    timeout: config.timeout,
                    retry: Arc::new(config.retry.clone()),
                    breaker: self.breaker.clone(),
                    budget: self.budget.clone(),
                    classifier: self.classifier.clone(),
                    events: self.events.clone(),
                }),
            };
        }
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
            inner: Layers::Stacked(
                ObserveLayer::new(self.classifier.clone(), self.events.clone()).layer(deadline),
            ),
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
    inner: Layers<S, C>,
}

#[derive(Debug, Clone)]
enum Layers<S, C> {
    Fused(Fused<S, C>),
    Stacked(Stack<S, C>),
}

impl<S, C, Req> Service<Req> for PolicyService<S, C>
where
    Req: PolicyRequest,
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response> + Clone,
    Stack<S, C>: Service<Req, Response = S::Response, Error = Error>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<
        FusedFuture<AttemptTimeout<S>, Req, C>,
        <Stack<S, C> as Service<Req>>::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match &mut self.inner {
            Layers::Fused(fused) => fused.poll_ready(cx),
            Layers::Stacked(stack) => stack.poll_ready(cx),
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ResponseFuture {
            inner: match &mut self.inner {
                Layers::Fused(fused) => Inner::Fused {
                    future: fused.call(req),
                },
                Layers::Stacked(stack) => Inner::Stacked {
                    future: stack.call(req),
                },
            },
        }
    }
}

pin_project! {
    /// Response future of [`PolicyService`].
    #[derive(Debug)]
    pub struct ResponseFuture<A, B> {
        #[pin]
        inner: Inner<A, B>,
    }
}

pin_project! {
    #[project = InnerProj]
    #[derive(Debug)]
    enum Inner<A, B> {
        Fused { #[pin] future: A },
        Stacked { #[pin] future: B },
    }
}

impl<A, B> Future for ResponseFuture<A, B>
where
    A: Future,
    B: Future<Output = A::Output>,
{
    type Output = A::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            InnerProj::Fused { future } => future.poll(cx),
            InnerProj::Stacked { future } => future.poll(cx),
        }
    }
}

/// The default stack (deadline, breaker, retry with its budget, attempt
/// timeout, the call's report) as one service: what the layers do, in
/// their order, with their parts (the deadline's [`earlier`], the
/// breaker's [`admit`] and [`Permit`], the retry's [`Attempts`], the
/// report of [`Observe`]).
///
/// Why not the layers themselves: each layer's future wraps the one inside
/// it, so every poll of a call goes down through all of them, and the
/// response, moved out of each on return, is copied once per layer. On the
/// gateway's request path those nested polls, drops and copies cost more
/// instructions than the policies' own logic, a sixth of what the proxy
/// does per request (`bench/instructions.sh`). Fused, the call is one
/// future in one allocation around the attempt (`FusedFuture`, `Running`,
/// the retry's `Attempts`, each a plain match that the compiler inlines).
#[derive(Debug, Clone)]
struct Fused<S, C> {
    inner: AttemptTimeout<S>,
    timeout: Option<Duration>,
    retry: Arc<RetryConfig>,
    breaker: CircuitBreaker,
    budget: RetryBudget,
    classifier: C,
    events: Events,
}

impl<S, C, Req> Service<Req> for Fused<S, C>
where
    Req: PolicyRequest,
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response> + Clone,
{
    type Response = S::Response;
    type Error = Error;
    type Future = FusedFuture<AttemptTimeout<S>, Req, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let now = crate::clock::now();
        // One instant for the call's report and the breaker's latency (the
        // layers read the clock once each; in the gateway, which caches
        // the clock per poll, that is the same instant).
        let report = Report::begin(&self.events, || now);
        let refused = |refusal, report: Option<Report>| FusedFuture {
            state: FusedState::Refused {
                refusal,
                report: report.map(|report| (report, self.classifier.clone())),
            },
        };
        if let Some(at) = earlier(req.deadline(), self.timeout.map(|t| now + t)) {
            if at <= now {
                report_late(&self.events);
                return refused(Refusal::Late, report);
            }
            req.set_deadline(at);
        }
        let permit = match admit(&self.breaker) {
            Ok(permit) => permit,
            Err(retry_after) => return refused(Refusal::BreakerOpen { retry_after }, report),
        };
        self.budget.deposit();
        // As the retry layer does: the readied service goes into the future,
        // the clone stays here for the next `poll_ready`.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        let running = Box::pin(Running {
            attempts: Attempts::new(
                service,
                req,
                &self.retry,
                self.budget.clone(),
                self.classifier.clone(),
                self.events.clone(),
            ),
            permit: Some(permit),
            start: now,
            report,
        });
        FusedFuture {
            state: FusedState::Running(running),
        }
    }
}

/// The future of [`Fused`]: the call under way, or refused before any
/// attempt (deadline passed, breaker open). Public only as part of
/// [`PolicyService`]'s future type; it cannot be named outside the crate.
pub struct FusedFuture<S, Req, C>
where
    S: Service<Req>,
{
    state: FusedState<S, Req, C>,
}

enum FusedState<S, Req, C>
where
    S: Service<Req>,
{
    Running(Pin<Box<Running<S, Req, C>>>),
    Refused {
        refusal: Refusal,
        // Taken by the first poll.
        report: Option<(Report, C)>,
    },
}

/// Why a call was refused before any attempt. Its error is made at each
/// poll, as the deadline and breaker layers make theirs.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Late,
    BreakerOpen { retry_after: Duration },
}

impl Refusal {
    fn error(self) -> Error {
        match self {
            Self::Late => Error::DeadlineExceeded,
            Self::BreakerOpen { retry_after } => Error::BreakerOpen { retry_after },
        }
    }
}

// Nothing in it is pinned in place: the attempts are boxed.
impl<S: Service<Req>, Req, C> Unpin for FusedFuture<S, Req, C> {}

impl<S, Req, C> std::fmt::Debug for FusedFuture<S, Req, C>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FusedFuture").finish_non_exhaustive()
    }
}

impl<S, Req, C> Future for FusedFuture<S, Req, C>
where
    Req: PolicyRequest,
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            FusedState::Running(running) => running.as_mut().poll(cx),
            FusedState::Refused { refusal, report } => {
                let result = Err(refusal.error());
                if let Some((report, classifier)) = report.take() {
                    let outcome = classifier.classify(result.as_ref()).outcome;
                    report.end(outcome, crate::clock::now());
                }
                Poll::Ready(result)
            }
        }
    }
}

pin_project! {
    /// A call [`Fused`] admitted: its attempts, then the breaker's record
    /// and the call's report of the outcome.
    struct Running<S, Req, C>
    where
        S: Service<Req>,
    {
        #[pin]
        attempts: Attempts<S, Req, C>,
        permit: Option<Permit>,
        start: tokio::time::Instant,
        report: Option<Report>,
    }
}

impl<S, Req, C> Future for Running<S, Req, C>
where
    Req: PolicyRequest,
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let result = ready!(this.attempts.as_mut().poll(cx));
        let (permit, report) = (this.permit.take(), this.report.take());
        if permit.is_some() || report.is_some() {
            let classifier = this.attempts.as_ref().get_ref().classifier();
            let outcome = classifier.classify(result.as_ref()).outcome;
            let now = crate::clock::now();
            if let Some(permit) = permit {
                permit.record_at(outcome, now.saturating_duration_since(*this.start), now);
            }
            if let Some(report) = report {
                report.end(outcome, now);
            }
        }
        Poll::Ready(result)
    }
}
