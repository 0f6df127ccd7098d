//! Scenarios 1–34 of POLICY-SCENARIOS.md, each under a paused clock, plus
//! model-based property tests and a contention test.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{sync::broadcast::error::TryRecvError, time::advance};
use tower::{ServiceExt, service_fn};
use tower_layer::Layer;
use tower_service::Service;

use super::*;
use crate::{DefaultClassifier, events::Recorder};

const S: Outcome = Outcome::Success;
const F: Outcome = Outcome::Failure;
const I: Outcome = Outcome::Ignored;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// The sliding-window scenarios' numbers: failure rate 50%, min calls 5,
/// half-open permits 4, open 5s, slow 4s at 50%.
fn scenario_config() -> BreakerConfig {
    BreakerConfig {
        failure_rate_threshold: 50.0,
        minimum_calls: 5,
        half_open_permits: 4,
        open_duration: secs(5),
        slow_call_duration: secs(4),
        slow_call_rate_threshold: 50.0,
        ..BreakerConfig::default()
    }
}

/// Hystrix-style single probe, expressed with the rate rule: a 10s window in
/// 10 buckets, volume threshold 5, 50%, one half-open permit.
fn single_probe_config() -> BreakerConfig {
    BreakerConfig {
        window: WindowConfig::Time {
            duration: secs(10),
            buckets: 10,
        },
        minimum_calls: 5,
        failure_rate_threshold: 50.0,
        half_open_permits: 1,
        open_duration: secs(5),
        ..BreakerConfig::default()
    }
}

fn breaker(config: BreakerConfig) -> CircuitBreaker {
    config.validate().unwrap();
    CircuitBreaker::new(config, Events::silent("users"))
}

fn recorded_breaker(config: BreakerConfig) -> (CircuitBreaker, Arc<Recorder>) {
    config.validate().unwrap();
    let recorder = Recorder::new();
    let breaker = CircuitBreaker::new(config, Events::new("users", recorder.clone()));
    (breaker, recorder)
}

/// One call with `outcome` and a fast latency; false when rejected.
fn call(b: &CircuitBreaker, outcome: Outcome) -> bool {
    call_taking(b, outcome, ms(10))
}

fn call_taking(b: &CircuitBreaker, outcome: Outcome, latency: Duration) -> bool {
    match b.try_acquire() {
        Ok(permit) => {
            permit.record(outcome, latency);
            true
        }
        Err(_) => false,
    }
}

fn calls(b: &CircuitBreaker, outcomes: &[Outcome]) {
    for &o in outcomes {
        assert!(call(b, o), "call {o:?} was rejected in {:?}", b.state());
    }
}

fn rejection(b: &CircuitBreaker) -> Duration {
    match b.try_acquire() {
        Err(Error::BreakerOpen { retry_after }) => retry_after,
        Err(other) => panic!("unexpected error {other}"),
        Ok(permit) => panic!("admitted in {:?}", permit.state()),
    }
}

fn trip(b: &CircuitBreaker) {
    while b.state() == State::Closed {
        assert!(call(b, F));
    }
    assert_eq!(b.state(), State::Open);
}

/// Trips `b` and waits out the open period, leaving it half-open with no
/// probe taken yet (the acquire that flips it is released).
async fn to_half_open(b: &CircuitBreaker) {
    trip(b);
    advance(b.config().open_duration).await;
    b.try_acquire().unwrap().release();
    assert_eq!(b.state(), State::HalfOpen);
}

fn count(recorder: &Recorder, prefix: &str) -> usize {
    recorder
        .take()
        .iter()
        .filter(|e| e.starts_with(prefix))
        .count()
}

// === sliding window ===

#[tokio::test(start_paused = true)]
async fn s01_min_calls_before_rate_then_trip_at_60_percent() {
    let b = breaker(scenario_config());
    calls(&b, &[F, F, F, S]);
    assert_eq!(b.state(), State::Closed, "4 calls < minimum 5");
    assert!((b.snapshot().failure_rate - 75.0).abs() < 1e-9);
    calls(&b, &[S]);
    assert_eq!(b.state(), State::Open);
    assert!((b.snapshot().failure_rate - 60.0).abs() < 1e-9);
    assert_eq!(rejection(&b), secs(5));
}

#[tokio::test(start_paused = true)]
async fn s02_time_window_trips_at_exactly_the_threshold() {
    let b = breaker(BreakerConfig {
        window: WindowConfig::Time {
            duration: secs(20),
            buckets: 20,
        },
        ..scenario_config()
    });
    for o in [S, S, S, F, F] {
        advance(secs(1)).await;
        calls(&b, &[o]);
    }
    assert_eq!(b.state(), State::Closed);
    assert!((b.snapshot().failure_rate - 40.0).abs() < 1e-9);
    advance(secs(1)).await;
    calls(&b, &[F]);
    assert_eq!(b.state(), State::Open, "50% trips: the rule is >=");
}

