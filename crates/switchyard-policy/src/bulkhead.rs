//! Bulkhead: a cap on how many calls to one service run at once, with an
//! optional bounded wait queue.
//!
//! A [`Bulkhead`] admits at most [`max_concurrent`](BulkheadConfig::max_concurrent)
//! calls into the inner service at a time. A call that finds every slot taken
//! either joins the wait queue (when fewer than
//! [`max_queue`](BulkheadConfig::max_queue) calls are already waiting) or is
//! rejected at once with [`Error::BulkheadFull`] without reaching the inner
//! service. A queued call waits at most [`max_wait`](BulkheadConfig::max_wait)
//! for a slot, then is rejected with the same error. Waiters get slots in
//! arrival order (tokio's semaphore is fair, and a new call can't overtake a
//! waiter). Every rejection is reported as
//! `Event::Rejected { policy: "bulkhead", kind: "bulkhead-full" }`.
//!
//! A slot is held from the moment it is granted until the inner service's
//! response future completes (or is dropped): a streamed response body that
//! outlives that future is not counted.
//!
//! # Defaults
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `max_concurrent` | `100` | calls inside the inner service at once |
//! | `max_queue` | `0` | calls allowed to wait for a slot; `0` rejects at once when full |
//! | `max_wait` | `"1s"` | how long a queued call waits for a slot; unused when `max_queue = 0` |
//!
//! # Backpressure
//!
//! `poll_ready` passes the inner service's readiness through unchanged; the
//! bulkhead itself never makes a caller wait in `poll_ready`. It sheds load in
//! `call` instead, because the decision (slot, queue or reject) must be taken
//! per call and a full bulkhead must answer fast rather than block the caller.
//!
//! # Fast path and queued path
//!
//! The uncontended path takes a slot with `try_acquire_owned` and calls the
//! inner service right away: it allocates nothing. Only a call that has to
//! queue allocates, once: the wait for a semaphore permit is an unnameable
//! future (`Semaphore::acquire_owned`), which is boxed together with its
//! timeout.
//!
//! A queued call does not keep the inner service's readiness while it waits
//! (that could hold a slot of an inner limit or buffer for the whole wait).
//! It takes a clone of the inner service, and once it has a bulkhead slot it
//! drives that clone to readiness and calls it. That is why the service
//! requires `S: Clone`, as tower services that are shared usually are.
//!
//! # Shared state
//!
//! Every service built by one [`BulkheadLayer`], and every clone of those,
//! shares one set of slots and one queue. [`BulkheadState`] (from
//! [`BulkheadLayer::state`] or [`Bulkhead::state`]) reads the current
//! occupancy for the admin API.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use switchyard_policy::{Error, Events, bulkhead::{BulkheadConfig, BulkheadLayer}};
//! use tower::{Service, ServiceExt, service_fn};
//! use tower_layer::Layer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let config = BulkheadConfig { max_concurrent: 1, ..Default::default() };
//! config.validate().unwrap();
//! let layer = BulkheadLayer::new(config, Events::silent("users"));
//! let state = layer.state();
//! let mut svc = layer.layer(service_fn(|name: &'static str| async move {
//!     Ok::<_, Infallible>(format!("hello {name}"))
//! }));
//!
//! // One call holds the only slot while its future is alive...
//! let first = svc.ready().await.unwrap().call("ann");
//! assert_eq!(state.in_flight(), 1);
//! // ...so a second one, with no queue configured, is rejected at once.
//! let second = svc.ready().await.unwrap().call("bob").await;
//! assert!(matches!(second, Err(Error::BulkheadFull { max_concurrent: 1 })));
//!
//! assert_eq!(first.await.unwrap(), "hello ann");
//! assert_eq!(state.in_flight(), 0);
//! # }
//! ```

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_layer::Layer;
use tower_service::Service;

use crate::{BoxError, Error, Events, events::Event};

#[cfg(test)]
mod tests;

/// Default for [`BulkheadConfig::max_concurrent`].
pub const DEFAULT_MAX_CONCURRENT: usize = 100;
/// Default for [`BulkheadConfig::max_queue`]: no queue, reject at once when full.
pub const DEFAULT_MAX_QUEUE: usize = 0;
/// Default for [`BulkheadConfig::max_wait`]. Long enough to ride out a short
/// burst, short enough that a queued caller still has most of a typical
/// request deadline left.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(1);

