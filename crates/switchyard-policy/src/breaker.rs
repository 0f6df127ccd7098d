//! Circuit breaker: stop calling a service that is failing, probe it now and
//! then, and let calls through again once it recovers.
//!
//! A [`CircuitBreaker`] is the shared state of one breaker (clone it freely,
//! every clone is the same breaker); [`BreakerLayer`] puts it in front of a
//! tower service. Each call asks for a [`Permit`] ([`CircuitBreaker::try_acquire`])
//! and reports its [`Outcome`] and latency through it.
//!
//! # States
//!
//! - **closed**: calls flow; outcomes go into the sliding window.
//! - **open**: calls are rejected with [`Error::BreakerOpen`], whose
//!   `retry_after` is the time left until the next probe is admitted.
//! - **half-open**: `half_open_permits` probe calls are admitted, the rest
//!   are rejected; the probes decide between closed and open.
//! - **forced-open**: opened by hand ([`CircuitBreaker::force_open`]), for a
//!   duration (then half-open) or until [`CircuitBreaker::reset`].
//! - **disabled** / **metrics-only**: every call is admitted; metrics-only
//!   still computes the rates and reports [`Event::BreakerThreshold`] once per
//!   crossing, but never opens.
//!
//! Open → half-open happens lazily, on the first [`try_acquire`] after the
//! open period; there is no background task, so a paused tokio clock drives
//! the breaker in tests. [`CircuitBreaker::state`] does not make that move
//! (an open breaker reads as open until someone asks for a permit), but it
//! does apply `half_open_max_wait`.
//!
//! # Modes (`mode`, default `"rate"`)
//!
//! - `"rate"` (resilience4j style): once the window holds at least
//!   `minimum_calls` (default 20) calls, the breaker opens when the failure
//!   rate reaches `failure_rate_threshold` (default 50%, the trip is `>=`) or
//!   the slow-call rate reaches `slow_call_rate_threshold` (default 100%). A
//!   call is slow when it took at least `slow_call_duration` (default 60s),
//!   whether it succeeded or failed.
//! - `"consecutive"` (Finagle failure accrual): opens after
//!   `consecutive_failures` (default 5) failures in a row; a success resets
//!   the count.
//! - `"metrics_only"` and `"disabled"`: see above.
//!
//! [`Outcome::Ignored`] counts nowhere, in any state.
//!
//! # Windows (`window`, default `{ kind = "count", size = 100 }`)
//!
//! - `{ kind = "count", size = N }`: the last N recorded calls (a ring buffer).
//! - `{ kind = "time", duration = "10s", buckets = 10 }`: the calls of the last
//!   `duration`, kept in fixed buckets; a whole bucket rolls off at a time, so
//!   the window covers between `duration - duration / buckets` and `duration`.
//!
//! # Half-open
//!
//! Entering half-open starts fresh counters. In rate mode the verdict is taken
//! once `half_open_permits` (default 3) outcomes are in, with the same
//! thresholds as in closed (no minimum-calls rule): at or above a threshold the
//! breaker re-opens, otherwise it closes with a cleared window. In consecutive
//! mode any failed probe re-opens it and `half_open_success_threshold` successes
//! (default: all `half_open_permits`) close it.
//!
//! A probe slot is taken from admission until an outcome is counted. An ignored
//! outcome or [`Permit::release`] frees the slot for another probe; a permit
//! dropped without either (the caller went away) counts as a failed probe, so a
//! cancelled probe can't leave the breaker stuck half-open. When all slots are
//! taken, callers are rejected with `retry_after` set to the time left of
//! `half_open_max_wait` if one is set, otherwise to `open_duration` (the soonest
//! a new probe could come if the current ones fail).
//!
//! `half_open_max_wait` (default: none) bounds how long the breaker waits for
//! the probes; when it passes, the breaker goes to `half_open_timeout_state`
//! (default `"open"`).
//!
//! # Open duration
//!
//! Opening from closed (or by [`CircuitBreaker::transition_to`]) lasts
//! `open_duration` (default 5s). Each re-open after failed probes (or a
//! half-open max wait running out) multiplies the previous open period by
//! `open_duration_multiplier` (default 1.0), capped at `max_open_duration`
//! (default 60s); closing the breaker resets it.
//!
//! # Late outcomes
//!
//! A permit remembers the state generation it was admitted in. Its outcome,
//! when it arrives after the breaker changed state, is counted in
//! [`BreakerSnapshot::late_outcomes`] (and in the window shown while the
//! breaker is open) but never causes a transition, never extends an open
//! period and never takes part in a half-open verdict.
//!
//! # Cost
//!
//! Admitting a call in the closed state is one atomic load and an `Arc`
//! clone, without a lock. Recording takes a short `parking_lot` mutex, never
//! held across an await. Transitions are announced to
//! [`CircuitBreaker::subscribe`] receivers (exactly one [`StateChange`] per real
//! change) and as [`Event::BreakerTransition`].
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use switchyard_policy::{Events, Outcome};
//! use switchyard_policy::breaker::{BreakerConfig, CircuitBreaker, State};
//!
//! let config = BreakerConfig {
//!     minimum_calls: 2,
//!     ..BreakerConfig::default()
//! };
//! config.validate().unwrap();
//! let breaker = CircuitBreaker::new(config, Events::silent("users"));
//!
//! for _ in 0..2 {
//!     let permit = breaker.try_acquire().unwrap();
//!     permit.record(Outcome::Failure, Duration::from_millis(12));
//! }
//! assert_eq!(breaker.state(), State::Open);
//! let err = breaker.try_acquire().unwrap_err();
//! assert_eq!(err.kind(), "breaker-open");
//! assert!(err.retry_after() <= Some(Duration::from_secs(5)));
//! ```
//!
//! [`try_acquire`]: CircuitBreaker::try_acquire
//! [`Outcome`]: crate::Outcome
//! [`Outcome::Ignored`]: crate::Outcome::Ignored
//! [`Error::BreakerOpen`]: crate::Error::BreakerOpen
//! [`Event::BreakerThreshold`]: crate::Event::BreakerThreshold
//! [`Event::BreakerTransition`]: crate::Event::BreakerTransition

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::{sync::broadcast, time::Instant};

