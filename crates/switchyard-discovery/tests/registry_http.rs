//! The registry over its real HTTP API on loopback: watch resume after a
//! disconnect, problem answers to bad input, and discovery that stays up
//! (stale) while the registry process is gone and catches up when it returns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use switchyard_discovery::{
    Discovery,
    registry::{
        EmbeddedRegistry, Registration, Registry, RegistryDiscovery, RegistryError, RemoteRegistry,
        WatchEvent, WatchEventKind, http,
    },
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(listener: TcpListener, registry: Arc<dyn Registry>) -> Self {
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(http::serve(listener, http::router(registry), async move {
            let _ = stopped.await;
        }));
        Self { addr, stop, task }
    }

    /// Stops accepting and cuts every connection, like a killed process.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

async fn local() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

fn reg(id: &str, port: u16) -> Registration {
    let mut r = Registration::new("users", id, SocketAddr::from(([127, 0, 0, 1], port)), "me");
    r.metadata.insert(
        "zone".into(),
        if port.is_multiple_of(2) { "a" } else { "b" }.into(),
    );
    r
}

/// Waits (at most 10s) until `cond` holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[tokio::test]
async fn watch_resumes_by_revision_after_a_disconnect() {
    let registry: Arc<dyn Registry> = Arc::new(EmbeddedRegistry::open(None).unwrap());
    let server = Server::start(local().await, registry).await;
    let client = RemoteRegistry::new(&format!("http://{}", server.addr)).unwrap();

    client.register(reg("u1", 9001)).await.unwrap();
    let mut watch = client.watch("users", None).await.unwrap();
    let snapshot = watch.next().await.unwrap().unwrap();
    assert!(
        matches!(snapshot.kind, WatchEventKind::Resync { ref instances } if instances.len() == 1)
    );
    client.register(reg("u2", 9002)).await.unwrap();
    let seen = watch.next().await.unwrap().unwrap();
    assert_eq!(seen.revision, 2);
    tracing::info!(revision = seen.revision, "watcher disconnects");
    drop(watch);

    // Changes while the watcher is away, some to other services.
    client.register(reg("u3", 9003)).await.unwrap();
    let mut other = reg("o1", 9100);
    other.service = "orders".into();
    client.register(other).await.unwrap();
    client.deregister("users", "u1", "me").await.unwrap();
    let mut moved = reg("u2", 9012);
    moved.weight = 3;
    client.register(moved).await.unwrap();

    let mut watch = client.watch("users", Some(seen.revision)).await.unwrap();
    let mut missed = Vec::new();
    for _ in 0..3 {
        missed.push(watch.next().await.unwrap().unwrap());
    }
    let summary: Vec<(u64, String)> = missed
        .iter()
        .map(|e| match &e.kind {
            WatchEventKind::Put { instance } => (e.revision, format!("put {}", instance.id)),
            WatchEventKind::Delete { instance_id } => (e.revision, format!("delete {instance_id}")),
            WatchEventKind::Resync { .. } => (e.revision, "resync".into()),
        })
        .collect();
    assert_eq!(
        summary,
        [
            (3, "put u3".to_owned()),
            (5, "delete u1".to_owned()),
            (6, "put u2".to_owned())
        ]
    );
    // Nothing more (no duplicate), until the next change arrives next.
    client.register(reg("u4", 9004)).await.unwrap();
    let next = watch.next().await.unwrap().unwrap();
    assert_eq!(next.revision, 7);
    server.stop().await;
    // The server went away: the stream ends or fails, it does not hang.
    let end = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap();
    assert!(!matches!(end, Some(Ok(_))), "{end:?}");
}

