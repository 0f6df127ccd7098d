//! The gateway's TOML configuration: listeners, services, routes, admin.
//!
//! Every key is documented in `docs/config.md` with its default.

mod load;

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};
use switchyard_client::{BalancerConfig, HealthCheckConfig, OutlierConfig};
use switchyard_discovery::Endpoint;
use switchyard_policy::PolicyConfig;
use switchyard_transport::{Protocol, TransportConfig};

pub use load::{ConfigError, Problem, Seg};

/// Default address of the admin listener (loopback only).
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9901);
/// Default cap on a request's header section, in bytes.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Default cap on the number of request headers.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Default cap on a request body, in bytes.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// Default time a client has to send a request's headers.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time an idle client connection is kept open.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default cap on open client connections per listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default time in-flight requests get to finish on shutdown.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Default cap on a request body buffered so a retry or hedge can resend it.
pub const DEFAULT_RETRY_BODY_LIMIT: usize = 64 * 1024;

/// The whole gateway configuration (one TOML file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The admin listener. Default: `127.0.0.1:9901`.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Listeners clients connect to. At least one.
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    /// Services by name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
    /// Routes, matched in order.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Policies for services that set none (`[defaults.policy]`).
    #[serde(default)]
    pub defaults: DefaultsConfig,
    /// Shutdown behaviour.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// The service registry: hosted here, or another process's. Default: none.
    #[serde(default)]
    pub registry: Option<RegistryConfig>,
    /// Local instances this process registers while their health checks
    /// pass (`[[register]]`).
    #[serde(default)]
    pub register: Vec<RegisterConfig>,
    /// Who callers are: API keys, JWT, identity forwarding (`[auth]`).
    /// Default: none (no authentication).
    #[serde(default)]
    pub auth: Option<crate::auth::AuthConfig>,
    /// Call limits per identity, client IP, route or service (`[limits]`).
    /// Default: none.
    #[serde(default)]
    pub limits: crate::limits::LimitsConfig,
}

/// Default file of the embedded registry, beside the config file.
pub const DEFAULT_REGISTRY_DATA: &str = "switchyard-registry.redb";
/// Default lease TTL of a sidecar registration.
pub const DEFAULT_REGISTER_TTL: Duration = Duration::from_secs(10);
/// Default interval of a sidecar health check.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Default timeout of a sidecar health check.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Where services' instances are registered and found (`[registry]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Host the registry in this process; its API is served on the admin
    /// listener under `/v1/registry`. Default `false`.
    #[serde(default)]
    pub embedded: bool,
    /// With `embedded`: the file its state lives in (relative to the config
    /// file's directory). Default `"switchyard-registry.redb"`.
    #[serde(default)]
    pub data: Option<std::path::PathBuf>,
    /// Use the registry hosted by another Switchyard process, e.g.
    /// `"http://127.0.0.1:9901"` (its admin listener). Default: none.
    #[serde(default)]
    pub url: Option<String>,
}

/// A local instance this process registers (`[[register]]`), the SmartStack
/// nerve role: registered while its health check passes, deregistered when
/// it fails and on shutdown; its lease expires on its own after a crash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterConfig {
    /// The service it is an instance of. Required.
    pub service: String,
    /// Where the instance listens. Required.
    pub addr: SocketAddr,
    /// Its id within the service. Default: the address.
    #[serde(default)]
    pub id: Option<String>,
    /// Labels (`version`, `zone`, ...) routes can select on. Default: none.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Relative share of traffic. Default 1.
    #[serde(default = "defaults::weight")]
    pub weight: u32,
    /// Lease TTL; renewed every third of it. Default `"10s"`.
    #[serde(default = "defaults::register_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// The health check. Default: a TCP connect to `addr` every 2s.
    #[serde(default)]
    pub check: CheckConfig,
}

