//! The breaker's configuration, as read from TOML.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default [`BreakerConfig::mode`].
pub const DEFAULT_MODE: BreakerMode = BreakerMode::Rate;
/// Default size of a count window ([`WindowConfig::Count`]).
pub const DEFAULT_WINDOW_SIZE: u32 = 100;
/// Default length of a time window ([`WindowConfig::Time`]).
pub const DEFAULT_WINDOW_DURATION: Duration = Duration::from_secs(10);
/// Default number of buckets of a time window ([`WindowConfig::Time`]).
pub const DEFAULT_WINDOW_BUCKETS: u32 = 10;
/// Default [`BreakerConfig::failure_rate_threshold`], in percent.
pub const DEFAULT_FAILURE_RATE_THRESHOLD: f64 = 50.0;
/// Default [`BreakerConfig::slow_call_rate_threshold`], in percent.
pub const DEFAULT_SLOW_CALL_RATE_THRESHOLD: f64 = 100.0;
/// Default [`BreakerConfig::slow_call_duration`].
pub const DEFAULT_SLOW_CALL_DURATION: Duration = Duration::from_secs(60);
/// Default [`BreakerConfig::minimum_calls`].
pub const DEFAULT_MINIMUM_CALLS: u32 = 20;
/// Default [`BreakerConfig::consecutive_failures`].
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// Default [`BreakerConfig::open_duration`].
pub const DEFAULT_OPEN_DURATION: Duration = Duration::from_secs(5);
/// Default [`BreakerConfig::open_duration_multiplier`].
pub const DEFAULT_OPEN_DURATION_MULTIPLIER: f64 = 1.0;
/// Default [`BreakerConfig::max_open_duration`].
pub const DEFAULT_MAX_OPEN_DURATION: Duration = Duration::from_secs(60);
/// Default [`BreakerConfig::half_open_permits`].
pub const DEFAULT_HALF_OPEN_PERMITS: u32 = 3;
/// Default [`BreakerConfig::half_open_timeout_state`].
pub const DEFAULT_HALF_OPEN_TIMEOUT_STATE: HalfOpenTimeoutState = HalfOpenTimeoutState::Open;

/// Largest count window accepted by [`BreakerConfig::validate`].
pub const MAX_WINDOW_SIZE: u32 = 1_000_000;
/// Largest number of time-window buckets accepted by [`BreakerConfig::validate`].
pub const MAX_WINDOW_BUCKETS: u32 = 3_600;

/// How the breaker decides to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerMode {
    /// Opens when the failure rate or the slow-call rate over the sliding
    /// window reaches its threshold (resilience4j style). The default.
    #[default]
    Rate,
    /// Opens after `consecutive_failures` failures in a row (Finagle failure
    /// accrual style); half-open closes after `half_open_success_threshold`
    /// successes and re-opens on the first failure.
    Consecutive,
    /// Admits every call; computes and reports the rates, never opens.
    MetricsOnly,
    /// Admits every call and records nothing.
    Disabled,
}

/// The sliding window the rates are computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowConfig {
    /// The last `size` recorded calls (a ring buffer).
    Count {
        /// Number of calls in the window. Default 100.
        #[serde(default = "default_window_size")]
        size: u32,
    },
    /// The calls of the last `duration`, kept in `buckets` fixed buckets;
    /// a whole bucket rolls off at a time.
    Time {
        /// Length of the window. Default `"10s"`.
        #[serde(with = "humantime_serde", default = "default_window_duration")]
        duration: Duration,
        /// Number of buckets the window is cut into. Default 10.
        #[serde(default = "default_window_buckets")]
        buckets: u32,
    },
}

fn default_window_size() -> u32 {
    DEFAULT_WINDOW_SIZE
}

fn default_window_duration() -> Duration {
    DEFAULT_WINDOW_DURATION
}

fn default_window_buckets() -> u32 {
    DEFAULT_WINDOW_BUCKETS
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig::Count {
            size: DEFAULT_WINDOW_SIZE,
        }
    }
}

