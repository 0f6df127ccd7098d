//! The retry loop as a state machine.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::{Delays, RetryBudget, RetryConfig};
use crate::{BoxError, Class, Classify, Error, Event, Events, PolicyRequest};

/// The response future of [`Retry`](super::Retry): attempts, backoff
/// sleeps and readiness waits.
///
/// Its state (two copies of the request, the attempt in flight, the backoff
/// timer) lives in one heap allocation: every layer above the retry builds
/// its future around this one and moves it as it returns, and moving a
/// pointer instead of a kilobyte of state halves the memory copying of a
/// call through the whole policy stack.
pub struct ResponseFuture<S, Req, C>
where
    S: Service<Req>,
{
    inner: Pin<Box<Attempts<S, Req, C>>>,
}

impl<S, Req, C> std::fmt::Debug for ResponseFuture<S, Req, C>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

pin_project! {
    /// The attempts of one call; boxed by [`ResponseFuture`], and by the
    /// policy stack's fused future (`crate::policy`), which adds the breaker
    /// and the call's report around it.
    #[project = Projection]
    pub(crate) struct Attempts<S, Req, C>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future>,
        service: S,
        // A pristine copy for future attempts (`None` when the request can't
        // be replayed, or once the last attempt took it).
        request: Option<Req>,
        // The request the next attempt sends.
        next: Option<Req>,
        classifier: C,
        budget: RetryBudget,
        events: Events,
        delays: Delays,
        max_attempts: u32,
        max_delay: Duration,
        attempts: u32,
        attempt_started: Instant,
        // The earlier of the request's deadline and the end of
        // `max_total_duration`: no retry may start at or after it.
        give_up_at: Option<Instant>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // The service is ready: send the next attempt (the first one too,
        // whose readiness `Retry::poll_ready` established).
        Start,
        // An attempt is in flight.
        Calling { #[pin] future: F },
        // Waiting out the backoff before the next attempt.
        Backoff { #[pin] sleep: Sleep },
        // Waiting for the service to be ready for the next attempt; `limit`
        // is set once the wait is found to be real, so that it ends at the
        // deadline (the deadline layer outside may set no timer of its own).
        Ready { #[pin] limit: Option<Sleep> },
        // The output was returned.
        Done,
    }
}

/// What to do with an attempt's result.
enum Next<T> {
    Return(Result<T, Error>),
    Retry { delay: Duration, wake: Instant },
}

impl<S, Req, C> ResponseFuture<S, Req, C>
where
    Req: PolicyRequest,
    S: Service<Req>,
{
    pub(super) fn new(
        service: S,
        req: Req,
        config: &RetryConfig,
        budget: RetryBudget,
        classifier: C,
        events: Events,
    ) -> Self {
        Self {
            inner: Box::pin(Attempts::new(
                service, req, config, budget, classifier, events,
            )),
        }
    }
}

impl<S, Req, C> Future for ResponseFuture<S, Req, C>
where
    Req: PolicyRequest,
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
{
    type Output = Result<S::Response, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<S, Req, C> Attempts<S, Req, C>
where
    Req: PolicyRequest,
    S: Service<Req>,
{
    /// The classifier the attempts are judged by.
    pub(crate) fn classifier(&self) -> &C {
        &self.classifier
    }

    /// The call's attempts, of which the first is sent on the first poll
    /// (`service` must be ready for it).
    pub(crate) fn new(
        service: S,
        req: Req,
        config: &RetryConfig,
        budget: RetryBudget,
        classifier: C,
        events: Events,
    ) -> Self {
        let now = crate::clock::now();
        let total_end = config.max_total_duration.and_then(|d| now.checked_add(d));
        let give_up_at = crate::deadline::earlier(req.deadline(), total_end);
        let (next, request) = if config.max_attempts > 1 {
            // The first attempt sends the request itself and the copy waits:
            // a copy is built to its exact size, while the request may have
            // room for what the layers below add (the deadline header), so
            // sending the copy would regrow its header map on every call.
            match req.try_clone() {
                Some(copy) => (req, Some(copy)),
                None => (req, None),
            }
        } else {
            (req, None)
        };
        Self {
            state: State::Start,
            service,
            request,
            next: Some(next),
            classifier,
            budget,
            events,
            delays: config.delays(),
            max_attempts: config.max_attempts.max(1),
            max_delay: config.max_delay,
            attempts: 0,
            attempt_started: now,
            give_up_at,
        }
    }
}

impl<S, Req, C> Future for Attempts<S, Req, C>
where
    Req: PolicyRequest,
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Ready { mut limit } => match this.service.poll_ready(cx) {
                    Poll::Ready(Ok(())) => this.state.set(State::Start),
                    Poll::Ready(Err(e)) => {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(Error::from_inner(e)));
                    }
                    Poll::Pending => {
                        let Some(at) = *this.give_up_at else {
                            return Poll::Pending;
                        };
                        if limit.is_none() {
                            limit.set(Some(tokio::time::sleep_until(at)));
                        }
                        if let Some(sleep) = limit.as_pin_mut() {
                            ready!(sleep.poll(cx));
                        }
                        this.state.set(State::Done);
                        return Poll::Ready(Err(Error::DeadlineExceeded));
                    }
                },
                StateProj::Start => {
                    let Some(req) = this.next.take() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    *this.attempts += 1;
                    if *this.attempts > 1 {
                        // The first attempt's start is when the call began.
                        *this.attempt_started = crate::clock::now();
                    }
                    let future = this.service.call(req);
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx)).map_err(Error::from_inner);
                    let class = this.classifier.classify(result.as_ref());
                    let attempt = *this.attempts;
                    let latency =
                        crate::clock::now().saturating_duration_since(*this.attempt_started);
                    this.events.emit(|service| Event::Attempt {
                        service,
                        attempt,
                        outcome: class.outcome,
                        latency,
                    });
                    if !class.retryable {
                        // The usual end, returned here rather than through
                        // `decide`: each step the response is passed
                        // through is a copy of it.
                        this.state.set(State::Done);
                        return Poll::Ready(result);
                    }
                    match decide(result, class, &mut this) {
                        Next::Return(result) => {
                            this.state.set(State::Done);
                            return Poll::Ready(result);
                        }
                        Next::Retry { delay, wake } => {
                            this.events.emit(|service| Event::Retry {
                                service,
                                attempt: attempt + 1,
                                delay,
                            });
                            if delay.is_zero() {
                                this.state.set(State::Ready { limit: None });
                            } else {
                                this.state.set(State::Backoff {
                                    sleep: tokio::time::sleep_until(wake),
                                });
                            }
                        }
                    }
                }
                StateProj::Backoff { sleep } => {
                    ready!(sleep.poll(cx));
                    this.state.set(State::Ready { limit: None });
                }
                StateProj::Done => return Poll::Ready(Err(polled_after_completion())),
            }
        }
    }
}

