//! JWKS documents (RFC 7517): parsing with limits, and keeping a remote set
//! fresh.
//!
//! [`parse_jwks`] reads at most [`MAX_JWKS_BYTES`] and [`MAX_JWKS_KEYS`]
//! keys. A key the gateway can't use (an encryption key, an algorithm not on
//! the allow-list, an unknown key type or curve, a malformed member) is
//! skipped, not fatal: issuers publish keys for other consumers too. A set
//! with no usable key at all is an error.
//!
//! Each key's algorithm is its `alg` member when present; otherwise it
//! follows from the key type: `RSA` → RS256, `EC` on P-256 → ES256, `OKP`
//! on Ed25519 → EdDSA. A symmetric `oct` key is used only with an explicit
//! `"alg": "HS256"` and at least 32 bytes.
//!
//! # Remote sets
//!
//! A `jwks_url` is fetched by a background task: at start, then every
//! `jwks_refresh`. A token naming an unknown `kid` nudges the task to fetch
//! early (at most once per [`MIN_FETCH_INTERVAL`], so a flood of made-up
//! kids can't turn into a flood of fetches); that request itself is
//! answered 401 at once rather than waiting. A fetch is bounded by
//! `jwks_fetch_timeout` (connect, headers and body) and
//! [`MAX_JWKS_BYTES`]; when it fails, the last good keys stay in use and
//! the next attempt comes after [`RETRY_AFTER_FAILURE`] (or sooner if the
//! refresh interval is shorter).

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use http_body_util::{BodyExt, Limited};
use jsonwebtoken::{
    DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse},
};
use serde::Deserialize;
use switchyard_transport::{Body, Transport, TransportConfig, UpstreamTlsConfig};
use tokio::{sync::Notify, time::Instant};

use super::{config::JwtAlgorithm, config::MIN_HMAC_SECRET_BYTES, jwt::VerifyKey};

/// Largest JWKS document read, in bytes.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most keys read from one JWKS document.
pub const MAX_JWKS_KEYS: usize = 64;
/// Shortest time between two fetches triggered by unknown `kid`s.
pub const MIN_FETCH_INTERVAL: Duration = Duration::from_secs(5);
/// Longest wait before retrying a failed fetch.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

/// The usable keys of a JWKS document, each bound to one algorithm of
/// `allowed`.
///
/// ```
/// use switchyard_gateway::auth::{jwks::parse_jwks, JwtAlgorithm};
///
/// let doc = br#"{"keys":[
///   {"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
///   {"kty":"RSA","use":"enc","kid":"e","n":"AQAB","e":"AQAB"}
/// ]}"#;
/// let keys = parse_jwks(doc, &[JwtAlgorithm::EdDSA, JwtAlgorithm::RS256]).unwrap();
/// assert_eq!(keys.len(), 1);
/// assert_eq!(keys[0].kid(), Some("ed"));
/// assert!(parse_jwks(b"{\"keys\":[]}", &[JwtAlgorithm::EdDSA]).is_err());
/// ```
pub fn parse_jwks(doc: &[u8], allowed: &[JwtAlgorithm]) -> Result<Vec<VerifyKey>, String> {
    if doc.len() > MAX_JWKS_BYTES {
        return Err(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes"));
    }
    let set: RawSet = serde_json::from_slice(doc)
        .map_err(|e| format!("not a JWKS document (a JSON object with a `keys` array): {e}"))?;
    if set.keys.len() > MAX_JWKS_KEYS {
        return Err(format!("the JWKS has more than {MAX_JWKS_KEYS} keys"));
    }
    let mut out = Vec::new();
    for value in set.keys {
        match key_from_value(value, allowed) {
            Ok(key) => out.push(key),
            Err(why) => tracing::debug!(%why, "JWKS key skipped"),
        }
    }
    if out.is_empty() {
        return Err(format!(
            "the JWKS has no usable key for {}",
            allowed
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(out)
}

fn key_from_value(value: serde_json::Value, allowed: &[JwtAlgorithm]) -> Result<VerifyKey, String> {
    // `alg` is read as text ourselves: the library's enum has no variant for
    // names it doesn't know, which would fail the whole key for a harmless
    // reason; and we must not map e.g. PS256 onto an RSA key meant for RS256.
    let alg_name = value.get("alg").and_then(|v| v.as_str()).map(str::to_owned);
    let jwk: Jwk = serde_json::from_value(strip_alg(value)).map_err(|e| e.to_string())?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("an encryption key".into());
    }
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(JwtAlgorithm::RS256),
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            Some(JwtAlgorithm::ES256)
        }
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Some(JwtAlgorithm::EdDSA)
        }
        AlgorithmParameters::OctetKey(_) => None,
        _ => return Err("unsupported key type or curve".into()),
    };
    let alg = match (alg_name.as_deref(), implied) {
        (Some(name), implied) => {
            let alg = JwtAlgorithm::from_name(name).ok_or("unsupported alg")?;
            if implied.is_some_and(|i| i != alg)
                || (implied.is_none() && alg != JwtAlgorithm::HS256)
            {
                return Err("alg does not match the key type".into());
            }
            alg
        }
        (None, Some(implied)) => implied,
        (None, None) => return Err("a symmetric key without alg".into()),
    };
    if !allowed.contains(&alg) {
        return Err(format!("{alg} is not allowed"));
    }
    if let AlgorithmParameters::OctetKey(p) = &jwk.algorithm {
        use base64::Engine as _;
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&p.value)
            .map_err(|_| "oct key is not base64url")?;
        if secret.len() < MIN_HMAC_SECRET_BYTES {
            return Err("HS256 secret too short".into());
        }
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
    Ok(VerifyKey::new(alg, jwk.common.key_id.clone(), key))
}

