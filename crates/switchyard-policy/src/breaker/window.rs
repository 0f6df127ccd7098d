//! Sliding-window accounting: a ring buffer of the last N calls, or fixed
//! time buckets that roll off lazily.
//!
//! Pure logic: time comes in as nanoseconds since the breaker's origin, so
//! the property tests can drive it without a clock.

use super::config::WindowConfig;

/// Calls, failures and slow calls currently in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Totals {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

impl Totals {
    /// Failure rate in percent (0 with no calls).
    pub(crate) fn failure_rate(&self) -> f64 {
        percent(self.failures, self.calls)
    }

    /// Slow-call rate in percent (0 with no calls).
    pub(crate) fn slow_call_rate(&self) -> f64 {
        percent(self.slow, self.calls)
    }

    fn add(&mut self, failure: bool, slow: bool) {
        self.calls += 1;
        self.failures += u64::from(failure);
        self.slow += u64::from(slow);
    }

    fn sub(&mut self, other: &Totals) {
        self.calls = self.calls.saturating_sub(other.calls);
        self.failures = self.failures.saturating_sub(other.failures);
        self.slow = self.slow.saturating_sub(other.slow);
    }
}

#[allow(clippy::cast_precision_loss)] // counts far below 2^52
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// A sliding window of recorded (non-ignored) calls.
#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    pub(crate) fn new(config: &WindowConfig) -> Self {
        match *config {
            WindowConfig::Count { size } => Window::Count(CountWindow::new(size)),
            WindowConfig::Time { duration, buckets } => {
                let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
                Window::Time(TimeWindow::new(nanos, buckets))
            }
        }
    }

    /// Records one call made at `at` (nanoseconds since the origin).
    pub(crate) fn record(&mut self, at: u64, failure: bool, slow: bool) {
        match self {
            Window::Count(w) => w.record(failure, slow),
            Window::Time(w) => w.record(at, failure, slow),
        }
    }

    /// The totals as of `at`, rolling off what has aged out.
    pub(crate) fn totals(&mut self, at: u64) -> Totals {
        match self {
            Window::Count(w) => w.totals,
            Window::Time(w) => {
                w.roll(at);
                w.totals
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        match self {
            Window::Count(w) => w.clear(),
            Window::Time(w) => w.clear(),
        }
    }
}

const FAILURE: u8 = 1;
const SLOW: u8 = 2;

/// The last `size` calls, as flags in a ring buffer with running totals.
#[derive(Debug)]
pub(crate) struct CountWindow {
    slots: Box<[u8]>,
    /// Slots in use (up to `slots.len()`).
    len: usize,
    /// Where the next call is written.
    next: usize,
    totals: Totals,
}

impl CountWindow {
    pub(crate) fn new(size: u32) -> Self {
        let size = usize::try_from(size.max(1)).unwrap_or(1);
        Self {
            slots: vec![0; size].into_boxed_slice(),
            len: 0,
            next: 0,
            totals: Totals::default(),
        }
    }

    fn record(&mut self, failure: bool, slow: bool) {
        let cap = self.slots.len();
        if self.len == cap {
            let old = self.slots[self.next];
            self.totals.calls -= 1;
            self.totals.failures -= u64::from(old & FAILURE != 0);
            self.totals.slow -= u64::from(old & SLOW != 0);
        } else {
            self.len += 1;
        }
        self.slots[self.next] = (u8::from(failure) * FAILURE) | (u8::from(slow) * SLOW);
        self.next = (self.next + 1) % cap;
        self.totals.add(failure, slow);
    }

    fn clear(&mut self) {
        self.len = 0;
        self.next = 0;
        self.totals = Totals::default();
    }
}

/// The calls of the last `buckets` bucket periods.
///
/// Bucket `k` covers `[k * bucket_len, (k + 1) * bucket_len)`; at time `t` the
/// window holds the buckets `current - buckets + 1 ..= current` with
/// `current = t / bucket_len`. Buckets age out lazily when time is next seen,
/// so there is no background task and a paused clock works.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    bucket_len: u64,
    buckets: Box<[Totals]>,
    /// The newest bucket index seen; everything older than
    /// `head - buckets + 1` has been subtracted from `totals`.
    head: u64,
    totals: Totals,
}

impl TimeWindow {
    pub(crate) fn new(duration_nanos: u64, buckets: u32) -> Self {
        let n = buckets.max(1);
        let count = usize::try_from(n).unwrap_or(1);
        Self {
            bucket_len: (duration_nanos / u64::from(n)).max(1),
            buckets: vec![Totals::default(); count].into_boxed_slice(),
            head: 0,
            totals: Totals::default(),
        }
    }

    fn index(&self, epoch: u64) -> usize {
        // The modulus is a bucket count (a usize), so the result fits.
        usize::try_from(epoch % self.buckets.len() as u64).unwrap_or(0)
    }

    /// Moves the head to the bucket of `at`, clearing the buckets that fall
    /// out. Amortised O(1): each bucket is cleared once per period.
    fn roll(&mut self, at: u64) {
        let epoch = at / self.bucket_len;
        if epoch <= self.head {
            return;
        }
        let n = self.buckets.len() as u64;
        let steps = (epoch - self.head).min(n);
        for i in 1..=steps {
            let idx = self.index(self.head + i);
            let old = std::mem::take(&mut self.buckets[idx]);
            self.totals.sub(&old);
        }
        self.head = epoch;
    }

    fn record(&mut self, at: u64, failure: bool, slow: bool) {
        self.roll(at);
        // A timestamp older than the head (taken just before another thread
        // recorded) lands in the head bucket: off by at most one bucket.
        let idx = self.index(self.head);
        self.buckets[idx].add(failure, slow);
        self.totals.add(failure, slow);
    }

    fn clear(&mut self) {
        self.buckets.fill(Totals::default());
        self.totals = Totals::default();
    }
}

#[cfg(test)]
mod tests;
