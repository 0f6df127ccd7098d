//! Per-endpoint balancing state: load, latency estimate, counters, health.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    time::Duration,
};

use http::uri::Authority;
use parking_lot::Mutex;
use serde::Serialize;
use switchyard_discovery::Endpoint;
use tokio::time::Instant;

use crate::outlier::Ejection;

/// Peak-EWMA latency estimate (Finagle, linkerd, tower).
///
/// A sample above the estimate replaces it at once (peak), so an endpoint
/// turning slow is penalised immediately; a sample below pulls the estimate
/// down exponentially with time constant `decay` measured from the previous
/// sample, so it recovers gradually. Read for balancing, the estimate also
/// decays towards zero while no sample arrives, so an endpoint that lost its
/// traffic is eventually tried again.
#[derive(Debug)]
pub(crate) struct PeakEwma {
    estimate_ns: f64,
    stamp: Instant,
}

impl PeakEwma {
    pub(crate) fn new(initial_ns: f64, now: Instant) -> Self {
        Self {
            estimate_ns: initial_ns,
            stamp: now,
        }
    }

    /// Folds in one round-trip time.
    pub(crate) fn observe(&mut self, rtt_ns: f64, now: Instant, decay_ns: f64) {
        if rtt_ns > self.estimate_ns {
            self.estimate_ns = rtt_ns;
        } else {
            let elapsed = nanos(now.saturating_duration_since(self.stamp));
            let w = (-elapsed / decay_ns).exp();
            self.estimate_ns = self.estimate_ns * w + rtt_ns * (1.0 - w);
        }
        self.stamp = self.stamp.max(now);
    }

    /// The estimate as the balancer sees it at `now` (decayed while idle).
    pub(crate) fn cost_at(&self, now: Instant, decay_ns: f64) -> f64 {
        let elapsed = nanos(now.saturating_duration_since(self.stamp));
        self.estimate_ns * (-elapsed / decay_ns).exp()
    }

    /// The estimate at the last sample.
    pub(crate) fn estimate_ns(&self) -> f64 {
        self.estimate_ns
    }
}

/// `duration` in nanoseconds, as the estimates keep them. Not
/// `as_nanos() as f64`: converting its `u128` takes a library call, this
/// takes two `u64` conversions (it runs a few times per request).
pub(crate) fn nanos(duration: Duration) -> f64 {
    duration.as_secs() as f64 * 1e9 + f64::from(duration.subsec_nanos())
}

/// Metric handles of one endpoint, made once so the hot path only bumps them.
#[derive(Debug)]
pub(crate) struct EndpointMetrics {
    pub(crate) success: metrics::Counter,
    pub(crate) failure: metrics::Counter,
    pub(crate) ejected: metrics::Gauge,
    pub(crate) healthy: metrics::Gauge,
}

/// One endpoint as the balancer tracks it.
#[derive(Debug)]
pub(crate) struct EndpointState {
    pub(crate) endpoint: Endpoint,
    pub(crate) authority: Authority,
    /// `addr` as text, the `endpoint` metrics label.
    pub(crate) label: String,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) ewma: Mutex<PeakEwma>,
    pub(crate) requests: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) window_requests: AtomicU64,
    pub(crate) window_failures: AtomicU64,
    /// Sum of the interval's response times, for the latency rule.
    pub(crate) window_latency_ns: AtomicU64,
    pub(crate) consecutive_failures: AtomicU32,
    /// Mirror of `ejection.is_ejected()` for the hot path.
    pub(crate) ejected: AtomicBool,
    pub(crate) ejection: Mutex<Ejection>,
    /// Verdict of the active health check (true without one).
    pub(crate) healthy: AtomicBool,
    pub(crate) metrics: EndpointMetrics,
}

impl EndpointState {
    pub(crate) fn new(
        service: &str,
        endpoint: Endpoint,
        default_rtt: Duration,
        now: Instant,
    ) -> Self {
        let label = endpoint.addr.to_string();
        // A `SocketAddr`'s text form is always a valid authority.
        let authority = Authority::try_from(label.as_str())
            .unwrap_or_else(|_| Authority::from_static("invalid.invalid"));
        let labels = [("service", service.to_owned()), ("endpoint", label.clone())];
        let counter = |outcome: &'static str| {
            metrics::counter!(
                crate::metric::UPSTREAM_REQUESTS,
                &[
                    ("service", service.to_owned()),
                    ("endpoint", label.clone()),
                    ("outcome", outcome.to_owned()),
                ]
            )
        };
        let metrics = EndpointMetrics {
            success: counter("success"),
            failure: counter("failure"),
            ejected: metrics::gauge!(crate::metric::ENDPOINT_EJECTED, &labels),
            healthy: metrics::gauge!(crate::metric::ENDPOINT_HEALTHY, &labels),
        };
        metrics.ejected.set(0.0);
        metrics.healthy.set(1.0);
        Self {
            endpoint,
            authority,
            label,
            in_flight: AtomicUsize::new(0),
            ewma: Mutex::new(PeakEwma::new(default_rtt.as_nanos() as f64, now)),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            window_requests: AtomicU64::new(0),
            window_failures: AtomicU64::new(0),
            window_latency_ns: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            ejection: Mutex::new(Ejection::default()),
            healthy: AtomicBool::new(true),
            metrics,
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.endpoint.addr
    }

