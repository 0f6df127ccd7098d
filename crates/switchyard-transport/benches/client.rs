//! One HTTP/1.1 GET round trip over a pooled loopback connection: our own
//! client (what `Transport` uses for in-memory bodies) against hyper-util's
//! legacy pooled client (what it used before, and still uses for streamed
//! uploads), both against the same minimal backend on its own thread.
//!
//! `cargo bench -p switchyard-transport --bench client`
//!
//! The backend shares the machine's cores with the client, so compare the
//! two lines of one run, not absolute times across machines.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]
// A bench that cannot set itself up should stop loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioTimer},
};
use switchyard_transport::{Body, Transport, TransportConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n\r\nok\n";

/// A backend on its own thread answering every request head with `RESPONSE`.
fn backend() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                stream.set_nodelay(true).unwrap();
                tokio::spawn(async move {
                    let mut buf = Vec::with_capacity(4096);
                    loop {
                        let mut chunk = [0u8; 4096];
                        let n = match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            if stream.write_all(RESPONSE).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
    });
    addr
}

fn get(addr: SocketAddr) -> http::Request<Body> {
    http::Request::get(format!("http://{addr}/"))
        .body(Body::empty())
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let addr = backend();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("http1 GET round trip");

    let transport = rt.block_on(async { Transport::new(&TransportConfig::default()).unwrap() });
    group.bench_function("switchyard h1 client", |b| {
        b.to_async(&rt).iter(|| async {
            let res = transport.send(get(addr)).await.unwrap();
            res.into_body().collect_bytes().await.unwrap()
        })
    });

    let legacy: Client<_, Body> = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .build_http();
    group.bench_function("hyper-util legacy client", |b| {
        b.to_async(&rt).iter(|| async {
            let res = legacy.request(get(addr)).await.unwrap();
            res.into_body().collect().await.unwrap().to_bytes()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
