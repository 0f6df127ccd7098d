//! Identity headers: stripped from every client request, then set from the
//! verified identity.

use http::{HeaderMap, HeaderName, HeaderValue, header};
use serde_json::Value;

use super::{API_KEY_HEADER, Identity, Source, config::ForwardConfig};

/// Removes every header `config` forwards identities in, whatever the
/// request's route: a client must never be able to send them itself. Call
/// this on every request, before authentication and routing decisions.
pub fn strip_identity_headers(config: &ForwardConfig, headers: &mut HeaderMap) {
    for name in config_headers(config) {
        headers.remove(name);
    }
}

fn config_headers(config: &ForwardConfig) -> impl Iterator<Item = &str> {
    [
        config.identity_header.as_str(),
        config.cert_identity_header.as_str(),
    ]
    .into_iter()
    .chain(config.claims_headers.values().map(String::as_str))
}

/// Sets the identity headers for the upstream request from a verified
/// identity, and (unless `forward.credentials`) removes the credential the
/// gateway consumed. A claim whose value can't be a header value (control
/// characters) is not sent.
pub fn forward_identity(config: &ForwardConfig, identity: &Identity, headers: &mut HeaderMap) {
    set(headers, &config.identity_header, &identity.subject);
    if let Some(cert) = &identity.cert_identity {
        set(headers, &config.cert_identity_header, cert);
    }
    for (claim, header) in &config.claims_headers {
        match identity.claims.get(claim) {
            Some(Value::String(s)) => set(headers, header, s),
            Some(Value::Null) | None => {}
            Some(other) => set(headers, header, &other.to_string()),
        }
    }
    if !config.credentials {
        match identity.source {
            Source::ApiKey => {
                headers.remove(API_KEY_HEADER);
                remove_authorization_scheme(headers, "apikey");
            }
            Source::Jwt => remove_authorization_scheme(headers, "bearer"),
            Source::Certificate => {}
        }
    }
}

fn set(headers: &mut HeaderMap, name: &str, value: &str) {
    let (Ok(name), Ok(value)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) else {
        tracing::debug!(
            header = name,
            "identity value not forwarded: not a valid header value"
        );
        return;
    };
    headers.insert(name, value);
}

fn remove_authorization_scheme(headers: &mut HeaderMap, scheme: &str) {
    let ours = headers.get_all(header::AUTHORIZATION).iter().any(|v| {
        v.to_str()
            .ok()
            .and_then(|s| s.split_once(' '))
            .is_some_and(|(s, _)| s.eq_ignore_ascii_case(scheme))
    });
    if ours {
        headers.remove(header::AUTHORIZATION);
    }
}
