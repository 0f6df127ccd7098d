//! The proxy handler: one inbound request in, one upstream call, one
//! response out; every failure becomes a problem+json answer
//! ([`crate::problem`]), so [`Proxy`] never fails as a service.
//!
//! # One request
//!
//! 1. **Sanity.** Refused with `400` and never forwarded: both
//!    `Content-Length` and `Transfer-Encoding`; more than one
//!    `Content-Length` field (even with equal values) or a value that is not
//!    one number; a `Transfer-Encoding` other than exactly `chunked`.
//!    For HTTP/1.x the server ([`crate::server`]) refuses these from the
//!    raw head, before the request reaches the proxy, and closes the
//!    connection; the proxy checks the parsed fields again for requests
//!    from elsewhere (HTTP/2, embedders). More header
//!    fields than `max_headers` get `431`; a body over `max_body_bytes`
//!    gets `413` (before anything is read when `Content-Length` says so,
//!    otherwise as soon as the count passes the limit).
//! 2. **Route** ([`crate::routes`]); no match gets `404` `route-not-found`.
//!    In sidecar mode an unmatched request goes to the service named by its
//!    `x-switchyard-service` header or else its `Host` header (port
//!    ignored), when such a service is known.
//! 3. **Upstream request**: same method, the rewritten path and query,
//!    the headers below, and the body: buffered (so the policy stack can
//!    retry or hedge it) when the route's service retries and the method is
//!    idempotent (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) or the route sets
//!    `retry_non_idempotent`, and the body fits the service's retry body
//!    limit; streamed otherwise (a streamed body is not replayable, so the
//!    policies don't retry it).
//! 4. **Response**: the upstream's, minus hop-by-hop headers, plus
//!    `x-request-id`; or the problem answer for the error.
//!
//! # Headers Switchyard adds or changes
//!
//! On the request sent upstream:
//!
//! | header | what |
//! | --- | --- |
//! | hop-by-hop fields | removed (RFC 9110 §7.6.1): `Connection` and every field it names, `Keep-Alive`, `Proxy-Connection`, `TE` (except `te: trailers`, kept for gRPC), `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-Authenticate`, `Proxy-Authorization` |
//! | `x-forwarded-for` | the client's IP appended to any list received |
//! | `x-forwarded-proto` | set to `http` |
//! | `x-forwarded-host` | set to the `Host` (or HTTP/2 `:authority`) received |
//! | `host` | added from `:authority` for HTTP/2 clients (kept as received otherwise) |
//! | `x-request-id` | kept when the client sent a usable one (1–128 visible ASCII characters), otherwise created: 32 random hex digits |
//! | `traceparent`, `tracestate` | passed on unchanged |
//! | [`DEADLINE_HEADER`] `x-switchyard-deadline-ms` | the time left for the call when the request leaves, in whole milliseconds, written by [`DeadlineHeader`] (the received value is removed first) |
//!
//! On the response to the client: hop-by-hop fields removed as above,
//! `x-request-id` set; problem answers add the headers listed in
//! [`crate::problem`].
//!
//! An HTTP/1.x upstream's answer (through the transport's own client: an
//! in-memory body) to an HTTP/1.x client of the gateway's own server
//! ([`ForConnection`]) usually keeps its end-to-end fields as the upstream
//! wrote them, in a [`RawFields`](switchyard_transport::RawFields)
//! extension the server writes after the response's map (which holds what
//! the proxy sets, `x-request-id` and a call limit's `RateLimit` fields,
//! each replacing the upstream's of that name). The map is built as before
//! where something reads it or the proxy must edit it: a 5xx or 429
//! answer, `Connection` naming fields or another hop-by-hop field, a length
//! with a transfer coding, an HTTP/2 client, a streamed upload. A `Proxy`
//! served by another server (without [`ForConnection`]) always has the
//! fields in the map.
//!
//! # Deadline propagation
//!
//! `x-switchyard-deadline-ms: <n>` on an incoming request means "the caller
//! waits at most `n` more milliseconds" (a decimal integer; values that
//! don't parse or exceed [`MAX_PROPAGATED_DEADLINE_MS`] are ignored). The
//! proxy sets the request's
//! deadline to now + n before it enters the policy stack, whose deadline
//! layer keeps the earlier of that and its own timeout. [`DeadlineHeader`],
//! placed between the policy stack and the transport, writes the time
//! still left into the outgoing request, so each hop passes on a smaller
//! budget.
//!
//! # Hot swap
//!
//! The routes and their upstream services are one [`RouteTable`] behind an
//! [`ArcSwap`]; [`Proxy::swap`] replaces it atomically. A request uses the
//! table it started with until it ends, so a reload drops nothing in
//! flight.
//!
//! Metrics: counter `switchyard_requests_total{listener,route,service,status}`
//! and histogram `switchyard_request_duration_seconds{listener,route,service}`;
//! `route` is the route's name, `sidecar` for sidecar-routed requests and
//! `-` when none matched.

use std::{
    borrow::Cow,
    collections::HashMap,
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header,
};
use switchyard_client::{SharedRequest, time_left_value};
use switchyard_policy::{Error, PolicyRequest, ReplayBody, is_caused_by};
use switchyard_transport::{AddedFields, Body, BodyTooLarge, Head, server::request_framing};
use tokio::time::Instant;
use tower::{Service, ServiceExt, util::BoxCloneSyncService};
use tower_layer::Layer;

use crate::{
    auth::{
        Authenticator, Authorizer, ForwardConfig, Identity, admit, forward_identity,
        strip_identity_headers,
    },
    compose::{self, ComposeRoute},
    config::ListenerConfig,
    limits::{CallLimits, LimitContext},
    paths::normalize_path_and_query,
    problem::{NoRoute, Problem},
    routes::{Router, strip_port},
    server::{ClientAddr, ForConnection},
    tls::PeerIdentity,
};

