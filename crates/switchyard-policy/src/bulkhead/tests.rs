use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{task::JoinHandle, time};
use tower::{Service, ServiceExt, service_fn};
use tower_layer::Layer;

use super::*;
use crate::events::Recorder;

/// Lets spawned tasks run until they block, without moving the paused clock.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// A bulkhead over a service that holds each call for the duration it is
/// given, counting the calls that reach it.
fn bulkhead(
    config: BulkheadConfig,
    events: Events,
) -> (
    impl Service<(u32, Duration), Response = u32, Error = Error, Future: Send> + Clone + Send + 'static,
    BulkheadState,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = BulkheadLayer::new(config, events);
    let state = layer.state();
    let counter = calls.clone();
    let svc = layer.layer(service_fn(move |(id, hold): (u32, Duration)| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            time::sleep(hold).await;
            Ok::<_, Infallible>(id)
        }
    }));
    (svc, state, calls)
}

fn spawn_call<S>(svc: &S, id: u32, hold: Duration) -> JoinHandle<Result<u32, Error>>
where
    S: Service<(u32, Duration), Response = u32, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut svc = svc.clone();
    tokio::spawn(async move { svc.ready().await?.call((id, hold)).await })
}

fn config(max_concurrent: usize, max_queue: usize, max_wait: Duration) -> BulkheadConfig {
    BulkheadConfig {
        max_concurrent,
        max_queue,
        max_wait,
    }
}

#[tokio::test(start_paused = true)]
async fn s43_third_call_waits_fourth_rejected_waiter_times_out() {
    let recorder = Recorder::new();
    let (svc, state, calls) = bulkhead(
        config(2, 1, Duration::from_secs(1)),
        Events::new("users", recorder.clone()),
    );
    let hold = Duration::from_secs(10);

    let first = spawn_call(&svc, 1, hold);
    let second = spawn_call(&svc, 2, hold);
    settle().await;
    assert_eq!((state.in_flight(), state.queued()), (2, 0));
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let third = spawn_call(&svc, 3, hold);
    settle().await;
    assert_eq!(state.queued(), 1, "the 3rd call waits in the queue");
    assert!(!third.is_finished());

    let fourth = spawn_call(&svc, 4, hold);
    settle().await;
    assert!(fourth.is_finished(), "the 4th call is rejected at once");
    assert!(matches!(
        fourth.await.unwrap(),
        Err(Error::BulkheadFull { max_concurrent: 2 })
    ));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "a rejected call never reaches the inner service"
    );

    time::advance(Duration::from_millis(999)).await;
    settle().await;
    assert!(!third.is_finished(), "still within its max wait");
    time::advance(Duration::from_millis(2)).await;
    settle().await;
    assert!(
        third.is_finished(),
        "the waiter times out after its max wait"
    );
    assert!(matches!(
        third.await.unwrap(),
        Err(Error::BulkheadFull { max_concurrent: 2 })
    ));
    assert_eq!((state.in_flight(), state.queued()), (2, 0));
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let events = recorder.take();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e.contains("bulkhead-full") && e.contains("users"))
    );

    time::advance(hold).await;
    assert_eq!(first.await.unwrap().unwrap(), 1);
    assert_eq!(second.await.unwrap().unwrap(), 2);
    assert_eq!(state.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn s43_waiter_gets_the_slot_freed_within_its_max_wait() {
    let (svc, state, calls) = bulkhead(config(2, 1, Duration::from_secs(1)), Events::default());

    let first = spawn_call(&svc, 1, Duration::from_millis(300));
    let second = spawn_call(&svc, 2, Duration::from_secs(10));
    settle().await;
    let third = spawn_call(&svc, 3, Duration::from_millis(100));
    settle().await;
    assert_eq!(state.queued(), 1);

    time::advance(Duration::from_millis(300)).await;
    settle().await;
    assert_eq!(first.await.unwrap().unwrap(), 1);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the waiter took the freed slot"
    );
    assert_eq!((state.in_flight(), state.queued()), (2, 0));

    time::advance(Duration::from_millis(100)).await;
    assert_eq!(third.await.unwrap().unwrap(), 3);
    assert_eq!(state.in_flight(), 1);
    second.abort();
    let _ = second.await;
    assert_eq!(state.in_flight(), 0, "a dropped call frees its slot");
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_arrival_order() {
    let (svc, _state, _calls) = bulkhead(config(1, 3, Duration::from_secs(5)), Events::default());
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let hold = Duration::from_millis(10);
    let first = spawn_call(&svc, 0, hold);
    settle().await;
    let mut waiters = Vec::new();
    for id in 1..=3 {
        let (svc, order) = (svc.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let mut svc = svc;
            let out = svc.ready().await?.call((id, hold)).await;
            order.lock().push(id);
            out
        }));
        settle().await;
    }
    for _ in 0..4 {
        time::advance(hold).await;
        settle().await;
    }
    first.await.unwrap().unwrap();
    for waiter in waiters {
        waiter.await.unwrap().unwrap();
    }
    assert_eq!(*order.lock(), vec![1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_leaves_the_queue() {
    let (svc, state, calls) = bulkhead(config(1, 1, Duration::from_secs(5)), Events::default());
    let _first = spawn_call(&svc, 1, Duration::from_secs(10));
    settle().await;
    let waiter = spawn_call(&svc, 2, Duration::ZERO);
    settle().await;
    assert_eq!(state.queued(), 1);
    waiter.abort();
    let _ = waiter.await;
    assert_eq!(state.queued(), 0);
    // The queue place is free again: the next call waits instead of failing.
    let again = spawn_call(&svc, 3, Duration::ZERO);
    settle().await;
    assert_eq!(state.queued(), 1);
    assert!(!again.is_finished());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn no_queue_rejects_at_once_when_full() {
    let (svc, state, _calls) = bulkhead(config(1, 0, Duration::from_secs(1)), Events::default());
    let _first = spawn_call(&svc, 1, Duration::from_secs(10));
    settle().await;
    let second = spawn_call(&svc, 2, Duration::ZERO);
    settle().await;
    assert!(second.is_finished());
    assert!(matches!(
        second.await.unwrap(),
        Err(Error::BulkheadFull { .. })
    ));
    assert_eq!(state.queued(), 0);
}

/// Many tasks on a multi-thread runtime: never more than `max_concurrent`
/// inside the inner service, never more than `max_concurrent + max_queue`
/// admitted or waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_never_exceed_the_limits() {
    const MAX_CONCURRENT: usize = 4;
    const MAX_QUEUE: usize = 3;
    const TASKS: usize = 64;
    const CALLS_PER_TASK: usize = 25;

    let layer = BulkheadLayer::new(
        config(MAX_CONCURRENT, MAX_QUEUE, Duration::from_secs(30)),
        Events::default(),
    );
    let state = layer.state();
    let inside = Arc::new(AtomicUsize::new(0));
    let inside_high = Arc::new(AtomicUsize::new(0));
    let occupancy_high = Arc::new(AtomicUsize::new(0));
    let reached = Arc::new(AtomicUsize::new(0));

    let svc = {
        let (inside, inside_high, occupancy_high, reached, state) = (
            inside.clone(),
            inside_high.clone(),
            occupancy_high.clone(),
            reached.clone(),
            state.clone(),
        );
        layer.layer(service_fn(move |_: usize| {
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            inside_high.fetch_max(now, Ordering::SeqCst);
            occupancy_high.fetch_max(state.in_flight() + state.queued(), Ordering::SeqCst);
            reached.fetch_add(1, Ordering::SeqCst);
            let inside = inside.clone();
            async move {
                for _ in 0..20 {
                    tokio::task::yield_now().await;
                }
                inside.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, Infallible>(())
            }
        }))
    };

    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let (mut svc, barrier, state, occupancy_high) = (
                svc.clone(),
                barrier.clone(),
                state.clone(),
                occupancy_high.clone(),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                let mut results = Vec::with_capacity(CALLS_PER_TASK);
                for _ in 0..CALLS_PER_TASK {
                    let fut = svc.ready().await?.call(i);
                    occupancy_high.fetch_max(state.in_flight() + state.queued(), Ordering::SeqCst);
                    results.push(fut.await);
                    tokio::task::yield_now().await;
                }
                Ok::<_, Error>(results)
            })
        })
        .collect();

    let (mut admitted, mut rejected) = (0, 0);
    for task in tasks {
        for result in task.await.unwrap().unwrap() {
            match result {
                Ok(()) => admitted += 1,
                Err(Error::BulkheadFull { max_concurrent }) => {
                    assert_eq!(max_concurrent, MAX_CONCURRENT);
                    rejected += 1;
                }
                Err(other) => panic!("unexpected error {other}"),
            }
        }
    }
    tracing::info!(admitted, rejected, "hammered the bulkhead");
    assert_eq!(admitted + rejected, TASKS * CALLS_PER_TASK);
    assert_eq!(
        reached.load(Ordering::SeqCst),
        admitted,
        "every admitted call ran once"
    );
    let high = inside_high.load(Ordering::SeqCst);
    assert!(
        (1..=MAX_CONCURRENT).contains(&high),
        "inside high-water {high}"
    );
    let occupancy = occupancy_high.load(Ordering::SeqCst);
    assert!(
        occupancy <= MAX_CONCURRENT + MAX_QUEUE,
        "admitted-or-waiting high-water {occupancy}"
    );
    assert_eq!((state.in_flight(), state.queued()), (0, 0));
}