/// A sidecar health check: one of `http`, `tcp` or `command`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckConfig {
    /// `GET` this path on the instance; a 2xx answer passes. Default: none.
    pub http: Option<String>,
    /// Connect to the instance's address; a connection passes. Default:
    /// true when neither `http` nor `command` is set.
    pub tcp: bool,
    /// Run this program (argv form); exit status 0 passes. Default: none.
    pub command: Option<Vec<String>>,
    /// Time between checks. Default `"2s"`.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A check slower than this fails. Default `"1s"`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Passes in a row before the instance is registered. Default 1.
    pub healthy_threshold: u32,
    /// Failures in a row before it is deregistered. Default 2.
    pub unhealthy_threshold: u32,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            http: None,
            tcp: false,
            command: None,
            interval: DEFAULT_CHECK_INTERVAL,
            timeout: DEFAULT_CHECK_TIMEOUT,
            healthy_threshold: 1,
            unhealthy_threshold: 2,
        }
    }
}

/// The admin listener: metrics, health, state, reload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener. Default `"127.0.0.1:9901"`. Binding
    /// beyond loopback requires `token_sha256`.
    pub listen: SocketAddr,
    /// Hex SHA-256 of the bearer token every admin request must carry
    /// (`Authorization: Bearer <token>`); the token itself never appears in
    /// config. Default: none (no token; only allowed on loopback).
    pub token_sha256: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_ADMIN_LISTEN,
            token_sha256: None,
        }
    }
}

/// Defaults applied to every service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefaultsConfig {
    /// Policies of a service that sets no `policy` table. Default: the policy
    /// defaults (10s timeout, 3 attempts with a 20% budget, breaker on).
    pub policy: PolicyConfig,
}

/// Shutdown behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Time in-flight requests get to finish after SIGTERM. Default `"30s"`.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// One upstream service: where its instances are and how to call them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Static endpoints: `"127.0.0.1:9001"` or `{ addr = "...", weight = 2,
    /// metadata = { zone = "a" } }`. Default: none, and then the service's
    /// instances come from the `[registry]`.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    /// With the registry: only instances whose metadata has all these
    /// values, e.g. `{ version = "v2", zone = "a" }`. Default: all.
    #[serde(default)]
    pub select: BTreeMap<String, String>,
    /// `"http1"` (default) or `"http2"` (prior knowledge, h2c).
    #[serde(default)]
    pub protocol: Protocol,
    /// Time to open a connection to an endpoint. Default `"1s"`.
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Idle pooled connections are closed after this. Default `"90s"`.
    #[serde(default = "defaults::pool_idle_timeout", with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per endpoint. Default 256.
    #[serde(default = "defaults::pool_max_idle_per_endpoint")]
    pub pool_max_idle_per_endpoint: usize,
    /// TCP keep-alive probe interval on upstream connections. Default `"60s"`.
    #[serde(default = "defaults::tcp_keepalive", with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// TLS to the endpoints (`ca`, `server_name`, `cert`/`key` for mutual
    /// TLS). Default: none.
    #[serde(default)]
    pub tls: Option<switchyard_transport::UpstreamTlsConfig>,
    /// Largest request body buffered so that a retry or hedge can resend it;
    /// larger bodies stream and are not retried. Default 65536.
    #[serde(default = "defaults::retry_body_limit")]
    pub retry_body_limit: usize,
    /// Load balancer settings.
    #[serde(default)]
    pub balancer: BalancerConfig,
    /// Passive outlier ejection.
    #[serde(default)]
    pub outlier: OutlierConfig,
    /// Active health checks. Default: none.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Policies for calls to this service. Default: `[defaults.policy]`.
    #[serde(default)]
    pub policy: Option<PolicyConfig>,
}

impl ServiceConfig {
    /// The transport settings of this service.
    pub fn transport(&self) -> TransportConfig {
        TransportConfig {
            protocol: self.protocol,
            connect_timeout: self.connect_timeout,
            pool_idle_timeout: self.pool_idle_timeout,
            pool_max_idle_per_endpoint: self.pool_max_idle_per_endpoint,
            tcp_keepalive: self.tcp_keepalive,
            tls: self.tls.clone(),
        }
    }
}

/// An endpoint in config: an address, or a table with weight and metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EndpointConfig {
    /// Just the address.
    Addr(SocketAddr),
    /// Address with weight and metadata.
    Full(Endpoint),
}

impl EndpointConfig {
    /// The endpoint this entry describes.
    pub fn endpoint(&self) -> Endpoint {
        match self {
            EndpointConfig::Addr(addr) => Endpoint::new(*addr),
            EndpointConfig::Full(endpoint) => endpoint.clone(),
        }
    }
}

