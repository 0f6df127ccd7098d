//! Fallback: answer in place of a failed call, for the failures chosen.
//!
//! A [`Fallback`] passes each call to the inner service. When the call fails
//! with an error whose kind is in its [`FallbackOn`] set, it answers from its
//! [`Source`] instead and reports `Event::Fallback { kind }` (the
//! [`Error::kind`] of the failure it replaced). Successes, and errors of kinds
//! not in the set, pass through unchanged.
//!
//! The kinds ([`FallbackKind`]) are `breaker-open`, `bulkhead-full`,
//! `rate-limited`, `deadline-exceeded` and `upstream`. A retry error
//! (`retries-exhausted`, `budget-exhausted`) counts as the kind of its root
//! cause, the last attempt's error ([`Error::root`]): retries that ran out on
//! upstream failures count as `upstream`. By default ([`FallbackOn::default`])
//! every kind triggers the fallback.
//!
//! Three sources:
//!
//! - [`FallbackLayer::value`]: a fixed response, cloned for each fallback;
//! - [`FallbackLayer::from_fn`]: a function of the error, `Fn(&Error) -> Res`;
//! - [`FallbackLayer::service`]: another service, called with a copy of the
//!   request. The copy is taken with [`PolicyRequest::try_clone`] before the
//!   primary call (which consumes the request), on every call; a request that
//!   can't be copied gets no fallback and its error passes through. If the
//!   fallback service fails too, its error is returned.
//!
//! Anything else implements [`Source`].
//!
//! # Backpressure
//!
//! `poll_ready` passes the inner service's readiness through, and an error
//! from it is returned as it is (there is no request yet to answer for). A
//! fallback service is driven to readiness only when a call needs it.
//!
//! # Order
//!
//! Fallback sits outermost in a policy stack, so that it sees the final
//! outcome of a call after the deadline, bulkhead, breaker and retries.
//!
//! # Example
//!
//! ```
//! use switchyard_policy::{Error, Events};
//! use switchyard_policy::fallback::{FallbackKind, FallbackLayer, FallbackOn};
//! use tower::{Service, ServiceExt, service_fn};
//! use tower_layer::Layer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let on: FallbackOn = [FallbackKind::BreakerOpen, FallbackKind::Upstream].into_iter().collect();
//! let layer = FallbackLayer::value(on, "cached recommendations").with_events(Events::silent("recs"));
//! let mut svc = layer.layer(service_fn(|fail: bool| async move {
//!     if fail {
//!         Err(Error::BreakerOpen { retry_after: std::time::Duration::from_secs(5) })
//!     } else {
//!         Ok("fresh recommendations")
//!     }
//! }));
//!
//! assert_eq!(svc.ready().await.unwrap().call(false).await.unwrap(), "fresh recommendations");
//! assert_eq!(svc.ready().await.unwrap().call(true).await.unwrap(), "cached recommendations");
//! # }
//! ```

use std::{
    fmt,
    future::{Future, Ready, ready},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use tower_layer::Layer;
use tower_service::Service;

use crate::{BoxError, Error, Events, PolicyRequest, events::Event};

#[cfg(test)]
mod tests;

// === impl FallbackKind ===

/// A kind of failure a fallback can answer for.
///
/// In config, written as [`Error::kind`] names (`"breaker-open"`); the
/// snake_case spelling (`"breaker_open"`) is accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FallbackKind {
    /// The circuit breaker rejected the call.
    #[serde(alias = "breaker_open")]
    BreakerOpen,
    /// The bulkhead was full.
    #[serde(alias = "bulkhead_full")]
    BulkheadFull,
    /// The rate limiter had no permit.
    #[serde(alias = "rate_limited")]
    RateLimited,
    /// The deadline passed.
    #[serde(alias = "deadline_exceeded")]
    DeadlineExceeded,
    /// The upstream failed (also when retries ran out on upstream failures).
    Upstream,
}