/// The request id header, kept or created.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The remaining-deadline header, in whole milliseconds.
pub const DEADLINE_HEADER: &str = "x-switchyard-deadline-ms";
/// The header naming the service in sidecar mode.
pub const SERVICE_HEADER: &str = "x-switchyard-service";
/// Largest incoming [`DEADLINE_HEADER`] value honoured (one day); larger
/// or unparsable values are ignored, as if the header were absent.
pub const MAX_PROPAGATED_DEADLINE_MS: u64 = 24 * 60 * 60 * 1000;
/// Longest incoming request id kept.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The policy stack the gateway builds around a service's client: it takes
/// `http::Request`s, and inside, its attempts share one head
/// ([`SharedRequest`]).
pub type PolicyStack = SharedHead<
    switchyard_policy::PolicyService<
        switchyard_client::ServiceClient,
        switchyard_policy::HttpClassifier,
    >,
>;

/// The upstream service type: the configured policy stack, held by its
/// concrete type so that a call neither boxes a clone of the stack nor its
/// future (both were per-request allocations), or any other service in a
/// box (tests, embedders): `Either::Right(BoxCloneSyncService::new(svc))`.
pub type UpstreamService =
    tower::util::Either<PolicyStack, BoxCloneSyncService<Request<Body>, Response<Body>, Error>>;

/// Where one route's (or one sidecar service's) requests go.
#[derive(Clone)]
pub struct Upstream {
    /// The service's name, for metrics and logs.
    pub service: String,
    /// Whether the service's policies retry or hedge (then replayable
    /// bodies are buffered).
    pub retries_enabled: bool,
    /// Largest body buffered for a retry, in bytes; larger bodies stream.
    pub retry_body_limit: usize,
    /// The policy stack and client.
    pub svc: UpstreamService,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("service", &self.service)
            .field("retries_enabled", &self.retries_enabled)
            .field("retry_body_limit", &self.retry_body_limit)
            .finish_non_exhaustive()
    }
}

/// What answers a matched route.
#[derive(Debug)]
// Built once per configuration load and never moved per request; boxing
// the upstream would add a pointer hop to every proxied request.
#[allow(clippy::large_enum_variant)]
pub enum Handler {
    /// Proxy the request to one upstream.
    Proxy(Upstream),
    /// Answer with a composition of calls.
    Compose(Arc<ComposeRoute>),
}

/// One route's handler and who may call it.
#[derive(Debug)]
pub struct Target {
    /// What answers the route.
    pub handler: Handler,
    /// Who may call it (an open authorizer admits everyone).
    pub authorizer: Authorizer,
}

impl From<Upstream> for Target {
    fn from(upstream: Upstream) -> Self {
        Self {
            handler: Handler::Proxy(upstream),
            authorizer: Authorizer::default(),
        }
    }
}

/// Authentication and call limits, shared by every route of a table.
#[derive(Debug, Default, Clone)]
pub struct Security {
    /// Verifies credentials; none: no authentication at all.
    pub authenticator: Option<Arc<Authenticator>>,
    /// Which headers carry the verified identity upstream (and are
    /// stripped from every client request).
    pub forward: ForwardConfig,
    /// Call limits (empty: no checks).
    pub limits: Option<CallLimits>,
}

/// The routes and where they go: swapped whole on reload.
#[derive(Debug)]
pub struct RouteTable {
    router: Router,
    targets: Vec<Target>,
    /// The services reachable in sidecar mode: index into
    /// `sidecar_upstreams` by name.
    sidecar: HashMap<String, usize>,
    sidecar_upstreams: Vec<Upstream>,
    security: Security,
}

impl RouteTable {
    /// A table of proxied, open routes: one [`Upstream`] per route (same
    /// order), and the services reachable in sidecar mode by name.
    pub fn new(
        router: Router,
        upstreams: Vec<Upstream>,
        sidecar: HashMap<String, Upstream>,
    ) -> Result<Self, String> {
        let targets = upstreams.into_iter().map(Target::from).collect();
        Self::with_targets(router, targets, sidecar, Security::default())
    }

    /// A table with one [`Target`] per route (same order) and the security
    /// every route shares.
    pub fn with_targets(
        router: Router,
        targets: Vec<Target>,
        sidecar: HashMap<String, Upstream>,
        security: Security,
    ) -> Result<Self, String> {
        if router.len() != targets.len() {
            return Err(format!(
                "{} routes but {} targets: give one per route, in route order",
                router.len(),
                targets.len()
            ));
        }
        let (sidecar, sidecar_upstreams) = sidecar
            .into_iter()
            .enumerate()
            .map(|(i, (name, upstream))| ((name, i), upstream))
            .unzip();
        Ok(Self {
            router,
            targets,
            sidecar,
            sidecar_upstreams,
            security,
        })
    }

    /// The compiled routes.
    pub fn router(&self) -> &Router {
        &self.router
    }
}

/// The proxy handler of one listener; see the [module docs](self).
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
    /// Set for one connection's requests ([`ForConnection`]); otherwise
    /// read from each request's extensions.
    origin: Option<Origin>,
}

/// Where a request comes from: its connection's peer and TLS identity.
#[derive(Debug, Clone, Default)]
struct Origin {
    peer: Option<SocketAddr>,
    identity: Option<PeerIdentity>,
}

impl Origin {
    fn of(req: &Request<Body>) -> Self {
        Self {
            peer: req.extensions().get::<ClientAddr>().map(|c| c.0),
            identity: req.extensions().get::<PeerIdentity>().cloned(),
        }
    }
}

struct Inner {
    listener: String,
    max_body: u64,
    max_headers: usize,
    sidecar: bool,
    table: Arc<ArcSwap<RouteTable>>,
    metrics: Arc<RequestMetrics>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("listener", &self.inner.listener)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy for `listener` (its name, `max_body_bytes`, `max_headers`
    /// and `sidecar` are used) serving `table`, which may be shared with
    /// other listeners' proxies so one swap updates all.
    pub fn new(listener: &ListenerConfig, table: Arc<ArcSwap<RouteTable>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                listener: listener.name.clone(),
                max_body: listener.max_body_bytes,
                max_headers: listener.max_headers,
                sidecar: listener.sidecar,
                table,
                metrics: Arc::default(),
            }),
            origin: None,
        }
    }

    /// Replaces the route table; requests in flight finish with the old one.
    pub fn swap(&self, table: RouteTable) {
        self.inner.table.store(Arc::new(table));
    }

    /// The shared, swappable table.
    pub fn table(&self) -> &Arc<ArcSwap<RouteTable>> {
        &self.inner.table
    }
}

