//! Who is calling, and may they: authentication (API keys, JWT bearer
//! tokens, client-certificate identities) and per-route authorization.
//!
//! # On the request path
//!
//! After the path is normalized ([`crate::paths`]) and a route matched:
//!
//! 1. [`strip_identity_headers`] on every request, whatever the route: the
//!    headers the gateway forwards identities in can't come from a client.
//! 2. [`admit`] (or [`Authenticator::authenticate`] then
//!    [`Authorizer::authorize`]): 401 or 403 problem answers, or the
//!    caller's [`Identity`] (or `None`, anonymous).
//! 3. [`forward_identity`] when there is an identity.
//!
//! # Credentials
//!
//! | credential | where | verified by |
//! | --- | --- | --- |
//! | API key | `x-api-key: KEY` or `Authorization: ApiKey KEY` | SHA-256 of the key compared in constant time with every configured hash |
//! | JWT | `Authorization: Bearer TOKEN` | size cap, header pre-check, key bound to `alg`, signature, `exp`/`nbf`/`iss`/`aud` with leeway (see [`jwt`]) |
//! | client certificate | the TLS layer passes the peer's SPIFFE URI or DNS SAN | the TLS handshake |
//!
//! A credential of a kind the config doesn't enable (a bearer token when
//! there is no `[auth.jwt]`, an `Authorization: Basic ...`) is not ours: it
//! is ignored and passed upstream untouched. Two credentials at once (an
//! API key and a bearer token, or a repeated header) are refused as
//! ambiguous. A client certificate alone makes an identity of source
//! [`Source::Certificate`]; with a key or token, the certificate identity
//! is attached to that identity.
//!
//! Every failure is a 401 carrying `WWW-Authenticate` (RFC 6750:
//! `Bearer realm="switchyard", error="invalid_token", error_description="..."`,
//! or `ApiKey realm="switchyard"` for a key). The description names the
//! check that failed but never echoes more than 32 sanitized characters of
//! what the client sent.

pub mod authorize;
pub mod config;
pub mod forward;
pub mod jwks;
pub mod jwt;

use std::sync::Arc;

use http::{HeaderMap, header};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use self::{
    authorize::{Authorizer, Decision},
    config::{
        ApiKeyConfig, AuthConfig, ForwardConfig, JwtAlgorithm, JwtConfig, JwtKeyConfig,
        RouteAuthConfig, RuleConfig, SourceName,
    },
    forward::{forward_identity, strip_identity_headers},
};
use self::{
    jwks::RemoteJwks,
    jwt::{TokenHeader, Verifier, VerifyKey},
};
use crate::problem::Problem;

/// The header an API key may arrive in.
pub const API_KEY_HEADER: &str = "x-api-key";
/// The realm named in `WWW-Authenticate` challenges.
pub const REALM: &str = "switchyard";

/// How a caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// An API key.
    ApiKey,
    /// A JWT bearer token.
    Jwt,
    /// Only a client certificate.
    Certificate,
}

impl Source {
    /// The name used in config (`sources`), logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::ApiKey => "api_key",
            Source::Jwt => "jwt",
            Source::Certificate => "certificate",
        }
    }
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The subject: an API key's `identity`, a JWT's `sub`, or the
    /// certificate identity when no credential was presented.
    pub subject: String,
    /// How the caller authenticated.
    pub source: Source,
    /// Scopes: an API key's `scopes`; a JWT's `scope` (space-separated) or
    /// `scp` (array or string).
    pub scopes: Vec<String>,
    /// A JWT's claims (empty for API keys and certificates).
    pub claims: Map<String, Value>,
    /// The client certificate's identity (SPIFFE URI or DNS SAN), if any.
    pub cert_identity: Option<String>,
}

