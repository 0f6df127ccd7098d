//! The real `switchyard` binary in front of real loopback backends.
//!
//! These tests assert on counts and statuses, never on how long something
//! took: the machine is shared and its timing is noisy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{process::Command, time::Duration};

use support::{Backend, Mode, Seen, Switchyard, client, config, get, h2_client, send, send_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_and_reports_metrics_health_and_state() {
    let backend = Backend::start("one").await;
    let gw = Switchyard::start(&config(&[backend.addr], ""));
    let http = client();

    let (status, headers, body) = get(&http, &gw.url("/hello")).await;
    assert_eq!((status, body.as_str()), (200, "one"));
    assert!(headers.contains_key("x-request-id"));
    // The backend's own fields pass, each once (its Date not doubled by
    // ours); the request id is ours, not the one the backend answered with.
    assert_eq!(headers["x-backend"], "one");
    for name in ["x-request-id", "date", "content-length"] {
        assert_eq!(
            headers.get_all(name).iter().count(),
            1,
            "{name}: {headers:?}"
        );
    }
    assert_ne!(headers["x-request-id"], "the-backends");
    // The same for an HTTP/2 client, whose answer hyper writes from the map.
    let (status, headers, body) = get(&h2_client(), &gw.url("/hello")).await;
    assert_eq!((status, body.as_str()), (200, "one"));
    assert_eq!(headers["x-backend"], "one");
    assert_eq!(headers.get_all("x-request-id").iter().count(), 1);
    assert_ne!(headers["x-request-id"], "the-backends");
    // Each attempt tells the next hop the time left of the 10s default
    // deadline, and a shorter deadline from the client wins.
    let deadline_ms = |seen: Seen| -> u64 {
        seen.headers["x-switchyard-deadline-ms"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let left = deadline_ms(backend.last());
    assert!((1_501..=10_000).contains(&left), "{left}");
    // The forwarded fields and the request id, each once.
    let once = |seen: &Seen, name: &str| -> String {
        let values: Vec<_> = seen.headers.get_all(name).iter().collect();
        assert_eq!(values.len(), 1, "{name}: {values:?}");
        values[0].to_str().unwrap().to_owned()
    };
    let seen = backend.last();
    assert_eq!(once(&seen, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(once(&seen, "x-forwarded-proto"), "http");
    assert_eq!(once(&seen, "x-forwarded-host"), gw.listener.to_string());
    assert_eq!(once(&seen, "x-request-id"), headers["x-request-id"]);
    let (status, headers, _) = send_with(
        &http,
        "GET",
        &gw.url("/hello"),
        &[
            ("x-switchyard-deadline-ms", "1500"),
            ("x-request-id", "from-the-client"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "spoofed.example"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-request-id"], "from-the-client");
    let seen = backend.last();
    let left = deadline_ms(seen.clone());
    assert!((1..=1500).contains(&left), "{left}");
    assert_eq!(once(&seen, "x-forwarded-for"), "203.0.113.9, 127.0.0.1");
    assert_eq!(once(&seen, "x-forwarded-proto"), "http");
    assert_eq!(once(&seen, "x-forwarded-host"), gw.listener.to_string());
    assert_eq!(once(&seen, "x-request-id"), "from-the-client");

    assert_eq!(get(&http, &gw.admin_url("/healthz")).await.0, 200);
    assert_eq!(get(&http, &gw.admin_url("/readyz")).await.0, 200);
    // A request refused from its head (ambiguous framing) never reaches the
    // proxy but is counted with the others.
    let mut raw = tokio::net::TcpStream::connect(gw.listener).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut raw,
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\nx",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut raw, &mut answer)
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");

    let (_, _, metrics) = get(&http, &gw.admin_url("/metrics")).await;
    assert!(metrics.contains("switchyard_requests_total{"), "{metrics}");
    assert!(metrics.contains("service=\"app\""), "{metrics}");
    let refused = metrics
        .lines()
        .find(|l| {
            l.starts_with("switchyard_requests_total{")
                && l.contains("route=\"-\"")
                && l.contains("status=\"400\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert_eq!(refused, Some(1.0), "{metrics}");
    // Latency histograms: cumulative buckets up to `+Inf`, which is the count.
    assert!(
        metrics.contains("# TYPE switchyard_request_duration_seconds histogram\n"),
        "{metrics}"
    );
    let value = |prefix: &str, part: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix) && l.contains("service=\"app\"") && l.contains(part))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    let requests = value("switchyard_request_duration_seconds_count{", "");
    assert!(requests.is_some_and(|n| n >= 1), "{metrics}");
    assert_eq!(
        value("switchyard_request_duration_seconds_bucket{", "le=\"+Inf\""),
        requests,
        "{metrics}"
    );
    let calls = value("switchyard_policy_call_duration_seconds_count{", "");
    assert!(calls.is_some_and(|n| n >= 1), "{metrics}");
    let (_, _, state) = get(&http, &gw.admin_url("/admin/services")).await;
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    let app = &state["services"]["app"];
    assert_eq!(app["breaker"]["state"], "closed", "{state}");
    assert_eq!(
        app["client"]["endpoints"][0]["addr"],
        backend.addr.to_string(),
        "{state}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_endpoint_is_ejected_and_traffic_continues() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let gw = Switchyard::start(&config(
        &[a.addr, b.addr, c.addr],
        // A dead endpoint's refused connects don't make it look fast, and a
        // retry avoids it, so after its first failure the balancer rarely
        // picks it again; a short decay brings its (idle) cost down within
        // the test so it is tried, fails again, and is ejected.
        "[services.app.balancer]\ndecay = \"50ms\"\n[services.app.outlier]\nconsecutive_failures = 2\n[services.app.policy.retry]\nbase_delay = \"1ms\"\n",
    ));
    let http = client();
    for _ in 0..30 {
        assert_eq!(get(&http, &gw.url("/x")).await.0, 200);
    }
    a.kill();
    // Every request still succeeds: a connect failure is retried on another
    // endpoint, and the dead one is ejected once it has failed twice in a
    // row (how soon it is picked twice is up to the balancer's dice, so the
    // loop keeps sending, bounded, until the admin API shows the ejection).
    let before = (b.hits(), c.hits());
    let mut ejected = false;
    let mut sent = 0;
    while sent < 100 || (!ejected && sent < 1000) {
        let (status, _, body) = get(&http, &gw.url("/x")).await;
        assert_eq!(status, 200, "request {sent} failed: {body}");
        sent += 1;
        if sent > 100 {
            // Give the idle dead endpoint's cost time to decay.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        if sent % 10 == 0 && !ejected {
            let (_, _, state) = get(&http, &gw.admin_url("/admin/services")).await;
            let state: serde_json::Value = serde_json::from_str(&state).unwrap();
            ejected = state["services"]["app"]["client"]["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["addr"] == a.addr.to_string() && e["ejected"] == true);
        }
    }
    let (_, _, state) = get(&http, &gw.admin_url("/admin/services")).await;
    assert!(
        ejected,
        "the dead endpoint was never ejected in {sent} requests: {state}"
    );
    assert_eq!(b.hits() + c.hits() - before.0 - before.1, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_slowed_tenfold_loses_most_of_its_traffic() {
    let fast = Backend::start("fast").await;
    let slow = Backend::start("slow").await;
    // Tens of milliseconds, so a busy machine's scheduling noise (a few ms)
    // can't blur the tenfold difference.
    fast.set(Mode::Delay(Duration::from_millis(10)));
    slow.set(Mode::Delay(Duration::from_millis(100)));
    let gw = Switchyard::start(&config(&[fast.addr, slow.addr], ""));
    let http = client();
    // Warm up both endpoints' latency estimates.
    for _ in 0..20 {
        get(&http, &gw.url("/x")).await;
    }
    let before = (fast.hits(), slow.hits());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let http = http.clone();
        let url = gw.url("/x");
        tasks.spawn(async move {
            for _ in 0..40 {
                assert_eq!(get(&http, &url).await.0, 200);
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
    let fast_hits = fast.hits() - before.0;
    let slow_hits = slow.hits() - before.1;
    assert_eq!(fast_hits + slow_hits, 320);
    assert!(
        slow_hits * 5 < 320,
        "the slow endpoint got {slow_hits} of 320 requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_answers_503_problem_without_touching_the_upstream() {
    let backend = Backend::start("b").await;
    backend.set(Mode::Status(500));
    let gw = Switchyard::start(&config(
        &[backend.addr],
        "[services.app.policy.breaker]\nmode = \"consecutive\"\nconsecutive_failures = 3\nopen_duration = \"60s\"\n",
    ));
    let http = client();
    for _ in 0..3 {
        assert_eq!(get(&http, &gw.url("/x")).await.0, 500);
    }
    let hits = backend.hits();
    let (status, headers, body) = get(&http, &gw.url("/x")).await;
    assert_eq!(status, 503);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(headers["x-switchyard-error"], "breaker-open");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        problem["type"].as_str().unwrap().ends_with("/breaker-open"),
        "{problem}"
    );
    assert_eq!(problem["status"], 503);
    assert_eq!(
        backend.hits(),
        hits,
        "the open breaker must not reach the upstream"
    );
}

/// Every failure is retried (3 attempts, no breaker, no ejection); the
/// retry table is left open for more keys.
const RETRY_EVERY_FAILURE: &str = r#"[services.app.outlier]
consecutive_failures = 0
success_rate_threshold = 0.0
[services.app.policy.breaker]
mode = "disabled"
[services.app.policy.retry]
max_attempts = 3
base_delay = "1ms"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_the_budget() {
    let backend = Backend::start("b").await;
    backend.set(Mode::Status(503));
    let gw = Switchyard::start(&config(
        &[backend.addr],
        &format!(
            "{RETRY_EVERY_FAILURE}budget = {{ retry_ratio = 0.1, min_retries_per_second = 1, ttl = \"10s\" }}\n"
        ),
    ));
    let http = client();
    for _ in 0..100 {
        // A 503 the budget won't retry is passed through as the upstream's answer.
        assert_eq!(get(&http, &gw.url("/x")).await.0, 503);
    }
    // Without a budget, 100 calls with 3 attempts each would be 300 hits. The
    // budget allows 10% of the calls (10) plus its reserve of
    // min_retries_per_second × ttl (10): about 120 in all.
    let hits = backend.hits();
    assert!(
        (110..=125).contains(&hits),
        "backend saw {hits} attempts for 100 calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_sent_once_even_without_a_body_while_a_get_is_retried() {
    let backend = Backend::start("b").await;
    backend.set(Mode::Status(503));
    let gw = Switchyard::start(&config(&[backend.addr], RETRY_EVERY_FAILURE));
    let http = client();
    assert_eq!(send(&http, "GET", &gw.url("/x")).await.0, 503);
    assert_eq!(backend.hits(), 3, "a GET is retried");
    // An empty body is still a POST's: not repeated (the upstream may have
    // acted on it), whichever client sends it upstream.
    assert_eq!(send(&http, "POST", &gw.url("/x")).await.0, 503);
    assert_eq!(backend.hits(), 4, "a POST without a body was repeated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_load_loses_no_request_and_a_bad_config_is_refused() {
    let backend = Backend::start("b").await;
    let text = config(&[backend.addr], "");
    let gw = Switchyard::start(&text);
    let http = client();

    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let http = http.clone();
        let url = gw.url("/load");
        let stop_rx = stop_rx.clone();
        load.spawn(async move {
            let (mut ok, mut failed) = (0, 0);
            while !*stop_rx.borrow() {
                match get(&http, &url).await.0 {
                    200 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        });
    }

    // A new route appears through POST /admin/reload, then SIGHUP re-reads it again.
    let new_text = format!(
        "{text}\n[[routes]]\nname = \"v2\"\npath = \"/v2/{{*rest}}\"\nservice = \"app\"\nrewrite = \"/{{rest}}\"\n"
    );
    let new_text = new_text.replace(
        "path = \"/{*rest}\"",
        "path = \"/v1/{*rest}\"\nrewrite = \"/{rest}\"",
    );
    std::fs::write(&gw.config, new_text.replace("/v1/{*rest}", "/{*rest}")).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _, body) = send(&http, "POST", &gw.admin_url("/admin/reload")).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.signal("HUP");
    gw.wait_for_line("config reloaded");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send_replace(true);
    let (mut ok, mut failed) = (0, 0);
    while let Some(r) = load.join_next().await {
        let (o, f) = r.unwrap();
        ok += o;
        failed += f;
    }
    assert!(ok > 0);
    assert_eq!(
        failed, 0,
        "{failed} requests failed during reloads ({ok} succeeded)"
    );
    assert_eq!(get(&http, &gw.url("/v2/thing")).await.0, 200);

    // An invalid file is refused and the running config keeps serving.
    std::fs::write(
        &gw.config,
        "[[listeners]]\nname = \"public\"\nlisten = \"not an address\"\n",
    )
    .unwrap();
    let (status, headers, body) = send(&http, "POST", &gw.admin_url("/admin/reload")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert!(body.contains("switchyard.toml:3"), "{body}");
    assert_eq!(get(&http, &gw.url("/v2/thing")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let backend = Backend::start("b").await;
    backend.set(Mode::Delay(Duration::from_millis(700)));
    // One worker: the runtime that runs everything on one thread (what the
    // benchmarks use) must drain too.
    let mut gw = Switchyard::start_with_workers(&config(&[backend.addr], ""), 1);
    let http = client();
    let url = gw.url("/slow");
    let in_flight = tokio::spawn({
        let http = http.clone();
        async move { get(&http, &url).await }
    });
    while backend.hits() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.signal("TERM");
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "b"));
    assert_eq!(gw.wait().await, Some(0));
    assert!(
        tokio::net::TcpStream::connect(gw.listener).await.is_err(),
        "the listener must be closed"
    );
}

#[test]
fn a_bad_worker_count_is_refused_with_what_to_do() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "-c", "/nonexistent/switchyard.toml"])
        .env("TOKIO_WORKER_THREADS", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TOKIO_WORKER_THREADS=0"), "{stderr}");
}

#[test]
fn config_check_accepts_the_examples_and_points_at_bad_lines() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
                .args(["config", "check"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 2);

    let bad = std::env::temp_dir().join(format!("switchyard-bad-{}.toml", std::process::id()));
    std::fs::write(&bad, "[[listeners]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n[[routes]]\npath = \"/x\"\nservice = \"nope\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:6: routes[0].service: unknown service \"nope\"",
            bad.display()
        )),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_beyond_loopback_needs_its_token() {
    let backend = Backend::start("b").await;
    let text = config(&[backend.addr], "");
    let open = text.replace(
        "listen = \"127.0.0.1:0\"\n\n[[listeners]]",
        "listen = \"0.0.0.0:0\"\n\n[[listeners]]",
    );
    let bad = std::env::temp_dir().join(format!("switchyard-admin-{}.toml", std::process::id()));
    std::fs::write(&bad, &open).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin.listen"),
        "{out:?}"
    );

    let real_hash = sha256_hex("s3cret");
    let secured = open.replace(
        "listen = \"0.0.0.0:0\"",
        &format!("listen = \"0.0.0.0:0\"\ntoken_sha256 = \"{real_hash}\""),
    );
    let gw = Switchyard::start(&secured);
    let http = client();
    let admin = format!("http://127.0.0.1:{}/metrics", gw.admin.port());
    assert_eq!(get(&http, &admin).await.0, 401);
    let req = http::Request::get(&admin)
        .header("authorization", "Bearer wrong")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(http.request(req).await.unwrap().status(), 401);
    let req = http::Request::get(&admin)
        .header("authorization", "Bearer s3cret")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(http.request(req).await.unwrap().status(), 200);
}

fn sha256_hex(text: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("printf %s '{text}' | sha256sum"))
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}
