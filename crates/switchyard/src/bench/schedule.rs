//! The open-loop scheduler: one dispatcher task starts request `i` at its
//! intended time `t0 + i / rate`, whatever the earlier requests are doing,
//! and measures each request's latency from that intended time.
//!
//! Why this shape (it is wrk2's, and oha's `--latency-correction`): a
//! closed-loop generator waits for a response before sending the next request
//! on a connection, so when the server stalls it simply sends less, and the
//! requests that *would* have been sent during the stall are never measured —
//! the stall shows up as one slow sample instead of hundreds (coordinated
//! omission). Here the schedule never bends. A request that finds every
//! connection busy waits for one (a *late start*), and the time it waited is
//! part of its latency, exactly as a real client arriving at that moment
//! would have experienced it.
//!
//! Connections are *slots*: the dispatcher owns an idle stack of them (at most
//! `slots` requests are in flight, which is the semaphore), hands one to each
//! request task, and gets it back with the task's result through a channel.
//! The dispatcher is therefore the only writer of the statistics: no lock on
//! the hot path, and the idle stack is LIFO so the warmest connection is
//! reused first.
//!
//! Every request has one deadline, `intended + timeout`: a request still
//! waiting for a slot at its deadline is counted as a timeout without being
//! sent, a request in flight at its deadline is cut off and counted as a
//! timeout. So a run always ends by `warmup + duration + timeout`.

use std::{future::Future, sync::Arc, time::Duration};

use hdrhistogram::Histogram;
use tokio::{
    sync::mpsc,
    task::JoinSet,
    time::{Instant, sleep_until, timeout_at},
};

#[cfg(test)]
mod tests;

/// What the scheduler needs from a run's arguments.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Intended requests per second.
    pub(crate) rate: f64,
    /// Requests intended to start before this offset are sent but not recorded.
    pub(crate) warmup: Duration,
    /// Length of the measured window after the warmup.
    pub(crate) duration: Duration,
    /// Deadline of each request, counted from its intended start.
    pub(crate) timeout: Duration,
    /// Most requests in flight at once (connections for HTTP/1.1).
    pub(crate) slots: usize,
    /// How long before an intended start the dispatcher stops sleeping on
    /// tokio's timer (1 ms granularity) and yields in a loop instead; zero
    /// sleeps all the way (required under a paused clock).
    pub(crate) spin: Duration,
}

impl Plan {
    /// Number of intended starts before `offset`: the `i` with `i / rate < offset`.
    pub(crate) fn starts_before(&self, offset: Duration) -> u64 {
        let exact = offset.as_secs_f64() * self.rate;
        // `0.1 s * 30/s` is 3.0000000000000004 in floating point: a value that
        // close to an integer is that integer, or the count would gain one.
        let rounded = exact.round();
        if (exact - rounded).abs() < 1e-6 {
            rounded as u64
        } else {
            exact.ceil() as u64
        }
    }

    /// The intended start of request `i`, from `t0`.
    pub(crate) fn offset(&self, i: u64) -> Duration {
        Duration::from_nanos((i as f64 * 1e9 / self.rate).round() as u64)
    }
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A complete response (body read to the end) with this status.
    Status(u16),
    /// No connection could be opened (TCP connect or protocol handshake).
    Connect(String),
    /// No response by the request's deadline.
    Timeout,
    /// The request was sent, or a connection existed, but it failed: reset,
    /// protocol error, truncated body.
    Failed(String),
}

/// A way to send the run's request over a slot (a connection or a stream).
pub(crate) trait Transport: Send + Sync + 'static {
    /// Per-slot state, e.g. the slot's keep-alive connection.
    type Slot: Send + 'static;

    /// A fresh slot; `index` is in `0..plan.slots`.
    fn slot(&self, index: usize) -> Self::Slot;

    /// Sends one request over `slot` and reads the whole response.
    fn send<'a>(&'a self, slot: &'a mut Self::Slot) -> impl Future<Output = Outcome> + Send + 'a;

    /// Forgets the slot's connection after a request on it was cut off at
    /// its deadline (its state is unknown).
    fn reset(&self, slot: &mut Self::Slot);
}

/// Counters the progress line reads while the run goes on.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Requests started, warmup included.
    pub(crate) sent: std::sync::atomic::AtomicU64,
    /// Responses of any status, warmup included.
    pub(crate) completed: std::sync::atomic::AtomicU64,
    /// Connect errors, timeouts and failures, warmup included.
    pub(crate) errors: std::sync::atomic::AtomicU64,
}

