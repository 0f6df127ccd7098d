//! In-process limiters: GCRA rate (the policy crate's keyed
//! [`RateLimiter`]), fixed-window quotas and concurrency counters, each keyed
//! per rule, with a bounded number of keys.
//!
//! Memory bound: each rule tracks at most `max_keys` keys per limiter. A
//! sweep (every [`SWEEP_INTERVAL`], run off the request path) forgets idle
//! keys: rate buckets full again for at least one emission interval, quota
//! counters of past windows,
//! concurrency counters with nothing in flight. If a rule still tracks
//! `max_keys` keys after a sweep, or a check finds it over the cap (looked
//! at every [`CAP_CHECK_EVERY`] checks), the rule *folds*: until a sweep
//! brings it under three quarters of the cap, every key is mapped by hash
//! onto one of [`FOLD_BUCKETS`] overflow buckets. Limits then still apply,
//! shared by the keys of a bucket, so flooding a rule with fresh keys buys a
//! client nothing and costs a bounded amount of memory.

use std::{
    hash::{BuildHasher, Hash},
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;
use switchyard_policy::rate_limit::{RateLimitConfig, RateLimiter};
use tokio::time::Instant;

use super::config::{QuotaSpec, RateSpec};

/// How often idle keys are forgotten.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// How many checks pass between two looks at a rule's key count.
pub const CAP_CHECK_EVERY: u32 = 1024;
/// Overflow buckets of a folded rule.
pub const FOLD_BUCKETS: u64 = 1024;

/// One bucket's key within a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    /// The rule's single bucket (`key = "global"`).
    Global,
    /// A client IP (also anonymous callers of an identity rule).
    Ip(IpAddr),
    /// An identity, route or service name.
    Name(Arc<str>),
    /// An overflow bucket of a folded rule.
    Folded(u64),
}

impl Key {
    /// The key as written into Redis keys.
    pub(crate) fn redis_suffix(&self) -> String {
        match self {
            Key::Global => "g".to_owned(),
            Key::Ip(ip) => format!("ip:{ip}"),
            Key::Name(name) => format!("n:{name}"),
            Key::Folded(n) => format!("f:{n}"),
        }
    }
}

/// The policy-crate limiter config of a rate, with the limits divided by
/// `share` (the local fallback's slice of a shared limit; never below 1).
pub(crate) fn rate_config(rate: &RateSpec, share: u32) -> RateLimitConfig {
    let share = share.max(1);
    RateLimitConfig {
        rate: (rate.requests / share).max(1),
        per: rate.per,
        burst: Some((rate.effective_burst() / share).max(1)),
        ..RateLimitConfig::default()
    }
}

/// A wall clock driven by tokio's clock: the Unix time at start plus the
/// tokio time elapsed since. Quota windows follow it, so paused-clock tests
/// drive window rollover; over a process lifetime it stays within NTP's slew
/// of the system clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WallClock {
    unix_at_start: Duration,
    start: Instant,
}

impl WallClock {
    pub(crate) fn system() -> Self {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self::starting_at(unix)
    }

    pub(crate) fn starting_at(unix: Duration) -> Self {
        Self {
            unix_at_start: unix,
            start: Instant::now(),
        }
    }

    pub(crate) fn unix_now(&self) -> Duration {
        self.unix_at_start + self.start.elapsed()
    }
}

/// The answer of one local check that passed: what to advertise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Standing {
    /// Quota units left.
    pub(crate) remaining: u64,
    /// Time until the quota is whole again (rate) or the window ends (quota).
    pub(crate) reset: Duration,
}

// === impl LocalRate ===

/// A keyed GCRA limiter for one rule.
#[derive(Debug)]
pub(crate) struct LocalRate {
    limiter: RateLimiter<Key>,
    interval: Duration,
    burst: u32,
}

impl LocalRate {
    pub(crate) fn new(rate: &RateSpec, share: u32) -> Result<Self, String> {
        let config = rate_config(rate, share);
        let burst = config.effective_burst();
        let interval = config.per / config.rate;
        Ok(Self {
            limiter: RateLimiter::keyed(config)?,
            interval,
            burst,
        })
    }

    /// Takes a permit, or says how long until the next one.
    pub(crate) fn check(&self, key: &Key) -> Result<Standing, Duration> {
        let remaining = self.limiter.check_remaining(key)?;
        // The bucket is whole again once the spent permits have dripped back.
        let spent = self.burst.saturating_sub(remaining);
        Ok(Standing {
            remaining: u64::from(remaining),
            reset: self.interval.saturating_mul(spent),
        })
    }

    fn sweep(&self) -> usize {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        self.limiter.len()
    }

    fn len(&self) -> usize {
        self.limiter.len()
    }
}

// === impl LocalQuota ===

#[derive(Debug, Clone, Copy)]
struct Window {
    index: u64,
    count: u64,
}

/// Fixed calendar windows (UTC) per key for one rule.
#[derive(Debug)]
pub(crate) struct LocalQuota {
    windows: DashMap<Key, Window>,
    limit: u64,
    window_secs: u64,
}

impl LocalQuota {
    pub(crate) fn new(quota: &QuotaSpec, share: u32) -> Self {
        Self {
            windows: DashMap::new(),
            limit: (quota.requests / u64::from(share.max(1))).max(1),
            window_secs: quota.window.secs(),
        }
    }

