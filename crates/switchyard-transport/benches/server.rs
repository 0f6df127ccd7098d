//! One HTTP/1.1 GET round trip on a keep-alive connection to a server that
//! answers `ok\n`: our own server connection (what the gateway's listeners
//! run) against hyper's HTTP/1 server (what they ran before), the same
//! handler behind both.
//!
//! `cargo bench -p switchyard-transport --bench server`
//!
//! The connection is an in-memory pipe (`tokio::io::duplex`) and client and
//! server run on one thread, so a round trip costs no system call and no
//! thread wake-up: the figures are the servers' own work plus the same tiny
//! client. (Over loopback TCP both take ~56 µs per round trip here, all of
//! it waking the other thread.) Compare the two lines of one run.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]
// A bench that cannot set itself up should stop loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::convert::Infallible;

use criterion::{Criterion, criterion_group, criterion_main};
use hyper_util::rt::TokioIo;
use switchyard_transport::{
    Body,
    server::{self, Refusal, ServerConfig},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const REQUEST: &[u8] =
    b"GET /ping HTTP/1.1\r\nhost: bench\r\nuser-agent: bench\r\naccept: */*\r\n\r\n";

async fn answer<B>(_req: http::Request<B>) -> Result<http::Response<Body>, Infallible> {
    let mut res = http::Response::new(Body::from("ok\n"));
    res.headers_mut()
        .insert(http::header::CONTENT_TYPE, "text/plain".parse().unwrap());
    Ok(res)
}

/// Serves one connection on `io` (spawned on the current runtime): ours
/// when `own`, else hyper's HTTP/1 server.
fn serve(io: DuplexStream, own: bool) {
    tokio::spawn(async move {
        if own {
            let refuse = |r: Refusal| http::Response::new(Body::from(r.to_string()));
            let handler = tower::service_fn(answer::<Body>);
            let _ = server::serve_connection(
                io,
                &ServerConfig::default(),
                handler,
                &refuse,
                std::future::pending(),
            )
            .await;
        } else {
            let handler = hyper::service::service_fn(answer);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), handler)
                .await;
        }
    });
}

/// Sends one request and reads until the end of its (small) response.
async fn round_trip(stream: &mut DuplexStream, buf: &mut [u8]) {
    stream.write_all(REQUEST).await.unwrap();
    let mut got = 0;
    loop {
        let n = stream.read(&mut buf[got..]).await.unwrap();
        assert!(n > 0, "the server closed the connection");
        got += n;
        if buf[..got].ends_with(b"ok\n") {
            return;
        }
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("http1 server GET round trip");
    for (name, own) in [("switchyard server", true), ("hyper server", false)] {
        let (mut stream, server_side) = tokio::io::duplex(64 * 1024);
        rt.block_on(async { serve(server_side, own) });
        let mut buf = vec![0u8; 4096];
        group.bench_function(name, |b| {
            b.iter(|| rt.block_on(round_trip(&mut stream, &mut buf)));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
