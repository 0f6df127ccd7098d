//! The end-of-run summary: a table for people, or one JSON object for
//! scripts (`--json`), and the progress line on stderr while the run goes.
//!
//! The JSON field names are a contract (`bench/` scripts read them); they
//! are listed in the `switchyard bench --help` text and in
//! `docs/performance.md`. Latencies are milliseconds as floating-point
//! numbers (microsecond resolution); a latency field is `null` when no
//! request completed.

use std::{
    io::Write,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::time::{Instant, MissedTickBehavior, interval};

use super::schedule::{Progress, Stats};

/// What the run was asked to do, for the report's header.
#[derive(Debug, Clone)]
pub(crate) struct RunInfo {
    /// Target URL as given.
    pub(crate) url: String,
    /// Request method.
    pub(crate) method: String,
    /// `"http/1.1"` or `"h2c"`.
    pub(crate) protocol: &'static str,
    /// Intended requests per second.
    pub(crate) rate: f64,
    /// Measured window.
    pub(crate) duration: Duration,
    /// Unrecorded lead-in.
    pub(crate) warmup: Duration,
    /// Slots (in-flight cap; HTTP/1.1 connections).
    pub(crate) connections: usize,
    /// Per-request deadline from the intended start.
    pub(crate) timeout: Duration,
}

/// Requests started per second of the measured window: the target rate if
/// the generator kept its schedule, less if it fell behind.
fn achieved_rate(info: &RunInfo, stats: &Stats) -> f64 {
    let span = info
        .duration
        .as_secs_f64()
        .max(stats.send_span.as_secs_f64() + 1.0 / info.rate);
    if span > 0.0 {
        stats.sent as f64 / span
    } else {
        0.0
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn quantile(histogram: &Histogram<u64>, q: f64) -> Option<f64> {
    (!histogram.is_empty()).then(|| ms(histogram.value_at_quantile(q)))
}

/// The `--json` object.
pub(crate) fn json(info: &RunInfo, stats: &Stats) -> Value {
    let latency = &stats.latency;
    let lag = &stats.lag;
    json!({
        "url": info.url,
        "method": info.method,
        "protocol": info.protocol,
        "target_rate": info.rate,
        "duration_s": info.duration.as_secs_f64(),
        "warmup_s": info.warmup.as_secs_f64(),
        "connections": info.connections,
        "timeout_s": info.timeout.as_secs_f64(),
        "scheduled": stats.scheduled,
        "sent": stats.sent,
        "completed": stats.completed,
        "late_starts": stats.late_starts,
        "achieved_rate": round3(achieved_rate(info, stats)),
        "status": {
            "2xx": stats.status[0],
            "3xx": stats.status[1],
            "4xx": stats.status[2],
            "5xx": stats.status[3],
        },
        "errors": {
            "connect": stats.connect_errors,
            "timeout": stats.timeouts,
            "other": stats.other_errors,
            "4xx": stats.status[2],
            "5xx": stats.status[3],
            "total": stats.errors(),
        },
        "latency_ms": {
            "min": (!latency.is_empty()).then(|| ms(latency.min())),
            "mean": (!latency.is_empty()).then(|| round3(latency.mean() / 1000.0)),
            "p50": quantile(latency, 0.50),
            "p90": quantile(latency, 0.90),
            "p99": quantile(latency, 0.99),
            "p99_9": quantile(latency, 0.999),
            "max": (!latency.is_empty()).then(|| ms(latency.max())),
        },
        "schedule_lag_ms": {
            "p50": quantile(lag, 0.50),
            "p99": quantile(lag, 0.99),
            "max": (!lag.is_empty()).then(|| ms(lag.max())),
        },
        "first_error": stats.first_error,
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The human summary table.
pub(crate) fn table(info: &RunInfo, stats: &Stats) -> String {
    let fmt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
    let latency = &stats.latency;
    let lag = &stats.lag;
    let mut out = String::new();
    out.push_str(&format!(
        "switchyard bench {} {} ({}), {} req/s for {} after {} warmup, {} connections, timeout {}\n\n",
        info.method,
        info.url,
        info.protocol,
        info.rate,
        humantime::format_duration(info.duration),
        humantime::format_duration(info.warmup),
        info.connections,
        humantime::format_duration(info.timeout),
    ));
    let rows = [
        (
            "requests",
            format!(
                "scheduled {}  sent {}  completed {}  late starts {}",
                stats.scheduled, stats.sent, stats.completed, stats.late_starts
            ),
        ),
        (
            "rate",
            format!(
                "target {:.1}/s  achieved {:.1}/s",
                info.rate,
                achieved_rate(info, stats)
            ),
        ),
        (
            "responses",
            format!(
                "2xx {}  3xx {}  4xx {}  5xx {}",
                stats.status[0], stats.status[1], stats.status[2], stats.status[3]
            ),
        ),
        (
            "errors",
            format!(
                "connect {}  timeout {}  other {}  4xx {}  5xx {}  (total {})",
                stats.connect_errors,
                stats.timeouts,
                stats.other_errors,
                stats.status[2],
                stats.status[3],
                stats.errors()
            ),
        ),
        (
            "latency ms",
            format!(
                "min {}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
                fmt((!latency.is_empty()).then(|| ms(latency.min()))),
                fmt(quantile(latency, 0.50)),
                fmt(quantile(latency, 0.90)),
                fmt(quantile(latency, 0.99)),
                fmt(quantile(latency, 0.999)),
                fmt((!latency.is_empty()).then(|| ms(latency.max()))),
            ),
        ),
        (
            "start lag ms",
            format!(
                "p50 {}  p99 {}  max {}  (how late requests left; included in latency)",
                fmt(quantile(lag, 0.50)),
                fmt(quantile(lag, 0.99)),
                fmt((!lag.is_empty()).then(|| ms(lag.max()))),
            ),
        ),
    ];
    for (name, value) in rows {
        out.push_str(&format!("{name:<13} {value}\n"));
    }
    if let Some(error) = &stats.first_error {
        out.push_str(&format!("{:<13} {error}\n", "first error"));
    }
    out
}

/// Redraws one progress line on stderr every 250 ms until the task is
/// aborted; the caller starts it only when stderr is a terminal.
pub(crate) async fn progress_line(progress: Arc<Progress>, warmup: Duration, duration: Duration) {
    const WIDTH: usize = 30;
    let start = Instant::now();
    let total = (warmup + duration).as_secs_f64().max(f64::MIN_POSITIVE);
    let mut tick = interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let elapsed = start.elapsed();
        let fraction = (elapsed.as_secs_f64() / total).min(1.0);
        let filled = (fraction * WIDTH as f64) as usize;
        let phase = if elapsed < warmup {
            "warmup"
        } else {
            "running"
        };
        let line = format!(
            "\r[{}{}] {:>5.1}s/{:.1}s {phase:<7} sent {}  completed {}  errors {}\x1b[K",
            "#".repeat(filled),
            " ".repeat(WIDTH - filled),
            elapsed.as_secs_f64().min(total),
            total,
            progress.sent.load(Relaxed),
            progress.completed.load(Relaxed),
            progress.errors.load(Relaxed),
        );
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(line.as_bytes());
        let _ = stderr.flush();
    }
}

/// Erases the progress line.
pub(crate) fn clear_progress_line() {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(b"\r\x1b[2K");
    let _ = stderr.flush();
}
