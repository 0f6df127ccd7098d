//! JWT bearer tokens: our own pre-checks, then signature and claims.
//!
//! Before the `jsonwebtoken` library sees a token, [`parse_header`] checks
//! what an attacker controls most cheaply:
//!
//! - the token is at most `max_token_bytes` long (checked by the caller
//!   before this module runs) and has exactly three base64url segments (a
//!   JWS in compact form; an encrypted JWT's five segments are refused);
//! - the header segment is at most [`MAX_HEADER_SEGMENT_BYTES`] and decodes
//!   to a JSON object with a string `alg`, no duplicated members, and no
//!   `crit` (we implement no extensions, so RFC 7515 §4.1.11 says refuse);
//! - `alg` is not `none` (in any case) and is on the configured allow-list.
//!
//! Keys are bound to one algorithm each: a key from config names its
//! `algorithm`, a JWKS key's algorithm comes from its `alg` or its key type
//! and curve. A token is only ever checked against keys of its own `alg`, so
//! an HS256 token can't be verified with an RSA public key's bytes used as
//! an HMAC secret (the classic algorithm-confusion forgery); the library
//! binds key families too, as a second lock.
//!
//! Embedded keys (`jwk`, `jku`, `x5u`, `x5c` header members) are never used.

use std::{collections::HashMap, sync::Arc};

use base64::Engine as _;
use jsonwebtoken::{DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{AuthError, config::JwtAlgorithm};

/// Longest header segment accepted (base64url text), in bytes.
pub const MAX_HEADER_SEGMENT_BYTES: usize = 1024;
/// Longest `kid` accepted.
pub const MAX_KID_BYTES: usize = 256;
/// Most keys a token without a `kid` is tried against; a JWKS with many keys
/// must not let one request cost many signature checks.
pub const MAX_KEYS_TRIED: usize = 4;

/// What the pre-check learned from a token's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHeader {
    /// The algorithm, already checked against the allow-list.
    pub alg: JwtAlgorithm,
    /// The key id, if the token names one.
    pub kid: Option<String>,
}

/// The members of a JOSE header we read. Serde's derive refuses duplicated
/// members, so `{"alg":"HS256","alg":"none"}` can't mean one thing here and
/// another in a library that keeps the first.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// Checks a compact JWS's shape and header without verifying anything.
///
/// ```
/// use switchyard_gateway::auth::{jwt::parse_header, JwtAlgorithm, AuthError};
///
/// // {"alg":"none"} . {} . (empty signature)
/// let none = "eyJhbGciOiJub25lIn0.e30.";
/// assert!(matches!(parse_header(none, &[JwtAlgorithm::HS256]), Err(AuthError::Invalid(_))));
/// // {"alg":"HS256","kid":"k1"}
/// let ok = "eyJhbGciOiJIUzI1NiIsImtpZCI6ImsxIn0.e30.c2ln";
/// let header = parse_header(ok, &[JwtAlgorithm::HS256]).unwrap();
/// assert_eq!(header.kid.as_deref(), Some("k1"));
/// ```
pub fn parse_header(token: &str, allowed: &[JwtAlgorithm]) -> Result<TokenHeader, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed(
            "a JWT has three dot-separated parts".into(),
        ));
    };
    if header.is_empty() || payload.is_empty() {
        return Err(AuthError::Malformed("empty JWT part".into()));
    }
    for part in [header, payload, signature] {
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(AuthError::Malformed(
                "JWT parts must be base64url without padding".into(),
            ));
        }
    }
    if header.len() > MAX_HEADER_SEGMENT_BYTES {
        return Err(AuthError::Malformed("JWT header too large".into()));
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed("JWT header is not base64url".into()))?;
    // Serde reads a struct from a JSON array too (`["HS256"]`); a JOSE
    // header is an object.
    if !json.trim_ascii_start().starts_with(b"{") {
        return Err(AuthError::Malformed(
            "JWT header is not a JSON object".into(),
        ));
    }
    let raw: RawHeader = serde_json::from_slice(&json).map_err(|_| {
        AuthError::Malformed("JWT header is not a JSON object with a string alg".into())
    })?;
    if raw.alg.eq_ignore_ascii_case("none") {
        return Err(AuthError::Invalid("alg none is not accepted".into()));
    }
    if raw.crit.is_some() {
        return Err(AuthError::Invalid(
            "crit header extensions are not supported".into(),
        ));
    }
    let alg = JwtAlgorithm::from_name(&raw.alg)
        .filter(|a| allowed.contains(a))
        .ok_or_else(|| AuthError::Invalid(format!("alg {} is not accepted", sanitize(&raw.alg))))?;
    if raw.kid.as_ref().is_some_and(|k| k.len() > MAX_KID_BYTES) {
        return Err(AuthError::Malformed("kid too long".into()));
    }
    if signature.is_empty() {
        return Err(AuthError::Invalid("the token is not signed".into()));
    }
    Ok(TokenHeader { alg, kid: raw.kid })
}