use crate::{Error, Outcome, events::Event, events::Events};

mod config;
mod service;
mod window;

pub use config::{
    BreakerConfig, BreakerMode, DEFAULT_CONSECUTIVE_FAILURES, DEFAULT_FAILURE_RATE_THRESHOLD,
    DEFAULT_HALF_OPEN_PERMITS, DEFAULT_HALF_OPEN_TIMEOUT_STATE, DEFAULT_MAX_OPEN_DURATION,
    DEFAULT_MINIMUM_CALLS, DEFAULT_MODE, DEFAULT_OPEN_DURATION, DEFAULT_OPEN_DURATION_MULTIPLIER,
    DEFAULT_SLOW_CALL_DURATION, DEFAULT_SLOW_CALL_RATE_THRESHOLD, DEFAULT_WINDOW_BUCKETS,
    DEFAULT_WINDOW_DURATION, DEFAULT_WINDOW_SIZE, HalfOpenTimeoutState, MAX_WINDOW_BUCKETS,
    MAX_WINDOW_SIZE, WindowConfig,
};
pub(crate) use service::admit;
pub use service::{Breaker, BreakerLayer, ResponseFuture};

use window::{Totals, Window};

#[cfg(test)]
mod tests;

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

// === packed state ===

/// The state and its generation share one atomic so that a permit learns
/// both from a single load. The generation bumps on every real transition.
const STATE_BITS: u32 = 3;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;

fn pack(state: State, generation: u64) -> u64 {
    let code = match state {
        State::Closed => 0,
        State::Open => 1,
        State::HalfOpen => 2,
        State::ForcedOpen => 3,
        State::Disabled => 4,
        State::MetricsOnly => 5,
    };
    (generation << STATE_BITS) | code
}

