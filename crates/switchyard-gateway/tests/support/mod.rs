//! Shared pieces of the inbound tests: a recording backend, an upstream
//! client service, a gateway runner, and a raw TCP client.

#![allow(dead_code, unreachable_pub)]

use std::{collections::HashMap, convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use parking_lot::Mutex;
use switchyard_gateway::{
    config::{
        DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS,
        DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADERS, ListenerConfig, RouteConfig,
    },
    proxy::{DeadlineHeaderLayer, Proxy, RouteTable, Upstream},
    routes::Router,
    server::serve,
};
use switchyard_policy::{Error, Events, deadline::DeadlineLayer};
use switchyard_transport::Body;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Notify, oneshot},
    task::JoinHandle,
};
use tower::{Layer, service_fn, util::BoxCloneSyncService};

/// What the backend received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: http::Method,
    pub uri: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// An in-process backend on 127.0.0.1:0 that records every request and
/// answers `200 ok:<path>` with some hop-by-hop headers. A request to
/// `/slow` waits until [`Backend::release`] is called.
pub struct Backend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    gate: Arc<Notify>,
    arrived: Arc<Notify>,
}

impl Backend {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Notify::new());
        let arrived = Arc::new(Notify::new());
        let (s, g, a) = (seen.clone(), gate.clone(), arrived.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (seen, gate, arrived) = (s.clone(), g.clone(), a.clone());
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (seen, gate, arrived) =
                                (seen.clone(), gate.clone(), arrived.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let path = parts.uri.path().to_owned();
                                seen.lock().push(Seen {
                                    method: parts.method,
                                    uri: parts.uri.to_string(),
                                    version: parts.version,
                                    headers: parts.headers,
                                    body,
                                });
                                if path == "/slow" {
                                    arrived.notify_one();
                                    gate.notified().await;
                                }
                                let res = Response::builder()
                                    .header("connection", "x-hop")
                                    .header("x-hop", "secret")
                                    .header("keep-alive", "timeout=5")
                                    .header("x-backend", "yes")
                                    .body(http_body_util::Full::new(Bytes::from(format!(
                                        "ok:{path}"
                                    ))))
                                    .unwrap();
                                Ok::<_, Infallible>(res)
                            }
                        });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            seen,
            gate,
            arrived,
        }
    }

    /// Lets waiting `/slow` requests answer.
    pub fn release(&self) {
        self.gate.notify_waiters();
    }

    /// Waits until a `/slow` request has arrived.
    pub async fn slow_arrived(&self) {
        self.arrived.notified().await;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

/// The upstream service for `backend`: a 5s deadline, the deadline header,
/// and a hyper client sending to the backend's address.
pub fn upstream(service: &str, backend: SocketAddr, retries_enabled: bool) -> Upstream {
    let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new()).build_http();
    let send = service_fn(move |mut req: Request<Body>| {
        let client = client.clone();
        async move {
            let pq = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            *req.uri_mut() = format!("http://{backend}{pq}").parse().unwrap();
            let res = client.request(req).await.map_err(Error::from_inner)?;
            Ok::<_, Error>(res.map(Body::streaming))
        }
    });
    let svc = DeadlineLayer::new(Some(Duration::from_secs(5)), Events::silent(service))
        .layer(DeadlineHeaderLayer.layer(send));
    Upstream {
        service: service.to_owned(),
        retries_enabled,
        retry_body_limit: 64 * 1024,
        svc: tower::util::Either::Right(BoxCloneSyncService::new(svc)),
    }
}

/// A listener config with the defaults, named `main`.
pub fn limits() -> ListenerConfig {
    ListenerConfig {
        name: "main".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        max_headers: DEFAULT_MAX_HEADERS,
        max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: DEFAULT_IDLE_TIMEOUT,
        max_connections: DEFAULT_MAX_CONNECTIONS,
        sidecar: false,
        tls: None,
    }
}

/// Parses `[[routes]]` tables.
pub fn routes(toml_text: &str) -> Vec<RouteConfig> {
    #[derive(serde::Deserialize)]
    struct File {
        routes: Vec<RouteConfig>,
    }
    toml::from_str::<File>(toml_text).unwrap().routes
}

/// A running gateway.
pub struct Gateway {
    pub addr: SocketAddr,
    pub proxy: Proxy,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<std::io::Result<()>>,
}

impl Gateway {
    /// Serves `routes` (each to `upstream_for(route.service)`) on 127.0.0.1:0.
    pub async fn start(
        limits: ListenerConfig,
        routes: &[RouteConfig],
        upstream_for: impl Fn(&str) -> Upstream,
        sidecar: HashMap<String, Upstream>,
    ) -> Self {
        let router = Router::new(routes).unwrap();
        let upstreams = routes.iter().map(|r| upstream_for(&r.service)).collect();
        let table = RouteTable::new(router, upstreams, sidecar).unwrap();
        let proxy = Proxy::new(&limits, Arc::new(ArcSwap::from_pointee(table)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let handler = proxy.clone();
        let task = tokio::spawn(async move {
            serve(
                listener,
                &limits,
                handler,
                async {
                    let _ = rx.await;
                },
                Duration::from_secs(5),
            )
            .await
        });
        Self {
            addr,
            proxy,
            shutdown: Some(tx),
            task,
        }
    }

    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// An HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub fn h2_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends one request and returns status, headers and body text.
pub async fn send(
    client: &Client<HttpConnector, Body>,
    req: Request<Body>,
) -> (http::StatusCode, HeaderMap, String) {
    let res = client.request(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Writes `bytes` on a new connection and reads until the server closes it
/// (bounded by a generous guard so a bug fails instead of hanging).
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_to_close(&mut stream).await
}

/// Reads until EOF or a reset; panics if the server keeps the connection
/// open past a 10s guard.
pub async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server did not close the connection");
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one response with a `content-length` body from a kept-alive connection.
pub async fn read_response(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("response within the guard")
            .unwrap();
        assert!(n > 0, "connection closed before a full response: {text}");
        out.extend_from_slice(&buf[..n]);
    }
}
