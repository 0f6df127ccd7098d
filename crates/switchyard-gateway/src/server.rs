//! The inbound server loop of one listener: accept, limit, serve, drain.
//!
//! [`serve`] accepts TCP connections and serves HTTP/1.1 and HTTP/2 with
//! prior knowledge (h2c) on the same port (the protocol is chosen by the
//! connection's first bytes), calling one handler per request. The
//! listener's [`ListenerConfig`] limits apply:
//!
//! | key | effect |
//! | --- | --- |
//! | `max_header_bytes` | HTTP/1.1: hyper's read buffer is capped at this size, so a larger header section gets `431` and the connection closes. hyper can't go below 8192 bytes, so smaller values act as 8192. HTTP/2: the advertised `SETTINGS_MAX_HEADER_LIST_SIZE`. |
//! | `max_headers` | HTTP/1.1: more header fields get `431` from hyper. HTTP/2: checked by the proxy (`431` problem+json). |
//! | `header_read_timeout` | HTTP/1.1: the time a client has to send a request's complete header section, counted from the connection's start or the end of the previous response; when it passes the connection is closed without an answer. This is also how long an idle keep-alive connection is kept (hyper starts the timer as soon as it waits for the next request). |
//! | `idle_timeout` | A connection with no request in flight for this long is closed (HTTP/1.1) or sent `GOAWAY` (HTTP/2). For HTTP/1.1 the shorter of this and `header_read_timeout` applies. |
//! | `max_connections` | At most this many connections are served at once; when full, no more are accepted (they wait in the kernel's accept queue) until one closes. |
//! | `max_body_bytes` | Enforced by the proxy ([`crate::proxy`]). |
//!
//! HTTP/2 connections also send a PING every [`H2_KEEP_ALIVE_INTERVAL`] and
//! close when one goes unanswered for [`H2_KEEP_ALIVE_TIMEOUT`]. Accepted
//! sockets have `TCP_NODELAY` set.
//!
//! Each request reaches the handler with two extensions: [`ClientAddr`],
//! the peer's address, and, for HTTP/1.x, a
//! [`ScannedFraming`] record of its raw
//! framing headers (see [`crate::framing`]).
//!
//! Shutdown: when the `shutdown` future completes, the listening socket is
//! closed (new connections are refused), every connection is told to finish
//! (HTTP/1.1: close after the response in flight, or at once when idle;
//! HTTP/2: `GOAWAY`, then finish the open streams), and [`serve`] returns
//! when all connections have closed or `drain_timeout` has passed, whichever
//! comes first; connections still open then are cut.
//!
//! Metrics: gauge `switchyard_connections_open{listener}`, counter
//! `switchyard_connections_total{listener}`.

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use pin_project_lite::pin_project;
use switchyard_transport::Body;
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
    task::JoinSet,
    time::Instant,
};
use tower::{Service, ServiceExt, util::Oneshot};

use crate::{
    config::ListenerConfig,
    framing::{Records, ScannedFraming, ScannedIo},
    tls::{PeerIdentity, TlsTerminator},
};

/// Interval between HTTP/2 keep-alive PINGs.
pub const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Time an HTTP/2 keep-alive PING may go unanswered before the connection closes.
pub const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// hyper's HTTP/1 header-count limit when none is set.
const HYPER_MAX_HEADERS: usize = 100;
/// hyper's smallest allowed HTTP/1 read buffer.
pub const MIN_HEADER_BUF: usize = 8192;

/// Something a response keeps alive until its body has been sent (a response
/// extension the server moves into the body): call-limit concurrency slots.
#[derive(Clone)]
// The value is never read: it is held only so it drops with the body.
pub struct HoldUntilSent(#[allow(dead_code)] Arc<dyn std::any::Any + Send + Sync>);

impl HoldUntilSent {
    /// Holds `value` until the response it is attached to is fully sent.
    pub fn new(value: impl std::any::Any + Send + Sync) -> Self {
        Self(Arc::new(value))
    }
}

impl std::fmt::Debug for HoldUntilSent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HoldUntilSent")
    }
}

/// The address of the client a request came from (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// Serves `listener` with `handler` until `shutdown` completes, then drains
/// for at most `drain_timeout`; see the [module docs](self).
///
/// Errors accepting a connection are logged and the loop goes on (a full
/// file table must not stop the listener), so this returns `Ok(())` once
/// drained.
pub async fn serve<H>(
    listener: TcpListener,
    limits: &ListenerConfig,
    handler: H,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) -> io::Result<()>
