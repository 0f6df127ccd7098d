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
//! Both set up their timer only when the call first has to wait, and then
//! borrow the task's [`LentTimer`] when a server lends one (one timer per
//! connection instead of one per call).
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
    task::{Context, Poll, Waker},
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
            return ResponseFuture::new(Some(self.inner.call(req)), Timer::None);
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
            ResponseFuture::new(None, Timer::None)
        }
        Some(at) if timer => ResponseFuture::new(Some(inner.call(req)), Timer::At { at }),
        _ => ResponseFuture::new(Some(inner.call(req)), Timer::None),
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
        timer: Timer,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            this.project().timer.give_back();
        }
    }
}

impl<F> ResponseFuture<F> {
    fn new(inner: Option<F>, timer: Timer) -> Self {
        Self { inner, timer }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(Error::DeadlineExceeded));
        };
        if let Poll::Ready(out) = inner.poll(cx) {
            this.timer.as_mut().give_back();
            return Poll::Ready(out.map_err(Error::from_inner));
        }
        if this.timer.as_mut().poll_passed(cx).is_ready() {
            this.timer.give_back();
            return Poll::Ready(Err(Error::DeadlineExceeded));
        }
        Poll::Pending
    }
}

pin_project! {
    /// How a call waits for its bound. No timer is set up until the inner
    /// future first has to wait: then the task's [`LentTimer`] is borrowed
    /// when it lends one and no other call holds it, or a timer of the
    /// call's own is made.
    #[project = TimerProj]
    #[derive(Debug)]
    enum Timer {
        None,
        At { at: Instant },
        Lent { at: Instant, id: u64 },
        Own { #[pin] sleep: Sleep },
    }
}

impl Timer {
    /// Ready once the bound has passed.
    fn poll_passed(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let (at, lent) = match self.as_mut().project() {
                TimerProj::None => return Poll::Pending,
                TimerProj::Own { sleep } => return sleep.poll(cx),
                TimerProj::At { at } => (*at, None),
                TimerProj::Lent { at, id } => (*at, Some(*id)),
            };
            match lent {
                None => match with_lent(LentState::borrow).flatten() {
                    Some(id) => self.set(Timer::Lent { at, id }),
                    None => self.set(Timer::Own {
                        sleep: tokio::time::sleep_until(at),
                    }),
                },
                Some(id) => match with_lent(|lent| lent.poll_until(id, at, cx)).flatten() {
                    Some(poll) => return poll,
                    // Polled outside the lender's polls (the future was
                    // moved to another task): a timer of its own from here
                    // on. The lender's stays lent; its later calls make
                    // their own.
                    None => self.set(Timer::Own {
                        sleep: tokio::time::sleep_until(at),
                    }),
                },
            }
        }
    }

    /// Returns a lent timer, so that the lender's next call can borrow it.
    fn give_back(mut self: Pin<&mut Self>) {
        if let Timer::Lent { id, .. } = *self {
            with_lent(|lent| lent.give_back(id));
            self.set(Timer::None);
        }
    }
}

