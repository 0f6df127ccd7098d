//! The `[auth]` section and the per-route `auth` table.
//!
//! Every key is documented in `docs/config.md` with its default.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use http::HeaderName;
use serde::{Deserialize, Serialize};

/// Default tolerance for clock skew when checking `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Default time between two fetches of a `jwks_url`.
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);
/// Default bound on one fetch of a `jwks_url` (connect, headers and body).
pub const DEFAULT_JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// Default cap on a bearer token's length, checked before any parsing.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8192;
/// Default header carrying the caller's subject upstream.
pub const DEFAULT_IDENTITY_HEADER: &str = "x-switchyard-identity";
/// Default header carrying the caller's certificate identity upstream.
pub const DEFAULT_CERT_IDENTITY_HEADER: &str = "x-switchyard-cert-identity";
/// Shortest `jwks_refresh` accepted: an issuer's key endpoint is not polled faster.
pub const MIN_JWKS_REFRESH: Duration = Duration::from_secs(1);
/// Shortest HMAC secret accepted, in bytes (RFC 7518 §3.2: at least the hash size).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// Headers no identity may be forwarded in: they carry framing, routing or
/// the credentials themselves.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "connection",
    "content-length",
    "content-type",
    "cookie",
    "host",
    "keep-alive",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-api-key",
];

/// The top-level `[auth]` section: how callers prove who they are, and how
/// that identity travels upstream. Default: no API keys, no JWT; every
/// caller is anonymous unless it presents a client certificate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// API keys, each stored as the SHA-256 of the key. Default: none.
    pub api_keys: Vec<ApiKeyConfig>,
    /// JWT bearer tokens. Default: not accepted.
    pub jwt: Option<JwtConfig>,
    /// Which identity headers are sent upstream. Default: subject in
    /// `x-switchyard-identity`, certificate identity in
    /// `x-switchyard-cert-identity`, no claims.
    pub forward: ForwardConfig,
}

/// One API key (`[[auth.api_keys]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// A name for logs and metrics (never the key). Required, unique.
    pub id: String,
    /// Hex of the SHA-256 of the key, e.g. from `printf %s "$KEY" | sha256sum`.
    /// The key itself never appears in config. Required, unique.
    pub sha256: String,
    /// The identity (subject) a caller with this key gets. Required.
    pub identity: String,
    /// Scopes granted to this key. Default: none.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// A JWT signature algorithm Switchyard verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 (a shared secret).
    HS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

impl JwtAlgorithm {
    /// The name used in a token's `alg` header.
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::HS256 => "HS256",
            JwtAlgorithm::RS256 => "RS256",
            JwtAlgorithm::ES256 => "ES256",
            JwtAlgorithm::EdDSA => "EdDSA",
        }
    }

    /// The algorithm named exactly `name` (case-sensitive, as RFC 7515 requires).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "HS256" => Some(JwtAlgorithm::HS256),
            "RS256" => Some(JwtAlgorithm::RS256),
            "ES256" => Some(JwtAlgorithm::ES256),
            "EdDSA" => Some(JwtAlgorithm::EdDSA),
            _ => None,
        }
    }

    pub(crate) fn to_jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        match self {
            JwtAlgorithm::HS256 => jsonwebtoken::Algorithm::HS256,
            JwtAlgorithm::RS256 => jsonwebtoken::Algorithm::RS256,
            JwtAlgorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            JwtAlgorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

impl std::fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// JWT bearer tokens (`[auth.jwt]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Accepted `iss` values; a token must carry one of them. Required, non-empty.
    pub issuers: Vec<String>,
    /// Accepted `aud` values; a token must name one of them. Required,
    /// non-empty (a token minted for another service must not work here).
    pub audiences: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`. Default `"30s"`.
    #[serde(default = "defaults::leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// The algorithm allow-list: `"HS256"`, `"RS256"`, `"ES256"`, `"EdDSA"`.
    /// Required, non-empty. A token whose `alg` is not listed is refused
    /// before any key is looked at.
    pub algorithms: Vec<JwtAlgorithm>,
    /// Keys given inline or in files. Default: none (then a JWKS is needed).
    #[serde(default)]
    pub keys: Vec<JwtKeyConfig>,
    /// A JWKS document on disk, read at load. Default: none.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// A JWKS document fetched over HTTP or HTTPS, refreshed in the
    /// background. Default: none.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// With an `https://` `jwks_url`: the CA bundle (PEM) the JWKS server's
    /// certificate must chain to. Default: none.
    #[serde(default)]
    pub jwks_ca: Option<PathBuf>,
    /// Time between two fetches of `jwks_url`. Default `"5m"`; at least `"1s"`.
    #[serde(default = "defaults::jwks_refresh", with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// Bound on one fetch of `jwks_url`. Default `"2s"`.
    #[serde(default = "defaults::jwks_fetch_timeout", with = "humantime_serde")]
    pub jwks_fetch_timeout: Duration,
    /// Longest token accepted, in bytes; longer ones are refused before
    /// parsing. Default 8192.
    #[serde(default = "defaults::max_token_bytes")]
    pub max_token_bytes: usize,
}

