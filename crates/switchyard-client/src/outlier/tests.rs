use super::*;

fn config() -> OutlierConfig {
    OutlierConfig {
        base_ejection_time: Duration::from_secs(10),
        max_ejection_time: Duration::from_secs(35),
        success_rate_min_requests: 10,
        ..OutlierConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn ejection_time_grows_with_each_repeat_and_is_capped() {
    let config = config();
    let mut e = Ejection::default();
    let start = Instant::now();

    // First ejection: the base time.
    assert_eq!(
        e.eject(Instant::now(), EjectReason::ConsecutiveFailures, &config),
        Duration::from_secs(10)
    );
    assert!(e.is_ejected());
    tokio::time::advance(Duration::from_secs(9)).await;
    assert!(!e.tick(Instant::now()), "still ejected after 9s");
    assert_eq!(e.remaining(Instant::now()), Some(Duration::from_secs(1)));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(e.tick(Instant::now()), "back after 10s");
    assert!(!e.is_ejected());

    // Ejected again straight away: twice the base.
    assert_eq!(
        e.eject(Instant::now(), EjectReason::ConsecutiveFailures, &config),
        Duration::from_secs(20)
    );
    tokio::time::advance(Duration::from_secs(19)).await;
    assert!(!e.tick(Instant::now()));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(e.tick(Instant::now()));

    // Third: three times the base (30s); fourth would be 40s, capped at 35s.
    assert_eq!(
        e.eject(Instant::now(), EjectReason::ConsecutiveFailures, &config),
        Duration::from_secs(30)
    );
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(e.tick(Instant::now()));
    assert_eq!(
        e.eject(Instant::now(), EjectReason::ConsecutiveFailures, &config),
        Duration::from_secs(35)
    );
    assert_eq!(e.total(), 4);
    assert_eq!(Instant::now() - start, Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn good_behaviour_steps_the_multiplier_back_down() {
    let config = config();
    let mut e = Ejection::default();
    e.eject(Instant::now(), EjectReason::ConsecutiveFailures, &config);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(e.tick(Instant::now()));
    e.eject(Instant::now(), EjectReason::ConsecutiveFailures, &config); // 20s
    tokio::time::advance(Duration::from_secs(20)).await;
    assert!(e.tick(Instant::now()));

    // Back for as long as the last ejection (20s): the multiplier drops
    // from 2 to 1, so the next ejection lasts 2 x base, not 3 x base.
    tokio::time::advance(Duration::from_secs(20)).await;
    assert!(!e.tick(Instant::now()));
    assert_eq!(
        e.eject(Instant::now(), EjectReason::ConsecutiveFailures, &config),
        Duration::from_secs(20)
    );
}

fn sample(requests: u64, failures: u64, latency_ms: f64) -> Sample {
    Sample {
        requests,
        failures,
        latency_ns: latency_ms * 1e6,
        candidate: true,
    }
}

#[test]
fn success_rate_threshold_ejects_a_failing_endpoint_among_few() {
    // Three endpoints: the stdev band cannot single out one of three, the
    // absolute threshold (0.8) can.
    let samples = [sample(40, 20, 5.0), sample(40, 0, 5.0), sample(40, 1, 5.0)];
    assert_eq!(
        evaluate(&samples, &config()),
        vec![(0, EjectReason::SuccessRate)]
    );

    // Too few requests in the interval: not judged.
    let samples = [sample(5, 5, 5.0), sample(40, 0, 5.0), sample(40, 0, 5.0)];
    assert!(evaluate(&samples, &config()).is_empty());
}

#[test]
fn success_rate_band_needs_five_endpoints() {
    // With the absolute rule off, 90% among 100%s is caught by the band only
    // when there are at least five judged endpoints.
    let config = OutlierConfig {
        success_rate_threshold: 0.0,
        ..config()
    };
    let four = [
        sample(100, 10, 5.0),
        sample(100, 0, 5.0),
        sample(100, 0, 5.0),
        sample(100, 0, 5.0),
    ];
    assert!(evaluate(&four, &config).is_empty());
    let mut five = four.to_vec();
    five.push(sample(100, 0, 5.0));
    assert_eq!(
        evaluate(&five, &config),
        vec![(0, EjectReason::SuccessRate)]
    );
}

#[test]
fn latency_outlier_is_judged_against_the_median_of_the_others() {
    let samples = [sample(40, 0, 50.0), sample(40, 0, 5.0), sample(40, 0, 6.0)];
    assert_eq!(
        evaluate(&samples, &config()),
        vec![(0, EjectReason::Latency)]
    );

    // 2.5x the median is within the factor of 3.
    let samples = [sample(40, 0, 14.0), sample(40, 0, 5.0), sample(40, 0, 6.0)];
    assert!(evaluate(&samples, &config()).is_empty());

    // Already-ejected endpoints are not judged again.
    let mut samples = [sample(40, 0, 50.0), sample(40, 0, 5.0), sample(40, 0, 6.0)];
    samples[0].candidate = false;
    assert!(evaluate(&samples, &config()).is_empty());
}

#[test]
fn ejection_cap_keeps_a_share_and_the_last_endpoint() {
    let config = config(); // 50%
    // 3 endpoints: one may go, a second would be 67%.
    assert!(may_eject(0, 3, 2, &config));
    assert!(!may_eject(1, 3, 1, &config));
    // 2 endpoints: one may go (50%).
    assert!(may_eject(0, 2, 1, &config));
    // A lone endpoint is never ejected, whatever the percentage.
    let all = OutlierConfig {
        max_ejection_percent: 100,
        ..config
    };
    assert!(!may_eject(0, 1, 0, &all));
    assert!(may_eject(1, 3, 1, &all));
}
