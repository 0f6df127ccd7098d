//! [`ServiceClient`]: balancing one service's requests over its endpoints.

use std::{
    cell::RefCell,
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, OnceLock, Weak, atomic::Ordering},
    task::{Context, Poll},
};

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue, StatusCode, uri::Scheme};
use parking_lot::Mutex;
use pin_project_lite::pin_project;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use switchyard_discovery::{Endpoint, Endpoints};
use switchyard_policy::{BoxError, PolicyRequest, ReplayBody};
use switchyard_transport::{Attempt, Body, Head, Transport, TransportConfig, TransportError};
use tokio::{
    sync::watch,
    task::{AbortHandle, JoinSet},
    time::{Instant, MissedTickBehavior},
};

use crate::{
    BalancerConfig, EndpointError, HealthCheckConfig, NoHealthyEndpoint, OutlierConfig,
    ServiceSnapshot,
    endpoint::EndpointState,
    health,
    outlier::{self, EjectReason, Sample},
};

/// The outbound stack of one named service: endpoints from discovery,
/// power-of-two-choices balancing over peak-EWMA cost, passive outlier
/// ejection, optional active health checks, and a pooled [`Transport`].
///
/// Cheap to clone (one `Arc`); clones share all state. The background work
/// (following the endpoint set, evaluating outliers, health checks) runs in
/// one task spawned by [`ServiceClient::new`] that stops when the last clone
/// and the last response future are dropped. There is no separate shutdown
/// call: drop the client.
///
/// `poll_ready` is always ready: the endpoint is chosen per request in
/// `call`, so there is nothing to wait for and no backpressure from here;
/// a bulkhead above bounds concurrency. A call with no eligible endpoint
/// fails with [`NoHealthyEndpoint`]; a transport failure with
/// [`EndpointError`]. Both come boxed ([`BoxError`]).
#[derive(Clone)]
pub struct ServiceClient {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ServiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceClient")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    name: Arc<str>,
    endpoints: ArcSwap<Vec<Arc<EndpointState>>>,
    transport: Transport,
    balancer: BalancerConfig,
    decay_ns: f64,
    outlier: OutlierConfig,
    /// Serialises ejection decisions so concurrent failures cannot together
    /// exceed `max_ejection_percent`.
    eject_lock: Mutex<()>,
    driver: OnceLock<AbortHandle>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(driver) = self.driver.get() {
            driver.abort();
        }
    }
}

// === impl ServiceClient ===

impl ServiceClient {
    /// Builds the client for service `name` and starts its background task.
    ///
    /// Must be called inside a Tokio runtime. Fails with a message naming the
    /// bad key when a config does not validate, or when there is no runtime.
    pub fn new(
        name: &str,
        transport: TransportConfig,
        balancer: BalancerConfig,
        outlier: OutlierConfig,
        health_check: Option<HealthCheckConfig>,
        mut endpoints: watch::Receiver<Endpoints>,
    ) -> Result<Self, String> {
        let context = |section: &str, e: String| format!("services.{name}.{section}.{e}");
        transport.validate().map_err(|e| context("transport", e))?;
        balancer.validate().map_err(|e| context("balancer", e))?;
        outlier.validate().map_err(|e| context("outlier", e))?;
        if let Some(hc) = &health_check {
            hc.validate().map_err(|e| context("health_check", e))?;
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            format!("service {name:?}: a client must be built inside a Tokio runtime")
        })?;

        let shared = Arc::new(Shared {
            name: name.into(),
            endpoints: ArcSwap::from_pointee(Vec::new()),
            transport: Transport::for_service(&transport, name)?,
            decay_ns: balancer.decay.as_nanos() as f64,
            balancer,
            outlier,
            eject_lock: Mutex::new(()),
            driver: OnceLock::new(),
        });
        // The first set is applied before returning, so the first request
        // already has endpoints.
        shared.apply(&endpoints.borrow_and_update());
        let driver = runtime.spawn(drive(
            Arc::downgrade(&shared),
            shared.transport.clone(),
            endpoints,
            health_check,
        ));
        let _ = shared.driver.set(driver.abort_handle());
        Ok(Self { shared })
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The transport requests go out through (for its connection count).
    pub fn transport(&self) -> &Transport {
        &self.shared.transport
    }

