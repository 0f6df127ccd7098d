//! The composed stack: the order of its layers, shown through behaviour.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use switchyard_policy::{
    Call, Error, Events, Policy, PolicyConfig, PolicyRequest, breaker::State, events::Recorder,
};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};

fn config(text: &str) -> PolicyConfig {
    toml::from_str(text).expect("test config parses")
}

/// A service that fails every call and counts how often it is reached.
fn failing(
    reached: Arc<AtomicUsize>,
) -> impl Service<Call<u32>, Response = u32, Error = Error, Future: Send> + Clone {
    service_fn(move |_call: Call<u32>| {
        reached.fetch_add(1, Ordering::SeqCst);
        async { Err::<u32, _>(Error::from_inner(std::io::Error::other("connection reset"))) }
    })
}

#[tokio::test(start_paused = true)]
async fn breaker_counts_one_outcome_per_call_after_retries() {
    let reached = Arc::new(AtomicUsize::new(0));
    let policy = Policy::new(
        config(
            r#"
            [breaker]
            window = { kind = "count", size = 10 }
            minimum_calls = 4
            failure_rate_threshold = 100.0
            [retry]
            max_attempts = 3
            base_delay = "1ms"
            jitter = "none"
            [retry.budget]
            min_retries_per_second = 1000
            "#,
        ),
        Events::silent("users"),
    )
    .unwrap();
    let svc = policy.layer(failing(reached.clone()));

    for i in 0..3 {
        let err = svc.clone().oneshot(Call::new(i)).await.unwrap_err();
        assert!(
            matches!(err, Error::RetriesExhausted { attempts: 3, .. }),
            "{err:?}"
        );
    }
    // Nine failed attempts, but three failed calls: under minimum_calls = 4.
    assert_eq!(reached.load(Ordering::SeqCst), 9);
    assert_eq!(policy.breaker().snapshot().calls, 3);
    assert_eq!(policy.breaker().state(), State::Closed);

    // The fourth failed call trips it; the fifth is rejected without any attempt:
    // a retry never goes into an open breaker.
    svc.clone().oneshot(Call::new(4)).await.unwrap_err();
    assert_eq!(policy.breaker().state(), State::Open);
    let err = svc.clone().oneshot(Call::new(5)).await.unwrap_err();
    assert!(matches!(err, Error::BreakerOpen { .. }), "{err:?}");
    assert_eq!(err.http_status(), 503);
    assert_eq!(reached.load(Ordering::SeqCst), 12);
}

#[tokio::test(start_paused = true)]
async fn deadline_bounds_time_queued_in_the_bulkhead() {
    let policy = Policy::new(
        config(
            r#"
            timeout = "300ms"
            [bulkhead]
            max_concurrent = 1
            max_queue = 1
            max_wait = "10s"
            [retry]
            max_attempts = 1
            "#,
        ),
        Events::silent("slow"),
    )
    .unwrap();
    let svc = policy.layer(service_fn(|_: Call<u32>| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<u32, Error>(1)
    }));

    let start = Instant::now();
    let first = tokio::spawn(svc.clone().oneshot(Call::new(1)));
    tokio::task::yield_now().await;
    let second = svc.clone().oneshot(Call::new(2)).await;
    assert!(matches!(second, Err(Error::DeadlineExceeded)), "{second:?}");
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    assert!(matches!(first.await.unwrap(), Err(Error::DeadlineExceeded)));
}

