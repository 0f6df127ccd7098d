//! Transport configuration: protocol, connect timeout and pool sizing.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default [`TransportConfig::connect_timeout`]: 1 second.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default [`TransportConfig::pool_idle_timeout`]: 90 seconds.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Default [`TransportConfig::pool_max_idle_per_endpoint`]: 256 connections.
pub const DEFAULT_POOL_MAX_IDLE_PER_ENDPOINT: usize = 256;
/// Default [`TransportConfig::tcp_keepalive`]: 60 seconds.
pub const DEFAULT_TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// The HTTP version spoken to upstream endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive: one request at a time per pooled connection.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge over cleartext (h2c): requests are
    /// multiplexed over one connection per endpoint.
    Http2,
}

/// How one service's outbound connections are made and pooled.
///
/// ```
/// use switchyard_transport::{Protocol, TransportConfig};
///
/// let config: TransportConfig = toml::from_str(r#"
///     protocol = "http2"
///     connect_timeout = "250ms"
/// "#).unwrap();
/// assert_eq!(config.protocol, Protocol::Http2);
/// assert_eq!(config.pool_max_idle_per_endpoint, 256);
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    /// `"http1"` or `"http2"` (HTTP/2 with prior knowledge, h2c). Default `"http1"`.
    pub protocol: Protocol,
    /// How long establishing a TCP connection may take before the attempt
    /// fails as a connect error (always safe to retry). Default `"1s"`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept before it is closed.
    /// Default `"90s"`.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// At most this many idle connections are kept per endpoint (HTTP/1.1;
    /// HTTP/2 keeps one multiplexed connection). Default `256`.
    pub pool_max_idle_per_endpoint: usize,
    /// Idle time before TCP keep-alive probes start on an outbound
    /// connection, so dead peers behind NATs are noticed. Default `"60s"`.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// TLS to the endpoints. Default: none (plain TCP).
    #[serde(default)]
    pub tls: Option<crate::UpstreamTlsConfig>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            protocol: Protocol::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            pool_max_idle_per_endpoint: DEFAULT_POOL_MAX_IDLE_PER_ENDPOINT,
            tcp_keepalive: DEFAULT_TCP_KEEPALIVE,
            tls: None,
        }
    }
}

impl TransportConfig {
    /// Checks the values make sense, explaining how to fix any that don't.
    pub fn validate(&self) -> Result<(), String> {
        if self.connect_timeout.is_zero() {
            return Err(
                "connect_timeout: must be greater than 0; a typical value is \"1s\"".to_owned(),
            );
        }
        if self.pool_idle_timeout.is_zero() {
            return Err("pool_idle_timeout: must be greater than 0 (set \
                        pool_max_idle_per_endpoint = 0 to disable pooling); a typical value is \"90s\""
                .to_owned());
        }
        if self.tcp_keepalive.is_zero() {
            return Err(
                "tcp_keepalive: must be greater than 0; a typical value is \"60s\"".to_owned(),
            );
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_unknown_keys_and_validation() {
        // An empty table is the documented defaults.
        let config: TransportConfig = toml::from_str("").unwrap();
        assert_eq!(config, TransportConfig::default());
        assert_eq!(config.protocol, Protocol::Http1);
        assert_eq!(config.connect_timeout, Duration::from_secs(1));
        assert_eq!(config.pool_idle_timeout, Duration::from_secs(90));

        // A misspelt key is named in the error.
        let err = toml::from_str::<TransportConfig>("conect_timeout = \"1s\"").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `conect_timeout`"),
            "{err}"
        );
        let err = toml::from_str::<TransportConfig>("protocol = \"h3\"").unwrap_err();
        assert!(err.to_string().contains("http1"), "{err}");

        // Zero timeouts are rejected naming the key.
        let config = TransportConfig {
            connect_timeout: Duration::ZERO,
            ..TransportConfig::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .starts_with("connect_timeout:")
        );
    }
}
