//! One observer interface through which every policy reports what it does.
//!
//! The policy crate does not know about Prometheus: the gateway plugs in an
//! [`Observer`] (for example [`MetricsObserver`], which records through the
//! `metrics` facade) and exports from there. Without an observer, reporting
//! costs one branch per event.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, OnceLock},
    time::Duration,
};

use crate::{Outcome, breaker::State};

/// Something a policy did or saw, reported to the [`Observer`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A logical call finished (after retries and hedges), as the outermost
    /// policy saw it.
    Call {
        /// The service called.
        service: &'a str,
        /// What the call counted as.
        outcome: Outcome,
        /// From the call's start to its end, rejections included.
        latency: Duration,
    },
    /// One attempt (first try, retry or hedge) finished.
    Attempt {
        /// The service called.
        service: &'a str,
        /// 1 for the first attempt.
        attempt: u32,
        /// What the attempt counted as.
        outcome: Outcome,
        /// The attempt's own duration.
        latency: Duration,
    },
    /// A retry was scheduled after `delay`.
    Retry {
        /// The service called.
        service: &'a str,
        /// The attempt about to start (2 for the first retry).
        attempt: u32,
        /// Backoff before it starts.
        delay: Duration,
    },
    /// A hedge (backup request) was sent.
    Hedge {
        /// The service called.
        service: &'a str,
    },
    /// A policy refused a call; `kind` is [`Error::kind`](crate::Error::kind).
    Rejected {
        /// The service called.
        service: &'a str,
        /// The policy that refused it.
        policy: &'static str,
        /// The stable cause name.
        kind: &'static str,
    },
    /// The circuit breaker changed state.
    BreakerTransition {
        /// The service whose breaker changed.
        service: &'a str,
        /// The state before.
        from: State,
        /// The state after.
        to: State,
    },
    /// A breaker's failure or slow-call rate crossed its threshold (also
    /// reported in metrics-only mode, where no transition follows).
    BreakerThreshold {
        /// The service whose breaker saw it.
        service: &'a str,
        /// Failure rate in percent over the window.
        failure_rate: f64,
        /// Slow-call rate in percent over the window.
        slow_call_rate: f64,
    },
    /// A fallback answered in place of a failed call.
    Fallback {
        /// The service called.
        service: &'a str,
        /// The stable cause name of the failure it replaced.
        kind: &'static str,
    },
}

/// Receives every policy [`Event`]. Must be cheap: it runs on the call path.
pub trait Observer: Send + Sync + 'static {
    /// Called once per event.
    fn on_event(&self, event: &Event<'_>);

    /// An observer for the events of `service` alone, asked for once when
    /// that service's [`Events`] handle is built: it can keep what it needs
    /// per service (metric handles) instead of looking the service up on
    /// every event. `None`, the default: this observer sees them itself.
    fn for_service(&self, service: &str) -> Option<Arc<dyn Observer>> {
        let _ = service;
        None
    }
}

/// The reporting handle each layer holds: the service name and the observer.
///
/// One `Arc` for both: several layers of every service's stack hold a
/// handle, and the gateway clones the stack per request, so each pointer
/// here is an atomic increment and decrement per layer per request.
#[derive(Clone)]
pub struct Events {
    inner: Arc<EventsInner>,
}

struct EventsInner {
    service: Arc<str>,
    observer: Option<Arc<dyn Observer>>,
}

impl Default for Events {
    /// Reports nothing, about a service with an empty name.
    fn default() -> Self {
        Self::silent("")
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("service", &self.inner.service)
            .field("observer", &self.inner.observer.is_some())
            .finish()
    }
}

impl Events {
    /// Reports events about `service` to `observer`.
    pub fn new(service: impl Into<Arc<str>>, observer: Arc<dyn Observer>) -> Self {
        let service = service.into();
        let observer = observer.for_service(&service).unwrap_or(observer);
        Self {
            inner: Arc::new(EventsInner {
                service,
                observer: Some(observer),
            }),
        }
    }

    /// Reports nothing; `service` still names the service in errors and logs.
    pub fn silent(service: impl Into<Arc<str>>) -> Self {
        Self {
            inner: Arc::new(EventsInner {
                service: service.into(),
                observer: None,
            }),
        }
    }

    /// The service these events are about.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// Builds and reports an event, if anyone listens.
    #[inline]
    pub fn emit(&self, event: impl FnOnce(&str) -> Event<'_>) {
        if let Some(observer) = &self.inner.observer {
            observer.on_event(&event(&self.inner.service));
        }
    }
}