fn polled_after_completion() -> Error {
    Error::Upstream("retry future polled after completion".into())
}

/// The retry decision for one finished attempt whose outcome is retryable
/// (see the module docs).
fn decide<S, Req, C>(
    result: Result<S::Response, Error>,
    class: Class,
    this: &mut Projection<'_, S, Req, C>,
) -> Next<S::Response>
where
    Req: PolicyRequest,
    S: Service<Req>,
{
    let attempts = *this.attempts;
    let max_attempts = *this.max_attempts;
    let exhausted = |result: Result<S::Response, Error>| match result {
        // With retries off (one attempt allowed) errors pass through as they are.
        Err(last) if max_attempts > 1 => Err(Error::RetriesExhausted {
            attempts,
            last: Box::new(last),
        }),
        other => other,
    };
    if attempts >= max_attempts {
        return Next::Return(exhausted(result));
    }
    let Some(pristine) = this.request.as_ref() else {
        // Not replayable: the outcome stands as it is.
        return Next::Return(result);
    };
    let delay = match class.retry_after {
        Some(asked) if asked <= *this.max_delay => asked,
        // The upstream asks for more patience than we are configured for.
        Some(_) => return Next::Return(exhausted(result)),
        None => this.delays.next_delay(),
    };
    let Some(wake) = crate::clock::now().checked_add(delay) else {
        return Next::Return(exhausted(result));
    };
    if this.give_up_at.is_some_and(|limit| wake >= limit) {
        return Next::Return(exhausted(result));
    }
    let next = if attempts + 1 < max_attempts {
        pristine.try_clone()
    } else {
        this.request.take()
    };
    let Some(next) = next else {
        return Next::Return(result);
    };
    if !this.budget.withdraw() {
        this.events.emit(|service| Event::Rejected {
            service,
            policy: "retry",
            kind: "budget-exhausted",
        });
        return Next::Return(result.map_err(|last| Error::BudgetExhausted {
            attempts,
            last: Box::new(last),
        }));
    }
    *this.next = Some(next);
    Next::Retry { delay, wake }
}