#[test]
fn config_defaults_parse_and_validate() {
    let config = BulkheadConfig::default();
    assert_eq!(config.max_concurrent, DEFAULT_MAX_CONCURRENT);
    assert_eq!(config.max_queue, 0);
    assert_eq!(config.max_wait, Duration::from_secs(1));
    config.validate().unwrap();

    let parsed: BulkheadConfig =
        toml::from_str("max_concurrent = 8\nmax_queue = 4\nmax_wait = \"250ms\"").unwrap();
    assert_eq!(parsed, config_of(8, 4, Duration::from_millis(250)));
    let partial: BulkheadConfig = toml::from_str("max_queue = 2").unwrap();
    assert_eq!(partial.max_concurrent, DEFAULT_MAX_CONCURRENT);

    let unknown = toml::from_str::<BulkheadConfig>("max_conccurent = 8").unwrap_err();
    assert!(unknown.to_string().contains("max_conccurent"), "{unknown}");

    let zero = config_of(0, 0, Duration::from_secs(1))
        .validate()
        .unwrap_err();
    assert!(zero.starts_with("bulkhead.max_concurrent:"), "{zero}");
    let no_wait = config_of(1, 2, Duration::ZERO).validate().unwrap_err();
    assert!(no_wait.starts_with("bulkhead.max_wait:"), "{no_wait}");
    config_of(1, 0, Duration::ZERO).validate().unwrap();
}

fn config_of(max_concurrent: usize, max_queue: usize, max_wait: Duration) -> BulkheadConfig {
    config(max_concurrent, max_queue, max_wait)
}