thread_local! {
    /// The timer lent to the calls polled on this thread right now, while
    /// a [`Lending`] lives.
    static LENT: std::cell::Cell<Option<LentTimer>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` on the timer lent right now, if any.
fn with_lent<R>(f: impl FnOnce(&mut LentState) -> R) -> Option<R> {
    LENT.try_with(|cell| {
        let mut lent = cell.take()?;
        let out = f(&mut lent.0);
        cell.set(Some(lent));
        Some(out)
    })
    .ok()
    .flatten()
}

/// A timer a task lends to the calls it waits on, one call at a time, so
/// that a call's deadline costs no timer of its own.
///
/// Without it each call (each attempt, with retries) sets up a timer in
/// tokio's timer wheel and removes it when the answer comes: the most
/// expensive step of the policy stack (`docs/performance.md`). A server
/// task that answers one request after another (an HTTP/1.1 connection)
/// keeps one `LentTimer` and polls each request's future under
/// [`LentTimer::lend`]: the deadline layers then borrow the timer, move it
/// only when the call's bound is earlier than the one it is set for, and
/// when it fires for an earlier call's bound set it again for their own.
/// Calls with the same timeout, one after the other, touch the timer wheel
/// once per timeout, not once per call; and a call polled again with the
/// waker the timer already holds does not poll it again.
///
/// Calls waiting at the same time in one task (hedges, the parallel calls
/// of a composition) each use a timer of their own but the first, as do
/// calls polled outside any lending.
///
/// ```
/// use std::{future::Future, pin::pin, task::Poll, time::Duration};
/// use switchyard_policy::{deadline::{AttemptTimeoutLayer, LentTimer}, Call, Error};
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let svc = AttemptTimeoutLayer::new(Some(Duration::from_millis(50))).layer(service_fn(
///     |_call: Call<()>| async {
///         tokio::time::sleep(Duration::from_secs(1)).await;
///         Ok::<_, Error>(())
///     },
/// ));
/// // A served connection keeps its timer from one request to the next.
/// let mut timer = Some(LentTimer::new());
/// for _ in 0..2 {
///     let mut call = pin!(svc.clone().oneshot(Call::new(())));
///     let out = std::future::poll_fn(|cx| {
///         let _lending = LentTimer::lend(&mut timer);
///         call.as_mut().poll(cx)
///     })
///     .await;
///     assert!(matches!(out, Err(Error::DeadlineExceeded)));
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct LentTimer(
    // Boxed: the lender moves in and out of the thread's slot at each poll,
    // a pointer costs less to move than the state.
    Box<LentState>,
);

/// What a [`LentTimer`] holds.
#[derive(Debug)]
struct LentState {
    /// Which lender this is, so that a call holding its timer can tell it
    /// from another's.
    id: u64,
    /// Made at the first borrow.
    sleep: Option<Pin<Box<Sleep>>>,
    /// The waker `sleep` was last polled with, while it can still wake it
    /// (neither fired nor moved since).
    waker: Option<Waker>,
    lent: bool,
}

impl Default for LentTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl LentTimer {
    /// A timer to lend; no timer is set up until a call first waits on it.
    pub fn new() -> Self {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self(Box::new(LentState {
            id: IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            sleep: None,
            waker: None,
            lent: false,
        }))
    }

    /// Lends the timer in `slot` (made there if there is none) to the
    /// calls polled on this thread until the returned guard is dropped:
    /// hold it while polling the calls' future, and only then. It goes
    /// back to `slot` when the guard is dropped.
    pub fn lend(slot: &mut Option<LentTimer>) -> Lending<'_> {
        slot.get_or_insert_with(LentTimer::new);
        swap_lent(slot);
        Lending { slot }
    }
}

impl LentState {
    /// Lends the timer when no call holds it: the lender's id.
    fn borrow(&mut self) -> Option<u64> {
        if self.lent {
            return None;
        }
        self.lent = true;
        Some(self.id)
    }

    /// Waits, for the call holding the timer as `id`, until `at`; `None`
    /// when this is not the lender it borrowed from.
    fn poll_until(&mut self, id: u64, at: Instant, cx: &mut Context<'_>) -> Option<Poll<()>> {
        if self.id != id || !self.lent {
            return None;
        }
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        Some(poll_reused(sleep.as_mut(), &mut self.waker, at, cx))
    }

    /// Takes the timer back from the call holding it as `id`.
    fn give_back(&mut self, id: u64) {
        if self.id == id {
            self.lent = false;
        }
    }
}

/// Waits on a timer kept for one wait after another (a connection's),
/// until `at`: ready once `at` has passed.
///
/// The timer is moved only when `at` is earlier than the instant it is set
/// for; set for an earlier wait's instant, it fires early and is set again
/// for `at` (re-arming a fired timer is one insertion in the wheel, as a
/// new timer would be; one that has not fired is not touched). `polled_with`
/// keeps the waker it was last polled with: while that waker would wake
/// the one polling now and the timer has not fired, it is not polled again
/// (that would only register the same waker again). It is polled outside
/// tokio's per-task budget: a poll refused for budget registers no waker,
/// and `polled_with` would then say one is.
pub fn poll_reused(
    mut sleep: Pin<&mut Sleep>,
    polled_with: &mut Option<Waker>,
    at: Instant,
    cx: &mut Context<'_>,
) -> Poll<()> {
    if at < sleep.deadline() {
        sleep.as_mut().reset(at);
        *polled_with = None;
    }
    let armed = polled_with
        .as_ref()
        .is_some_and(|w| w.will_wake(cx.waker()));
    if armed && !sleep.is_elapsed() {
        return Poll::Pending;
    }
    while Pin::new(&mut tokio::task::coop::unconstrained(sleep.as_mut()))
        .poll(cx)
        .is_ready()
    {
        if sleep.deadline() >= at {
            *polled_with = None;
            return Poll::Ready(());
        }
        sleep.as_mut().reset(at);
    }
    if !armed {
        *polled_with = Some(cx.waker().clone());
    }
    Poll::Pending
}

/// Swaps `slot` with the thread's lent timer.
fn swap_lent(slot: &mut Option<LentTimer>) {
    let _ = LENT.try_with(|cell| {
        let mine = slot.take();
        *slot = cell.replace(mine);
    });
}

/// A timer lent while this lives; see [`LentTimer::lend`].
#[derive(Debug)]
pub struct Lending<'a> {
    slot: &'a mut Option<LentTimer>,
}

impl Drop for Lending<'_> {
    fn drop(&mut self) {
        swap_lent(self.slot);
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

    /// A service that takes as long as its call says.
    fn taking(
        calls: Arc<AtomicUsize>,
    ) -> impl Service<Call<Duration>, Response = (), Error = Error, Future: Send> + Clone {
        service_fn(move |call: Call<Duration>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(call.into_inner()).await;
                Ok(())
            }
        })
    }

    /// A service whose call is woken twice (at 20 and 40 ms, by timers of
    /// its own) and then takes a second.
    fn woken_twice_then_stalled()
    -> impl Service<Call<()>, Response = (), Error = Error, Future: Send + 'static> + Clone {
        service_fn(|_: Call<()>| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(())
        })
    }

    /// Runs `fut` with the timer in `slot` lent to it.
    async fn lent<F: Future>(slot: &mut Option<LentTimer>, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| {
            let _lending = LentTimer::lend(slot);
            fut.as_mut().poll(cx)
        })
        .await
    }

    /// Runs `call` with the timer in `slot` lent to it; the result and when
    /// it came (since `start`).
    async fn lent_call<S>(
        svc: &S,
        slot: &mut Option<LentTimer>,
        call: Call<Duration>,
        start: Instant,
    ) -> (Result<(), Error>, Duration)
    where
        S: Service<Call<Duration>, Response = (), Error = Error> + Clone,
    {
        let out = lent(slot, svc.clone().oneshot(call)).await;
        (out, start.elapsed())
    }

    fn is_lent(slot: &Option<LentTimer>) -> bool {
        slot.as_ref().is_some_and(|t| t.0.lent)
    }

    // The call first waits with the task's budget spent (a poll of the
    // timer then would be refused): the lent timer still fires at the
    // bound, though the call is polled again with the same waker.
    #[tokio::test(start_paused = true)]
    async fn a_lent_timer_first_polled_without_budget_still_fires() {
        let ms = Duration::from_millis;
        let svc = AttemptTimeoutLayer::new(Some(ms(100))).layer(woken_twice_then_stalled());
        let mut timer = None;
        let mut call = std::pin::pin!(svc.oneshot(Call::new(())));
        let start = Instant::now();
        let mut first = true;
        let out = std::future::poll_fn(|cx| {
            let _lending = LentTimer::lend(&mut timer);
            if std::mem::take(&mut first) {
                while tokio::task::coop::has_budget_remaining() {
                    let _ = std::pin::pin!(tokio::task::consume_budget()).poll(cx);
                }
            }
            call.as_mut().poll(cx)
        })
        .await;
        assert!(matches!(out, Err(Error::DeadlineExceeded)));
        assert_eq!(start.elapsed(), ms(100));
    }

    // Calls one after another on one lent timer: each is cut at its own
    // bound, whether the timer was set for an earlier call's (it fires
    // early and is set again), a later one's (it is moved earlier) or has
    // fired already; the timer is used and given back each time.
    #[tokio::test(start_paused = true)]
    async fn a_lent_timer_bounds_each_call_at_its_own_bound() {
        let calls = Arc::new(AtomicUsize::new(0));
        let svc =
            AttemptTimeoutLayer::new(Some(Duration::from_millis(100))).layer(taking(calls.clone()));
        let ms = Duration::from_millis;
        let start = Instant::now();
        let mut timer = None;

        // Answers before its bound (100 ms): the timer is set for 100 ms.
        let (out, at) = lent_call(&svc, &mut timer, Call::new(ms(10)), start).await;
        assert!(out.is_ok());
        assert_eq!(at, ms(10));
        assert!(
            timer.as_ref().is_some_and(|t| t.0.sleep.is_some()),
            "the call used the lent timer"
        );
        assert!(!is_lent(&timer), "and gave it back");

        // (what the call takes, a deadline of its own, answered?, when)
        let steps = [
            // A deadline of its own (40 ms), before the one the timer is
            // set for: the timer moves earlier.
            (1000, Some(30), false, 40),
            // The timer fired last time: set again for this call (140 ms).
            (1000, None, false, 140),
            // Answers at 150 ms; the timer stays set for its bound (240).
            (10, None, true, 150),
            // Bound at 250 ms: the timer fires early, at the previous
            // call's bound, and is set again for this one's.
            (1000, None, false, 250),
            (99, None, true, 349),
        ];
        for (takes, own, answered, when) in steps {
            let mut call = Call::new(ms(takes));
            if let Some(own) = own {
                call.set_deadline(Instant::now() + ms(own));
            }
            let (out, at) = lent_call(&svc, &mut timer, call, start).await;
            assert_eq!(out.is_ok(), answered, "{out:?} at {at:?}");
            assert!(answered || matches!(out, Err(Error::DeadlineExceeded)));
            assert_eq!(at, ms(when));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 6);
        assert!(!is_lent(&timer));
    }

    // A call woken by something else than its timer, polled again with the
    // same waker, keeps its bound (the timer is not polled again); with
    // another waker, the timer wakes that one.
    #[tokio::test(start_paused = true)]
    async fn a_call_polled_again_keeps_its_bound() {
        let ms = Duration::from_millis;
        let svc = AttemptTimeoutLayer::new(Some(ms(100))).layer(woken_twice_then_stalled());
        let start = Instant::now();
        let mut timer = None;
        let out = lent(&mut timer, svc.clone().oneshot(Call::new(()))).await;
        assert!(matches!(out, Err(Error::DeadlineExceeded)));
        assert_eq!(start.elapsed(), ms(100));

        // First polled with a waker that wakes nobody (as under a combinator
        // with wakers of its own), then with the task's: the timer is
        // polled again, so that it wakes the task.
        let mut call = std::pin::pin!(svc.clone().oneshot(Call::new(())));
        let start = Instant::now();
        {
            let _lending = LentTimer::lend(&mut timer);
            let noop = &mut Context::from_waker(Waker::noop());
            assert!(call.as_mut().poll(noop).is_pending());
        }
        let out = lent(&mut timer, call).await;
        assert!(matches!(out, Err(Error::DeadlineExceeded)));
        assert_eq!(start.elapsed(), ms(100));

        // Moved to another task, with another lender: a timer of its own.
        let mut call = Box::pin(svc.oneshot(Call::new(())));
        let start = Instant::now();
        let first = lent(
            &mut timer,
            std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx).is_pending())),
        )
        .await;
        assert!(first);
        let out = tokio::spawn(async move {
            let mut timer = None;
            lent(&mut timer, call).await
        })
        .await
        .unwrap();
        assert!(matches!(out, Err(Error::DeadlineExceeded)));
        assert_eq!(start.elapsed(), ms(100));
    }

    // Two calls waiting at once in one task: one borrows the timer, the
    // other makes its own; each is cut at its own bound. A call dropped
    // while it holds the timer gives it back.
    #[tokio::test(start_paused = true)]
    async fn calls_waiting_together_each_keep_their_bound() {
        let calls = Arc::new(AtomicUsize::new(0));
        let ms = Duration::from_millis;
        let short = AttemptTimeoutLayer::new(Some(ms(50))).layer(taking(calls.clone()));
        let long = AttemptTimeoutLayer::new(Some(ms(80))).layer(taking(calls.clone()));
        let start = Instant::now();
        let timed = |fut| async move {
            let out: Result<(), Error> = fut.await;
            (out, start.elapsed())
        };
        let mut timer = None;
        let ((a, a_at), (b, b_at)) = lent(&mut timer, async {
            tokio::join!(
                timed(long.clone().oneshot(Call::new(ms(1000)))),
                timed(short.clone().oneshot(Call::new(ms(1000)))),
            )
        })
        .await;
        assert!(matches!(a, Err(Error::DeadlineExceeded)));
        assert_eq!(a_at, ms(80));
        assert!(matches!(b, Err(Error::DeadlineExceeded)));
        assert_eq!(b_at, ms(50));
        assert!(!is_lent(&timer));

        // Dropped while waiting on the lent timer: given back.
        lent(&mut timer, async {
            let mut call = std::pin::pin!(long.clone().oneshot(Call::new(ms(1000))));
            let pending =
                std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx).is_pending())).await;
            assert!(pending);
            assert_eq!(with_lent(|t| t.lent), Some(true));
        })
        .await;
        assert!(!is_lent(&timer));
        let now = Instant::now();
        let (out, at) = lent_call(&short, &mut timer, Call::new(ms(1000)), now).await;
        assert!(matches!(out, Err(Error::DeadlineExceeded)));
        assert_eq!(at, ms(50));
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
