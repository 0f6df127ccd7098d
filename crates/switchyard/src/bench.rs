//! `switchyard bench`: an open-loop, constant-rate HTTP load generator
//! (HTTP/1.1 and h2c).
//!
//! Requests are started on a fixed schedule, `t0 + i / rate`, whatever the
//! server does; each request's latency runs from its *intended* start to the
//! last byte of its response, so a stalled server is charged for every
//! request that had to wait behind the stall (no coordinated omission, the
//! correction wrk2 made to wrk). Latencies go into an HdrHistogram with
//! three significant digits. See [`schedule`] for the scheduler and
//! [`transport`] for the connections.
//!
//! Exit codes: 0 the run completed (even if the server answered errors),
//! 1 nothing could be sent at all (every connection attempt failed, or the
//! host does not resolve), 2 usage error (bad URL, rate 0, unreadable body
//! file, ...).

mod report;
mod schedule;
mod transport;

use std::{
    io::IsTerminal, net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration,
};

use bytes::Bytes;
use clap::Args;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, header};

use self::{
    report::RunInfo,
    schedule::{Plan, Progress},
    transport::{Http, Protocol, RequestTemplate},
};

/// Default number of connections (in-flight requests).
pub(crate) const DEFAULT_CONNECTIONS: usize = 32;

/// How long before each intended start the dispatcher stops sleeping on
/// tokio's 1 ms timer and yields in a loop: without it every request would
/// leave up to 1 ms late and carry that into its latency (measured in
/// docs/performance.md).
const PRECISE_SPIN: Duration = Duration::from_millis(1);

/// Arguments of `switchyard bench`.
#[derive(Debug, Args)]
#[command(after_long_help = AFTER_HELP)]
pub(crate) struct BenchArgs {
    /// The URL to load, e.g. http://127.0.0.1:8080/path (http only, no https).
    #[arg(value_parser = parse_url)]
    url: Uri,
    /// Requests per second, started on a fixed schedule whatever the responses do.
    #[arg(long, value_name = "N", value_parser = parse_rate)]
    rate: f64,
    /// Length of the measured run (after the warmup), e.g. 10s, 500ms, 1m.
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    duration: Duration,
    /// Most requests in flight at once; with HTTP/1.1 the number of keep-alive
    /// connections, with --http2 the streams, multiplexed over up to 4 connections.
    #[arg(long, short = 'c', value_name = "C", default_value_t = DEFAULT_CONNECTIONS,
          value_parser = parse_connections)]
    connections: usize,
    /// Speak HTTP/2 in cleartext with prior knowledge (h2c, no upgrade).
    #[arg(long)]
    http2: bool,
    /// Request method.
    #[arg(long, short = 'm', default_value = "GET", value_parser = parse_method)]
    method: Method,
    /// A request header, 'name: value'; repeatable.
    #[arg(long = "header", short = 'H', value_name = "'NAME: VALUE'", value_parser = parse_header)]
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The request body.
    #[arg(long, short = 'b', value_name = "STRING", conflicts_with = "body_file")]
    body: Option<String>,
    /// Read the request body from this file.
    #[arg(long, value_name = "FILE")]
    body_file: Option<PathBuf>,
    /// A request without a response this long after its intended start is a timeout.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_positive_duration)]
    timeout: Duration,
    /// Send at the rate for this long first without recording (opens connections, warms caches); 0s for none.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Print the summary as one JSON object (field names below) instead of a table.
    #[arg(long)]
    json: bool,
}

const AFTER_HELP: &str = "\
Method: open loop. Request i is started at t0 + i/rate whatever earlier requests are
doing; its latency is measured from that intended start to the last byte of the
response, so time spent waiting for a free connection behind a slow response is
part of the latency (no coordinated omission). Such requests are counted as late
starts. Latencies are recorded in an HdrHistogram (3 significant digits). A request
with no response --timeout after its intended start counts as a timeout, so the
run ends by warmup + duration + timeout.

While running, a progress line is drawn on stderr if it is a terminal.

JSON fields (--json): url, method, protocol (\"http/1.1\" | \"h2c\"), target_rate,
duration_s, warmup_s, connections, timeout_s, scheduled, sent, completed,
late_starts, achieved_rate (requests started per second), status.{2xx,3xx,4xx,5xx},
errors.{connect,timeout,other,4xx,5xx,total}, latency_ms.{min,mean,p50,p90,p99,
p99_9,max} (null when nothing completed), schedule_lag_ms.{p50,p99,max},
first_error (string or null). Counts cover the measured window, not the warmup.

Exit codes: 0 the run completed, even if the server answered errors; 1 nothing
could be sent at all (every connection attempt failed, or the host does not
resolve); 2 usage error (bad URL, rate 0, unreadable --body-file).

Example: switchyard bench http://127.0.0.1:8080/ --rate 1000 --duration 10s";

fn parse_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("not a URL ({e}); expected http://host[:port]/path"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(
                "https is not supported; use http:// (HTTP/1.1, or h2c with --http2)".to_owned(),
            );
        }
        Some(other) => {
            return Err(format!(
                "unsupported scheme `{other}`; expected http://host[:port]/path"
            ));
        }
        None => return Err("missing scheme; expected http://host[:port]/path".to_owned()),
    }
    match uri.host() {
        Some(host) if !host.is_empty() => {}
        _ => return Err("missing host; expected http://host[:port]/path".to_owned()),
    }
    if uri.path_and_query().is_none() {
        // `http://host` has no path: send `/`.
        let mut parts = uri.into_parts();
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        return Uri::from_parts(parts).map_err(|e| format!("not a URL ({e})"));
    }
    Ok(uri)
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of requests per second"))?;
    if !(rate.is_finite() && rate > 0.0) {
        return Err("the rate must be a positive number of requests per second".to_owned());
    }
    if rate > 10_000_000.0 {
        return Err("the rate must be at most 10000000 requests per second".to_owned());
    }
    Ok(rate)
}

