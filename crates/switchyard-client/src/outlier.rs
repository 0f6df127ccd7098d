//! Outlier detection as pure logic: the per-endpoint ejection state machine
//! and the periodic success-rate and latency evaluation.
//!
//! Nothing here touches atomics, tasks or sockets; `service.rs` feeds it.

use std::time::Duration;

use tokio::time::Instant;

use crate::OutlierConfig;

/// Success-rate statistics need this many judged endpoints: with fewer, one
/// outlier can never fall below `mean - 1.9 * stdev` (its own deviation
/// drags the mean and widens the band: with n endpoints the outlier sits
/// exactly `sqrt(n - 1)` standard deviations below the mean).
pub(crate) const SUCCESS_RATE_MIN_ENDPOINTS: usize = 5;

/// Why an endpoint was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EjectReason {
    ConsecutiveFailures,
    SuccessRate,
    Latency,
}

impl EjectReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::ConsecutiveFailures => "consecutive_failures",
            Self::SuccessRate => "success_rate",
            Self::Latency => "latency",
        }
    }
}

/// One endpoint's ejection history.
#[derive(Debug, Default)]
pub(crate) struct Ejection {
    /// When the current ejection ends; `None` while not ejected.
    until: Option<Instant>,
    /// Multiplier of the next ejection's length minus one; grows with each
    /// ejection and shrinks while the endpoint behaves.
    multiplier: u32,
    /// Length of the latest ejection.
    last: Duration,
    /// Since when the endpoint has been back (or since the multiplier last
    /// stepped down).
    back_since: Option<Instant>,
    /// Ejections ever.
    total: u64,
    /// Why the latest ejection happened.
    reason: Option<EjectReason>,
}

impl Ejection {
    #[cfg(test)]
    pub(crate) fn is_ejected(&self) -> bool {
        self.until.is_some()
    }

    /// Ejects the endpoint now; returns how long for.
    pub(crate) fn eject(
        &mut self,
        now: Instant,
        reason: EjectReason,
        config: &OutlierConfig,
    ) -> Duration {
        self.reason = Some(reason);
        self.multiplier = self.multiplier.saturating_add(1);
        let time = config
            .base_ejection_time
            .saturating_mul(self.multiplier)
            .min(config.max_ejection_time);
        self.until = Some(now + time);
        self.last = time;
        self.back_since = None;
        self.total += 1;
        time
    }

    /// Advances the clock: lifts an ejection whose time is up (returns
    /// true then), and steps the multiplier down by one for each stretch the
    /// endpoint stayed back as long as its last ejection lasted.
    pub(crate) fn tick(&mut self, now: Instant) -> bool {
        match (self.until, self.back_since) {
            (Some(until), _) if now >= until => {
                self.until = None;
                self.back_since = Some(now);
                true
            }
            (None, Some(since))
                if self.multiplier > 0 && now.duration_since(since) >= self.last =>
            {
                self.multiplier -= 1;
                self.back_since = Some(now);
                false
            }
            _ => false,
        }
    }

    /// Time left in the current ejection.
    pub(crate) fn remaining(&self, now: Instant) -> Option<Duration> {
        self.until.map(|until| until.saturating_duration_since(now))
    }

    /// Ejections ever.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Why the latest ejection happened.
    pub(crate) fn reason(&self) -> Option<EjectReason> {
        self.reason
    }
}

/// What one endpoint did in the last interval.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// Requests completed in the interval.
    pub(crate) requests: u64,
    /// Of those, gateway failures.
    pub(crate) failures: u64,
    /// Mean latency of the interval's requests, in nanoseconds.
    pub(crate) latency_ns: f64,
    /// Whether the endpoint may be ejected (not ejected already).
    pub(crate) candidate: bool,
}

/// The endpoints (by index into `samples`) the success-rate and latency
/// rules would eject, in the order to try them. The caller enforces
/// `max_ejection_percent`.
pub(crate) fn evaluate(samples: &[Sample], config: &OutlierConfig) -> Vec<(usize, EjectReason)> {
    let min = u64::from(config.success_rate_min_requests.max(1));
    let judged: Vec<usize> = (0..samples.len())
        .filter(|&i| samples[i].candidate && samples[i].requests >= min)
        .collect();
    let mut out = Vec::new();
    if judged.is_empty() {
        return out;
    }

    let rate = |i: usize| {
        let s = &samples[i];
        (s.requests - s.failures.min(s.requests)) as f64 / s.requests as f64
    };
    let band = (judged.len() >= SUCCESS_RATE_MIN_ENDPOINTS).then(|| {
        let n = judged.len() as f64;
        let mean = judged.iter().map(|&i| rate(i)).sum::<f64>() / n;
        let var = judged
            .iter()
            .map(|&i| (rate(i) - mean).powi(2))
            .sum::<f64>()
            / n;
        mean - config.success_rate_stdev_factor * var.sqrt()
    });
    for &i in &judged {
        let r = rate(i);
        let below_threshold = r < config.success_rate_threshold;
        let below_band = band.is_some_and(|b| r < b);
        if below_threshold || below_band {
            out.push((i, EjectReason::SuccessRate));
        }
    }

    if config.latency_factor > 0.0 && judged.len() >= 3 {
        for &i in &judged {
            if out.iter().any(|&(j, _)| j == i) {
                continue;
            }
            let mut others: Vec<f64> = judged
                .iter()
                .filter(|&&j| j != i)
                .map(|&j| samples[j].latency_ns)
                .collect();
            others.sort_by(f64::total_cmp);
            let mid = others.len() / 2;
            let median = if others.len().is_multiple_of(2) {
                (others[mid - 1] + others[mid]) / 2.0
            } else {
                others[mid]
            };
            if median > 0.0 && samples[i].latency_ns > config.latency_factor * median {
                out.push((i, EjectReason::Latency));
            }
        }
    }
    out
}

/// Whether one more endpoint may be ejected when `ejected` of `total` are
/// already out and `eligible_others` endpoints besides it would still take
/// traffic.
pub(crate) fn may_eject(
    ejected: usize,
    total: usize,
    eligible_others: usize,
    config: &OutlierConfig,
) -> bool {
    eligible_others > 0 && (ejected + 1) * 100 <= config.max_ejection_percent as usize * total
}

#[cfg(test)]
mod tests;
