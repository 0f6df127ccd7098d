//! The service registry end to end, with real `switchyard` processes: one
//! (R) hosts the embedded registry on its admin listener, another (G) routes
//! to services it finds there, instances come and go through the CLI, the
//! HTTP API and `[[register]]` sidecar entries.
//!
//! Propagation takes "a moment", so tests poll for the state they expect,
//! bounded (a few seconds), and then assert counts and statuses, never how
//! long anything took.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::{Backend, HttpClient, Switchyard, client, free_port, get, switchyard};

/// The longest any poll waits for the registry to propagate a change. The
/// slowest case is a gateway reconnecting to a restarted registry, whose
/// retry backoff grows to 5s.
const PATIENCE: Duration = Duration::from_secs(15);

/// The config of R: hosts the registry (state in `registry.redb` beside the
/// config) on its admin listener at `admin`, plus `extra` (`[[register]]`
/// entries).
fn registry_config(admin: &str, extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "{admin}"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[shutdown]
drain_timeout = "2s"

[registry]
embedded = true
data = "registry.redb"
{extra}
"#
    )
}

/// The config of G: uses R's registry and routes everything to `app`, a
/// service without endpoints (so found in the registry), with `service_extra`
/// (keys of `[services.app]`, then its sub-tables).
fn gateway_config(registry_admin: SocketAddr, service_extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[shutdown]
drain_timeout = "2s"

[registry]
url = "http://{registry_admin}"

[services.app]
{service_extra}

[[routes]]
name = "all"
path = "/{{*rest}}"
service = "app"
"#
    )
}

/// A balancer tuned so that every instance takes traffic soon while a test
/// sends one request at a time. Peak-EWMA picks the endpoint with the lower
/// latency estimate, and with the defaults a newly registered instance
/// (assumed 30ms, `default_rtt`) or one that answered slowly once (a peak
/// that decays over `decay`, 10s) loses every comparison against a fast
/// loopback one for seconds. A `default_rtt` below any real latency makes a
/// new instance the first pick; a short `decay` lets an idle one's estimate
/// fall fast, so it is tried again within a fraction of a second.
const EVERY_INSTANCE_SOON: &str =
    "[services.app.balancer]\ndefault_rtt = \"1us\"\ndecay = \"100ms\"\n";

