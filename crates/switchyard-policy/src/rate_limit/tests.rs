use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::{task::JoinHandle, time};
use tower::{ServiceExt, service_fn};

use super::*;
use crate::{Call, events::Recorder};

const MS: Duration = Duration::from_millis(1);

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

fn config(rate: u32, burst: u32) -> RateLimitConfig {
    RateLimitConfig {
        rate,
        burst: Some(burst),
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn s44_burst_then_retry_after_then_full_again() {
    let limiter = RateLimiter::new(config(10, 5)).unwrap();
    for n in 0..5 {
        assert_eq!(limiter.check(&()), Ok(()), "call {n} of the burst");
    }
    assert_eq!(
        limiter.check(&()),
        Err(100 * MS),
        "the 6th waits one interval"
    );

    time::advance(40 * MS).await;
    assert_eq!(limiter.check(&()), Err(60 * MS), "retry-after counts down");
    time::advance(60 * MS).await;
    assert_eq!(limiter.check(&()), Ok(()), "one permit per 100ms");
    assert!(limiter.check(&()).is_err());

    time::advance(500 * MS).await;
    for n in 0..5 {
        assert_eq!(limiter.check(&()), Ok(()), "full burst again, call {n}");
    }
    assert_eq!(limiter.check(&()), Err(100 * MS));
}

#[tokio::test(start_paused = true)]
async fn s44_layer_rejects_with_retry_after_without_calling_inner() {
    let recorder = Recorder::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let layer = RateLimitLayer::global(
        RateLimiter::new(config(10, 5)).unwrap(),
        Events::new("search", recorder.clone()),
    );
    let mut svc = layer.layer(service_fn(move |call: Call<u32>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, Infallible>(call.into_inner()) }
    }));
    for n in 0..5 {
        assert_eq!(
            svc.ready().await.unwrap().call(Call::new(n)).await.unwrap(),
            n
        );
    }
    let sixth = svc.ready().await.unwrap().call(Call::new(5)).await;
    let Err(err) = sixth else {
        panic!("the 6th call passed")
    };
    assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");
    assert_eq!(err.retry_after(), Some(100 * MS));
    assert_eq!(err.http_status(), 429);
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    let events = recorder.take();
    assert_eq!(events.len(), 1);
    assert!(events[0].contains("rate-limited") && events[0].contains("search"));

    time::advance(500 * MS).await;
    for n in 0..5 {
        svc.ready().await.unwrap().call(Call::new(n)).await.unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 10);
}

#[tokio::test(start_paused = true)]
async fn s45_keys_never_share_permits() {
    let limiter = RateLimiter::keyed(config(10, 3)).unwrap();
    for _ in 0..3 {
        assert_eq!(limiter.check(&"a"), Ok(()));
    }
    assert!(limiter.check(&"a").is_err(), "a's bucket is empty");
    for _ in 0..3 {
        assert_eq!(limiter.check(&"b"), Ok(()), "b has its own bucket");
    }
    assert!(limiter.check(&"b").is_err());
    assert!(limiter.check(&"a").is_err(), "b's calls gave a nothing");
    assert_eq!(limiter.len(), 2);

    time::advance(100 * MS).await;
    assert_eq!(limiter.check(&"a"), Ok(()));
    assert!(limiter.check(&"a").is_err(), "a refills at its own rate");
    assert_eq!(
        limiter.check(&"b"),
        Ok(()),
        "a's refill was not shared with b"
    );
}

