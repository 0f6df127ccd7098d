//! The inbound side over real sockets: a gateway on 127.0.0.1:0 in front of
//! a recording backend on 127.0.0.1:0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{collections::HashMap, time::Duration};

use http::{Method, Request, StatusCode};
use support::*;
use switchyard_transport::Body;
use tokio::{io::AsyncWriteExt, net::TcpStream};

const ONE_ROUTE: &str = r#"
[[routes]]
path = "/{*rest}"
service = "echo"
"#;

async fn gateway_with(
    limits: switchyard_gateway::config::ListenerConfig,
    routes_toml: &str,
) -> (Backend, Gateway) {
    let backend = Backend::start().await;
    let addr = backend.addr;
    let gateway = Gateway::start(
        limits,
        &routes(routes_toml),
        |service| upstream(service, addr, service != "streamed"),
        HashMap::new(),
    )
    .await;
    (backend, gateway)
}

#[tokio::test]
async fn proxied_get_and_post_carry_the_documented_headers() {
    let (backend, gateway) = gateway_with(limits(), ONE_ROUTE).await;
    let client = client();

    // A GET with a hop-by-hop header, a header it names, and trace context.
    let req = Request::get(gateway.url("/items?x=1"))
        .header("connection", "x-private")
        .header("x-private", "drop me")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("x-forwarded-for", "203.0.113.9")
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = send(&client, req).await;
    assert_eq!(status, 200);
    assert_eq!(body, "ok:/items");
    // The response lost the backend's hop-by-hop headers but kept the rest.
    assert!(headers.get("x-hop").is_none());
    assert!(headers.get("keep-alive").is_none());
    assert_eq!(headers["x-backend"], "yes");
    let created_id = headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(created_id.len(), 32, "a request id was created");

    let seen = backend.seen();
    let got = &seen[0];
    assert_eq!(got.uri, "/items?x=1");
    assert!(
        got.headers.get("x-private").is_none(),
        "named by Connection"
    );
    assert_eq!(
        got.headers["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(got.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(got.headers["x-forwarded-proto"], "http");
    assert_eq!(got.headers["x-forwarded-host"], gateway.addr.to_string());
    assert_eq!(got.headers["x-request-id"], created_id.as_str());
    // The 5s deadline of the upstream's policy, minus the time spent so far.
    let left: u64 = got.headers["x-switchyard-deadline-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(left > 0 && left <= 5000, "{left}");

    // A POST keeps its body and the client's request id, and an incoming
    // deadline shorter than the policy's wins.
    let req = Request::post(gateway.url("/orders"))
        .header("x-request-id", "client-chose-this")
        .header("x-switchyard-deadline-ms", "1500")
        .body(Body::full("order=1"))
        .unwrap();
    let (status, headers, _) = send(&client, req).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-request-id"], "client-chose-this");
    let got = &backend.seen()[1];
    assert_eq!(got.method, Method::POST);
    assert_eq!(got.body, "order=1");
    assert_eq!(got.headers["x-request-id"], "client-chose-this");
    let left: u64 = got.headers["x-switchyard-deadline-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(left <= 1500, "{left}");
}

#[tokio::test]
async fn streamed_and_chunked_bodies_arrive_whole() {
    // Route "streamed" doesn't retry, so its bodies stream through.
    let (backend, gateway) = gateway_with(
        limits(),
        r#"
        [[routes]]
        path = "/s"
        service = "streamed"
        [[routes]]
        path = "/b"
        service = "buffered"
        "#,
    )
    .await;
    for path in ["/s", "/b"] {
        let out = raw(
            gateway.addr,
            format!(
                "POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
                 transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
    let seen = backend.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.body == "hello world"));
}

#[tokio::test]
async fn path_params_and_rewrite() {
    let (backend, gateway) = gateway_with(
        limits(),
        r#"
        [[routes]]
        path = "/api/users/{id}/{*rest}"
        service = "users"
        rewrite = "/internal/{id}/{rest}"
        "#,
    )
    .await;
    let req = Request::get(gateway.url("/api/users/42/orders/7?full=true"))
        .body(Body::empty())
        .unwrap();
    let (status, _, _) = send(&client(), req).await;
    assert_eq!(status, 200);
    assert_eq!(backend.seen()[0].uri, "/internal/42/orders/7?full=true");
}

#[tokio::test]
async fn no_route_is_a_404_problem() {
    let (backend, gateway) = gateway_with(
        limits(),
        r#"
        [[routes]]
        path = "/only"
        service = "x"
        "#,
    )
    .await;
    let req = Request::get(gateway.url("/missing"))
        .header("x-request-id", "r-1")
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = send(&client(), req).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(headers["x-switchyard-error"], "route-not-found");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body["type"],
        "https://switchyard.dev/problems/route-not-found"
    );
    assert_eq!(body["instance"], "r-1");
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn upstream_failure_is_a_502_problem() {
    // A backend address nobody listens on: bind, note the port, close.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gateway = Gateway::start(
        limits(),
        &routes(ONE_ROUTE),
        |s| upstream(s, dead, false),
        HashMap::new(),
    )
    .await;
    let req = Request::get(gateway.url("/")).body(Body::empty()).unwrap();
    let (status, headers, _) = send(&client(), req).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-switchyard-error"], "upstream");
    assert!(headers.get("x-request-id").is_some());
}

#[tokio::test]
async fn slow_client_is_cut_at_the_header_read_timeout() {
    let mut l = limits();
    l.header_read_timeout = Duration::from_millis(200);
    let (backend, gateway) = gateway_with(l, ONE_ROUTE).await;
    // Half a header section, then silence.
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    let out = read_to_close(&mut stream).await;
    assert!(!out.contains("200"), "{out}");
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_by_the_header_read_timeout() {
    // idle_timeout is long; hyper's header-read timer starts as soon as it
    // waits for the next request, so it also bounds keep-alive idleness.
    let mut l = limits();
    l.header_read_timeout = Duration::from_millis(200);
    l.idle_timeout = Duration::from_secs(3600);
    let (_backend, gateway) = gateway_with(l, ONE_ROUTE).await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let first = read_response(&mut stream).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // Then nothing: the server closes the idle connection.
    let rest = read_to_close(&mut stream).await;
    assert!(rest.is_empty(), "{rest}");
}

#[tokio::test]
async fn idle_timeout_closes_a_quiet_connection() {
    // Here the header-read timeout is long and idle_timeout short.
    let mut l = limits();
    l.idle_timeout = Duration::from_millis(200);
    let (_backend, gateway) = gateway_with(l, ONE_ROUTE).await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    assert!(read_to_close(&mut stream).await.is_empty());
}

#[tokio::test]
async fn oversized_and_too_many_headers_get_431() {
    let mut l = limits();
    l.max_header_bytes = 8192;
    l.max_headers = 20;
    let (backend, gateway) = gateway_with(l, ONE_ROUTE).await;

    let big = "a".repeat(9000);
    let out = raw(
        gateway.addr,
        format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");

    let many: String = (0..30).map(|i| format!("x-h{i}: v\r\n")).collect();
    let out = raw(
        gateway.addr,
        format!("GET / HTTP/1.1\r\nhost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert!(backend.seen().is_empty());

    // Over HTTP/2 the count is checked by the proxy: 431 problem+json.
    let mut req = Request::get(gateway.url("/")).body(Body::empty()).unwrap();
    for i in 0..30 {
        req.headers_mut().insert(
            format!("x-h{i}").parse::<http::HeaderName>().unwrap(),
            "v".parse().unwrap(),
        );
    }
    let (status, headers, _) = send(&h2_client(), req).await;
    assert_eq!(status, 431);
    assert_eq!(headers["x-switchyard-error"], "header-too-large");
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn body_over_the_limit_gets_413_and_nothing_is_forwarded() {
    let mut l = limits();
    l.max_body_bytes = 10;
    let (backend, gateway) = gateway_with(
        l,
        r#"
        [[routes]]
        path = "/s"
        service = "streamed"
        [[routes]]
        path = "/b"
        service = "buffered"
        "#,
    )
    .await;
    // Content-Length over the limit: refused before reading.
    let out = raw(
        gateway.addr,
        b"POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\nhello world",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains("payload-too-large"), "{out}");
    // Chunked over the limit on a buffering route: refused while buffering.
    let out = raw(
        gateway.addr,
        b"POST /b HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(backend.seen().is_empty(), "{:?}", backend.seen());

    // Chunked over the limit on a streaming route: the stream is cut when
    // the count passes the limit, and the client gets 413.
    let out = raw(
        gateway.addr,
        b"POST /s HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    // Whatever the backend saw, it never got the whole body.
    assert!(backend.seen().iter().all(|s| s.body != "hello world"));
}

#[tokio::test]
async fn conflicting_length_and_chunked_is_refused_and_never_forwarded() {
    let (backend, gateway) = gateway_with(limits(), ONE_ROUTE).await;
    // The classic smuggling shape, in both header orders. The bytes after
    // the first request would be a second request to a backend that
    // trusted Content-Length.
    for head in [
        "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n",
    ] {
        let out = raw(
            gateway.addr,
            format!("{head}0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        assert!(out.contains("application/problem+json"), "{out}");
        assert!(
            out.contains("both content-length and transfer-encoding"),
            "{out}"
        );
        // One answer only: the smuggled request was never served.
        assert_eq!(out.matches("HTTP/1.1").count(), 1, "{out}");
    }
    assert!(backend.seen().is_empty(), "{:?}", backend.seen());
}

#[tokio::test]
async fn duplicate_content_length_and_odd_codings_are_refused() {
    let (backend, gateway) = gateway_with(limits(), ONE_ROUTE).await;
    // Equal values: hyper alone would accept and fold them.
    let out = raw(
        gateway.addr,
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("more than one content-length"), "{out}");
    // Different values: hyper refuses them itself (plain 400).
    let out = raw(
        gateway.addr,
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // A coding before chunked: hyper accepts it, the proxy doesn't.
    let out = raw(
        gateway.addr,
        b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("only transfer-encoding accepted"), "{out}");
    // A last coding other than chunked: hyper refuses it itself.
    let out = raw(
        gateway.addr,
        b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(backend.seen().is_empty(), "{:?}", backend.seen());
}

#[tokio::test]
async fn pipelined_requests_are_all_served() {
    // The framing scanner follows bodies, so the second and third heads
    // are checked and served, not refused as unverifiable.
    let (backend, gateway) = gateway_with(limits(), ONE_ROUTE).await;
    let out = raw(
        gateway.addr,
        b"POST /1 HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
          POST /2 HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n\
          GET /3 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(out.matches("HTTP/1.1 200").count(), 3, "{out}");
    let paths: Vec<_> = backend.seen().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(paths, ["/1", "/2", "/3"]);
}

#[tokio::test]
async fn h2c_prior_knowledge_works() {
    let (backend, gateway) = gateway_with(limits(), ONE_ROUTE).await;
    let req = Request::post(gateway.url("/h2"))
        .body(Body::full("over h2"))
        .unwrap();
    let (status, headers, body) = send(&h2_client(), req).await;
    assert_eq!(status, 200);
    assert_eq!(body, "ok:/h2");
    assert!(headers.get("x-request-id").is_some());
    let got = &backend.seen()[0];
    assert_eq!(got.body, "over h2");
    // The :authority became Host and X-Forwarded-Host for the HTTP/1 upstream.
    assert_eq!(got.headers["host"], gateway.addr.to_string());
    assert_eq!(got.headers["x-forwarded-host"], gateway.addr.to_string());
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_refuses_new_ones() {
    let (backend, mut gateway) = gateway_with(limits(), ONE_ROUTE).await;
    let url = gateway.url("/slow");
    let in_flight = tokio::spawn(async move {
        send(&client(), Request::get(url).body(Body::empty()).unwrap()).await
    });
    backend.slow_arrived().await;

    gateway.shutdown();
    // New connections are refused once the listener is closed.
    let mut refused = false;
    for _ in 0..500 {
        if TcpStream::connect(gateway.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the listener still accepts after shutdown");
    assert!(
        !gateway.task.is_finished(),
        "serve waits for the in-flight request"
    );

    // The in-flight request still completes, then serve returns.
    backend.release();
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "ok:/slow");
    let task = &mut gateway.task;
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("serve returned")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn max_connections_holds_the_next_connection_until_one_closes() {
    let mut l = limits();
    l.max_connections = 1;
    let (_backend, gateway) = gateway_with(l, ONE_ROUTE).await;

    // The first connection is served and kept open.
    let mut first = TcpStream::connect(gateway.addr).await.unwrap();
    first
        .write_all(b"GET /1 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut first).await.starts_with("HTTP/1.1 200"));

    // The second connects (the kernel queues it) but isn't served...
    let mut second = TcpStream::connect(gateway.addr).await.unwrap();
    second
        .write_all(b"GET /2 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), read_response(&mut second)).await;
    assert!(early.is_err(), "served while the only slot was taken");

    // ...until the first closes.
    drop(first);
    let out = read_to_close(&mut second).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[tokio::test]
async fn sidecar_routes_by_host_or_service_header() {
    let backend = Backend::start().await;
    let mut l = limits();
    l.sidecar = true;
    let sidecar = HashMap::from([("users".to_owned(), upstream("users", backend.addr, true))]);
    let gateway = Gateway::start(l, &[], |s| upstream(s, backend.addr, true), sidecar).await;
    let client = client();

    // Host names the service; its port is ignored.
    let req = Request::get(gateway.url("/u/1"))
        .header("host", "users:8080")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&client, req).await.0, 200);
    // The header wins over the host.
    let req = Request::get(gateway.url("/u/2"))
        .header("host", "localhost")
        .header("x-switchyard-service", "users")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&client, req).await.0, 200);
    // An unknown service is a 404 problem.
    let req = Request::get(gateway.url("/u/3"))
        .header("host", "billing")
        .body(Body::empty())
        .unwrap();
    let (status, headers, _) = send(&client, req).await;
    assert_eq!(status, 404);
    assert_eq!(headers["x-switchyard-error"], "route-not-found");
    let paths: Vec<_> = backend.seen().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(paths, ["/u/1", "/u/2"]);
    assert_eq!(backend.seen()[0].headers["x-forwarded-host"], "users:8080");
}

#[tokio::test]
async fn swapping_the_table_changes_routes_for_new_requests() {
    let (backend, gateway) = gateway_with(
        limits(),
        r#"
        [[routes]]
        path = "/old"
        service = "a"
        "#,
    )
    .await;
    let client = client();
    let get = |p: &str| Request::get(gateway.url(p)).body(Body::empty()).unwrap();
    assert_eq!(send(&client, get("/new")).await.0, 404);

    let new_routes = routes(
        r#"
        [[routes]]
        path = "/new"
        service = "a"
        "#,
    );
    let table = switchyard_gateway::proxy::RouteTable::new(
        switchyard_gateway::routes::Router::new(&new_routes).unwrap(),
        vec![upstream("a", backend.addr, true)],
        HashMap::new(),
    )
    .unwrap();
    gateway.proxy.swap(table);
    assert_eq!(send(&client, get("/new")).await.0, 200);
    assert_eq!(send(&client, get("/old")).await.0, 404);
}