/// Records events through the [`metrics`] facade.
///
/// | metric | type | labels |
/// | --- | --- | --- |
/// | `switchyard_policy_calls_total` | counter | service, outcome |
/// | `switchyard_policy_call_duration_seconds` | histogram | service, outcome |
/// | `switchyard_policy_attempts_total` | counter | service, outcome |
/// | `switchyard_policy_retries_total` | counter | service |
/// | `switchyard_policy_hedges_total` | counter | service |
/// | `switchyard_policy_rejections_total` | counter | service, policy, kind |
/// | `switchyard_policy_fallbacks_total` | counter | service, kind |
/// | `switchyard_breaker_state` | gauge (0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled, 5 metrics-only) | service |
/// | `switchyard_breaker_transitions_total` | counter | service, to |
/// | `switchyard_breaker_threshold_exceeded_total` | counter | service |
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsObserver;

impl Observer for MetricsObserver {
    fn on_event(&self, event: &Event<'_>) {
        use metrics::{counter, gauge, histogram};
        match *event {
            Event::Call {
                service,
                outcome,
                latency,
            } => {
                let labels = [
                    ("service", service.to_owned()),
                    ("outcome", outcome.as_str().to_owned()),
                ];
                counter!("switchyard_policy_calls_total", &labels).increment(1);
                histogram!("switchyard_policy_call_duration_seconds", &labels)
                    .record(latency.as_secs_f64());
            }
            Event::Attempt {
                service, outcome, ..
            } => {
                counter!("switchyard_policy_attempts_total", "service" => service.to_owned(), "outcome" => outcome.as_str())
                    .increment(1);
            }
            Event::Retry { service, .. } => {
                counter!("switchyard_policy_retries_total", "service" => service.to_owned())
                    .increment(1);
            }
            Event::Hedge { service } => {
                counter!("switchyard_policy_hedges_total", "service" => service.to_owned())
                    .increment(1);
            }
            Event::Rejected {
                service,
                policy,
                kind,
            } => {
                counter!("switchyard_policy_rejections_total", "service" => service.to_owned(), "policy" => policy, "kind" => kind)
                    .increment(1);
            }
            Event::BreakerTransition { service, to, .. } => {
                gauge!("switchyard_breaker_state", "service" => service.to_owned())
                    .set(to.as_gauge());
                counter!("switchyard_breaker_transitions_total", "service" => service.to_owned(), "to" => to.as_str())
                    .increment(1);
            }
            Event::BreakerThreshold { service, .. } => {
                counter!("switchyard_breaker_threshold_exceeded_total", "service" => service.to_owned()).increment(1);
            }
            Event::Fallback { service, kind } => {
                counter!("switchyard_policy_fallbacks_total", "service" => service.to_owned(), "kind" => kind)
                    .increment(1);
            }
        }
    }
}

/// A [`MetricsObserver`] that keeps the metric handles of the per-call
/// series (`switchyard_policy_calls_total`,
/// `switchyard_policy_call_duration_seconds` and
/// `switchyard_policy_attempts_total`, per service and outcome) once created.
///
/// The plain observer builds owned label strings and has the recorder look
/// up each series on every event, which is most of what the policy stack
/// costs per call; this one does that once per (service, outcome). Through
/// an [`Events`] handle it is bound to the service once
/// ([`Observer::for_service`]), so an event costs no lock and no lookup;
/// called directly, it finds the service in a map. The handles belong to
/// the recorder installed when they were first needed, so create the
/// observer after the global recorder is set. Other events go through
/// [`MetricsObserver`].
#[derive(Debug, Default)]
pub struct CachedMetricsObserver {
    // foldhash: SipHash's DoS resistance buys nothing for keys that come
    // from the configuration.
    services:
        parking_lot::Mutex<HashMap<Box<str>, Arc<ServiceSeries>, foldhash::fast::RandomState>>,
}

/// The cached handles of one service, per outcome, made when first needed.
#[derive(Debug)]
struct ServiceSeries {
    service: Box<str>,
    calls: [OnceLock<(metrics::Counter, metrics::Histogram)>; OUTCOMES],
    attempts: [OnceLock<metrics::Counter>; OUTCOMES],
}

/// The number of [`Outcome`]s, which index the arrays above.
const OUTCOMES: usize = Outcome::Ignored as usize + 1;

impl ServiceSeries {
    fn new(service: &str) -> Self {
        Self {
            service: service.into(),
            calls: Default::default(),
            attempts: Default::default(),
        }
    }
}