where
    H: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    H::Future: Send + 'static,
{
    let name: Arc<str> = Arc::from(limits.name.as_str());
    let builder = Arc::new(builder(limits));
    let max_head = limits.max_header_bytes.max(MIN_HEADER_BUF);
    let idle_timeout = limits.idle_timeout;
    let slots = Arc::new(Semaphore::new(
        limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    let labels = [("listener", name.to_string())];
    let open = metrics::gauge!("switchyard_connections_open", &labels);
    let total = metrics::counter!("switchyard_connections_total", &labels);
    let tls_failures = metrics::counter!("switchyard_tls_handshake_failures_total", &labels);
    let limits_header_timeout = limits.header_read_timeout;
    let tls = match &limits.tls {
        Some(config) => Some(Arc::new(TlsTerminator::new(config).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("listener {name}: {e}"))
        })?)),
        None => None,
    };
    // Certificates reload from disk for as long as the listener serves.
    let _reloader = tls.clone().map(|t| AbortOnDrop(tokio::spawn(t.watch())));

    tracing::info!(listener = %name, addr = ?listener.local_addr().ok(), "listening");
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(listener = %name, %err, "accept failed");
                    // Resource errors (EMFILE) repeat at once; don't spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while conns.try_join_next().is_some() {}
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%err, "set_nodelay failed");
        }
        total.increment(1);
        open.increment(1.0);
        let open = open.clone();
        let builder = builder.clone();
        let mut drain_rx = drain_rx.clone();
        let handler = handler.clone();
        let tls = tls.as_ref().map(|t| t.acceptor());
        let handshake_timeout = limits_header_timeout;
        let tls_failures = tls_failures.clone();
        conns.spawn(async move {
            let _permit = permit;
            let conn = Conn {
                builder,
                handler,
                peer,
                max_head,
                idle_timeout,
            };
            match tls {
                None => conn.serve(stream, None, &mut drain_rx).await,
                Some(acceptor) => {
                    // A client that never finishes its handshake is cut like
                    // one that never finishes its headers.
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let identity = crate::tls::peer_identity(stream.get_ref().1);
                            conn.serve(stream, identity, &mut drain_rx).await;
                        }
                        Ok(Err(err)) => {
                            tls_failures.increment(1);
                            tracing::debug!(%peer, %err, "TLS handshake failed");
                        }
                        Err(_) => {
                            tls_failures.increment(1);
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                }
            }
            open.decrement(1.0);
        });
    }

    // Refuse new connections at once, then let the open ones finish.
    drop(listener);
    let _ = drain_tx.send(true);
    tracing::info!(listener = %name, connections = conns.len(), "draining");
    let drained = tokio::time::timeout(drain_timeout, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            listener = %name,
            connections = conns.len(),
            "drain timeout passed; closing the remaining connections"
        );
        conns.shutdown().await;
    }
    Ok(())
}

/// Aborts a background task when the listener stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What serving one connection needs.
struct Conn<H> {
    builder: Arc<auto::Builder<TokioExecutor>>,
    handler: H,
    peer: SocketAddr,
    max_head: usize,
    idle_timeout: Duration,
}

impl<H> Conn<H>
where
    H: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    H::Future: Send + 'static,
{
    /// Serves HTTP on `stream` (plain TCP or TLS) until it closes, the idle
    /// timeout passes, or the listener drains.
    async fn serve<I>(
        self,
        stream: I,
        identity: Option<PeerIdentity>,
        drain_rx: &mut watch::Receiver<bool>,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            builder,
            handler,
            peer,
            max_head,
            idle_timeout,
        } = self;
        let (io, records) = ScannedIo::new(stream, max_head);
        let activity = Arc::new(Activity::new());
        let svc = ConnService {
            handler,
            peer,
            identity,
            records,
            activity: activity.clone(),
        };
        let conn = builder.serve_connection(TokioIo::new(io), svc);
        let mut conn = pin!(conn);
        let mut idle = pin!(activity.idle(idle_timeout));
        let mut closing = false;
        loop {
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(err) = res {
                        tracing::debug!(%peer, %err, "connection ended with an error");
                    }
                    break;
                }
                _ = drain_rx.wait_for(|draining| *draining), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = &mut idle, if !closing => {
                    tracing::debug!(%peer, "closing idle connection");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

fn builder(limits: &ListenerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BUF))
        .header_read_timeout(limits.header_read_timeout);
    // hyper's own limit is 100; setting any value, even 100, makes it build
    // its header index arrays element by element on every request instead
    // of taking them uninitialised, so only a different limit is set.
    if limits.max_headers != HYPER_MAX_HEADERS {
        builder.http1().max_headers(limits.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    builder
}

// === impl ConnService ===

/// The per-connection service: adds the connection's extensions and tracks
/// requests in flight for the idle timeout.
#[derive(Clone)]
struct ConnService<H> {
    handler: H,
    peer: SocketAddr,
    identity: Option<PeerIdentity>,
    records: Records,
    activity: Arc<Activity>,
}

impl<H> hyper::service::Service<Request<Incoming>> for ConnService<H>
where
    H: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    H::Future: Send + 'static,
{
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = ConnFuture<H>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ClientAddr(self.peer));
        if let Some(identity) = &self.identity {
            req.extensions_mut().insert(identity.clone());
        }
        if req.version() != Version::HTTP_2 {
            // Heads are scanned before hyper parses them, so this request's
            // record is the oldest one; none means the scanner lost track.
            let record = self.records.lock().pop_front();
            req.extensions_mut().insert(ScannedFraming(record));
        }
        ConnFuture {
            inner: self.handler.clone().oneshot(req),
            guard: Some(InFlight::start(self.activity.clone())),
        }
    }
}

