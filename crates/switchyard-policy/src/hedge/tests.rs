use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    task::{Context, Poll},
};

use parking_lot::Mutex;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use super::*;
use crate::{
    Call,
    events::Recorder,
    retry::{BudgetConfig, RetryConfig, RetryLayer},
};

const MS: Duration = Duration::from_millis(1);

type Step = (Duration, Result<u32, &'static str>);

#[derive(Default)]
struct Counters {
    script: Mutex<VecDeque<Step>>,
    calls: AtomicU32,
    ready_polls: AtomicU32,
    /// Futures dropped before they finished.
    cancelled: AtomicU32,
    started: Mutex<Vec<Instant>>,
}

/// Answers from a script (then `Ok(0)` after 10ms), counting calls and
/// futures dropped unfinished.
#[derive(Clone, Default)]
struct Script(Arc<Counters>);

impl Script {
    fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        let s = Self::default();
        s.0.script.lock().extend(steps);
        s
    }
    fn calls(&self) -> u32 {
        self.0.calls.load(Ordering::SeqCst)
    }
    fn cancelled(&self) -> u32 {
        self.0.cancelled.load(Ordering::SeqCst)
    }
}

struct DropGuard {
    counters: Arc<Counters>,
    done: bool,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.done {
            self.counters.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl<R> Service<R> for Script {
    type Response = u32;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<u32, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.ready_polls.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: R) -> Self::Future {
        let n = self.0.calls.fetch_add(1, Ordering::SeqCst);
        self.0.started.lock().push(Instant::now());
        let (delay, out) = self.0.script.lock().pop_front().unwrap_or((10 * MS, Ok(n)));
        let guard = DropGuard {
            counters: self.0.clone(),
            done: false,
        };
        Box::pin(async move {
            // Moved in whole (not just the field) so that dropping the
            // future drops it.
            let mut guard = guard;
            tokio::time::sleep(delay).await;
            guard.done = true;
            out.map_err(BoxError::from)
        })
    }
}

fn budget(min_per_sec: u32, ratio: f64) -> RetryBudget {
    RetryBudget::new(&BudgetConfig {
        min_retries_per_second: min_per_sec,
        retry_ratio: ratio,
        ..BudgetConfig::default()
    })
}

fn fixed(delay: Duration, max_hedges: u32) -> HedgeConfig {
    HedgeConfig {
        delay: Some(delay),
        max_hedges,
        ..HedgeConfig::default()
    }
}

fn hedge(config: HedgeConfig, budget: RetryBudget, svc: Script) -> Hedge<Script> {
    HedgeLayer::new(config, budget, DefaultClassifier, Events::silent("t")).layer(svc)
}

async fn send(svc: &mut Hedge<Script>) -> Result<u32, Error> {
    ServiceExt::<Call<()>>::ready(svc)
        .await
        .unwrap()
        .call(Call::new(()))
        .await
}

/// Scenario 46: after 50ms a slow first attempt gets one backup; the first
/// success wins; the loser's future is dropped.
#[tokio::test(start_paused = true)]
async fn s46_backup_after_delay_first_success_wins_loser_dropped() {
    let recorder = Recorder::new();
    let svc = Script::new([(Duration::from_secs(1), Ok(1)), (10 * MS, Ok(2))]);
    let start = Instant::now();
    let res = HedgeLayer::new(
        fixed(50 * MS, 1),
        budget(10, 0.2),
        DefaultClassifier,
        Events::new("search", recorder.clone()),
    )
    .layer(svc.clone())
    .oneshot(Call::new(()))
    .await;
    assert_eq!(res.unwrap(), 2, "the backup answered first");
    assert_eq!(start.elapsed(), 60 * MS);
    assert_eq!(*svc.0.started.lock(), [start, start + 50 * MS]);
    assert_eq!(svc.calls(), 2, "one backup only");
    assert_eq!(svc.cancelled(), 1, "the slow first attempt was dropped");
    let events = recorder.take();
    assert_eq!(events, [r#"Hedge { service: "search" }"#]);
    // The backup went through poll_ready on its own service clone.
    assert_eq!(svc.0.ready_polls.load(Ordering::SeqCst), 2);
}

/// Scenario 46: hedges stay within their budget. With no floor and a 20%
/// ratio, ten slow calls may send two backups, no more.
#[tokio::test(start_paused = true)]
async fn s46_hedges_stay_within_the_budget() {
    let recorder = Recorder::new();
    let svc = Script::new([]);
    let mut hedge = HedgeLayer::new(
        fixed(5 * MS, 1),
        budget(0, 0.2),
        DefaultClassifier,
        Events::new("search", recorder.clone()),
    )
    .deposit_per_call(true)
    .layer(svc.clone());
    for _ in 0..10 {
        // Every call is slower (10ms) than the hedge delay (5ms).
        send(&mut hedge).await.unwrap();
    }
    let hedges = recorder
        .take()
        .iter()
        .filter(|e| e.starts_with("Hedge"))
        .count();
    assert_eq!(hedges, 2);
    assert_eq!(svc.calls(), 12);
}

/// Hedges and retries draw on one budget: a retry layer's withdrawals leave
/// nothing for a hedge.
#[tokio::test(start_paused = true)]
async fn hedges_share_the_retry_budget() {
    let shared = budget(0, 1.0);
    let svc = Script::new([(MS, Err("down")), (Duration::from_secs(1), Ok(7))]);
    let retry_config = RetryConfig {
        base_delay: MS,
        ..RetryConfig::default()
    };
    let stack = tower::ServiceBuilder::new()
        .layer(RetryLayer::new(
            retry_config,
            shared.clone(),
            DefaultClassifier,
            Events::silent("t"),
        ))
        .layer(HedgeLayer::new(
            fixed(50 * MS, 1),
            shared.clone(),
            DefaultClassifier,
            Events::silent("t"),
        ))
        .service(svc.clone());
    // One call deposits one retry's worth; the retry spends it, so the slow
    // second attempt gets no backup.
    assert_eq!(stack.oneshot(Call::new(())).await.unwrap(), 7);
    assert_eq!(svc.calls(), 2);
    assert_eq!(shared.balance(), 0);
}

#[tokio::test(start_paused = true)]
async fn fast_answers_send_no_backup_and_spend_nothing() {
    let b = budget(1, 0.0);
    let svc = Script::new([]);
    let mut hedge = hedge(fixed(50 * MS, 1), b.clone(), svc.clone());
    assert_eq!(send(&mut hedge).await.unwrap(), 0);
    assert_eq!(svc.calls(), 1);
    assert_eq!(b.balance(), 10);
}

/// A failure with nothing else in flight returns at once.
#[tokio::test(start_paused = true)]
async fn early_failure_returns_without_waiting_for_the_timer() {
    let svc = Script::new([(5 * MS, Err("refused"))]);
    let start = Instant::now();
    let res = hedge(fixed(50 * MS, 1), budget(10, 0.2), svc.clone())
        .oneshot(Call::new(()))
        .await;
    assert!(matches!(res, Err(Error::Upstream(_))), "{res:?}");
    assert_eq!(start.elapsed(), 5 * MS);
    assert_eq!(svc.calls(), 1);
}

/// A failure while a backup is in flight waits for the backup.
#[tokio::test(start_paused = true)]
async fn failure_waits_for_the_backup_in_flight() {
    let svc = Script::new([(100 * MS, Err("down")), (100 * MS, Ok(9))]);
    let start = Instant::now();
    let res = hedge(fixed(50 * MS, 3), budget(10, 0.2), svc.clone())
        .oneshot(Call::new(()))
        .await;
    assert_eq!(res.unwrap(), 9);
    assert_eq!(start.elapsed(), 150 * MS);
    // The failure at 100ms stopped further backups.
    assert_eq!(svc.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn all_failing_returns_the_last_failure() {
    let svc = Script::new([(100 * MS, Err("first")), (100 * MS, Err("second"))]);
    let res = hedge(fixed(50 * MS, 1), budget(10, 0.2), svc.clone())
        .oneshot(Call::new(()))
        .await;
    match res {
        Err(e) => {
            let source = std::error::Error::source(&e).unwrap();
            assert_eq!(source.to_string(), "second");
        }
        Ok(v) => panic!("unexpected {v}"),
    }
    assert_eq!(svc.cancelled(), 0);
}

#[tokio::test(start_paused = true)]
async fn several_backups_are_spaced_by_the_delay() {
    let slow = (Duration::from_secs(1), Ok(1));
    let svc = Script::new([slow, slow, (10 * MS, Ok(3))]);
    let start = Instant::now();
    let res = hedge(fixed(50 * MS, 2), budget(10, 0.2), svc.clone())
        .oneshot(Call::new(()))
        .await;
    assert_eq!(res.unwrap(), 3);
    assert_eq!(
        *svc.0.started.lock(),
        [start, start + 50 * MS, start + 100 * MS]
    );
    assert_eq!(svc.cancelled(), 2);
}

/// Percentile hedging sends nothing until `min_samples` latencies are known,
/// then hedges after the tracked percentile.
#[tokio::test(start_paused = true)]
async fn percentile_engages_after_min_samples() {
    let config = HedgeConfig {
        percentile: Some(95.0),
        min_samples: 20,
        ..HedgeConfig::default()
    };
    let svc = Script::new([]);
    let mut hedge = hedge(config, budget(10, 0.2), svc.clone());
    for _ in 0..20 {
        assert_eq!(hedge.hedge_delay(), None);
        send(&mut hedge).await.unwrap();
    }
    assert_eq!(svc.calls(), 20);
    assert_eq!(hedge.hedge_delay(), Some(10 * MS));

    svc.0
        .script
        .lock()
        .extend([(Duration::from_secs(1), Ok(1)), (MS, Ok(2))]);
    let start = Instant::now();
    assert_eq!(send(&mut hedge).await.unwrap(), 2);
    assert_eq!(start.elapsed(), 11 * MS);
    assert_eq!(svc.calls(), 22);
}

#[tokio::test(start_paused = true)]
async fn hedging_off_passes_through() {
    let svc = Script::new([(Duration::from_secs(1), Ok(1))]);
    let res = hedge(HedgeConfig::default(), budget(10, 0.2), svc.clone())
        .oneshot(Call::new(()))
        .await;
    assert_eq!(res.unwrap(), 1);
    assert_eq!(svc.calls(), 1);
}

#[test]
fn config_from_toml_and_validation() {
    let cfg: HedgeConfig = toml::from_str("percentile = 99.0\nmin_samples = 50").unwrap();
    assert_eq!(cfg.percentile, Some(99.0));
    assert_eq!(cfg.min_samples, 50);
    assert_eq!(cfg.max_hedges, DEFAULT_MAX_HEDGES);
    assert_eq!(cfg.delay, None);
    assert!(cfg.validate().is_ok());
    let cfg: HedgeConfig = toml::from_str("delay = \"50ms\"").unwrap();
    assert_eq!(cfg.delay, Some(50 * MS));
    let round = toml::to_string(&cfg).unwrap();
    assert_eq!(toml::from_str::<HedgeConfig>(&round).unwrap(), cfg);
    assert!(toml::from_str::<HedgeConfig>("dealy = \"5ms\"").is_err());

    let bad = |f: fn(&mut HedgeConfig)| {
        let mut c = HedgeConfig::default();
        f(&mut c);
        c.validate().unwrap_err()
    };
    assert!(
        bad(|c| {
            c.delay = Some(MS);
            c.percentile = Some(90.0);
        })
        .starts_with("hedge.delay")
    );
    assert!(bad(|c| c.percentile = Some(0.0)).starts_with("hedge.percentile"));
    assert!(bad(|c| c.percentile = Some(f64::NAN)).starts_with("hedge.percentile"));
    assert!(bad(|c| c.min_samples = 0).starts_with("hedge.min_samples"));
    assert!(bad(|c| c.min_samples = 10_000).starts_with("hedge.min_samples"));
    assert!(bad(|c| c.max_hedges = 0).starts_with("hedge.max_hedges"));
}
