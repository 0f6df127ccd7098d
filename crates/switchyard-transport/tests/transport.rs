//! The transport against real loopback hyper servers.
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
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchyard_transport::{
    Attempt, Body, Head, Protocol, Transport, TransportConfig, TransportErrorKind,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tower_service::Service;

/// Replies to `/buffer?limit=N` with what `Body::buffer_for_replay` made of
/// the request body: `replayable=<bool> len=<bytes read in total>`; to
/// `/fields` with the request's `x-` fields, one `name=value` per line in
/// the order received; to any other path with `hello`.
async fn handle(req: http::Request<Incoming>) -> Result<http::Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/fields" {
        let text: String = req
            .headers()
            .iter()
            .filter(|(name, _)| name.as_str().starts_with("x-"))
            .map(|(name, value)| format!("{name}={}\n", value.to_str().unwrap()))
            .collect();
        return Ok(http::Response::new(Full::new(Bytes::from(text))));
    }
    if req.uri().path() == "/buffer" {
        let limit: usize = req.uri().query().unwrap()["limit=".len()..]
            .parse()
            .unwrap();
        let body = Body::buffer_for_replay(req.into_body(), limit)
            .await
            .unwrap();
        let replayable = body.is_replayable();
        let len = body.collect_bytes().await.unwrap().len();
        let text = format!("replayable={replayable} len={len}");
        return Ok(http::Response::new(Full::new(Bytes::from(text))));
    }
    Ok(http::Response::new(Full::new(Bytes::from_static(b"hello"))))
}

/// Starts a backend speaking `protocol`; returns its address and a counter
/// of the connections it accepted.
async fn backend(protocol: Protocol) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            let io = TokioIo::new(stream);
            tokio::spawn(async move {
                let svc = service_fn(handle);
                let _ = match protocol {
                    Protocol::Http1 => {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await
                    }
                    Protocol::Http2 => {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await
                    }
                };
            });
        }
    });
    (addr, accepted)
}