fn state_of(packed: u64) -> State {
    match packed & STATE_MASK {
        0 => State::Closed,
        1 => State::Open,
        2 => State::HalfOpen,
        3 => State::ForcedOpen,
        4 => State::Disabled,
        _ => State::MetricsOnly,
    }
}

fn generation_of(packed: u64) -> u64 {
    packed >> STATE_BITS
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `open_until` value meaning "until reset".
const UNTIL_RESET: u64 = u64::MAX;

// === impl StateChange ===

/// One real state change, as sent to [`CircuitBreaker::subscribe`] receivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateChange {
    /// The state before.
    pub from: State,
    /// The state after.
    pub to: State,
    /// When it changed.
    pub at: Instant,
}

/// A manual transition the breaker refuses (see [`CircuitBreaker::transition_to`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot move the circuit breaker from {} to {} by hand", from.as_str(), to.as_str())]
pub struct TransitionError {
    /// The state the breaker is in (and stays in).
    pub from: State,
    /// The state asked for.
    pub to: State,
}

/// A point-in-time view of a breaker, for the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[non_exhaustive]
pub struct BreakerSnapshot {
    /// The current state.
    #[serde(serialize_with = "serialize_state")]
    pub state: State,
    /// Failure rate over the window, in percent (0 with no calls).
    pub failure_rate: f64,
    /// Slow-call rate over the window, in percent (0 with no calls).
    pub slow_call_rate: f64,
    /// Calls in the window (ignored outcomes excluded).
    pub calls: u64,
    /// Failed calls in the window.
    pub failures: u64,
    /// Slow calls in the window.
    pub slow_calls: u64,
    /// While open: time left until a probe is admitted (`None` when not open
    /// or forced open until reset).
    #[serde(with = "humantime_serde")]
    pub time_until_half_open: Option<Duration>,
    /// While half-open: probe slots taken (in flight or counted).
    pub probes_admitted: u32,
    /// Outcomes that arrived after the state they were admitted in had
    /// changed (counted, never acted on). Zeroed by [`CircuitBreaker::reset`].
    pub late_outcomes: u64,
}

fn serialize_state<S: serde::Serializer>(state: &State, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(state.as_str())
}

// === impl CircuitBreaker ===

/// The shared state of one circuit breaker; clones share it.
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

struct Shared {
    config: BreakerConfig,
    events: Events,
    origin: Instant,
    /// Where [`CircuitBreaker::reset`] returns to, given the mode.
    resting: State,
    /// `pack(state, generation)`; written only with `inner` locked.
    state: AtomicU64,
    /// End of the open period, in nanoseconds since `origin`
    /// ([`UNTIL_RESET`] for forced open without an end). Written before the
    /// state it belongs to is published.
    open_until: AtomicU64,
    inner: Mutex<Inner>,
    changes: broadcast::Sender<StateChange>,
}

struct Inner {
    window: Window,
    consecutive_failures: u32,
    /// Length of the current (or last) open period; grows on re-opens.
    open_duration: Duration,
    half_open: HalfOpen,
    /// Metrics-only: whether the last evaluation was at or above a threshold.
    threshold_exceeded: bool,
    late_outcomes: u64,
}

#[derive(Debug, Default)]
struct HalfOpen {
    entered_at: u64,
    /// Slots taken: probes in flight plus counted outcomes.
    admitted: u32,
    calls: u32,
    failures: u32,
    slow: u32,
    successes: u32,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("service", &self.shared.events.service())
            .field("state", &self.state_now())
            .finish()
    }
}

