//! The windows against a naive model: a Vec of (time, failure, slow)
//! recomputed from scratch on every check.

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone, Copy)]
enum Op {
    /// Time moves on by this many nanoseconds, then one call is recorded.
    Record {
        advance: u64,
        failure: bool,
        slow: bool,
    },
    /// Time moves on without a call.
    Wait {
        advance: u64,
    },
    Clear,
}

fn op(max_advance: u64) -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..max_advance, any::<bool>(), any::<bool>())
            .prop_map(|(advance, failure, slow)| Op::Record { advance, failure, slow }),
        2 => (0..max_advance * 4).prop_map(|advance| Op::Wait { advance }),
        1 => Just(Op::Clear),
    ]
}

fn model_totals(entries: &[(u64, bool, bool)]) -> Totals {
    let mut t = Totals::default();
    for &(_, failure, slow) in entries {
        t.calls += 1;
        t.failures += u64::from(failure);
        t.slow += u64::from(slow);
    }
    t
}

proptest! {
    #[test]
    fn count_window_matches_model(
        size in 1u32..20,
        ops in proptest::collection::vec(op(10), 0..200),
    ) {
        let mut window = Window::new(&WindowConfig::Count { size });
        let mut model: Vec<(u64, bool, bool)> = Vec::new();
        let mut now = 0u64;
        for op in ops {
            match op {
                Op::Record { advance, failure, slow } => {
                    now += advance;
                    window.record(now, failure, slow);
                    model.push((now, failure, slow));
                }
                Op::Wait { advance } => now += advance,
                Op::Clear => {
                    window.clear();
                    model.clear();
                }
            }
            let keep = model.len().saturating_sub(size as usize);
            let expected = model_totals(&model[keep..]);
            prop_assert_eq!(window.totals(now), expected);
        }
    }

    #[test]
    fn time_window_matches_model(
        bucket_len in 1u64..50,
        buckets in 1u32..12,
        ops in proptest::collection::vec(op(40), 0..200),
    ) {
        let duration = bucket_len * u64::from(buckets);
        let mut window = Window::new(&WindowConfig::Time {
            duration: std::time::Duration::from_nanos(duration),
            buckets,
        });
        let mut model: Vec<(u64, bool, bool)> = Vec::new();
        let mut now = 0u64;
        for op in ops {
            match op {
                Op::Record { advance, failure, slow } => {
                    now += advance;
                    window.record(now, failure, slow);
                    model.push((now, failure, slow));
                }
                Op::Wait { advance } => now += advance,
                Op::Clear => {
                    window.clear();
                    model.clear();
                }
            }
            // A call is in the window while its bucket is one of the last
            // `buckets` buckets.
            let current = now / bucket_len;
            let live: Vec<_> = model
                .iter()
                .copied()
                .filter(|&(at, _, _)| at / bucket_len + u64::from(buckets) > current)
                .collect();
            prop_assert_eq!(window.totals(now), model_totals(&live));
        }
    }
}

#[test]
fn count_window_evicts_oldest() {
    let mut w = Window::new(&WindowConfig::Count { size: 3 });
    w.record(0, true, false);
    w.record(0, false, true);
    w.record(0, false, false);
    assert_eq!(
        w.totals(0),
        Totals {
            calls: 3,
            failures: 1,
            slow: 1
        }
    );
    w.record(0, false, false);
    assert_eq!(
        w.totals(0),
        Totals {
            calls: 3,
            failures: 0,
            slow: 1
        }
    );
}

#[test]
fn time_window_rolls_whole_buckets() {
    // 10 buckets of 1 (time unit): at t=10 bucket 0 has left the window.
    let mut w = Window::new(&WindowConfig::Time {
        duration: std::time::Duration::from_nanos(10),
        buckets: 10,
    });
    w.record(0, true, false);
    w.record(5, false, false);
    assert_eq!(w.totals(9).calls, 2);
    assert_eq!(w.totals(10).calls, 1);
    assert_eq!(w.totals(10).failures, 0);
    assert_eq!(w.totals(1_000).calls, 0);
    assert!(
        (Totals {
            calls: 4,
            failures: 1,
            slow: 3
        }
        .slow_call_rate()
            - 75.0)
            .abs()
            < 1e-9
    );
}