impl Service<Request<Body>> for Proxy {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    /// Always ready: backpressure comes from each upstream's own readiness,
    /// awaited per request.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // Told where the connection comes from by a server whose HTTP/1
        // answers the transport's server writes (`ForConnection`; a proxy
        // for any other server has no origin). Passed apart rather than kept
        // in `Origin`: every idle connection holds one, and one more word
        // put the connection task in the allocator's next size class.
        let served_here = self.origin.is_some();
        let origin = self.origin.clone().unwrap_or_else(|| Origin::of(&req));
        Box::pin(Inner::handle(self.inner.clone(), req, origin, served_here))
    }
}

/// The server tells the proxy once per connection where its requests come
/// from, rather than tagging each request (three allocations per request),
/// when its HTTP/1 answers are written by the transport's server (so
/// upstream fields may stay raw, see the [module docs](self)); any other
/// server's requests carry their origin, and their answers keep full maps.
impl ForConnection for Proxy {
    fn for_connection(
        &self,
        peer: SocketAddr,
        identity: Option<&PeerIdentity>,
        transport_server: bool,
    ) -> Option<Self> {
        if !transport_server {
            return None;
        }
        Some(Self {
            inner: self.inner.clone(),
            origin: Some(Origin {
                peer: Some(peer),
                identity: identity.cloned(),
            }),
        })
    }
}

/// The request metrics' handles per (route, service, status), so that a
/// request costs one hash lookup instead of allocating its label strings
/// and having the recorder build and look up two metric keys.
#[derive(Default)]
struct RequestMetrics {
    // foldhash: hashed once per request; the keys come from the
    // configuration, so SipHash's DoS resistance buys nothing here.
    hasher: foldhash::fast::RandomState,
    /// Entries by the hash of (route, service, status); a short list per
    /// hash so that a collision costs a comparison, never a wrong series.
    entries: parking_lot::Mutex<HashMap<u64, Vec<Arc<RequestSeries>>, foldhash::fast::RandomState>>,
}

/// The handles of one (listener, route, service, status) series.
struct RequestSeries {
    route: Box<str>,
    service: Box<str>,
    status: u16,
    duration: metrics::Histogram,
    total: metrics::Counter,
}

/// Most series cached per listener: names come from the configuration, so
/// this is only reached after many reloads with renamed routes; beyond it
/// handles are looked up per request, as without a cache.
const MAX_CACHED_SERIES: usize = 4096;

impl RequestMetrics {
    fn record(
        &self,
        listener: &str,
        route: &str,
        service: &str,
        status: StatusCode,
    ) -> Arc<RequestSeries> {
        use std::hash::BuildHasher;
        let code = status.as_u16();
        let hash = self.hasher.hash_one((route, service, code));
        let mut entries = self.entries.lock();
        if let Some(found) = entries.get(&hash).and_then(|list| {
            list.iter()
                .find(|e| e.status == code && *e.route == *route && *e.service == *service)
        }) {
            return found.clone();
        }
        let series = Arc::new(RequestSeries::new(listener, route, service, status));
        if entries.len() < MAX_CACHED_SERIES {
            entries.entry(hash).or_default().push(series.clone());
        }
        series
    }
}

impl RequestSeries {
    fn new(listener: &str, route: &str, service: &str, status: StatusCode) -> Self {
        let labels = [
            ("listener", listener.to_owned()),
            ("route", route.to_owned()),
            ("service", service.to_owned()),
        ];
        let duration = metrics::histogram!("switchyard_request_duration_seconds", &labels);
        let [l, r, s] = labels;
        let total = metrics::counter!(
            "switchyard_requests_total",
            &[l, r, s, ("status", status.as_str().to_owned())]
        );
        Self {
            route: route.into(),
            service: service.into(),
            status: status.as_u16(),
            duration,
            total,
        }
    }

    fn record(&self, elapsed: Duration) {
        self.duration.record(elapsed.as_secs_f64());
        self.total.increment(1);
    }
}

/// Where a request goes: a matched route, or a service named in sidecar mode.
#[derive(Clone, Copy)]
enum Routed<'a> {
    Target(&'a Target),
    Sidecar(&'a Upstream),
}

/// Where a request goes, by index into its [`RouteTable`]: what the
/// request's future keeps, since it owns the table it borrows from.
#[derive(Clone, Copy)]
enum Dest {
    /// The route at this index.
    Route(usize),
    /// The sidecar service at this index.
    Sidecar(usize),
}

impl Dest {
    fn routed(self, table: &RouteTable) -> Routed<'_> {
        match self {
            Dest::Route(i) => Routed::Target(&table.targets[i]),
            Dest::Sidecar(i) => Routed::Sidecar(&table.sidecar_upstreams[i]),
        }
    }
}

/// A request that passed [`Inner::admit`]: where it goes and what is left
/// of it to send.
///
/// Nothing of the path is copied in the usual case: `normalized` and
/// `rewritten` are set only when normalizing or a rewrite changed it, and
/// `params` only for a composition.
struct Admitted {
    parts: http::request::Parts,
    body: Body,
    /// The path and query when normalizing changed them.
    normalized: Option<String>,
    dest: Dest,
    /// The path and query to send when a rewrite made them.
    rewritten: Option<String>,
    /// The path parameters, for a composition.
    params: Vec<(String, String)>,
    retry_non_idempotent: bool,
    identity: Option<Identity>,
    peer: Option<SocketAddr>,
    /// The answer is written by the transport's HTTP/1 server: the
    /// upstream's fields may stay raw ([`RawFields`](switchyard_transport::RawFields)).
    raw_response_fields: bool,
}

