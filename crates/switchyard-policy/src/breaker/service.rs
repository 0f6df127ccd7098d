//! The tower layer around a [`CircuitBreaker`].

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::{CircuitBreaker, Permit};
use crate::{BoxError, Classify, DefaultClassifier, Error, events::Event};

/// Puts a [`CircuitBreaker`] in front of a service.
///
/// Every service the layer builds shares the one breaker it was given.
#[derive(Debug, Clone)]
pub struct BreakerLayer<C = DefaultClassifier> {
    breaker: CircuitBreaker,
    classifier: C,
}

impl<C> BreakerLayer<C> {
    /// A layer guarding services with `breaker`, judging results with
    /// `classifier`.
    pub fn new(breaker: CircuitBreaker, classifier: C) -> Self {
        Self {
            breaker,
            classifier,
        }
    }
}

impl<S, C: Clone> Layer<S> for BreakerLayer<C> {
    type Service = Breaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Breaker::new(inner, self.breaker.clone(), self.classifier.clone())
    }
}

/// A service guarded by a circuit breaker.
///
/// `call` asks the breaker for a permit: when refused it answers
/// [`Error::BreakerOpen`] at once, without calling the inner service, and
/// reports [`Event::Rejected`]; otherwise it calls the inner service, times
/// the call and records the classified outcome.
///
/// Backpressure: `poll_ready` passes the inner service's readiness through
/// and reserves no permit. The breaker is consulted in `call`, so a caller
/// that waited for readiness is still refused if the breaker opened in the
/// meantime, and an idle ready service never holds a half-open probe slot.
#[derive(Debug, Clone)]
pub struct Breaker<S, C = DefaultClassifier> {
    inner: S,
    breaker: CircuitBreaker,
    classifier: C,
}

impl<S, C> Breaker<S, C> {
    /// Guards `inner` with `breaker`, judging results with `classifier`.
    pub fn new(inner: S, breaker: CircuitBreaker, classifier: C) -> Self {
        Self {
            inner,
            breaker,
            classifier,
        }
    }

    /// The breaker this service reports to.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, Req> Service<Req> for Breaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match admit(&self.breaker) {
            Ok(permit) => ResponseFuture {
                kind: Kind::Called {
                    future: self.inner.call(req),
                },
                permit: Some(permit),
                classifier: Some(self.classifier.clone()),
                start: crate::clock::now(),
            },
            Err(retry_after) => ResponseFuture {
                kind: Kind::Rejected { retry_after },
                permit: None,
                classifier: None,
                start: crate::clock::now(),
            },
        }
    }
}

/// A permit for one call, or the refusal (reported as a rejection) with
/// the time until the breaker lets a call through: the `retry_after` of
/// the [`Error::BreakerOpen`] the caller answers with.
pub(crate) fn admit(breaker: &CircuitBreaker) -> Result<Permit, Duration> {
    breaker.try_acquire().map_err(|err| {
        breaker.events().emit(|service| Event::Rejected {
            service,
            policy: "breaker",
            kind: err.kind(),
        });
        err.retry_after().unwrap_or(Duration::ZERO)
    })
}

pin_project! {
    /// The response future of [`Breaker`].
    ///
    /// Dropping it before it completes drops the permit: for a half-open
    /// probe that counts as a failure (see [`Permit`]).
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F>,
        permit: Option<Permit>,
        classifier: Option<C>,
        start: Instant,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] future: F },
        Rejected { retry_after: Duration },
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("permit", &self.permit)
            .finish_non_exhaustive()
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Rejected { retry_after } => Poll::Ready(Err(Error::BreakerOpen {
                retry_after: *retry_after,
            })),
            KindProj::Called { future } => {
                let result = ready!(future.poll(cx)).map_err(Error::from_inner);
                if let (Some(permit), Some(classifier)) =
                    (this.permit.take(), this.classifier.as_ref())
                {
                    let now = crate::clock::now();
                    let class = classifier.classify(result.as_ref());
                    permit.record_at(
                        class.outcome,
                        now.saturating_duration_since(*this.start),
                        now,
                    );
                }
                Poll::Ready(result)
            }
        }
    }
}