impl Observer for ServiceSeries {
    fn on_event(&self, event: &Event<'_>) {
        let service = &*self.service;
        match *event {
            Event::Call {
                outcome, latency, ..
            } => {
                let (calls, duration) = self.calls[outcome as usize].get_or_init(|| {
                    let labels = [
                        ("service", service.to_owned()),
                        ("outcome", outcome.as_str().to_owned()),
                    ];
                    (
                        metrics::counter!("switchyard_policy_calls_total", &labels),
                        metrics::histogram!("switchyard_policy_call_duration_seconds", &labels),
                    )
                });
                calls.increment(1);
                duration.record(latency.as_secs_f64());
            }
            Event::Attempt { outcome, .. } => {
                self.attempts[outcome as usize]
                    .get_or_init(|| {
                        metrics::counter!("switchyard_policy_attempts_total", "service" => service.to_owned(), "outcome" => outcome.as_str())
                    })
                    .increment(1);
            }
            _ => MetricsObserver.on_event(event),
        }
    }
}

impl CachedMetricsObserver {
    /// An observer with an empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn series(&self, service: &str) -> Arc<ServiceSeries> {
        let mut services = self.services.lock();
        if let Some(series) = services.get(service) {
            return series.clone();
        }
        let series = Arc::new(ServiceSeries::new(service));
        services.insert(service.into(), series.clone());
        series
    }
}

impl Observer for CachedMetricsObserver {
    fn on_event(&self, event: &Event<'_>) {
        match *event {
            Event::Call { service, .. } | Event::Attempt { service, .. } => {
                self.series(service).on_event(event);
            }
            _ => MetricsObserver.on_event(event),
        }
    }

    fn for_service(&self, service: &str) -> Option<Arc<dyn Observer>> {
        Some(self.series(service))
    }
}

/// Sends every event to each of several observers, in order.
pub struct Fanout(pub Vec<Arc<dyn Observer>>);

impl fmt::Debug for Fanout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fanout({} observers)", self.0.len())
    }
}

impl Observer for Fanout {
    fn on_event(&self, event: &Event<'_>) {
        for observer in &self.0 {
            observer.on_event(event);
        }
    }

    fn for_service(&self, service: &str) -> Option<Arc<dyn Observer>> {
        let bound = self.0.iter().map(|observer| {
            observer
                .for_service(service)
                .unwrap_or_else(|| observer.clone())
        });
        Some(Arc::new(Fanout(bound.collect())))
    }
}

/// An observer that keeps every event, for tests and examples.
#[derive(Debug, Default)]
pub struct Recorder {
    events: parking_lot::Mutex<Vec<String>>,
}

impl Recorder {
    /// A new, empty recorder.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The events seen so far, each as its `Debug` text.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.events.lock())
    }
}

impl Observer for Recorder {
    fn on_event(&self, event: &Event<'_>) {
        self.events.lock().push(format!("{event:?}"));
    }
}

/// Reports one [`Event::Call`] per logical call; the outermost layer of a
/// [`Policy`](crate::Policy). Backpressure: `poll_ready` passes through.
#[derive(Debug, Clone)]
pub struct ObserveLayer<C> {
    classifier: C,
    events: Events,
}

impl<C> ObserveLayer<C> {
    /// Reports calls to `events`, classified by `classifier`.
    pub fn new(classifier: C, events: Events) -> Self {
        Self { classifier, events }
    }
}

impl<S, C: Clone> tower_layer::Layer<S> for ObserveLayer<C> {
    type Service = Observe<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            classifier: self.classifier.clone(),
            events: self.events.clone(),
        }
    }
}

/// Reports each call's outcome and latency; built by [`ObserveLayer`].
#[derive(Debug, Clone)]
pub struct Observe<S, C> {
    inner: S,
    classifier: C,
    events: Events,
}

impl<S, C, Req> tower_service::Service<Req> for Observe<S, C>
where
    S: tower_service::Service<Req, Error = crate::Error>,
    C: crate::Classify<S::Response>,
{
    type Response = S::Response;
    type Error = crate::Error;
    type Future = ObserveFuture<S::Future, C>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), crate::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let report = Report::begin(&self.events, crate::clock::now)
            .map(|report| (report, self.classifier.clone()));
        ObserveFuture {
            inner: self.inner.call(req),
            report,
        }
    }
}

/// One call's [`Event::Call`], from its start to its end.
#[derive(Debug)]
pub(crate) struct Report {
    start: tokio::time::Instant,
    events: Events,
}

impl Report {
    /// A report of a call starting at `now()`, when anyone listens (without
    /// an observer there is nothing to report, and the clock is not read).
    pub(crate) fn begin(
        events: &Events,
        now: impl FnOnce() -> tokio::time::Instant,
    ) -> Option<Self> {
        events.inner.observer.is_some().then(|| Report {
            start: now(),
            events: events.clone(),
        })
    }

