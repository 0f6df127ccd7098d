//! The outbound stack for one named service.
//!
//! A [`ServiceClient`] takes a service's endpoint set from discovery (a
//! [`tokio::sync::watch`] receiver of [`Endpoints`]), picks an endpoint for
//! every request, and sends it through a pooled
//! [`Transport`](switchyard_transport::Transport). The gateway wraps it in the
//! policy stack (deadline, bulkhead, breaker, retry, hedge), so one logical
//! call may be several requests here, each balanced on its own.
//!
//! # Balancing: power of two choices over peak-EWMA cost
//!
//! For each request two distinct endpoints are drawn at random among the
//! *eligible* ones (healthy by the active check, not ejected, weight above 0)
//! and the cheaper one gets the request. An endpoint's cost is
//!
//! ```text
//! cost = peak_ewma_rtt × (in_flight + 1) / weight
//! ```
//!
//! `peak_ewma_rtt` is the time to response headers, estimated the way
//! Finagle and linkerd do: a sample above the estimate replaces it at once
//! (an endpoint turning slow is penalised on its first slow answer); a
//! sample below pulls the estimate down exponentially with time constant
//! `balancer.decay` (default `10s`); and while an endpoint gets no traffic
//! its cost decays towards zero, so it is probed again eventually. An
//! endpoint without samples costs `balancer.default_rtt` (default `30ms`).
//! Multiplying by the requests in flight makes a stalling endpoint expensive
//! even before any answer arrives. Two random choices instead of the global
//! minimum avoid every caller herding onto the same "best" endpoint, and cost
//! O(1) rather than a scan of all costs.
//!
//! Why not `tower::balance::p2c`: tower's `Balance` decides readiness in
//! `poll_ready(&mut self)` and owns its endpoint services, so sharing one
//! balancer across all inbound connections needs a `Buffer` task in front
//! (a channel hop and a task per service); and it has no notion of outlier
//! ejection or health state. Here the endpoint list lives in an
//! `ArcSwap<Vec<Arc<EndpointState>>>` read without locks, each endpoint's
//! load and counters are atomics, and balancing happens in `call(&self)`
//! on any clone. (The latency estimate sits behind a `parking_lot` mutex:
//! two uncontended locks per pick, not yet measured against packed atomics.)
//!
//! # Outlier ejection
//!
//! A *gateway failure* is a transport error (connect refused or timed out,
//! reset, protocol error) or a `429`/`502`/`503`/`504` response. Endpoints are
//! ejected (no traffic) for:
//! - `consecutive_failures` (default 5) gateway failures in a row, at once;
//! - a low success rate over an `interval` (default `1s`) with at least
//!   `success_rate_min_requests` (20) requests: below
//!   `success_rate_threshold` (0.8), or, with five or more judged endpoints,
//!   below `mean − success_rate_stdev_factor (1.9) × stdev`;
//! - latency: a mean latency over the interval above `latency_factor` (3.0)
//!   times the median of the other judged endpoints (at least two others).
//!   Peak-EWMA balancing usually starves a slow endpoint before this rule
//!   sees enough of its requests; the rule catches what balancing cannot
//!   (an endpoint still loaded because all the others are busy).
//!
//! The n-th ejection lasts `base_ejection_time × n` (default `10s`), capped
//! at `max_ejection_time` (`300s`); ejections are lifted on the interval
//! tick. At most `max_ejection_percent` (50) of the endpoints are ejected at
//! once, and the last eligible endpoint never is. See [`OutlierConfig`].
//!
//! # Active health checks
//!
//! With a [`HealthCheckConfig`], every endpoint gets `GET <path>` every
//! `interval` (`5s`, timeout `1s`); endpoints start healthy,
//! `unhealthy_threshold` (3) failures in a row take one out of balancing and
//! `healthy_threshold` (2) passes bring it back. Checks share the service's
//! connection pool.
//!
//! # Endpoint changes and lifetime
//!
//! A new endpoint set from discovery takes effect at once; endpoints keep
//! their statistics and ejection state across sets (a changed weight or
//! metadata starts an endpoint afresh). A removed endpoint gets no new
//! requests; requests already sent to it finish normally. With no eligible
//! endpoint a call fails with [`NoHealthyEndpoint`] (a gateway answers 503).
//!
//! The background work runs in one task per client, spawned by
//! [`ServiceClient::new`]; it ends when the last clone (and the last
//! response future) is dropped.
//!
//! # Metrics
//!
//! Through the `metrics` facade, names in [`metric`]:
//! `switchyard_upstream_requests_total{service,endpoint,outcome}`,
//! `switchyard_endpoint_ejections_total{service,endpoint,reason}`,
//! `switchyard_endpoint_ejected{service,endpoint}` and
//! `switchyard_endpoint_healthy{service,endpoint}` (gauges, 0 or 1), and the
//! transport's `switchyard_upstream_connections_open{service}`.
//!
//! # Example
//!
//! ```no_run
//! use switchyard_client::{BalancerConfig, HealthCheckConfig, OutlierConfig, ServiceClient};
//! use switchyard_discovery::{Discovery, Endpoint, StaticDiscovery};
//! use switchyard_transport::{Body, TransportConfig};
//! use tower_service::Service;
//!
//! # async fn run() -> Result<(), switchyard_policy::BoxError> {
//! let discovery = StaticDiscovery::default();
//! discovery.set("catalog", vec![
//!     Endpoint::new("127.0.0.1:9001".parse()?),
//!     Endpoint::new("127.0.0.1:9002".parse()?),
//! ]);
//! let mut catalog = ServiceClient::new(
//!     "catalog",
//!     TransportConfig::default(),
//!     BalancerConfig::default(),
//!     OutlierConfig::default(),
//!     Some(HealthCheckConfig::new("/healthz")),
//!     discovery.watch("catalog")?,
//! )?;
//!
//! // The URI's path and query are kept; the balancer fills in the endpoint.
//! let req = http::Request::get("/items?page=2").body(Body::empty())?;
//! let res = catalog.call(req).await?;
//! println!("{}", res.status());
//! println!("{}", serde_json::to_string(&catalog.snapshot())?);
//! # Ok(())
//! # }
//! ```

