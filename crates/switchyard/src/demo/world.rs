//! The demo's example world: four services of an online shop, two instances
//! each, on loopback, answering JSON after a realistic, jittered latency, and
//! able to die, slow down or fail on command.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
use tokio::{net::TcpListener, sync::watch, task::JoinSet};

/// What an instance is doing to its callers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Fault {
    /// Answers normally.
    Healthy,
    /// Answers `factor` times slower.
    Slow(u32),
    /// Answers `503` to everything.
    Failing,
    /// Its listener and connections are closed: connections are refused.
    Dead,
}

/// A service of the world.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Kind {
    pub(crate) name: &'static str,
    latency: Duration,
    body: fn(u64) -> serde_json::Value,
}

pub(crate) const KINDS: [Kind; 4] = [
    Kind {
        name: "catalog",
        latency: Duration::from_millis(8),
        body: |id| serde_json::json!({ "id": id, "name": format!("Widget {id}"), "category": "tools" }),
    },
    Kind {
        name: "pricing",
        latency: Duration::from_millis(5),
        body: |id| serde_json::json!({ "amount": 10 + id % 90, "currency": "EUR" }),
    },
    Kind {
        name: "inventory",
        latency: Duration::from_millis(4),
        body: |id| serde_json::json!({ "available": (id * 7) % 23 }),
    },
    Kind {
        name: "reviews",
        latency: Duration::from_millis(12),
        body: |id| serde_json::json!({ "stars": 3.5 + (id % 3) as f64 * 0.5, "count": id % 40 }),
    },
];

/// One running instance.
pub(crate) struct Instance {
    pub(crate) service: &'static str,
    pub(crate) label: String,
    pub(crate) addr: SocketAddr,
    fault: watch::Sender<Fault>,
    served: Arc<AtomicU64>,
    reported: AtomicU64,
    task: tokio::task::JoinHandle<()>,
}

impl Instance {
    pub(crate) async fn start(kind: Kind, n: usize) -> std::io::Result<Instance> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (fault, fault_rx) = watch::channel(Fault::Healthy);
        let served = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(listener, kind, fault_rx, served.clone()));
        Ok(Instance {
            service: kind.name,
            label: format!("{}-{n}", kind.name),
            addr,
            fault,
            served,
            reported: AtomicU64::new(0),
            task,
        })
    }

    pub(crate) fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Requests answered (any status) since the previous call.
    pub(crate) fn served_since_last(&self) -> u64 {
        let now = self.served.load(Ordering::Relaxed);
        now - self.reported.swap(now, Ordering::Relaxed)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    listener: TcpListener,
    kind: Kind,
    mut fault: watch::Receiver<Fault>,
    served: Arc<AtomicU64>,
) {
    let mut listener = Some(listener);
    let mut conns = JoinSet::new();
    loop {
        let dead = *fault.borrow() == Fault::Dead;
        if dead {
            // Dying closes the listener and every open connection; coming
            // back binds the same address again.
            if let Some(l) = listener.take() {
                let addr = l.local_addr().ok();
                drop(l);
                conns.abort_all();
                let _ = fault.wait_for(|f| *f != Fault::Dead).await;
                match addr.map(TcpListener::bind) {
                    Some(bind) => match bind.await {
                        Ok(l) => listener = Some(l),
                        Err(err) => {
                            tracing::warn!(%err, "demo instance could not come back");
                            return;
                        }
                    },
                    None => return,
                }
            }
            continue;
        }
        let Some(l) = &listener else { return };
        let accepted = tokio::select! {
            accepted = l.accept() => accepted,
            _ = fault.changed() => continue,
        };
        let Ok((stream, _)) = accepted else { continue };
        let fault = fault.clone();
        let served = served.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let fault = *fault.borrow();
                let served = served.clone();
                async move { Ok::<_, Infallible>(answer(kind, fault, req.uri().path(), &served).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
        while conns.try_join_next().is_some() {}
    }
}

async fn answer(kind: Kind, fault: Fault, path: &str, served: &AtomicU64) -> Response<Full<Bytes>> {
    if path == "/healthz" {
        // A failing instance is alive: its errors are for the breaker and the
        // outlier detector to see, not the health check.
        return status_response(200, "");
    }
    let factor = match fault {
        Fault::Slow(f) => f,
        _ => 1,
    };
    let jitter = rand::rng().random_range(0.7..1.3);
    tokio::time::sleep(kind.latency.mul_f64(jitter) * factor).await;
    served.fetch_add(1, Ordering::Relaxed);
    if fault == Fault::Failing {
        return status_response(503, "{\"error\":\"overloaded\"}");
    }
    let id = path
        .rsplit('/')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut res = Response::new(Full::new(Bytes::from((kind.body)(id).to_string())));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    res
}

fn status_response(status: u16, body: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    res
}