/// At most 32 printable ASCII characters of attacker-controlled text, safe
/// to echo in a header or a log.
fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
        .take(32)
        .collect()
}

/// One verification key, bound to the single algorithm it verifies.
#[derive(Clone)]
pub struct VerifyKey {
    pub(crate) alg: JwtAlgorithm,
    pub(crate) kid: Option<String>,
    pub(crate) key: Arc<DecodingKey>,
}

impl VerifyKey {
    /// A key for `alg` with an optional id.
    pub(crate) fn new(alg: JwtAlgorithm, kid: Option<String>, key: DecodingKey) -> Self {
        Self {
            alg,
            kid,
            key: Arc::new(key),
        }
    }

    /// The algorithm this key verifies.
    pub fn algorithm(&self) -> JwtAlgorithm {
        self.alg
    }

    /// The key id.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The keys a token with this header is checked against, in order: those
/// whose `kid` equals the token's, else (or for a token without `kid`) the
/// keys of its algorithm, at most [`MAX_KEYS_TRIED`].
pub(crate) fn candidates<'a>(header: &TokenHeader, sets: &[&'a [VerifyKey]]) -> Vec<&'a VerifyKey> {
    let of_alg = || {
        sets.iter()
            .flat_map(|s| s.iter())
            .filter(|k| k.alg == header.alg)
    };
    let mut out: Vec<&VerifyKey> = match &header.kid {
        Some(kid) => {
            let exact: Vec<_> = of_alg().filter(|k| k.kid.as_deref() == Some(kid)).collect();
            if exact.is_empty() {
                of_alg().filter(|k| k.kid.is_none()).collect()
            } else {
                exact
            }
        }
        None => of_alg().collect(),
    };
    out.truncate(MAX_KEYS_TRIED);
    out
}

/// Signature and claims checks, one [`Validation`] per algorithm.
#[derive(Debug, Clone)]
pub(crate) struct Verifier {
    validations: HashMap<JwtAlgorithm, Validation>,
}

impl Verifier {
    pub(crate) fn new(
        algorithms: &[JwtAlgorithm],
        issuers: &[String],
        audiences: &[String],
        leeway: std::time::Duration,
    ) -> Self {
        let validations = algorithms
            .iter()
            .map(|alg| {
                let mut v = Validation::new(alg.to_jsonwebtoken());
                v.leeway = leeway.as_secs();
                v.validate_exp = true;
                v.validate_nbf = true;
                v.validate_aud = true;
                v.set_issuer(issuers);
                v.set_audience(audiences);
                v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                (*alg, v)
            })
            .collect();
        Self { validations }
    }

    /// Verifies `token` against the candidates; the first key whose
    /// signature verifies decides the claims checks.
    pub(crate) fn verify(
        &self,
        token: &str,
        header: &TokenHeader,
        keys: &[&VerifyKey],
    ) -> Result<Map<String, Value>, AuthError> {
        let Some(validation) = self.validations.get(&header.alg) else {
            return Err(AuthError::Invalid(format!(
                "alg {} is not accepted",
                header.alg
            )));
        };
        if keys.is_empty() {
            return Err(AuthError::Invalid(match &header.kid {
                Some(kid) => format!("no {} key with kid {}", header.alg, sanitize(kid)),
                None => format!("no {} key", header.alg),
            }));
        }
        let mut last = AuthError::Invalid("signature does not verify".into());
        for key in keys {
            debug_assert_eq!(key.alg, header.alg);
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
                Ok(data) => return Ok(data.claims),
                Err(err) => match err.into_kind() {
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidRsaKey(_)
                    | ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidEddsaKey
                    | ErrorKind::InvalidKeyFormat
                    | ErrorKind::InvalidAlgorithm => {
                        last = AuthError::Invalid("signature does not verify".into());
                    }
                    other => return Err(map_kind(other)),
                },
            }
        }
        Err(last)
    }
}

fn map_kind(kind: ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(c) => {
            AuthError::Invalid(format!("the token has no {} claim", sanitize(&c)))
        }
        ErrorKind::InvalidClaimFormat(c) => {
            AuthError::Invalid(format!("the {} claim is malformed", sanitize(&c)))
        }
        ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::InvalidToken => {
            AuthError::Malformed("the token's payload is not base64url JSON".into())
        }
        _ => AuthError::Invalid("the token is not valid".into()),
    }
}