/// Why a presented credential was refused. Every kind answers 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No credential, on a route that requires one.
    #[error("this route requires authentication")]
    Missing,
    /// The API key matches no configured key.
    #[error("the API key is not valid")]
    InvalidApiKey,
    /// The token (or the request's credential headers) can't be parsed.
    #[error("malformed credentials: {0}")]
    Malformed(String),
    /// The token is longer than `max_token_bytes`; it was not parsed.
    #[error("the token is longer than {limit} bytes")]
    TooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The token is refused (signature, algorithm, key, claims).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// `exp` is past (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `aud` names none of the configured audiences.
    #[error("the token is for another audience")]
    WrongAudience,
    /// `iss` is not a configured issuer.
    #[error("the token's issuer is not trusted")]
    WrongIssuer,
}

impl AuthError {
    /// A stable short name for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::InvalidApiKey => "invalid_api_key",
            AuthError::Malformed(_) => "malformed",
            AuthError::TooLarge { .. } => "too_large",
            AuthError::Invalid(_) => "invalid",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::WrongIssuer => "wrong_issuer",
        }
    }

    /// The `WWW-Authenticate` value for this failure (RFC 6750 §3 for
    /// tokens; `ApiKey realm=...` for keys).
    pub fn www_authenticate(&self) -> String {
        match self {
            AuthError::Missing => format!("Bearer realm=\"{REALM}\""),
            AuthError::InvalidApiKey => format!("ApiKey realm=\"{REALM}\""),
            other => format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
                description(&other.to_string())
            ),
        }
    }

    /// The 401 problem answer for this failure.
    pub fn to_problem(&self) -> Problem {
        Problem::unauthenticated(self.to_string(), self.www_authenticate())
    }
}

/// RFC 6750 allows `%x20-21 / %x23-5B / %x5D-7E` in `error_description`.
fn description(s: &str) -> String {
    s.chars()
        .filter(|c| (' '..='~').contains(c) && *c != '"' && *c != '\\')
        .collect()
}

struct ApiKey {
    hash: [u8; 32],
    id: String,
    identity: String,
    scopes: Vec<String>,
}

struct JwtState {
    max_token_bytes: usize,
    algorithms: Vec<JwtAlgorithm>,
    verifier: Verifier,
    keys: Vec<VerifyKey>,
    remote: Option<Arc<RemoteJwks>>,
}