/// Configuration of a [`Bulkhead`] (TOML table `bulkhead`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BulkheadConfig {
    /// How many calls may be inside the inner service at once. Default: `100`.
    pub max_concurrent: usize,
    /// How many calls may wait for a slot when all are taken; `0` rejects at
    /// once when full. Default: `0`.
    pub max_queue: usize,
    /// How long a queued call waits for a slot before it is rejected; unused
    /// when `max_queue` is `0`. Default: `"1s"`.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        Self {
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            max_queue: DEFAULT_MAX_QUEUE,
            max_wait: DEFAULT_MAX_WAIT,
        }
    }
}

impl BulkheadConfig {
    /// Checks that the configuration can work; the message names the key and
    /// says how to fix it.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_concurrent == 0 {
            return Err("bulkhead.max_concurrent: must be at least 1, got 0; \
                 set the number of calls allowed at once, such as 100"
                .to_owned());
        }
        if self.max_concurrent > Semaphore::MAX_PERMITS {
            return Err(format!(
                "bulkhead.max_concurrent: must be at most {}, got {}; set a smaller limit",
                Semaphore::MAX_PERMITS,
                self.max_concurrent
            ));
        }
        if self.max_queue > 0 && self.max_wait.is_zero() {
            return Err(format!(
                "bulkhead.max_wait: must be greater than 0 when max_queue is {}; \
                 set a wait such as \"100ms\", or set max_queue = 0 to reject at once",
                self.max_queue
            ));
        }
        Ok(())
    }
}

// === impl Shared ===

/// The state every clone of one bulkhead shares.
struct Shared {
    semaphore: Arc<Semaphore>,
    waiters: AtomicUsize,
    max_concurrent: usize,
    max_queue: usize,
    max_wait: Duration,
    events: Events,
}

impl Shared {
    /// Takes a place in the queue if fewer than `max_queue` calls wait.
    fn enter_queue(self: &Arc<Self>) -> Option<QueueSlot> {
        let max = self.max_queue;
        self.waiters
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| QueueSlot(self.clone()))
    }

    fn reject(&self) -> Error {
        self.events.emit(|service| Event::Rejected {
            service,
            policy: "bulkhead",
            kind: "bulkhead-full",
        });
        Error::BulkheadFull {
            max_concurrent: self.max_concurrent,
        }
    }
}

/// A place in the wait queue; leaving (by getting a slot, timing out or being
/// dropped) frees it.
struct QueueSlot(Arc<Shared>);

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl BulkheadState ===

/// A read handle on a bulkhead's occupancy, for the admin API and metrics.
#[derive(Clone)]
pub struct BulkheadState {
    shared: Arc<Shared>,
}

impl BulkheadState {
    /// Calls holding a slot now (inside the inner service, or about to enter it).
    pub fn in_flight(&self) -> usize {
        self.shared
            .max_concurrent
            .saturating_sub(self.shared.semaphore.available_permits())
    }

    /// Calls waiting in the queue for a slot now.
    pub fn queued(&self) -> usize {
        self.shared.waiters.load(Ordering::Acquire)
    }

    /// The concurrency limit.
    pub fn max_concurrent(&self) -> usize {
        self.shared.max_concurrent
    }

    /// The queue limit.
    pub fn max_queue(&self) -> usize {
        self.shared.max_queue
    }
}

impl fmt::Debug for BulkheadState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadState")
            .field("in_flight", &self.in_flight())
            .field("queued", &self.queued())
            .field("max_concurrent", &self.shared.max_concurrent)
            .field("max_queue", &self.shared.max_queue)
            .finish()
    }
}

// === impl BulkheadLayer ===

/// Wraps services in a [`Bulkhead`]; every service it builds shares one set
/// of slots and one queue.
#[derive(Clone, Debug)]
pub struct BulkheadLayer {
    state: BulkheadState,
}

impl BulkheadLayer {
    /// A bulkhead with `config`, reporting through `events`.
    ///
    /// Does not validate: call [`BulkheadConfig::validate`] when loading. A
    /// `max_concurrent` of 0 rejects every call; one above
    /// [`Semaphore::MAX_PERMITS`] is capped there.
    pub fn new(config: BulkheadConfig, events: Events) -> Self {
        let max_concurrent = config.max_concurrent.min(Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            semaphore: Arc::new(Semaphore::new(max_concurrent)),
            waiters: AtomicUsize::new(0),
            max_concurrent,
            max_queue: config.max_queue,
            max_wait: config.max_wait,
            events,
        });
        Self {
            state: BulkheadState { shared },
        }
    }

    /// A handle on the shared occupancy.
    pub fn state(&self) -> BulkheadState {
        self.state.clone()
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead {
            inner,
            shared: self.state.shared.clone(),
        }
    }
}

// === impl Bulkhead ===

