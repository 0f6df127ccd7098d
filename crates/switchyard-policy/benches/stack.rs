//! Added cost per call of the composed policy stack (deadline + rate limit +
//! bulkhead + breaker + retry with budget) around a no-op service, against the
//! bare service in the same run; uncontended and with two threads contending
//! on one shared policy. Uncontended also: the default stack (deadline,
//! breaker, retry with budget), which runs fused (one service, one future).
//!
//! `cargo bench -p switchyard-policy --bench stack`

// criterion's macros generate undocumented items.
#![allow(missing_docs)]
// A bench that cannot set itself up should stop loudly.
#![allow(clippy::expect_used)]

use std::{
    future::{Ready, ready},
    hint::black_box,
    task::{Context, Poll},
    time::Duration,
};

use criterion::{Criterion, criterion_group, criterion_main};
use switchyard_policy::{Call, Error, Events, Policy, PolicyConfig};
use tower::{Layer, Service, ServiceExt};

/// The cheapest possible service: answers at once.
#[derive(Clone, Copy)]
struct Noop;

impl Service<Call<u64>> for Noop {
    type Response = u64;
    type Error = Error;
    type Future = Ready<Result<u64, Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Call<u64>) -> Self::Future {
        ready(Ok(req.into_inner()))
    }
}

fn full_policy() -> Policy {
    let config: PolicyConfig = toml::from_str(
        r#"
        timeout = "10s"
        [rate_limit]
        rate = 1000000000
        per = "1s"
        burst = 1000000000
        [bulkhead]
        max_concurrent = 1000
        [breaker]
        minimum_calls = 20
        [retry]
        max_attempts = 3
        "#,
    )
    .expect("bench config parses");
    Policy::new(config, Events::silent("bench")).expect("bench config is valid")
}

async fn drive<S>(svc: &mut S, n: u64)
where
    S: Service<Call<u64>, Response = u64, Error = Error>,
{
    for i in 0..n {
        let out = svc.ready().await.expect("ready").call(Call::new(i)).await;
        black_box(out.expect("no-op answers"));
    }
}

/// The time `n` calls through `svc` take, one after the other.
fn time_calls<S>(rt: &tokio::runtime::Runtime, mut svc: S, n: u64) -> Duration
where
    S: Service<Call<u64>, Response = u64, Error = Error>,
{
    rt.block_on(async {
        let start = tokio::time::Instant::now();
        drive(&mut svc, n).await;
        start.elapsed()
    })
}

fn uncontended(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("uncontended");
    group.bench_function("bare", |b| b.iter_custom(|n| time_calls(&rt, Noop, n)));
    let policy = full_policy();
    group.bench_function("full-stack", |b| {
        b.iter_custom(|n| time_calls(&rt, policy.layer(Noop), n))
    });
    let defaults =
        Policy::new(PolicyConfig::default(), Events::silent("bench")).expect("defaults are valid");
    group.bench_function("default-stack", |b| {
        b.iter_custom(|n| time_calls(&rt, defaults.layer(Noop), n))
    });
    group.finish();
}

/// Two worker threads, each calling its own clone of a service that shares
/// one policy state (one breaker, one bulkhead, one budget, one limiter).
fn contended(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("contended-2-threads");
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("bare", |b| b.iter_custom(|n| run_two(&rt, Noop, n)));
    let svc = full_policy().layer(Noop);
    group.bench_function("full-stack", |b| {
        b.iter_custom(|n| run_two(&rt, svc.clone(), n))
    });
    group.finish();
}

fn run_two<S>(rt: &tokio::runtime::Runtime, svc: S, n: u64) -> Duration
where
    S: Service<Call<u64>, Response = u64, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
{
    rt.block_on(async move {
        let start = tokio::time::Instant::now();
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let mut svc = svc.clone();
                tokio::spawn(async move { drive(&mut svc, n.div_ceil(2)).await })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        start.elapsed()
    })
}

criterion_group!(benches, uncontended, contended);
criterion_main!(benches);