impl FallbackKind {
    /// Every kind.
    pub const ALL: [FallbackKind; 5] = [
        FallbackKind::BreakerOpen,
        FallbackKind::BulkheadFull,
        FallbackKind::RateLimited,
        FallbackKind::DeadlineExceeded,
        FallbackKind::Upstream,
    ];

    /// The stable name, as [`Error::kind`] spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackKind::BreakerOpen => "breaker-open",
            FallbackKind::BulkheadFull => "bulkhead-full",
            FallbackKind::RateLimited => "rate-limited",
            FallbackKind::DeadlineExceeded => "deadline-exceeded",
            FallbackKind::Upstream => "upstream",
        }
    }

    /// The kind of `err`, judged by its root cause ([`Error::root`]).
    pub fn of(err: &Error) -> Option<FallbackKind> {
        match err.root() {
            Error::BreakerOpen { .. } => Some(FallbackKind::BreakerOpen),
            Error::BulkheadFull { .. } => Some(FallbackKind::BulkheadFull),
            Error::RateLimited { .. } => Some(FallbackKind::RateLimited),
            Error::DeadlineExceeded => Some(FallbackKind::DeadlineExceeded),
            Error::Upstream(_) => Some(FallbackKind::Upstream),
            // `root` never returns a retry error; a kind added later answers
            // no fallback until it is given a `FallbackKind`.
            _ => None,
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for FallbackKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl FallbackOn ===

/// The set of [`FallbackKind`]s that trigger a fallback; every kind by default.
///
/// In config, a list of kind names: `on = ["breaker-open", "upstream"]`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "Vec<FallbackKind>", into = "Vec<FallbackKind>")]
pub struct FallbackOn(u8);

impl FallbackOn {
    /// Every kind.
    pub const ALL: FallbackOn = FallbackOn(0b1_1111);
    /// No kind: the fallback never fires.
    pub const NONE: FallbackOn = FallbackOn(0);

    /// This set plus `kind`.
    pub fn with(self, kind: FallbackKind) -> Self {
        FallbackOn(self.0 | kind.bit())
    }

    /// This set without `kind`.
    pub fn without(self, kind: FallbackKind) -> Self {
        FallbackOn(self.0 & !kind.bit())
    }

    /// True when `kind` is in the set.
    pub fn contains(self, kind: FallbackKind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// True when the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// True when `err` should be answered by the fallback.
    pub fn matches(self, err: &Error) -> bool {
        FallbackKind::of(err).is_some_and(|kind| self.contains(kind))
    }

    /// The kinds in the set.
    pub fn kinds(self) -> impl Iterator<Item = FallbackKind> {
        FallbackKind::ALL
            .into_iter()
            .filter(move |kind| self.contains(*kind))
    }
}

impl Default for FallbackOn {
    fn default() -> Self {
        FallbackOn::ALL
    }
}

impl fmt::Debug for FallbackOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.kinds()).finish()
    }
}

impl FromIterator<FallbackKind> for FallbackOn {
    fn from_iter<I: IntoIterator<Item = FallbackKind>>(iter: I) -> Self {
        iter.into_iter().fold(FallbackOn::NONE, FallbackOn::with)
    }
}

impl From<Vec<FallbackKind>> for FallbackOn {
    fn from(kinds: Vec<FallbackKind>) -> Self {
        kinds.into_iter().collect()
    }
}

impl From<FallbackOn> for Vec<FallbackKind> {
    fn from(on: FallbackOn) -> Self {
        on.kinds().collect()
    }
}

// === impl Source ===

/// Where a fallback's answer comes from.
///
/// Implemented by [`Value`], [`FromFn`] and [`FromService`].
pub trait Source<Req> {
    /// The response the fallback gives (the inner service's response type).
    type Response;
    /// What a call keeps from its request for the fallback (`()`, or a copy
    /// of the request).
    type Saved;
    /// The future answering in place of the failed call.
    type Future: Future<Output = Result<Self::Response, Error>>;