fn strip_alg(mut value: serde_json::Value) -> serde_json::Value {
    if let Some(obj) = value.as_object_mut() {
        obj.remove("alg");
    }
    value
}

// === impl RemoteJwks ===

/// A JWKS fetched over HTTP(S) and refreshed in the background.
pub(crate) struct RemoteJwks {
    pub(crate) keys: ArcSwap<Vec<VerifyKey>>,
    url: http::Uri,
    timeout: Duration,
    allowed: Vec<JwtAlgorithm>,
    /// The same outbound transport (and TLS) the proxy uses.
    transport: Transport,
    pub(crate) nudge: Notify,
}

impl RemoteJwks {
    pub(crate) fn new(
        url: &str,
        ca: Option<&std::path::Path>,
        timeout: Duration,
        allowed: Vec<JwtAlgorithm>,
    ) -> Result<Self, String> {
        let url: http::Uri = url.parse().map_err(|e| format!("jwks_url: {e}"))?;
        let tls = match (url.scheme_str(), ca) {
            (Some("https"), Some(ca)) => Some(UpstreamTlsConfig {
                ca: ca.to_path_buf(),
                server_name: url.host().map(str::to_owned),
                cert: None,
                key: None,
            }),
            (Some("https"), None) => {
                return Err("jwks_ca: an https jwks_url needs a CA bundle".to_owned());
            }
            _ => None,
        };
        let config = TransportConfig {
            connect_timeout: timeout,
            pool_max_idle_per_endpoint: 1,
            tls,
            ..TransportConfig::default()
        };
        let transport = Transport::new(&config).map_err(|e| format!("jwks_ca: {e}"))?;
        Ok(Self {
            keys: ArcSwap::from_pointee(Vec::new()),
            url,
            timeout,
            allowed,
            transport,
            nudge: Notify::new(),
        })
    }

    /// Fetches and parses the document once; on success the new keys
    /// replace the old ones, on failure nothing changes.
    pub(crate) async fn fetch(&self) -> Result<usize, String> {
        let keys = tokio::time::timeout(self.timeout, self.fetch_unbounded())
            .await
            .map_err(|_| format!("fetching {} took longer than {:?}", self.url, self.timeout))??;
        let n = keys.len();
        self.keys.store(Arc::new(keys));
        Ok(n)
    }

    async fn fetch_unbounded(&self) -> Result<Vec<VerifyKey>, String> {
        let req = http::Request::get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Body::empty())
            .map_err(|e| e.to_string())?;
        let res = self
            .transport
            .send(req)
            .await
            .map_err(|e| format!("fetching {}: {e}", self.url))?;
        if !res.status().is_success() {
            return Err(format!("fetching {}: status {}", self.url, res.status()));
        }
        let body = Limited::new(res.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading {}: {e}", self.url))?
            .to_bytes();
        parse_jwks(&body, &self.allowed)
    }

    /// The refresh loop; runs until its task is aborted.
    pub(crate) async fn run(self: Arc<Self>, refresh: Duration) {
        let mut last_fetch: Option<Instant> = None;
        loop {
            if let Some(last) = last_fetch {
                tokio::time::sleep_until(last + MIN_FETCH_INTERVAL.min(refresh)).await;
            }
            last_fetch = Some(Instant::now());
            let wait = match self.fetch().await {
                Ok(n) => {
                    tracing::debug!(url = %self.url, keys = n, "JWKS refreshed");
                    metrics::counter!("switchyard_jwks_fetches_total", "result" => "ok")
                        .increment(1);
                    refresh
                }
                Err(err) => {
                    tracing::warn!(url = %self.url, %err, "JWKS fetch failed; keeping the last good keys");
                    metrics::counter!("switchyard_jwks_fetches_total", "result" => "error")
                        .increment(1);
                    refresh.min(RETRY_AFTER_FAILURE)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.nudge.notified() => {}
            }
        }
    }
}
