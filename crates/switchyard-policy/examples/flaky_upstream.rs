//! The policy stack in front of a service that fails for a while, narrated.
//!
//! An in-process "inventory" service answers in about 5 ms. After 3 seconds
//! it starts failing every call; after 8 seconds it recovers. A client calls
//! it through the full policy stack (deadline, bulkhead, circuit breaker,
//! retry with budget) 50 times a second and prints, every second, what
//! happened: answers, failures, calls rejected by the open breaker without
//! touching the service, and the breaker's state. State changes are printed
//! the moment they happen.
//!
//! `cargo run --release --example flaky_upstream -p switchyard-policy`
//! (`-- --seconds 20` for a longer run).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use parking_lot::Mutex;
use switchyard_policy::{Call, Events, MetricsObserver, Policy, PolicyConfig, breaker::State};
use tokio::time::{Instant, MissedTickBehavior, interval};
use tower::{Layer, ServiceExt, service_fn};

const CONFIG: &str = r#"
timeout = "500ms"
attempt_timeout = "200ms"

[bulkhead]
max_concurrent = 20

[breaker]
window = { kind = "count", size = 20 }
minimum_calls = 10
failure_rate_threshold = 50.0
open_duration = "1s"
open_duration_multiplier = 2.0
max_open_duration = "4s"
half_open_permits = 3

[retry]
max_attempts = 2
base_delay = "10ms"
"#;

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    reached_upstream: AtomicU64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(12);

    let config: PolicyConfig = toml::from_str(CONFIG)?;
    let policy = Policy::new(config, Events::new("inventory", Arc::new(MetricsObserver)))?;

    let failing = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let upstream = {
        let failing = failing.clone();
        let tally = tally.clone();
        service_fn(move |call: Call<u64>| {
            let failing = failing.load(Ordering::Relaxed);
            tally.reached_upstream.fetch_add(1, Ordering::Relaxed);
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if failing {
                    Err(std::io::Error::other("inventory: connection reset"))
                } else {
                    Ok(call.into_inner() * 2)
                }
            }
        })
    };
    let client = policy.layer(upstream);

    let started = Instant::now();
    let mut changes = policy.breaker().subscribe();
    let transitions = Arc::new(Mutex::new(Vec::new()));
    let seen = transitions.clone();
    tokio::spawn(async move {
        while let Ok(change) = changes.recv().await {
            seen.lock().push(change.to);
            println!(
                "  {:>5.1}s  breaker {} -> {}",
                started.elapsed().as_secs_f64(),
                change.from.as_str(),
                change.to.as_str()
            );
        }
    });

    println!("inventory service: healthy until 3s, failing until 8s, then healthy again");
    println!(
        "{:>6}  {:>9}  {:>6}  {:>6}  {:>8}  {:>8}  breaker",
        "time", "upstream", "ok", "failed", "rejected", "reached"
    );
    let mut tick = interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next_report = Duration::from_secs(1);
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        let elapsed = started.elapsed();
        failing.store((3..8).contains(&elapsed.as_secs()), Ordering::Relaxed);
        let client = client.clone();
        let counts = tally.clone();
        n += 1;
        tokio::spawn(async move {
            match client.oneshot(Call::new(n)).await {
                Ok(_) => counts.ok.fetch_add(1, Ordering::Relaxed),
                Err(err) if err.is_rejection() => counts.rejected.fetch_add(1, Ordering::Relaxed),
                Err(_) => counts.failed.fetch_add(1, Ordering::Relaxed),
            };
        });
        if elapsed >= next_report {
            next_report += Duration::from_secs(1);
            println!(
                "{:>5}s  {:>9}  {:>6}  {:>6}  {:>8}  {:>8}  {}",
                elapsed.as_secs(),
                if failing.load(Ordering::Relaxed) {
                    "failing"
                } else {
                    "healthy"
                },
                tally.ok.swap(0, Ordering::Relaxed),
                tally.failed.swap(0, Ordering::Relaxed),
                tally.rejected.swap(0, Ordering::Relaxed),
                tally.reached_upstream.swap(0, Ordering::Relaxed),
                policy.breaker().state().as_str(),
            );
        }
    }
    let transitions = transitions.lock().clone();
    let opened = transitions.iter().filter(|s| **s == State::Open).count();
    let closed = transitions.iter().filter(|s| **s == State::Closed).count();
    println!("summary: the breaker opened {opened} time(s) and closed {closed} time(s)");
    if opened == 0 || closed == 0 {
        eprintln!(
            "expected the breaker to open while the service failed and close after it recovered"
        );
        std::process::exit(1);
    }
    Ok(())
}