    /// Called before the request goes to the inner service; `None` means this
    /// call can't fall back (its error will pass through).
    fn save(&self, req: &Req) -> Option<Self::Saved>;

    /// The answer for a call that failed with `err`.
    fn recover(&self, saved: Self::Saved, err: &Error) -> Self::Future;
}

/// A fixed fallback response, cloned for each use.
#[derive(Debug, Clone)]
pub struct Value<T>(pub T);

impl<Req, T: Clone> Source<Req> for Value<T> {
    type Response = T;
    type Saved = ();
    type Future = Ready<Result<T, Error>>;

    fn save(&self, _: &Req) -> Option<()> {
        Some(())
    }

    fn recover(&self, (): (), _: &Error) -> Self::Future {
        ready(Ok(self.0.clone()))
    }
}

/// A fallback computed from the error.
#[derive(Debug, Clone)]
pub struct FromFn<F>(pub F);

impl<Req, F, Res> Source<Req> for FromFn<F>
where
    F: Fn(&Error) -> Res,
{
    type Response = Res;
    type Saved = ();
    type Future = Ready<Result<Res, Error>>;

    fn save(&self, _: &Req) -> Option<()> {
        Some(())
    }

    fn recover(&self, (): (), err: &Error) -> Self::Future {
        ready(Ok((self.0)(err)))
    }
}

/// A fallback service, called with a copy of the request.
#[derive(Debug, Clone)]
pub struct FromService<S>(pub S);

impl<Req, S> Source<Req> for FromService<S>
where
    Req: PolicyRequest,
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Saved = Req;
    type Future = ServiceFuture<S, Req>;

    fn save(&self, req: &Req) -> Option<Req> {
        req.try_clone()
    }

    fn recover(&self, req: Req, _: &Error) -> Self::Future {
        ServiceFuture {
            state: ServiceState::Readying {
                svc: self.0.clone(),
                req: Some(req),
            },
        }
    }
}

pin_project! {
    /// The future of a [`FromService`] fallback: readies a clone of the
    /// fallback service, then calls it.
    pub struct ServiceFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: ServiceState<S, Req>,
    }
}

pin_project! {
    #[project = ServiceStateProj]
    enum ServiceState<S, Req>
    where
        S: Service<Req>,
    {
        Readying { svc: S, req: Option<Req> },
        Called { #[pin] fut: S::Future },
    }
}

impl<S: Service<Req>, Req> fmt::Debug for ServiceFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceFuture").finish_non_exhaustive()
    }
}

impl<S, Req> Future for ServiceFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                ServiceStateProj::Readying { svc, req } => {
                    if let Err(err) = std::task::ready!(svc.poll_ready(cx)) {
                        return Poll::Ready(Err(Error::from_inner(err)));
                    }
                    let Some(req) = req.take() else {
                        panic!("fallback ServiceFuture polled after completion");
                    };
                    let fut = svc.call(req);
                    this.state.set(ServiceState::Called { fut });
                }
                ServiceStateProj::Called { fut } => {
                    return fut.poll(cx).map_err(Error::from_inner);
                }
            }
        }
    }
}

// === impl FallbackLayer ===

/// Wraps services in a [`Fallback`].
#[derive(Clone, Debug)]
pub struct FallbackLayer<F> {
    on: FallbackOn,
    source: F,
    events: Events,
}

impl<F> FallbackLayer<F> {
    /// Answers from `source` for the failures in `on`.
    pub fn new(on: FallbackOn, source: F) -> Self {
        Self {
            on,
            source,
            events: Events::default(),
        }
    }

    /// Reports each fallback through `events` (silent by default).
    pub fn with_events(mut self, events: Events) -> Self {
        self.events = events;
        self
    }

    /// The failures that trigger the fallback.
    pub fn on(&self) -> FallbackOn {
        self.on
    }
}