    /// The balancer's state now: every endpoint's health, ejection, load and
    /// latency estimate.
    pub fn snapshot(&self) -> ServiceSnapshot {
        let now = Instant::now();
        let list = self.shared.endpoints.load();
        let endpoints: Vec<_> = list.iter().map(|e| e.snapshot(now)).collect();
        ServiceSnapshot {
            name: self.shared.name.to_string(),
            eligible: list.iter().filter(|e| e.is_eligible()).count(),
            ejected: endpoints.iter().filter(|e| e.ejected).count(),
            unhealthy: endpoints.iter().filter(|e| !e.healthy).count(),
            endpoints,
        }
    }
}

impl tower_service::Service<http::Request<Body>> for ServiceClient {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> ResponseFuture {
        self.send(SharedRequest::new(req))
    }
}

impl tower_service::Service<SharedRequest> for ServiceClient {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: SharedRequest) -> ResponseFuture {
        self.send(req)
    }
}

impl ServiceClient {
    /// Sends one attempt of `req` to the endpoint the balancer picks.
    fn send(&self, req: SharedRequest) -> ResponseFuture {
        let now = switchyard_policy::clock::now();
        // Retries and hedges of one call share this record, so a retry goes
        // to another endpoint when there is one: a dead instance can't take
        // every attempt.
        let picked = match &req.attempted {
            Some(attempted) => {
                let mut tried = attempted.0.lock();
                let picked = self.shared.pick(now, &tried);
                if let Some(endpoint) = &picked {
                    tried.push(endpoint.addr());
                }
                picked
            }
            None => self.shared.pick(now, &[]),
        };
        let Some(endpoint) = picked else {
            return ResponseFuture {
                state: State::Failed {
                    error: Some(NoHealthyEndpoint {
                        service: self.shared.name.clone(),
                    }),
                },
            };
        };
        let left = req.remaining();
        let field = match (req.deadline_field, left) {
            (Some(name), Some(left)) => Some((name, time_left_value(left))),
            _ => None,
        };
        let attempt = Attempt {
            head: req.head,
            scheme: if self.shared.transport.is_tls() {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            },
            authority: endpoint.authority.clone(),
            field,
            body: req.body,
        };
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        let inner = self.shared.transport.send_attempt(attempt);
        ResponseFuture {
            state: State::Sending {
                inner,
                call: Some(InFlight {
                    shared: self.shared.clone(),
                    endpoint,
                    start: now,
                }),
            },
        }
    }
}

