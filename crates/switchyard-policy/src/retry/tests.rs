use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use parking_lot::Mutex;
use tokio::time::{Instant, advance};
use tower::{Service, ServiceExt};

use super::*;
use crate::{Call, Class, HttpClassifier, events::Recorder};

const MS: Duration = Duration::from_millis(1);

/// One scripted answer: how long it takes and what it returns.
type Step = (Duration, Result<u16, &'static str>);

#[derive(Default)]
struct Shared {
    script: Mutex<VecDeque<Step>>,
    calls: AtomicU32,
    ready_polls: AtomicU32,
    started: Mutex<Vec<Instant>>,
}

/// A service answering from a script (then `Ok(200)` forever), recording
/// every call's start.
#[derive(Clone, Default)]
struct Script(Arc<Shared>);

impl Script {
    fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        let s = Self::default();
        s.0.script.lock().extend(steps);
        s
    }
    fn calls(&self) -> u32 {
        self.0.calls.load(Ordering::SeqCst)
    }
}

impl<R> Service<R> for Script {
    type Response = u16;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<u16, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.ready_polls.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: R) -> Self::Future {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        self.0.started.lock().push(Instant::now());
        let (delay, out) = self
            .0
            .script
            .lock()
            .pop_front()
            .unwrap_or((Duration::ZERO, Ok(200)));
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            out.map_err(BoxError::from)
        })
    }
}

/// Treats status 503 as a retryable failure, everything else as success.
#[derive(Clone)]
struct Status;

impl Classify<u16> for Status {
    fn classify(&self, result: Result<&u16, &Error>) -> Class {
        match result {
            Ok(503) => Class::RETRYABLE,
            Ok(_) => Class::SUCCESS,
            Err(e) if e.source().is_some_and(|s| s.to_string() == "fatal") => Class::FATAL,
            Err(_) => Class::RETRYABLE,
        }
    }
}

use std::error::Error as _;

fn config(max_attempts: u32, backoff: Backoff, base: Duration) -> RetryConfig {
    RetryConfig {
        max_attempts,
        backoff,
        base_delay: base,
        max_delay: Duration::from_secs(10),
        jitter: Jitter::None,
        budget: BudgetConfig {
            min_retries_per_second: 100,
            ..BudgetConfig::default()
        },
        ..RetryConfig::default()
    }
}

fn retry(config: RetryConfig, svc: Script) -> Retry<Script, Status> {
    let budget = RetryBudget::new(&config.budget);
    RetryLayer::new(config, budget, Status, Events::silent("test")).layer(svc)
}

fn err(msg: &'static str) -> Step {
    (Duration::ZERO, Err(msg))
}

/// Scenario 37: F,S → success after 2 calls.
#[tokio::test(start_paused = true)]
async fn s37_failure_then_success() {
    let svc = Script::new([err("reset")]);
    let res = retry(config(3, Backoff::Constant, 10 * MS), svc.clone())
        .oneshot(Call::new(()))
        .await;
    assert_eq!(res.unwrap(), 200);
    assert_eq!(svc.calls(), 2);
    // Each attempt went through poll_ready: one by oneshot, one by the retry.
    assert_eq!(svc.0.ready_polls.load(Ordering::SeqCst), 2);
}