impl Admitted {
    /// The request's path and query as normalized (and matched).
    fn path_and_query(&self) -> &str {
        self.normalized
            .as_deref()
            .unwrap_or_else(|| request_target(&self.parts.uri))
    }
}

/// The path and query of `uri`; `/` when it has none.
fn request_target(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |pq| pq.as_str())
}

/// Labels and outcome of one request, for metrics and the log line
/// (borrowed from the route table the request runs with).
struct Outcome<'t> {
    route: &'t str,
    service: &'t str,
}

impl<'t> Outcome<'t> {
    /// The labels of a request that went to `dest`, if it got that far.
    fn of(dest: Option<Dest>, table: &'t RouteTable) -> Self {
        let route = match dest {
            None => "-",
            Some(Dest::Route(i)) => table.router.name(i).unwrap_or("-"),
            Some(Dest::Sidecar(_)) => "sidecar",
        };
        let service = match dest.map(|d| d.routed(table)) {
            None => "-",
            Some(Routed::Target(Target {
                handler: Handler::Compose(_),
                ..
            })) => "compose",
            Some(
                Routed::Target(Target {
                    handler: Handler::Proxy(u),
                    ..
                })
                | Routed::Sidecar(u),
            ) => &u.service,
        };
        Self { route, service }
    }
}

impl Inner {
    // Not `async fn`, here and in `answer` and `forward`: an async fn
    // copies its arguments into its body, and the future keeps both copies
    // for its whole life; an `async move` block uses what it captured in
    // place (with this alone the request's future went from 4.3 to
    // 2.6 KB; 2.2 KB with the boxing of rare states), and it is moved whole
    // as it is built and boxed.
    #[allow(clippy::manual_async_fn)]
    fn handle(
        self: Arc<Self>,
        req: Request<Body>,
        origin: Origin,
        served_here: bool,
    ) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send {
        let start = switchyard_policy::clock::now();
        let request_id = request_id(req.headers());
        let version = req.version();
        // Only kept for the log line when it will be written.
        let logged = tracing::enabled!(tracing::Level::DEBUG)
            .then(|| (req.method().clone(), req.uri().path().to_owned()));
        // Keep this table for the whole request, whatever a reload does.
        let table = self.table.load_full();
        // Admitted before the future is made, so that it doesn't keep the
        // request and its origin (350 bytes) for its whole life.
        let mut dest = None;
        let admitted = self.admit(req, &origin, served_here, &table, &mut dest);
        async move {
            let outcome = Outcome::of(dest, &table);
            let answered = match admitted {
                Ok(admitted) => self.answer(admitted, &table, &request_id, &outcome).await,
                Err(problem) => Err(*problem),
            };
            let mut res = match answered {
                Ok(res) => res,
                Err(problem) => problem
                    .instance(request_id.to_str().unwrap_or(""))
                    .into_response(),
            };
            res.headers_mut().insert(REQUEST_ID, request_id);
            if version == Version::HTTP_2 {
                // Connection-specific fields are illegal in HTTP/2 responses.
                res.headers_mut().remove(header::CONNECTION);
            }

            let status = res.status();
            let elapsed = switchyard_policy::clock::now().saturating_duration_since(start);
            self.metrics
                .record(&self.listener, outcome.route, outcome.service, status)
                .record(elapsed);
            if let Some((method, path)) = logged {
                tracing::debug!(
                    listener = %self.listener,
                    %method,
                    %path,
                    route = %outcome.route,
                    service = %outcome.service,
                    status = status.as_u16(),
                    elapsed_ms = elapsed.as_millis() as u64,
                    "request"
                );
            }
            Ok(res)
        }
    }

    /// Everything about a request that needs no waiting: the sanity
    /// checks, routing, authentication and authorization. Kept apart from
    /// the waiting part ([`answer`](Self::answer)) so that the request
    /// future holds none of it: a future is as large as everything it keeps
    /// across its awaits, and it is moved whole as it is built and boxed.
    /// `dest` is set once the request is routed (its metric labels), also
    /// when it is refused after that.
    fn admit(
        &self,
        req: Request<Body>,
        origin: &Origin,
        served_here: bool,
        table: &RouteTable,
        dest: &mut Option<Dest>,
    ) -> Result<Box<Admitted>, Box<Problem>> {
        let length = request_framing(req.headers(), req.version()).map_err(Problem::bad_request)?;
        if req.headers().len() > self.max_headers {
            return Err(Problem::header_too_large(self.max_headers).into());
        }
        if length.is_some_and(|len| len > self.max_body) {
            return Err(Problem::payload_too_large(self.max_body).into());
        }

        let (mut parts, body) = req.into_parts();
        let authenticator = table.security.authenticator.as_deref();
        if authenticator.is_some() {
            strip_identity_headers(&table.security.forward, &mut parts.headers);
        }
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| header_str(&parts.headers, &header::HOST));
        // One spelling per path, before anything looks at it: what is
        // matched and authorized is what goes upstream.
        let path_and_query = normalize_path_and_query(request_target(&parts.uri))
            .map_err(|err| Problem::bad_request(format!("the request path is refused: {err}")))?;