mod config;
mod endpoint;
mod error;
mod health;
mod outlier;
mod service;

pub use config::{
    BalancerConfig, DEFAULT_BASE_EJECTION_TIME, DEFAULT_CONSECUTIVE_FAILURES, DEFAULT_DECAY,
    DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_TIMEOUT, DEFAULT_HEALTHY_THRESHOLD,
    DEFAULT_LATENCY_FACTOR, DEFAULT_MAX_EJECTION_PERCENT, DEFAULT_MAX_EJECTION_TIME,
    DEFAULT_OUTLIER_INTERVAL, DEFAULT_RTT, DEFAULT_SUCCESS_RATE_MIN_REQUESTS,
    DEFAULT_SUCCESS_RATE_STDEV_FACTOR, DEFAULT_SUCCESS_RATE_THRESHOLD, DEFAULT_UNHEALTHY_THRESHOLD,
    HealthCheckConfig, OutlierConfig,
};
pub use endpoint::{EndpointSnapshot, ServiceSnapshot};
pub use error::{EndpointError, NoHealthyEndpoint};
pub use service::{
    Attempted, ResponseFuture, ServiceClient, SharedRequest, is_connect_error, time_left_value,
};
pub use switchyard_discovery::Endpoints;

/// Names of the metrics this crate records.
pub mod metric {
    /// Counter of completed upstream requests, labelled `service`,
    /// `endpoint` and `outcome` (`success` or `failure`, a gateway failure).
    pub const UPSTREAM_REQUESTS: &str = "switchyard_upstream_requests_total";
    /// Counter of ejections, labelled `service`, `endpoint` and `reason`
    /// (`consecutive_failures`, `success_rate` or `latency`).
    pub const ENDPOINT_EJECTIONS: &str = "switchyard_endpoint_ejections_total";
    /// Gauge, 1 while an endpoint is ejected, labelled `service`, `endpoint`.
    pub const ENDPOINT_EJECTED: &str = "switchyard_endpoint_ejected";
    /// Gauge, 1 while the active health check passes an endpoint, labelled
    /// `service`, `endpoint`.
    pub const ENDPOINT_HEALTHY: &str = "switchyard_endpoint_healthy";
}