impl CircuitBreaker {
    /// A breaker in the resting state of `config.mode` (closed for `rate`
    /// and `consecutive`).
    ///
    /// Call [`BreakerConfig::validate`] first: values the breaker can't work
    /// with (a zero window, thresholds outside (0, 100], ...) are replaced by
    /// the nearest workable value (or the default) rather than panicking.
    pub fn new(config: BreakerConfig, events: Events) -> Self {
        let config = sanitize(config);
        let resting = match config.mode {
            BreakerMode::Rate | BreakerMode::Consecutive => State::Closed,
            BreakerMode::MetricsOnly => State::MetricsOnly,
            BreakerMode::Disabled => State::Disabled,
        };
        let (changes, _) = broadcast::channel(64);
        let inner = Inner {
            window: Window::new(&config.window),
            consecutive_failures: 0,
            open_duration: config.open_duration,
            half_open: HalfOpen::default(),
            threshold_exceeded: false,
            late_outcomes: 0,
        };
        Self {
            shared: Arc::new(Shared {
                events,
                origin: Instant::now(),
                resting,
                state: AtomicU64::new(pack(resting, 0)),
                open_until: AtomicU64::new(0),
                inner: Mutex::new(inner),
                changes,
                config,
            }),
        }
    }

    /// The configuration in use (after [`CircuitBreaker::new`] replaced
    /// unworkable values).
    pub fn config(&self) -> &BreakerConfig {
        &self.shared.config
    }

    /// The reporting handle this breaker emits through.
    pub fn events(&self) -> &Events {
        &self.shared.events
    }

    /// Asks to make one call.
    ///
    /// Closed, disabled and metrics-only breakers admit at once (one atomic
    /// load, no lock). An open breaker whose period has ended turns
    /// half-open here and admits the first probe. The rejection is
    /// [`Error::BreakerOpen`] with the time until a probe may be admitted
    /// (see the module docs for the half-open case and for forced open
    /// until reset, which report `open_duration`).
    pub fn try_acquire(&self) -> Result<Permit, Error> {
        let packed = self.shared.state.load(Ordering::Acquire);
        match state_of(packed) {
            State::Closed | State::MetricsOnly | State::Disabled => {
                Ok(Permit::new(&self.shared, packed))
            }
            State::Open | State::ForcedOpen => {
                let until = self.shared.open_until.load(Ordering::Acquire);
                let now = crate::clock::now();
                let at = self.shared.nanos(now);
                if at < until {
                    return Err(self.shared.open_error(until, at));
                }
                self.shared.acquire_slow(now)
            }
            State::HalfOpen => self.shared.acquire_slow(crate::clock::now()),
        }
    }

    /// The current state. Applies `half_open_max_wait`, but does not move
    /// an open breaker to half-open (only [`try_acquire`](Self::try_acquire) does).
    pub fn state(&self) -> State {
        let state = state_of(self.shared.state.load(Ordering::Acquire));
        if state == State::HalfOpen && self.shared.config.half_open_max_wait.is_some() {
            let now = Instant::now();
            let mut inner = self.shared.inner.lock();
            self.shared
                .expire_half_open(&mut inner, now, self.shared.nanos(now));
            return state_of(self.shared.state.load(Ordering::Acquire));
        }
        state
    }

    fn state_now(&self) -> State {
        state_of(self.shared.state.load(Ordering::Acquire))
    }

    /// Opens the breaker by hand: every call is rejected and no probe is
    /// admitted, for `for_` (then the breaker turns half-open on the next
    /// acquire) or, with `None`, until [`reset`](Self::reset) or another
    /// manual transition. Forcing an already forced-open breaker only moves
    /// the end.
    pub fn force_open(&self, for_: Option<Duration>) {
        let shared = &self.shared;
        let now = Instant::now();
        let at = shared.nanos(now);
        let mut inner = shared.inner.lock();
        let until = match for_ {
            Some(d) => at.saturating_add(duration_nanos(d)),
            None => UNTIL_RESET,
        };
        shared.open_until.store(until, Ordering::Release);
        inner.open_duration = shared.config.open_duration;
        shared.transition(&mut inner, State::ForcedOpen, now, at);
    }

    /// Back to the resting state of the configured mode (closed for `rate`
    /// and `consecutive`, otherwise disabled or metrics-only) with every
    /// counter zeroed, the late-outcome count included.
    pub fn reset(&self) {
        let shared = &self.shared;
        let now = Instant::now();
        let at = shared.nanos(now);
        let mut inner = shared.inner.lock();
        shared.transition(&mut inner, shared.resting, now, at);
        inner.window.clear();
        inner.consecutive_failures = 0;
        inner.threshold_exceeded = false;
        inner.late_outcomes = 0;
        inner.open_duration = shared.config.open_duration;
    }

