//! Fixed-bucket latency histograms behind the Prometheus recorder.
//!
//! The process's [`metrics`] recorder is [`Recorder`]: counters, gauges and
//! other histograms go to `metrics-exporter-prometheus`; a histogram whose
//! name ends in `duration_seconds` (the request and policy-call latencies,
//! recorded on every request) is counted here, in buckets fixed up front.
//!
//! Why our own: the exporter keeps every histogram sample (the value and a
//! clock read, pushed under an epoch guard) and sorts samples into buckets
//! only when it renders or runs its upkeep. With two samples per proxied
//! request that costs about 350 instructions a request and a write to fresh
//! memory per sample, and each upkeep stalls the runtime in proportion to
//! the traffic since the last one (milliseconds at tens of thousands of
//! requests a second). Here a sample is three relaxed atomic additions, and
//! a scrape reads the counts as they are.
//!
//! The text rendered is the Prometheus histogram exposition: for each
//! series, cumulative `_bucket` lines with an `le` label (`+Inf` last),
//! `_sum` and `_count`, under one `# TYPE` line per metric name.
//!
//! ```
//! use switchyard_gateway::histograms::Recorder;
//!
//! let recorder = Recorder::new(&[0.1, 1.0]);
//! let histograms = recorder.histograms();
//! metrics::with_local_recorder(&recorder, || {
//!     metrics::histogram!("call_duration_seconds", "service" => "users").record(0.25);
//! });
//! let text = histograms.render();
//! assert!(text.contains("call_duration_seconds_bucket{service=\"users\",le=\"0.1\"} 0\n"));
//! assert!(text.contains("call_duration_seconds_bucket{service=\"users\",le=\"1\"} 1\n"));
//! assert!(text.contains("call_duration_seconds_count{service=\"users\"} 1\n"));
//! ```

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use parking_lot::Mutex;

/// The suffix of the histograms counted here.
const SUFFIX: &str = "duration_seconds";

/// The process's metrics recorder: the Prometheus exporter's, with the
/// `*duration_seconds` histograms counted in fixed buckets (see the
/// [module docs](self)).
pub struct Recorder {
    prometheus: PrometheusRecorder,
    histograms: Arc<Histograms>,
}

impl Recorder {
    /// A recorder counting `*duration_seconds` histograms in `buckets`
    /// (upper bounds in seconds, ascending; `+Inf` is implied).
    pub fn new(buckets: &[f64]) -> Self {
        Self {
            prometheus: PrometheusBuilder::new().build_recorder(),
            histograms: Arc::new(Histograms {
                bounds: buckets.into(),
                series: Mutex::default(),
            }),
        }
    }

    /// What renders everything this recorder records.
    pub fn handle(&self) -> MetricsHandle {
        MetricsHandle {
            prometheus: self.prometheus.handle(),
            histograms: self.histograms.clone(),
        }
    }

    /// The histograms counted here.
    pub fn histograms(&self) -> Arc<Histograms> {
        self.histograms.clone()
    }
}

impl metrics::Recorder for Recorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.prometheus.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.prometheus.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        if key.name().ends_with(SUFFIX) {
            Histogram::from_arc(self.histograms.series(key))
        } else {
            self.prometheus.register_histogram(key, metadata)
        }
    }
}

/// Renders the metrics of a [`Recorder`] in the Prometheus text format.
#[derive(Clone)]
pub struct MetricsHandle {
    prometheus: PrometheusHandle,
    histograms: Arc<Histograms>,
}

impl MetricsHandle {
    /// Every metric, as `/metrics` serves it.
    pub fn render(&self) -> String {
        let mut out = self.prometheus.render();
        out.push_str(&self.histograms.render());
        out
    }

    /// The exporter's upkeep (its own histograms and idle series); call
    /// every few seconds.
    pub fn run_upkeep(&self) {
        self.prometheus.run_upkeep();
    }
}

/// The `*duration_seconds` histograms: one [`Series`] per name and labels.
pub struct Histograms {
    /// Upper bounds, ascending; a last, implied bucket is `+Inf`.
    bounds: Arc<[f64]>,
    /// By name, then labels as rendered: the order of the text.
    series: Mutex<BTreeMap<(String, String), Arc<Series>>>,
}

