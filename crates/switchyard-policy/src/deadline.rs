//! Deadlines: one for the whole call, carried with the request, and an
//! optional one per attempt.
//!
//! [`Deadline`] sets (or shortens) the request's deadline to `now + timeout`
//! and fails the call with [`Error::DeadlineExceeded`] when it passes. A
//! request that arrives with a deadline already set (propagated from the
//! previous hop) keeps the earlier of the two. A call that starts with no time
//! left fails at once, without reaching the inner service.
//!
//! [`AttemptTimeout`] bounds each attempt (it sits inside retry and hedging)
//! by `min(attempt_timeout, time left until the deadline)`.
//!
//! The inner service reads the time left with
//! [`PolicyRequest::remaining`], so a
//! transport can propagate it to the next hop.
//!
//! Backpressure: both layers pass `poll_ready` through unchanged; the clock
//! starts in `call`.
//!
//! ```
//! use std::time::Duration;
//! use switchyard_policy::{deadline::DeadlineLayer, Call, PolicyRequest, Events, Error};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = DeadlineLayer::new(Some(Duration::from_millis(200)), Events::silent("users"))
//!     .layer(service_fn(|call: Call<&'static str>| async move {
//!         // The transport would send this as a header to the next hop.
//!         let left = call.remaining().unwrap();
//!         assert!(left <= Duration::from_millis(200));
//!         Ok::<_, Error>(left)
//!     }));
//! svc.oneshot(Call::new("get")).await.unwrap();
//! # }
//! ```

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::{BoxError, Error, Event, Events, PolicyRequest};

/// Default overall timeout of a call, when a config sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sets the call's deadline; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    timeout: Option<Duration>,
    events: Events,
    timer: bool,
}

impl DeadlineLayer {
    /// A layer giving each call `timeout` (none: only a deadline the request
    /// already carries is enforced).
    pub fn new(timeout: Option<Duration>, events: Events) -> Self {
        Self {
            timeout,
            events,
            timer: true,
        }
    }

    /// Carries the deadline and refuses a call that starts without time
    /// left, but sets no timer: for a stack whose layers inside bound every
    /// wait by the carried deadline themselves (each attempt's bound, the
    /// retry's waits). [`Policy`](crate::Policy) uses it when no bulkhead
    /// or rate limiter waits inside, saving one timer per call.
    pub(crate) fn enforced_inside(mut self) -> Self {
        self.timer = false;
        self
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            timeout: self.timeout,
            events: self.events.clone(),
            timer: self.timer,
        }
    }
}

/// Enforces the call's deadline; built by [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    timeout: Option<Duration>,
    events: Events,
    timer: bool,
}

impl<S> Deadline<S> {
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

impl<S, Req> Service<Req> for Deadline<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: PolicyRequest,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_inner)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let now = crate::clock::now();
        let deadline = earlier(req.deadline(), self.timeout.map(|t| now + t));
        if let Some(at) = deadline {
            req.set_deadline(at);
        }
        start(
            &mut self.inner,
            req,
            deadline,
            now,
            Some(&self.events),
            self.timer,
        )
    }
}

/// Bounds each attempt; see the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub struct AttemptTimeoutLayer {
    timeout: Option<Duration>,
}

impl AttemptTimeoutLayer {
    /// A layer bounding each attempt by `timeout` and by the call's deadline.
    pub fn new(timeout: Option<Duration>) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for AttemptTimeoutLayer {
    type Service = AttemptTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AttemptTimeout {
            inner,
            timeout: self.timeout,
        }
    }
}

/// Bounds one attempt; built by [`AttemptTimeoutLayer`].
#[derive(Debug, Clone)]
pub struct AttemptTimeout<S> {
    inner: S,
    timeout: Option<Duration>,
}

impl<S, Req> Service<Req> for AttemptTimeout<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: PolicyRequest,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let carried = req.deadline();
        if carried.is_none() && self.timeout.is_none() {
            // The common case for a service without deadlines: no timer at all.
            return ResponseFuture::new(Some(self.inner.call(req)), None);
        }
        let now = crate::clock::now();
        let bound = earlier(carried, self.timeout.map(|t| now + t));
        // The attempt bound never moves the request's deadline: only the
        // overall deadline travels to the next hop. Rejections here are
        // reported by the retry layer around it.
        start(&mut self.inner, req, bound, now, None, true)
    }
}

