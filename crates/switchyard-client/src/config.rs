//! Balancer, outlier-detection and health-check configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default [`BalancerConfig::decay`]: 10 seconds.
pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);
/// Default [`BalancerConfig::default_rtt`]: 30 milliseconds.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// Default [`OutlierConfig::consecutive_failures`]: 5.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// Default [`OutlierConfig::interval`]: 1 second.
pub const DEFAULT_OUTLIER_INTERVAL: Duration = Duration::from_secs(1);
/// Default [`OutlierConfig::success_rate_min_requests`]: 20.
pub const DEFAULT_SUCCESS_RATE_MIN_REQUESTS: u32 = 20;
/// Default [`OutlierConfig::success_rate_stdev_factor`]: 1.9.
pub const DEFAULT_SUCCESS_RATE_STDEV_FACTOR: f64 = 1.9;
/// Default [`OutlierConfig::success_rate_threshold`]: 0.8.
pub const DEFAULT_SUCCESS_RATE_THRESHOLD: f64 = 0.8;
/// Default [`OutlierConfig::latency_factor`]: 3.0.
pub const DEFAULT_LATENCY_FACTOR: f64 = 3.0;
/// Default [`OutlierConfig::base_ejection_time`]: 10 seconds.
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(10);
/// Default [`OutlierConfig::max_ejection_time`]: 300 seconds.
pub const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
/// Default [`OutlierConfig::max_ejection_percent`]: 50.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 50;

/// Default [`HealthCheckConfig::interval`]: 5 seconds.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// Default [`HealthCheckConfig::timeout`]: 1 second.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Default [`HealthCheckConfig::healthy_threshold`]: 2.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
/// Default [`HealthCheckConfig::unhealthy_threshold`]: 3.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;

/// How requests are spread: power of two choices over peak-EWMA cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalancerConfig {
    /// Time constant of the peak-EWMA latency estimate: an old observation's
    /// weight falls to 1/e after this long. Shorter reacts faster to an
    /// endpoint recovering, longer smooths noise. Default `"10s"`.
    #[serde(with = "humantime_serde")]
    pub decay: Duration,
    /// Latency assumed for an endpoint that has no measurement yet.
    /// Default `"30ms"`.
    #[serde(with = "humantime_serde")]
    pub default_rtt: Duration,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        Self {
            decay: DEFAULT_DECAY,
            default_rtt: DEFAULT_RTT,
        }
    }
}