/// `left` as the value of a time-left field: whole milliseconds, rounded
/// down (what [`SharedRequest::with_deadline_field`] sends).
pub fn time_left_value(left: std::time::Duration) -> HeaderValue {
    thread_local! {
        // The last value made on this thread: under load nearly every
        // attempt has the same whole milliseconds left (the route's
        // timeout), and a copy of a value is a reference count where a new
        // one is an allocation.
        static LAST: std::cell::RefCell<Option<(u64, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    let ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
    LAST.with_borrow_mut(|last| match last {
        Some((last_ms, value)) if *last_ms == ms => value.clone(),
        _ => {
            let digits = itoa::Buffer::new().format(ms).as_bytes().to_vec();
            let value = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(digits))
                .unwrap_or_else(|_| HeaderValue::from_static("0"));
            *last = Some((ms, value.clone()));
            value
        }
    })
}

/// A request for [`ServiceClient`] whose head the attempts of one call share.
///
/// A retry or hedge needs a copy of the request; a copy of an
/// `http::Request` is a copy of its whole header map and extensions (about
/// a twentieth of what a proxied request costs, made for every call that
/// may be retried, and dropped again when it wasn't). Here the head is
/// behind an `Arc`: a copy is a reference count and the body's own cheap
/// copy, and what changes per attempt (the endpoint, the time left) is
/// written when the attempt is sent, not stored in the head.
///
/// ```
/// use switchyard_client::SharedRequest;
/// use switchyard_policy::PolicyRequest;
/// use switchyard_transport::Body;
///
/// let req = SharedRequest::new(http::Request::get("/users/7").body(Body::empty()).unwrap())
///     .tracking_attempts();
/// let copy = req.try_clone().expect("an empty body can be sent again");
/// assert_eq!(copy.head().uri.path(), "/users/7");
/// ```
#[derive(Debug)]
pub struct SharedRequest {
    head: Arc<Head>,
    body: Body,
    deadline: Option<Instant>,
    deadline_field: Option<HeaderName>,
    attempted: Option<Attempted>,
}

impl SharedRequest {
    /// Takes `req` apart; a deadline ([`PolicyRequest::deadline`]) and an
    /// [`Attempted`] record in its extensions are kept.
    pub fn new(req: http::Request<Body>) -> Self {
        let deadline = req.deadline();
        let attempted = req.extensions().get::<Attempted>().cloned();
        let (parts, body) = req.into_parts();
        Self {
            head: Arc::new(Head::from(parts)),
            body,
            deadline,
            deadline_field: None,
            attempted,
        }
    }

    /// A request from a head built for it (with fields added after its
    /// own, see [`Head`]) and its body; no deadline, no attempts recorded.
    pub fn from_head(head: Arc<Head>, body: Body) -> Self {
        Self {
            head,
            body,
            deadline: None,
            deadline_field: None,
            attempted: None,
        }
    }

    /// Each attempt carries the time left until the deadline in the field
    /// `name` (whole milliseconds, rounded down), in place of any the head
    /// has; without a deadline the head goes as it is.
    pub fn with_deadline_field(mut self, name: HeaderName) -> Self {
        self.deadline_field = Some(name);
        self
    }

    /// Records the endpoints this call's attempts go to, so that a retry or
    /// hedge goes to one not tried yet when there is one.
    pub fn tracking_attempts(mut self) -> Self {
        self.attempted.get_or_insert_with(Attempted::default);
        self
    }

    /// The request's head, as every attempt sends it (the fields added
    /// after its own apart, see [`Head`]).
    pub fn head(&self) -> &http::request::Parts {
        &self.head.parts
    }
}

impl PolicyRequest for SharedRequest {
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
    }

    fn try_clone(&self) -> Option<Self> {
        Some(Self {
            head: self.head.clone(),
            body: self.body.try_clone_body()?,
            deadline: self.deadline,
            deadline_field: self.deadline_field.clone(),
            attempted: self.attempted.clone(),
        })
    }
}

/// The endpoints one call's attempts went to (a request extension shared by
/// the copies a retry or hedge makes). A request carrying it is sent to an
/// endpoint not tried yet whenever one is eligible.
#[derive(Debug, Clone, Default)]
pub struct Attempted(Arc<parking_lot::Mutex<Tried>>);

/// Room for the usual number of attempts without a second allocation.
type Tried = smallvec::SmallVec<[SocketAddr; 3]>;

impl Attempted {
    /// The endpoints tried so far, in order.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.0.lock().to_vec()
    }
}

// === impl Shared ===