#[tokio::test(start_paused = true)]
async fn s03_slow_calls_trip_without_failures() {
    let b = breaker(scenario_config());
    for _ in 0..3 {
        assert!(call_taking(&b, S, secs(4)));
    }
    assert!(call_taking(&b, S, ms(3_999)));
    assert_eq!(b.state(), State::Closed);
    assert!(call_taking(&b, S, ms(1)));
    assert_eq!(b.state(), State::Open);
    let snap = b.snapshot();
    assert_eq!((snap.failures, snap.slow_calls, snap.calls), (0, 3, 5));
    assert!((snap.slow_call_rate - 60.0).abs() < 1e-9);
}

#[tokio::test(start_paused = true)]
async fn s04_open_rejects_then_half_open_with_fresh_counters() {
    let b = breaker(scenario_config());
    trip(&b);
    advance(secs(3)).await;
    assert_eq!(rejection(&b), secs(2));
    assert_eq!(b.snapshot().time_until_half_open, Some(secs(2)));
    advance(secs(3)).await;
    assert_eq!(
        b.state(),
        State::Open,
        "state() alone does not move to half-open"
    );
    let probe = b.try_acquire().unwrap();
    assert_eq!(probe.state(), State::HalfOpen);
    assert_eq!(b.state(), State::HalfOpen);
    let snap = b.snapshot();
    assert_eq!((snap.calls, snap.failures, snap.probes_admitted), (0, 0, 1));
    assert_eq!(snap.time_until_half_open, None);
    probe.release();
}