/// One verification key (`[[auth.jwt.keys]]`): exactly one of `secret`,
/// `pem` or `key_file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeyConfig {
    /// The algorithm this key verifies. Required: a key is bound to one
    /// algorithm, so an HS256 token is never checked against an RSA key.
    pub algorithm: JwtAlgorithm,
    /// The key id; a token naming a `kid` is checked only against keys with
    /// that id. Default: none (the key serves tokens without a `kid`, and
    /// any `kid` when no key carries it).
    #[serde(default)]
    pub kid: Option<String>,
    /// HS256 only: the shared secret (UTF-8), at least 32 bytes. Default: none.
    #[serde(default)]
    pub secret: Option<String>,
    /// RS256, ES256, EdDSA: the public key as PEM (SPKI `PUBLIC KEY`, or
    /// `RSA PUBLIC KEY`). Default: none.
    #[serde(default)]
    pub pem: Option<String>,
    /// A file holding the PEM public key, or for HS256 the secret (trailing
    /// whitespace removed). Default: none.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// What is sent upstream about the caller (`[auth.forward]`). The same
/// headers arriving from a client are always removed first, so they can't
/// be forged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// Header carrying the caller's subject. Default `"x-switchyard-identity"`.
    pub identity_header: String,
    /// Header carrying the client certificate's identity (SPIFFE URI or DNS
    /// SAN). Default `"x-switchyard-cert-identity"`.
    pub cert_identity_header: String,
    /// JWT claims to forward: claim name → header name. Strings are sent as
    /// is, other values as compact JSON. Default: none.
    pub claims_headers: BTreeMap<String, String>,
    /// Keep the credential the gateway verified (`x-api-key`, or the
    /// `Authorization` header it read) on the upstream request. Default
    /// `false`: upstreams get the identity headers, not the key or token.
    pub credentials: bool,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            identity_header: DEFAULT_IDENTITY_HEADER.to_owned(),
            cert_identity_header: DEFAULT_CERT_IDENTITY_HEADER.to_owned(),
            claims_headers: BTreeMap::new(),
            credentials: false,
        }
    }
}

/// Per-route authorization (`[routes.auth]`).
///
/// | `require` | rules | no identity | identity |
/// | --- | --- | --- | --- |
/// | `false` | none | allow | allow |
/// | `true` | none | 401 | allow |
/// | any | deny matches | — | 403 |
/// | any | `allow` set, none matches | 401 | 403 |
/// | any | an `allow` matches (and no deny) | — | allow |
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteAuthConfig {
    /// Callers must authenticate. Default `false`.
    pub require: bool,
    /// Callers allowed; once set, anyone not matching one rule is refused.
    /// Default: none.
    pub allow: Vec<RuleConfig>,
    /// Callers refused, checked before `allow`. Default: none.
    pub deny: Vec<RuleConfig>,
}

/// One allow or deny rule. Every field that is set must match (fields
/// combine with AND); within a list, `identities`, `cert_identities` and
/// `sources` need one entry to match, `scopes` and `claims` need all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    /// Subjects (API key `identity`, JWT `sub`, or certificate identity when
    /// no credential was presented), exact. Default: any.
    pub identities: Vec<String>,
    /// Scopes the caller must all hold. Default: none required.
    pub scopes: Vec<String>,
    /// Claims with exact values: a string claim must equal the value, an
    /// array claim must contain it, numbers and booleans compare as text.
    /// Default: none.
    pub claims: BTreeMap<String, String>,
    /// Client-certificate identities (SPIFFE URI or DNS SAN), exact.
    /// Default: any.
    pub cert_identities: Vec<String>,
    /// How the caller authenticated: `"api_key"`, `"jwt"`, `"certificate"`.
    /// Default: any.
    pub sources: Vec<SourceName>,
}