    /// Whether the balancer may send to this endpoint: healthy, not ejected,
    /// and not drained by a zero weight.
    pub(crate) fn is_eligible(&self) -> bool {
        self.endpoint.weight > 0
            && self.healthy.load(Ordering::Relaxed)
            && !self.ejected.load(Ordering::Relaxed)
    }

    /// Balancing cost: latency estimate × (in-flight + 1) / weight.
    pub(crate) fn cost(&self, now: Instant, decay_ns: f64) -> f64 {
        let rtt = self.ewma.lock().cost_at(now, decay_ns);
        let load = (self.in_flight.load(Ordering::Relaxed) + 1) as f64;
        rtt * load / f64::from(self.endpoint.weight.max(1))
    }

    pub(crate) fn snapshot(&self, now: Instant) -> EndpointSnapshot {
        let (ejected_for, ejections, reason) = {
            let e = self.ejection.lock();
            (e.remaining(now), e.total(), e.reason())
        };
        EndpointSnapshot {
            addr: self.endpoint.addr,
            weight: self.endpoint.weight,
            metadata: self.endpoint.metadata.clone(),
            healthy: self.healthy.load(Ordering::Relaxed),
            ejected: ejected_for.is_some(),
            ejected_for_ms: ejected_for.map(|d| d.as_millis() as u64),
            ejections,
            ejection_reason: reason.map(|r| r.as_str()),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            ewma_ms: self.ewma.lock().estimate_ns() / 1e6,
            requests_total: self.requests.load(Ordering::Relaxed),
            failures_total: self.failures.load(Ordering::Relaxed),
        }
    }
}

/// The state of one endpoint, for the admin API.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct EndpointSnapshot {
    /// Where the endpoint listens.
    pub addr: SocketAddr,
    /// Its weight (share of traffic; 0 drains it).
    pub weight: u32,
    /// Its labels from discovery.
    pub metadata: BTreeMap<String, String>,
    /// The active health check's verdict (true without a health check).
    pub healthy: bool,
    /// Whether outlier detection has it ejected now.
    pub ejected: bool,
    /// Time left in the current ejection, in milliseconds.
    pub ejected_for_ms: Option<u64>,
    /// How many times it has been ejected.
    pub ejections: u64,
    /// Why it was last ejected: `consecutive_failures`, `success_rate` or
    /// `latency` (`None` if never).
    pub ejection_reason: Option<&'static str>,
    /// Requests sent to it and not yet answered.
    pub in_flight: usize,
    /// Its peak-EWMA latency estimate, in milliseconds.
    pub ewma_ms: f64,
    /// Requests completed (answered or failed; cancelled ones not counted).
    pub requests_total: u64,
    /// Of those, gateway failures.
    pub failures_total: u64,
}

/// The state of one service's balancer, for the admin API.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ServiceSnapshot {
    /// The service's name.
    pub name: String,
    /// Its endpoints, in discovery order.
    pub endpoints: Vec<EndpointSnapshot>,
    /// How many endpoints may receive traffic now (healthy, not ejected,
    /// weight above 0).
    pub eligible: usize,
    /// How many endpoints are ejected now.
    pub ejected: usize,
    /// How many endpoints the active health check marks unhealthy.
    pub unhealthy: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_jumps_up_and_decays_down() {
        let decay = Duration::from_secs(10).as_nanos() as f64;
        let mut e = PeakEwma::new(30e6, Instant::now());

        // A slower sample replaces the estimate at once.
        e.observe(100e6, Instant::now(), decay);
        assert_eq!(e.estimate_ns(), 100e6);

        // A fast sample 10s (one time constant) later moves it 63% of the way.
        tokio::time::advance(Duration::from_secs(10)).await;
        e.observe(0.0, Instant::now(), decay);
        let expected = 100e6 * (-1.0f64).exp();
        assert!(
            (e.estimate_ns() - expected).abs() < 1.0,
            "{}",
            e.estimate_ns()
        );

        // Idle, the balancer's view decays towards zero; the estimate itself
        // stays until the next sample.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(e.cost_at(Instant::now(), decay) < e.estimate_ns() / 2.0);
    }
}