impl<F> FallbackLayer<FromFn<F>> {
    /// Answers with `f(&error)` for the failures in `on`.
    pub fn from_fn<Res>(on: FallbackOn, f: F) -> Self
    where
        F: Fn(&Error) -> Res,
    {
        Self::new(on, FromFn(f))
    }
}

impl<T> FallbackLayer<Value<T>> {
    /// Answers with a clone of `value` for the failures in `on`.
    pub fn value(on: FallbackOn, value: T) -> Self {
        Self::new(on, Value(value))
    }
}

impl<S> FallbackLayer<FromService<S>> {
    /// Answers by calling `svc` with a copy of the request for the failures
    /// in `on`; see the [module docs](self) for requests that can't be copied.
    pub fn service(on: FallbackOn, svc: S) -> Self {
        Self::new(on, FromService(svc))
    }
}

impl<S, F: Clone> Layer<S> for FallbackLayer<F> {
    type Service = Fallback<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback {
            inner,
            shared: Arc::new(Shared {
                on: self.on,
                source: self.source.clone(),
                events: self.events.clone(),
            }),
        }
    }
}

// === impl Fallback ===

struct Shared<F> {
    on: FallbackOn,
    source: F,
    events: Events,
}

/// Answers from a fallback source when the inner service fails; see the
/// [module docs](self).
pub struct Fallback<S, F> {
    inner: S,
    shared: Arc<Shared<F>>,
}

impl<S: Clone, F> Clone for Fallback<S, F> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, F> fmt::Debug for Fallback<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("inner", &self.inner)
            .field("on", &self.shared.on)
            .finish_non_exhaustive()
    }
}

impl<S, F> Fallback<S, F> {
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

impl<S, F, Req> Service<Req> for Fallback<S, F>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    F: Source<Req, Response = S::Response>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S, F, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let saved = if self.shared.on.is_empty() {
            None
        } else {
            self.shared.source.save(&req)
        };
        ResponseFuture {
            state: FallbackState::Primary {
                fut: self.inner.call(req),
            },
            shared: self.shared.clone(),
            saved,
        }
    }
}

// === impl ResponseFuture ===

pin_project! {
    /// The response future of [`Fallback`].
    pub struct ResponseFuture<S, F, Req>
    where
        S: Service<Req>,
        F: Source<Req>,
    {
        #[pin]
        state: FallbackState<S::Future, F::Future>,
        shared: Arc<Shared<F>>,
        saved: Option<F::Saved>,
    }
}

pin_project! {
    #[project = FallbackStateProj]
    enum FallbackState<P, R> {
        Primary { #[pin] fut: P },
        Fallback { #[pin] fut: R },
    }
}

impl<S, F, Req> fmt::Debug for ResponseFuture<S, F, Req>
where
    S: Service<Req>,
    F: Source<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            FallbackState::Primary { .. } => "primary",
            FallbackState::Fallback { .. } => "fallback",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, F, Req> Future for ResponseFuture<S, F, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    F: Source<Req, Response = S::Response>,
{
    type Output = Result<S::Response, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                FallbackStateProj::Primary { fut } => {
                    let err = match std::task::ready!(fut.poll(cx)) {
                        Ok(res) => return Poll::Ready(Ok(res)),
                        Err(err) => Error::from_inner(err),
                    };
                    let shared = &**this.shared;
                    if !shared.on.matches(&err) {
                        return Poll::Ready(Err(err));
                    }
                    let Some(saved) = this.saved.take() else {
                        return Poll::Ready(Err(err));
                    };
                    let kind = err.kind();
                    shared
                        .events
                        .emit(|service| Event::Fallback { service, kind });
                    tracing::debug!(service = shared.events.service(), error = %err, "answering from fallback");
                    let fut = shared.source.recover(saved, &err);
                    this.state.set(FallbackState::Fallback { fut });
                }
                FallbackStateProj::Fallback { fut } => return fut.poll(cx),
            }
        }
    }
}
