//! The retry budget: retries (and hedges) may add at most a fixed fraction of
//! extra load to a service, plus a small floor per second.
//!
//! # Why not tower's `TpsBudget`
//!
//! We meant to adopt `tower::retry::budget::TpsBudget`, but it can't pass
//! scenario 39: it turns the ratio into integer tokens with
//! `withdraw = (1.0 / ratio) as isize`, so a 75% ratio becomes one retry per
//! request (4 per 4, not 3 per 4), and ratios like 0.3 drift the same way. It
//! also `assert!`s (panics) on a TTL outside 1–60s, and takes the ratio as an
//! `f32`. This is the same algorithm (Finagle's: deposits that expire after a
//! TTL, in ten rolling slots, plus a reserve of `min_retries_per_second * ttl`)
//! with fixed-point amounts: each deposit adds `round(ratio * 1000)` milli-
//! tokens and each withdrawal takes 1000, so ratios are exact to 0.001.
//!
//! State sits behind one `parking_lot` mutex per budget (one service): a
//! deposit or withdrawal is a few additions under an uncontended lock.

use std::{sync::Arc, time::Duration};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Default [`BudgetConfig::ttl`]: 10s.
pub const DEFAULT_BUDGET_TTL: Duration = Duration::from_secs(10);
/// Default [`BudgetConfig::min_retries_per_second`]: 10.
pub const DEFAULT_MIN_RETRIES_PER_SECOND: u32 = 10;
/// Default [`BudgetConfig::retry_ratio`]: 0.2 (20% extra load).
pub const DEFAULT_RETRY_RATIO: f64 = 0.2;

/// Milli-tokens per retry: ratios are exact to 1/SCALE.
const SCALE: i64 = 1000;
/// The TTL is split into this many rolling slots.
const SLOTS: usize = 10;

/// How much extra load retries and hedges may add to one service.
///
/// ```toml
/// [retry.budget]
/// ttl = "10s"
/// min_retries_per_second = 10
/// retry_ratio = 0.2
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// How long a request's deposit counts toward the budget. Default `"10s"`.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Retries allowed per second regardless of traffic, so that a service
    /// with little traffic can still retry. Default `10`.
    pub min_retries_per_second: u32,
    /// Retries allowed per request, as a fraction: `0.2` lets retries add 20%
    /// to the load. Default `0.2`.
    pub retry_ratio: f64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_BUDGET_TTL,
            min_retries_per_second: DEFAULT_MIN_RETRIES_PER_SECOND,
            retry_ratio: DEFAULT_RETRY_RATIO,
        }
    }
}

impl BudgetConfig {
    /// Checks the values; the message names the key and how to fix it.
    pub fn validate(&self) -> Result<(), String> {
        if self.ttl < Duration::from_millis(SLOTS as u64) || self.ttl > Duration::from_secs(3600) {
            return Err(format!(
                "retry.budget.ttl: must be between 10ms and 1h, got {:?}; set a duration such as \"10s\"",
                self.ttl
            ));
        }
        if !(self.retry_ratio.is_finite() && (0.0..=1000.0).contains(&self.retry_ratio)) {
            return Err(format!(
                "retry.budget.retry_ratio: must be between 0 and 1000, got {}; set a fraction such as 0.2 (20% extra load)",
                self.retry_ratio
            ));
        }
        Ok(())
    }
}

/// A retry budget shared by every call to one service; cheap to clone (an
/// `Arc`), and every clone shares the same balance.
///
/// Each logical call [deposits](RetryBudget::deposit) once; each retry or
/// hedge must [withdraw](RetryBudget::withdraw) first and is not sent when
/// that fails. Deposits expire after the TTL. Uses [`tokio::time::Instant`],
/// so it follows a paused test clock.
///
/// ```
/// use switchyard_policy::retry::{BudgetConfig, RetryBudget};
/// let budget = RetryBudget::new(&BudgetConfig {
///     min_retries_per_second: 0,
///     retry_ratio: 0.5,
///     ..BudgetConfig::default()
/// });
/// assert!(!budget.withdraw());
/// budget.deposit();
/// budget.deposit();
/// assert!(budget.withdraw());
/// assert!(!budget.withdraw());
/// ```
#[derive(Debug, Clone)]
pub struct RetryBudget {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    deposit: i64,
    reserve: i64,
    slot_width: Duration,
    started: Instant,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    /// Net milli-tokens deposited (minus withdrawn) in each slot.
    slots: [i64; SLOTS],
    /// The absolute number of the slot `now` falls in, as of the last update.
    current: u64,
}