#[tokio::test(start_paused = true)]
async fn s05_forced_open_for_a_duration_then_half_open() {
    let b = breaker(scenario_config());
    b.force_open(Some(secs(10)));
    assert_eq!(b.state(), State::ForcedOpen);
    advance(ms(9_999)).await;
    assert_eq!(rejection(&b), ms(1));
    advance(ms(2)).await;
    let probe = b.try_acquire().unwrap();
    assert_eq!(probe.state(), State::HalfOpen);
    assert_eq!(b.state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn s06_open_duration_grows_on_failed_half_open_and_resets_on_close() {
    let b = breaker(BreakerConfig {
        open_duration_multiplier: 1.5,
        max_open_duration: secs(10),
        ..scenario_config()
    });
    trip(&b);
    advance(ms(4_999)).await;
    assert_eq!(rejection(&b), ms(1), "first open lasts 5s");
    advance(ms(1)).await;
    calls(&b, &[F, F, F, F]);
    assert_eq!(b.state(), State::Open);
    advance(secs(6)).await;
    assert_eq!(rejection(&b), ms(1_500), "second open lasts 7.5s");
    advance(secs(5)).await;
    assert!(call(&b, F), "half-open at +11s");
    calls(&b, &[F, F, F]);
    assert_eq!(
        rejection(&b),
        secs(10),
        "11.25s capped at max_open_duration"
    );
    advance(secs(10)).await;
    calls(&b, &[S, S, S, S]);
    assert_eq!(b.state(), State::Closed);
    trip(&b);
    assert_eq!(rejection(&b), secs(5), "closing reset the growth");
}

#[tokio::test(start_paused = true)]
async fn s07_half_open_admits_permits_then_rejects_then_again_after_reopen() {
    let b = breaker(scenario_config());
    trip(&b);
    advance(secs(5)).await;
    let probes: Vec<Permit> = (0..4).map(|_| b.try_acquire().unwrap()).collect();
    assert_eq!(rejection(&b), secs(5));
    assert_eq!(rejection(&b), secs(5));
    assert_eq!(b.snapshot().probes_admitted, 4);
    for p in probes {
        p.record(F, ms(1));
    }
    assert_eq!(b.state(), State::Open);
    advance(secs(5)).await;
    let again: Vec<Permit> = (0..4).map(|_| b.try_acquire().unwrap()).collect();
    assert!(again.iter().all(|p| p.state() == State::HalfOpen));
    assert!(b.try_acquire().is_err());
}

#[tokio::test(start_paused = true)]
async fn s08_release_without_outcome_frees_a_probe_slot() {
    let b = breaker(scenario_config());
    to_half_open(&b).await;
    let mut probes: Vec<Permit> = (0..4).map(|_| b.try_acquire().unwrap()).collect();
    assert!(b.try_acquire().is_err());
    probes.pop().unwrap().release();
    let extra = b.try_acquire().unwrap();
    assert_eq!(extra.state(), State::HalfOpen);
    assert!(b.try_acquire().is_err());
    assert_eq!(b.state(), State::HalfOpen, "a release is no outcome");
    extra.release();
    for p in probes {
        p.release();
    }
}

#[tokio::test(start_paused = true)]
async fn s09_half_open_failures_reopen_at_75_percent() {
    let b = breaker(scenario_config());
    to_half_open(&b).await;
    calls(&b, &[F, F, S]);
    assert_eq!(b.state(), State::HalfOpen, "verdict only after 4 outcomes");
    calls(&b, &[F]);
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn s10_half_open_slow_calls_reopen_at_75_percent() {
    let b = breaker(scenario_config());
    to_half_open(&b).await;
    for _ in 0..3 {
        assert!(call_taking(&b, S, secs(5)));
    }
    assert!(call_taking(&b, S, ms(5)));
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn s11_half_open_closes_at_25_percent_with_reset_counters() {
    let b = breaker(scenario_config());
    to_half_open(&b).await;
    calls(&b, &[F, S, S, S]);
    assert_eq!(b.state(), State::Closed);
    let snap = b.snapshot();
    assert_eq!((snap.calls, snap.failures), (0, 0));
    // The old window is gone: four failures don't reach the minimum.
    calls(&b, &[F, F, F, F]);
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn s12_ignored_probe_outcome_is_not_counted() {
    let b = breaker(scenario_config());
    to_half_open(&b).await;
    calls(&b, &[S, S, S, I]);
    assert_eq!(b.state(), State::HalfOpen);
    assert_eq!(b.snapshot().probes_admitted, 3);
    calls(&b, &[F]);
    assert_eq!(b.state(), State::Closed, "S,S,S,F is 25%");
}

#[tokio::test(start_paused = true)]
async fn s13_only_ignored_outcomes_keep_half_open() {
    let b = breaker(scenario_config());
    to_half_open(&b).await;
    calls(&b, &[I, I, I, I]);
    assert_eq!(b.state(), State::HalfOpen);
    let snap = b.snapshot();
    assert_eq!((snap.calls, snap.probes_admitted), (0, 0));
    calls(&b, &[S, S, S]);
    assert_eq!(b.state(), State::HalfOpen);
    calls(&b, &[S]);
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn s14_forced_open_until_reset_never_half_opens() {
    let b = breaker(scenario_config());
    b.force_open(None);
    for _ in 0..5 {
        assert_eq!(rejection(&b), secs(5), "retry_after reports open_duration");
        advance(Duration::from_secs(3_600)).await;
    }
    assert_eq!(b.state(), State::ForcedOpen);
    assert_eq!(b.snapshot().time_until_half_open, None);
    b.reset();
    assert!(call(&b, S));
}

#[tokio::test(start_paused = true)]
async fn s15_disabled_admits_everything_and_records_nothing() {
    let b = breaker(BreakerConfig {
        mode: BreakerMode::Disabled,
        ..scenario_config()
    });
    assert_eq!(b.state(), State::Disabled);
    for _ in 0..50 {
        assert!(call(&b, F));
    }
    assert_eq!(b.state(), State::Disabled);
    assert_eq!(b.snapshot().calls, 0);

    let b = breaker(scenario_config());
    b.disable();
    for _ in 0..50 {
        assert!(call(&b, F));
    }
    assert_eq!(b.state(), State::Disabled);
    assert_eq!(b.snapshot().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn s16_metrics_only_reports_rate_and_threshold_once_per_crossing() {
    let (b, recorder) = recorded_breaker(BreakerConfig {
        mode: BreakerMode::MetricsOnly,
        ..scenario_config()
    });
    calls(&b, &[F, F, F, S]);
    assert_eq!(
        count(&recorder, "BreakerThreshold"),
        0,
        "below minimum calls"
    );
    calls(&b, &[S]);
    let snap = b.snapshot();
    assert!((snap.failure_rate - 60.0).abs() < 1e-9);
    assert_eq!(snap.state, State::MetricsOnly);
    calls(&b, &[F, F]);
    let events = recorder.take();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.starts_with("BreakerThreshold"))
            .count(),
        1,
        "{events:?}"
    );
    assert!(!events.iter().any(|e| e.starts_with("BreakerTransition")));
    // Drop below (5 F of 15), then cross again (10 F of 20).
    calls(&b, &[S; 8]);
    calls(&b, &[F; 4]);
    assert_eq!(count(&recorder, "BreakerThreshold"), 0, "9 of 19 is below");
    calls(&b, &[F]);
    assert_eq!(count(&recorder, "BreakerThreshold"), 1, "a second crossing");
    assert_eq!(b.state(), State::MetricsOnly);
}

#[tokio::test(start_paused = true)]
async fn s17_impossible_manual_transition_is_an_error_and_changes_nothing() {
    let (b, recorder) = recorded_breaker(scenario_config());
    let mut changes = b.subscribe();
    calls(&b, &[F, S]);
    let err = b.transition_to(State::HalfOpen).unwrap_err();
    assert_eq!(
        err,
        TransitionError {
            from: State::Closed,
            to: State::HalfOpen
        }
    );
    assert_eq!(
        err.to_string(),
        "cannot move the circuit breaker from closed to half-open by hand"
    );
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.snapshot().calls, 2);
    assert_eq!(changes.try_recv().unwrap_err(), TryRecvError::Empty);
    assert!(recorder.take().is_empty());
    for from in [State::Disabled, State::MetricsOnly] {
        b.transition_to(from).unwrap();
        assert!(b.transition_to(State::HalfOpen).is_err());
        assert_eq!(b.state(), from);
    }
}

#[tokio::test(start_paused = true)]
async fn s18_half_open_max_wait_without_calls() {
    for (target, expected) in [
        (HalfOpenTimeoutState::Open, State::Open),
        (HalfOpenTimeoutState::Closed, State::Closed),
    ] {
        let b = breaker(BreakerConfig {
            half_open_max_wait: Some(secs(1)),
            half_open_timeout_state: target,
            ..scenario_config()
        });
        to_half_open(&b).await;
        let probe = b.try_acquire().unwrap();
        advance(ms(999)).await;
        assert_eq!(b.state(), State::HalfOpen);
        advance(ms(1)).await;
        assert_eq!(b.state(), expected);
        probe.record(S, ms(1));
        assert_eq!(b.state(), expected, "the late probe decides nothing");
        assert_eq!(b.snapshot().late_outcomes, 1);
    }
}

#[tokio::test(start_paused = true)]
async fn s19_each_real_change_emits_exactly_one_event() {
    let (b, recorder) = recorded_breaker(scenario_config());
    let mut changes = b.subscribe();
    let mut next = move || changes.try_recv().map(|c| (c.from, c.to));
    trip(&b);
    assert_eq!(next(), Ok((State::Closed, State::Open)));
    assert_eq!(next(), Err(TryRecvError::Empty));
    b.transition_to(State::Open).unwrap();
    assert_eq!(next(), Err(TryRecvError::Empty), "same-state: none");
    advance(secs(5)).await;
    calls(&b, &[S, S, S, S]);
    assert_eq!(next(), Ok((State::Open, State::HalfOpen)));
    assert_eq!(next(), Ok((State::HalfOpen, State::Closed)));
    b.reset();
    assert_eq!(next(), Err(TryRecvError::Empty));
    b.force_open(None);
    b.force_open(Some(secs(1)));
    assert_eq!(next(), Ok((State::Closed, State::ForcedOpen)));
    assert_eq!(next(), Err(TryRecvError::Empty));
    b.reset();
    assert_eq!(next(), Ok((State::ForcedOpen, State::Closed)));
    assert_eq!(next(), Err(TryRecvError::Empty));
    assert_eq!(count(&recorder, "BreakerTransition"), 5);
}

#[tokio::test(start_paused = true)]
async fn s20_reset_from_open_zeroes_counters() {
    let b = breaker(scenario_config());
    let early = b.try_acquire().unwrap();
    trip(&b);
    early.record(F, ms(1));
    assert_eq!(b.snapshot().late_outcomes, 1);
    b.reset();
    let snap = b.snapshot();
    assert_eq!(snap.state, State::Closed);
    assert_eq!(
        (
            snap.calls,
            snap.failures,
            snap.slow_calls,
            snap.late_outcomes
        ),
        (0, 0, 0, 0)
    );
    calls(&b, &[F, F, F, F]);
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn s21_minimum_throughput_and_ratio() {
    let config = BreakerConfig {
        minimum_calls: 10,
        failure_rate_threshold: 10.0,
        ..scenario_config()
    };
    // 10 calls at 10%: trips on the 10th, not before.
    let b = breaker(config.clone());
    calls(&b, &[S; 8]);
    calls(&b, &[F]);
    assert_eq!(b.state(), State::Closed);
    calls(&b, &[S]);
    assert_eq!(b.state(), State::Open);
    // 9 calls at 11%: below the minimum.
    let b = breaker(config.clone());
    calls(&b, &[F, S, S, S, S, S, S, S, S]);
    assert_eq!(b.state(), State::Closed);
    // 10 calls at 0%.
    let b = breaker(config.clone());
    calls(&b, &[S; 10]);
    assert_eq!(b.state(), State::Closed);
    // 20% (the 11-call case of the scenario: any 11 calls at 20% have
    // reached 10% by the 10th call, which trips).
    let b = breaker(config);
    calls(&b, &[F, F, S, S, S, S, S, S, S]);
    assert_eq!(b.state(), State::Closed);
    calls(&b, &[S]);
    assert_eq!(b.state(), State::Open);
    assert!((b.snapshot().failure_rate - 20.0).abs() < 1e-9);
}

#[tokio::test(start_paused = true)]
async fn s22_rolling_time_window_rolls_old_buckets_off() {
    let b = breaker(BreakerConfig {
        window: WindowConfig::Time {
            duration: secs(10),
            buckets: 10,
        },
        minimum_calls: 1_000,
        ..scenario_config()
    });
    calls(&b, &[F; 5]);
    advance(secs(3)).await;
    calls(&b, &[S; 5]);
    assert!((b.snapshot().failure_rate - 50.0).abs() < 1e-9);
    advance(ms(6_999)).await; // t = 9.999s: the first bucket is still in
    assert_eq!(b.snapshot().calls, 10);
    advance(ms(1)).await; // t = 10s: it rolls off
    let snap = b.snapshot();
    assert_eq!((snap.calls, snap.failures), (5, 0));
    advance(secs(3)).await;
    assert_eq!(b.snapshot().calls, 0);
}

// === single probe ===

#[tokio::test(start_paused = true)]
async fn s23_volume_threshold_four_failures_do_not_trip() {
    let b = breaker(single_probe_config());
    calls(&b, &[F, F, F, F]);
    assert_eq!(b.state(), State::Closed);
    assert!((b.snapshot().failure_rate - 100.0).abs() < 1e-9);
}

#[tokio::test(start_paused = true)]
async fn s24_trips_at_50_percent_not_at_37_5() {
    let b = breaker(single_probe_config());
    calls(&b, &[S, S, F, S, F, S, F]);
    assert_eq!(b.state(), State::Closed);
    calls(&b, &[F]);
    assert_eq!(b.state(), State::Open);

    let b = breaker(single_probe_config());
    calls(&b, &[S, S, F, S, S, F, S, F]);
    assert_eq!(b.state(), State::Closed);
    assert!((b.snapshot().failure_rate - 37.5).abs() < 1e-9);
}

#[tokio::test(start_paused = true)]
async fn s25_timed_out_calls_count_as_failures() {
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    let inner = service_fn(move |_req: &'static str| {
        counter.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(secs(2)).await;
            Err::<&'static str, Error>(Error::DeadlineExceeded)
        }
    });
    let b = breaker(single_probe_config());
    let mut svc = BreakerLayer::new(b.clone(), DefaultClassifier).layer(inner);
    for _ in 0..5 {
        let err = svc.ready().await.unwrap().call("get").await.unwrap_err();
        assert!(matches!(err, Error::DeadlineExceeded));
    }
    assert_eq!(b.state(), State::Open);
    let err = svc.ready().await.unwrap().call("get").await.unwrap_err();
    assert!(matches!(err, Error::BreakerOpen { .. }));
    assert_eq!(
        reached.load(Ordering::SeqCst),
        5,
        "a rejection never reaches the service"
    );
}

#[tokio::test(start_paused = true)]
async fn s26_exactly_one_probe_others_told_the_time_left() {
    let b = breaker(single_probe_config());
    trip(&b);
    advance(secs(5)).await;
    let probe = b.try_acquire().unwrap();
    for _ in 0..3 {
        assert_eq!(rejection(&b), secs(5), "no max wait: the open duration");
    }

    let b = breaker(BreakerConfig {
        half_open_max_wait: Some(secs(2)),
        ..single_probe_config()
    });
    trip(&b);
    advance(secs(5)).await;
    let probe2 = b.try_acquire().unwrap();
    advance(ms(500)).await;
    assert_eq!(rejection(&b), ms(1_500), "time left of the max wait");
    probe.release();
    probe2.release();
}

#[tokio::test(start_paused = true)]
async fn s27_probe_success_closes_with_cleared_window() {
    let b = breaker(single_probe_config());
    calls(&b, &[F, F, F, F, F]);
    assert_eq!(b.state(), State::Open);
    advance(secs(5)).await;
    calls(&b, &[S]);
    assert_eq!(b.state(), State::Closed);
    advance(secs(1)).await;
    calls(&b, &[S]);
    assert_eq!(b.state(), State::Closed);
    let snap = b.snapshot();
    assert_eq!((snap.calls, snap.failures), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn s28_failed_probes_reopen_then_a_success_closes() {
    let b = breaker(single_probe_config());
    trip(&b);
    for _ in 0..2 {
        advance(ms(4_999)).await;
        assert!(b.try_acquire().is_err());
        advance(ms(1)).await;
        calls(&b, &[F]);
        assert_eq!(b.state(), State::Open);
        assert_eq!(rejection(&b), secs(5), "a new full period");
    }
    advance(secs(5)).await;
    calls(&b, &[S]);
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn s29_cancelled_probe_reopens() {
    // Through the layer: the caller drops the response future.
    let inner = service_fn(|_req: ()| async {
        tokio::time::sleep(Duration::from_secs(3_600)).await;
        Ok::<_, Error>("late")
    });
    let b = breaker(single_probe_config());
    let mut svc = BreakerLayer::new(b.clone(), DefaultClassifier).layer(inner);
    trip(&b);
    advance(secs(5)).await;
    let fut = svc.ready().await.unwrap().call(());
    assert_eq!(b.state(), State::HalfOpen);
    let raced = tokio::time::timeout(ms(100), fut).await;
    assert!(raced.is_err(), "the caller gave up");
    assert_eq!(b.state(), State::Open);

    // With a bare permit.
    advance(secs(5)).await;
    let probe = b.try_acquire().unwrap();
    drop(probe);
    assert_eq!(b.state(), State::Open);
    assert_eq!(rejection(&b), secs(5));
}

#[tokio::test(start_paused = true)]
async fn s30_late_failure_counts_but_does_not_extend_open() {
    let b = breaker(scenario_config());
    let before_trip = b.try_acquire().unwrap();
    trip(&b);
    advance(secs(2)).await;
    before_trip.record(F, ms(1));
    let snap = b.snapshot();
    assert_eq!(snap.state, State::Open);
    assert_eq!((snap.failures, snap.late_outcomes), (6, 1));
    assert_eq!(rejection(&b), secs(3), "the open period was not extended");
    advance(secs(3)).await;
    let probe = b.try_acquire().unwrap();
    assert_eq!(probe.state(), State::HalfOpen);

    // A probe of an earlier half-open round neither decides nor frees a slot.
    b.transition_to(State::Open).unwrap();
    advance(secs(5)).await;
    let fresh: Vec<Permit> = (0..4).map(|_| b.try_acquire().unwrap()).collect();
    probe.record(F, ms(1));
    assert_eq!(b.state(), State::HalfOpen);
    assert_eq!(b.snapshot().late_outcomes, 2);
    assert_eq!(b.snapshot().probes_admitted, 4);
    assert!(b.try_acquire().is_err(), "the stale probe freed no slot");
    for p in fresh {
        p.release();
    }
}

// === consecutive and ratio thresholds ===

fn consecutive_config(n: u32) -> BreakerConfig {
    BreakerConfig {
        mode: BreakerMode::Consecutive,
        consecutive_failures: n,
        half_open_permits: 3,
        ..BreakerConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn s31_consecutive_failures() {
    let b = breaker(consecutive_config(3));
    calls(&b, &[F, S, F, F]);
    assert_eq!(b.state(), State::Closed);
    calls(&b, &[F]);
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn s32_failure_ratio_of_last_calls() {
    // 2 of 3: the last 3 calls, 2/3 = 66.7% >= 66%.
    let two_of_three = BreakerConfig {
        window: WindowConfig::Count { size: 3 },
        minimum_calls: 3,
        failure_rate_threshold: 66.0,
        ..BreakerConfig::default()
    };
    let b = breaker(two_of_three);
    calls(&b, &[F, S]);
    assert_eq!(b.state(), State::Closed);
    calls(&b, &[F]);
    assert_eq!(b.state(), State::Open);

    // 3 of 4 with (S,F)x20: never more than 2 of the last 4.
    let b = breaker(BreakerConfig {
        window: WindowConfig::Count { size: 4 },
        minimum_calls: 4,
        failure_rate_threshold: 75.0,
        ..BreakerConfig::default()
    });
    for _ in 0..20 {
        calls(&b, &[S, F]);
    }
    assert_eq!(b.state(), State::Closed);
    calls(&b, &[F]);
    assert_eq!(b.state(), State::Open, "F,S,F,F is 3 of 4");
}

#[tokio::test(start_paused = true)]
async fn s33_half_open_success_threshold_and_ratio() {
    // Consecutive mode, success threshold 3: S,F re-opens.
    let b = breaker(BreakerConfig {
        half_open_success_threshold: Some(3),
        ..consecutive_config(1)
    });
    to_half_open(&b).await;
    calls(&b, &[S, F]);
    assert_eq!(b.state(), State::Open);
    advance(secs(5)).await;
    calls(&b, &[S, S]);
    assert_eq!(b.state(), State::HalfOpen);
    calls(&b, &[S]);
    assert_eq!(b.state(), State::Closed);

    // Ratio 2 of 3 with the rate rule: 3 probes judged at 50%.
    let ratio = BreakerConfig {
        half_open_permits: 3,
        minimum_calls: 1,
        ..BreakerConfig::default()
    };
    let b = breaker(ratio.clone());
    to_half_open(&b).await;
    calls(&b, &[F, S, S]);
    assert_eq!(b.state(), State::Closed);
    let b = breaker(ratio);
    to_half_open(&b).await;
    calls(&b, &[F, S, F]);
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn s34_failures_in_a_period_roll_off() {
    // 2 failures per 200ms: a 200ms window in 10 buckets, at least 3 calls
    // and 50%, so F,S,F (2 of 3) opens.
    let b = breaker(BreakerConfig {
        window: WindowConfig::Time {
            duration: ms(200),
            buckets: 10,
        },
        minimum_calls: 3,
        ..BreakerConfig::default()
    });
    calls(&b, &[F, S]);
    advance(ms(210)).await;
    calls(&b, &[F]);
    assert_eq!(b.state(), State::Closed, "the first F,S rolled off");
    calls(&b, &[S]);
    assert_eq!(b.state(), State::Closed);
    calls(&b, &[F]);
    assert_eq!(b.state(), State::Open);
}

// === config ===

#[test]
fn config_parses_from_toml_with_defaults() {
    let c: BreakerConfig = toml::from_str("").unwrap();
    assert_eq!(c, BreakerConfig::default());
    assert_eq!(c.window, WindowConfig::Count { size: 100 });
    assert_eq!(c.minimum_calls, DEFAULT_MINIMUM_CALLS);
    c.validate().unwrap();

    let c: BreakerConfig = toml::from_str(
        r#"
        mode = "consecutive"
        window = { kind = "time", duration = "20s", buckets = 20 }
        slow_call_duration = "250ms"
        half_open_max_wait = "1s"
        half_open_timeout_state = "closed"
        open_duration_multiplier = 1.5
        "#,
    )
    .unwrap();
    assert_eq!(c.mode, BreakerMode::Consecutive);
    assert_eq!(
        c.window,
        WindowConfig::Time {
            duration: secs(20),
            buckets: 20
        }
    );
    assert_eq!(c.slow_call_duration, ms(250));
    assert_eq!(c.half_open_max_wait, Some(secs(1)));
    assert_eq!(c.half_open_timeout_state, HalfOpenTimeoutState::Closed);
    c.validate().unwrap();

    let back: BreakerConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
}

#[test]
fn config_rejects_unknown_keys_and_unworkable_values() {
    let err = toml::from_str::<BreakerConfig>("failure_rate = 50.0").unwrap_err();
    assert!(err.to_string().contains("failure_rate"), "{err}");
    let err =
        toml::from_str::<BreakerConfig>(r#"window = { kind = "count", length = 3 }"#).unwrap_err();
    assert!(err.to_string().contains("length"), "{err}");

    let bad = |c: BreakerConfig, key: &str| {
        let msg = c.validate().unwrap_err();
        assert!(msg.starts_with(&format!("breaker.{key}:")), "{msg}");
    };
    bad(
        BreakerConfig {
            failure_rate_threshold: 120.0,
            ..Default::default()
        },
        "failure_rate_threshold",
    );
    bad(
        BreakerConfig {
            minimum_calls: 101,
            ..Default::default()
        },
        "minimum_calls",
    );
    bad(
        BreakerConfig {
            window: WindowConfig::Count { size: 0 },
            ..Default::default()
        },
        "window.size",
    );
    bad(
        BreakerConfig {
            window: WindowConfig::Time {
                duration: ms(5),
                buckets: 10,
            },
            ..Default::default()
        },
        "window.duration",
    );
    bad(
        BreakerConfig {
            open_duration_multiplier: 0.5,
            ..Default::default()
        },
        "open_duration_multiplier",
    );
    bad(
        BreakerConfig {
            max_open_duration: secs(1),
            ..Default::default()
        },
        "max_open_duration",
    );
    bad(
        BreakerConfig {
            half_open_success_threshold: Some(4),
            ..Default::default()
        },
        "half_open_success_threshold",
    );
    bad(
        BreakerConfig {
            half_open_permits: 0,
            ..Default::default()
        },
        "half_open_permits",
    );
}

#[tokio::test(start_paused = true)]
async fn new_survives_an_unvalidated_config() {
    let b = CircuitBreaker::new(
        BreakerConfig {
            window: WindowConfig::Count { size: 0 },
            failure_rate_threshold: f64::NAN,
            half_open_permits: 0,
            open_duration_multiplier: f64::INFINITY,
            ..scenario_config()
        },
        Events::silent("x"),
    );
    trip(&b);
    advance(secs(5)).await;
    assert!(b.try_acquire().is_ok());
}

// === layer ===

#[tokio::test(start_paused = true)]
async fn layer_records_outcomes_and_reports_rejections() {
    let (b, recorder) = recorded_breaker(BreakerConfig {
        minimum_calls: 3,
        ..scenario_config()
    });
    let inner = service_fn(|fail: bool| async move {
        tokio::time::sleep(ms(20)).await;
        if fail { Err("boom") } else { Ok("ok") }
    });
    let mut svc = BreakerLayer::new(b.clone(), DefaultClassifier).layer(inner);
    assert_eq!(svc.ready().await.unwrap().call(false).await.unwrap(), "ok");
    let err = svc.ready().await.unwrap().call(true).await.unwrap_err();
    assert!(matches!(err, Error::Upstream(_)));
    assert_eq!(b.snapshot().calls, 2);
    calls(&b, &[F]);
    assert_eq!(b.state(), State::Open);
    recorder.take();
    let err = svc.ready().await.unwrap().call(false).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(secs(5)));
    let events = recorder.take();
    assert_eq!(
        events,
        vec![r#"Rejected { service: "users", policy: "breaker", kind: "breaker-open" }"#]
    );
    assert_eq!(svc.breaker().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn layer_measures_latency_for_slow_calls() {
    let b = breaker(BreakerConfig {
        minimum_calls: 1,
        slow_call_duration: secs(1),
        ..scenario_config()
    });
    let inner = service_fn(|d: Duration| async move {
        tokio::time::sleep(d).await;
        Ok::<_, Error>(())
    });
    let mut svc = BreakerLayer::new(b.clone(), DefaultClassifier).layer(inner);
    svc.ready().await.unwrap().call(ms(999)).await.unwrap();
    assert_eq!(b.snapshot().slow_calls, 0);
    svc.ready().await.unwrap().call(secs(1)).await.unwrap();
    assert_eq!(b.snapshot().slow_calls, 1);
    assert_eq!(b.state(), State::Open, "1 of 2 slow reaches 50%");
}

#[tokio::test(start_paused = true)]
async fn snapshot_serializes_for_the_admin_api() {
    let b = breaker(scenario_config());
    trip(&b);
    let snap = b.snapshot();
    let text = toml::to_string(&snap).unwrap();
    assert!(text.contains(r#"state = "open""#), "{text}");
    assert!(text.contains(r#"time_until_half_open = "5s""#), "{text}");
}

// === contention ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_open_admits_no_more_than_permits_under_contention() {
    const PERMITS: u32 = 3;
    let b = breaker(BreakerConfig {
        half_open_permits: PERMITS,
        open_duration: Duration::from_secs(3_600),
        max_open_duration: Duration::from_secs(3_600),
        ..BreakerConfig::default()
    });
    b.transition_to(State::Open).unwrap();
    b.transition_to(State::HalfOpen).unwrap();

    // Probes come and go (released): never more than PERMITS at once.
    let in_flight = Arc::new(AtomicU32::new(0));
    let max_seen = Arc::new(AtomicU32::new(0));
    let admitted = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (b, in_flight, max_seen, admitted) = (
                b.clone(),
                in_flight.clone(),
                max_seen.clone(),
                admitted.clone(),
            );
            tokio::spawn(async move {
                for _ in 0..500 {
                    if let Ok(permit) = b.try_acquire() {
                        admitted.fetch_add(1, Ordering::SeqCst);
                        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        max_seen.fetch_max(now, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        permit.release();
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(max_seen.load(Ordering::SeqCst) <= PERMITS);
    assert!(
        admitted.load(Ordering::SeqCst) > PERMITS as usize,
        "slots were reused"
    );
    assert_eq!(b.state(), State::HalfOpen);

    // Probes that fail: exactly PERMITS are admitted half-open, then it re-opens.
    let half_open_admitted = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (b, n) = (b.clone(), half_open_admitted.clone());
            tokio::spawn(async move {
                for _ in 0..200 {
                    if let Ok(permit) = b.try_acquire() {
                        if permit.state() == State::HalfOpen {
                            n.fetch_add(1, Ordering::SeqCst);
                        }
                        tokio::task::yield_now().await;
                        permit.record(Outcome::Failure, Duration::ZERO);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(half_open_admitted.load(Ordering::SeqCst), PERMITS as usize);
    assert_eq!(b.state(), State::Open);
}

// === properties ===

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn paused_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![4 => Just(S), 4 => Just(F), 1 => Just(I)]
    }

    proptest! {
        /// A metrics-only breaker over a time window reports what a naive
        /// recomputation over (time, outcome, latency) reports.
        #[test]
        fn time_window_snapshot_matches_model(
            steps in proptest::collection::vec((0u64..700, outcome(), 0u64..200), 1..80),
        ) {
            paused_runtime().block_on(async {
                let b = breaker(BreakerConfig {
                    mode: BreakerMode::MetricsOnly,
                    window: WindowConfig::Time { duration: secs(2), buckets: 4 },
                    slow_call_duration: ms(100),
                    ..BreakerConfig::default()
                });
                let start = tokio::time::Instant::now();
                let mut model: Vec<(Duration, Outcome, Duration)> = Vec::new();
                for (wait, outcome, latency) in steps {
                    advance(ms(wait)).await;
                    prop_assert!(call_taking(&b, outcome, ms(latency)));
                    let now = start.elapsed();
                    if outcome != I {
                        model.push((now, outcome, ms(latency)));
                    }
                    let bucket = |d: Duration| d.as_millis() / 500;
                    let live: Vec<_> = model
                        .iter()
                        .filter(|(at, _, _)| bucket(*at) + 4 > bucket(now))
                        .collect();
                    let snap = b.snapshot();
                    prop_assert_eq!(snap.calls, live.len() as u64);
                    prop_assert_eq!(
                        snap.failures,
                        live.iter().filter(|(_, o, _)| *o == F).count() as u64
                    );
                    prop_assert_eq!(
                        snap.slow_calls,
                        live.iter().filter(|(_, _, l)| *l >= ms(100)).count() as u64
                    );
                }
                Ok(())
            })?;
        }

        /// A closed rate-mode breaker over a count window opens on exactly the
        /// call after which the last `size` counted outcomes reach the threshold.
        #[test]
        fn count_window_trips_exactly_when_model_says(
            size in 1u32..12,
            min_frac in 1u32..=100,
            threshold in 1u32..=100,
            outcomes in proptest::collection::vec(outcome(), 1..120),
        ) {
            let minimum_calls = (size * min_frac).div_ceil(100).max(1);
            let threshold = f64::from(threshold);
            paused_runtime().block_on(async {
                let b = breaker(BreakerConfig {
                    window: WindowConfig::Count { size },
                    minimum_calls,
                    failure_rate_threshold: threshold,
                    ..BreakerConfig::default()
                });
                let mut model: Vec<bool> = Vec::new();
                for o in outcomes {
                    prop_assert!(call(&b, o));
                    if o != I {
                        model.push(o == F);
                    }
                    let keep = model.len().saturating_sub(size as usize);
                    let live = &model[keep..];
                    let failures = live.iter().filter(|f| **f).count() as f64;
                    let trips = live.len() as u32 >= minimum_calls
                        && failures * 100.0 / live.len() as f64 >= threshold;
                    let expected = if trips { State::Open } else { State::Closed };
                    prop_assert_eq!(b.state(), expected);
                    if trips {
                        break;
                    }
                }
                Ok(())
            })?;
        }
    }
}
