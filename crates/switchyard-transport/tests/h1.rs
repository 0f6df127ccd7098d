//! The HTTP/1.1 client against a scripted raw TCP server: response framing,
//! connection reuse, stale pooled connections and malformed responses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use switchyard_transport::{
    AddedFields, Attempt, Body, Head, RawFields, Transport, TransportConfig, TransportErrorKind,
    server,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// What the server does with the next request it reads.
enum Step {
    /// Writes these bytes (in pieces split at every `|`, flushed apart, so
    /// the client sees them arrive in several reads) and keeps reading.
    Reply(&'static str),
    /// Writes these bytes, then closes the connection.
    ReplyAndClose(&'static str),
    /// Closes the connection without answering.
    Hang,
}

struct Script {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Every request as received, head and body.
    seen: Arc<Mutex<Vec<String>>>,
}

async fn script(steps: Vec<Step>) -> Script {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let steps = Arc::new(Mutex::new(VecDeque::from(steps)));
    let (count, log) = (accepted.clone(), seen.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream, steps.clone(), log.clone()));
        }
    });
    Script {
        addr,
        accepted,
        seen,
    }
}

async fn serve(
    mut stream: TcpStream,
    steps: Arc<Mutex<VecDeque<Step>>>,
    seen: Arc<Mutex<Vec<String>>>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(request) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        seen.lock().push(request);
        let step = steps.lock().pop_front();
        match step {
            Some(Step::Reply(text)) => write_pieces(&mut stream, text).await,
            Some(Step::ReplyAndClose(text)) => {
                write_pieces(&mut stream, text).await;
                return;
            }
            Some(Step::Hang) | None => return,
        }
    }
}

async fn write_pieces(stream: &mut TcpStream, text: &str) {
    for piece in text.split('|') {
        stream.write_all(piece.as_bytes()).await.unwrap();
        stream.flush().await.unwrap();
        tokio::task::yield_now().await;
    }
}

/// Reads one request (head, plus a `content-length` body) off `stream`.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                let request = String::from_utf8_lossy(&buf[..end + 4 + len]).into_owned();
                buf.drain(..end + 4 + len);
                return Some(request);
            }
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn request(method: &str, addr: SocketAddr, path: &str, body: &'static str) -> http::Request<Body> {
    http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Body::full(body))
        .unwrap()
}

/// Sends a request and reads the whole response: status, headers, body and
/// trailers.
async fn fetch(
    transport: &Transport,
    req: http::Request<Body>,
) -> Result<
    (
        http::StatusCode,
        http::HeaderMap,
        Bytes,
        Option<http::HeaderMap>,
    ),
    String,
> {
    let res = transport
        .send(req)
        .await
        .map_err(|e| format!("{}: {e:?}", e.kind()))?;
    let (parts, body) = res.into_parts();
    let collected = body.collect().await.map_err(|e| format!("body: {e}"))?;
    let trailers = collected.trailers().cloned();
    Ok((parts.status, parts.headers, collected.to_bytes(), trailers))
}

#[tokio::test]
async fn framing_of_responses_and_reuse_of_the_connection() {
    let server = script(vec![
        // Content-Length, the body arriving in pieces after the head.
        Step::Reply(
            "HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\ncontent-length: 11\r\n\r\n|hello| world",
        ),
        // Chunked, with an extension, split mid-size-line, and trailers.
        Step::Reply(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhel|lo\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n",
        ),
        // An interim 100 Continue before the final response.
        Step::Reply("HTTP/1.1 100 Continue\r\n\r\n|HTTP/1.1 204 No Content\r\n\r\n"),
        // HEAD: a Content-Length but no body follows.
        Step::Reply("HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"),
        // Equal duplicate Content-Length values are one length.
        Step::Reply("HTTP/1.1 201 Created\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok"),
    ])
    .await;
    let transport = Transport::new(&TransportConfig::default()).unwrap();
    let addr = server.addr;

    let (status, headers, body, _) = fetch(&transport, request("GET", addr, "/a?x=1", ""))
        .await
        .unwrap();
    assert_eq!((status.as_u16(), &body[..]), (200, &b"hello world"[..]));
    assert_eq!(headers["content-length"], "11");
    // Fields that only managed the connection were acted on, not passed up.
    assert!(!headers.contains_key("connection") && !headers.contains_key("keep-alive"));

    let (_, _, body, trailers) = fetch(&transport, request("GET", addr, "/chunked", ""))
        .await
        .unwrap();
    assert_eq!(&body[..], b"hello world");
    assert_eq!(trailers.unwrap()["x-sum"], "42");

    let (status, _, body, _) = fetch(&transport, request("POST", addr, "/continue", "data"))
        .await
        .unwrap();
    assert_eq!((status.as_u16(), body.len()), (204, 0));

    let (status, headers, body, _) = fetch(&transport, request("HEAD", addr, "/head", ""))
        .await
        .unwrap();
    assert_eq!((status.as_u16(), body.len()), (200, 0));
    assert_eq!(headers["content-length"], "1000");

    let (status, _, body, _) = fetch(&transport, request("PUT", addr, "/dup", ""))
        .await
        .unwrap();
    assert_eq!((status.as_u16(), &body[..]), (201, &b"ok"[..]));

    // One connection carried all five, and it is still open in the pool.
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(transport.open_connections(), 1);

    // What went on the wire: origin-form target, Host from the URI, a
    // length only where there is a body or the method carries one.
    let seen = server.seen.lock().clone();
    assert!(
        seen[0].starts_with("GET /a?x=1 HTTP/1.1\r\nhost: 127.0.0.1:"),
        "{}",
        seen[0]
    );
    assert!(!seen[0].contains("content-length"), "{}", seen[0]);
    assert!(
        seen[2].contains("content-length: 4\r\n") && seen[2].ends_with("\r\n\r\ndata"),
        "{}",
        seen[2]
    );
    assert!(seen[4].contains("content-length: 0\r\n"), "{}", seen[4]);
}