/// Where a half-open breaker goes when `half_open_max_wait` passes before the
/// probes decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HalfOpenTimeoutState {
    /// Re-open (the open duration grows as after failed probes). The default.
    #[default]
    Open,
    /// Close, with cleared counters.
    Closed,
}

/// Configuration of one circuit breaker.
///
/// ```toml
/// mode = "rate"
/// window = { kind = "time", duration = "10s", buckets = 10 }
/// failure_rate_threshold = 50.0
/// minimum_calls = 20
/// open_duration = "5s"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// How the breaker decides to open: `"rate"`, `"consecutive"`,
    /// `"metrics_only"` or `"disabled"`. Default `"rate"`.
    pub mode: BreakerMode,
    /// The sliding window: `{ kind = "count", size = N }` or
    /// `{ kind = "time", duration = "10s", buckets = 10 }`.
    /// Default `{ kind = "count", size = 100 }`.
    pub window: WindowConfig,
    /// Failure rate in percent at or above which the breaker opens
    /// (rate mode, and the half-open verdict). Default 50.0.
    pub failure_rate_threshold: f64,
    /// Slow-call rate in percent at or above which the breaker opens.
    /// Default 100.0 (only when every call is slow).
    pub slow_call_rate_threshold: f64,
    /// A call taking at least this long is slow, whatever its outcome.
    /// Default `"60s"`.
    #[serde(with = "humantime_serde")]
    pub slow_call_duration: Duration,
    /// Calls the window must hold before a rate is evaluated (rate and
    /// metrics-only modes). Default 20.
    pub minimum_calls: u32,
    /// Failures in a row that open the breaker (consecutive mode). Default 5.
    pub consecutive_failures: u32,
    /// How long the breaker stays open before admitting probes. Default `"5s"`.
    #[serde(with = "humantime_serde")]
    pub open_duration: Duration,
    /// Each re-open after failed probes multiplies the open duration by this
    /// factor (capped by `max_open_duration`); it resets when the breaker
    /// closes. Default 1.0 (constant).
    pub open_duration_multiplier: f64,
    /// Cap of a growing open duration. Default `"60s"`.
    #[serde(with = "humantime_serde")]
    pub max_open_duration: Duration,
    /// Probe calls admitted in half-open; in rate mode the verdict is taken
    /// once this many outcomes are in. Default 3.
    pub half_open_permits: u32,
    /// Consecutive mode: successful probes needed to close (any failed
    /// probe re-opens). Default: unset, meaning `half_open_permits`.
    pub half_open_success_threshold: Option<u32>,
    /// Longest time the breaker stays half-open without a verdict; then it
    /// goes to `half_open_timeout_state`. Default: unset (no limit).
    #[serde(with = "humantime_serde")]
    pub half_open_max_wait: Option<Duration>,
    /// Where to go when `half_open_max_wait` passes: `"open"` or `"closed"`.
    /// Default `"open"`.
    pub half_open_timeout_state: HalfOpenTimeoutState,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            mode: DEFAULT_MODE,
            window: WindowConfig::default(),
            failure_rate_threshold: DEFAULT_FAILURE_RATE_THRESHOLD,
            slow_call_rate_threshold: DEFAULT_SLOW_CALL_RATE_THRESHOLD,
            slow_call_duration: DEFAULT_SLOW_CALL_DURATION,
            minimum_calls: DEFAULT_MINIMUM_CALLS,
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
            open_duration: DEFAULT_OPEN_DURATION,
            open_duration_multiplier: DEFAULT_OPEN_DURATION_MULTIPLIER,
            max_open_duration: DEFAULT_MAX_OPEN_DURATION,
            half_open_permits: DEFAULT_HALF_OPEN_PERMITS,
            half_open_success_threshold: None,
            half_open_max_wait: None,
            half_open_timeout_state: DEFAULT_HALF_OPEN_TIMEOUT_STATE,
        }
    }
}

