//! TLS on listeners: termination with ALPN (`h2`, `http/1.1`), optional
//! mutual TLS whose client certificate becomes the caller's identity, and
//! certificates that reload from disk without a restart.
//!
//! The files are polled every `reload_interval`; when one changes, a new
//! rustls config is built and swapped in for the next handshakes.
//! Connections already open keep the certificate they started with, so a
//! reload never drops a connection. A file that fails to load is logged and
//! the previous certificate keeps serving.
//!
//! The identity of a mutual-TLS client is the first URI SAN of its
//! certificate (SPIFFE style, `spiffe://domain/workload`), else its first DNS
//! SAN; the proxy attaches it to each request as [`PeerIdentity`].

pub mod certs;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::{ServerConfig, server::WebPkiClientVerifier};
use serde::{Deserialize, Serialize};
use switchyard_transport::tls::{install_crypto_provider, load_certs, load_key, load_roots};
use tokio_rustls::TlsAcceptor;

/// Default interval between checks of the certificate files.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// TLS for one listener (`[listeners.tls]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// Certificate chain (PEM), leaf first. Required.
    pub cert: PathBuf,
    /// Private key of the certificate (PEM). Required.
    pub key: PathBuf,
    /// CA bundle (PEM) client certificates must chain to; setting it turns
    /// on mutual TLS. Default: none.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: refuse clients without a certificate. Default `true`.
    #[serde(default = "default_true")]
    pub require_client_cert: bool,
    /// How often the files are checked for changes. Default `"10s"`.
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

fn default_true() -> bool {
    true
}

fn default_reload_interval() -> Duration {
    DEFAULT_RELOAD_INTERVAL
}

impl ListenerTlsConfig {
    /// Loads everything once: the files exist, parse, and the key fits the
    /// certificate.
    pub fn validate(&self) -> Result<(), String> {
        if self.reload_interval.is_zero() {
            return Err("tls.reload_interval: must be more than 0, e.g. \"10s\"".to_owned());
        }
        self.server_config().map(|_| ())
    }

    fn server_config(&self) -> Result<Arc<ServerConfig>, String> {
        install_crypto_provider();
        let certs = load_certs(&self.cert).map_err(|e| format!("tls.cert: {e}"))?;
        let key = load_key(&self.key).map_err(|e| format!("tls.key: {e}"))?;
        let builder = ServerConfig::builder();
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = load_roots(ca).map_err(|e| format!("tls.client_ca: {e}"))?;
                let verifier = WebPkiClientVerifier::builder(Arc::new(roots));
                let verifier = if self.require_client_cert {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(
                    verifier
                        .build()
                        .map_err(|e| format!("tls.client_ca: {e}"))?,
                )
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("tls.key: does not fit tls.cert: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    fn stamps(&self) -> Vec<Option<(SystemTime, u64)>> {
        let files = [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()];
        files
            .into_iter()
            .flatten()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
            })
            .collect()
    }
}

/// The TLS side of one listener: the current acceptor, swapped when the
/// files change.
pub struct TlsTerminator {
    config: ListenerTlsConfig,
    acceptor: ArcSwap<TlsAcceptor>,
    stamps: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl std::fmt::Debug for TlsTerminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTerminator")
            .field("cert", &self.config.cert)
            .finish()
    }
}

impl TlsTerminator {
    /// Loads the certificate, key and client CA.
    pub fn new(config: &ListenerTlsConfig) -> Result<Self, String> {
        let server = config.server_config()?;
        Ok(Self {
            stamps: Mutex::new(config.stamps()),
            acceptor: ArcSwap::from_pointee(TlsAcceptor::from(server)),
            config: config.clone(),
        })
    }

    /// The acceptor for the next handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::clone(&self.acceptor.load())
    }

    /// Reloads the files if any changed. `Ok(true)` when a new certificate
    /// is in use; on error the previous one keeps serving.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let stamps = self.config.stamps();
        let mut seen = self.stamps.lock();
        if *seen == stamps {
            return Ok(false);
        }
        let server = self.config.server_config()?;
        self.acceptor.store(Arc::new(TlsAcceptor::from(server)));
        *seen = stamps;
        Ok(true)
    }

    /// Checks the files every `reload_interval` until dropped with its task.
    pub async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match self.reload_if_changed() {
                Ok(true) => {
                    tracing::info!(cert = %self.config.cert.display(), "TLS certificate reloaded");
                    metrics::counter!("switchyard_tls_reloads_total").increment(1);
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(%err, "TLS files changed but can't be loaded; the previous certificate keeps serving")
                }
            }
        }
    }
}

/// The identity of a mutual-TLS client (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity(pub String);

/// The identity in a client's leaf certificate: its first URI SAN, else its
/// first DNS SAN.
pub fn peer_identity(conn: &rustls::ServerConnection) -> Option<PeerIdentity> {
    use x509_parser::{extensions::GeneralName, prelude::FromDer};
    let leaf = conn.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf.as_ref()).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let names = &san.value.general_names;
    names
        .iter()
        .find_map(|n| match n {
            GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        })
        .or_else(|| {
            names.iter().find_map(|n| match n {
                GeneralName::DNSName(dns) => Some(dns.to_string()),
                _ => None,
            })
        })
        .map(PeerIdentity)
}