impl BalancerConfig {
    /// Checks the values make sense, explaining how to fix any that don't.
    pub fn validate(&self) -> Result<(), String> {
        if self.decay.is_zero() {
            return Err("decay: must be greater than 0; a typical value is \"10s\"".to_owned());
        }
        if self.default_rtt.is_zero() {
            return Err(
                "default_rtt: must be greater than 0; use the service's typical latency, e.g. \"30ms\""
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// Passive outlier detection: endpoints that fail or slow down are ejected
/// from balancing for a while.
///
/// A *gateway failure* is a transport error (connect refused or timed out,
/// connection reset, protocol error) or a `429`, `502`, `503` or `504` response;
/// every other response is a success. Three rules eject:
///
/// - **consecutive failures**, checked on every response: `consecutive_failures`
///   gateway failures in a row eject at once;
/// - **success rate**, checked every `interval` over the requests of that
///   interval, for endpoints with at least `success_rate_min_requests`: an
///   endpoint is ejected when its success rate is below
///   `success_rate_threshold`, or (with at least 5 such endpoints, below
///   which one outlier cannot fall outside the band) below
///   `mean - success_rate_stdev_factor * stdev` of their success rates;
/// - **latency**, checked every `interval`: an endpoint with at least
///   `success_rate_min_requests` requests in the interval whose mean latency
///   in the interval exceeds `latency_factor` times the median of the other
///   such endpoints' (at least 2 others) is ejected. (The interval mean, not
///   the peak-EWMA estimate: one slow response must not eject an endpoint.)
///
/// The n-th ejection of an endpoint lasts `base_ejection_time * n`, capped at
/// `max_ejection_time`; n steps back down by one each time the endpoint has
/// stayed un-ejected for as long as its last ejection lasted. At most
/// `max_ejection_percent` of the endpoints are ejected at once, and never
/// the last eligible one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierConfig {
    /// Gateway failures in a row that eject an endpoint; 0 disables the rule.
    /// Default `5`.
    pub consecutive_failures: u32,
    /// How often success-rate and latency outliers are evaluated and
    /// expired ejections lifted. Default `"1s"`.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Requests an endpoint needs in one interval to be judged by the
    /// success-rate and latency rules. Default `20`.
    pub success_rate_min_requests: u32,
    /// Endpoints whose success rate is below `mean - factor * stdev` of all
    /// judged endpoints are ejected (needs at least 5 judged endpoints).
    /// Default `1.9`.
    pub success_rate_stdev_factor: f64,
    /// Endpoints whose success rate in an interval is below this fraction are
    /// ejected; `0.0` disables the rule. Default `0.8`.
    pub success_rate_threshold: f64,
    /// Endpoints whose mean latency in an interval exceeds this multiple of
    /// the median of the others are ejected; `0.0` disables the rule. Default `3.0`.
    pub latency_factor: f64,
    /// Length of a first ejection; the n-th lasts n times this.
    /// Default `"10s"`.
    #[serde(with = "humantime_serde")]
    pub base_ejection_time: Duration,
    /// Upper bound on the length of one ejection. Default `"300s"`.
    #[serde(with = "humantime_serde")]
    pub max_ejection_time: Duration,
    /// Largest share of a service's endpoints, in percent, ejected at once;
    /// the last eligible endpoint is never ejected. Default `50`.
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
            interval: DEFAULT_OUTLIER_INTERVAL,
            success_rate_min_requests: DEFAULT_SUCCESS_RATE_MIN_REQUESTS,
            success_rate_stdev_factor: DEFAULT_SUCCESS_RATE_STDEV_FACTOR,
            success_rate_threshold: DEFAULT_SUCCESS_RATE_THRESHOLD,
            latency_factor: DEFAULT_LATENCY_FACTOR,
            base_ejection_time: DEFAULT_BASE_EJECTION_TIME,
            max_ejection_time: DEFAULT_MAX_EJECTION_TIME,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
        }
    }
}

impl OutlierConfig {
    /// Checks the values make sense, explaining how to fix any that don't.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval.is_zero() {
            return Err("interval: must be greater than 0; a typical value is \"1s\"".to_owned());
        }
        if !(self.success_rate_stdev_factor.is_finite() && self.success_rate_stdev_factor > 0.0) {
            return Err(
                "success_rate_stdev_factor: must be a positive number; Envoy's default is 1.9"
                    .to_owned(),
            );
        }
        if !(0.0..=1.0).contains(&self.success_rate_threshold) {
            return Err(
                "success_rate_threshold: must be a fraction between 0.0 and 1.0 \
                        (0.8 ejects endpoints failing more than 1 request in 5; 0.0 disables)"
                    .to_owned(),
            );
        }
        if !(self.latency_factor == 0.0
            || self.latency_factor.is_finite() && self.latency_factor > 1.0)
        {
            return Err(
                "latency_factor: must be greater than 1.0 (or 0.0 to disable); a typical value is 3.0"
                    .to_owned(),
            );
        }
        if self.base_ejection_time.is_zero() {
            return Err(
                "base_ejection_time: must be greater than 0; a typical value is \"10s\"".to_owned(),
            );
        }
        if self.max_ejection_time < self.base_ejection_time {
            return Err(format!(
                "max_ejection_time: must be at least base_ejection_time ({}); raise it or lower base_ejection_time",
                humantime::format_duration(self.base_ejection_time)
            ));
        }
        if self.max_ejection_percent > 100 {
            return Err("max_ejection_percent: must be between 0 and 100".to_owned());
        }
        Ok(())
    }
}