    /// Admits every call and records nothing, until another manual transition.
    pub fn disable(&self) {
        let _ = self.transition_to(State::Disabled);
    }

    /// Admits every call; rates are computed and reported, never acted on.
    pub fn metrics_only(&self) {
        let _ = self.transition_to(State::MetricsOnly);
    }

    /// Moves the breaker by hand.
    ///
    /// Allowed: to closed, open (for `open_duration`), forced open (until
    /// reset), disabled or metrics-only from any state; to half-open only
    /// from open or forced open. Asking for the current state is a no-op
    /// that emits nothing. Anything else is a [`TransitionError`] and
    /// changes nothing.
    pub fn transition_to(&self, to: State) -> Result<(), TransitionError> {
        let shared = &self.shared;
        let now = Instant::now();
        let at = shared.nanos(now);
        let mut inner = shared.inner.lock();
        shared.expire_half_open(&mut inner, now, at);
        let from = state_of(shared.state.load(Ordering::Acquire));
        if from == to {
            return Ok(());
        }
        match to {
            State::HalfOpen if !matches!(from, State::Open | State::ForcedOpen) => {
                return Err(TransitionError { from, to });
            }
            State::Open => {
                shared.open(&mut inner, now, at, false);
                return Ok(());
            }
            State::ForcedOpen => shared.open_until.store(UNTIL_RESET, Ordering::Release),
            _ => {}
        }
        shared.transition(&mut inner, to, now, at);
        Ok(())
    }

    /// Receives one [`StateChange`] per real state change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.shared.changes.subscribe()
    }

    /// The state and the window's numbers, for the admin API.
    pub fn snapshot(&self) -> BreakerSnapshot {
        let shared = &self.shared;
        let now = Instant::now();
        let at = shared.nanos(now);
        let mut inner = shared.inner.lock();
        shared.expire_half_open(&mut inner, now, at);
        let state = state_of(shared.state.load(Ordering::Acquire));
        let totals = inner.window.totals(at);
        let time_until_half_open = match state {
            State::Open | State::ForcedOpen => {
                let until = shared.open_until.load(Ordering::Acquire);
                (until != UNTIL_RESET).then(|| Duration::from_nanos(until.saturating_sub(at)))
            }
            _ => None,
        };
        BreakerSnapshot {
            state,
            failure_rate: totals.failure_rate(),
            slow_call_rate: totals.slow_call_rate(),
            calls: totals.calls,
            failures: totals.failures,
            slow_calls: totals.slow,
            time_until_half_open,
            probes_admitted: if state == State::HalfOpen {
                inner.half_open.admitted
            } else {
                0
            },
            late_outcomes: inner.late_outcomes,
        }
    }
}

/// Replaces values the breaker can't work with; [`BreakerConfig::validate`]
/// reports them, this only keeps `new` from panicking or dividing by zero.
fn sanitize(mut c: BreakerConfig) -> BreakerConfig {
    fn pct(v: f64, default: f64) -> f64 {
        if v.is_finite() && v > 0.0 && v <= 100.0 {
            v
        } else {
            default
        }
    }
    c.failure_rate_threshold = pct(
        c.failure_rate_threshold,
        config::DEFAULT_FAILURE_RATE_THRESHOLD,
    );
    c.slow_call_rate_threshold = pct(
        c.slow_call_rate_threshold,
        config::DEFAULT_SLOW_CALL_RATE_THRESHOLD,
    );
    c.window = match c.window {
        WindowConfig::Count { size } => WindowConfig::Count {
            size: size.clamp(1, MAX_WINDOW_SIZE),
        },
        WindowConfig::Time { duration, buckets } => WindowConfig::Time {
            duration: duration.max(Duration::from_millis(1)),
            buckets: buckets.clamp(1, MAX_WINDOW_BUCKETS),
        },
    };
    c.minimum_calls = match c.window {
        // A minimum above the window's size could never be reached.
        WindowConfig::Count { size } => c.minimum_calls.clamp(1, size),
        WindowConfig::Time { .. } => c.minimum_calls.max(1),
    };
    c.consecutive_failures = c.consecutive_failures.max(1);
    if !(c.open_duration_multiplier.is_finite() && c.open_duration_multiplier >= 1.0) {
        c.open_duration_multiplier = 1.0;
    }
    c.max_open_duration = c.max_open_duration.max(c.open_duration);
    c.half_open_permits = c.half_open_permits.max(1);
    c.half_open_success_threshold = c
        .half_open_success_threshold
        .map(|n| n.clamp(1, c.half_open_permits));
    c.half_open_max_wait = c.half_open_max_wait.filter(|d| !d.is_zero());
    c
}

