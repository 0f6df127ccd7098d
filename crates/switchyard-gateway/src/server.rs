//! The inbound server loop of one listener: accept, limit, serve, drain.
//!
//! [`serve`] accepts TCP connections and serves HTTP/1.1 and HTTP/2 with
//! prior knowledge (h2c) on the same port (the protocol is chosen by the
//! connection's first bytes), calling one handler per request. HTTP/1.x is
//! served by our own connection loop
//! ([`switchyard_transport::server`]: one parse per head, framing checked
//! as it is read, bodies that came with their head handed over in memory,
//! no buffer held by an idle connection); HTTP/2 by hyper. The listener's
//! [`ListenerConfig`] limits apply:
//!
//! | key | effect |
//! | --- | --- |
//! | `max_header_bytes` | HTTP/1.1: a request line and header section larger than this gets `431` problem+json and the connection closes. HTTP/2: the advertised `SETTINGS_MAX_HEADER_LIST_SIZE`. |
//! | `max_headers` | HTTP/1.1: more header fields get `431` problem+json and the connection closes. HTTP/2: checked by the proxy (`431` problem+json). |
//! | `header_read_timeout` | HTTP/1.1: the time a client has to send a request's complete header section, counted from the connection's start or the end of the previous response; when it passes the connection is closed without an answer. This is also how long an idle keep-alive connection is kept. |
//! | `idle_timeout` | A connection with no request in flight for this long is closed (HTTP/1.1) or sent `GOAWAY` (HTTP/2). For HTTP/1.1 the shorter of this and `header_read_timeout` applies. |
//! | `max_connections` | At most this many connections are served at once; when full, no more are accepted (they wait in the kernel's accept queue) until one closes. |
//! | `max_body_bytes` | Enforced by the proxy ([`crate::proxy`]). |
//!
//! HTTP/2 connections also send a PING every [`H2_KEEP_ALIVE_INTERVAL`] and
//! close when one goes unanswered for [`H2_KEEP_ALIVE_TIMEOUT`]. Accepted
//! sockets have `TCP_NODELAY` set.
//!
//! HTTP/1.x requests whose framing is ambiguous (`Content-Length` with
//! `Transfer-Encoding`, two of either, a coding other than `chunked`, a bad
//! length) are answered `400` problem+json before the handler sees them,
//! and the connection closes: request smuggling relies on two hops reading
//! one request differently.
//!
//! Each request reaches the handler with the extension [`ClientAddr`], the
//! peer's address, and, over TLS with client certificates, the
//! [`PeerIdentity`].
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

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pin_project_lite::pin_project;
use switchyard_transport::{
    Body,
    server::{Refusal, Served, ServerConfig},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::{Semaphore, watch},
    task::JoinSet,
    time::Instant,
};
use tower::{Service, ServiceExt, util::Oneshot};

use crate::{
    config::ListenerConfig,
    problem::Problem,
    tls::{PeerIdentity, TlsTerminator},
};

