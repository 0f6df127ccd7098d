//! The pooled HTTP client one service's requests go out through.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use hyper_util::{
    client::legacy::{Client, ResponseFuture as ClientFuture},
    rt::{TokioExecutor, TokioTimer},
};
use pin_project_lite::pin_project;

use crate::{
    Body, Protocol, TransportConfig, TransportError,
    connect::{CountingConnector, OpenConnections},
    h1,
};

/// Name of the gauge counting open outbound connections (labelled
/// `service` when the transport was built with [`Transport::for_service`]).
pub const OPEN_CONNECTIONS_GAUGE: &str = "switchyard_upstream_connections_open";

/// A pooled HTTP/1.1 or HTTP/2 (h2c) client.
///
/// Cheap to clone: clones share one connection pool. Requests must carry an
/// absolute `http://host:port/path` URI; the balancer sets it. The service
/// is always ready (the pool opens connections on demand), so `poll_ready`
/// exerts no backpressure: bound concurrency with a bulkhead above it.
#[derive(Clone, Debug)]
pub struct Transport {
    client: Client<CountingConnector, Body>,
    // HTTP/1.1 requests with in-memory bodies go through our own client
    // (see `h1`); streamed uploads and HTTP/2 through hyper's.
    h1: Option<h1::Pool>,
    open: Arc<OpenConnections>,
    tls: bool,
}

impl Transport {
    /// A transport without a service label on its connection gauge. Fails
    /// only when the TLS files can't be loaded.
    pub fn new(config: &TransportConfig) -> Result<Self, String> {
        Self::with_gauge(config, metrics::gauge!(OPEN_CONNECTIONS_GAUGE))
    }

    /// A transport whose connection gauge carries `service = <service>`.
    pub fn for_service(config: &TransportConfig, service: &str) -> Result<Self, String> {
        Self::with_gauge(
            config,
            metrics::gauge!(OPEN_CONNECTIONS_GAUGE, "service" => service.to_owned()),
        )
    }

    /// True when requests go over TLS (their URIs then say `https`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    fn with_gauge(config: &TransportConfig, gauge: metrics::Gauge) -> Result<Self, String> {
        let open = Arc::new(OpenConnections::new(gauge));
        let alpn: &[&[u8]] = match config.protocol {
            Protocol::Http1 => &[b"http/1.1"],
            Protocol::Http2 => &[b"h2"],
        };
        let tls = config
            .tls
            .as_ref()
            .map(|t| t.client_config(alpn))
            .transpose()?;
        let is_tls = tls.is_some();
        let connector = CountingConnector::new(config, tls, open.clone());
        let h1 = (config.protocol == Protocol::Http1).then(|| {
            h1::Pool::new(
                connector.clone(),
                config.pool_max_idle_per_endpoint,
                config.pool_idle_timeout,
            )
        });
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_endpoint)
            .http2_only(config.protocol == Protocol::Http2)
            .build(connector);
        Ok(Self {
            client,
            h1,
            open,
            tls: is_tls,
        })
    }

    /// Sends `req` (which must carry an absolute `http://` URI) through the
    /// pool; the same as `Service::call` without needing `&mut self`.
    pub fn send(&self, req: http::Request<Body>) -> ResponseFuture {
        let (parts, body) = req.into_parts();
        let origin = match (parts.uri.scheme(), parts.uri.authority()) {
            (Some(scheme), Some(authority)) => (scheme.clone(), authority.clone()),
            // Hyper's client refuses it with the usual error.
            _ => {
                return ResponseFuture {
                    inner: Inner::Hyper {
                        fut: self.client.request(http::Request::from_parts(parts, body)),
                    },
                };
            }
        };
        self.send_attempt(Attempt {
            head: Arc::new(Head::from(parts)),
            scheme: origin.0,
            authority: origin.1,
            field: None,
            body,
        })
    }

    /// Sends one attempt of a request whose head its attempts share: the
    /// head is encoded as it is (its added fields after its own), to
    /// `authority`, with the attempt's own `field` added (a retry or hedge
    /// sends the same head again, never a copy of it). The head's URI needs
    /// only its path.
    pub fn send_attempt(&self, attempt: Attempt) -> ResponseFuture {
        let Attempt {
            head,
            scheme,
            authority,
            field,
            body,
        } = attempt;
        let body = match &self.h1 {
            Some(h1) if head.parts.method != http::Method::CONNECT => match body.into_sendable() {
                Ok(data) => {
                    return ResponseFuture {
                        inner: Inner::Own {
                            fut: Box::pin(h1.send(head, scheme, authority, field, data)),
                        },
                    };
                }
                Err(body) => body,
            },
            _ => body,
        };
        // HTTP/2 and streamed bodies go through hyper, which takes the head
        // itself: a copy only when another attempt still shares it.
        let mut parts = Head::into_parts(head);
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.scheme = Some(scheme);
        uri.authority = Some(authority);
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        parts.uri = http::Uri::from_parts(uri).unwrap_or_else(|_| http::Uri::from_static("/"));
        if let Some((name, value)) = field {
            parts.headers.insert(name, value);
        }
        ResponseFuture {
            inner: Inner::Hyper {
                fut: self.client.request(http::Request::from_parts(parts, body)),
            },
        }
    }

    /// Outbound connections currently open (pooled idle ones included).
    pub fn open_connections(&self) -> usize {
        self.open.get()
    }
}

