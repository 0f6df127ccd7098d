//! One clock read per poll: the time every policy reads while one task is
//! being polled.
//!
//! A proxied call reads the time a dozen times within a few microseconds:
//! the deadline, the breaker's timing, the retry's attempt start, the
//! balancer's pick and latency, the budget, the call's duration. Each read
//! is a `clock_gettime`, and on the hardware we measure on the reads
//! together cost several percent of a request's CPU time. Envoy and HAProxy
//! read the clock once per event-loop turn for the same reason; tokio has no
//! such cached time, so this is ours.
//!
//! Inside a future wrapped in [`per_poll`], [`now`] reads the clock the first
//! time it is asked during each poll and answers the same instant for the
//! rest of that poll. Outside one, [`now`] is [`Instant::now`]. A poll never
//! waits, so the cached instant is behind the real time only by the CPU
//! time the poll has spent so far (microseconds); time passing while a task
//! waits is always seen, because every poll starts without a cached time.
//!
//! ```
//! use switchyard_policy::clock;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! clock::per_poll(async {
//!     let a = clock::now();
//!     let b = clock::now();
//!     assert_eq!(a, b, "one read per poll");
//!     tokio::task::yield_now().await;
//!     assert!(clock::now() >= b, "a new poll reads the clock again");
//! })
//! .await;
//! # }
//! ```

use std::{
    cell::Cell,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use pin_project_lite::pin_project;
use tokio::time::Instant;

/// No scope, a scope that has not read the clock yet, or the instant read.
#[derive(Clone, Copy)]
enum Cached {
    Off,
    Unread,
    Read(Instant),
}

thread_local! {
    static CACHED: Cell<Cached> = const { Cell::new(Cached::Off) };
}

/// The current time: the poll's cached instant inside [`per_poll`], the
/// clock itself elsewhere. Follows tokio's paused clock in tests.
#[inline]
pub fn now() -> Instant {
    CACHED.with(|cached| match cached.get() {
        Cached::Off => Instant::now(),
        Cached::Read(at) => at,
        Cached::Unread => {
            let at = Instant::now();
            cached.set(Cached::Read(at));
            at
        }
    })
}

/// Wraps `future` so that each of its polls reads the clock at most once
/// (see the module docs). Meant for a task's outermost future.
pub fn per_poll<F: Future>(future: F) -> PerPoll<F> {
    PerPoll { future }
}

pin_project! {
    /// The future returned by [`per_poll`].
    #[derive(Debug)]
    pub struct PerPoll<F> {
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for PerPoll<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _scope = Scope::enter();
        self.project().future.poll(cx)
    }
}

/// Restores the previous state when the poll ends, also on unwind, so a
/// nested scope or a panicking poll never leaves a stale instant behind.
struct Scope(Cached);

impl Scope {
    fn enter() -> Self {
        Scope(CACHED.with(|cached| cached.replace(Cached::Unread)))
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        CACHED.with(|cached| cached.set(self.0));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_instant_per_poll_and_a_fresh_one_after_a_wait() {
        let outside = now();
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_eq!(
            now() - outside,
            Duration::from_millis(5),
            "no scope: the clock"
        );

        let (first, second, after) = per_poll(async {
            let first = now();
            // The paused clock moves, but the poll keeps its instant.
            tokio::time::advance(Duration::from_millis(1)).await;
            let second = now();
            tokio::time::sleep(Duration::from_millis(10)).await;
            (first, second, now())
        })
        .await;
        // `advance` yields, so `second` is read in a later poll.
        assert_eq!(second - first, Duration::from_millis(1));
        assert_eq!(after - second, Duration::from_millis(10));
        // The scope ended with the future: the clock is read again.
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(now() - after, Duration::from_millis(2));
    }

    #[tokio::test]
    async fn within_one_poll_time_stands_still() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut fut = std::pin::pin!(per_poll(async {
            let a = now();
            // The real clock moves on while the poll runs.
            let spin = Instant::now();
            while spin.elapsed() < Duration::from_millis(2) {
                std::hint::spin_loop();
            }
            let b = now();
            (a, b)
        }));
        let Poll::Ready((a, b)) = fut.as_mut().poll(&mut cx) else {
            panic!("the future never waits");
        };
        assert_eq!(a, b);
    }

    #[test]
    fn a_panicking_poll_leaves_no_cached_instant() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let waker = std::task::Waker::noop();
                let mut cx = Context::from_waker(waker);
                let mut fut = std::pin::pin!(per_poll(async {
                    let _ = now();
                    panic!("boom");
                }));
                let _ = fut.as_mut().poll(&mut cx);
            }));
            assert!(caught.is_err());
            let before = now();
            tokio::time::advance(Duration::from_millis(3)).await;
            assert_eq!(now() - before, Duration::from_millis(3));
        });
    }
}