/// Aborts the JWKS refresher when the authenticator that owns it goes
/// (for example the previous config after a reload).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Verifies credentials against an [`AuthConfig`]: built once per config,
/// shared by every request (put it in an `Arc`).
///
/// ```
/// use switchyard_gateway::auth::{AuthConfig, Authenticator, Source};
/// use http::HeaderMap;
///
/// // sha256("let-me-in")
/// let cfg: AuthConfig = toml::from_str(r#"
///     [[api_keys]]
///     id = "ci"
///     sha256 = "a3ee786b5707c27d42570785081ec17f5c7db9262a01366af362a1aa61a420b9"
///     identity = "ci-bot"
/// "#).unwrap();
/// let authn = Authenticator::new(&cfg).unwrap();
/// let anonymous = authn.authenticate(&HeaderMap::new(), None).unwrap();
/// assert!(anonymous.is_none());
/// let by_cert = authn.authenticate(&HeaderMap::new(), Some("spiffe://example.org/web")).unwrap();
/// assert_eq!(by_cert.unwrap().source, Source::Certificate);
/// ```
pub struct Authenticator {
    api_keys: Vec<ApiKey>,
    jwt: Option<JwtState>,
    _refresher: Option<AbortOnDrop>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field(
                "api_keys",
                &self.api_keys.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .field("jwt", &self.jwt.as_ref().map(|j| &j.algorithms))
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Validates `config`, loads its keys and JWKS file, and (for a
    /// `jwks_url`) starts the background refresher, which needs a Tokio
    /// runtime. The first fetch starts at once; until it succeeds, tokens
    /// for the remote keys are refused (see [`Authenticator::refresh_jwks`]
    /// to wait for it).
    pub fn new(config: &AuthConfig) -> Result<Self, String> {
        config.validate()?;
        let api_keys = config
            .api_keys
            .iter()
            .map(|k| {
                let hash = config::parse_sha256_hex(&k.sha256)
                    .ok_or_else(|| format!("api_keys: {}: sha256 is not 64 hex digits", k.id))?;
                Ok(ApiKey {
                    hash,
                    id: k.id.clone(),
                    identity: k.identity.clone(),
                    scopes: k.scopes.clone(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut refresher = None;
        let jwt = match &config.jwt {
            None => None,
            Some(j) => {
                let mut keys = Vec::new();
                for (i, k) in j.keys.iter().enumerate() {
                    keys.push(load_key(k).map_err(|e| format!("jwt.keys[{i}]: {e}"))?);
                }
                if let Some(path) = &j.jwks_file {
                    let doc = std::fs::read(path).map_err(|e| {
                        format!("jwt.jwks_file: can't read {}: {e}", path.display())
                    })?;
                    keys.extend(
                        jwks::parse_jwks(&doc, &j.algorithms)
                            .map_err(|e| format!("jwt.jwks_file: {}: {e}", path.display()))?,
                    );
                }
                let remote = match &j.jwks_url {
                    None => None,
                    Some(url) => {
                        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
                            "jwt.jwks_url: the JWKS refresher needs a Tokio runtime".to_owned()
                        })?;
                        let remote = Arc::new(RemoteJwks::new(
                            url,
                            j.jwks_ca.as_deref(),
                            j.jwks_fetch_timeout,
                            j.algorithms.clone(),
                        )?);
                        let task = handle.spawn(remote.clone().run(j.jwks_refresh));
                        refresher = Some(AbortOnDrop(task.abort_handle()));
                        Some(remote)
                    }
                };
                Some(JwtState {
                    max_token_bytes: j.max_token_bytes,
                    algorithms: j.algorithms.clone(),
                    verifier: Verifier::new(&j.algorithms, &j.issuers, &j.audiences, j.leeway),
                    keys,
                    remote,
                })
            }
        };
        Ok(Self {
            api_keys,
            jwt,
            _refresher: refresher,
        })
    }

    /// Fetches the `jwks_url` now (outside the refresh schedule and its rate
    /// limit) and returns how many usable keys it has. On failure the keys
    /// in use don't change. `Ok(0)` when no `jwks_url` is configured.
    pub async fn refresh_jwks(&self) -> Result<usize, String> {
        match self.jwt.as_ref().and_then(|j| j.remote.as_ref()) {
            Some(remote) => remote.fetch().await,
            None => Ok(0),
        }
    }

    /// The `WWW-Authenticate` challenge for a request that brought no
    /// credential: one per enabled scheme.
    pub fn challenge(&self) -> String {
        let mut out = Vec::new();
        if self.jwt.is_some() || self.api_keys.is_empty() {
            out.push(format!("Bearer realm=\"{REALM}\""));
        }
        if !self.api_keys.is_empty() {
            out.push(format!("ApiKey realm=\"{REALM}\""));
        }
        out.join(", ")
    }

    /// Who the request's credentials say the caller is.
    ///
    /// `Ok(None)`: no credential of an enabled kind and no client
    /// certificate (anonymous; whether that is enough is the
    /// [`Authorizer`]'s call). `Err`: a credential was presented and
    /// failed. `peer_cert_identity` is the client certificate's SPIFFE URI
    /// or DNS SAN from the TLS layer.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        peer_cert_identity: Option<&str>,
    ) -> Result<Option<Identity>, AuthError> {
        let cert = peer_cert_identity.map(str::to_owned);
        let identity = match self.credential(headers)? {
            Credential::ApiKey(key) => Some(self.verify_api_key(key)?),
            Credential::Bearer(token) => match &self.jwt {
                Some(jwt) => Some(verify_jwt(jwt, token)?),
                None => None,
            },
            Credential::None => None,
        };
        Ok(match (identity, cert) {
            (Some(mut id), cert) => {
                id.cert_identity = cert;
                Some(id)
            }
            (None, Some(cert)) => Some(Identity {
                subject: cert.clone(),
                source: Source::Certificate,
                scopes: Vec::new(),
                claims: Map::new(),
                cert_identity: Some(cert),
            }),
            (None, None) => None,
        })
    }

    /// The one credential of an enabled kind the request carries.
    fn credential<'h>(&self, headers: &'h HeaderMap) -> Result<Credential<'h>, AuthError> {
        let mut api_key = single(headers, API_KEY_HEADER)?;
        let mut bearer = None;
        if let Some(auth) = single(headers, header::AUTHORIZATION.as_str())? {
            let (scheme, rest) = auth.split_once(' ').unwrap_or((auth, ""));
            let rest = rest.trim_matches(' ');
            if scheme.eq_ignore_ascii_case("bearer") {
                bearer = Some(rest);
            } else if scheme.eq_ignore_ascii_case("apikey") {
                if api_key.is_some() {
                    return Err(AuthError::Malformed("an API key in two headers".into()));
                }
                api_key = Some(rest);
            }
        }
        if self.api_keys.is_empty() {
            api_key = None;
        }
        if self.jwt.is_none() {
            bearer = None;
        }
        match (api_key, bearer) {
            (Some(_), Some(_)) => Err(AuthError::Malformed(
                "both an API key and a bearer token; send one".into(),
            )),
            (Some(key), None) => Ok(Credential::ApiKey(key)),
            (None, Some(token)) => Ok(Credential::Bearer(token)),
            (None, None) => Ok(Credential::None),
        }
    }

    fn verify_api_key(&self, key: &str) -> Result<Identity, AuthError> {
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Every configured hash is compared, in constant time, so neither the
        // comparison nor where a match sits in the list shows in the timing.
        let mut found: Option<&ApiKey> = None;
        for k in &self.api_keys {
            let eq = k.hash.ct_eq(&hash);
            if bool::from(eq) {
                found = Some(k);
            }
        }
        let k = found.ok_or(AuthError::InvalidApiKey)?;
        tracing::trace!(key = %k.id, "API key accepted");
        Ok(Identity {
            subject: k.identity.clone(),
            source: Source::ApiKey,
            scopes: k.scopes.clone(),
            claims: Map::new(),
            cert_identity: None,
        })
    }
}

enum Credential<'h> {
    ApiKey(&'h str),
    Bearer(&'h str),
    None,
}

/// The value of a header that may appear at most once.
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, AuthError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::Malformed(format!(
            "{name} appears more than once"
        )));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| AuthError::Malformed(format!("{name} is not visible ASCII")))
}

