//! Backoff curves and jitter.
//!
//! We write our own instead of using `backon`: backon has no linear backoff
//! and no equal or decorrelated jitter, and we need every curve to saturate
//! (never overflow or panic) for any attempt number and any duration.
//!
//! All arithmetic is done on nanoseconds held in a `u128`, which holds
//! [`Duration::MAX`] exactly, so jitter bounds are exact integers.

use std::{cell::RefCell, time::Duration};

use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde::{Deserialize, Serialize};

/// The shape of the delay before each retry, before jitter.
///
/// For attempt `n` (`n = 0` is the delay before the first retry), with
/// `base = base_delay`:
///
/// | kind | delay |
/// | --- | --- |
/// | `constant` | `base` |
/// | `linear` | `base * (n + 1)` |
/// | `exponential` | `base * multiplier^n` |
///
/// The result is then capped at `max_delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    /// The same delay before every retry.
    Constant,
    /// A delay growing by `base` each retry.
    Linear,
    /// A delay multiplied by `multiplier` each retry (the default).
    #[default]
    Exponential,
}

/// Randomisation applied to each delay, so that clients that failed together
/// don't retry together.
///
/// With `d` the capped backoff delay:
///
/// | kind | delay |
/// | --- | --- |
/// | `none` | `d` |
/// | `full` | uniform in `[0, d]` (the default) |
/// | `equal` | `d/2 +` uniform in `[0, d/2]` |
/// | `decorrelated` | `min(max_delay, uniform in [base, prev * 3])` |
///
/// `decorrelated` is AWS's "decorrelated jitter": it grows from the previous
/// delay it produced (starting at `base`), so it ignores `backoff` and
/// `multiplier`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// No randomisation.
    None,
    /// Uniform between zero and the delay (the default).
    #[default]
    Full,
    /// Half the delay, plus uniform up to the other half.
    Equal,
    /// Uniform between the base and three times the previous delay, capped.
    Decorrelated,
}

fn nanos(d: Duration) -> u128 {
    d.as_nanos()
}

/// Back from nanoseconds, saturating at [`Duration::MAX`].
fn from_nanos(n: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let secs = n / NANOS_PER_SEC;
    match u64::try_from(secs) {
        // The remainder is < 1e9, so it fits a u32.
        Ok(secs) => Duration::new(secs, (n % NANOS_PER_SEC) as u32),
        Err(_) => Duration::MAX,
    }
}

impl Backoff {
    /// The delay before retry `attempt` (0 = before the first retry), capped
    /// at `max_delay`. Never panics or overflows.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchyard_policy::retry::Backoff;
    /// let s = Duration::from_secs(1);
    /// let max = Duration::from_secs(60);
    /// assert_eq!(Backoff::Exponential.delay(s, 2.0, 2, max), Duration::from_secs(4));
    /// assert_eq!(Backoff::Exponential.delay(s, 2.0, u32::MAX, max), max);
    /// ```
    pub fn delay(
        self,
        base: Duration,
        multiplier: f64,
        attempt: u32,
        max_delay: Duration,
    ) -> Duration {
        let d = match self {
            Backoff::Constant => base,
            Backoff::Linear => base.saturating_mul(attempt.saturating_add(1)),
            Backoff::Exponential => {
                let factor = multiplier.powf(f64::from(attempt));
                let scaled = nanos(base) as f64 * factor;
                // NaN (0 * inf) means a zero base: stay at zero.
                if scaled.is_nan() {
                    Duration::ZERO
                } else if scaled >= nanos(max_delay) as f64 {
                    max_delay
                } else {
                    // `as` saturates; the value is below max_delay here.
                    from_nanos(scaled as u128)
                }
            }
        };
        d.min(max_delay)
    }
}

impl Jitter {
    /// Applies this jitter to the capped backoff delay `delay`.
    ///
    /// `base` and `prev` (the previous delay returned, `base` before the first
    /// retry) are only used by [`Jitter::Decorrelated`]. The result never
    /// exceeds `max(delay, max_delay)` for the bounded kinds, and `max_delay`
    /// for decorrelated.
    pub fn apply<R: Rng + ?Sized>(
        self,
        delay: Duration,
        base: Duration,
        prev: Duration,
        max_delay: Duration,
        rng: &mut R,
    ) -> Duration {
        match self {
            Jitter::None => delay,
            Jitter::Full => from_nanos(rng.random_range(0..=nanos(delay))),
            Jitter::Equal => {
                let d = nanos(delay);
                let half = d / 2;
                from_nanos(half + rng.random_range(0..=d - half))
            }
            Jitter::Decorrelated => {
                let low = nanos(base);
                let high = nanos(prev).saturating_mul(3).max(low);
                from_nanos(rng.random_range(low..=high)).min(max_delay)
            }
        }
    }
}

thread_local! {
    // One cheap generator per thread, seeded once from the OS-seeded thread
    // RNG: no global lock, no syscall per delay.
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

/// The sequence of delays for one logical call: the backoff curve with its
/// jitter, attempt after attempt.
///
/// Built by [`RetryConfig::delays`](super::RetryConfig::delays); an endless
/// iterator.
///
/// ```
/// use std::time::Duration;
/// use switchyard_policy::retry::{Backoff, Jitter, RetryConfig};
/// let config = RetryConfig {
///     backoff: Backoff::Linear,
///     jitter: Jitter::None,
///     base_delay: Duration::from_millis(10),
///     ..RetryConfig::default()
/// };
/// let delays: Vec<_> = config.delays().take(3).collect();
/// assert_eq!(delays, [10, 20, 30].map(Duration::from_millis));
/// ```
#[derive(Debug, Clone)]
pub struct Delays {
    backoff: Backoff,
    jitter: Jitter,
    base: Duration,
    max: Duration,
    multiplier: f64,
    attempt: u32,
    prev: Duration,
}

impl Delays {
    /// Delays for the given curve and jitter.
    pub fn new(
        backoff: Backoff,
        jitter: Jitter,
        base: Duration,
        max: Duration,
        multiplier: f64,
    ) -> Self {
        Self {
            backoff,
            jitter,
            base,
            max,
            multiplier,
            attempt: 0,
            prev: base,
        }
    }

    /// The next delay, drawing randomness from `rng`.
    pub fn next_with<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let d = self
            .backoff
            .delay(self.base, self.multiplier, self.attempt, self.max);
        let d = self.jitter.apply(d, self.base, self.prev, self.max, rng);
        self.attempt = self.attempt.saturating_add(1);
        self.prev = d;
        d
    }
}

