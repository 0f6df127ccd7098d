//! What the demo's live table shows: per-second windows per route (seen by
//! the load driver) and per service (seen by the gateway's policies through
//! an [`Observer`]), and breaker transitions printed as they happen.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use parking_lot::Mutex;
use switchyard_policy::{Event, Observer, Outcome};
use tokio::time::Instant;

/// One second of calls.
#[derive(Debug, Default, Clone)]
pub(crate) struct Window {
    pub(crate) count: u64,
    pub(crate) errors: u64,
    pub(crate) degraded: u64,
    latencies_us: Vec<u32>,
}

impl Window {
    pub(crate) fn record(&mut self, latency: Duration, error: bool, degraded: bool) {
        self.count += 1;
        self.errors += u64::from(error);
        self.degraded += u64::from(degraded);
        self.latencies_us
            .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
    }

    /// p50 and p99 of the latencies, in milliseconds.
    pub(crate) fn p50_p99_ms(&mut self) -> (Option<f64>, Option<f64>) {
        self.latencies_us.sort_unstable();
        let at = |q: f64| {
            let last = self.latencies_us.len().checked_sub(1)?;
            let i = (last as f64 * q).round() as usize;
            Some(f64::from(self.latencies_us[i]) / 1000.0)
        };
        (at(0.5), at(0.99))
    }

    pub(crate) fn error_pct(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.errors as f64 * 100.0 / self.count as f64
        }
    }

    pub(crate) fn degraded_pct(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.degraded as f64 * 100.0 / self.count as f64
        }
    }
}

/// Shared between the load driver, the gateway's policies and the printer.
pub(crate) struct Stats {
    started: Instant,
    routes: Mutex<BTreeMap<&'static str, Window>>,
    services: Mutex<BTreeMap<String, Window>>,
    breakers: Mutex<BTreeMap<String, &'static str>>,
    /// Every breaker transition, for the summary.
    pub(crate) transitions: Mutex<Vec<(String, &'static str, &'static str)>>,
}

impl Stats {
    pub(crate) fn new(started: Instant) -> Arc<Stats> {
        Arc::new(Stats {
            started,
            routes: Mutex::default(),
            services: Mutex::default(),
            breakers: Mutex::default(),
            transitions: Mutex::default(),
        })
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub(crate) fn record_route(
        &self,
        route: &'static str,
        latency: Duration,
        error: bool,
        degraded: bool,
    ) {
        self.routes
            .lock()
            .entry(route)
            .or_default()
            .record(latency, error, degraded);
    }

    /// Takes the windows of the second that just ended.
    pub(crate) fn take(&self) -> (BTreeMap<&'static str, Window>, BTreeMap<String, Window>) {
        (
            std::mem::take(&mut *self.routes.lock()),
            std::mem::take(&mut *self.services.lock()),
        )
    }

    pub(crate) fn breaker(&self, service: &str) -> &'static str {
        self.breakers
            .lock()
            .get(service)
            .copied()
            .unwrap_or("closed")
    }
}

impl Observer for Stats {
    fn on_event(&self, event: &Event<'_>) {
        match *event {
            Event::Call {
                service,
                outcome,
                latency,
            } => {
                self.services
                    .lock()
                    .entry(service.to_owned())
                    .or_default()
                    .record(latency, outcome == Outcome::Failure, false);
            }
            Event::BreakerTransition { service, from, to } => {
                self.breakers.lock().insert(service.to_owned(), to.as_str());
                self.transitions
                    .lock()
                    .push((service.to_owned(), from.as_str(), to.as_str()));
                println!(
                    "  {:>5.1}s  breaker {service}: {} -> {}",
                    self.elapsed().as_secs_f64(),
                    from.as_str(),
                    to.as_str()
                );
            }
            _ => {}
        }
    }
}