impl BreakerConfig {
    /// Checks that the breaker can work with this configuration; the error
    /// names the key and says how to fix it.
    pub fn validate(&self) -> Result<(), String> {
        fn percent(key: &str, value: f64) -> Result<(), String> {
            if value.is_finite() && value > 0.0 && value <= 100.0 {
                Ok(())
            } else {
                Err(format!(
                    "breaker.{key}: must be in (0, 100], got {value}; set a percentage such as 50"
                ))
            }
        }
        percent("failure_rate_threshold", self.failure_rate_threshold)?;
        percent("slow_call_rate_threshold", self.slow_call_rate_threshold)?;
        match self.window {
            WindowConfig::Count { size } => {
                if size == 0 || size > MAX_WINDOW_SIZE {
                    return Err(format!(
                        "breaker.window.size: must be between 1 and {MAX_WINDOW_SIZE}, got {size}; \
                         set the number of recent calls to judge, such as 100"
                    ));
                }
                if self.mode == BreakerMode::Rate && self.minimum_calls > size {
                    return Err(format!(
                        "breaker.minimum_calls: {} is more than the window holds ({size}), so the \
                         breaker could never open; lower minimum_calls or raise breaker.window.size",
                        self.minimum_calls
                    ));
                }
            }
            WindowConfig::Time { duration, buckets } => {
                if buckets == 0 || buckets > MAX_WINDOW_BUCKETS {
                    return Err(format!(
                        "breaker.window.buckets: must be between 1 and {MAX_WINDOW_BUCKETS}, got \
                         {buckets}; set a number such as 10"
                    ));
                }
                if duration < Duration::from_millis(u64::from(buckets)) {
                    return Err(format!(
                        "breaker.window.duration: {duration:?} cut into {buckets} buckets leaves \
                         buckets shorter than 1ms; set a longer duration such as \"10s\" or fewer \
                         buckets"
                    ));
                }
            }
        }
        if self.minimum_calls == 0 {
            return Err(
                "breaker.minimum_calls: must be at least 1; set a number such as 20".to_owned(),
            );
        }
        if self.consecutive_failures == 0 {
            return Err(
                "breaker.consecutive_failures: must be at least 1; set a number such as 5"
                    .to_owned(),
            );
        }
        if self.open_duration.is_zero() {
            return Err(
                "breaker.open_duration: must be longer than 0; set a duration such as \"5s\""
                    .to_owned(),
            );
        }
        if !(self.open_duration_multiplier.is_finite() && self.open_duration_multiplier >= 1.0) {
            return Err(format!(
                "breaker.open_duration_multiplier: must be a finite number >= 1.0, got {}; use 1.0 \
                 for a constant open duration or e.g. 1.5 to grow it",
                self.open_duration_multiplier
            ));
        }
        if self.max_open_duration < self.open_duration {
            return Err(format!(
                "breaker.max_open_duration: {:?} is shorter than breaker.open_duration ({:?}); \
                 raise it or lower open_duration",
                self.max_open_duration, self.open_duration
            ));
        }
        if self.half_open_permits == 0 {
            return Err(
                "breaker.half_open_permits: must be at least 1; set a number such as 3".to_owned(),
            );
        }
        if let Some(n) = self.half_open_success_threshold
            && (n == 0 || n > self.half_open_permits)
        {
            return Err(format!(
                "breaker.half_open_success_threshold: must be between 1 and half_open_permits \
                 ({}), got {n}; raise half_open_permits or lower the threshold",
                self.half_open_permits
            ));
        }
        if self.half_open_max_wait.is_some_and(|d| d.is_zero()) {
            return Err(
                "breaker.half_open_max_wait: must be longer than 0; remove the key for no limit \
                 or set a duration such as \"30s\""
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// Successful probes that close a half-open breaker in consecutive mode.
    pub fn effective_half_open_success_threshold(&self) -> u32 {
        self.half_open_success_threshold
            .unwrap_or(self.half_open_permits)
    }
}