fn parse_connections(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(c @ 1..=100_000) => Ok(c),
        _ => Err(format!(
            "`{text}` is not a number of connections from 1 to 100000"
        )),
    }
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration ({e}); e.g. 10s, 500ms, 1m"))?;
    if duration.is_zero() {
        return Err("must be longer than zero".to_owned());
    }
    Ok(duration)
}

fn parse_method(text: &str) -> Result<Method, String> {
    Method::from_bytes(text.as_bytes()).map_err(|_| format!("`{text}` is not an HTTP method"))
}

fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("`{text}` is not a header; expected 'name: value'"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("`{}` is not a valid header name", name.trim()))?;
    let value = HeaderValue::from_str(value.trim()).map_err(|_| {
        format!("the value of header `{name}` has characters a header cannot carry")
    })?;
    Ok((name, value))
}

/// Runs `switchyard bench` and returns the process exit code.
pub(crate) fn run(args: BenchArgs) -> ExitCode {
    let body = match (&args.body, &args.body_file) {
        (Some(body), _) => Bytes::from(body.clone()),
        (None, Some(path)) => match std::fs::read(path) {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) => {
                eprintln!("switchyard bench: --body-file {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        (None, None) => Bytes::new(),
    };
    crate::block_on(bench(args, body))
}

async fn bench(args: BenchArgs, body: Bytes) -> ExitCode {
    let addr = match resolve(&args.url).await {
        Ok(addr) => addr,
        Err(message) => {
            eprintln!("switchyard bench: {message}");
            return ExitCode::from(1);
        }
    };
    let protocol = if args.http2 {
        Protocol::H2c
    } else {
        Protocol::Http1
    };
    let mut headers = HeaderMap::new();
    if protocol == Protocol::Http1
        && let Some(authority) = args.url.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, host);
    }
    // A user's header replaces a default one (host); repeated names are all sent.
    for (name, _) in &args.headers {
        headers.remove(name);
    }
    for (name, value) in &args.headers {
        headers.append(name.clone(), value.clone());
    }
    let template = RequestTemplate {
        method: args.method.clone(),
        uri: args.url.clone(),
        headers,
        body,
    };
    let plan = Plan {
        rate: args.rate,
        warmup: args.warmup,
        duration: args.duration,
        timeout: args.timeout,
        slots: args.connections,
        spin: PRECISE_SPIN,
    };
    let info = RunInfo {
        url: args.url.to_string(),
        method: args.method.to_string(),
        protocol: match protocol {
            Protocol::Http1 => "http/1.1",
            Protocol::H2c => "h2c",
        },
        rate: args.rate,
        duration: args.duration,
        warmup: args.warmup,
        connections: args.connections,
        timeout: args.timeout,
    };
    let transport = Arc::new(Http::new(addr, protocol, template, args.connections));
    let progress = Arc::new(Progress::default());
    let progress_line = std::io::stderr().is_terminal().then(|| {
        tokio::spawn(report::progress_line(
            progress.clone(),
            args.warmup,
            args.duration,
        ))
    });
    let stats = schedule::run(&plan, transport, &progress).await;
    if let Some(task) = progress_line {
        task.abort();
        report::clear_progress_line();
    }
    if args.json {
        println!("{}", report::json(&info, &stats));
    } else {
        print!("{}", report::table(&info, &stats));
    }
    if !stats.reached {
        eprintln!(
            "switchyard bench: nothing could be sent to {} ({addr}): all {} connection attempts failed{}",
            args.url,
            stats.connect_attempts_failed,
            stats
                .first_error
                .as_deref()
                .map(|e| format!("; first: {e}"))
                .unwrap_or_default()
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// The first address `url`'s host resolves to, resolved once so name
/// lookups stay out of the measurement.
async fn resolve(url: &Uri) -> Result<SocketAddr, String> {
    let host = url.host().unwrap_or_default();
    // `http::Uri` keeps IPv6 literals bracketed.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_u16().unwrap_or(80);
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("`{host}` resolves to no address"))
}