thread_local! {
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

impl Shared {
    /// Power of two choices: two distinct eligible endpoints at random, the
    /// cheaper wins; endpoints in `avoid` only when no other is eligible.
    fn pick(&self, now: Instant, avoid: &[SocketAddr]) -> Option<Arc<EndpointState>> {
        if !avoid.is_empty() {
            let fresh = self.pick_where(now, |e| e.is_eligible() && !avoid.contains(&e.addr()));
            if fresh.is_some() {
                return fresh;
            }
        }
        self.pick_where(now, EndpointState::is_eligible)
    }

    fn pick_where(
        &self,
        now: Instant,
        keep: impl Fn(&EndpointState) -> bool,
    ) -> Option<Arc<EndpointState>> {
        let list = self.endpoints.load();
        let eligible = list.iter().filter(|e| keep(e)).count();
        let nth = |n: usize| {
            if eligible == list.len() {
                list.get(n)
            } else {
                list.iter().filter(|e| keep(e)).nth(n)
            }
        };
        match eligible {
            0 => None,
            1 => nth(0).cloned(),
            k => {
                let (a, b) = RNG.with(|rng| {
                    let mut rng = rng.borrow_mut();
                    let a = rng.random_range(0..k);
                    let b = rng.random_range(0..k - 1);
                    (a, if b >= a { b + 1 } else { b })
                });
                let (a, b) = (nth(a)?, nth(b)?);
                let chosen = if b.cost(now, self.decay_ns) < a.cost(now, self.decay_ns) {
                    b
                } else {
                    a
                };
                Some(chosen.clone())
            }
        }
    }

    /// Replaces the endpoint set, keeping the state of endpoints still in it.
    fn apply(&self, endpoints: &[Endpoint]) {
        let now = switchyard_policy::clock::now();
        let old = self.endpoints.load();
        let by_addr: HashMap<SocketAddr, &Arc<EndpointState>> =
            old.iter().map(|e| (e.addr(), e)).collect();
        let mut seen = std::collections::HashSet::new();
        let mut next = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            if !seen.insert(endpoint.addr) {
                continue;
            }
            match by_addr.get(&endpoint.addr) {
                // A changed weight or metadata starts the endpoint afresh.
                Some(state) if state.endpoint == *endpoint => next.push(Arc::clone(state)),
                _ => next.push(Arc::new(EndpointState::new(
                    &self.name,
                    endpoint.clone(),
                    self.balancer.default_rtt,
                    now,
                ))),
            }
        }
        for gone in old
            .iter()
            .filter(|e| !next.iter().any(|n| Arc::ptr_eq(n, e)))
        {
            gone.metrics.ejected.set(0.0);
            gone.metrics.healthy.set(0.0);
        }
        tracing::debug!(service = %self.name, endpoints = next.len(), "endpoint set updated");
        self.endpoints.store(Arc::new(next));
    }

    /// Records a finished request against `endpoint`.
    fn record(&self, endpoint: &EndpointState, now: Instant, rtt_ns: f64, failed: bool) {
        {
            // A failure is no evidence that an endpoint is fast: a refused
            // connection answers in microseconds, and counting that as its
            // latency would make a dead endpoint the balancer's favourite
            // until it is ejected. A failure keeps the estimate (or raises
            // it, when it was slow).
            let mut ewma = endpoint.ewma.lock();
            let rtt_ns = if failed {
                rtt_ns.max(ewma.estimate_ns())
            } else {
                rtt_ns
            };
            ewma.observe(rtt_ns, now, self.decay_ns);
        }
        endpoint.requests.fetch_add(1, Ordering::Relaxed);
        endpoint.window_requests.fetch_add(1, Ordering::Relaxed);
        endpoint
            .window_latency_ns
            .fetch_add(rtt_ns as u64, Ordering::Relaxed);
        if !failed {
            endpoint.metrics.success.increment(1);
            endpoint.consecutive_failures.store(0, Ordering::Relaxed);
            return;
        }
        endpoint.metrics.failure.increment(1);
        endpoint.failures.fetch_add(1, Ordering::Relaxed);
        endpoint.window_failures.fetch_add(1, Ordering::Relaxed);
        let in_a_row = endpoint
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        let limit = self.outlier.consecutive_failures;
        if limit > 0 && in_a_row >= limit && !endpoint.ejected.load(Ordering::Relaxed) {
            self.try_eject(endpoint, EjectReason::ConsecutiveFailures, now);
        }
    }

    /// Ejects `endpoint` unless that would break `max_ejection_percent` or
    /// leave no eligible endpoint.
    fn try_eject(&self, endpoint: &EndpointState, reason: EjectReason, now: Instant) -> bool {
        let _guard = self.eject_lock.lock();
        if endpoint.ejected.load(Ordering::Relaxed) {
            return false;
        }
        let list = self.endpoints.load();
        let ejected = list
            .iter()
            .filter(|e| e.ejected.load(Ordering::Relaxed))
            .count();
        let eligible_others = list
            .iter()
            .filter(|e| e.is_eligible() && !std::ptr::eq(Arc::as_ptr(e), endpoint))
            .count();
        if !outlier::may_eject(ejected, list.len(), eligible_others, &self.outlier) {
            tracing::debug!(
                service = %self.name, endpoint = %endpoint.label, reason = reason.as_str(),
                "outlier not ejected: max_ejection_percent or last eligible endpoint"
            );
            return false;
        }
        let time = endpoint.ejection.lock().eject(now, reason, &self.outlier);
        endpoint.ejected.store(true, Ordering::Relaxed);
        endpoint.consecutive_failures.store(0, Ordering::Relaxed);
        endpoint.metrics.ejected.set(1.0);
        metrics::counter!(
            crate::metric::ENDPOINT_EJECTIONS,
            "service" => self.name.to_string(),
            "endpoint" => endpoint.label.clone(),
            "reason" => reason.as_str(),
        )
        .increment(1);
        tracing::warn!(
            service = %self.name, endpoint = %endpoint.label, reason = reason.as_str(),
            ejected_for = ?time, "endpoint ejected"
        );
        true
    }

    /// One outlier-detection round: lift expired ejections, then judge the
    /// interval's success rates and latencies.
    fn evaluate_outliers(&self, now: Instant) {
        let list = self.endpoints.load();
        for e in list.iter() {
            if e.ejection.lock().tick(now) {
                e.ejected.store(false, Ordering::Relaxed);
                e.consecutive_failures.store(0, Ordering::Relaxed);
                e.metrics.ejected.set(0.0);
                tracing::info!(service = %self.name, endpoint = %e.label, "endpoint back from ejection");
            }
        }
        let samples: Vec<Sample> = list
            .iter()
            .map(|e| {
                let requests = e.window_requests.swap(0, Ordering::Relaxed);
                let latency_sum = e.window_latency_ns.swap(0, Ordering::Relaxed);
                Sample {
                    requests,
                    failures: e.window_failures.swap(0, Ordering::Relaxed),
                    latency_ns: latency_sum as f64 / requests.max(1) as f64,
                    candidate: e.is_eligible(),
                }
            })
            .collect();
        for (i, reason) in outlier::evaluate(&samples, &self.outlier) {
            self.try_eject(&list[i], reason, now);
        }
    }
}