impl Histograms {
    /// The series for `key`, made on first use.
    fn series(&self, key: &Key) -> Arc<Series> {
        let mut labels = String::new();
        for (i, label) in key.labels().enumerate() {
            if i > 0 {
                labels.push(',');
            }
            let _ = write!(labels, "{}=\"", label.key());
            escape_into(&mut labels, label.value());
            labels.push('"');
        }
        self.series
            .lock()
            .entry((key.name().to_owned(), labels))
            .or_insert_with(|| {
                Arc::new(Series {
                    bounds: self.bounds.clone(),
                    counts: (0..=self.bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                    sum_nanos: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// The histograms in the Prometheus text format.
    pub fn render(&self) -> String {
        let series = self.series.lock();
        let mut out = String::new();
        let mut last_name = None;
        for ((name, labels), series) in series.iter() {
            if last_name != Some(name) {
                let _ = writeln!(out, "# TYPE {name} histogram");
                last_name = Some(name);
            }
            let sep = if labels.is_empty() { "" } else { "," };
            let mut total = 0;
            for (i, count) in series.counts.iter().enumerate() {
                total += count.load(Ordering::Relaxed);
                let le = series
                    .bounds
                    .get(i)
                    .map_or("+Inf".to_owned(), f64::to_string);
                let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {total}");
            }
            let sum = series.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let braced = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            };
            let _ = writeln!(out, "{name}_sum{braced} {sum}");
            let _ = writeln!(out, "{name}_count{braced} {total}");
        }
        out
    }
}

/// One histogram series: a count per bucket (not cumulative; summed when
/// rendered) and the sum of the values in nanoseconds.
pub struct Series {
    bounds: Arc<[f64]>,
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl HistogramFn for Series {
    fn record(&self, value: f64) {
        // The first bucket whose bound is at least `value`; past the last
        // bound (or NaN), `+Inf`.
        let bucket = if value.is_nan() {
            self.bounds.len()
        } else {
            self.bounds.partition_point(|&le| le < value)
        };
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        // A negative or NaN value adds nothing to the sum (`as` saturates).
        self.sum_nanos
            .fetch_add((value * 1e9) as u64, Ordering::Relaxed);
    }
}

/// Appends `value` as a label value: backslash, double quote and line feed
/// escaped.
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, start: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(start))
    }

    #[test]
    fn samples_land_in_cumulative_buckets_with_sum_and_count() {
        let recorder = Recorder::new(&[0.001, 0.01, 0.1]);
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let h = metrics::histogram!("x_duration_seconds", "route" => "a", "service" => "b");
            for v in [0.0005, 0.001, 0.002, 0.05, 3.0, f64::NAN, -1.0] {
                h.record(v);
            }
            // The same key again is the same series.
            metrics::histogram!("x_duration_seconds", "route" => "a", "service" => "b").record(0.2);
        });
        let text = handle.render();
        let bucket = |le: &str| {
            line(
                &text,
                &format!("x_duration_seconds_bucket{{route=\"a\",service=\"b\",le=\"{le}\"}} "),
            )
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        };
        // -1, 0.0005 and 0.001 are at most 0.001 (a bound is inclusive).
        assert_eq!(bucket("0.001"), Some(3), "{text}");
        assert_eq!(bucket("0.01"), Some(4), "{text}");
        assert_eq!(bucket("0.1"), Some(5), "{text}");
        assert_eq!(bucket("+Inf"), Some(8), "{text}");
        assert_eq!(
            line(
                &text,
                "x_duration_seconds_count{route=\"a\",service=\"b\"} "
            ),
            Some("x_duration_seconds_count{route=\"a\",service=\"b\"} 8"),
            "{text}"
        );
        let sum: f64 = line(&text, "x_duration_seconds_sum{")
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap();
        assert!((sum - 3.2535).abs() < 1e-6, "{sum}");
        assert_eq!(
            text.matches("# TYPE x_duration_seconds histogram\n")
                .count(),
            1
        );
    }

    #[test]
    fn other_metrics_go_to_the_exporter_and_labels_are_escaped() {
        let recorder = Recorder::new(&[1.0]);
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!("size_bytes").record(10.0);
            metrics::counter!("calls_total").increment(2);
            metrics::histogram!("y_duration_seconds", "path" => "a\"b\\c\nd").record(0.5);
            metrics::histogram!("y_duration_seconds").record(2.0);
        });
        let text = handle.render();
        assert!(text.contains("calls_total 2"), "{text}");
        // The exporter's own summary of a histogram not counted here.
        assert!(text.contains("size_bytes_count 1"), "{text}");
        assert!(!text.contains("size_bytes_bucket"), "{text}");
        assert!(
            text.contains("y_duration_seconds_bucket{path=\"a\\\"b\\\\c\\nd\",le=\"1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("y_duration_seconds_bucket{le=\"+Inf\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("y_duration_seconds_count 1\n"), "{text}");
        assert!(text.contains("y_duration_seconds_sum 2\n"), "{text}");
    }
}