/// Interval between HTTP/2 keep-alive PINGs.
pub const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Time an HTTP/2 keep-alive PING may go unanswered before the connection closes.
pub const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

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
    H: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + ForConnection
        + Clone
        + Send
        + Sync
        + 'static,
    H::Future: Send + 'static,
{
    let name: Arc<str> = Arc::from(limits.name.as_str());
    let settings = Arc::new(Settings::new(limits));
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
        let settings = settings.clone();
        let mut drain_rx = drain_rx.clone();
        let handler = handler.clone();
        let tls = tls.as_ref().map(|t| t.acceptor());
        let handshake_timeout = limits_header_timeout;
        let tls_failures = tls_failures.clone();
        // Every policy on the connection's calls reads the time: once per
        // poll is enough (see `clock`).
        conns.spawn(switchyard_policy::clock::per_poll(async move {
            let _permit = permit;
            let conn = Conn {
                settings,
                handler,
                peer,
            };
            match tls {
                None => conn.serve(stream, None, &mut drain_rx).await,
                // TLS state is large: boxed as a whole, so that a plain
                // connection's task (as large as its largest state) doesn't
                // carry room for it.
                Some(acceptor) => {
                    let tls = conn.serve_tls(
                        acceptor,
                        stream,
                        handshake_timeout,
                        &tls_failures,
                        &mut drain_rx,
                    );
                    Box::pin(tls).await;
                }
            }
            open.decrement(1.0);
        }));
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

/// How this listener serves connections, built once from its limits.
struct Settings {
    listener: String,
    h1: ServerConfig,
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
    idle_timeout: Duration,
}

impl Settings {
    fn new(limits: &ListenerConfig) -> Self {
        let h1 = ServerConfig {
            max_head_bytes: limits.max_header_bytes,
            max_headers: limits.max_headers,
            // Waiting for the next head is also how a keep-alive
            // connection idles.
            header_read_timeout: limits.header_read_timeout.min(limits.idle_timeout),
        };
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
        Self {
            listener: limits.name.clone(),
            h1,
            h2,
            idle_timeout: limits.idle_timeout,
        }
    }
}

/// What serving one connection needs.
struct Conn<H> {
    settings: Arc<Settings>,
    handler: H,
    peer: SocketAddr,
}

impl<H> Conn<H>
where
    H: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + ForConnection
        + Clone
        + Send
        + 'static,
    H::Future: Send + 'static,
{
    /// Completes the TLS handshake (cut, like a client that never finishes
    /// its headers, after `timeout`), then serves the connection.
    async fn serve_tls(
        self,
        acceptor: tokio_rustls::TlsAcceptor,
        stream: tokio::net::TcpStream,
        timeout: Duration,
        failures: &metrics::Counter,
        drain_rx: &mut watch::Receiver<bool>,
    ) {
        let peer = self.peer;
        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => {
                let identity = crate::tls::peer_identity(stream.get_ref().1);
                self.serve(stream, identity, drain_rx).await;
            }
            Ok(Err(err)) => {
                failures.increment(1);
                tracing::debug!(%peer, %err, "TLS handshake failed");
            }
            Err(_) => {
                failures.increment(1);
                tracing::debug!(%peer, "TLS handshake timed out");
            }
        }
    }

    /// Serves HTTP on `stream` (plain TCP or TLS) until it closes, the idle
    /// timeout passes, or the listener drains.
    async fn serve<I>(
        self,
        stream: I,
        identity: Option<PeerIdentity>,
        drain_rx: &mut watch::Receiver<bool>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            settings,
            handler,
            peer,
        } = self;
        let h1 = WithConnection::new(&handler, peer, identity.clone());
        let drain = async {
            if drain_rx.wait_for(|draining| *draining).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        // Requests refused from their head never reach the proxy; they are
        // counted in the same series as its answers (route and service `-`).
        let refuse = |refusal: Refusal| {
            tracing::debug!(listener = %settings.listener, %peer, reason = %refusal, "request refused");
            let res = refuse(refusal);
            metrics::counter!(
                "switchyard_requests_total",
                "listener" => settings.listener.clone(),
                "route" => "-",
                "service" => "-",
                "status" => res.status().as_str().to_owned()
            )
            .increment(1);
            res
        };
        let served = switchyard_transport::server::serve_connection(
            stream,
            &settings.h1,
            h1,
            &refuse,
            drain,
        )
        .await;
        match served {
            // Boxed: hyper's HTTP/2 connection state would otherwise be part
            // of every connection's task, HTTP/1 ones included.
            Ok(Served::Http2 { io, read }) => {
                let h2 = serve_h2(&settings, handler, peer, identity, io, read, drain_rx);
                Box::pin(h2).await;
            }
            Ok(Served::Closed) => {}
            Err(err) => tracing::debug!(%peer, %err, "connection ended with an error"),
        }
    }
}

/// Serves HTTP/2 on a connection whose first bytes, `read`, were already
/// read, until it closes, the idle timeout passes, or the listener drains.
async fn serve_h2<H, I>(
    settings: &Settings,
    handler: H,
    peer: SocketAddr,
    identity: Option<PeerIdentity>,
    stream: I,
    read: Bytes,
    drain_rx: &mut watch::Receiver<bool>,
) where
    H: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + ForConnection
        + Clone
        + Send
        + 'static,
    H::Future: Send + 'static,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let svc = ConnService {
        handler: WithConnection::new(&handler, peer, identity),
        activity: activity.clone(),
    };
    let io = Rewind {
        read: Some(read),
        io: stream,
    };
    let conn = settings.h2.serve_connection(TokioIo::new(io), svc);
    let mut conn = pin!(conn);
    let mut idle = pin!(activity.idle(settings.idle_timeout));
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