    /// Reports the call as ended at `now` with `outcome`.
    pub(crate) fn end(self, outcome: crate::Outcome, now: tokio::time::Instant) {
        let latency = now.saturating_duration_since(self.start);
        self.events.emit(|service| Event::Call {
            service,
            outcome,
            latency,
        });
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`Observe`].
    #[derive(Debug)]
    pub struct ObserveFuture<F, C> {
        #[pin]
        inner: F,
        report: Option<(Report, C)>,
    }
}

impl<F, C, T> std::future::Future for ObserveFuture<F, C>
where
    F: std::future::Future<Output = Result<T, crate::Error>>,
    C: crate::Classify<T>,
{
    type Output = Result<T, crate::Error>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        if let Some((report, classifier)) = this.report.take() {
            report.end(
                classifier.classify(out.as_ref()).outcome,
                crate::clock::now(),
            );
        }
        std::task::Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cached observer writes the same series as the plain one, keeps
    /// counting through handles made once, and keeps services and outcomes
    /// apart.
    /// The value of `series` in Prometheus text, if it is there.
    fn rendered_value(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
    }

    #[test]
    fn cached_observer_counts_per_service_and_outcome() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let observer = CachedMetricsObserver::new();
        let call = |service, outcome| Event::Call {
            service,
            outcome,
            latency: Duration::from_millis(3),
        };
        metrics::with_local_recorder(&recorder, || {
            observer.on_event(&call("inventory", Outcome::Success));
            observer.on_event(&call("inventory", Outcome::Failure));
            observer.on_event(&Event::Attempt {
                service: "inventory",
                attempt: 1,
                outcome: Outcome::Success,
                latency: Duration::from_millis(3),
            });
            observer.on_event(&Event::Retry {
                service: "inventory",
                attempt: 2,
                delay: Duration::from_millis(1),
            });
        });
        // Outside the recorder's scope: only cached handles can still count.
        observer.on_event(&call("inventory", Outcome::Success));
        metrics::with_local_recorder(&recorder, || {
            observer.on_event(&call("pricing", Outcome::Success));
        });

        let text = handle.render();
        tracing::info!(%text, "rendered");
        let line = |series: &str| rendered_value(&text, series);
        assert_eq!(
            line(r#"switchyard_policy_calls_total{service="inventory",outcome="success"}"#)
                .as_deref(),
            Some("2")
        );
        assert_eq!(
            line(r#"switchyard_policy_calls_total{service="inventory",outcome="failure"}"#)
                .as_deref(),
            Some("1")
        );
        assert_eq!(
            line(r#"switchyard_policy_calls_total{service="pricing",outcome="success"}"#)
                .as_deref(),
            Some("1")
        );
        assert_eq!(
            line(r#"switchyard_policy_attempts_total{service="inventory",outcome="success"}"#)
                .as_deref(),
            Some("1")
        );
        assert_eq!(
            line(r#"switchyard_policy_retries_total{service="inventory"}"#).as_deref(),
            Some("1")
        );
        assert_eq!(
            line(r#"switchyard_policy_call_duration_seconds_count{service="inventory",outcome="success"}"#)
                .as_deref(),
            Some("2")
        );
    }

    #[test]
    fn events_bind_the_cached_observer_and_a_fanout_to_their_service() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let seen = Recorder::new();
        let cached = Arc::new(CachedMetricsObserver::new());
        let fanout: Arc<dyn Observer> = Arc::new(Fanout(vec![cached.clone(), seen.clone()]));
        let call = |outcome| Event::Call {
            service: "ignored-name",
            outcome,
            latency: Duration::from_millis(2),
        };
        metrics::with_local_recorder(&recorder, || {
            let events = Events::new("orders", fanout);
            events.emit(|_| call(Outcome::Failure));
            events.emit(|_| call(Outcome::Failure));
            // The bound observer is the service's, as the map hands out.
            cached.on_event(&Event::Call {
                service: "orders",
                outcome: Outcome::Success,
                latency: Duration::from_millis(1),
            });
        });
        let text = handle.render();
        let value = |series: &str| rendered_value(&text, series);
        assert_eq!(
            value(r#"switchyard_policy_calls_total{service="orders",outcome="failure"}"#)
                .as_deref(),
            Some("2")
        );
        assert_eq!(
            value(r#"switchyard_policy_calls_total{service="orders",outcome="success"}"#)
                .as_deref(),
            Some("1")
        );
        // The series is the service's own, whatever name an event carries.
        assert!(!text.contains("ignored-name"), "{text}");
        // The other observer of the fan-out saw both events.
        assert_eq!(seen.take().len(), 2);
    }
}
