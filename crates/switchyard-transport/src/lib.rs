//! HTTP transport for Switchyard: outbound connection pools, and the
//! inbound HTTP/1.1 server connection ([`server`]) the gateway's listeners
//! run.
//!
//! A [`Transport`] is one service's pool of upstream connections: HTTP/1.1
//! with keep-alive (one request at a time per connection, idle connections
//! reused) or HTTP/2 with prior knowledge over cleartext (h2c, requests
//! multiplexed). It is a `tower::Service<http::Request<Body>>` taking requests
//! with absolute `http://host:port/...` URIs; the client crate's balancer
//! picks the endpoint and writes it into the URI.
//!
//! HTTP/1.1 requests whose body is in memory (empty, or buffered for
//! retries: the proxy's usual case) go through a client of our own: the
//! task sending the request writes it and reads the response on a pooled
//! connection itself, and a response whose body has already arrived comes
//! back in memory with its connection returned to the pool at once.
//! Streamed uploads and HTTP/2 go through hyper's pooled client. Idle
//! connections closed by the endpoint are noticed without a system call and
//! dropped; an idempotent request that meets a connection closed at the
//! moment it was reused is sent once more on a new connection.
//!
//! Defaults ([`TransportConfig`]): `protocol = "http1"`, `connect_timeout =
//! "1s"`, `pool_idle_timeout = "90s"`, `pool_max_idle_per_endpoint = 256`,
//! `tcp_keepalive = "60s"`. Sockets use `TCP_NODELAY`.
//!
//! Failures are a [`TransportError`] whose [`kind`](TransportError::kind)
//! says what happened; [`TransportError::is_connect`] marks failures where
//! nothing was sent, which are safe to retry for any method.
//! [`TransportError::find`] digs one out of a wrapped error chain.
//!
//! Open connections are counted ([`Transport::open_connections`]) and
//! exported as the `switchyard_upstream_connections_open` gauge.
//!
//! A [`Body`] is either in memory (replayable by retries and hedges) or
//! streamed from a connection; see [`Body::buffer_for_replay`].
//!
//! ```no_run
//! use switchyard_transport::{Body, Transport, TransportConfig};
//! use tower_service::Service;
//!
//! # async fn run() -> Result<(), switchyard_policy::BoxError> {
//! let mut transport = Transport::new(&TransportConfig::default())?;
//! let req = http::Request::get("http://127.0.0.1:8080/healthz").body(Body::empty())?;
//! match transport.call(req).await {
//!     Ok(res) => println!("{} {:?}", res.status(), res.into_body().collect_bytes().await?),
//!     Err(err) if err.is_connect() => println!("nothing listens there: {err}"),
//!     Err(err) => println!("{} failure: {err}", err.kind()),
//! }
//! # Ok(())
//! # }
//! ```

mod body;
mod config;
mod connect;
mod error;
mod h1;
pub mod server;
pub mod tls;
mod transport;

pub use body::{Body, BodyTooLarge};
pub use config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_POOL_IDLE_TIMEOUT, DEFAULT_POOL_MAX_IDLE_PER_ENDPOINT,
    DEFAULT_TCP_KEEPALIVE, Protocol, TransportConfig,
};
pub use error::{TransportError, TransportErrorKind};
pub use h1::RawFields;
pub use tls::UpstreamTlsConfig;
pub use transport::{
    AddedFields, Attempt, Head, OPEN_CONNECTIONS_GAUGE, ResponseFuture, Transport,
};