/// Active health checking: an HTTP `GET` to every endpoint on a timer.
///
/// An endpoint starts healthy. A `2xx` answer within `timeout` passes; anything
/// else (another status, a transport error, no answer in time) fails.
/// `unhealthy_threshold` failures in a row mark it unhealthy (it gets no
/// traffic) and `healthy_threshold` passes in a row mark it healthy again.
/// The first check runs as soon as the endpoint is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Path (and optional query) to `GET`, such as `"/healthz"`. Required.
    pub path: String,
    /// Time between checks of one endpoint. Default `"5s"`.
    #[serde(default = "default_health_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How long one check may take before it counts as failed. Default `"1s"`.
    #[serde(default = "default_health_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Passes in a row that make an unhealthy endpoint healthy. Default `2`.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Failures in a row that make a healthy endpoint unhealthy. Default `3`.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

fn default_health_interval() -> Duration {
    DEFAULT_HEALTH_INTERVAL
}
fn default_health_timeout() -> Duration {
    DEFAULT_HEALTH_TIMEOUT
}
fn default_healthy_threshold() -> u32 {
    DEFAULT_HEALTHY_THRESHOLD
}
fn default_unhealthy_threshold() -> u32 {
    DEFAULT_UNHEALTHY_THRESHOLD
}

impl HealthCheckConfig {
    /// A health check of `path` with the default interval, timeout and thresholds.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            interval: DEFAULT_HEALTH_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            healthy_threshold: DEFAULT_HEALTHY_THRESHOLD,
            unhealthy_threshold: DEFAULT_UNHEALTHY_THRESHOLD,
        }
    }

    /// Checks the values make sense, explaining how to fix any that don't.
    pub fn validate(&self) -> Result<(), String> {
        if !self.path.starts_with('/') || self.path.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(format!(
                "path: {:?} is not an absolute path; write it like \"/healthz\"",
                self.path
            ));
        }
        if self.interval.is_zero() {
            return Err("interval: must be greater than 0; a typical value is \"5s\"".to_owned());
        }
        if self.timeout.is_zero() {
            return Err("timeout: must be greater than 0; a typical value is \"1s\"".to_owned());
        }
        if self.healthy_threshold == 0 {
            return Err("healthy_threshold: must be at least 1".to_owned());
        }
        if self.unhealthy_threshold == 0 {
            return Err("unhealthy_threshold: must be at least 1".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_from_empty_tables() {
        let b: BalancerConfig = toml::from_str("").unwrap();
        assert_eq!(b, BalancerConfig::default());
        assert_eq!(b.decay, Duration::from_secs(10));
        assert_eq!(b.default_rtt, Duration::from_millis(30));

        let o: OutlierConfig = toml::from_str("").unwrap();
        assert_eq!(o, OutlierConfig::default());
        assert_eq!(o.consecutive_failures, 5);
        assert_eq!(o.max_ejection_time, Duration::from_secs(300));
        o.validate().unwrap();

        // A health check needs its path; everything else has a default.
        let h: HealthCheckConfig = toml::from_str("path = \"/healthz\"").unwrap();
        assert_eq!(h, HealthCheckConfig::new("/healthz"));
        h.validate().unwrap();
        let err = toml::from_str::<HealthCheckConfig>("interval = \"1s\"").unwrap_err();
        assert!(err.to_string().contains("missing field `path`"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = toml::from_str::<OutlierConfig>("consecutive_failure = 3").unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown field `consecutive_failure`"),
            "{err}"
        );
        let err = toml::from_str::<BalancerConfig>("decay = \"fast\"").unwrap_err();
        assert!(err.to_string().contains("decay"), "{err}");

        let o = OutlierConfig {
            max_ejection_time: Duration::from_secs(1),
            ..OutlierConfig::default()
        };
        assert!(o.validate().unwrap_err().starts_with("max_ejection_time:"));
        let o = OutlierConfig {
            success_rate_threshold: 80.0,
            ..OutlierConfig::default()
        };
        assert!(
            o.validate()
                .unwrap_err()
                .starts_with("success_rate_threshold:")
        );
        assert!(
            HealthCheckConfig::new("healthz")
                .validate()
                .unwrap_err()
                .starts_with("path:")
        );
    }
}