        // In a block: the match borrows the path, which `Admitted` takes.
        let (to, rewritten, params, retry_non_idempotent) = {
            let matched = table.router.route(
                &self.listener,
                &parts.method,
                host,
                &path_and_query,
                &parts.headers,
            );
            match matched {
                Some(m) => {
                    let index = m.index();
                    let target = &table.targets[index];
                    let params = match target.handler {
                        Handler::Compose(_) => m
                            .params()
                            .iter()
                            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                            .collect(),
                        Handler::Proxy(_) => Vec::new(),
                    };
                    (
                        Dest::Route(index),
                        match m.into_upstream_path() {
                            Cow::Owned(rewritten) => Some(rewritten),
                            Cow::Borrowed(_) => None,
                        },
                        params,
                        table.router.retry_non_idempotent(index),
                    )
                }
                None => {
                    let named = self
                        .sidecar
                        .then(|| sidecar_service(&parts.headers, host))
                        .flatten()
                        .and_then(|name| table.sidecar.get(name));
                    match named {
                        Some(&index) => (Dest::Sidecar(index), None, Vec::new(), false),
                        None => {
                            return Err(Problem::route_not_found(&NoRoute {
                                method: parts.method.clone(),
                                path: path_and_query.split('?').next().unwrap_or("/").to_owned(),
                            })
                            .into());
                        }
                    }
                }
            }
        };
        // The labels name the route from here on, whatever happens next.
        *dest = Some(to);
        let target = to.routed(table);

        // Authentication and authorization.
        let peer_cert = origin.identity.as_ref().map(|p| p.0.as_str());
        let identity = match (authenticator, &target) {
            (Some(authenticator), Routed::Target(t)) => {
                admit(authenticator, &t.authorizer, &parts.headers, peer_cert)?
            }
            (Some(authenticator), Routed::Sidecar(_)) => admit(
                authenticator,
                &Authorizer::default(),
                &parts.headers,
                peer_cert,
            )?,
            (None, _) => None,
        };
        let normalized = match path_and_query {
            Cow::Owned(normalized) => Some(normalized),
            Cow::Borrowed(_) => None,
        };
        let raw_response_fields = served_here && parts.version != Version::HTTP_2;
        // Boxed, and the problem too: the request's future keeps what
        // `admit` returns beside the answer's future, which keeps it too;
        // two copies of half a kilobyte (or of a 120-byte problem), moved
        // whole each time the future is, cost more than one allocation.
        Ok(Box::new(Admitted {
            parts,
            body,
            normalized,
            dest: to,
            rewritten,
            params,
            retry_non_idempotent,
            identity,
            peer: origin.peer,
            raw_response_fields,
        }))
    }

    /// The waiting part of a request: call limits, then the upstream call
    /// or the composition.
    ///
    /// `admitted`'s fields are used in place, not destructured: an async fn
    /// keeps its arguments for its whole life, and copies of them would
    /// double the future's size.
    #[allow(clippy::manual_async_fn)] // see `handle`
    fn answer<'a, 't: 'a>(
        &'a self,
        mut admitted: Box<Admitted>,
        table: &'t RouteTable,
        request_id: &'a HeaderValue,
        outcome: &'a Outcome<'t>,
    ) -> impl Future<Output = Result<Response<Body>, Problem>> + Send + 'a {
        async move {
            // Call limits; the check and its permit boxed, so that a listener
            // without limits doesn't carry their state (100 bytes for the
            // permit, kept across the upstream call) in every request's
            // future.
            let permit = match &table.security.limits {
                Some(limits) if !limits.is_empty() => {
                    let peer = admitted.peer;
                    let client_ip = peer.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |peer| {
                        limits.client_ip(peer, &admitted.parts.headers)
                    });
                    let ctx = LimitContext {
                        route: outcome.route,
                        service: outcome.service,
                        identity: admitted.identity.as_ref().map(|i| i.subject.as_str()),
                        client_ip,
                    };
                    Some(Box::new(
                        Box::pin(limits.check(&ctx))
                            .await
                            .map_err(|rejection| Problem::call_limited(&rejection))?,
                    ))
                }
                _ => None,
            };
            // An identity comes only from the authenticator.
            if let Some(identity) = &admitted.identity {
                forward_identity(
                    &table.security.forward,
                    identity,
                    &mut admitted.parts.headers,
                );
            }

            let response = match admitted.dest.routed(table) {
                // Boxed for the same reason: compositions are the rare route.
                Routed::Target(Target {
                    handler: Handler::Compose(route),
                    ..
                }) => {
                    let query = admitted
                        .path_and_query()
                        .split_once('?')
                        .map(|(_, q)| q.to_owned());
                    Box::pin(self.compose(
                        route,
                        admitted.parts,
                        admitted.body,
                        admitted.params,
                        query.as_deref(),
                        request_id,
                    ))
                    .await
                }
                Routed::Target(Target {
                    handler: Handler::Proxy(upstream),
                    ..
                })
                | Routed::Sidecar(upstream) => {
                    let outbound = self.upstream_request(upstream, admitted, request_id)?;
                    self.forward(upstream, outbound).await
                }
            };
            let mut response = response?;
            if let Some(permit) = permit {
                for (name, value) in permit.headers() {
                    response.headers_mut().insert(name, value);
                }
                // Concurrency slots are held until the response body is sent.
                response
                    .extensions_mut()
                    .insert(crate::server::HoldUntilSent::new(*permit));
            }
            Ok(response)
        }
    }

    /// Answers a composition route.
    async fn compose(
        &self,
        route: &ComposeRoute,
        parts: http::request::Parts,
        body: Body,
        params: Vec<(String, String)>,
        query: Option<&str>,
        request_id: &HeaderValue,
    ) -> Result<Response<Body>, Problem> {
        let mut headers = parts.headers;
        let deadline = take_deadline(&mut headers);
        headers.insert(REQUEST_ID, request_id.clone());
        let is_json =
            header_str(&headers, &header::CONTENT_TYPE).is_some_and(|t| t.contains("json"));
        let body = if is_json {
            let bytes = body
                .limited(self.max_body)
                .collect_bytes()
                .await
                .map_err(|_| Problem::payload_too_large(self.max_body))?;
            if bytes.is_empty() {
                None
            } else {
                Some(serde_json::from_slice(&bytes).map_err(|err| {
                    Problem::bad_request(format!("the request body is not valid JSON: {err}"))
                })?)
            }
        } else {
            None
        };
        let request = compose::compose_request(params, query, headers.clone(), body);
        route.answer(request, &headers, deadline).await
    }

    /// The request that goes upstream.
    fn upstream_request(
        &self,
        upstream: &Upstream,
        admitted: Box<Admitted>,
        request_id: &HeaderValue,
    ) -> Result<Outbound, Problem> {
        let Admitted {
            parts,
            body,
            normalized,
            rewritten,
            retry_non_idempotent,
            peer,
            raw_response_fields,
            ..
        } = *admitted;
        let mut headers = parts.headers;
        let deadline = take_deadline(&mut headers);
        remove_hop_by_hop(&mut headers);
        // The `Host` field, when the request has one, is found by the scan.
        let host = parts.uri.authority().map(|a| a.as_str());
        let added = forwarded_fields(&mut headers, parts.version, host, peer, request_id);
        let uri: Uri = match rewritten.or(normalized) {
            // The usual case: the target goes upstream as it came (its path
            // already normal, no rewrite), so the received one is kept
            // rather than parsed again.
            None if parts.uri.scheme().is_none() && parts.uri.path_and_query().is_some() => {
                parts.uri
            }
            path => {
                let path = path.as_deref().unwrap_or(request_target(&parts.uri));
                path.parse().map_err(|_| {
                    Problem::bad_request(format!(
                        "the upstream path `{path}` is not a valid request target"
                    ))
                })?
            }
        };

        let replay =
            upstream.retries_enabled && (is_idempotent(&parts.method) || retry_non_idempotent);
        let (mut out, ()) = Request::new(()).into_parts();
        out.method = parts.method;
        out.uri = uri;
        out.headers = headers;
        Ok(Outbound {
            head: Arc::new(Head {
                parts: out,
                added,
                raw_response_fields,
            }),
            deadline,
            body,
            replay,
        })
    }

    /// Sends `outbound` through the upstream's policy stack; the body is
    /// buffered first when it must be replayable.
    #[allow(clippy::manual_async_fn)] // see `handle`
    fn forward<'a>(
        &'a self,
        upstream: &'a Upstream,
        outbound: Outbound,
    ) -> impl Future<Output = Result<Response<Body>, Problem>> + Send + 'a {
        async move {
            let Outbound {
                head,
                deadline,
                body,
                replay,
            } = outbound;
            let body = if replay {
                let limit = upstream
                    .retry_body_limit
                    .min(usize::try_from(self.max_body).unwrap_or(usize::MAX));
                let body = Body::buffer_for_replay(body, limit).await.map_err(|err| {
                    Problem::bad_request(format!("the request body could not be read: {err}"))
                })?;
                if !body.is_replayable()
                    && http_body::Body::size_hint(&body).lower() > self.max_body
                {
                    return Err(Problem::payload_too_large(self.max_body));
                }
                body
            } else {
                body.sent_once()
            };
            let body = body.limited(self.max_body);
            let result = start_call(&upstream.svc, head, deadline, body).await;
            self.upstream_result(upstream, result)
        }
    }

    /// The upstream's answer, or the problem its failure becomes.
    fn upstream_result(
        &self,
        upstream: &Upstream,
        result: Result<Response<Body>, Error>,
    ) -> Result<Response<Body>, Problem> {
        match result {
            Ok(mut res) => {
                remove_hop_by_hop(res.headers_mut());
                Ok(res)
            }
            Err(err) if is_caused_by::<BodyTooLarge>(&err) => {
                Err(Problem::payload_too_large(self.max_body))
            }
            Err(err) => {
                tracing::debug!(
                    listener = %self.listener,
                    service = %upstream.service,
                    error = %ErrorChain(&err),
                    "upstream call failed"
                );
                Err(Problem::from_error(&err))
            }
        }
    }
}