/// Scenario 37: F×3 with 3 attempts → the last error after 3 calls.
#[tokio::test(start_paused = true)]
async fn s37_failures_exhaust_attempts() {
    let svc = Script::new([err("one"), err("two"), err("three")]);
    let res = retry(config(3, Backoff::Constant, 10 * MS), svc.clone())
        .oneshot(Call::new(()))
        .await;
    match res {
        Err(Error::RetriesExhausted { attempts: 3, last }) => {
            assert_eq!(last.source().unwrap().to_string(), "three");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(svc.calls(), 3);
}

/// Scenario 37: a non-retryable outcome → 1 call, returned as it is.
#[tokio::test(start_paused = true)]
async fn s37_non_retryable_is_one_call() {
    let svc = Script::new([err("fatal")]);
    let res = retry(config(3, Backoff::Constant, 10 * MS), svc.clone())
        .oneshot(Call::new(()))
        .await;
    assert!(matches!(res, Err(Error::Upstream(_))), "{res:?}");
    assert_eq!(svc.calls(), 1);
}

/// Scenario 37: the total-duration cap stops retrying.
#[tokio::test(start_paused = true)]
async fn s37_total_duration_cap_stops() {
    let svc = Script::new((0..10).map(|_| err("down")));
    let mut cfg = config(10, Backoff::Constant, Duration::from_secs(1));
    cfg.max_total_duration = Some(Duration::from_millis(2500));
    let start = Instant::now();
    let res = retry(cfg, svc.clone()).oneshot(Call::new(())).await;
    // Attempts at 0s, 1s and 2s; one at 3s would pass the cap.
    assert!(matches!(
        res,
        Err(Error::RetriesExhausted { attempts: 3, .. })
    ));
    assert_eq!(svc.calls(), 3);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

/// Scenario 38: cancelled before the first poll → no call at all.
#[tokio::test(start_paused = true)]
async fn s38_cancelled_before_first_call() {
    let svc = Script::new([]);
    let mut retry = retry(config(3, Backoff::Constant, 10 * MS), svc.clone());
    let fut = ServiceExt::<Call<()>>::ready(&mut retry)
        .await
        .unwrap()
        .call(Call::new(()));
    drop(fut);
    advance(Duration::from_secs(5)).await;
    assert_eq!(svc.calls(), 0);
}

/// Scenario 38: cancelled during a backoff sleep → no more calls.
#[tokio::test(start_paused = true)]
async fn s38_cancelled_during_backoff() {
    let svc = Script::new([err("down"), err("down")]);
    let fut = retry(
        config(3, Backoff::Constant, Duration::from_secs(1)),
        svc.clone(),
    )
    .oneshot(Call::new(()));
    let res = tokio::time::timeout(Duration::from_millis(500), fut).await;
    assert!(res.is_err(), "the caller gave up during the backoff");
    assert_eq!(svc.calls(), 1);
    advance(Duration::from_secs(10)).await;
    tokio::task::yield_now().await;
    assert_eq!(svc.calls(), 1);
}

/// Scenario 39 through the layer: at 10% with no floor, ten calls earn one retry.
#[tokio::test(start_paused = true)]
async fn s39_budget_through_the_layer() {
    let mut cfg = config(2, Backoff::Constant, MS);
    cfg.budget = BudgetConfig {
        min_retries_per_second: 0,
        retry_ratio: 0.1,
        ..BudgetConfig::default()
    };
    let svc = Script::new([]);
    let budget = RetryBudget::new(&cfg.budget);
    let mut retry = RetryLayer::new(cfg, budget, Status, Events::silent("t")).layer(svc.clone());
    for _ in 0..9 {
        ServiceExt::<Call<()>>::ready(&mut retry)
            .await
            .unwrap()
            .call(Call::new(()))
            .await
            .unwrap();
    }
    svc.0.script.lock().extend([err("down"), err("down")]);
    let res = ServiceExt::<Call<()>>::ready(&mut retry)
        .await
        .unwrap()
        .call(Call::new(()))
        .await;
    // The 10th call earned one retry, which was spent.
    assert!(matches!(
        res,
        Err(Error::RetriesExhausted { attempts: 2, .. })
    ));
    assert_eq!(svc.calls(), 11);
    // The 11th call has earned a tenth of a retry: not enough.
    svc.0.script.lock().push_back(err("down"));
    let res = ServiceExt::<Call<()>>::ready(&mut retry)
        .await
        .unwrap()
        .call(Call::new(()))
        .await;
    assert!(matches!(
        res,
        Err(Error::BudgetExhausted { attempts: 1, .. })
    ));
    assert_eq!(svc.calls(), 12);
}

/// Scenario 40: an empty budget fails the call with a budget error instead of
/// retrying; new requests deposit and retries come back.
#[tokio::test(start_paused = true)]
async fn s40_budget_exhausted_then_recovers() {
    let mut cfg = config(2, Backoff::Constant, MS);
    cfg.budget = BudgetConfig {
        min_retries_per_second: 0,
        retry_ratio: 0.5,
        ..BudgetConfig::default()
    };
    let recorder = Recorder::new();
    let events = Events::new("users", recorder.clone());
    let svc = Script::new((0..4).map(|_| err("down")));
    let budget = RetryBudget::new(&cfg.budget);
    let mut retry = RetryLayer::new(cfg, budget, Status, events).layer(svc.clone());

    let res = ServiceExt::<Call<()>>::ready(&mut retry)
        .await
        .unwrap()
        .call(Call::new(()))
        .await;
    match res {
        Err(Error::BudgetExhausted { attempts: 1, last }) => {
            assert_eq!(last.source().unwrap().to_string(), "down");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(svc.calls(), 1);
    let events = recorder.take();
    assert!(
        events.iter().any(|e| e.contains("Rejected")
            && e.contains("\"retry\"")
            && e.contains("budget-exhausted")),
        "{events:?}"
    );

    // A second request deposits another half: now one retry is affordable.
    let res = ServiceExt::<Call<()>>::ready(&mut retry)
        .await
        .unwrap()
        .call(Call::new(()))
        .await;
    assert!(
        matches!(res, Err(Error::RetriesExhausted { attempts: 2, .. })),
        "{res:?}"
    );
    assert_eq!(svc.calls(), 3);
}

/// A retryable *response* is returned as `Ok` when the budget is empty.
#[tokio::test(start_paused = true)]
async fn budget_exhausted_keeps_a_usable_response() {
    let mut cfg = config(3, Backoff::Constant, MS);
    cfg.budget.min_retries_per_second = 0;
    cfg.budget.retry_ratio = 0.0;
    let svc = Script::new([(Duration::ZERO, Ok(503))]);
    let res = retry(cfg, svc.clone()).oneshot(Call::new(())).await;
    assert_eq!(res.unwrap(), 503);
    assert_eq!(svc.calls(), 1);
}

/// Scenario 41: no sleep or attempt starts past the deadline.
#[tokio::test(start_paused = true)]
async fn s41_retries_never_outlive_the_deadline() {
    let slow_fail = (30 * MS, Err("down"));
    let svc = Script::new([slow_fail; 10]);
    let start = Instant::now();
    let deadline = start + 250 * MS;
    let mut req = Call::new(());
    req.set_deadline(deadline);
    let res = retry(config(10, Backoff::Constant, 100 * MS), svc.clone())
        .oneshot(req)
        .await;
    // Attempts at 0ms and 130ms; the next would start at 260ms > 250ms.
    assert!(
        matches!(res, Err(Error::RetriesExhausted { attempts: 2, .. })),
        "{res:?}"
    );
    let started = svc.0.started.lock().clone();
    assert_eq!(started, [start, start + 130 * MS]);
    assert!(started.iter().all(|t| *t < deadline));
    // It gave up at once instead of sleeping toward the deadline.
    assert_eq!(start.elapsed(), 160 * MS);
}

fn http_503(retry_after: &str) -> http::Response<()> {
    http::Response::builder()
        .status(503)
        .header("retry-after", retry_after)
        .body(())
        .unwrap()
}

/// Scenario 42: a Retry-After shorter than the max delay sets the next delay.
#[tokio::test(start_paused = true)]
async fn s42_retry_after_sets_the_delay() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let log = calls.clone();
    let svc = tower::service_fn(move |_req: http::Request<()>| {
        log.lock().push(Instant::now());
        let first = log.lock().len() == 1;
        async move {
            Ok::<_, BoxError>(if first {
                http_503("2")
            } else {
                http::Response::new(())
            })
        }
    });
    let mut cfg = config(3, Backoff::Constant, 10 * MS);
    cfg.max_delay = Duration::from_secs(3);
    let budget = RetryBudget::new(&cfg.budget);
    let start = Instant::now();
    let res = RetryLayer::new(cfg, budget, HttpClassifier::default(), Events::silent("t"))
        .layer(svc)
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(*calls.lock(), [start, start + Duration::from_secs(2)]);
}

/// Scenario 42, the other side: a Retry-After longer than the max delay ends
/// the call with the last (usable) response.
#[tokio::test(start_paused = true)]
async fn s42_retry_after_beyond_max_delay_gives_up() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let svc = tower::service_fn(move |_req: http::Request<()>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, BoxError>(http_503("30")) }
    });
    let cfg = config(3, Backoff::Constant, 10 * MS);
    let budget = RetryBudget::new(&cfg.budget);
    let res = RetryLayer::new(cfg, budget, HttpClassifier::default(), Events::silent("t"))
        .layer(svc)
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A retryable response on the last attempt comes back as `Ok`.
#[tokio::test(start_paused = true)]
async fn last_retryable_response_is_ok() {
    let svc = Script::new([(Duration::ZERO, Ok(503)), (Duration::ZERO, Ok(503))]);
    let res = retry(config(2, Backoff::Constant, MS), svc.clone())
        .oneshot(Call::new(()))
        .await;
    assert_eq!(res.unwrap(), 503);
    assert_eq!(svc.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn one_attempt_passes_errors_through() {
    let svc = Script::new([err("down")]);
    let res = retry(config(1, Backoff::Constant, MS), svc.clone())
        .oneshot(Call::new(()))
        .await;
    assert!(matches!(res, Err(Error::Upstream(_))), "{res:?}");
    assert_eq!(svc.calls(), 1);
}

/// A request that can't be replayed is sent once.
#[tokio::test(start_paused = true)]
async fn unreplayable_request_is_sent_once() {
    struct Once;
    impl PolicyRequest for Once {
        fn deadline(&self) -> Option<Instant> {
            None
        }
        fn set_deadline(&mut self, _: Instant) {}
        fn try_clone(&self) -> Option<Self> {
            None
        }
    }
    let svc = Script::new([err("down")]);
    let res = retry(config(3, Backoff::Constant, MS), svc.clone())
        .oneshot(Once)
        .await;
    assert!(matches!(res, Err(Error::Upstream(_))), "{res:?}");
    assert_eq!(svc.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn emits_attempts_and_retries() {
    let recorder = Recorder::new();
    let cfg = config(3, Backoff::Exponential, 100 * MS);
    let budget = RetryBudget::new(&cfg.budget);
    let svc = Script::new([(20 * MS, Err("down"))]);
    RetryLayer::new(cfg, budget, Status, Events::new("users", recorder.clone()))
        .layer(svc)
        .oneshot(Call::new(()))
        .await
        .unwrap();
    let events = recorder.take();
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(events[0].starts_with("Attempt") && events[0].contains("attempt: 1"));
    assert!(events[0].contains("Failure") && events[0].contains("20ms"));
    assert!(events[1].starts_with("Retry") && events[1].contains("attempt: 2"));
    assert!(events[1].contains("100ms"));
    assert!(events[2].starts_with("Attempt") && events[2].contains("Success"));
}

#[test]
fn config_from_toml_with_defaults_and_validation() {
    let cfg: RetryConfig = toml::from_str(
        r#"
        max_attempts = 4
        backoff = "linear"
        jitter = "decorrelated"
        base_delay = "50ms"
        max_total_duration = "2s"
        [budget]
        retry_ratio = 0.5
        "#,
    )
    .unwrap();
    assert_eq!(cfg.max_attempts, 4);
    assert_eq!(cfg.backoff, Backoff::Linear);
    assert_eq!(cfg.jitter, Jitter::Decorrelated);
    assert_eq!(cfg.base_delay, 50 * MS);
    assert_eq!(cfg.max_delay, DEFAULT_MAX_DELAY);
    assert_eq!(cfg.max_total_duration, Some(Duration::from_secs(2)));
    assert_eq!(cfg.budget.retry_ratio, 0.5);
    assert_eq!(cfg.budget.ttl, DEFAULT_BUDGET_TTL);
    assert!(cfg.validate().is_ok());

    let defaults: RetryConfig = toml::from_str("").unwrap();
    assert_eq!(defaults, RetryConfig::default());
    assert_eq!(defaults.max_total_duration, None);
    let round = toml::to_string(&defaults).unwrap();
    assert_eq!(toml::from_str::<RetryConfig>(&round).unwrap(), defaults);

    let unknown = toml::from_str::<RetryConfig>("max_atempts = 2").unwrap_err();
    assert!(unknown.to_string().contains("max_atempts"), "{unknown}");

    let bad = |f: fn(&mut RetryConfig)| {
        let mut c = RetryConfig::default();
        f(&mut c);
        c.validate().unwrap_err()
    };
    assert!(bad(|c| c.max_attempts = 0).starts_with("retry.max_attempts"));
    assert!(bad(|c| c.base_delay = Duration::from_secs(5)).starts_with("retry.base_delay"));
    assert!(bad(|c| c.multiplier = 0.5).starts_with("retry.multiplier"));
    assert!(bad(|c| c.multiplier = f64::NAN).starts_with("retry.multiplier"));
    assert!(bad(|c| c.budget.retry_ratio = 2000.0).starts_with("retry.budget.retry_ratio"));
}