/// How a caller authenticated, as named in a rule's `sources`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceName {
    /// An API key.
    ApiKey,
    /// A JWT bearer token.
    Jwt,
    /// Only a client certificate.
    Certificate,
}

// === impl AuthConfig ===

impl AuthConfig {
    /// Every problem in this section: (key relative to `auth`, what is wrong
    /// and how to fix it).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut ids = std::collections::HashSet::new();
        let mut hashes = std::collections::HashSet::new();
        for (i, k) in self.api_keys.iter().enumerate() {
            let at = |key: &str| format!("api_keys[{i}].{key}");
            if k.id.is_empty() || !ids.insert(k.id.as_str()) {
                out.push((at("id"), "ids must be non-empty and unique".to_owned()));
            }
            if k.identity.is_empty() {
                out.push((
                    at("identity"),
                    "give the identity this key maps to".to_owned(),
                ));
            }
            match parse_sha256_hex(&k.sha256) {
                Some(h) => {
                    if !hashes.insert(h) {
                        out.push((at("sha256"), "the same key hash is listed twice".to_owned()));
                    }
                }
                None => out.push((
                    at("sha256"),
                    "must be 64 hex digits: the SHA-256 of the key, e.g. `printf %s \"$KEY\" | sha256sum`".to_owned(),
                )),
            }
        }
        if let Some(jwt) = &self.jwt {
            for (key, msg) in jwt.problems() {
                out.push((format!("jwt.{key}"), msg));
            }
        }
        for (key, msg) in self.forward.problems() {
            out.push((format!("forward.{key}"), msg));
        }
        out
    }

    /// The first problem as `key: message` (keys relative to `auth`).
    pub fn validate(&self) -> Result<(), String> {
        match self.problems().into_iter().next() {
            Some((key, msg)) => Err(format!("{key}: {msg}")),
            None => Ok(()),
        }
    }
}

/// The 32 bytes of a 64-digit hex string (either case).
pub(crate) fn parse_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

// === impl JwtConfig ===

impl JwtConfig {
    /// Every problem: (key relative to `jwt`, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.issuers.is_empty() || self.issuers.iter().any(String::is_empty) {
            push(
                &mut out,
                "issuers",
                "list the accepted `iss` values, e.g. issuers = [\"https://id.example.com\"]",
            );
        }
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            push(
                &mut out,
                "audiences",
                "list the accepted `aud` values, e.g. audiences = [\"orders-api\"]; a token for another audience must not work here",
            );
        }
        if self.algorithms.is_empty() {
            push(
                &mut out,
                "algorithms",
                "list the accepted algorithms, e.g. algorithms = [\"RS256\"]",
            );
        }
        if self.max_token_bytes < 64 {
            push(
                &mut out,
                "max_token_bytes",
                "must be at least 64; the default is 8192",
            );
        }
        if self.keys.is_empty() && self.jwks_file.is_none() && self.jwks_url.is_none() {
            push(
                &mut out,
                "keys",
                "no verification key: add [[auth.jwt.keys]], jwks_file or jwks_url",
            );
        }
        for (i, k) in self.keys.iter().enumerate() {
            let sources = [k.secret.is_some(), k.pem.is_some(), k.key_file.is_some()]
                .iter()
                .filter(|s| **s)
                .count();
            let at = format!("keys[{i}]");
            if sources != 1 {
                out.push((
                    at.clone(),
                    "set exactly one of `secret`, `pem` or `key_file`".to_owned(),
                ));
            }
            if !self.algorithms.contains(&k.algorithm) {
                out.push((
                    format!("{at}.algorithm"),
                    format!(
                        "{} is not in `algorithms`; add it there or remove this key",
                        k.algorithm
                    ),
                ));
            }
            match (k.algorithm, &k.secret, &k.pem) {
                (JwtAlgorithm::HS256, _, Some(_)) => out.push((
                    format!("{at}.pem"),
                    "HS256 keys are shared secrets: use `secret` or `key_file`".to_owned(),
                )),
                (JwtAlgorithm::HS256, Some(s), _) if s.len() < MIN_HMAC_SECRET_BYTES => out.push((
                    format!("{at}.secret"),
                    format!("HS256 secrets must be at least {MIN_HMAC_SECRET_BYTES} bytes"),
                )),
                (alg, Some(_), _) if alg != JwtAlgorithm::HS256 => out.push((
                    format!("{at}.secret"),
                    format!("{alg} keys are public keys: use `pem` or `key_file`"),
                )),
                _ => {}
            }
        }
        if let Some(url) = &self.jwks_url {
            match url.parse::<http::Uri>() {
                Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some() => {}
                Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {
                    if self.jwks_ca.is_none() {
                        push(
                            &mut out,
                            "jwks_ca",
                            "an https jwks_url needs jwks_ca: the CA bundle (PEM) its certificate chains to",
                        );
                    }
                }
                _ => push(
                    &mut out,
                    "jwks_url",
                    "must be an absolute http:// or https:// URL",
                ),
            }
        }
        if self.jwks_refresh < MIN_JWKS_REFRESH {
            push(
                &mut out,
                "jwks_refresh",
                "must be at least \"1s\"; the default is \"5m\"",
            );
        }
        if self.jwks_fetch_timeout.is_zero() || self.jwks_fetch_timeout > self.jwks_refresh {
            push(
                &mut out,
                "jwks_fetch_timeout",
                "must be more than 0 and at most `jwks_refresh`; the default is \"2s\"",
            );
        }
        out
    }
}

