//! The HTTP/1.1 server connection against raw TCP clients: pipelining,
//! request bodies in memory and streamed, `100 Continue`, response framing,
//! refusals, the HTTP/2 hand-off, draining and the head-read limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use parking_lot::Mutex;
use switchyard_transport::{
    Body,
    server::{self, Refusal, Served, ServerConfig},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch},
};

/// A body of several frames and no known length.
struct Chunks(VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

fn chunks(parts: &[&'static str]) -> Body {
    Body::streaming(Chunks(parts.iter().map(|p| Bytes::from(*p)).collect()))
}

/// Answers by path:
/// - `/echo`: `<method> <target> <version> [<body>]`, in memory;
/// - `/stream`: `a`, `bb`, `ccc` as three frames, no length;
/// - `/length`: the same frames with a `content-length: 6` set by hand;
/// - `/ignore`: `ignored` without reading the body;
/// - `/fields`: `ok`, with the handler's own `date` and
///   `connection: close, x-hop`.
async fn handle(req: Request<Body>) -> Result<Response<Body>, Infallible> {
    let res = match req.uri().path() {
        "/stream" => Response::new(chunks(&["a", "bb", "ccc"])),
        "/length" => {
            let mut res = Response::new(chunks(&["a", "bb", "ccc"]));
            res.headers_mut()
                .insert(http::header::CONTENT_LENGTH, "6".parse().unwrap());
            res
        }
        "/ignore" => Response::new(Body::from("ignored")),
        "/fields" => {
            let mut res = Response::new(Body::from("ok"));
            let headers = res.headers_mut();
            headers.insert(
                http::header::DATE,
                "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
            );
            headers.insert(http::header::CONNECTION, "close, x-hop".parse().unwrap());
            res
        }
        _ => {
            let head = format!("{} {} {:?}", req.method(), req.uri(), req.version());
            let body = match req.into_body().collect_bytes().await {
                Ok(body) => String::from_utf8_lossy(&body).into_owned(),
                Err(e) => format!("body error: {e}"),
            };
            Response::new(Body::from(format!("{head} [{body}]")))
        }
    };
    Ok(res)
}

struct Server {
    addr: SocketAddr,
    /// Requests that reached the handler.
    handled: Arc<AtomicUsize>,
    /// How each connection ended.
    ended: Arc<Mutex<Vec<String>>>,
    drain: watch::Sender<bool>,
}

async fn server(config: ServerConfig) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(Mutex::new(Vec::new()));
    let (drain, drain_rx) = watch::channel(false);
    let (count, log) = (handled.clone(), ended.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (count, log, config) = (count.clone(), log.clone(), config.clone());
            let mut drain_rx = drain_rx.clone();
            tokio::spawn(async move {
                let handler = tower::service_fn(move |req| {
                    count.fetch_add(1, Ordering::SeqCst);
                    handle(req)
                });
                let refuse = |refusal: Refusal| {
                    let mut res = Response::new(Body::from(format!("refused: {refusal}")));
                    *res.status_mut() = refusal.status();
                    res
                };
                let drain = async move {
                    let _ = drain_rx.wait_for(|d| *d).await;
                };
                let end = match server::serve_connection(stream, &config, handler, &refuse, drain)
                    .await
                {
                    Ok(Served::Closed) => "closed".to_owned(),
                    Ok(Served::Http2 { read, .. }) => {
                        format!("http2 {}", String::from_utf8_lossy(&read))
                    }
                    Err(e) => format!("error {e}"),
                };
                log.lock().push(end);
            });
        }
    });
    Server {
        addr,
        handled,
        ended,
        drain,
    }
}

/// Sends `bytes` and reads everything until the server closes.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_to_close(&mut stream).await
}

