//! The scheduler under tokio's paused clock with an in-process fake
//! transport: exact, deterministic latencies and counts.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use super::*;

/// Answers every request at once, except the ones listed in `stalls`
/// (by send order), which take the given time; `status` is the answer.
struct Fake {
    sends: AtomicU64,
    stalls: Vec<(u64, Duration)>,
    status: u16,
    started: Mutex<Vec<Instant>>,
    resets: AtomicU64,
}

impl Fake {
    fn new(stalls: Vec<(u64, Duration)>) -> Arc<Fake> {
        Arc::new(Fake {
            sends: AtomicU64::new(0),
            stalls,
            status: 200,
            started: Mutex::new(Vec::new()),
            resets: AtomicU64::new(0),
        })
    }
}

impl Transport for Fake {
    type Slot = ();

    fn slot(&self, _index: usize) {}

    async fn send<'a>(&'a self, _slot: &'a mut ()) -> Outcome {
        let n = self.sends.fetch_add(1, Ordering::SeqCst);
        self.started.lock().unwrap().push(Instant::now());
        if let Some((_, stall)) = self.stalls.iter().find(|(i, _)| *i == n) {
            tokio::time::sleep(*stall).await;
        }
        Outcome::Status(self.status)
    }

    fn reset(&self, _slot: &mut ()) {
        self.resets.fetch_add(1, Ordering::SeqCst);
    }
}

fn plan(rate: f64, duration_ms: u64, slots: usize) -> Plan {
    Plan {
        rate,
        warmup: Duration::ZERO,
        duration: Duration::from_millis(duration_ms),
        timeout: Duration::from_secs(5),
        slots,
        spin: Duration::ZERO,
    }
}

fn ms(micros: u64) -> u64 {
    micros / 1000
}

#[tokio::test(start_paused = true)]
async fn requests_leave_on_schedule_and_a_fast_server_shows_zero_latency() {
    let fake = Fake::new(vec![]);
    let t0 = Instant::now();
    let stats = run(&plan(100.0, 1000, 4), fake.clone(), &Progress::default()).await;
    assert_eq!(
        (stats.scheduled, stats.sent, stats.completed),
        (100, 100, 100)
    );
    assert_eq!(stats.late_starts, 0);
    assert_eq!(stats.status, [100, 0, 0, 0]);
    assert_eq!(stats.latency.max(), 0);
    let started = fake.started.lock().unwrap();
    for (i, at) in started.iter().enumerate() {
        assert_eq!(
            *at - t0,
            Duration::from_millis(10 * i as u64),
            "request {i}"
        );
    }
}

/// The server stalls for 95 ms on the first request, with one connection.
/// A closed-loop generator would measure 95 ms once and 0 for the rest;
/// here the nine requests scheduled during the stall wait for the
/// connection, start late, and carry their wait: 85, 75, ... 5 ms.
#[tokio::test(start_paused = true)]
async fn a_stall_is_charged_to_every_request_scheduled_behind_it() {
    let fake = Fake::new(vec![(0, Duration::from_millis(95))]);
    let t0 = Instant::now();
    let stats = run(&plan(100.0, 1000, 1), fake.clone(), &Progress::default()).await;
    assert_eq!(
        (stats.scheduled, stats.sent, stats.completed),
        (100, 100, 100)
    );
    assert_eq!(stats.late_starts, 9);

    // Requests 1..=9 all went out when the connection came back, at 95 ms.
    let started = fake.started.lock().unwrap().clone();
    for (i, at) in started.iter().enumerate().take(10).skip(1) {
        assert_eq!(*at - t0, Duration::from_millis(95), "request {i}");
    }
    assert_eq!(started[10] - t0, Duration::from_millis(100));

    let latency = &stats.latency;
    assert_eq!(ms(latency.max()), 95);
    // 95 (the stalled one) + 85 + 75 + ... + 5 over 100 requests: 5 ms mean.
    // Measured from the actual send instead, the mean would be 0.95 ms.
    let total_ms: u64 = latency
        .iter_recorded()
        .map(|v| ms(v.value_iterated_to()) * v.count_at_value())
        .sum();
    assert_eq!(total_ms, 95 + (1..=9).map(|k| 95 - 10 * k).sum::<u64>());
    assert_eq!(latency.len(), 100);
    assert_eq!(latency.count_between(1, 4_999), 0);
    assert_eq!(latency.count_between(5_000, 95_000), 10);
    assert_eq!(latency.value_at_quantile(0.5), 0);
    // How late each request left: the same waits, from the intended start.
    assert_eq!(ms(stats.lag.max()), 85);
}