impl tower_service::Service<http::Request<Body>> for Transport {
    type Response = http::Response<Body>;
    type Error = TransportError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> ResponseFuture {
        self.send(req)
    }
}

/// Fields sent after a request's own, as they are: what a proxy adds to
/// every request (`X-Forwarded-For` and the like), without the hashed
/// insert into the header map each would cost (a twentieth of a proxied
/// request for four of them).
pub type AddedFields = smallvec::SmallVec<[(http::HeaderName, http::HeaderValue); 4]>;

/// A request head, as every attempt of a call sends it.
#[derive(Debug, Clone)]
pub struct Head {
    /// Method, target, version, fields and extensions; only the URI's
    /// path and query are sent.
    pub parts: http::request::Parts,
    /// Fields sent after the parts' own. None of their names may be among
    /// the parts' fields: a field that replaces one goes in the parts.
    pub added: AddedFields,
    /// The caller passes the response on through the transport's
    /// [`server`](crate::server): an HTTP/1.x response's end-to-end fields
    /// may then come as [`RawFields`](crate::RawFields) in its extensions
    /// rather than in its map.
    pub raw_response_fields: bool,
}

impl Head {
    /// The head as one `Parts`, its added fields appended to the map, for
    /// what takes an `http::Request` (hyper, a boxed service); a copy only
    /// when another attempt still shares it.
    pub fn into_parts(head: Arc<Self>) -> http::request::Parts {
        let Head {
            mut parts, added, ..
        } = Arc::try_unwrap(head).unwrap_or_else(|shared| (*shared).clone());
        for (name, value) in added {
            parts.headers.append(name, value);
        }
        parts
    }
}

impl From<http::request::Parts> for Head {
    fn from(parts: http::request::Parts) -> Self {
        Self {
            parts,
            added: AddedFields::new(),
            raw_response_fields: false,
        }
    }
}

/// One attempt of a request, for [`Transport::send_attempt`].
#[derive(Debug)]
pub struct Attempt {
    /// The request's head, shared by its attempts.
    pub head: Arc<Head>,
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// The endpoint this attempt goes to (`host:port`).
    pub authority: http::uri::Authority,
    /// A field this attempt adds (or replaces), such as the time left for
    /// the call.
    pub field: Option<(http::HeaderName, http::HeaderValue)>,
    /// The body.
    pub body: Body,
}

pin_project! {
    /// The response future of [`Transport`].
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture {
        #[pin]
        inner: Inner,
    }
}

type OwnFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, TransportError>> + Send>>;

pin_project! {
    #[project = InnerProj]
    enum Inner {
        Hyper { #[pin] fut: ClientFuture },
        Own { fut: OwnFuture },
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<Body>, TransportError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            InnerProj::Own { fut } => fut.as_mut().poll(cx),
            InnerProj::Hyper { fut } => match fut.poll(cx) {
                Poll::Ready(Ok(res)) => Poll::Ready(Ok(res.map(Body::streaming))),
                Poll::Ready(Err(err)) => Poll::Ready(Err(TransportError::from_client(err))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}