/// What a run measured, over the measured window only (warmup excluded),
/// except where a field says otherwise.
#[derive(Debug)]
pub(crate) struct Stats {
    /// Requests whose intended start fell in the measured window.
    pub(crate) scheduled: u64,
    /// Of those, requests actually started.
    pub(crate) sent: u64,
    /// Of those, requests answered with a complete response (any status).
    pub(crate) completed: u64,
    /// Requests that found every slot busy at their intended start.
    pub(crate) late_starts: u64,
    /// Responses by status class: 2xx, 3xx, 4xx, 5xx.
    pub(crate) status: [u64; 4],
    /// Connections that could not be opened.
    pub(crate) connect_errors: u64,
    /// Requests without a response by their deadline (sent or not).
    pub(crate) timeouts: u64,
    /// Requests that failed after a connection existed, or answered with a
    /// status outside 200..=599.
    pub(crate) other_errors: u64,
    /// Latency from intended start to the end of the response body, in
    /// microseconds, of completed requests.
    pub(crate) latency: Histogram<u64>,
    /// How late each sent request started, in microseconds, from its
    /// intended start (waiting for a slot included).
    pub(crate) lag: Histogram<u64>,
    /// When the last measured request started, from the start of the
    /// measured window.
    pub(crate) send_span: Duration,
    /// Whether any request of the whole run (warmup included) got past
    /// connecting: false means nothing could be sent at all.
    pub(crate) reached: bool,
    /// Requests of the whole run (warmup included) that failed to connect.
    pub(crate) connect_attempts_failed: u64,
    /// The first error message of the run, for the user.
    pub(crate) first_error: Option<String>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            scheduled: 0,
            sent: 0,
            completed: 0,
            late_starts: 0,
            status: [0; 4],
            connect_errors: 0,
            timeouts: 0,
            other_errors: 0,
            latency: histogram(),
            lag: histogram(),
            send_span: Duration::ZERO,
            reached: false,
            connect_attempts_failed: 0,
            first_error: None,
        }
    }

    /// Errors of every kind: connect, timeout, other, 4xx and 5xx.
    pub(crate) fn errors(&self) -> u64 {
        self.connect_errors + self.timeouts + self.other_errors + self.status[2] + self.status[3]
    }

    fn note_error(&mut self, message: &str) {
        if self.first_error.is_none() {
            self.first_error = Some(message.to_owned());
        }
    }

    fn record(&mut self, done: Done, measured_from: Instant) {
        match &done.outcome {
            Outcome::Connect(message) => {
                self.connect_attempts_failed += 1;
                self.note_error(message);
            }
            Outcome::Failed(message) => {
                self.reached = true;
                self.note_error(message);
            }
            Outcome::Status(_) | Outcome::Timeout => self.reached = true,
        }
        if done.intended < measured_from {
            return;
        }
        self.scheduled += 1;
        if done.late {
            self.late_starts += 1;
        }
        let Some(started) = done.started else {
            self.timeouts += 1;
            return;
        };
        self.sent += 1;
        self.send_span = self
            .send_span
            .max(started.saturating_duration_since(measured_from));
        record(
            &mut self.lag,
            started.saturating_duration_since(done.intended),
        );
        match done.outcome {
            Outcome::Status(code @ 200..=599) => {
                self.completed += 1;
                self.status[usize::from(code / 100 - 2)] += 1;
                record(
                    &mut self.latency,
                    done.finished.saturating_duration_since(done.intended),
                );
            }
            Outcome::Status(code) => {
                self.other_errors += 1;
                self.note_error(&format!("unexpected status {code}"));
            }
            Outcome::Connect(_) => self.connect_errors += 1,
            Outcome::Timeout => self.timeouts += 1,
            Outcome::Failed(_) => self.other_errors += 1,
        }
    }
}

fn histogram() -> Histogram<u64> {
    // Three significant digits, auto-resizing: no upper bound to guess.
    // `new` only fails for sigfig > 5, so this cannot fail.
    Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid"))
}

/// Records `d` in microseconds. `record` grows the histogram as needed
/// (`saturating_record` would clamp to its current, small, range instead);
/// it only fails if the histogram cannot be indexed, then the value is
/// clamped rather than lost.
fn record(histogram: &mut Histogram<u64>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    if histogram.record(micros).is_err() {
        histogram.saturating_record(micros);
    }
}

/// One request's result, sent back to the dispatcher with its slot.
#[derive(Debug)]
struct Done {
    intended: Instant,
    /// `None`: the request's deadline passed while it waited for a slot.
    started: Option<Instant>,
    finished: Instant,
    late: bool,
    outcome: Outcome,
}