/// The answer to an HTTP/1.x request refused from its head: problem+json.
fn refuse(refusal: Refusal) -> Response<Body> {
    let problem = match refusal {
        Refusal::BadRequest(why) => Problem::bad_request(why),
        too_large => Problem::headers_refused(too_large.to_string()),
    };
    problem.into_response()
}

// === impl WithConnection ===

/// The handler, with what a request learns from its connection: the
/// client's address and TLS identity, as request extensions.
#[derive(Clone)]
struct WithConnection<H> {
    handler: H,
    /// What each request is tagged with, unless the handler was told once
    /// for the connection ([`ForConnection`]). Boxed: every idle
    /// connection holds one of these.
    tag: Option<Box<(ClientAddr, Option<PeerIdentity>)>>,
}

impl<H: Clone + ForConnection> WithConnection<H> {
    fn new(handler: &H, peer: SocketAddr, identity: Option<PeerIdentity>) -> Self {
        // This server's HTTP/1.x answers are the transport's to write.
        match handler.for_connection(peer, identity.as_ref(), true) {
            Some(handler) => Self { handler, tag: None },
            None => Self {
                handler: handler.clone(),
                tag: Some(Box::new((ClientAddr(peer), identity))),
            },
        }
    }
}

/// A handler that can be told once per connection where the connection
/// comes from, so that its requests need not carry it.
pub trait ForConnection: Sized {
    /// The handler for one connection's requests, knowing the client's
    /// address and TLS identity. `None` (the default): each request carries
    /// them instead, as [`ClientAddr`] and [`PeerIdentity`] extensions,
    /// which costs a few allocations per request.
    ///
    /// `transport_server`: the connection's HTTP/1.x answers are written by
    /// [`switchyard_transport::server`], which writes a response's
    /// [`RawFields`](switchyard_transport::RawFields) (this module's server
    /// says so; HTTP/2 answers are hyper's). A server that writes only the
    /// response's map passes `false`.
    fn for_connection(
        &self,
        peer: SocketAddr,
        identity: Option<&PeerIdentity>,
        transport_server: bool,
    ) -> Option<Self> {
        let _ = (peer, identity, transport_server);
        None
    }
}

/// A closure handler reads the connection from its requests' extensions.
impl<F> ForConnection for tower::util::ServiceFn<F> {}

impl<H: Service<Request<Body>>> Service<Request<Body>> for WithConnection<H> {
    type Response = H::Response;
    type Error = H::Error;
    type Future = H::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), H::Error>> {
        self.handler.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        if let Some(tag) = &self.tag {
            let (peer, identity) = &**tag;
            req.extensions_mut().insert(*peer);
            if let Some(identity) = identity {
                req.extensions_mut().insert(identity.clone());
            }
        }
        self.handler.call(req)
    }
}

// === impl Rewind ===

pin_project! {
    /// A connection whose first bytes were already read: they are read
    /// again first.
    struct Rewind<I> {
        read: Option<Bytes>,
        #[pin]
        io: I,
    }
}

impl<I: AsyncRead> AsyncRead for Rewind<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if let Some(read) = this.read.as_mut() {
            let n = read.len().min(buf.remaining());
            buf.put_slice(&read.split_to(n));
            if read.is_empty() {
                *this.read = None;
            }
            return Poll::Ready(Ok(()));
        }
        this.io.poll_read(cx, buf)
    }
}

impl<I: AsyncWrite> AsyncWrite for Rewind<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

// === impl ConnService ===

/// The per-connection service of an HTTP/2 connection: tracks requests in
/// flight for the idle timeout.
#[derive(Clone)]
struct ConnService<H> {
    handler: WithConnection<H>,
    activity: Arc<Activity>,
}

impl<H> hyper::service::Service<Request<Incoming>> for ConnService<H>
where
    H: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    H::Future: Send + 'static,
{
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = ConnFuture<H>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        ConnFuture {
            inner: self.handler.clone().oneshot(req.map(Body::streaming)),
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
        H: Service<Request<Body>>,
    {
        #[pin]
        inner: Oneshot<WithConnection<H>, Request<Body>>,
        guard: Option<InFlight>,
    }
}

impl<H> Future for ConnFuture<H>
where
    H: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
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
