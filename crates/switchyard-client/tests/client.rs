//! The service client against real loopback backends that can be told to
//! fail, slow down or die. Assertions are on counts and states, not timings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use switchyard_client::{
    BalancerConfig, EndpointSnapshot, HealthCheckConfig, NoHealthyEndpoint, OutlierConfig,
    ServiceClient, ServiceSnapshot,
};
use switchyard_discovery::{Endpoint, Endpoints};
use switchyard_transport::{Body, TransportConfig};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tower_service::Service;

/// What a backend does, changeable while it runs.
#[derive(Default)]
struct Control {
    /// Requests served, health checks excluded.
    hits: AtomicUsize,
    /// Delay before answering, in milliseconds.
    delay_ms: AtomicU64,
    /// 0: never fail; n: answer every n-th request with 503.
    fail_every: AtomicU32,
    /// Status of `/healthz` (200 unless set).
    health_status: AtomicU16,
    /// Health checks received.
    health_checks: AtomicUsize,
}

struct Backend {
    addr: SocketAddr,
    control: Arc<Control>,
    server: tokio::task::AbortHandle,
}

impl Backend {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let control = Arc::new(Control::default());
        control.health_status.store(200, Ordering::SeqCst);
        let ctl = control.clone();
        let server = tokio::spawn(async move {
            // Connections live in this task's JoinSet: aborting the task
            // closes the listener and every open connection.
            let mut conns = JoinSet::new();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let ctl = ctl.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| handle(ctl.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
        .abort_handle();
        Self {
            addr,
            control,
            server,
        }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.addr)
    }

    fn hits(&self) -> usize {
        self.control.hits.load(Ordering::SeqCst)
    }

    fn reset_hits(&self) {
        self.control.hits.store(0, Ordering::SeqCst);
    }

    /// Stops listening and closes open connections: connects are refused.
    fn kill(&self) {
        self.server.abort();
    }
}

async fn handle(
    ctl: Arc<Control>,
    req: http::Request<Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/healthz" {
        ctl.health_checks.fetch_add(1, Ordering::SeqCst);
        let status = ctl.health_status.load(Ordering::SeqCst);
        let mut res = http::Response::new(Full::new(Bytes::new()));
        *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
        return Ok(res);
    }
    let n = ctl.hits.fetch_add(1, Ordering::SeqCst) + 1;
    let delay = ctl.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let every = ctl.fail_every.load(Ordering::SeqCst) as usize;
    let mut res = http::Response::new(Full::new(Bytes::from_static(b"ok")));
    if every > 0 && n.is_multiple_of(every) {
        *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    }
    Ok(res)
}

/// Outlier settings for tests: rules off unless a test turns them on, and
/// a short interval.
fn quiet_outlier() -> OutlierConfig {
    OutlierConfig {
        consecutive_failures: 0,
        interval: Duration::from_millis(100),
        success_rate_min_requests: 10,
        success_rate_threshold: 0.0,
        latency_factor: 0.0,
        ..OutlierConfig::default()
    }
}

fn client(
    backends: &[&Backend],
    outlier: OutlierConfig,
    health_check: Option<HealthCheckConfig>,
) -> (ServiceClient, watch::Sender<Endpoints>) {
    client_with(backends, BalancerConfig::default(), outlier, health_check)
}

fn client_with(
    backends: &[&Backend],
    balancer: BalancerConfig,
    outlier: OutlierConfig,
    health_check: Option<HealthCheckConfig>,
) -> (ServiceClient, watch::Sender<Endpoints>) {
    let endpoints: Endpoints = backends.iter().map(|b| b.endpoint()).collect();
    let (tx, rx) = watch::channel(endpoints);
    let client = ServiceClient::new(
        "test",
        TransportConfig::default(),
        balancer,
        outlier,
        health_check,
        rx,
    )
    .unwrap();
    (client, tx)
}

/// Sends `n` requests over `concurrency` workers; returns (successes, errors).
async fn send(client: &ServiceClient, n: usize, concurrency: usize) -> (usize, usize) {
    let mut workers = JoinSet::new();
    for w in 0..concurrency {
        let mut client = client.clone();
        let count = n / concurrency + usize::from(w < n % concurrency);
        workers.spawn(async move {
            let (mut ok, mut err) = (0, 0);
            for _ in 0..count {
                let req = http::Request::get("/work?x=1").body(Body::empty()).unwrap();
                match client.call(req).await {
                    Ok(res) if res.status() == 200 => {
                        res.into_body().collect_bytes().await.unwrap();
                        ok += 1;
                    }
                    _ => err += 1,
                }
            }
            (ok, err)
        });
    }
    let (mut ok, mut err) = (0, 0);
    while let Some(r) = workers.join_next().await {
        let (o, e) = r.unwrap();
        ok += o;
        err += e;
    }
    (ok, err)
}