// === impl ForwardConfig ===

impl ForwardConfig {
    /// Every problem: (key relative to `forward`, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut check = |key: String, name: &str| match HeaderName::from_bytes(name.as_bytes()) {
            Err(_) => out.push((key, format!("{name:?} is not a valid header name"))),
            Ok(h) if RESERVED_HEADERS.contains(&h.as_str()) => out.push((
                key,
                format!("{h} carries framing or credentials; pick another header"),
            )),
            Ok(h) => {
                if !seen.insert(h.clone()) {
                    out.push((
                        key,
                        format!("{h} is used twice; each header carries one value"),
                    ));
                }
            }
        };
        check("identity_header".to_owned(), &self.identity_header);
        check(
            "cert_identity_header".to_owned(),
            &self.cert_identity_header,
        );
        for (claim, header) in &self.claims_headers {
            check(format!("claims_headers.{claim}"), header);
        }
        out
    }

    /// The first problem as `key: message`.
    pub fn validate(&self) -> Result<(), String> {
        match self.problems().into_iter().next() {
            Some((key, msg)) => Err(format!("{key}: {msg}")),
            None => Ok(()),
        }
    }
}

// === impl RouteAuthConfig ===

impl RouteAuthConfig {
    /// Checks that every rule constrains something (an empty rule would
    /// match every caller, which is never what a rule is written for).
    pub fn validate(&self) -> Result<(), String> {
        for (list, rules) in [("allow", &self.allow), ("deny", &self.deny)] {
            for (i, r) in rules.iter().enumerate() {
                if r.is_empty() {
                    return Err(format!(
                        "{list}[{i}]: the rule matches nothing specific; set identities, scopes, claims, cert_identities or sources \
                         (to admit any authenticated caller use `require = true` without allow rules)"
                    ));
                }
            }
        }
        Ok(())
    }
}

impl RuleConfig {
    fn is_empty(&self) -> bool {
        self.identities.is_empty()
            && self.scopes.is_empty()
            && self.claims.is_empty()
            && self.cert_identities.is_empty()
            && self.sources.is_empty()
    }
}

fn push(out: &mut Vec<(String, String)>, key: &str, message: &str) {
    out.push((key.to_owned(), message.to_owned()));
}

mod defaults {
    use super::*;

    pub(super) fn leeway() -> Duration {
        DEFAULT_LEEWAY
    }
    pub(super) fn jwks_refresh() -> Duration {
        DEFAULT_JWKS_REFRESH
    }
    pub(super) fn jwks_fetch_timeout() -> Duration {
        DEFAULT_JWKS_FETCH_TIMEOUT
    }
    pub(super) fn max_token_bytes() -> usize {
        DEFAULT_MAX_TOKEN_BYTES
    }
}