/// Runs `plan` over `transport` and returns what was measured.
pub(crate) async fn run<T: Transport>(
    plan: &Plan,
    transport: Arc<T>,
    progress: &Progress,
) -> Stats {
    let t0 = Instant::now();
    let measured_from = t0 + plan.warmup;
    let first_measured = plan.starts_before(plan.warmup);
    let total = plan.starts_before(plan.warmup + plan.duration);
    let mut stats = Stats::new();
    let mut idle: Vec<T::Slot> = (0..plan.slots).rev().map(|i| transport.slot(i)).collect();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(T::Slot, Done)>();
    let mut tasks = JoinSet::new();
    let mut in_flight = 0usize;
    let mut counts = Counts::default();

    for i in 0..total {
        let intended = t0 + plan.offset(i);
        let deadline = intended + plan.timeout;
        pace(intended, plan.spin).await;
        while let Ok((slot, done)) = done_rx.try_recv() {
            in_flight -= 1;
            idle.push(slot);
            counts.add(&done);
            stats.record(done, measured_from);
        }
        while tasks.try_join_next().is_some() {}
        let (slot, late) = match idle.pop() {
            Some(slot) => (Some(slot), false),
            None => {
                // Every slot is busy: wait for one, but never past this
                // request's deadline. The wait counts in its latency.
                match timeout_at(deadline, done_rx.recv()).await {
                    Ok(Some((slot, done))) => {
                        in_flight -= 1;
                        counts.add(&done);
                        stats.record(done, measured_from);
                        (Some(slot), true)
                    }
                    // The sender lives in this function: `None` cannot happen,
                    // but treating it as "no slot" keeps the run going.
                    Ok(None) | Err(_) => (None, true),
                }
            }
        };
        let Some(mut slot) = slot else {
            let done = Done {
                intended,
                started: None,
                finished: Instant::now(),
                late,
                outcome: Outcome::Timeout,
            };
            counts.add(&done);
            stats.record(done, measured_from);
            counts.publish(progress);
            continue;
        };
        let transport = transport.clone();
        let done_tx = done_tx.clone();
        in_flight += 1;
        counts.sent += 1;
        counts.publish(progress);
        tasks.spawn(async move {
            let started = Instant::now();
            let outcome = match timeout_at(deadline, transport.send(&mut slot)).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    transport.reset(&mut slot);
                    Outcome::Timeout
                }
            };
            let done = Done {
                intended,
                started: Some(started),
                finished: Instant::now(),
                late,
                outcome,
            };
            // The receiver outlives every task unless the run was cut off,
            // and then nobody needs the result.
            let _ = done_tx.send((slot, done));
        });
        if i + 1 == first_measured {
            tracing::debug!("warmup done");
        }
    }

    // Stragglers: every request ends by its own deadline; the grace covers
    // a task that has not been polled since (a busy runtime).
    let stop = t0 + plan.warmup + plan.duration + plan.timeout + STRAGGLER_GRACE;
    while in_flight > 0 {
        match timeout_at(stop, done_rx.recv()).await {
            Ok(Some((_slot, done))) => {
                in_flight -= 1;
                counts.add(&done);
                stats.record(done, measured_from);
                counts.publish(progress);
            }
            Ok(None) | Err(_) => break,
        }
    }
    // Whatever is still running past the stop is cut off and counted as a
    // timeout; dropping the set aborts it.
    stats.timeouts += in_flight as u64;
    tasks.abort_all();
    stats
}

/// Extra time after the last deadline before the run stops waiting.
const STRAGGLER_GRACE: Duration = Duration::from_millis(200);

/// Sleeps until `intended`, finishing with a yield loop if `spin` is set:
/// tokio's timer fires on 1 ms ticks, which would add up to 1 ms of
/// scheduling error to every latency.
async fn pace(intended: Instant, spin: Duration) {
    if spin.is_zero() {
        sleep_until(intended).await;
        return;
    }
    if let Some(wake) = intended.checked_sub(spin)
        && wake > Instant::now()
    {
        sleep_until(wake).await;
    }
    while Instant::now() < intended {
        tokio::task::yield_now().await;
    }
}

/// Whole-run counters behind the progress line.
#[derive(Debug, Default)]
struct Counts {
    sent: u64,
    completed: u64,
    errors: u64,
}

impl Counts {
    fn add(&mut self, done: &Done) {
        match done.outcome {
            Outcome::Status(200..=399) => self.completed += 1,
            Outcome::Status(_) => {
                self.completed += 1;
                self.errors += 1;
            }
            _ => self.errors += 1,
        }
    }

    fn publish(&self, progress: &Progress) {
        use std::sync::atomic::Ordering::Relaxed;
        progress.sent.store(self.sent, Relaxed);
        progress.completed.store(self.completed, Relaxed);
        progress.errors.store(self.errors, Relaxed);
    }
}
