//! Circuit breaker.

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Calls flow; outcomes are recorded in the window.
    Closed,
    /// Calls are rejected until the open duration ends.
    Open,
    /// A limited number of probe calls decide whether to close or re-open.
    HalfOpen,
    /// Opened by hand: every call is rejected, no probe is let through.
    ForcedOpen,
    /// Every call is admitted, nothing is recorded.
    Disabled,
    /// Every call is admitted; rates are computed and reported, never acted on.
    MetricsOnly,
}

impl State {
    /// A stable lowercase name, for metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
            State::ForcedOpen => "forced-open",
            State::Disabled => "disabled",
            State::MetricsOnly => "metrics-only",
        }
    }

    /// The value of the `switchyard_breaker_state` gauge.
    pub fn as_gauge(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::Open => 1.0,
            State::HalfOpen => 2.0,
            State::ForcedOpen => 3.0,
            State::Disabled => 4.0,
            State::MetricsOnly => 5.0,
        }
    }
}