/// The request that goes upstream: its head (the fields the proxy adds
/// kept apart, see [`Head`]), the deadline the client gave, the body, and
/// whether the body must be kept for a retry or hedge.
struct Outbound {
    head: Arc<Head>,
    deadline: Option<Instant>,
    body: Body,
    replay: bool,
}

/// `X-Forwarded-For`, `-Proto`, `-Host` and the request id for a request
/// with `headers`, received over `version` from `client`.
///
/// One pass over the fields notes which of them the request already has
/// (rare: another proxy in front, or a client that sets them) and its
/// `Host`. Those it has are extended or replaced in the map; the others are
/// returned, to be sent after the request's own fields: a hashed insert
/// into the map for each cost a twentieth of a proxied request.
fn forwarded_fields(
    headers: &mut HeaderMap,
    version: Version,
    host: Option<&str>,
    client: Option<SocketAddr>,
    request_id: &HeaderValue,
) -> AddedFields {
    let mut received_host = None;
    let (mut has_for, mut has_proto, mut has_host, mut has_id) = (false, false, false, false);
    for (name, value) in headers.iter() {
        if *name == header::HOST {
            received_host.get_or_insert_with(|| value.clone());
        } else if *name == X_FORWARDED_FOR {
            has_for = true;
        } else if *name == X_FORWARDED_PROTO {
            has_proto = true;
        } else if *name == X_FORWARDED_HOST {
            has_host = true;
        } else if *name == REQUEST_ID {
            has_id = true;
        }
    }
    let mut added = AddedFields::new();
    if let Some(ip) = client.and_then(|addr| ip_value(addr.ip())) {
        if !has_for {
            added.push((X_FORWARDED_FOR, ip));
        } else {
            match headers.entry(X_FORWARDED_FOR) {
                header::Entry::Occupied(mut entry) => {
                    let mut list: Vec<&str> =
                        entry.iter().filter_map(|v| v.to_str().ok()).collect();
                    list.extend(ip.to_str().ok());
                    if let Ok(value) = HeaderValue::from_str(&list.join(", ")) {
                        // Replaces every earlier value with the joined list.
                        entry.insert(value);
                    }
                }
                header::Entry::Vacant(entry) => {
                    entry.insert(ip);
                }
            }
        }
    }
    let proto = HeaderValue::from_static("http");
    if has_proto {
        headers.insert(X_FORWARDED_PROTO, proto);
    } else {
        added.push((X_FORWARDED_PROTO, proto));
    }
    let had_host_field = received_host.is_some();
    let received_host = received_host.or_else(|| host.and_then(|h| HeaderValue::from_str(h).ok()));
    if let Some(value) = received_host {
        if version == Version::HTTP_2 && !had_host_field {
            headers.insert(header::HOST, value.clone());
        }
        if has_host {
            headers.insert(X_FORWARDED_HOST, value);
        } else {
            added.push((X_FORWARDED_HOST, value));
        }
    }
    // A request id the request came with is the one kept (and already in
    // the map) unless it was refused, when ours replaces it.
    if has_id {
        if headers.get(REQUEST_ID) != Some(request_id) {
            headers.insert(REQUEST_ID, request_id.clone());
        }
    } else {
        added.push((REQUEST_ID, request_id.clone()));
    }
    added
}