#[tokio::test(start_paused = true)]
async fn s45_layer_limits_per_key() {
    let layer = RateLimitLayer::new(
        RateLimiter::keyed(config(1, 1)).unwrap(),
        |call: &Call<(&'static str, u32)>| call.get_ref().0,
        Events::default(),
    );
    let mut svc = layer.layer(service_fn(|call: Call<(&'static str, u32)>| async move {
        Ok::<_, Infallible>(call.into_inner().1)
    }));
    let mut send = async |tenant, n| {
        svc.ready()
            .await
            .unwrap()
            .call(Call::new((tenant, n)))
            .await
    };
    assert_eq!(send("acme", 1).await.unwrap(), 1);
    assert!(matches!(
        send("acme", 2).await,
        Err(Error::RateLimited { .. })
    ));
    assert_eq!(send("globex", 3).await.unwrap(), 3);
    assert!(matches!(
        send("globex", 4).await,
        Err(Error::RateLimited { .. })
    ));
    assert_eq!(layer.limiter().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn retain_recent_forgets_keys_that_are_full_again() {
    let limiter = RateLimiter::keyed(config(10, 5)).unwrap();
    limiter.check(&1).unwrap();
    limiter.check(&2).unwrap();
    limiter.check(&2).unwrap();
    limiter.retain_recent();
    assert_eq!(limiter.len(), 2, "both buckets below full");
    // governor keeps a key one interval past the moment its bucket is full.
    time::advance(200 * MS).await;
    limiter.retain_recent();
    assert_eq!(
        limiter.len(),
        1,
        "key 1 was full again at 100ms, key 2 only at 200ms"
    );
    time::advance(100 * MS).await;
    limiter.retain_recent();
    limiter.shrink_to_fit();
    assert!(limiter.is_empty());
    // A forgotten key starts again with a full bucket.
    for _ in 0..5 {
        limiter.check(&2).unwrap();
    }
    assert!(limiter.check(&2).is_err());
}

/// A wait-mode limiter of 10/s with a burst of 1 over a service that counts
/// its calls.
fn waiting_service(
    max_wait: Duration,
) -> (
    impl Service<Call<u32>, Response = u32, Error = Error, Future: Send> + Clone + Send + 'static,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let limiter = RateLimiter::new(RateLimitConfig {
        mode: RateLimitMode::Wait,
        max_wait,
        ..config(10, 1)
    })
    .unwrap();
    let svc = RateLimitLayer::global(limiter, Events::default()).layer(service_fn(
        move |call: Call<u32>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, Infallible>(call.into_inner()) }
        },
    ));
    (svc, calls)
}

fn spawn_call<S>(svc: &S, call: Call<u32>) -> JoinHandle<Result<u32, Error>>
where
    S: Service<Call<u32>, Response = u32, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut svc = svc.clone();
    tokio::spawn(async move { svc.ready().await?.call(call).await })
}