pin_project! {
    /// The future of one request on a connection: the handler's answer,
    /// its body wrapped so the request stays in flight until it is sent.
    /// Named rather than boxed: one allocation less per request.
    struct ConnFuture<H>
    where
        H: Service<Request<Incoming>>,
    {
        #[pin]
        inner: Oneshot<H, Request<Incoming>>,
        guard: Option<InFlight>,
    }
}

impl<H> Future for ConnFuture<H>
where
    H: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>,
{
    type Output = Result<Response<TrackedBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        let held = res.extensions_mut().remove::<HoldUntilSent>();
        let guard = this.guard.take();
        Poll::Ready(Ok(res.map(|inner| TrackedBody {
            inner,
            _guard: guard,
            _held: held,
        })))
    }
}

// === impl Activity ===

/// Requests in flight on one connection, and when it last became idle.
///
/// Nothing wakes the idle timer when a request starts or ends: the timer
/// fires at the earliest moment the connection could have been idle for
/// the whole timeout and, if it wasn't, is pushed to the next such moment.
/// That keeps the per-request cost to an atomic increment and decrement
/// (and one clock read when the last request in flight ends) instead of a
/// wake-up of the connection's task and a new timer per request.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    /// When `in_flight` last fell to zero (or the connection started).
    idle_since: parking_lot::Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            idle_since: parking_lot::Mutex::new(Instant::now()),
        }
    }

    /// Completes once the connection has had no request in flight for `timeout`.
    async fn idle(&self, timeout: Duration) {
        let sleep = tokio::time::sleep(timeout);
        let mut sleep = pin!(sleep);
        loop {
            sleep.as_mut().await;
            let now = Instant::now();
            let next = if self.in_flight.load(Ordering::Acquire) == 0 {
                let deadline = *self.idle_since.lock() + timeout;
                if deadline <= now {
                    return;
                }
                deadline
            } else {
                // Busy: it can't be idle long enough before one more timeout.
                now + timeout
            };
            sleep.as_mut().reset(next);
        }
    }
}

/// Counts one request in flight until dropped (with the response body, or
/// with the handler's future when the client goes away first).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Set the time under the lock before the count can be seen at zero,
        // so the timer never reads zero with a stale start of idleness.
        let mut since = self.0.idle_since.lock();
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *since = Instant::now();
        }
    }
}

pin_project! {
    /// A response body that keeps its request counted in flight until it
    /// is dropped.
    struct TrackedBody {
        #[pin]
        inner: Body,
        _guard: Option<InFlight>,
        _held: Option<HoldUntilSent>,
    }
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = switchyard_policy::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// Waits for `activity` to be idle for [`TIMEOUT`]; returns when it was.
    fn idle_at(activity: &Arc<Activity>) -> tokio::task::JoinHandle<Instant> {
        let activity = activity.clone();
        tokio::spawn(async move {
            activity.idle(TIMEOUT).await;
            Instant::now()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_is_idle_after_the_timeout() {
        let start = Instant::now();
        let activity = Arc::new(Activity::new());
        let closed = idle_at(&activity).await.unwrap();
        assert_eq!(closed - start, TIMEOUT);
    }

    /// The timer is not woken per request: it must still find the exact
    /// end of the last request, however many timeouts a request lasted.
    #[tokio::test(start_paused = true)]
    async fn idleness_counts_from_the_end_of_the_last_request() {
        let start = Instant::now();
        let activity = Arc::new(Activity::new());
        let idle = idle_at(&activity);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let first = InFlight::start(activity.clone());
        let second = InFlight::start(activity.clone());
        tokio::time::sleep(Duration::from_secs(15)).await;
        drop(first);
        tokio::time::sleep(Duration::from_secs(10)).await;
        // 28 s in: idle is only counted once no request is in flight.
        assert!(!idle.is_finished());
        drop(second);
        let closed = idle.await.unwrap();
        tracing::info!(after = ?closed - start, "idle");
        assert_eq!(closed - start, Duration::from_secs(38));
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_request_restarts_the_count() {
        let start = Instant::now();
        let activity = Arc::new(Activity::new());
        let idle = idle_at(&activity);
        tokio::time::sleep(Duration::from_secs(9)).await;
        drop(InFlight::start(activity.clone()));
        let closed = idle.await.unwrap();
        assert_eq!(closed - start, Duration::from_secs(19));
    }
}