/// `switchyard registry --url http://<R admin> <args>`: exit code, stdout,
/// stderr.
fn cli(registry: SocketAddr, args: &[&str]) -> (Option<i32>, String, String) {
    let url = format!("http://{registry}");
    let mut all = vec!["registry", "--url", url.as_str()];
    all.extend_from_slice(args);
    let out = switchyard(&all);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Registers `addr` as instance `id` of `app` through the CLI.
fn register(registry: SocketAddr, id: &str, addr: SocketAddr, extra: &[&str]) {
    let addr = addr.to_string();
    let mut args = vec!["register", "app", "--addr", &addr, "--id", id, "--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = cli(registry, &args);
    assert_eq!(code, Some(0), "register {id}: {out}{err}");
}

/// The instance ids of `app` in the registry, from `registry get --json`.
fn instance_ids(registry: SocketAddr) -> Vec<String> {
    let (code, out, err) = cli(registry, &["get", "app", "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let listing: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut ids: Vec<String> = listing["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// The addresses of the endpoints G's balancer has for `app`.
async fn gateway_endpoints(http: &HttpClient, gw: &Switchyard) -> Vec<String> {
    let (_, _, state) = get(http, &gw.admin_url("/admin/services")).await;
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    let mut addrs: Vec<String> = state["services"]["app"]["client"]["endpoints"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|e| e["addr"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    addrs.sort();
    addrs
}

/// Waits (bounded by [`PATIENCE`]) until G's endpoints for `app` are exactly
/// `want`.
async fn wait_for_endpoints(http: &HttpClient, gw: &Switchyard, want: &[SocketAddr]) {
    let mut want: Vec<String> = want.iter().map(ToString::to_string).collect();
    want.sort();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let have = gateway_endpoints(http, gw).await;
        if have == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway's endpoints stayed {have:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of `switchyard_registry_stale{service="app"}` in G's metrics.
async fn stale(http: &HttpClient, gw: &Switchyard) -> Option<String> {
    let (_, _, metrics) = get(http, &gw.admin_url("/metrics")).await;
    metrics
        .lines()
        .find(|l| l.starts_with("switchyard_registry_stale{service=\"app\"}"))
        .and_then(|l| l.split_whitespace().last())
        .map(str::to_owned)
}

async fn wait_for_stale(http: &HttpClient, gw: &Switchyard, want: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let have = stale(http, gw).await;
        if have.as_deref() == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "switchyard_registry_stale stayed {have:?}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends requests through G, each a 200, until `backend` has had more than
/// `hits` (bounded by [`PATIENCE`]: the balancer picks it soon, not
/// necessarily first).
async fn send_until_hit(http: &HttpClient, gw: &Switchyard, backend: &Backend, hits: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while backend.hits() <= hits {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} got no traffic",
            backend.addr
        );
        let (status, _, body) = get(http, &gw.url("/work")).await;
        assert_eq!(status, 200, "{body}");
    }
}

/// Sends `n` requests through G; asserts every one is a 200.
async fn all_ok(http: &HttpClient, gw: &Switchyard, n: usize) {
    for i in 0..n {
        let (status, _, body) = get(http, &gw.url("/work")).await;
        assert_eq!(status, 200, "request {i}: {body}");
    }
}

fn data_file(r: &Switchyard) -> std::path::PathBuf {
    r.config.parent().unwrap().join("registry.redb")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_registered_through_one_process_is_routable_through_another() {
    let backend = Backend::start("one").await;
    let r = Switchyard::start(&registry_config("127.0.0.1:0", ""));
    let g = Switchyard::start(&gateway_config(r.admin, ""));
    let http = client();

    // Nothing registered yet: no endpoint, so a problem answer, not a hang.
    let (status, headers, body) = get(&http, &g.url("/work")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/problem+json"
    );

    register(r.admin, "one", backend.addr, &["--ttl", "30s"]);
    wait_for_endpoints(&http, &g, &[backend.addr]).await;
    let (status, _, body) = get(&http, &g.url("/work")).await;
    assert_eq!((status, body.as_str()), (200, "one"));
    all_ok(&http, &g, 10).await;
    assert_eq!(backend.hits(), 11);
    assert!(
        data_file(&r).exists(),
        "the registry persists to its data file"
    );
    assert_eq!(stale(&http, &g).await.as_deref(), Some("0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_routes_only_to_instances_with_matching_metadata() {
    let v1 = Backend::start("v1").await;
    let v2 = Backend::start("v2").await;
    // R registers both as a sidecar would ([[register]], default TCP check).
    let entry = |id: &str, addr: SocketAddr, version: &str| {
        format!(
            "\n[[register]]\nservice = \"app\"\nid = \"{id}\"\naddr = \"{addr}\"\nmetadata = {{ version = \"{version}\" }}\ncheck = {{ interval = \"100ms\" }}\n"
        )
    };
    let r = Switchyard::start(&registry_config(
        "127.0.0.1:0",
        &format!("{}{}", entry("a", v1.addr, "v1"), entry("b", v2.addr, "v2")),
    ));
    let g = Switchyard::start(&gateway_config(r.admin, "select = { version = \"v2\" }"));
    let http = client();

    let deadline = tokio::time::Instant::now() + PATIENCE;
    while instance_ids(r.admin) != ["a", "b"] {
        assert!(tokio::time::Instant::now() < deadline, "both registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for_endpoints(&http, &g, &[v2.addr]).await;
    all_ok(&http, &g, 20).await;
    assert_eq!((v1.hits(), v2.hits()), (0, 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_registry_leaves_gateways_routing_then_they_catch_up() {
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    // The registry must come back on the same address, so its port is fixed.
    let admin = format!("127.0.0.1:{}", free_port());
    let mut r = Switchyard::start(&registry_config(&admin, ""));
    let g = Switchyard::start(&gateway_config(r.admin, EVERY_INSTANCE_SOON));
    let http = client();

    register(r.admin, "one", one.addr, &["--ttl", "30s"]);
    wait_for_endpoints(&http, &g, &[one.addr]).await;
    all_ok(&http, &g, 5).await;

    r.kill();
    wait_for_stale(&http, &g, "1").await;
    let before = one.hits();
    all_ok(&http, &g, 20).await;
    assert_eq!(one.hits(), before + 20, "stale but serving");
    let (code, _, err) = cli(r.admin, &["list"]);
    assert_eq!(
        code,
        Some(1),
        "an unreachable registry is a runtime failure"
    );
    assert!(err.contains("unavailable"), "{err}");

    // Same config file, same data file, same port: the instance registered
    // before the crash is still there, and G resumes its watch.
    let r = Switchyard::start_file(r.config.clone());
    assert_eq!(r.admin.to_string(), admin);
    assert_eq!(instance_ids(r.admin), ["one"]);
    register(r.admin, "two", two.addr, &["--ttl", "30s"]);
    wait_for_endpoints(&http, &g, &[one.addr, two.addr]).await;
    wait_for_stale(&http, &g, "0").await;
    send_until_hit(&http, &g, &two, 0).await;
    send_until_hit(&http, &g, &one, one.hits()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_check_deregisters_the_instance_and_traffic_stops() {
    let sick = Backend::start("sick").await;
    let well = Backend::start("well").await;
    let checked = |id: &str, addr: SocketAddr| {
        format!(
            "\n[[register]]\nservice = \"app\"\nid = \"{id}\"\naddr = \"{addr}\"\nttl = \"5s\"\n\
             check = {{ http = \"/healthz\", interval = \"100ms\", timeout = \"500ms\", unhealthy_threshold = 2 }}\n"
        )
    };
    let r = Switchyard::start(&registry_config(
        "127.0.0.1:0",
        &format!(
            "{}{}",
            checked("sick", sick.addr),
            checked("well", well.addr)
        ),
    ));
    let g = Switchyard::start(&gateway_config(r.admin, EVERY_INSTANCE_SOON));
    let http = client();

    wait_for_endpoints(&http, &g, &[sick.addr, well.addr]).await;
    assert_eq!(instance_ids(r.admin), ["sick", "well"]);
    all_ok(&http, &g, 40).await;
    assert!(sick.hits() > 0 && well.hits() > 0);

    sick.set_healthy(false);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while instance_ids(r.admin) != ["well"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the failing instance is deregistered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for_endpoints(&http, &g, &[well.addr]).await;
    let before = (sick.hits(), well.hits());
    all_ok(&http, &g, 30).await;
    assert_eq!(
        sick.hits(),
        before.0,
        "no traffic to a deregistered instance"
    );
    assert_eq!(well.hits(), before.1 + 30);
    let (_, _, metrics) = get(&http, &r.admin_url("/metrics")).await;
    assert!(
        metrics.contains("switchyard_registered{service=\"app\",instance=\"sick\"} 0"),
        "{metrics}"
    );

    // Healthy again: registered again, traffic returns.
    sick.set_healthy(true);
    wait_for_endpoints(&http, &g, &[sick.addr, well.addr]).await;
    send_until_hit(&http, &g, &sick, before.0).await;
}

/// Sends requests through G from `workers` tasks until `stop`; counts
/// successes and failures (any error or non-200).
fn load(
    g: &Switchyard,
    workers: usize,
    stop: &Arc<AtomicBool>,
) -> (
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
    Vec<tokio::task::JoinHandle<Vec<String>>>,
) {
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let tasks = (0..workers)
        .map(|_| {
            let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
            let url = g.url("/work");
            tokio::spawn(async move {
                let http = client();
                let mut failures = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let req = http::Request::get(&url)
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    match http.request(req).await {
                        Ok(res) if res.status() == 200 => {
                            let _ = res.into_body().collect().await;
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(res) => {
                            let status = res.status();
                            let body = res.into_body().collect().await.map(|b| b.to_bytes());
                            failures.push(format!("{status}: {body:?}"));
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(err) => {
                            failures.push(err.to_string());
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
                failures
            })
        })
        .collect();
    (ok, failed, tasks)
}

/// Waits (bounded) until `backend` has received more than `hits` requests.
async fn wait_for_hits(backend: &Backend, hits: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while backend.hits() <= hits {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backend got traffic"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Lets the load run until `ok` has grown by `n` more requests (bounded).
async fn wait_for_more_ok(ok: &AtomicUsize, n: usize) {
    let target = ok.load(Ordering::SeqCst) + n;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while ok.load(Ordering::SeqCst) < target {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the load kept going"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Stops the load and returns every failure it saw.
async fn stop_load(
    stop: &AtomicBool,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
) -> Vec<String> {
    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await.unwrap());
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_coming_and_going_under_load_lose_no_request() {
    let stable = Backend::start("stable").await;
    let r = Switchyard::start(&registry_config("127.0.0.1:0", ""));
    // Default balancer and policy.
    let g = Switchyard::start(&gateway_config(r.admin, ""));
    let http = client();
    register(r.admin, "stable", stable.addr, &["--ttl", "30s"]);
    wait_for_endpoints(&http, &g, &[stable.addr]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, tasks) = load(&g, 4, &stop);

    // A second instance joins, takes traffic, and leaves gracefully
    // (deregistered while its process keeps serving what it was sent), five
    // times, while four clients keep sending.
    let churn = Backend::start("churn").await;
    for round in 0..5 {
        register(r.admin, "churn", churn.addr, &["--ttl", "30s"]);
        wait_for_hits(&churn, churn.hits()).await;
        let (code, out, err) = cli(r.admin, &["deregister", "app", "churn"]);
        assert_eq!(code, Some(0), "round {round}: {out}{err}");
        wait_for_endpoints(&http, &g, &[stable.addr]).await;
        wait_for_more_ok(&ok, 20).await;
    }
    let failures = stop_load(&stop, tasks).await;
    assert_eq!(failed.load(Ordering::SeqCst), 0, "{failures:?}");
    assert!(ok.load(Ordering::SeqCst) >= 100);
    assert!(
        churn.hits() >= 5,
        "every round of the churning instance got traffic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_costs_retries_then_is_ejected() {
    let stable = Backend::start("stable").await;
    let r = Switchyard::start(&registry_config("127.0.0.1:0", ""));
    // Default balancer, outlier ejection (5 failures in a row) and policy (3
    // attempts, budgeted, 25ms backoff).
    let g = Switchyard::start(&gateway_config(r.admin, ""));
    let http = client();
    register(r.admin, "stable", stable.addr, &["--ttl", "30s"]);
    wait_for_endpoints(&http, &g, &[stable.addr]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, tasks) = load(&g, 4, &stop);

    // An instance joins and its process dies (connections reset, connects
    // refused) while still registered, as after a crash: the attempts that
    // land on it fail and are retried, until outlier ejection takes it out of
    // the rotation; then it is deregistered (a crashed sidecar's lease would
    // expire). A request is lost only if all its attempts picked the dead
    // instance before the ejection: the balancer does not steer a retry away
    // from the endpoint that just failed (see docs/registry.md).
    let doomed = Backend::start("doomed").await;
    register(r.admin, "doomed", doomed.addr, &["--ttl", "30s"]);
    wait_for_hits(&doomed, 0).await;
    doomed.kill();
    let ejected = format!(
        "switchyard_endpoint_ejections_total{{service=\"app\",endpoint=\"{}\"",
        doomed.addr
    );
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !get(&http, &g.admin_url("/metrics"))
        .await
        .2
        .contains(&ejected)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead instance is ejected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, out, err) = cli(r.admin, &["deregister", "app", "doomed"]);
    assert_eq!(code, Some(0), "{out}{err}");
    wait_for_endpoints(&http, &g, &[stable.addr]).await;
    let lost = failed.load(Ordering::SeqCst);

    // From here on nothing fails.
    wait_for_more_ok(&ok, 100).await;
    let failures = stop_load(&stop, tasks).await;
    assert_eq!(failed.load(Ordering::SeqCst), lost, "{failures:?}");
    // At most the attempts in flight when it died, plus the five it took to
    // eject it, all burned on it three at a time: a handful, never a storm.
    assert!(lost <= 3, "{failures:?}");
    for failure in &failures {
        assert!(
            failure.starts_with("502") && failure.contains("retries-exhausted"),
            "a lost request is a clean problem answer: {failure}"
        );
    }
    let (_, _, metrics) = get(&http, &g.admin_url("/metrics")).await;
    let retries: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_policy_retries_total{service=\"app\"} "))
        .map_or(0.0, |v| v.parse().unwrap());
    assert!(
        retries >= 1.0,
        "the dead instance's failures were retried: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_registers_lists_gets_and_deregisters_and_refuses_bad_input() {
    let r = Switchyard::start(&registry_config("127.0.0.1:0", ""));
    let backend = Backend::start("one").await;
    let addr = backend.addr.to_string();

    let (code, out, err) = cli(
        r.admin,
        &[
            "register",
            "app",
            "--addr",
            &addr,
            "--id",
            "one",
            "--meta",
            "version=v2",
            "--weight",
            "3",
            "--ttl",
            "1m",
            "--owner",
            "tester",
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let lease: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(lease["ttl"], "1m", "{out}");
    assert!(lease["id"].as_u64().is_some() && lease["revision"].as_u64().is_some());

    let (code, out, _) = cli(r.admin, &["list", "--json"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        serde_json::json!(["app"])
    );

    let (code, out, _) = cli(r.admin, &["get", "app", "--json"]);
    assert_eq!(code, Some(0));
    let listing: serde_json::Value = serde_json::from_str(&out).unwrap();
    let instance = &listing["instances"][0];
    assert_eq!(instance["id"], "one");
    assert_eq!(instance["addr"], addr.as_str());
    assert_eq!(instance["weight"], 3);
    assert_eq!(instance["metadata"]["version"], "v2");
    assert_eq!(instance["owner"], "tester");
    assert_eq!(instance["lease"], lease["id"]);
    let revision = listing["revision"].as_u64().unwrap();

    // Bad input: exit 2, a message naming the problem, nothing registered.
    let refused: [(&[&str], &str); 8] = [
        (&["--ttl", "0s"], "ttl"),
        (&["--ttl", "100days"], "ttl"),
        (&["--addr", "0.0.0.0:9000"], "addr"),
        (&["--addr", "127.0.0.1:0"], "addr"),
        (&["--addr", "not-an-address"], "--addr"),
        (&["--weight", "0"], "weight"),
        (&["--meta", "novalue"], "key=value"),
        // The same instance id, another owner.
        (
            &["--id", "one", "--owner", "intruder"],
            "registered by owner \"tester\"",
        ),
    ];
    for (bad, says) in refused {
        let mut args = vec!["register", "app"];
        if !bad.contains(&"--id") {
            args.extend(["--id", "two"]);
        }
        if !bad.contains(&"--addr") {
            args.extend(["--addr", &addr]);
        }
        args.extend_from_slice(bad);
        let (code, out, err) = cli(r.admin, &args);
        assert_eq!(code, Some(2), "{bad:?}: {out}{err}");
        assert!(err.contains(says), "{bad:?}: {err}");
    }
    let (code, _, err) = cli(r.admin, &["register", "b@d", "--addr", &addr]);
    assert_eq!(code, Some(2));
    assert!(err.contains("service name"), "{err}");
    let (code, _, err) = cli(r.admin, &["deregister", "app", "one"]);
    assert_eq!(code, Some(2), "only the owner may deregister");
    assert!(err.contains("conflict"), "{err}");
    let (_, out, _) = cli(r.admin, &["get", "app", "--json"]);
    let after: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(after, listing, "refused input changed nothing");
    assert_eq!(after["revision"].as_u64(), Some(revision));
    let (_, out, _) = cli(r.admin, &["list", "--json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        serde_json::json!(["app"])
    );

    let (code, out, err) = cli(
        r.admin,
        &["deregister", "app", "one", "--owner", "tester", "--json"],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(instance_ids(r.admin), Vec::<String>::new());
    let (_, out, _) = cli(r.admin, &["list", "--json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        serde_json::json!([])
    );
    let (code, _, err) = cli(r.admin, &["deregister", "app", "one", "--owner", "tester"]);
    assert_eq!(code, Some(2), "already gone");
    assert!(err.contains("not found"), "{err}");

    let (code, _, err) = cli("127.0.0.1:1".parse().unwrap(), &["list"]);
    assert_eq!(code, Some(1), "{err}");
    let out = switchyard(&["registry", "--url", "ftp://x", "list"]);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_watch_prints_changes_as_json_lines() {
    use std::io::BufRead;

    let r = Switchyard::start(&registry_config("127.0.0.1:0", ""));
    let url = format!("http://{}", r.admin);
    let mut watch = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["registry", "--url", &url, "watch", "app", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let next = || -> serde_json::Value {
        let line = lines.recv_timeout(PATIENCE).expect("a watch line");
        serde_json::from_str(&line).unwrap()
    };
    let first = next();
    assert_eq!(first["kind"], "resync", "{first}");

    register(r.admin, "one", "127.0.0.1:9".parse().unwrap(), &[]);
    let put = next();
    assert_eq!(
        (put["kind"].as_str(), put["instance"]["id"].as_str()),
        (Some("put"), Some("one")),
        "{put}"
    );
    let (code, _, err) = cli(r.admin, &["deregister", "app", "one"]);
    assert_eq!(code, Some(0), "{err}");
    let delete = next();
    assert_eq!(delete["kind"], "delete", "{delete}");
    assert_eq!(delete["instance_id"], "one", "{delete}");
    assert!(delete["revision"].as_u64() > put["revision"].as_u64());
    watch.kill().unwrap();
    watch.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_token_guards_the_registry_api_too() {
    let hash = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"; // "secret"
    let r = Switchyard::start(&registry_config("127.0.0.1:0", "").replace(
        "[[listeners]]",
        &format!("token_sha256 = \"{hash}\"\n\n[[listeners]]"),
    ));
    let http = client();
    let (status, _, _) = get(&http, &r.admin_url("/v1/registry/services")).await;
    assert_eq!(status, 401);
    let req = http::Request::get(r.admin_url("/v1/registry/services"))
        .header("authorization", "Bearer secret")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(http.request(req).await.unwrap().status(), 200);
}

#[test]
fn the_registry_example_is_a_valid_config() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/registry.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    assert!(text.contains("[registry]") && text.contains("[[register]]"));
    let out = switchyard(&["config", "check", example.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}