/// The earlier of two instants, either of which may be absent.
pub(crate) fn earlier(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Reports a call refused because its deadline had passed when it came.
pub(crate) fn report_late(events: &Events) {
    events.emit(|service| Event::Rejected {
        service,
        policy: "deadline",
        kind: "deadline-exceeded",
    });
}

fn start<S, Req>(
    inner: &mut S,
    req: Req,
    bound: Option<Instant>,
    now: Instant,
    events: Option<&Events>,
    timer: bool,
) -> ResponseFuture<S::Future>
where
    S: Service<Req>,
{
    match bound {
        Some(at) if at <= now => {
            if let Some(events) = events {
                report_late(events);
            }
            ResponseFuture::new(None, None)
        }
        Some(at) => ResponseFuture::new(
            Some(inner.call(req)),
            timer.then(|| tokio::time::sleep_until(at)),
        ),
        None => ResponseFuture::new(Some(inner.call(req)), None),
    }
}

pin_project! {
    /// Response future of [`Deadline`] and [`AttemptTimeout`]: the inner
    /// future raced against the deadline's timer.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        #[pin]
        sleep: Option<Sleep>,
    }
}

impl<F> ResponseFuture<F> {
    fn new(inner: Option<F>, sleep: Option<Sleep>) -> Self {
        Self { inner, sleep }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(Error::DeadlineExceeded));
        };
        if let Poll::Ready(out) = inner.poll(cx) {
            return Poll::Ready(out.map_err(Error::from_inner));
        }
        match this.sleep.as_pin_mut() {
            Some(sleep) => sleep.poll(cx).map(|()| Err(Error::DeadlineExceeded)),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::Call;

    fn counting_sleeper(
        calls: Arc<AtomicUsize>,
        delay: Duration,
    ) -> impl Service<Call<u32>, Response = Option<Duration>, Error = Error, Future: Send> + Clone
    {
        service_fn(move |call: Call<u32>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let left = call.remaining();
                tokio::time::sleep(delay).await;
                Ok::<_, Error>(left)
            }
        })
    }

    // Scenario 48: a call that starts with no time left fails at once without
    // reaching the inner service; the remaining time is visible to it.
    #[tokio::test(start_paused = true)]
    async fn s48_no_time_left_fails_without_calling_inner() {
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = DeadlineLayer::new(Some(Duration::from_secs(1)), Events::silent("t"))
            .layer(counting_sleeper(calls.clone(), Duration::ZERO));

        let mut late = Call::new(1);
        late.set_deadline(Instant::now());
        let err = svc.clone().oneshot(late).await.unwrap_err();
        assert!(matches!(err, Error::DeadlineExceeded));
        assert_eq!(calls.load(Ordering::SeqCst), 0);

        let left = svc.oneshot(Call::new(2)).await.unwrap();
        assert_eq!(left, Some(Duration::from_secs(1)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn keeps_the_earlier_of_carried_and_configured_deadline() {
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = DeadlineLayer::new(Some(Duration::from_secs(5)), Events::silent("t"))
            .layer(counting_sleeper(calls.clone(), Duration::ZERO));
        let mut call = Call::new(1);
        call.set_deadline(Instant::now() + Duration::from_millis(300));
        assert_eq!(
            svc.clone().oneshot(call).await.unwrap(),
            Some(Duration::from_millis(300))
        );

        let mut call = Call::new(1);
        call.set_deadline(Instant::now() + Duration::from_secs(30));
        assert_eq!(
            svc.oneshot(call).await.unwrap(),
            Some(Duration::from_secs(5))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slow_call_times_out_at_the_deadline() {
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = DeadlineLayer::new(Some(Duration::from_millis(100)), Events::silent("t"))
            .layer(counting_sleeper(calls, Duration::from_secs(1)));
        let start = Instant::now();
        let err = svc.oneshot(Call::new(1)).await.unwrap_err();
        assert!(matches!(err, Error::DeadlineExceeded));
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn attempt_timeout_is_bounded_by_the_deadline_and_keeps_it() {
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = AttemptTimeoutLayer::new(Some(Duration::from_millis(500)))
            .layer(counting_sleeper(calls.clone(), Duration::from_secs(1)));
        let start = Instant::now();
        let err = svc.clone().oneshot(Call::new(1)).await.unwrap_err();
        assert!(matches!(err, Error::DeadlineExceeded));
        assert_eq!(start.elapsed(), Duration::from_millis(500));

        let mut call = Call::new(1);
        call.set_deadline(Instant::now() + Duration::from_millis(200));
        let start = Instant::now();
        assert!(svc.clone().oneshot(call).await.is_err());
        assert_eq!(start.elapsed(), Duration::from_millis(200));

        // No timeout and no deadline: no timer, the call runs its course.
        let svc =
            AttemptTimeoutLayer::new(None).layer(counting_sleeper(calls, Duration::from_secs(1)));
        assert_eq!(svc.oneshot(Call::new(1)).await.unwrap(), None);
    }
}