// === impl Shared ===

impl Shared {
    fn nanos(&self, now: Instant) -> u64 {
        duration_nanos(now.saturating_duration_since(self.origin))
    }

    fn open_error(&self, until: u64, at: u64) -> Error {
        let retry_after = if until == UNTIL_RESET {
            self.config.open_duration
        } else {
            Duration::from_nanos(until.saturating_sub(at))
        };
        Error::BreakerOpen { retry_after }
    }

    /// Whether `totals` is at or above a threshold (rate rule).
    fn exceeds(&self, totals: &Totals) -> bool {
        totals.calls >= u64::from(self.config.minimum_calls) && self.rates_exceed(totals)
    }

    fn rates_exceed(&self, totals: &Totals) -> bool {
        totals.calls > 0
            && (totals.failure_rate() >= self.config.failure_rate_threshold
                || totals.slow_call_rate() >= self.config.slow_call_rate_threshold)
    }

    fn emit_threshold(&self, totals: &Totals) {
        self.events.emit(|service| Event::BreakerThreshold {
            service,
            failure_rate: totals.failure_rate(),
            slow_call_rate: totals.slow_call_rate(),
        });
    }

    fn acquire_slow(self: &Arc<Self>, now: Instant) -> Result<Permit, Error> {
        let at = self.nanos(now);
        let mut inner = self.inner.lock();
        self.expire_half_open(&mut inner, now, at);
        let packed = self.state.load(Ordering::Acquire);
        match state_of(packed) {
            State::Closed | State::MetricsOnly | State::Disabled => Ok(Permit::new(self, packed)),
            State::Open | State::ForcedOpen => {
                let until = self.open_until.load(Ordering::Acquire);
                if at < until {
                    return Err(self.open_error(until, at));
                }
                let packed = self.transition(&mut inner, State::HalfOpen, now, at);
                self.admit_probe(&mut inner, packed, at)
            }
            State::HalfOpen => self.admit_probe(&mut inner, packed, at),
        }
    }

    fn admit_probe(
        self: &Arc<Self>,
        inner: &mut Inner,
        packed: u64,
        at: u64,
    ) -> Result<Permit, Error> {
        if inner.half_open.admitted < self.config.half_open_permits {
            inner.half_open.admitted += 1;
            return Ok(Permit::new(self, packed));
        }
        let retry_after = match self.config.half_open_max_wait {
            Some(wait) => Duration::from_nanos(
                inner
                    .half_open
                    .entered_at
                    .saturating_add(duration_nanos(wait))
                    .saturating_sub(at),
            ),
            None => self.config.open_duration,
        };
        Err(Error::BreakerOpen { retry_after })
    }

    /// Applies `half_open_max_wait` if it has passed.
    fn expire_half_open(&self, inner: &mut Inner, now: Instant, at: u64) {
        let Some(wait) = self.config.half_open_max_wait else {
            return;
        };
        if state_of(self.state.load(Ordering::Acquire)) != State::HalfOpen
            || at
                < inner
                    .half_open
                    .entered_at
                    .saturating_add(duration_nanos(wait))
        {
            return;
        }
        match self.config.half_open_timeout_state {
            HalfOpenTimeoutState::Open => self.open(inner, now, at, true),
            HalfOpenTimeoutState::Closed => {
                self.transition(inner, State::Closed, now, at);
            }
        }
    }