/// The policy stack's own future, for a request it takes as a
/// [`SharedRequest`].
type PolicyFuture = <switchyard_policy::PolicyService<
    switchyard_client::ServiceClient,
    switchyard_policy::HttpClassifier,
> as Service<SharedRequest>>::Future;

/// The upstream call, started on a clone of `svc`: the policy stack gets
/// the head as the attempts will share it, and its response future is kept
/// when the stack is ready at once (it always is), so that the request
/// isn't parked beside a service clone in the request's future first (as
/// `oneshot` does); otherwise (a boxed service, or a stack that must wait
/// or fails readiness) the call's whole future, boxed.
fn start_call(
    svc: &UpstreamService,
    head: Arc<Head>,
    deadline: Option<Instant>,
    body: Body,
) -> Started {
    let noop = &mut Context::from_waker(std::task::Waker::noop());
    match svc {
        tower::util::Either::Left(stack) => {
            let req = stack.shared_request(head, deadline, body);
            let mut inner = stack.inner.clone();
            match Service::<SharedRequest>::poll_ready(&mut inner, noop) {
                Poll::Ready(Ok(())) => Started::Called {
                    future: inner.call(req),
                },
                Poll::Ready(Err(err)) => Started::Waiting {
                    future: Box::pin(std::future::ready(Err(err))),
                },
                // Polled again, with the task's waker, by `oneshot`.
                Poll::Pending => Started::Waiting {
                    future: Box::pin(inner.oneshot(req)),
                },
            }
        }
        tower::util::Either::Right(boxed) => {
            let mut req = Request::from_parts(Head::into_parts(head), body);
            if let Some(deadline) = deadline {
                req.set_deadline(deadline);
            }
            let mut svc = boxed.clone();
            match svc.poll_ready(noop) {
                Poll::Ready(Ok(())) => Started::Waiting {
                    future: svc.call(req),
                },
                Poll::Ready(Err(err)) => Started::Waiting {
                    future: Box::pin(std::future::ready(Err(err))),
                },
                Poll::Pending => Started::Waiting {
                    future: Box::pin(svc.oneshot(req)),
                },
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// An upstream call from [`start_call`].
    #[project = StartedProj]
    enum Started {
        Called { #[pin] future: PolicyFuture },
        Waiting { future: Pin<Box<dyn Future<Output = Result<Response<Body>, Error>> + Send>> },
    }
}

impl Future for Started {
    type Output = Result<Response<Body>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            StartedProj::Called { future } => future.poll(cx),
            StartedProj::Waiting { future } => future.as_mut().poll(cx),
        }
    }
}

/// The address as a field value (`None` only if its text were not a valid
/// one, which an address's never is).
///
/// The last value made on this thread is kept: under load most requests
/// come from the address the one before came from (keep-alive connections,
/// a load balancer or the local application in front), and a copy of the
/// value is a reference count where a new one is the text, an allocation
/// and a check of every byte (≈ 200 instructions per proxied request,
/// `bench/instructions.sh`).
fn ip_value(ip: std::net::IpAddr) -> Option<HeaderValue> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(std::net::IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((seen, value)) if *seen == ip => Some(value.clone()),
        _ => {
            let text = bytes::Bytes::from_owner(ip_text(ip).into_bytes());
            let value = HeaderValue::from_maybe_shared(text).ok()?;
            *last = Some((ip, value.clone()));
            Some(value)
        }
    })
}

/// The address as text; IPv4 (nearly every client here) without going
/// through `Display`, which costs more than the rest of the header handling.
fn ip_text(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut text = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                text.push_str(itoa::Buffer::new().format(octet));
            }
            text
        }
        std::net::IpAddr::V6(_) => ip.to_string(),
    }
}

// The names above as `HeaderName`s: a `&str` key is parsed again on every
// map operation, which costs more than the operation itself.
const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);
const DEADLINE: HeaderName = HeaderName::from_static(DEADLINE_HEADER);
const SERVICE: HeaderName = HeaderName::from_static(SERVICE_HEADER);
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The received request id if usable, otherwise a new one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(REQUEST_ID) {
        let bytes = id.as_bytes();
        if !bytes.is_empty()
            && bytes.len() <= MAX_REQUEST_ID_LEN
            && bytes.iter().all(|b| b.is_ascii_graphic())
        {
            return id.clone();
        }
    }
    // 32 hex digits, without going through `format!` (a tenth of the
    // cost), two per byte from a table (half the steps of a digit at a time
    // off a 128-bit shift: 119 instructions less per request).
    const PAIRS: [[u8; 2]; 256] = {
        let digits = b"0123456789abcdef";
        let mut pairs = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            pairs[i] = [digits[i >> 4], digits[i & 0xf]];
            i += 1;
        }
        pairs
    };
    let mut id = [0u8; 32];
    for (pair, byte) in id
        .chunks_exact_mut(2)
        .zip(rand::random::<u128>().to_be_bytes())
    {
        pair.copy_from_slice(&PAIRS[usize::from(byte)]);
    }
    // Owned by the value's own shared buffer: one allocation, and the
    // copies sent upstream and back are reference counts (from a copied
    // slice, the first copy would allocate again).
    HeaderValue::from_maybe_shared(Bytes::from_owner(id))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Removes the incoming deadline header and returns the deadline it sets.