/// Limits concurrent calls to the inner service; see the [module docs](self).
#[derive(Clone)]
pub struct Bulkhead<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for Bulkhead<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("inner", &self.inner)
            .field("state", &self.state())
            .finish()
    }
}

impl<S> Bulkhead<S> {
    /// A handle on the shared occupancy.
    pub fn state(&self) -> BulkheadState {
        BulkheadState {
            shared: self.shared.clone(),
        }
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

impl<S, Req> Service<Req> for Bulkhead<S>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Fast path: a free slot; call the (ready) inner service now.
        if let Ok(permit) = self.shared.semaphore.clone().try_acquire_owned() {
            let fut = self.inner.call(req);
            return ResponseFuture {
                state: State::Called {
                    fut,
                    permit: Some(permit),
                },
            };
        }
        let Some(slot) = self.shared.enter_queue() else {
            return ResponseFuture {
                state: State::Rejected {
                    error: Some(self.shared.reject()),
                },
            };
        };
        let semaphore = self.shared.semaphore.clone();
        let deadline = crate::clock::now().checked_add(self.shared.max_wait);
        let acquire: Acquire = Box::pin(async move {
            match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, semaphore.acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok),
                // A wait too long to represent: wait without a timeout.
                None => semaphore.acquire_owned().await.ok(),
            }
        });
        ResponseFuture {
            state: State::Queued {
                acquire,
                call: Some(Box::new((self.inner.clone(), Some(req)))),
                slot: Some(slot),
            },
        }
    }
}

// === impl ResponseFuture ===

/// Waits for a slot: yields the permit, or `None` when the wait timed out.
type Acquire = Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>;

pin_project! {
    /// The response future of [`Bulkhead`].
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req>
    where
        S: Service<Req>,
    {
        // Waiting in the queue for a slot.
        Queued {
            acquire: Acquire,
            // Boxed (here and while readying): a call that waits for a slot
            // is the rare case, and the service and request inline would
            // make every call's future (and every layer's around it) carry
            // room for them.
            call: Option<Box<(S, Option<Req>)>>,
            slot: Option<QueueSlot>,
        },
        // Holding a slot; driving the cloned inner service to readiness.
        Readying {
            call: Box<(S, Option<Req>)>,
            permit: Option<OwnedSemaphorePermit>,
        },
        // Inside the inner service.
        Called {
            #[pin]
            fut: S::Future,
            permit: Option<OwnedSemaphorePermit>,
        },
        Rejected {
            error: Option<Error>,
        },
    }
}

impl<S, Req> fmt::Debug for ResponseFuture<S, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Queued { .. } => "queued",
            State::Readying { .. } => "readying",
            State::Called { .. } => "called",
            State::Rejected { .. } => "rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

const POLLED_AFTER_COMPLETION: &str = "bulkhead ResponseFuture polled after completion";

impl<S, Req> Future for ResponseFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Called { fut, permit } => {
                    let out = ready!(fut.poll(cx));
                    // Free the slot now, not when the caller drops the future.
                    permit.take();
                    return Poll::Ready(out.map_err(Error::from_inner));
                }
                StateProj::Queued {
                    acquire,
                    call,
                    slot,
                } => {
                    let permit = ready!(acquire.as_mut().poll(cx));
                    // Leaving the queue, with or without a slot.
                    let slot = slot.take();
                    let Some(permit) = permit else {
                        let error = match &slot {
                            Some(slot) => slot.0.reject(),
                            None => panic!("{POLLED_AFTER_COMPLETION}"),
                        };
                        drop(slot);
                        this.state.set(State::Rejected { error: None });
                        return Poll::Ready(Err(error));
                    };
                    drop(slot);
                    let Some(call) = call.take() else {
                        panic!("{POLLED_AFTER_COMPLETION}");
                    };
                    this.state.set(State::Readying {
                        call,
                        permit: Some(permit),
                    });
                }
                StateProj::Readying { call, permit } => {
                    let (svc, req) = &mut **call;
                    if let Err(err) = ready!(svc.poll_ready(cx)) {
                        permit.take();
                        return Poll::Ready(Err(Error::from_inner(err)));
                    }
                    let (Some(req), permit) = (req.take(), permit.take()) else {
                        panic!("{POLLED_AFTER_COMPLETION}");
                    };
                    let fut = svc.call(req);
                    this.state.set(State::Called { fut, permit });
                }
                StateProj::Rejected { error } => {
                    return match error.take() {
                        Some(error) => Poll::Ready(Err(error)),
                        None => panic!("{POLLED_AFTER_COMPLETION}"),
                    };
                }
            }
        }
    }
}