fn endpoint<'a>(snap: &'a ServiceSnapshot, b: &Backend) -> &'a EndpointSnapshot {
    snap.endpoints.iter().find(|e| e.addr == b.addr).unwrap()
}

/// Polls `cond` on the client's snapshot until it holds (a guard of 10s
/// against hanging, not a timing assertion).
async fn wait_for(client: &ServiceClient, what: &str, cond: impl Fn(&ServiceSnapshot) -> bool) {
    let poll = async {
        while !cond(&client.snapshot()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .is_err()
    {
        panic!("never saw: {what}; snapshot: {:#?}", client.snapshot());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_spread_over_healthy_endpoints() {
    let b = [
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
    ];
    let (client, _tx) = client(&[&b[0], &b[1], &b[2]], quiet_outlier(), None);

    let (ok, err) = send(&client, 300, 4).await;
    assert_eq!((ok, err), (300, 0));
    for backend in &b {
        tracing::info!(hits = backend.hits(), "backend share");
        assert!(backend.hits() > 0, "every endpoint gets some traffic");
    }
    // The snapshot counts what the backends saw.
    let snap = client.snapshot();
    assert_eq!(snap.eligible, 3);
    let total: u64 = snap.endpoints.iter().map(|e| e.requests_total).sum();
    assert_eq!(total, 300);
    assert!(snap.endpoints.iter().all(|e| e.in_flight == 0));
    assert!(
        serde_json::to_string(&snap)
            .unwrap()
            .contains("\"ewma_ms\"")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_a_killed_endpoint_is_ejected_and_traffic_moves_on() {
    let b = [
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
    ];
    let outlier = OutlierConfig {
        consecutive_failures: 5,
        ..quiet_outlier()
    };
    // A short decay: after a failure makes the dead endpoint look slow, its
    // estimate soon falls back and it is picked (and fails) again. With the
    // default 10 s, whether five failures in a row come before the balancer
    // stops picking it is up to the dice.
    let balancer = BalancerConfig {
        decay: Duration::from_millis(50),
        ..BalancerConfig::default()
    };
    let (client, _tx) = client_with(&[&b[0], &b[1], &b[2]], balancer, outlier, None);
    assert_eq!(send(&client, 60, 2).await, (60, 0));

    // Kill one: its pooled connections close and new connects are refused.
    b[0].kill();
    // Send, bounded, until the dead endpoint is ejected.
    let (mut errors, mut sent) = (0, 0);
    while sent < 2000 && !endpoint(&client.snapshot(), &b[0]).ejected {
        errors += send(&client, 20, 2).await.1;
        sent += 20;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // It failed at least the five times in a row that eject it.
    assert!(errors >= 5, "{errors} errors in {sent} requests");
    let snap = client.snapshot();
    let dead = endpoint(&snap, &b[0]);
    assert!(dead.ejected, "{snap:#?}");
    assert_eq!(dead.ejection_reason, Some("consecutive_failures"));
    assert!(dead.ejected_for_ms.unwrap() > 0);
    assert!(!endpoint(&snap, &b[1]).ejected && !endpoint(&snap, &b[2]).ejected);

    // From now on every request goes to the live two.
    b[1].reset_hits();
    b[2].reset_hits();
    assert_eq!(send(&client, 100, 2).await, (100, 0));
    assert_eq!(b[1].hits() + b[2].hits(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_an_endpoint_slowed_ten_times_loses_most_of_its_traffic() {
    let b = [
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
    ];
    for backend in &b {
        backend.control.delay_ms.store(2, Ordering::SeqCst);
    }
    b[0].control.delay_ms.store(20, Ordering::SeqCst);
    // No ejection at all: this is the balancer alone.
    let (client, _tx) = client(&[&b[0], &b[1], &b[2]], quiet_outlier(), None);

    // Warm up so every endpoint has a latency sample.
    send(&client, 30, 3).await;
    for backend in &b {
        backend.reset_hits();
    }
    assert_eq!(send(&client, 400, 4).await, (400, 0));
    let slow = b[0].hits();
    tracing::info!(slow, fast = b[1].hits() + b[2].hits(), "shares");
    assert!(slow * 100 < 400 * 20, "slow endpoint got {slow} of 400");
    assert!(!client.snapshot().endpoints.iter().any(|e| e.ejected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_an_endpoint_failing_half_its_requests_is_ejected_by_success_rate() {
    let b = [
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
    ];
    b[0].control.fail_every.store(2, Ordering::SeqCst);
    let outlier = OutlierConfig {
        success_rate_threshold: 0.8,
        ..quiet_outlier()
    };
    let (client, _tx) = client(&[&b[0], &b[1], &b[2]], outlier, None);

    // Keep traffic flowing until the interval evaluation ejects it.
    let flow = {
        let client = client.clone();
        tokio::spawn(async move {
            loop {
                send(&client, 40, 4).await;
            }
        })
    };
    wait_for(&client, "the failing endpoint ejected", |s| {
        endpoint(s, &b[0]).ejected
    })
    .await;
    flow.abort();

    let snap = client.snapshot();
    assert_eq!(endpoint(&snap, &b[0]).ejection_reason, Some("success_rate"));
    assert_eq!(endpoint(&snap, &b[1]).ejections, 0);
    assert_eq!(endpoint(&snap, &b[2]).ejections, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_a_failing_health_check_takes_an_endpoint_out_until_it_recovers() {
    let b = [
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
    ];
    let hc = HealthCheckConfig {
        interval: Duration::from_millis(20),
        ..HealthCheckConfig::new("/healthz")
    };
    let (client, _tx) = client(&[&b[0], &b[1], &b[2]], quiet_outlier(), Some(hc));

    b[0].control.health_status.store(500, Ordering::SeqCst);
    wait_for(&client, "b0 unhealthy", |s| !endpoint(s, &b[0]).healthy).await;
    let snap = client.snapshot();
    assert_eq!((snap.eligible, snap.unhealthy), (2, 1));

    // Unhealthy: no traffic.
    b[0].reset_hits();
    assert_eq!(send(&client, 100, 2).await, (100, 0));
    assert_eq!(b[0].hits(), 0);

    // Passing again: back after healthy_threshold checks, and gets traffic.
    b[0].control.health_status.store(204, Ordering::SeqCst);
    wait_for(&client, "b0 healthy", |s| endpoint(s, &b[0]).healthy).await;
    assert_eq!(send(&client, 300, 4).await, (300, 0));
    assert!(b[0].hits() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_traffic_follows_the_endpoint_set() {
    let b = [
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
    ];
    let (client, tx) = client(&[&b[0], &b[1]], quiet_outlier(), None);
    assert_eq!(send(&client, 100, 2).await, (100, 0));
    assert!(b[0].hits() > 0 && b[1].hits() > 0);
    assert_eq!(b[2].hits(), 0);

    // A request in flight to b0 when b0 leaves the set still completes.
    b[0].control.delay_ms.store(300, Ordering::SeqCst);
    tx.send(vec![b[0].endpoint()].into()).unwrap();
    wait_for(&client, "only b0", |s| s.endpoints.len() == 1).await;
    let in_flight = {
        let mut client = client.clone();
        tokio::spawn(async move {
            let req = http::Request::get("/slow").body(Body::empty()).unwrap();
            client.call(req).await.map(|r| r.status())
        })
    };
    wait_for(&client, "b0 busy", |s| endpoint(s, &b[0]).in_flight == 1).await;

    // Swap in b1 and b2; b0 gets nothing new.
    tx.send(vec![b[1].endpoint(), b[2].endpoint()].into())
        .unwrap();
    wait_for(&client, "b1 and b2 only", |s| {
        s.endpoints.len() == 2 && s.endpoints.iter().all(|e| e.addr != b[0].addr)
    })
    .await;
    for backend in &b {
        backend.reset_hits();
    }
    assert_eq!(send(&client, 100, 2).await, (100, 0));
    assert_eq!(b[0].hits(), 0);
    assert!(b[1].hits() > 0 && b[2].hits() > 0);
    assert_eq!(in_flight.await.unwrap().unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_ejection_cap_holds_and_no_endpoint_is_an_error() {
    let b = [
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
    ];
    let outlier = OutlierConfig {
        consecutive_failures: 3,
        max_ejection_percent: 50,
        ..quiet_outlier()
    };
    let (client, tx) = client(&[&b[0], &b[1], &b[2]], outlier, None);

    // Every endpoint dies; 50% of three lets only one be ejected.
    for backend in &b {
        backend.kill();
    }
    let (ok, _) = send(&client, 100, 2).await;
    assert_eq!(ok, 0);
    let snap = client.snapshot();
    assert_eq!(snap.ejected, 1, "{snap:#?}");
    assert_eq!(snap.eligible, 2);

    // An empty endpoint set: the call fails with the typed error.
    tx.send(Vec::new().into()).unwrap();
    wait_for(&client, "no endpoints", |s| s.endpoints.is_empty()).await;
    let req = http::Request::get("/").body(Body::empty()).unwrap();
    let err = client.clone().call(req).await.unwrap_err();
    let err = err.downcast_ref::<NoHealthyEndpoint>().unwrap();
    assert_eq!(&*err.service, "test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_all_endpoints_unhealthy_is_no_healthy_endpoint() {
    let b = Backend::start().await;
    b.control.health_status.store(503, Ordering::SeqCst);
    let hc = HealthCheckConfig {
        interval: Duration::from_millis(20),
        unhealthy_threshold: 1,
        ..HealthCheckConfig::new("/healthz")
    };
    let (client, _tx) = client(&[&b], quiet_outlier(), Some(hc));
    wait_for(&client, "unhealthy", |s| s.eligible == 0).await;
    let req = http::Request::get("/").body(Body::empty()).unwrap();
    let err = client.clone().call(req).await.unwrap_err();
    assert!(err.is::<NoHealthyEndpoint>(), "{err}");
    assert_eq!(b.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_client_stops_its_health_checks() {
    let b = Backend::start().await;
    let hc = HealthCheckConfig {
        interval: Duration::from_millis(10),
        ..HealthCheckConfig::new("/healthz")
    };
    let (client, _tx) = client(&[&b], quiet_outlier(), Some(hc));
    let checks = || b.control.health_checks.load(Ordering::SeqCst);
    wait_for(&client, "a few health checks", |_| checks() >= 3).await;

    // Dropping the last clone ends the background task and its checkers.
    drop(client);
    let after_drop = checks();
    // Ten check intervals later at most the one check already on the wire
    // at drop time has arrived; a leaked checker would have sent ~10.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        checks() <= after_drop + 1,
        "{} checks after drop",
        checks() - after_drop
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_shared_request_go_to_endpoints_not_tried_yet() {
    use switchyard_policy::PolicyRequest;
    let b = [
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
    ];
    let (client, _tx) = client(&[&b[0], &b[1], &b[2]], quiet_outlier(), None);
    // The attempts of one call: copies of one request, sharing its head and
    // its record of the endpoints tried.
    let req =
        switchyard_client::SharedRequest::new(http::Request::get("/").body(Body::empty()).unwrap())
            .tracking_attempts();
    for _ in 0..3 {
        let copy = req.try_clone().expect("an empty body can be sent again");
        let res = client.clone().call(copy).await.unwrap();
        assert_eq!(res.status(), 200);
    }
    for backend in &b {
        assert_eq!(backend.hits(), 1, "every endpoint got exactly one attempt");
    }
    // A body that can't be sent twice makes a request that can't be copied.
    let once = switchyard_client::SharedRequest::new(
        http::Request::post("/")
            .body(Body::full("x").sent_once())
            .unwrap(),
    );
    assert!(once.try_clone().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_of_one_call_go_to_endpoints_not_tried_yet() {
    let b = [
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
    ];
    let (client, _tx) = client(&[&b[0], &b[1], &b[2]], quiet_outlier(), None);
    // Three attempts of one call (copies sharing the record) reach three
    // different endpoints; a fourth may go anywhere again.
    let attempted = switchyard_client::Attempted::default();
    for _ in 0..3 {
        let mut req = http::Request::get("/").body(Body::empty()).unwrap();
        req.extensions_mut().insert(attempted.clone());
        let res = client.clone().call(req).await.unwrap();
        assert_eq!(res.status(), 200);
    }
    let tried = attempted.endpoints();
    assert_eq!(tried.len(), 3);
    for backend in &b {
        assert_eq!(
            backend.hits(),
            1,
            "every endpoint got exactly one attempt: {tried:?}"
        );
    }
    let mut req = http::Request::get("/").body(Body::empty()).unwrap();
    req.extensions_mut().insert(attempted.clone());
    assert_eq!(client.clone().call(req).await.unwrap().status(), 200);
    assert_eq!(b.iter().map(Backend::hits).sum::<usize>(), 4);
}