fn take_deadline(headers: &mut HeaderMap) -> Option<Instant> {
    // Usually absent: a look over the few names costs less than hashing
    // this long one for a removal that finds nothing.
    if !headers.keys().any(|name| *name == DEADLINE) {
        return None;
    }
    let value = headers.remove(DEADLINE)?;
    let ms: u64 = value.to_str().ok()?.trim().parse().ok()?;
    if ms > MAX_PROPAGATED_DEADLINE_MS {
        return None;
    }
    switchyard_policy::clock::now().checked_add(Duration::from_millis(ms))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The service a sidecar request names: `x-switchyard-service`, else the
/// host without its port.
fn sidecar_service<'a>(headers: &'a HeaderMap, host: Option<&'a str>) -> Option<&'a str> {
    header_str(headers, &SERVICE)
        .or(host.map(strip_port))
        .map(str::trim)
}

/// Methods RFC 9110 calls idempotent.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Removes hop-by-hop fields (RFC 9110 §7.6.1), keeping `te: trailers`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry at most `Connection: keep-alive`: one pass over
    // the fields decides whether there is anything to do, and whether that
    // is all there is (then one removal does it); otherwise only the fields
    // present are removed (each removal is a hash lookup).
    let (mut hop_by_hop, mut only_keep_alive) = (false, true);
    for (name, value) in headers.iter() {
        if is_hop_by_hop(name) {
            hop_by_hop = true;
            only_keep_alive &= *name == header::CONNECTION
                && value
                    .as_bytes()
                    .split(|&b| b == b',')
                    .all(|token| token.trim_ascii().eq_ignore_ascii_case(b"keep-alive"));
        }
    }
    if !hop_by_hop {
        return;
    }
    if only_keep_alive {
        headers.remove(header::CONNECTION);
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|name| !HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name)))
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let keeps_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    while let Some(name) = headers.keys().find(|n| is_hop_by_hop(n)).cloned() {
        headers.remove(name);
    }
    if keeps_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The hop-by-hop fields a proxy never forwards (RFC 9110 §7.6.1, plus the
/// legacy `keep-alive` and `proxy-connection`).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// One of [`HOP_BY_HOP`]; asked of every field of every request and
/// response, so decided by the name's length first (most lengths rule a
/// name out without comparing a byte).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    let name = name.as_str();
    match name.len() {
        2 => name == "te",
        7 => name == "trailer" || name == "upgrade",
        10 => name == "connection" || name == "keep-alive",
        16 => name == "proxy-connection",
        17 => name == "transfer-encoding",
        18 => name == "proxy-authenticate",
        19 => name == "proxy-authorization",
        _ => false,
    }
}

/// Displays an error with its source chain, for logs.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

// === impl SharedHead ===

/// Hands the stack inside each request as a [`SharedRequest`]: its head
/// shared by the call's attempts, each attempt sending the time left in
/// [`DEADLINE_HEADER`] and, when the service retries or hedges and the
/// body can be sent again, going to an endpoint not tried yet.
///
/// Backpressure: `poll_ready` is the inner service's.
#[derive(Debug, Clone)]
pub struct SharedHead<S> {
    inner: S,
    track_attempts: bool,
}

impl<S> SharedHead<S> {
    /// Wraps `inner`; `track_attempts` when its policies retry or hedge.
    pub fn new(inner: S, track_attempts: bool) -> Self {
        Self {
            inner,
            track_attempts,
        }
    }

    /// The request the stack inside gets for `head` and `body`: each
    /// attempt carries the time left until `deadline` in the deadline
    /// field, and records its endpoint when the policies retry or hedge
    /// and the body can be sent again.
    fn shared_request(
        &self,
        head: Arc<Head>,
        deadline: Option<Instant>,
        body: Body,
    ) -> SharedRequest {
        let replayable = body.is_replayable();
        let mut req = SharedRequest::from_head(head, body);
        if let Some(deadline) = deadline {
            req.set_deadline(deadline);
        }
        self.prepared(req, replayable)
    }

    fn prepared(&self, req: SharedRequest, replayable: bool) -> SharedRequest {
        let req = req.with_deadline_field(DEADLINE);
        if self.track_attempts && replayable {
            req.tracking_attempts()
        } else {
            req
        }
    }
}

impl<S: Service<SharedRequest>> Service<Request<Body>> for SharedHead<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> S::Future {
        let replayable = req.body().is_replayable();
        let req = self.prepared(SharedRequest::new(req), replayable);
        self.inner.call(req)
    }
}

// === impl DeadlineHeader ===

/// Writes the time left for the call into [`DEADLINE_HEADER`]; see
/// [`DeadlineHeader`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineHeaderLayer;

impl<S> Layer<S> for DeadlineHeaderLayer {
    type Service = DeadlineHeader<S>;

    fn layer(&self, inner: S) -> DeadlineHeader<S> {
        DeadlineHeader { inner }
    }
}

/// Sets `x-switchyard-deadline-ms` to the request's remaining deadline
/// ([`PolicyRequest::remaining`], whole milliseconds rounded down) just
/// before it goes to the transport, and removes the header when the
/// request has no deadline. Place it between the policy stack and the
/// service client, so it runs once per attempt with the time then left.
/// For stacks over `http::Request` (tests, embedders); the gateway's own
/// stack ([`PolicyStack`]) has the service client write the field as it
/// sends each attempt ([`SharedHead`]).
///
/// Backpressure: `poll_ready` is the inner service's.
#[derive(Debug, Clone)]
pub struct DeadlineHeader<S> {
    inner: S,
}

impl<S> DeadlineHeader<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for DeadlineHeader<S>
where
    S: Service<Request<B>>,
    B: ReplayBody,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        match req.remaining() {
            Some(left) => {
                req.headers_mut().insert(DEADLINE, time_left_value(left));
            }
            None => {
                req.headers_mut().remove(DEADLINE);
            }
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests;