impl RetryBudget {
    /// A budget with the given settings. Out-of-range values are clamped
    /// (call [`BudgetConfig::validate`] to reject them instead).
    pub fn new(config: &BudgetConfig) -> Self {
        let ttl = config
            .ttl
            .max(Duration::from_millis(SLOTS as u64))
            .min(Duration::from_secs(3600));
        let ratio = if config.retry_ratio.is_finite() {
            config.retry_ratio.clamp(0.0, 1000.0)
        } else {
            0.0
        };
        // Finite and bounded, so the casts can't saturate wrongly.
        let deposit = (ratio * SCALE as f64).round() as i64;
        let reserve =
            (f64::from(config.min_retries_per_second) * ttl.as_secs_f64() * SCALE as f64) as i64;
        Self {
            shared: Arc::new(Shared {
                deposit,
                reserve,
                slot_width: ttl / SLOTS as u32,
                started: Instant::now(),
                window: Mutex::new(Window {
                    slots: [0; SLOTS],
                    current: 0,
                }),
            }),
        }
    }

    /// Records one logical call, earning `retry_ratio` of a retry.
    pub fn deposit(&self) {
        let shared = &*self.shared;
        let mut window = shared.window.lock();
        let slot = shared.roll(&mut window);
        window.slots[slot] = window.slots[slot].saturating_add(shared.deposit);
    }

    /// Takes one retry from the budget; `false` (taking nothing) when empty.
    pub fn withdraw(&self) -> bool {
        let shared = &*self.shared;
        let mut window = shared.window.lock();
        let slot = shared.roll(&mut window);
        let balance = window
            .slots
            .iter()
            .fold(shared.reserve, |sum, s| sum.saturating_add(*s));
        if balance >= SCALE {
            window.slots[slot] = window.slots[slot].saturating_sub(SCALE);
            true
        } else {
            false
        }
    }

    /// Retries available right now (rounded down).
    pub fn balance(&self) -> i64 {
        let shared = &*self.shared;
        let mut window = shared.window.lock();
        shared.roll(&mut window);
        window
            .slots
            .iter()
            .fold(shared.reserve, |sum, s| sum.saturating_add(*s))
            / SCALE
    }
}

impl Shared {
    /// Clears the slots that expired since the last update; returns the index
    /// of the current slot.
    fn roll(&self, window: &mut Window) -> usize {
        let elapsed = crate::clock::now().saturating_duration_since(self.started);
        let now = u64::try_from(elapsed.as_nanos() / self.slot_width.as_nanos().max(1))
            .unwrap_or(u64::MAX);
        if now > window.current {
            let stale = (now - window.current).min(SLOTS as u64);
            for i in 1..=stale {
                window.slots[((window.current + i) % SLOTS as u64) as usize] = 0;
            }
            window.current = now;
        }
        (window.current % SLOTS as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min: u32) -> RetryBudget {
        RetryBudget::new(&BudgetConfig {
            ttl: Duration::from_secs(10),
            min_retries_per_second: min,
            retry_ratio: ratio,
        })
    }

    /// Scenario 39: with no floor, 10% allows one retry per 10 requests and
    /// 75% allows 3 per 4.
    #[tokio::test(start_paused = true)]
    async fn s39_budget_ratio() {
        let b = budget(0.1, 0);
        for round in 0..3 {
            for _ in 0..9 {
                b.deposit();
            }
            assert!(!b.withdraw(), "round {round}: 9 requests earn no retry");
            b.deposit();
            assert!(b.withdraw(), "round {round}: the 10th request earns one");
            assert!(!b.withdraw());
        }

        let b = budget(0.75, 0);
        for _ in 0..4 {
            b.deposit();
        }
        assert!(b.withdraw());
        assert!(b.withdraw());
        assert!(b.withdraw());
        assert!(!b.withdraw(), "75% of 4 requests is 3 retries");
    }

    #[tokio::test(start_paused = true)]
    async fn reserve_allows_min_per_second_times_ttl() {
        let b = budget(0.0, 2);
        for _ in 0..20 {
            assert!(b.withdraw());
        }
        assert!(!b.withdraw());
        // Withdrawals expire with the TTL too, so the floor comes back.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(b.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_ttl() {
        let b = budget(1.0, 0);
        b.deposit();
        tokio::time::advance(Duration::from_millis(5_500)).await;
        b.deposit();
        tokio::time::advance(Duration::from_millis(5_000)).await;
        // The first deposit (10.5s old) is gone, the second (5s) remains.
        assert_eq!(b.balance(), 1);
        assert!(b.withdraw());
        assert!(!b.withdraw());
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(b.balance(), 0);
    }

    #[test]
    fn clones_share_the_balance_and_validation_explains() {
        let b = RetryBudget::new(&BudgetConfig {
            min_retries_per_second: 0,
            retry_ratio: 1.0,
            ..BudgetConfig::default()
        });
        let c = b.clone();
        b.deposit();
        assert!(c.withdraw());
        assert!(!b.withdraw());

        let bad = BudgetConfig {
            retry_ratio: -1.0,
            ..BudgetConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .starts_with("retry.budget.retry_ratio")
        );
        let bad = BudgetConfig {
            ttl: Duration::ZERO,
            ..BudgetConfig::default()
        };
        assert!(bad.validate().unwrap_err().starts_with("retry.budget.ttl"));
        assert!(BudgetConfig::default().validate().is_ok());
    }
}