    /// Opens for `open_duration`, or for the previous period times the
    /// multiplier (capped) when `grow` (a re-open after half-open).
    fn open(&self, inner: &mut Inner, now: Instant, at: u64, grow: bool) {
        inner.open_duration = if grow {
            let grown = inner.open_duration.as_secs_f64() * self.config.open_duration_multiplier;
            Duration::try_from_secs_f64(grown)
                .unwrap_or(self.config.max_open_duration)
                .min(self.config.max_open_duration)
        } else {
            self.config.open_duration
        };
        self.open_until.store(
            at.saturating_add(duration_nanos(inner.open_duration)),
            Ordering::Release,
        );
        self.transition(inner, State::Open, now, at);
    }

    /// Moves to `to` (no-op for the current state) and announces it; returns
    /// the new packed state. Callers hold `inner`'s lock and, for open
    /// states, have stored `open_until` already.
    fn transition(&self, inner: &mut Inner, to: State, now: Instant, at: u64) -> u64 {
        let old = self.state.load(Ordering::Acquire);
        let from = state_of(old);
        if from == to {
            return old;
        }
        match to {
            State::Closed | State::MetricsOnly | State::Disabled => {
                inner.window.clear();
                inner.consecutive_failures = 0;
                inner.threshold_exceeded = false;
                inner.open_duration = self.config.open_duration;
            }
            State::HalfOpen => {
                inner.window.clear();
                inner.half_open = HalfOpen {
                    entered_at: at,
                    ..HalfOpen::default()
                };
            }
            // The window stays as it was when the breaker opened, so the
            // snapshot shows what tripped it.
            State::Open | State::ForcedOpen => {}
        }
        let new = pack(to, generation_of(old).wrapping_add(1));
        self.state.store(new, Ordering::Release);
        tracing::debug!(
            service = self.events.service(),
            from = from.as_str(),
            to = to.as_str(),
            "circuit breaker state change"
        );
        self.events
            .emit(|service| Event::BreakerTransition { service, from, to });
        // No receiver is not an error: nobody subscribed.
        let _ = self.changes.send(StateChange { from, to, at: now });
        new
    }

    fn on_outcome(&self, admitted: u64, outcome: Outcome, latency: Duration, now: Option<Instant>) {
        let admitted_state = state_of(admitted);
        if admitted_state == State::Disabled
            || (outcome == Outcome::Ignored && admitted_state != State::HalfOpen)
        {
            return;
        }
        let failure = outcome == Outcome::Failure;
        let slow = latency >= self.config.slow_call_duration;
        let now = now.unwrap_or_else(Instant::now);
        let at = self.nanos(now);
        let mut inner = self.inner.lock();
        self.expire_half_open(&mut inner, now, at);
        let current = self.state.load(Ordering::Acquire);
        if generation_of(current) != generation_of(admitted) {
            if outcome != Outcome::Ignored {
                inner.late_outcomes += 1;
                if matches!(state_of(current), State::Open | State::ForcedOpen) {
                    inner.window.record(at, failure, slow);
                }
            }
            return;
        }
        match state_of(current) {
            State::Closed => self.on_closed(&mut inner, failure, slow, now, at),
            State::MetricsOnly => {
                inner.window.record(at, failure, slow);
                let totals = inner.window.totals(at);
                let exceeded = self.exceeds(&totals);
                if exceeded && !inner.threshold_exceeded {
                    self.emit_threshold(&totals);
                }
                inner.threshold_exceeded = exceeded;
            }
            State::HalfOpen if outcome == Outcome::Ignored => {
                inner.half_open.admitted = inner.half_open.admitted.saturating_sub(1);
            }
            State::HalfOpen => self.on_half_open(&mut inner, failure, slow, now, at),
            State::Open | State::ForcedOpen | State::Disabled => {}
        }
    }