fn verify_jwt(jwt: &JwtState, token: &str) -> Result<Identity, AuthError> {
    if token.len() > jwt.max_token_bytes {
        return Err(AuthError::TooLarge {
            limit: jwt.max_token_bytes,
        });
    }
    let header: TokenHeader = jwt::parse_header(token, &jwt.algorithms)?;
    let remote = jwt.remote.as_ref().map(|r| r.keys.load_full());
    let sets: Vec<&[VerifyKey]> = match &remote {
        Some(r) => vec![&jwt.keys, r.as_slice()],
        None => vec![&jwt.keys],
    };
    let candidates = jwt::candidates(&header, &sets);
    if let (Some(kid), Some(r)) = (&header.kid, &jwt.remote)
        && !candidates.iter().any(|k| k.kid.as_deref() == Some(kid))
    {
        // Perhaps the issuer rotated its keys: ask the refresher to look
        // (rate-limited there) rather than make this request wait.
        r.nudge.notify_one();
    }
    let claims = jwt.verifier.verify(token, &header, &candidates)?;
    let subject = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err(AuthError::Invalid(
                "the sub claim must be a non-empty string".into(),
            ));
        }
    };
    Ok(Identity {
        subject,
        source: Source::Jwt,
        scopes: scopes_of(&claims),
        claims,
        cert_identity: None,
    })
}