    /// Counts one request in the current window of `key`, or says how long
    /// until the window ends.
    pub(crate) fn check(&self, key: &Key, now: Duration) -> Result<Standing, Duration> {
        let index = now.as_secs() / self.window_secs;
        let window_end = Duration::from_secs((index + 1).saturating_mul(self.window_secs));
        let reset = window_end.saturating_sub(now);
        let mut entry = self
            .windows
            .entry(key.clone())
            .or_insert(Window { index, count: 0 });
        if entry.index != index {
            *entry = Window { index, count: 0 };
        }
        if entry.count >= self.limit {
            return Err(reset);
        }
        entry.count += 1;
        Ok(Standing {
            remaining: self.limit - entry.count,
            reset,
        })
    }

    fn sweep(&self, now: Duration) -> usize {
        let index = now.as_secs() / self.window_secs;
        self.windows.retain(|_, w| w.index == index);
        self.windows.shrink_to_fit();
        self.windows.len()
    }

    fn len(&self) -> usize {
        self.windows.len()
    }
}

// === impl LocalConcurrency ===

/// In-flight counters per key for one rule.
#[derive(Debug)]
pub(crate) struct LocalConcurrency {
    counters: DashMap<Key, Arc<AtomicUsize>>,
    max: usize,
}

/// One call's concurrency slot; released when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    counter: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LocalConcurrency {
    pub(crate) fn new(max: u32) -> Self {
        Self {
            counters: DashMap::new(),
            max: usize::try_from(max).unwrap_or(usize::MAX),
        }
    }

    /// A slot for `key`, or `None` when `max` calls are already in flight.
    pub(crate) fn acquire(&self, key: &Key) -> Option<Slot> {
        let counter = match self.counters.get(key) {
            Some(c) => c.clone(),
            None => self.counters.entry(key.clone()).or_default().clone(),
        };
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        Some(Slot { counter })
    }

    /// Calls in flight for `key`.
    #[cfg(test)]
    pub(crate) fn in_flight(&self, key: &Key) -> usize {
        self.counters
            .get(key)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    fn sweep(&self) -> usize {
        // A counter is only handed out under the shard's lock, which retain
        // holds: one with no other owner and nothing in flight can go.
        self.counters
            .retain(|_, c| Arc::strong_count(c) > 1 || c.load(Ordering::Acquire) > 0);
        self.counters.shrink_to_fit();
        self.counters.len()
    }

    fn len(&self) -> usize {
        self.counters.len()
    }
}

// === impl KeySpace ===

/// A rule's local limiters and its key-count bound.
#[derive(Debug)]
pub(crate) struct KeySpace {
    pub(crate) rate: Option<LocalRate>,
    pub(crate) quota: Option<LocalQuota>,
    pub(crate) concurrency: Option<LocalConcurrency>,
    max_keys: usize,
    folded: AtomicBool,
    checks: AtomicU32,
    hasher: std::hash::RandomState,
}

impl KeySpace {
    pub(crate) fn new(
        rate: Option<LocalRate>,
        quota: Option<LocalQuota>,
        concurrency: Option<LocalConcurrency>,
        max_keys: usize,
    ) -> Self {
        Self {
            rate,
            quota,
            concurrency,
            max_keys,
            folded: AtomicBool::new(false),
            checks: AtomicU32::new(0),
            hasher: std::hash::RandomState::new(),
        }
    }

    /// The key to use for `key`: itself, or its overflow bucket while the
    /// rule is folded.
    pub(crate) fn admit_key(&self, key: Key) -> Key {
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(CAP_CHECK_EVERY)
            && self.tracked() >= self.max_keys
        {
            self.folded.store(true, Ordering::Relaxed);
        }
        if self.folded.load(Ordering::Relaxed) && key != Key::Global {
            return Key::Folded(self.hasher.hash_one(&key) % FOLD_BUCKETS);
        }
        key
    }

    /// True while new keys go to overflow buckets.
    #[cfg(test)]
    pub(crate) fn is_folded(&self) -> bool {
        self.folded.load(Ordering::Relaxed)
    }

    fn tracked(&self) -> usize {
        let rate = self.rate.as_ref().map_or(0, LocalRate::len);
        let quota = self.quota.as_ref().map_or(0, LocalQuota::len);
        let conc = self.concurrency.as_ref().map_or(0, LocalConcurrency::len);
        rate.max(quota).max(conc)
    }

    /// Forgets idle keys; unfolds once under three quarters of the cap.
    /// Returns how many keys are still tracked (the most of the three maps).
    pub(crate) fn sweep(&self, now_unix: Duration) -> usize {
        let rate = self.rate.as_ref().map_or(0, LocalRate::sweep);
        let quota = self.quota.as_ref().map_or(0, |q| q.sweep(now_unix));
        let conc = self.concurrency.as_ref().map_or(0, LocalConcurrency::sweep);
        let tracked = rate.max(quota).max(conc);
        if tracked >= self.max_keys {
            self.folded.store(true, Ordering::Relaxed);
        } else if tracked < self.max_keys / 4 * 3 {
            self.folded.store(false, Ordering::Relaxed);
        }
        tracked
    }
}
