//! TLS plumbing shared by the outbound transport and the gateway's
//! listeners: one crypto provider (ring), PEM loading with errors that name
//! the file, and the client config for upstreams.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use serde::{Deserialize, Serialize};

/// Installs ring as the process's rustls crypto provider. Safe to call many
/// times; rustls panics at runtime if two providers are linked and none is
/// chosen, so every TLS entry point calls this first.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: cannot read certificates: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: bad PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no certificate found; expected a PEM \"BEGIN CERTIFICATE\" block",
            path.display()
        ));
    }
    Ok(certs)
}

/// Reads the private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{}: cannot read a private key: {e}", path.display()))
}

/// Reads a CA bundle into a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// TLS to an upstream service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// CA bundle (PEM) the upstream's certificate must chain to. Required.
    pub ca: PathBuf,
    /// Name the certificate must carry (and the SNI sent). Default: the
    /// endpoint's IP address.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Client certificate (PEM) for mutual TLS. Default: none.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Key of the client certificate. Required with `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

impl UpstreamTlsConfig {
    /// Checks the files can be loaded and the settings fit together.
    pub fn validate(&self) -> Result<(), String> {
        self.client_config(&[]).map(|_| ())?;
        if let Some(name) = &self.server_name {
            ServerName::try_from(name.as_str()).map_err(|_| {
                format!("tls.server_name: {name:?} is not a DNS name or IP address")
            })?;
        }
        Ok(())
    }

    /// The rustls client config, offering `alpn` protocols.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, String> {
        install_crypto_provider();
        let roots = load_roots(&self.ca).map_err(|e| format!("tls.ca: {e}"))?;
        let builder = ClientConfig::builder().with_root_certificates(roots);
        let mut config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(
                    load_certs(cert).map_err(|e| format!("tls.cert: {e}"))?,
                    load_key(key).map_err(|e| format!("tls.key: {e}"))?,
                )
                .map_err(|e| format!("tls.cert: the certificate and key don't match: {e}"))?,
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("tls: set both cert and key for mutual TLS, or neither".to_owned()),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}