fn get(addr: SocketAddr, path: &str) -> http::Request<Body> {
    http::Request::get(format!("http://{addr}{path}"))
        .body(Body::empty())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_keep_alive_reuses_one_connection() {
    let (addr, accepted) = backend(Protocol::Http1).await;
    let mut transport = Transport::new(&TransportConfig::default()).unwrap();

    // Twenty requests one after another, each body read to the end so the
    // connection goes back to the pool.
    for _ in 0..20 {
        let res = transport.call(get(addr, "/")).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.into_body().collect_bytes().await.unwrap(), "hello");
    }

    // The server saw a handful of connections for twenty requests, not 20.
    // hyper-util hands a finished connection back to the pool from its
    // connection task, so on a busy machine the next request may race it and
    // open a spare; once spares exist an idle one is always there.
    let accepted = accepted.load(Ordering::SeqCst);
    assert!(
        (1..=5).contains(&accepted),
        "accepted {accepted} connections"
    );
    assert_eq!(transport.open_connections(), accepted);

    // Dropping the transport (and so its pool) closes the connection.
    drop(transport);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_multiplexes_over_one_connection() {
    let (addr, accepted) = backend(Protocol::Http2).await;
    let config = TransportConfig {
        protocol: Protocol::Http2,
        ..TransportConfig::default()
    };
    let transport = Transport::new(&config).unwrap();

    // Warm the connection, then send 20 requests at once.
    let res = transport.clone().call(get(addr, "/")).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    let calls = (0..20).map(|_| {
        let mut t = transport.clone();
        async move { t.call(get(addr, "/")).await }
    });
    for res in futures_join_all(calls).await {
        let res = res.unwrap();
        assert_eq!(res.version(), http::Version::HTTP_2);
        assert_eq!(res.into_body().collect_bytes().await.unwrap(), "hello");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_sends_the_heads_fields_then_its_added_ones_then_its_own() {
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let (addr, _) = backend(protocol).await;
        let config = TransportConfig {
            protocol,
            ..TransportConfig::default()
        };
        let transport = Transport::new(&config).unwrap();
        let (parts, ()) = http::Request::get("/fields")
            .header("x-own", "1")
            .header("x-deadline-ms", "900")
            .body(())
            .unwrap()
            .into_parts();
        let mut head = Head::from(parts);
        head.added.push((
            http::HeaderName::from_static("x-forwarded-for"),
            http::HeaderValue::from_static("10.1.2.3"),
        ));
        let head = Arc::new(head);
        for left in ["250", "100"] {
            let res = transport
                .send_attempt(Attempt {
                    head: head.clone(),
                    scheme: http::uri::Scheme::HTTP,
                    authority: addr.to_string().parse().unwrap(),
                    field: Some((
                        http::HeaderName::from_static("x-deadline-ms"),
                        http::HeaderValue::from_static(left),
                    )),
                    body: Body::empty(),
                })
                .await
                .unwrap();
            let text = res.into_body().collect_bytes().await.unwrap();
            let mut fields: Vec<_> = std::str::from_utf8(&text).unwrap().lines().collect();
            if protocol == Protocol::Http2 {
                // Hyper writes the fields grouped by name; order across
                // names carries no meaning.
                fields.sort_unstable();
            }
            let own = format!("x-deadline-ms={left}");
            let mut expected = vec!["x-own=1", "x-forwarded-for=10.1.2.3", own.as_str()];
            if protocol == Protocol::Http2 {
                expected.sort_unstable();
            }
            assert_eq!(fields, expected, "{protocol:?}");
        }
    }
}

/// Runs futures concurrently on the runtime and collects their outputs in order.
async fn futures_join_all<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_a_connect_error() {
    // Bind to learn a free port, then close the listener: connects are refused.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);

    let mut transport = Transport::new(&TransportConfig::default()).unwrap();
    let err = transport.call(get(addr, "/")).await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert_eq!(err.kind(), TransportErrorKind::Connect);
    assert_eq!(transport.open_connections(), 0);

    // The kind is found under wrapping errors, by type.
    let wrapped = switchyard_policy::Error::from_inner(err);
    assert!(
        switchyard_transport::TransportError::find(&wrapped)
            .unwrap()
            .is_connect()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_mid_request_is_not_a_connect_error() {
    // A "server" that reads the request head and hangs up without answering.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            drop(stream);
        }
    });

    let mut transport = Transport::new(&TransportConfig::default()).unwrap();
    let err = transport.call(get(addr, "/")).await.unwrap_err();
    assert!(!err.is_connect(), "{err:?}");
    assert_eq!(err.kind(), TransportErrorKind::Closed, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_for_replay_over_a_real_incoming_body() {
    let (addr, _) = backend(Protocol::Http1).await;
    let mut transport = Transport::new(&TransportConfig::default()).unwrap();
    let post = |limit: usize, body: Vec<u8>| {
        http::Request::post(format!("http://{addr}/buffer?limit={limit}"))
            .body(Body::full(body))
            .unwrap()
    };

    // A small body fits the limit: buffered, so a retry could send it again.
    let res = transport.call(post(1024, vec![b'a'; 10])).await.unwrap();
    let text = res.into_body().collect_bytes().await.unwrap();
    assert_eq!(text, "replayable=true len=10");

    // A large body with a Content-Length over the limit streams untouched,
    // and every byte still gets through.
    let res = transport
        .call(post(1024, vec![b'b'; 100_000]))
        .await
        .unwrap();
    let text = res.into_body().collect_bytes().await.unwrap();
    assert_eq!(text, "replayable=false len=100000");

    // A chunked body (no length known up front) is read until it passes the
    // limit; what was read becomes a prefix and the rest streams after it.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut raw = b"POST /buffer?limit=1024 HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
    for _ in 0..10 {
        raw.extend_from_slice(format!("{:x}\r\n", 500).as_bytes());
        raw.extend_from_slice(&[b'c'; 500]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&raw).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.ends_with("replayable=false len=5000"),
        "{response}"
    );
}
