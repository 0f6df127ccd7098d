//! A development certificate authority (rcgen), for `switchyard cert`, the
//! demo and the tests. Not for production: keys are written unencrypted.

use std::{
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// Its private key (PKCS#8).
    pub key: String,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A new self-signed CA named `name`.
pub fn new_ca(name: &str) -> Result<Pem, String> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A certificate signed by `ca` for `names`: `spiffe://...` and other
/// `scheme://` names become URI SANs, IP addresses IP SANs, the rest DNS
/// SANs. Usable by servers and clients (mutual TLS).
pub fn issue(ca: &Pem, names: &[String]) -> Result<Pem, String> {
    if names.is_empty() {
        return Err("give at least one name (DNS name, IP address or spiffe:// URI)".to_owned());
    }
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].as_str());
    for name in names {
        let san = if name.contains("://") {
            SanType::URI(
                name.as_str()
                    .try_into()
                    .map_err(|e| format!("{name:?}: {e}"))?,
            )
        } else if let Ok(ip) = name.parse::<IpAddr>() {
            SanType::IpAddress(ip)
        } else {
            SanType::DnsName(
                name.as_str()
                    .try_into()
                    .map_err(|e| format!("{name:?}: {e}"))?,
            )
        };
        params.subject_alt_names.push(san);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let ca_key = KeyPair::from_pem(&ca.key).map_err(|e| format!("CA key: {e}"))?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(|e| format!("CA certificate: {e}"))?;
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Writes `dir/<stem>.pem` and `dir/<stem>-key.pem` (mode 0600); refuses to
/// overwrite existing files unless `force`.
pub fn write(dir: &Path, stem: &str, pem: &Pem, force: bool) -> io::Result<(PathBuf, PathBuf)> {
    fs::create_dir_all(dir)?;
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}-key.pem"));
    for path in [&cert, &key] {
        if path.exists() && !force {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists; pass --force to replace it", path.display()),
            ));
        }
    }
    fs::write(&cert, &pem.cert)?;
    fs::write(&key, &pem.key)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
    }
    Ok((cert, key))
}

/// Reads `dir/<stem>.pem` and `dir/<stem>-key.pem`.
pub fn read(dir: &Path, stem: &str) -> io::Result<Pem> {
    Ok(Pem {
        cert: fs::read_to_string(dir.join(format!("{stem}.pem")))?,
        key: fs::read_to_string(dir.join(format!("{stem}-key.pem")))?,
    })
}