#[tokio::test(start_paused = true)]
async fn rate_limit_rejects_before_taking_a_bulkhead_slot() {
    let policy = Policy::new(
        config(
            r#"
            [rate_limit]
            rate = 1
            per = "1s"
            burst = 1
            [bulkhead]
            max_concurrent = 1
            "#,
        ),
        Events::silent("limited"),
    )
    .unwrap();
    let svc = policy.layer(service_fn(|c: Call<u32>| async move {
        Ok::<u32, Error>(c.into_inner())
    }));
    assert_eq!(svc.clone().oneshot(Call::new(1)).await.unwrap(), 1);
    let err = svc.clone().oneshot(Call::new(2)).await.unwrap_err();
    assert_eq!(err.http_status(), 429);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(policy.bulkhead().unwrap().state().in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn observer_sees_calls_retries_and_transitions() {
    let recorder = Recorder::new();
    let policy = Policy::new(
        config(
            r#"
            [breaker]
            mode = "consecutive"
            consecutive_failures = 1
            [retry]
            max_attempts = 2
            base_delay = "1ms"
            jitter = "none"
            "#,
        ),
        Events::new("users", recorder.clone()),
    )
    .unwrap();
    let svc = policy.layer(failing(Arc::new(AtomicUsize::new(0))));
    svc.clone().oneshot(Call::new(1)).await.unwrap_err();
    let events = recorder.take().join("\n");
    assert!(
        events.contains("Retry { service: \"users\", attempt: 2"),
        "{events}"
    );
    assert!(
        events.contains("BreakerTransition { service: \"users\", from: Closed, to: Open }"),
        "{events}"
    );
    assert!(
        events.contains("Call { service: \"users\", outcome: Failure"),
        "{events}"
    );
}

#[test]
fn bad_configs_are_refused_with_the_key_named() {
    let unknown =
        toml::from_str::<PolicyConfig>("timeout = \"1s\"\n[retry]\nmax_atempts = 2\n").unwrap_err();
    let text = unknown.to_string();
    assert!(
        text.contains("unknown field `max_atempts`") && text.contains("line 3"),
        "{text}"
    );

    let err = Policy::new(
        config("timeout = \"1s\"\nattempt_timeout = \"2s\""),
        Events::silent("x"),
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("attempt_timeout:"), "{err}");

    let err = Policy::new(
        config("[breaker]\nfailure_rate_threshold = 120.0"),
        Events::silent("x"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("failure_rate_threshold"), "{err}");

    let err = Policy::new(config("[rate_limit]\nrate = 0"), Events::silent("x")).unwrap_err();
    assert!(err.to_string().contains("rate"), "{err}");
}

#[test]
fn defaults_round_trip_through_toml() {
    let defaults = PolicyConfig::default();
    let text = toml::to_string(&defaults).unwrap();
    assert_eq!(toml::from_str::<PolicyConfig>(&text).unwrap(), defaults);
    assert!(text.contains("timeout = \"10s\""), "{text}");
}

#[test]
fn the_documented_example_config_is_valid() {
    let doc = include_str!("../../../docs/config.md");
    let example = doc
        .split("### Example\n\n```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/config.md has an example block");
    let config = config(example);
    config.validate().unwrap();
    assert_eq!(config.retry.budget.retry_ratio, 0.1);
}

/// Fails its first call, then is never ready again.
#[derive(Clone, Default)]
struct FailsThenStalls {
    calls: Arc<AtomicUsize>,
}

impl Service<Call<u32>> for FailsThenStalls {
    type Response = u32;
    type Error = Error;
    type Future = std::future::Ready<Result<u32, Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Error>> {
        if self.calls.load(Ordering::SeqCst) == 0 {
            std::task::Poll::Ready(Ok(()))
        } else {
            std::task::Poll::Pending
        }
    }

    fn call(&mut self, _: Call<u32>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Err(Error::from_inner(std::io::Error::other("reset"))))
    }
}

// Without a bulkhead or rate limiter the deadline layer sets no timer of its
// own: the attempt's bound and the retry's waits must end the call on time.
#[tokio::test(start_paused = true)]
async fn the_deadline_holds_without_a_timer_of_its_own() {
    let policy = Policy::new(
        config(
            r#"
            timeout = "100ms"
            [retry]
            base_delay = "1ms"
            jitter = "none"
            "#,
        ),
        Events::silent("users"),
    )
    .unwrap();

    // An attempt that never answers is cut at the deadline.
    let stalled = policy.layer(service_fn(|_: Call<u32>| {
        std::future::pending::<Result<u32, Error>>()
    }));
    let start = Instant::now();
    let err = stalled.oneshot(Call::new(1)).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert!(matches!(err.root(), Error::DeadlineExceeded), "{err:?}");

    // A retry that waits for a service that never becomes ready again is
    // cut at the deadline too.
    let svc = FailsThenStalls::default();
    let calls = svc.calls.clone();
    let start = Instant::now();
    let err = policy.layer(svc).oneshot(Call::new(2)).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert!(matches!(err, Error::DeadlineExceeded), "{err:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// What one run of [`scripted_calls`] saw.
#[derive(Debug, PartialEq)]
struct Run {
    results: Vec<String>,
    events: Vec<String>,
    reached: usize,
    elapsed: Duration,
    breaker: State,
}

/// One sequence of calls through a policy built from `text`, fused as
/// `Policy::layer` builds it or `nested` as layers: successes, a retried
/// failure, a call cut at its deadline, failures that open the breaker,
/// calls it refuses (one of them polled again after its answer), a
/// half-open probe given up by its caller, the breaker's recovery, two
/// calls at once, a call that comes too late, one with a deadline of its
/// own shorter than the timeout, and a burst that runs the retry budget
/// dry. The service's answer depends on the call's value: 0 succeeds, 1
/// fails, 2 stalls, 3 fails every other attempt.
async fn scripted_calls(text: &str, nested: bool, observed: bool) -> Run {
    let recorder = Recorder::new();
    let events = if observed {
        Events::new("users", recorder.clone())
    } else {
        Events::silent("users")
    };
    let policy = Policy::new(config(text), events).unwrap();
    let reached = Arc::new(AtomicUsize::new(0));
    let flips = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    let service = service_fn(move |call: Call<u32>| {
        counter.fetch_add(1, Ordering::SeqCst);
        let flip = flips.fetch_add(1, Ordering::SeqCst);
        async move {
            let value = call.into_inner();
            match value {
                0 => tokio::time::sleep(Duration::from_millis(5)).await,
                1 => tokio::time::sleep(Duration::from_millis(1)).await,
                2 => tokio::time::sleep(Duration::from_secs(5)).await,
                _ => {}
            }
            if value == 1 || (value == 3 && flip.is_multiple_of(2)) {
                return Err(Error::from_inner(std::io::Error::other("connection reset")));
            }
            Ok::<u32, Error>(value)
        }
    });
    let svc = if nested {
        policy.layer_nested(service)
    } else {
        policy.layer(service)
    };
    let start = Instant::now();
    let mut results = Vec::new();
    let call = async |call: Call<u32>| format!("{:?}", svc.clone().oneshot(call).await);
    for value in [0, 3, 3, 2, 1, 1, 1, 0] {
        results.push(call(Call::new(value)).await);
    }
    // Refused by the open breaker, then polled again after its answer.
    let mut refused = Box::pin(svc.clone().ready().await.unwrap().call(Call::new(0)));
    results.push(format!("{:?}", refused.as_mut().await));
    results.push(format!(
        "{:?}",
        std::future::poll_fn(|cx| refused.as_mut().poll(cx)).await
    ));
    // The half-open probe, given up by its caller: the breaker opens again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let probe = tokio::time::timeout(Duration::from_millis(10), call(Call::new(2))).await;
    results.push(format!("{probe:?}"));
    results.push(call(Call::new(0)).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for value in [0, 0, 0] {
        results.push(call(Call::new(value)).await);
    }
    let (a, b) = tokio::join!(call(Call::new(0)), call(Call::new(3)));
    results.extend([a, b]);
    let mut late = Call::new(0);
    late.set_deadline(Instant::now());
    results.push(call(late).await);
    let mut hurried = Call::new(2);
    hurried.set_deadline(Instant::now() + Duration::from_millis(50));
    results.push(call(hurried).await);
    for _ in 0..6 {
        results.push(call(Call::new(3)).await);
    }
    Run {
        results,
        events: recorder.take(),
        reached: reached.load(Ordering::SeqCst),
        elapsed: start.elapsed(),
        breaker: policy.breaker().state(),
    }
}

/// Without a rate limit, bulkhead or hedge the stack runs fused (one
/// service, one future); with any of them, as layers. The two must not
/// differ in anything a caller or an observer can see: the same results,
/// the same events with the same latencies, the same calls upstream.
#[tokio::test(start_paused = true)]
async fn the_fused_stack_does_what_the_layers_do() {
    const POLICY: &str = r#"
        timeout = "1s"
        [breaker]
        mode = "consecutive"
        consecutive_failures = 3
        open_duration = "1s"
        [retry]
        max_attempts = 3
        base_delay = "10ms"
        jitter = "none"
        [retry.budget]
        retry_ratio = 0.2
        min_retries_per_second = 1
        ttl = "1s"
    "#;
    let fused = scripted_calls(POLICY, false, true).await;
    assert_eq!(fused, scripted_calls(POLICY, true, true).await);
    // Without an observer.
    assert_eq!(
        scripted_calls(POLICY, false, false).await,
        scripted_calls(POLICY, true, false).await
    );
    // Without retries.
    let once = POLICY.replace("max_attempts = 3", "max_attempts = 1");
    assert_eq!(
        scripted_calls(&once, false, true).await,
        scripted_calls(&once, true, true).await
    );

    // The script reaches what it means to.
    let seen = fused.events.join("\n");
    for expected in [
        "Retry { service: \"users\", attempt: 2",
        "BreakerTransition { service: \"users\", from: Closed, to: Open }",
        "BreakerTransition { service: \"users\", from: HalfOpen, to: Open }",
        "BreakerTransition { service: \"users\", from: HalfOpen, to: Closed }",
        "Rejected { service: \"users\", policy: \"breaker\"",
        "Rejected { service: \"users\", policy: \"deadline\"",
        "Rejected { service: \"users\", policy: \"retry\", kind: \"budget-exhausted\" }",
        "Call { service: \"users\", outcome: Success",
    ] {
        assert!(seen.contains(expected), "{expected} not in\n{seen}");
    }
    let results = &fused.results;
    assert!(
        results[8].contains("BreakerOpen") && results[9] == results[8],
        "{results:?}"
    );
    assert!(results[10].contains("Elapsed"), "{results:?}");
    assert!(
        results.iter().any(|r| r.contains("DeadlineExceeded")),
        "{results:?}"
    );
}