async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
        .await
        .expect("the server did not close the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until `needle` has arrived.
async fn read_until(stream: &mut TcpStream, needle: &str) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&out).contains(needle) {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("timed out")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_with_their_bodies() {
    let s = server(ServerConfig::default()).await;
    let out = exchange(
        s.addr,
        b"GET /echo?1 HTTP/1.1\r\nhost: x\r\n\r\n\
          POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
          POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n3;ext=1\r\n!!!\r\n0\r\nx-t: 1\r\n\r\n\
          GET /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    let bodies: Vec<&str> = out
        .split("HTTP/1.1 200 OK\r\n")
        .skip(1)
        .map(|r| r.split_once("\r\n\r\n").unwrap().1)
        .collect();
    assert_eq!(
        bodies,
        [
            "GET /echo?1 HTTP/1.1 []",
            "POST /echo HTTP/1.1 [hello]",
            "POST /echo HTTP/1.1 [hi!!!]",
            "GET /echo HTTP/1.1 []",
        ],
        "{out}"
    );
    assert!(out.contains("content-length: 23\r\n"), "{out}");
    assert!(out.contains("date: "), "{out}");
    // The last one asked to close: the answer says so.
    let last = out.rsplit("HTTP/1.1 200 OK\r\n").next().unwrap();
    assert!(last.contains("connection: close\r\n"), "{out}");
    assert_eq!(s.handled.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_body_sent_after_its_head_is_streamed_to_the_handler() {
    let s = server(ServerConfig::default()).await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream
        .write_all(b"PUT /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nhel")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    stream.write_all(b"lo ").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    stream.write_all(b"you!").await.unwrap();
    let out = read_until(&mut stream, "]").await;
    assert!(out.ends_with("PUT /echo HTTP/1.1 [hello you!]"), "{out}");
    // Still open for the next request.
    stream
        .write_all(b"GET /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let out = read_to_close(&mut stream).await;
    assert!(out.ends_with("GET /echo HTTP/1.1 []"), "{out}");
}

#[tokio::test]
async fn continue_is_sent_only_when_the_handler_reads_the_body() {
    let s = server(ServerConfig::default()).await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let out = read_until(&mut stream, "\r\n\r\n").await;
    assert_eq!(out, "HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"data").await.unwrap();
    let out = read_until(&mut stream, "]").await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.ends_with("[data]"), "{out}");

    // A handler that answers without reading: no 100, and the connection
    // closes after the answer (the body was never read).
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream
        .write_all(
            b"POST /ignore HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let out = read_to_close(&mut stream).await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(!out.contains("100 Continue"), "{out}");
    assert!(out.contains("connection: close\r\n"), "{out}");
    assert!(out.ends_with("ignored"), "{out}");
}

#[tokio::test]
async fn the_handlers_own_date_and_connection_fields_are_honoured() {
    let s = server(ServerConfig::default()).await;
    // Asked to keep the connection open, but the handler closes it.
    let out = exchange(
        s.addr,
        b"GET /fields HTTP/1.1\r\nhost: x\r\n\r\nGET /echo HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert_eq!(out.matches("HTTP/1.1 200").count(), 1, "{out}");
    assert_eq!(out.matches("date: ").count(), 1, "{out}");
    assert!(
        out.contains("date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"),
        "{out}"
    );
    assert!(out.contains("connection: x-hop\r\n"), "{out}");
    assert!(out.contains("connection: close\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\nok"), "{out}");
    // Without fields of its own, the server writes the date.
    let out = exchange(
        s.addr,
        b"GET /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(out.matches("date: ").count(), 1, "{out}");
    assert_eq!(out.matches("connection: ").count(), 1, "{out}");
}

#[tokio::test]
async fn response_framing_follows_the_body_and_the_client() {
    let s = server(ServerConfig::default()).await;
    // No length: chunked for HTTP/1.1.
    let out = exchange(
        s.addr,
        b"GET /stream HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(out.contains("transfer-encoding: chunked\r\n"), "{out}");
    assert!(
        out.ends_with("\r\n\r\n1\r\na\r\n2\r\nbb\r\n3\r\nccc\r\n0\r\n\r\n"),
        "{out}"
    );
    // A length set by the handler is kept.
    let out = exchange(
        s.addr,
        b"GET /length HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(out.contains("content-length: 6\r\n"), "{out}");
    assert!(!out.contains("transfer-encoding"), "{out}");
    assert!(out.ends_with("\r\n\r\nabbccc"), "{out}");
    // HTTP/1.0 has no chunked coding: the body runs to the close.
    let out = exchange(s.addr, b"GET /stream HTTP/1.0\r\n\r\n").await;
    assert!(out.contains("connection: close\r\n"), "{out}");
    assert!(!out.contains("transfer-encoding"), "{out}");
    assert!(out.ends_with("\r\n\r\nabbccc"), "{out}");
    // HTTP/1.0 with keep-alive stays open and says so.
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream
        .write_all(b"GET /echo HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let out = read_until(&mut stream, "]").await;
    assert!(out.contains("connection: keep-alive\r\n"), "{out}");
    assert!(out.ends_with("GET /echo HTTP/1.0 []"), "{out}");
}

#[tokio::test]
async fn a_body_left_unread_but_already_here_keeps_the_connection() {
    let s = server(ServerConfig::default()).await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    // A chunked body is always streamed to the handler; this one is all
    // read with its head, and the handler answers without reading it. A
    // blank line between requests is allowed.
    stream
        .write_all(
            b"POST /ignore HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
              3\r\nabc\r\n0\r\n\r\n\r\n\
              GET /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let out = read_to_close(&mut stream).await;
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    assert!(out.ends_with("GET /echo HTTP/1.1 []"), "{out}");
}

#[tokio::test]
async fn a_chunk_size_line_with_a_bare_lf_is_an_error() {
    let s = server(ServerConfig::default()).await;
    let out = exchange(
        s.addr,
        b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2;x\nyz\r\nhi\r\n0\r\n\r\n",
    )
    .await;
    assert!(
        out.contains("body error: invalid request body: a chunk-size line with a bare CR or LF"),
        "{out}"
    );
    assert!(out.contains("connection: close\r\n"), "{out}");
}

#[tokio::test]
async fn chunk_extensions_are_capped_over_the_whole_body() {
    let s = server(ServerConfig::default()).await;
    let chunk = format!("1;{}\r\nx\r\n", "e".repeat(1000));
    // 16 chunks of ~1 KB extensions each fit; 20 don't.
    let within = format!(
        "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{}0\r\n\r\n",
        chunk.repeat(16)
    );
    let out = exchange(s.addr, within.as_bytes()).await;
    assert!(out.ends_with(&format!("[{}]", "x".repeat(16))), "{out}");
    let over = within.replace(&chunk.repeat(16), &chunk.repeat(20));
    let out = exchange(s.addr, over.as_bytes()).await;
    assert!(
        out.contains("chunk extensions longer than 16384 bytes"),
        "{out}"
    );
}

#[tokio::test]
async fn head_answers_carry_the_length_without_the_body() {
    let s = server(ServerConfig::default()).await;
    let out = exchange(
        s.addr,
        b"HEAD /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    // The length of `HEAD /echo HTTP/1.1 []`, and nothing after the head.
    assert!(out.contains("content-length: 22\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\n"), "{out}");
}

#[tokio::test]
async fn refused_requests_never_reach_the_handler() {
    let s = server(ServerConfig {
        max_head_bytes: 200,
        max_headers: 4,
        ..ServerConfig::default()
    })
    .await;
    for (request, status, why) in [
        (
            "POST /echo HTTP/1.1\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n".to_owned(),
            "400",
            "both content-length and transfer-encoding",
        ),
        (
            "POST /echo HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\nx".to_owned(),
            "400",
            "more than one content-length",
        ),
        (
            format!("GET /echo HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(300)),
            "431",
            "larger than 200 bytes",
        ),
        (
            "GET /echo HTTP/1.1\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\n\r\n".to_owned(),
            "431",
            "more than 4 header fields",
        ),
        ("GET /echo HTTP/9\r\n\r\n".to_owned(), "400", "malformed"),
    ] {
        let out = exchange(s.addr, request.as_bytes()).await;
        assert!(out.starts_with(&format!("HTTP/1.1 {status} ")), "{out}");
        assert!(out.contains(why), "{out}");
        assert!(out.contains("connection: close\r\n"), "{out}");
        assert_eq!(out.matches("HTTP/1.1").count(), 1, "{out}");
    }
    assert_eq!(s.handled.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_http2_preface_hands_the_connection_back() {
    let s = server(ServerConfig::default()).await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    // In two pieces: the decision waits for the whole preface.
    stream.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    stream.write_all(b"\r\nSM\r\n\r\n").await.unwrap();
    let (tx, rx) = oneshot::channel();
    let ended = s.ended.clone();
    tokio::spawn(async move {
        loop {
            if let Some(end) = ended.lock().first().cloned() {
                let _ = tx.send(end);
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let end = tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end, "http2 PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    assert_eq!(s.handled.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn draining_closes_idle_connections_and_finishes_the_answer_in_progress() {
    let s = server(ServerConfig::default()).await;
    let mut idle = TcpStream::connect(s.addr).await.unwrap();
    let mut busy = TcpStream::connect(s.addr).await.unwrap();
    busy.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n\r\nab")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.drain.send(true).unwrap();
    assert_eq!(read_to_close(&mut idle).await, "");
    busy.write_all(b"cd").await.unwrap();
    let out = read_to_close(&mut busy).await;
    assert!(out.contains("connection: close\r\n"), "{out}");
    assert!(out.ends_with("[abcd]"), "{out}");
}

#[tokio::test]
async fn a_head_not_complete_in_time_closes_the_connection_unanswered() {
    let s = server(ServerConfig {
        header_read_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    })
    .await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream
        .write_all(b"GET /echo HTTP/1.1\r\nhos")
        .await
        .unwrap();
    assert_eq!(read_to_close(&mut stream).await, "");
    // The limit counts again from the end of each answer.
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(120)).await;
        stream
            .write_all(b"GET /echo HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        read_until(&mut stream, "]").await;
    }
    assert_eq!(read_to_close(&mut stream).await, "");
    assert_eq!(s.handled.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn status_without_body_sends_none() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let handler = tower::service_fn(|_req: Request<Body>| async {
            let mut res = Response::new(Body::from("dropped"));
            *res.status_mut() = StatusCode::NO_CONTENT;
            Ok::<_, Infallible>(res)
        });
        let refuse = |_: Refusal| Response::new(Body::empty());
        let _ = server::serve_connection(
            stream,
            &ServerConfig::default(),
            handler,
            &refuse,
            std::future::pending(),
        )
        .await;
    });
    let out = exchange(addr, b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 204 No Content\r\n"), "{out}");
    assert!(!out.contains("content-length"), "{out}");
    assert!(out.ends_with("\r\n\r\n"), "{out}");
}
