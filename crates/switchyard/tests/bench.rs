//! `switchyard bench`, the real binary, against in-process hyper servers on
//! loopback.
//!
//! Counts are asserted, never timings: the number of requests is fixed by
//! the schedule (rate × duration), not by how fast the machine is.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde_json::Value;
use tokio::net::TcpListener;

/// A loopback server answering every request with `status`, speaking
/// HTTP/1.1 and h2c (prior knowledge); counts requests and HTTP/2 ones.
struct Server {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    h2_requests: Arc<AtomicUsize>,
}

impl Server {
    async fn start(status: u16) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let h2_requests = Arc::new(AtomicUsize::new(0));
        let (all, h2) = (requests.clone(), h2_requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (all, h2) = (all.clone(), h2.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        all.fetch_add(1, Ordering::Relaxed);
                        if req.version() == http::Version::HTTP_2 {
                            h2.fetch_add(1, Ordering::Relaxed);
                        }
                        async move {
                            let _ = req.into_body().collect().await;
                            let mut res = Response::new(Full::new(Bytes::from_static(b"ok")));
                            *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(res)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Server {
            addr,
            requests,
            h2_requests,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/bench", self.addr)
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

async fn bench(args: &[&str]) -> Run {
    bench_with(env!("CARGO_BIN_EXE_switchyard"), args).await
}

async fn bench_with(binary: &str, args: &[&str]) -> Run {
    let output = tokio::process::Command::new(binary)
        .arg("bench")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn count(json: &Value, pointer: &str) -> u64 {
    json.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} missing in {json}"))
}

fn latency(json: &Value, field: &str) -> f64 {
    json["latency_ms"][field]
        .as_f64()
        .unwrap_or_else(|| panic!("latency_ms.{field} missing in {json}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_rate_sends_what_the_schedule_says() {
    let server = Server::start(200).await;
    let run = bench(&[
        &server.url(),
        "--rate",
        "200",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--json",
    ])
    .await;
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let json = run.json();
    let completed = count(&json, "/completed");
    assert!((180..=220).contains(&completed), "{json}");
    assert_eq!(count(&json, "/scheduled"), 200, "{json}");
    assert_eq!(count(&json, "/status/2xx"), completed, "{json}");
    assert_eq!(count(&json, "/errors/total"), 0, "{json}");
    let (min, p50, p90, p99, p999, max) = (
        latency(&json, "min"),
        latency(&json, "p50"),
        latency(&json, "p90"),
        latency(&json, "p99"),
        latency(&json, "p99_9"),
        latency(&json, "max"),
    );
    assert!(
        min <= p50 && p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max,
        "{json}"
    );
    assert!(latency(&json, "mean") > 0.0, "{json}");
    assert_eq!(json["protocol"], "http/1.1");
    // The warmup's 40 requests reached the server too, but are not reported.
    assert!(server.requests.load(Ordering::Relaxed) >= 220, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_names_every_figure() {
    let server = Server::start(200).await;
    let run = bench(&[
        &server.url(),
        "--rate",
        "50",
        "--duration",
        "200ms",
        "--warmup",
        "0s",
    ])
    .await;
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    for needle in [
        "completed 10",
        "late starts",
        "achieved",
        "2xx 10",
        "timeout 0",
        "p99.9",
        "max",
    ] {
        assert!(
            run.stdout.contains(needle),
            "`{needle}` missing from:\n{}",
            run.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_counted_by_class_and_the_run_still_succeeds() {
    let server = Server::start(503).await;
    let run = bench(&[
        &server.url(),
        "--rate",
        "100",
        "--duration",
        "500ms",
        "--warmup",
        "0s",
        "--json",
    ])
    .await;
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let json = run.json();
    assert_eq!(count(&json, "/status/5xx"), 50, "{json}");
    assert_eq!(count(&json, "/errors/5xx"), 50, "{json}");
    assert_eq!(count(&json, "/status/2xx"), 0, "{json}");
    assert_eq!(count(&json, "/errors/total"), 50, "{json}");
    assert_eq!(count(&json, "/errors/connect"), 0, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_port_exits_1_and_says_why() {
    // Bind then drop: nothing listens on this port any more.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{addr}/");
    let run = bench(&[
        &url,
        "--rate",
        "50",
        "--duration",
        "200ms",
        "--warmup",
        "0s",
        "--json",
    ])
    .await;
    assert_eq!(
        run.code, 1,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert!(
        run.stderr.contains("nothing could be sent"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(&addr.to_string()), "{}", run.stderr);
    assert!(
        run.stderr.to_lowercase().contains("refused"),
        "{}",
        run.stderr
    );
    let json = run.json();
    assert_eq!(count(&json, "/errors/connect"), 10, "{json}");
    assert!(json["latency_ms"]["p50"].is_null(), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_with_prior_knowledge_works() {
    let server = Server::start(200).await;
    let run = bench(&[
        &server.url(),
        "--http2",
        "--rate",
        "200",
        "--duration",
        "500ms",
        "--warmup",
        "0s",
        "--method",
        "POST",
        "--header",
        "x-test: yes",
        "--body",
        "hello",
        "--json",
    ])
    .await;
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let json = run.json();
    assert_eq!(json["protocol"], "h2c");
    assert_eq!(count(&json, "/completed"), 100, "{json}");
    assert_eq!(count(&json, "/errors/total"), 0, "{json}");
    assert_eq!(server.h2_requests.load(Ordering::Relaxed), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_exit_2() {
    let server = Server::start(200).await;
    let url = server.url();
    let cases: &[(&[&str], &str)] = &[
        (&["not a url", "--rate", "10", "--duration", "1s"], "URL"),
        (
            &["https://127.0.0.1/", "--rate", "10", "--duration", "1s"],
            "https is not supported",
        ),
        (
            &["ftp://127.0.0.1/", "--rate", "10", "--duration", "1s"],
            "scheme",
        ),
        (&[&url, "--rate", "0", "--duration", "1s"], "positive"),
        (
            &[&url, "--rate", "fast", "--duration", "1s"],
            "requests per second",
        ),
        (
            &[&url, "--rate", "10", "--duration", "0s"],
            "longer than zero",
        ),
        (
            &[&url, "--rate", "10", "--duration", "soon"],
            "not a duration",
        ),
        (&[&url, "--rate", "10"], "--duration"),
        (
            &[
                &url,
                "--rate",
                "10",
                "--duration",
                "1s",
                "--connections",
                "0",
            ],
            "connections",
        ),
        (
            &[
                &url,
                "--rate",
                "10",
                "--duration",
                "1s",
                "--header",
                "nocolon",
            ],
            "name: value",
        ),
        (
            &[
                &url,
                "--rate",
                "10",
                "--duration",
                "1s",
                "--body",
                "a",
                "--body-file",
                "f",
            ],
            "cannot be used with",
        ),
        (
            &[
                &url,
                "--rate",
                "10",
                "--duration",
                "1s",
                "--body-file",
                "/nonexistent/body",
            ],
            "/nonexistent/body",
        ),
    ];
    for (args, needle) in cases {
        let run = bench(args).await;
        assert_eq!(
            run.code, 2,
            "{args:?}: stdout {} stderr {}",
            run.stdout, run.stderr
        );
        assert!(
            run.stderr.contains(needle),
            "{args:?}: `{needle}` not in {}",
            run.stderr
        );
    }
    assert_eq!(
        server.requests.load(Ordering::Relaxed),
        0,
        "a usage error sends nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_documents_the_method_fields_and_exit_codes() {
    let run = bench(&["--help"]).await;
    assert_eq!(run.code, 0);
    for needle in [
        "--rate",
        "--duration",
        "--connections",
        "--http2",
        "--json",
        "intended start",
        "late_starts",
        "Exit codes",
    ] {
        assert!(
            run.stdout.contains(needle),
            "`{needle}` missing from --help:\n{}",
            run.stdout
        );
    }
}

/// The generator's own ceiling: rates stepped up against a trivial server in
/// this process, printing p99 at each. Not an assertion (timing); run by hand:
/// `cargo test --release -p switchyard --test bench -- --ignored --nocapture ceiling`.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "measurement, run by hand (see docs/performance.md)"]
async fn ceiling() {
    let server = Server::start(200).await;
    let rates: Vec<String> = std::env::var("BENCH_RATES")
        .unwrap_or_else(|_| "1000 2000 5000 10000 15000 20000 30000".to_owned())
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let protocols: &[bool] = match std::env::var("BENCH_PROTOCOLS").as_deref() {
        Ok("h1") => &[false],
        Ok("h2c") => &[true],
        _ => &[false, true],
    };
    for &http2 in protocols {
        for rate in &rates {
            let mut args = vec![
                server.url(),
                "--rate".into(),
                rate.clone(),
                "--duration".into(),
                "5s".into(),
                "--json".into(),
            ];
            if http2 {
                args.push("--http2".into());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            // BENCH_BIN compares another build (e.g. a scheduling variant).
            let binary = std::env::var("BENCH_BIN")
                .unwrap_or_else(|_| env!("CARGO_BIN_EXE_switchyard").to_owned());
            let json = bench_with(&binary, &args).await.json();
            println!(
                "{:<8} rate {:>6}  achieved {:>9}  p50 {:>7} ms  p99 {:>7} ms  p99.9 {:>7} ms  max {:>7} ms  late {:>5}  lag p99 {:>6} ms  errors {}",
                json["protocol"].as_str().unwrap_or(""),
                rate,
                json["achieved_rate"],
                json["latency_ms"]["p50"],
                json["latency_ms"]["p99"],
                json["latency_ms"]["p99_9"],
                json["latency_ms"]["max"],
                json["late_starts"],
                json["schedule_lag_ms"]["p99"],
                json["errors"]["total"],
            );
        }
    }
}