    fn on_closed(&self, inner: &mut Inner, failure: bool, slow: bool, now: Instant, at: u64) {
        inner.window.record(at, failure, slow);
        let trip = if self.config.mode == BreakerMode::Consecutive {
            if failure {
                inner.consecutive_failures += 1;
            } else {
                inner.consecutive_failures = 0;
            }
            inner.consecutive_failures >= self.config.consecutive_failures
        } else {
            let totals = inner.window.totals(at);
            self.exceeds(&totals)
        };
        if trip {
            let totals = inner.window.totals(at);
            self.emit_threshold(&totals);
            self.open(inner, now, at, false);
        }
    }

    fn on_half_open(&self, inner: &mut Inner, failure: bool, slow: bool, now: Instant, at: u64) {
        inner.window.record(at, failure, slow);
        let h = &mut inner.half_open;
        h.calls += 1;
        h.failures += u32::from(failure);
        h.slow += u32::from(slow);
        h.successes += u32::from(!failure);
        let verdict = if self.config.mode == BreakerMode::Consecutive {
            if failure {
                Some(State::Open)
            } else if h.successes >= self.config.effective_half_open_success_threshold() {
                Some(State::Closed)
            } else {
                None
            }
        } else if h.calls >= self.config.half_open_permits {
            let totals = Totals {
                calls: u64::from(h.calls),
                failures: u64::from(h.failures),
                slow: u64::from(h.slow),
            };
            Some(if self.rates_exceed(&totals) {
                State::Open
            } else {
                State::Closed
            })
        } else {
            None
        };
        match verdict {
            Some(State::Open) => self.open(inner, now, at, true),
            Some(to) => {
                self.transition(inner, to, now, at);
            }
            None => {}
        }
    }

    fn release(&self, admitted: u64) {
        if state_of(admitted) != State::HalfOpen {
            return;
        }
        let mut inner = self.inner.lock();
        if generation_of(self.state.load(Ordering::Acquire)) == generation_of(admitted) {
            inner.half_open.admitted = inner.half_open.admitted.saturating_sub(1);
        }
    }
}

// === impl Permit ===

/// Leave to make one call, from [`CircuitBreaker::try_acquire`].
///
/// Report the call with [`record`](Self::record), or give the permit back
/// unused with [`release`](Self::release). Dropping it without either
/// counts as a failed probe when it was admitted half-open (the caller
/// went away) and as nothing otherwise.
#[must_use = "a permit should be recorded or released; dropping a half-open probe counts as a failure"]
pub struct Permit {
    shared: Arc<Shared>,
    /// The packed state (with generation) the permit was admitted in.
    admitted: u64,
    done: bool,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("state", &state_of(self.admitted))
            .field("generation", &generation_of(self.admitted))
            .finish()
    }
}

impl Permit {
    fn new(shared: &Arc<Shared>, admitted: u64) -> Self {
        Self {
            shared: Arc::clone(shared),
            admitted,
            done: false,
        }
    }

    /// The state the call was admitted in.
    pub fn state(&self) -> State {
        state_of(self.admitted)
    }

    /// Reports the call's outcome; `latency` decides whether it was slow.
    pub fn record(self, outcome: Outcome, latency: Duration) {
        self.finish(outcome, latency, None);
    }

    /// As [`record`](Self::record), with the instant the call ended (saves
    /// reading the clock again).
    pub(crate) fn record_at(self, outcome: Outcome, latency: Duration, now: Instant) {
        self.finish(outcome, latency, Some(now));
    }

    fn finish(mut self, outcome: Outcome, latency: Duration, now: Option<Instant>) {
        self.done = true;
        self.shared.on_outcome(self.admitted, outcome, latency, now);
    }

    /// Gives the permit back without an outcome: a half-open probe slot is
    /// freed for another caller.
    pub fn release(mut self) {
        self.done = true;
        self.shared.release(self.admitted);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done && state_of(self.admitted) == State::HalfOpen {
            self.shared
                .on_outcome(self.admitted, Outcome::Failure, Duration::ZERO, None);
        }
    }
}