fn scopes_of(claims: &Map<String, Value>) -> Vec<String> {
    let words = |s: &str| {
        s.split(' ')
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect()
    };
    match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(s)), _) => words(s),
        (_, Some(Value::String(s))) => words(s),
        (_, Some(Value::Array(items))) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn load_key(k: &JwtKeyConfig) -> Result<VerifyKey, String> {
    use jsonwebtoken::DecodingKey;
    let file = match &k.key_file {
        Some(path) => {
            Some(std::fs::read(path).map_err(|e| format!("can't read {}: {e}", path.display()))?)
        }
        None => None,
    };
    let key = match k.algorithm {
        JwtAlgorithm::HS256 => {
            let secret: Vec<u8> = match (&k.secret, file) {
                (Some(s), _) => s.as_bytes().to_vec(),
                (None, Some(mut bytes)) => {
                    while bytes.last().is_some_and(u8::is_ascii_whitespace) {
                        bytes.pop();
                    }
                    bytes
                }
                (None, None) => return Err("HS256 needs `secret` or `key_file`".into()),
            };
            if secret.len() < config::MIN_HMAC_SECRET_BYTES {
                return Err(format!(
                    "HS256 secrets must be at least {} bytes",
                    config::MIN_HMAC_SECRET_BYTES
                ));
            }
            DecodingKey::from_secret(&secret)
        }
        alg => {
            let pem = match (&k.pem, file) {
                (Some(p), _) => p.as_bytes().to_vec(),
                (None, Some(bytes)) => bytes,
                (None, None) => return Err(format!("{alg} needs `pem` or `key_file`")),
            };
            let text = String::from_utf8_lossy(&pem);
            if text.contains("PRIVATE KEY") {
                return Err(
                    "this is a private key; give the public key (openssl pkey -pubout)".into(),
                );
            }
            match alg {
                JwtAlgorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
                JwtAlgorithm::ES256 => DecodingKey::from_ec_pem(&pem),
                _ => DecodingKey::from_ed_pem(&pem),
            }
            .map_err(|e| format!("not a {alg} public key in PEM: {e}"))?
        }
    };
    Ok(VerifyKey::new(k.algorithm, k.kid.clone(), key))
}

/// Authentication and authorization of one request in one call: the
/// caller's identity, or the 401/403 problem to answer with.
///
/// On an open route ([`Authorizer::is_open`]) a credential that fails is
/// ignored and the caller treated as anonymous: the route asked for
/// nothing, and its upstream may use tokens the gateway doesn't know. On
/// any other route a failed credential is a 401 even when anonymous callers
/// would be allowed, so a client with a broken token learns it.
pub fn admit(
    authenticator: &Authenticator,
    authorizer: &Authorizer,
    headers: &HeaderMap,
    peer_cert_identity: Option<&str>,
) -> Result<Option<Identity>, Problem> {
    let identity = match authenticator.authenticate(headers, peer_cert_identity) {
        Ok(identity) => identity,
        Err(_) if authorizer.is_open() => None,
        Err(err) => {
            tracing::debug!(reason = err.kind(), %err, "credentials refused");
            metrics::counter!("switchyard_auth_failures_total", "reason" => err.kind())
                .increment(1);
            return Err(err.to_problem());
        }
    };
    match authorizer.authorize(identity.as_ref()) {
        Decision::Allow => Ok(identity),
        Decision::Unauthenticated => {
            metrics::counter!("switchyard_auth_failures_total", "reason" => "missing").increment(1);
            Err(Problem::unauthenticated(
                AuthError::Missing.to_string(),
                authenticator.challenge(),
            ))
        }
        Decision::Forbidden => {
            metrics::counter!("switchyard_auth_denied_total").increment(1);
            Err(Problem::forbidden(format!(
                "{} is not allowed on this route",
                identity
                    .as_ref()
                    .map_or("the caller", |i| i.subject.as_str())
            )))
        }
    }
}

#[cfg(test)]
mod tests;