#[tokio::test]
async fn a_response_without_length_reads_to_close_and_the_connection_is_not_reused() {
    let server = script(vec![
        Step::ReplyAndClose("HTTP/1.1 200 OK\r\n\r\nuntil |the end"),
        Step::Reply("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"),
        Step::Reply(
            "HTTP/1.1 200 OK\r\nconnection: close, x-private\r\nx-private: 1\r\ncontent-length: 2\r\n\r\nok",
        ),
        Step::Reply("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    ])
    .await;
    let transport = Transport::new(&TransportConfig::default()).unwrap();
    let (_, _, body, _) = fetch(&transport, request("GET", server.addr, "/", ""))
        .await
        .unwrap();
    assert_eq!(&body[..], b"until the end");
    // HTTP/1.0 without keep-alive, and `connection: close`: not reused either.
    fetch(&transport, request("GET", server.addr, "/", ""))
        .await
        .unwrap();
    // A `Connection` naming another field stays, for the proxy to act on.
    let (_, headers, _, _) = fetch(&transport, request("GET", server.addr, "/", ""))
        .await
        .unwrap();
    assert_eq!(headers["connection"], "close, x-private");
    fetch(&transport, request("GET", server.addr, "/", ""))
        .await
        .unwrap();
    assert_eq!(server.accepted.load(Ordering::SeqCst), 4);
    assert_eq!(transport.open_connections(), 1);
}

#[tokio::test]
async fn a_stale_pooled_connection_is_retried_once_for_idempotent_requests_only() {
    let server = script(vec![
        Step::Reply("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
        // The pooled connection is closed when the next request arrives...
        Step::Hang,
        // ...and the GET is sent again on a new connection.
        Step::Reply("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nagain"),
        Step::Hang,
    ])
    .await;
    let transport = Transport::new(&TransportConfig::default()).unwrap();
    let addr = server.addr;
    fetch(&transport, request("GET", addr, "/", ""))
        .await
        .unwrap();
    let (_, _, body, _) = fetch(&transport, request("GET", addr, "/", ""))
        .await
        .unwrap();
    assert_eq!(&body[..], b"again");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);

    // A POST is not repeated: the endpoint may have acted on it.
    let err = fetch(&transport, request("POST", addr, "/", "x"))
        .await
        .unwrap_err();
    assert!(err.starts_with("closed"), "{err}");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(server.seen.lock().len(), 4);
}

#[tokio::test]
async fn malformed_responses_are_protocol_errors_and_close_the_connection() {
    for bad in [
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
        "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\n",
        "HTTP/1.1 2000 Weird\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        "NOT HTTP AT ALL\r\n\r\n",
        "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        // A coding other than chunked would reach the client undeclared.
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nxx",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        let server = script(vec![Step::Reply(bad)]).await;
        let transport = Transport::new(&TransportConfig::default()).unwrap();
        let err = transport
            .send(request("GET", server.addr, "/", ""))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), TransportErrorKind::Protocol, "{bad:?}: {err:?}");
        assert_eq!(transport.open_connections(), 0, "{bad:?}");
    }

    // A bad chunk inside the body fails the body, not the head; so does a
    // size line without digits (which must not read as the last chunk).
    for bad in [
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n;ext\r\n\r\n",
    ] {
        let server = script(vec![Step::Reply(bad)]).await;
        let transport = Transport::new(&TransportConfig::default()).unwrap();
        let res = transport
            .send(request("GET", server.addr, "/", ""))
            .await
            .unwrap();
        assert!(res.into_body().collect().await.is_err(), "{bad:?}");
        assert_eq!(transport.open_connections(), 0);
    }

    // Both a length and chunked: chunked wins, the length is not passed up,
    // and the connection is not reused.
    let server = script(vec![
        Step::Reply(
            "HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
        Step::Reply("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    ])
    .await;
    let transport = Transport::new(&TransportConfig::default()).unwrap();
    let (_, headers, body, _) = fetch(&transport, request("GET", server.addr, "/", ""))
        .await
        .unwrap();
    assert_eq!(&body[..], b"ok");
    assert!(!headers.contains_key("content-length"));
    fetch(&transport, request("GET", server.addr, "/", ""))
        .await
        .unwrap();
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);

    // A body cut short by the endpoint is an error, never a short success.
    let server = script(vec![Step::ReplyAndClose(
        "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
    )])
    .await;
    let res = transport
        .send(request("GET", server.addr, "/", ""))
        .await
        .unwrap();
    assert!(res.into_body().collect().await.is_err());
}

#[tokio::test]
async fn a_large_body_streams_and_a_dropped_body_closes_its_connection() {
    static BIG: std::sync::LazyLock<&'static str> = std::sync::LazyLock::new(|| {
        let body = "x".repeat(300_000);
        Box::leak(
            format!("HTTP/1.1 200 OK\r\ncontent-length: 300000\r\n\r\n{body}").into_boxed_str(),
        )
    });
    let server = script(vec![Step::Reply(&BIG), Step::Reply(&BIG)]).await;
    let transport = Transport::new(&TransportConfig::default()).unwrap();

    let (_, _, body, _) = fetch(&transport, request("GET", server.addr, "/", ""))
        .await
        .unwrap();
    assert_eq!(body.len(), 300_000);
    assert_eq!(transport.open_connections(), 1);

    // Read the head, drop the body unread: the connection can't be reused.
    let res = transport
        .send(request("GET", server.addr, "/", ""))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    drop(res);
    assert_eq!(transport.open_connections(), 0);
}

#[tokio::test]
async fn idle_connections_close_after_the_idle_timeout() {
    let server = script(vec![Step::Reply(
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    )])
    .await;
    let config = TransportConfig {
        pool_idle_timeout: Duration::from_secs(30),
        ..TransportConfig::default()
    };
    let transport = Transport::new(&config).unwrap();
    fetch(&transport, request("GET", server.addr, "/", ""))
        .await
        .unwrap();
    assert_eq!(transport.open_connections(), 1);

    // On tokio's paused clock, the idle sweep runs and closes it.
    tokio::time::pause();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(transport.open_connections(), 0);
}

/// Sends `req` as a proxy does: its response's end-to-end fields may stay
/// as the endpoint wrote them ([`RawFields`]).
async fn fetch_passed_on(
    transport: &Transport,
    req: http::Request<Body>,
) -> (http::Response<Body>, Option<RawFields>) {
    let (mut parts, body) = req.into_parts();
    let scheme = parts.uri.scheme().unwrap().clone();
    let authority = parts.uri.authority().unwrap().clone();
    parts.uri = parts
        .uri
        .path_and_query()
        .unwrap()
        .as_str()
        .parse()
        .unwrap();
    let head = Head {
        parts,
        added: AddedFields::new(),
        raw_response_fields: true,
    };
    let mut res = transport
        .send_attempt(Attempt {
            head: Arc::new(head),
            scheme,
            authority,
            field: None,
            body,
        })
        .await
        .unwrap();
    let raw = res.extensions_mut().remove::<RawFields>();
    (res, raw)
}

/// A response's whole body.
async fn body(res: http::Response<Body>) -> Bytes {
    res.into_body().collect().await.unwrap().to_bytes()
}

/// The fields as (name, value) text pairs.
fn pairs(raw: &RawFields) -> Vec<(String, String)> {
    raw.iter()
        .map(|(n, v)| {
            (
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn fields_passed_on_stay_as_sent_and_the_map_is_built_where_it_is_read() {
    let server = script(vec![
        Step::Reply(
            "HTTP/1.1 200 OK\r\nServer: up\r\nX-Request-Id: theirs\r\ncontent-length: 2\r\n\
             Date: Thu, 01 Jan 2026 00:00:00 GMT\r\nConnection: keep-alive\r\n\
             Keep-Alive: timeout=5\r\nX-Empty:\r\nX-Spaced:   padded\r\n\r\nok",
        ),
        // A failure: the classifiers read its `Retry-After` from the map.
        Step::Reply("HTTP/1.1 503 Busy\r\nRetry-After: 2\r\nContent-Length: 0\r\n\r\n"),
        // `Connection` naming a field: the map, for the proxy to remove both.
        Step::Reply(
            "HTTP/1.1 200 OK\r\nConnection: x-private\r\nX-Private: 1\r\nContent-Length: 0\r\n\r\n",
        ),
        // To a HEAD request the length only informs: passed on.
        Step::Reply("HTTP/1.1 200 OK\r\nContent-Length: 10\r\nETag: \"v1\"\r\n\r\n"),
        // A length with a coding: the map, without the length.
        Step::ReplyAndClose(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        ),
    ])
    .await;
    let transport = Transport::new(&TransportConfig::default()).unwrap();
    let addr = server.addr;

    let (res, raw) = fetch_passed_on(&transport, request("GET", addr, "/", "")).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().is_empty(), "{:?}", res.headers());
    let raw = raw.expect("the fields stay raw");
    assert_eq!(
        pairs(&raw),
        [
            ("Server", "up"),
            ("X-Request-Id", "theirs"),
            ("Date", "Thu, 01 Jan 2026 00:00:00 GMT"),
            ("X-Empty", ""),
            ("X-Spaced", "padded"),
        ]
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
    );
    assert_eq!((raw.len(), raw.is_empty()), (5, false));
    let mut map = http::HeaderMap::new();
    raw.append_to(&mut map);
    assert_eq!(map.len(), 5);
    assert_eq!(map["x-request-id"], "theirs");
    assert_eq!(map["x-spaced"], "padded");
    assert_eq!(map["x-empty"], "");
    assert_eq!(body(res).await, "ok");

    let (res, raw) = fetch_passed_on(&transport, request("GET", addr, "/", "")).await;
    assert_eq!(res.status(), 503);
    assert!(raw.is_none());
    assert_eq!(res.headers()["retry-after"], "2");

    let (res, raw) = fetch_passed_on(&transport, request("GET", addr, "/", "")).await;
    assert!(raw.is_none());
    assert_eq!(res.headers()["connection"], "x-private");
    assert_eq!(res.headers()["x-private"], "1");

    let (res, raw) = fetch_passed_on(&transport, request("HEAD", addr, "/", "")).await;
    assert!(res.headers().is_empty());
    let raw = pairs(&raw.unwrap());
    assert_eq!(raw[0], ("Content-Length".to_owned(), "10".to_owned()));
    assert_eq!(raw[1], ("ETag".to_owned(), "\"v1\"".to_owned()));
    assert!(body(res).await.is_empty());

    let (res, raw) = fetch_passed_on(&transport, request("GET", addr, "/", "")).await;
    assert!(raw.is_none());
    assert!(res.headers().get("content-length").is_none());
    assert!(body(res).await.is_empty());
    // All five on one connection: the fields left raw changed nothing of
    // how the connection is kept.
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_server_writes_fields_passed_on_after_the_maps_own() {
    let upstream = script(vec![
        Step::Reply(
            "HTTP/1.1 200 OK\r\nServer: up\r\nX-Request-Id: theirs\r\n\
             Date: Thu, 01 Jan 2026 00:00:00 GMT\r\nContent-Length: 2\r\n\
             Connection: keep-alive\r\n\r\nok",
        ),
        Step::Reply("HTTP/1.1 200 OK\r\nContent-Length: 10\r\nServer: up\r\n\r\n"),
    ])
    .await;
    let transport = Transport::new(&TransportConfig::default()).unwrap();
    let (client, server_side) = tokio::io::duplex(64 * 1024);
    let to = upstream.addr;
    // A proxy in a few lines: the upstream's answer, with our request id.
    let handler = tower::service_fn(move |req: http::Request<Body>| {
        let transport = transport.clone();
        async move {
            let (parts, _) = req.into_parts();
            let path = parts.uri.path().to_owned();
            let req = http::Request::builder()
                .method(parts.method)
                .uri(format!("http://{to}{path}"))
                .body(Body::empty())
                .unwrap();
            let (mut res, raw) = fetch_passed_on(&transport, req).await;
            res.extensions_mut().insert(raw.unwrap());
            res.headers_mut()
                .insert("x-request-id", http::HeaderValue::from_static("ours"));
            Ok::<_, std::convert::Infallible>(res)
        }
    });
    let refuse = |_: server::Refusal| http::Response::new(Body::empty());
    let config = server::ServerConfig::default();
    let serving = tokio::spawn(async move {
        server::serve_connection(
            server_side,
            &config,
            handler,
            &refuse,
            std::future::pending(),
        )
        .await
        .map(|_| ())
    });
    let mut client = client;
    client
        .write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nHEAD /b HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    client.read_to_string(&mut out).await.unwrap();
    serving.await.unwrap().unwrap();

    let (first, second) = out
        .split_once("\r\n\r\nok")
        .expect("the first answer and its body");
    let lines: Vec<&str> = first.lines().collect();
    assert_eq!(lines[0], "HTTP/1.1 200 OK");
    let named = |lines: &[&str], name: &str| -> Vec<String> {
        lines
            .iter()
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    };
    // The map's field replaces the upstream's; the upstream's Date is
    // kept and no second one is added; the framing is the server's.
    assert_eq!(named(&lines, "x-request-id"), ["ours"]);
    assert_eq!(named(&lines, "server"), ["up"]);
    assert_eq!(named(&lines, "date"), ["Thu, 01 Jan 2026 00:00:00 GMT"]);
    assert_eq!(named(&lines, "content-length"), ["2"]);
    assert!(named(&lines, "connection").is_empty(), "{first}");
    assert!(
        first.contains("\r\nServer: up\r\n"),
        "written as sent: {first}"
    );

    // The HEAD answer keeps the upstream's length, once, and gets a Date.
    let lines: Vec<&str> = second.lines().collect();
    assert_eq!(named(&lines, "content-length"), ["10"]);
    assert_eq!(named(&lines, "date").len(), 1, "{second}");
    assert_eq!(named(&lines, "connection"), ["close"]);
    assert!(
        second.ends_with("\r\n\r\n"),
        "no body after a HEAD answer: {second:?}"
    );
}

#[tokio::test]
async fn fields_passed_on_keep_the_framing_and_connection_rules() {
    let server = script(vec![
        // HTTP/1.0 kept alive on request.
        Step::Reply("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\na"),
        // A 304's length describes the body it stands for: passed on.
        Step::Reply("HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\nETag: x\r\n\r\n"),
        // A 204's never is, HEAD or not.
        Step::Reply("HTTP/1.1 204 No Content\r\nContent-Length: 7\r\nX-A: 1\r\n\r\n"),
        // Another hop-by-hop field, and a 429: the map.
        Step::Reply("HTTP/1.1 200 OK\r\nTE: trailers\r\nContent-Length: 0\r\n\r\n"),
        Step::Reply(
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n",
        ),
        // `Connection: close`: not passed on, and the connection not
        // reused although the endpoint keeps it open.
        Step::Reply("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nb"),
        Step::Reply("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ])
    .await;
    let transport = Transport::new(&TransportConfig::default()).unwrap();
    let addr = server.addr;
    let names =
        |raw: &RawFields| -> Vec<String> { pairs(raw).into_iter().map(|(n, _)| n).collect() };

    let (res, raw) = fetch_passed_on(&transport, request("GET", addr, "/", "")).await;
    assert_eq!(res.version(), http::Version::HTTP_10);
    assert!(raw.unwrap().is_empty());
    assert_eq!(body(res).await, "a");

    let (res, raw) = fetch_passed_on(&transport, request("GET", addr, "/", "")).await;
    assert_eq!(res.status(), 304);
    assert_eq!(names(&raw.unwrap()), ["Content-Length", "ETag"]);

    let (res, raw) = fetch_passed_on(&transport, request("HEAD", addr, "/", "")).await;
    assert_eq!(res.status(), 204);
    assert_eq!(names(&raw.unwrap()), ["X-A"]);

    let (res, raw) = fetch_passed_on(&transport, request("GET", addr, "/", "")).await;
    assert!(raw.is_none());
    assert_eq!(res.headers()["te"], "trailers");

    let (res, raw) = fetch_passed_on(&transport, request("GET", addr, "/", "")).await;
    assert!(raw.is_none());
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);

    let (res, raw) = fetch_passed_on(&transport, request("GET", addr, "/", "")).await;
    assert!(raw.unwrap().is_empty(), "Connection is not passed on");
    assert_eq!(body(res).await, "b");
    let (res, _) = fetch_passed_on(&transport, request("GET", addr, "/", "")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}