/// The background task: follows the endpoint set, runs outlier rounds and
/// owns the health checkers (in a `JoinSet`, so they stop with it).
async fn drive(
    shared: Weak<Shared>,
    transport: Transport,
    mut endpoints: watch::Receiver<Endpoints>,
    health_check: Option<HealthCheckConfig>,
) {
    let interval = match shared.upgrade() {
        Some(s) => s.outlier.interval,
        None => return,
    };
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut checkers: HashMap<SocketAddr, (Arc<EndpointState>, AbortHandle)> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut watching = true;
    loop {
        if let (Some(hc), Some(s)) = (&health_check, shared.upgrade()) {
            sync_checkers(&s, &transport, hc, &mut checkers, &mut tasks);
        }
        tokio::select! {
            changed = endpoints.changed(), if watching => {
                let Some(s) = shared.upgrade() else { return };
                match changed {
                    Ok(()) => s.apply(&endpoints.borrow_and_update()),
                    // The source is gone: keep the last set.
                    Err(_) => watching = false,
                }
            }
            _ = ticker.tick() => {
                let Some(s) = shared.upgrade() else { return };
                s.evaluate_outliers(Instant::now());
            }
            // Reap finished checkers (they only end by being aborted).
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// Starts a health checker for each new endpoint and stops those of
/// endpoints that left the set.
fn sync_checkers(
    shared: &Shared,
    transport: &Transport,
    config: &HealthCheckConfig,
    checkers: &mut HashMap<SocketAddr, (Arc<EndpointState>, AbortHandle)>,
    tasks: &mut JoinSet<()>,
) {
    let list = shared.endpoints.load();
    checkers.retain(|addr, (state, handle)| {
        let keep = list
            .iter()
            .any(|e| e.addr() == *addr && Arc::ptr_eq(e, state));
        if !keep {
            handle.abort();
        }
        keep
    });
    for e in list.iter() {
        if let std::collections::hash_map::Entry::Vacant(slot) = checkers.entry(e.addr()) {
            let handle = tasks.spawn(health::check(
                shared.name.clone(),
                transport.clone(),
                e.clone(),
                config.clone(),
            ));
            slot.insert((e.clone(), handle));
        }
    }
}

// === impl ResponseFuture ===

pin_project! {
    /// The response future of [`ServiceClient`]: the transport's future plus
    /// the bookkeeping for the chosen endpoint (no allocation beyond the
    /// transport's own).
    ///
    /// Dropping it before completion ends the request: the endpoint's
    /// in-flight count goes down and the outcome counts nowhere.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture {
        #[pin]
        state: State,
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        Failed { error: Option<NoHealthyEndpoint> },
        Sending {
            #[pin]
            inner: switchyard_transport::ResponseFuture,
            call: Option<InFlight>,
        },
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// One request's claim on an endpoint: counted in flight until dropped.
struct InFlight {
    shared: Arc<Shared>,
    endpoint: Arc<EndpointState>,
    start: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl InFlight {
    fn finish(self, failed: bool) {
        let now = switchyard_policy::clock::now();
        let rtt_ns = crate::endpoint::nanos(now.saturating_duration_since(self.start));
        self.shared.record(&self.endpoint, now, rtt_ns, failed);
    }
}

/// A response that says the upstream, or a proxy in front of it, could not
/// serve: counted as a gateway failure for outlier detection. A `429` counts
/// too: an instance shedding load should lose traffic like one that fails.
fn is_gateway_failure(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT
    )
}

#[cfg(test)]
#[test]
fn overload_and_gateway_statuses_count_as_failures() {
    for code in [429, 502, 503, 504] {
        assert!(
            is_gateway_failure(StatusCode::from_u16(code).unwrap_or_default()),
            "{code}"
        );
    }
    for code in [200, 404, 500] {
        assert!(
            !is_gateway_failure(StatusCode::from_u16(code).unwrap_or_default()),
            "{code}"
        );
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Failed { error } => Poll::Ready(Err(match error.take() {
                Some(e) => Box::new(e),
                None => "service client future polled after completion".into(),
            })),
            StateProj::Sending { inner, call } => {
                let result = std::task::ready!(inner.poll(cx));
                let Some(call) = call.take() else {
                    return Poll::Ready(
                        Err("service client future polled after completion".into()),
                    );
                };
                match result {
                    Ok(res) => {
                        call.finish(is_gateway_failure(res.status()));
                        Poll::Ready(Ok(res))
                    }
                    Err(source) => {
                        let error = EndpointError {
                            service: call.shared.name.clone(),
                            endpoint: call.endpoint.addr(),
                            source,
                        };
                        call.finish(true);
                        Poll::Ready(Err(Box::new(error)))
                    }
                }
            }
        }
    }
}

/// Whether `err` (anywhere in its chain) is a [`TransportError`] where
/// nothing reached the upstream, so any request may be retried.
pub fn is_connect_error(err: &(dyn std::error::Error + 'static)) -> bool {
    TransportError::find(err).is_some_and(TransportError::is_connect)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::time_left_value;

    #[test]
    fn time_left_is_whole_milliseconds_whichever_value_came_before() {
        assert_eq!(time_left_value(Duration::from_micros(1_999_999)), "1999");
        // The same milliseconds again: the remembered value.
        assert_eq!(time_left_value(Duration::from_millis(1_999)), "1999");
        assert_eq!(time_left_value(Duration::from_micros(250)), "0");
        assert_eq!(time_left_value(Duration::from_secs(30)), "30000");
        assert_eq!(time_left_value(Duration::from_millis(1_999)), "1999");
    }
}