async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: impl Into<Bytes>,
) -> (u16, String, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = ::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn bad_input_gets_a_problem_and_changes_nothing() {
    let registry = Arc::new(EmbeddedRegistry::open(None).unwrap());
    let server = Server::start(local().await, Arc::clone(&registry) as Arc<dyn Registry>).await;
    let a = server.addr;

    let (status, ct, body) = raw(
        a,
        "PUT",
        "/v1/registry/services/users/instances/u1",
        r#"{"addr":"127.0.0.1:9001","owner":"host-a","ttl":"10s","metadata":{"version":"2"}}"#,
    )
    .await;
    assert_eq!((status, ct.as_str()), (200, "application/json"), "{body}");
    let lease: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(lease["ttl"], "10s");
    assert_eq!(lease["revision"], 1);

    let before = registry.list("users").await.unwrap();
    let put = "/v1/registry/services/users/instances/u1";
    let big = format!(
        r#"{{"addr":"127.0.0.1:9001","owner":"host-a","metadata":{{"x":"{}"}}}}"#,
        "y".repeat(http::MAX_BODY_BYTES)
    );
    let cases: Vec<(&str, String, String, u16, &str)> = vec![
        (
            "PUT",
            put.into(),
            "{not json".into(),
            400,
            "invalid-registration",
        ),
        (
            "PUT",
            put.into(),
            r#"{"addr":"127.0.0.1:9001","owner":"host-a","ttl":"1000h"}"#.into(),
            400,
            "invalid-registration",
        ),
        (
            "PUT",
            put.into(),
            r#"{"addr":"127.0.0.1:9001","owner":"host-a","ttl":"0s"}"#.into(),
            400,
            "invalid-registration",
        ),
        (
            "PUT",
            put.into(),
            r#"{"addr":"0.0.0.0:9001","owner":"host-a"}"#.into(),
            400,
            "invalid-registration",
        ),
        (
            "PUT",
            put.into(),
            r#"{"addr":"nowhere","owner":"host-a"}"#.into(),
            400,
            "invalid-registration",
        ),
        (
            "PUT",
            put.into(),
            r#"{"addr":"127.0.0.1:9001","owner":"host-a","wieght":2}"#.into(),
            400,
            "invalid-registration",
        ),
        (
            "PUT",
            put.into(),
            r#"{"addr":"127.0.0.1:9001"}"#.into(),
            400,
            "invalid-registration",
        ),
        (
            "PUT",
            put.into(),
            r#"{"addr":"127.0.0.1:9009","owner":"host-b"}"#.into(),
            409,
            "registration-conflict",
        ),
        (
            "PUT",
            "/v1/registry/services/bad%20name/instances/u1".into(),
            r#"{"addr":"127.0.0.1:9001","owner":"host-a"}"#.into(),
            400,
            "invalid-registration",
        ),
        ("PUT", put.into(), big, 413, "payload-too-large"),
        (
            "DELETE",
            put.into(),
            String::new(),
            400,
            "invalid-registration",
        ),
        (
            "DELETE",
            format!("{put}?owner=host-b"),
            String::new(),
            409,
            "registration-conflict",
        ),
        (
            "DELETE",
            "/v1/registry/services/users/instances/zz?owner=host-a".into(),
            String::new(),
            404,
            "registry-not-found",
        ),
        (
            "POST",
            "/v1/registry/leases/99/renew".into(),
            String::new(),
            404,
            "registry-not-found",
        ),
        (
            "POST",
            "/v1/registry/leases/abc/renew".into(),
            String::new(),
            400,
            "invalid-registration",
        ),
        (
            "GET",
            "/v1/registry/services/users/watch?from=minus-one".into(),
            String::new(),
            400,
            "invalid-registration",
        ),
        (
            "GET",
            "/v1/registry/services/-x".into(),
            String::new(),
            400,
            "invalid-registration",
        ),
    ];
    for (method, path, body, status, kind) in cases {
        let (got, ct, answer) = raw(a, method, &path, body).await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        assert_eq!(ct, "application/problem+json", "{method} {path}");
        let problem: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(
            problem["type"],
            format!("https://switchyard.dev/problems/{kind}"),
            "{method} {path}: {answer}"
        );
        assert_eq!(problem["status"], status);
        assert!(!problem["detail"].as_str().unwrap().is_empty());
    }
    assert_eq!(registry.list("users").await.unwrap(), before);
    assert_eq!(registry.revision(), 1);

    // The good paths answer what docs/registry.md says.
    let (status, _, body) = raw(a, "GET", "/v1/registry/services", "").await;
    assert_eq!((status, body.as_str()), (200, r#"{"services":["users"]}"#));
    let (status, _, body) = raw(a, "GET", "/v1/registry/services/users", "").await;
    assert_eq!(status, 200);
    let listing: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listing["revision"], 1);
    assert_eq!(listing["instances"][0]["metadata"]["version"], "2");
    let (status, _, _) = raw(a, "POST", "/v1/registry/leases/1/renew", "").await;
    assert_eq!(status, 200);
    let (status, _, _) = raw(a, "DELETE", &format!("{put}?owner=host-a"), "").await;
    assert_eq!(status, 204);
    assert!(registry.list("users").await.unwrap().instances.is_empty());

    // The client maps problems back to typed errors.
    let client = RemoteRegistry::new(&format!("http://{a}")).unwrap();
    assert!(matches!(
        client.renew(42).await,
        Err(RegistryError::NotFound(_))
    ));
    server.stop().await;
    let err = client.list("users").await.unwrap_err();
    assert!(matches!(err, RegistryError::Unavailable(_)), "{err}");
}

#[tokio::test]
async fn watch_lines_are_ndjson() {
    let registry = Arc::new(EmbeddedRegistry::open(None).unwrap());
    registry.register(reg("u1", 9001)).await.unwrap();
    let server = Server::start(local().await, registry as Arc<dyn Registry>).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client
        .get(
            format!(
                "http://{}/v1/registry/services/users/watch?from=0",
                server.addr
            )
            .parse()
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let mut body = response.into_body();
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let text = std::str::from_utf8(&frame).unwrap();
    assert!(text.ends_with('\n'), "{text:?}");
    let event: WatchEvent = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(event.revision, 1);
    assert!(
        text.starts_with(r#"{"revision":1,"kind":"put","instance":{"service":"users","id":"u1""#),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn discovery_keeps_the_last_set_while_the_registry_is_down_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("registry.redb");
    let registry: Arc<dyn Registry> = Arc::new(EmbeddedRegistry::open(Some(&file)).unwrap());
    let server = Server::start(local().await, registry).await;
    let addr = server.addr;

    let remote = Arc::new(RemoteRegistry::new(&format!("http://{addr}")).unwrap());
    let discovery = RegistryDiscovery::with_retry(
        Arc::clone(&remote) as Arc<dyn Registry>,
        Duration::from_millis(20),
        Duration::from_millis(200),
    );
    let all = discovery.watch("users").unwrap();
    let zone_a = discovery
        .watch_filtered(
            "users",
            BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
        )
        .unwrap();

    remote.register(reg("u1", 9001)).await.unwrap();
    remote.register(reg("u2", 9002)).await.unwrap();
    until("both instances", || all.borrow().len() == 2).await;
    until("the zone-a instance", || zone_a.borrow().len() == 1).await;
    assert_eq!(zone_a.borrow()[0].addr.port(), 9002);
    assert!(!discovery.is_stale("users"));

    tracing::info!("stopping the registry server");
    server.stop().await;
    until("stale", || discovery.is_stale("users")).await;
    // Stale but serving: the last set is still published.
    assert_eq!(all.borrow().len(), 2);
    assert_eq!(zone_a.borrow().len(), 1);

    // The registry comes back on the same address with the same file, and
    // changed while the watcher was away.
    let registry = Arc::new(EmbeddedRegistry::open(Some(&file)).unwrap());
    registry.deregister("users", "u1", "me").await.unwrap();
    registry.register(reg("u3", 9003)).await.unwrap();
    registry.register(reg("u4", 9004)).await.unwrap();
    let listener = TcpListener::bind(addr).await.unwrap();
    let server = Server::start(listener, registry as Arc<dyn Registry>).await;

    let ports = |rx: &tokio::sync::watch::Receiver<switchyard_discovery::Endpoints>| {
        let mut ports: Vec<u16> = rx.borrow().iter().map(|e| e.addr.port()).collect();
        ports.sort_unstable();
        ports
    };
    until("the catch-up", || ports(&all) == [9002, 9003, 9004]).await;
    until("the filtered catch-up", || ports(&zone_a) == [9002, 9004]).await;
    until("fresh again", || !discovery.is_stale("users")).await;
    server.stop().await;
}