#[tokio::test(start_paused = true)]
async fn a_request_past_its_deadline_is_a_timeout_sent_or_not() {
    // One connection; the first request hangs for 10 s, the timeout is 1 s.
    let fake = Fake::new(vec![(0, Duration::from_secs(10))]);
    let plan = Plan {
        timeout: Duration::from_secs(1),
        ..plan(10.0, 1000, 1)
    };
    let t0 = Instant::now();
    let stats = run(&plan, fake.clone(), &Progress::default()).await;
    // Request 0 is cut off at 1 s and its connection reset; requests 1..=9
    // (100..900 ms) waited for the connection: request 1's deadline (1.1 s)
    // passes after the connection came back at 1 s, so it is sent; the
    // dispatcher handles them in order, so all nine go out at 1 s.
    assert_eq!(fake.resets.load(Ordering::SeqCst), 1);
    assert_eq!(stats.scheduled, 10);
    assert_eq!(stats.timeouts, 1);
    assert_eq!(stats.completed, 9);
    assert_eq!(stats.late_starts, 9);
    assert_eq!(ms(stats.latency.max()), 900);
    assert!(
        Instant::now() - t0 < Duration::from_secs(2),
        "the run ends by duration + timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn a_server_that_never_answers_costs_timeouts_and_the_run_still_ends() {
    // Every request hangs past its 250 ms deadline, one connection, 20/s:
    // each waits for the one before to be cut off, then goes out.
    let fake = Fake::new((0..100).map(|i| (i, Duration::from_secs(60))).collect());
    let plan = Plan {
        timeout: Duration::from_millis(250),
        ..plan(20.0, 1000, 1)
    };
    let t0 = Instant::now();
    let stats = run(&plan, fake.clone(), &Progress::default()).await;
    assert_eq!(stats.scheduled, 20);
    assert_eq!(stats.completed, 0);
    assert_eq!(stats.timeouts, 20);
    assert_eq!(stats.sent, 20);
    assert_eq!(stats.late_starts, 19);
    assert_eq!(fake.resets.load(Ordering::SeqCst), 20);
    assert!(stats.latency.is_empty());
    assert!(Instant::now() - t0 <= Duration::from_millis(1250) + STRAGGLER_GRACE);
}

#[tokio::test(start_paused = true)]
async fn warmup_requests_are_sent_but_not_recorded() {
    let fake = Fake::new(vec![(0, Duration::from_millis(500))]);
    let plan = Plan {
        warmup: Duration::from_millis(500),
        ..plan(10.0, 1000, 4)
    };
    let stats = run(&plan, fake.clone(), &Progress::default()).await;
    assert_eq!(fake.sends.load(Ordering::SeqCst), 15);
    assert_eq!((stats.scheduled, stats.completed), (10, 10));
    assert_eq!(
        stats.latency.max(),
        0,
        "the warmup's stall is not in the figures"
    );
}

#[test]
fn the_number_of_starts_is_rate_times_duration() {
    let plan = plan(30.0, 100, 1);
    assert_eq!(plan.starts_before(Duration::from_millis(100)), 3);
    assert_eq!(plan.starts_before(Duration::from_millis(101)), 4);
    assert_eq!(plan.starts_before(Duration::ZERO), 0);
    let plan = Plan { rate: 0.5, ..plan };
    assert_eq!(plan.starts_before(Duration::from_secs(3)), 2);
    assert_eq!(plan.offset(1), Duration::from_secs(2));
}
