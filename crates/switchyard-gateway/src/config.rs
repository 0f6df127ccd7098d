//! The gateway's TOML configuration: listeners, services, routes, admin.
//!
//! Every key is documented in `docs/config.md` with its default.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};
use switchyard_policy::PolicyConfig;

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
    /// Service the request goes to. Required.
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
}

mod defaults {
    use super::*;

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