impl Delays {
    /// The next delay, drawing randomness from a per-thread generator.
    pub fn next_delay(&mut self) -> Duration {
        RNG.with(|rng| self.next_with(&mut *rng.borrow_mut()))
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::SmallRng;

    const S: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(3600);

    fn curve(b: Backoff, base: Duration) -> Vec<Duration> {
        (0..3).map(|n| b.delay(base, 2.0, n, MAX)).collect()
    }

    /// Scenario 35: base 1s, attempts 0,1,2.
    #[test]
    fn s35_backoff_curves() {
        let secs = |v: [u64; 3]| v.map(Duration::from_secs).to_vec();
        assert_eq!(curve(Backoff::Constant, S), secs([1, 1, 1]));
        assert_eq!(curve(Backoff::Linear, S), secs([1, 2, 3]));
        assert_eq!(curve(Backoff::Exponential, S), secs([1, 2, 4]));
        for b in [Backoff::Constant, Backoff::Linear, Backoff::Exponential] {
            assert_eq!(curve(b, Duration::ZERO), secs([0, 0, 0]), "{b:?}");
        }
    }

    #[test]
    fn curves_cap_and_saturate() {
        let max = Duration::from_secs(10);
        assert_eq!(Backoff::Exponential.delay(S, 2.0, 10, max), max);
        assert_eq!(Backoff::Linear.delay(S, 2.0, 100, max), max);
        assert_eq!(
            Backoff::Constant.delay(Duration::from_secs(20), 2.0, 0, max),
            max
        );
        let huge = Duration::MAX;
        assert_eq!(Backoff::Linear.delay(huge, 2.0, u32::MAX, huge), huge);
        assert_eq!(
            Backoff::Exponential.delay(huge, 1e300, u32::MAX, huge),
            huge
        );
        assert_eq!(
            Backoff::Exponential.delay(Duration::ZERO, 2.0, u32::MAX, huge),
            Duration::ZERO
        );
    }

    #[test]
    fn decorrelated_grows_from_base() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut delays = Delays::new(
            Backoff::Exponential,
            Jitter::Decorrelated,
            Duration::from_millis(100),
            Duration::from_secs(5),
            2.0,
        );
        let mut prev = Duration::from_millis(100);
        for _ in 0..50 {
            let d = delays.next_with(&mut rng);
            assert!(d >= Duration::from_millis(100));
            assert!(d <= (prev * 3).min(Duration::from_secs(5)));
            prev = d;
        }
    }

    fn jitter() -> impl Strategy<Value = Jitter> {
        prop_oneof![
            Just(Jitter::None),
            Just(Jitter::Full),
            Just(Jitter::Equal),
            Just(Jitter::Decorrelated),
        ]
    }

    fn backoff() -> impl Strategy<Value = Backoff> {
        prop_oneof![
            Just(Backoff::Constant),
            Just(Backoff::Linear),
            Just(Backoff::Exponential),
        ]
    }

    fn duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            (0u64..10_000_000_000).prop_map(Duration::from_nanos),
            (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
            Just(Duration::ZERO),
            Just(Duration::MAX),
        ]
    }

    proptest! {
        /// Scenario 36: every jitter kind stays within its stated bounds for
        /// every attempt, caps at the max delay and never overflows.
        #[test]
        fn s36_jitter_within_bounds(
            backoff in backoff(),
            jitter in jitter(),
            a in duration(),
            b in duration(),
            multiplier in prop_oneof![Just(1.0f64), Just(2.0), 1.0f64..1e6],
            seed in any::<u64>(),
            skip in prop_oneof![Just(0u32), 0u32..64, Just(u32::MAX - 8)],
        ) {
            let (base, max) = (a.min(b), a.max(b));
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut delays = Delays::new(backoff, jitter, base, max, multiplier);
            delays.attempt = skip;
            let mut prev = base;
            for i in 0..16u32 {
                let n = skip.saturating_add(i);
                let d = backoff.delay(base, multiplier, n, max);
                prop_assert!(d <= max);
                let got = delays.next_with(&mut rng);
                prop_assert!(got <= max, "{got:?} > max {max:?}");
                match jitter {
                    Jitter::None => prop_assert_eq!(got, d),
                    Jitter::Full => prop_assert!(got <= d),
                    Jitter::Equal => prop_assert!(got >= d / 2 && got <= d),
                    Jitter::Decorrelated => {
                        prop_assert!(got >= base);
                        prop_assert!(got <= prev.saturating_mul(3).max(base));
                    }
                }
                prev = got;
            }
        }

        #[test]
        fn curves_are_monotonic_until_capped(
            backoff in backoff(),
            base in duration(),
            max in duration(),
            n in any::<u32>(),
        ) {
            let d0 = backoff.delay(base, 2.0, n, max);
            let d1 = backoff.delay(base, 2.0, n.saturating_add(1), max);
            prop_assert!(d0 <= d1);
            prop_assert!(d1 <= max);
        }
    }
}