#[tokio::test(start_paused = true)]
async fn wait_mode_sleeps_until_the_next_permit() {
    let (svc, calls) = waiting_service(Duration::from_secs(1));
    assert_eq!(spawn_call(&svc, Call::new(1)).await.unwrap().unwrap(), 1);
    let second = spawn_call(&svc, Call::new(2));
    let third = spawn_call(&svc, Call::new(3));
    settle().await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "both wait for a permit");

    time::advance(99 * MS).await;
    settle().await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    time::advance(MS).await;
    settle().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one permit after 100ms, one call"
    );
    assert!(second.is_finished() != third.is_finished());

    time::advance(100 * MS).await;
    settle().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the loser slept again for the next permit"
    );
    assert!(second.await.unwrap().is_ok() && third.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn wait_mode_rejects_at_once_past_max_wait() {
    let (svc, calls) = waiting_service(50 * MS);
    spawn_call(&svc, Call::new(1)).await.unwrap().unwrap();
    let second = spawn_call(&svc, Call::new(2));
    settle().await;
    assert!(
        second.is_finished(),
        "its permit (100ms) is past max_wait (50ms)"
    );
    let Err(Error::RateLimited { retry_after }) = second.await.unwrap() else {
        panic!("the 2nd call was not rate limited")
    };
    assert_eq!(retry_after, 100 * MS);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// Waiters don't reserve permits: two calls waiting for the same permit
/// both sleep; the one that loses it is rejected when the next permit falls
/// past its max wait, not kept waiting beyond it.
#[tokio::test(start_paused = true)]
async fn wait_mode_loser_of_a_permit_is_rejected_within_its_bounds() {
    let (svc, calls) = waiting_service(150 * MS);
    spawn_call(&svc, Call::new(1)).await.unwrap().unwrap();
    let second = spawn_call(&svc, Call::new(2));
    let third = spawn_call(&svc, Call::new(3));
    settle().await;
    assert!(!second.is_finished() && !third.is_finished());

    time::advance(100 * MS).await;
    settle().await;
    assert!(second.is_finished() && third.is_finished());
    let results = [second.await.unwrap(), third.await.unwrap()];
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    let rejected = results.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert_eq!(rejected.retry_after(), Some(100 * MS));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn wait_mode_never_waits_past_the_deadline() {
    let (svc, calls) = waiting_service(Duration::from_secs(1));
    spawn_call(&svc, Call::new(1)).await.unwrap().unwrap();
    let mut late = Call::new(2);
    late.set_deadline(Instant::now() + 50 * MS);
    let rejected = spawn_call(&svc, late);
    settle().await;
    assert!(
        rejected.is_finished(),
        "its permit comes after its deadline"
    );
    assert!(matches!(
        rejected.await.unwrap(),
        Err(Error::RateLimited { .. })
    ));

    let mut in_time = Call::new(3);
    in_time.set_deadline(Instant::now() + 150 * MS);
    let waiter = spawn_call(&svc, in_time);
    time::advance(100 * MS).await;
    assert_eq!(waiter.await.unwrap().unwrap(), 3);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_takes_no_permit() {
    let (svc, calls) = waiting_service(Duration::from_secs(1));
    spawn_call(&svc, Call::new(1)).await.unwrap().unwrap();
    let waiter = spawn_call(&svc, Call::new(2));
    settle().await;
    waiter.abort();
    let _ = waiter.await;
    time::advance(100 * MS).await;
    assert_eq!(spawn_call(&svc, Call::new(3)).await.unwrap().unwrap(), 3);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn config_defaults_parse_and_validate() {
    let config = RateLimitConfig::default();
    assert_eq!(
        (config.rate, config.per),
        (DEFAULT_RATE, Duration::from_secs(1))
    );
    assert_eq!(
        config.effective_burst(),
        DEFAULT_RATE,
        "burst defaults to the rate"
    );
    assert_eq!(config.mode, RateLimitMode::Reject);
    config.validate().unwrap();

    let parsed: RateLimitConfig =
        toml::from_str("rate = 10\nper = \"1m\"\nburst = 2\nmode = \"wait\"\nmax_wait = \"250ms\"")
            .unwrap();
    assert_eq!(
        parsed,
        RateLimitConfig {
            rate: 10,
            per: Duration::from_secs(60),
            burst: Some(2),
            mode: RateLimitMode::Wait,
            max_wait: 250 * MS,
        }
    );
    let round_trip: RateLimitConfig = toml::from_str(&toml::to_string(&parsed).unwrap()).unwrap();
    assert_eq!(round_trip, parsed);
    let unknown = toml::from_str::<RateLimitConfig>("rte = 10").unwrap_err();
    assert!(unknown.to_string().contains("rte"), "{unknown}");
    assert!(toml::from_str::<RateLimitConfig>("mode = \"queue\"").is_err());

    let err = |c: RateLimitConfig| c.validate().unwrap_err();
    assert!(
        err(RateLimitConfig {
            rate: 0,
            ..config.clone()
        })
        .starts_with("rate_limit.rate:")
    );
    assert!(
        err(RateLimitConfig {
            per: Duration::ZERO,
            ..config.clone()
        })
        .starts_with("rate_limit.per:")
    );
    assert!(
        err(RateLimitConfig {
            burst: Some(0),
            ..config.clone()
        })
        .starts_with("rate_limit.burst:")
    );
    assert!(
        err(RateLimitConfig {
            rate: u32::MAX,
            per: MS,
            ..config.clone()
        })
        .starts_with("rate_limit.rate:")
    );
    assert!(
        err(RateLimitConfig {
            rate: 1,
            per: Duration::from_secs(365 * 24 * 3600),
            burst: Some(1000),
            ..config.clone()
        })
        .starts_with("rate_limit.per:")
    );
    assert!(
        err(RateLimitConfig {
            mode: RateLimitMode::Wait,
            max_wait: Duration::ZERO,
            ..config.clone()
        })
        .starts_with("rate_limit.max_wait:")
    );
    assert!(RateLimiter::new(RateLimitConfig { rate: 0, ..config }).is_err());
}

#[tokio::test(start_paused = true)]
async fn check_remaining_counts_down_the_burst_and_refills() {
    let limiter = RateLimiter::<&str>::keyed(config(10, 3)).unwrap();
    assert_eq!(limiter.check_remaining(&"a"), Ok(2));
    assert_eq!(limiter.check_remaining(&"a"), Ok(1));
    assert_eq!(limiter.check_remaining(&"a"), Ok(0));
    assert_eq!(limiter.check_remaining(&"a"), Err(100 * MS));
    assert_eq!(limiter.check_remaining(&"b"), Ok(2), "keys never share");
    time::advance(300 * MS).await;
    assert_eq!(
        limiter.check_remaining(&"a"),
        Ok(2),
        "refilled after 3 intervals"
    );
}