/// One inbound listener: where clients connect and the limits that protect it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name routes refer to. Required, unique.
    pub name: String,
    /// Address to listen on, e.g. `"127.0.0.1:8080"`. Required.
    pub listen: SocketAddr,
    /// Largest header section accepted, in bytes; larger gets `431`. Default 16384.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header fields accepted; more gets `431`. Default 100.
    #[serde(default = "defaults::max_headers")]
    pub max_headers: usize,
    /// Largest request body accepted, in bytes; larger gets `413`. Default 10 MiB.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: u64,
    /// Time a client has to send the request's headers, from the connection's
    /// start or the previous response; slower clients are disconnected.
    /// Default `"10s"`.
    #[serde(default = "defaults::header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time an idle connection (no request in flight) is kept. Default `"60s"`.
    #[serde(default = "defaults::idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most client connections open at once; more wait in the accept queue.
    /// Default 10000.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Sidecar mode: a request no route matches goes to the service named by
    /// its `Host` header (port ignored) or its `x-switchyard-service` header.
    /// Default `false`.
    #[serde(default)]
    pub sidecar: bool,
    /// TLS termination (and mutual TLS) on this listener. Default: none
    /// (plain HTTP/1.1 and h2c).
    #[serde(default)]
    pub tls: Option<crate::tls::ListenerTlsConfig>,
}

/// How a route matches requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name used in metrics and logs. Default: `METHODS path`.
    #[serde(default)]
    pub name: Option<String>,
    /// Listeners this route serves (by name). Default: all.
    #[serde(default)]
    pub listeners: Vec<String>,
    /// Path pattern: literal segments, `{name}` for one segment, `{*name}` for
    /// the rest. Required.
    pub path: String,
    /// Methods matched (upper case). Default: any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Host matched (without port, case-insensitive). Default: any.
    #[serde(default)]
    pub host: Option<String>,
    /// Headers that must be present with exactly these values. Default: none.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Service the request goes to. Required unless the route has `compose`.
    #[serde(default)]
    pub service: String,
    /// New path for the upstream request, with `{name}` replaced by the
    /// matched parameter. Default: the path as received.
    #[serde(default)]
    pub rewrite: Option<String>,
    /// Retry non-idempotent methods (POST, PATCH) too. Default `false`.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// Policies for calls through this route, replacing the service's; the
    /// route then has its own breaker and budget. Default: the service's.
    #[serde(default)]
    pub policy: Option<PolicyConfig>,
    /// Who may call this route (`require`, `allow`, `deny`). Default: open.
    #[serde(default)]
    pub auth: Option<crate::auth::RouteAuthConfig>,
    /// Answer with a composition of calls instead of proxying to `service`.
    /// Default: none.
    #[serde(default)]
    pub compose: Option<switchyard_compose::ComposeConfig>,
}

mod defaults {
    use super::*;

    pub(super) fn weight() -> u32 {
        1
    }
    pub(super) fn register_ttl() -> Duration {
        DEFAULT_REGISTER_TTL
    }

    pub(super) fn connect_timeout() -> Duration {
        TransportConfig::default().connect_timeout
    }
    pub(super) fn pool_idle_timeout() -> Duration {
        TransportConfig::default().pool_idle_timeout
    }
    pub(super) fn pool_max_idle_per_endpoint() -> usize {
        TransportConfig::default().pool_max_idle_per_endpoint
    }
    pub(super) fn tcp_keepalive() -> Duration {
        TransportConfig::default().tcp_keepalive
    }
    pub(super) fn retry_body_limit() -> usize {
        DEFAULT_RETRY_BODY_LIMIT
    }

    pub(super) fn max_header_bytes() -> usize {
        DEFAULT_MAX_HEADER_BYTES
    }
    pub(super) fn max_headers() -> usize {
        DEFAULT_MAX_HEADERS
    }
    pub(super) fn max_body_bytes() -> u64 {
        DEFAULT_MAX_BODY_BYTES
    }
    pub(super) fn header_read_timeout() -> Duration {
        DEFAULT_HEADER_READ_TIMEOUT
    }
    pub(super) fn idle_timeout() -> Duration {
        DEFAULT_IDLE_TIMEOUT
    }
    pub(super) fn max_connections() -> usize {
        DEFAULT_MAX_CONNECTIONS
    }
}
