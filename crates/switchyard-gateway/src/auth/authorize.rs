//! Per-route authorization: allow and deny rules over an [`Identity`].

use std::collections::BTreeMap;

use serde_json::Value;

use super::{
    Identity, Source,
    config::{RouteAuthConfig, RuleConfig, SourceName},
};

/// What the authorizer decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Let the request through.
    Allow,
    /// The route needs a caller identity and there is none: 401.
    Unauthenticated,
    /// The caller is known and not allowed here: 403.
    Forbidden,
}

/// The compiled `auth` table of one route (or service).
///
/// Deny rules are checked first; then, if any allow rule exists, the caller
/// must match one. Without allow rules, `require = true` only asks for an
/// identity. An anonymous caller that would be refused gets
/// [`Decision::Unauthenticated`] (authenticating might help), a known one
/// [`Decision::Forbidden`].
///
/// ```
/// use switchyard_gateway::auth::{Authorizer, Decision, RouteAuthConfig};
///
/// let cfg: RouteAuthConfig = toml::from_str(r#"
///     require = true
///     allow = [{ scopes = ["orders:write"] }]
/// "#).unwrap();
/// let authz = Authorizer::new(&cfg).unwrap();
/// assert_eq!(authz.authorize(None), Decision::Unauthenticated);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    require: bool,
    allow: Vec<Rule>,
    deny: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    identities: Vec<String>,
    scopes: Vec<String>,
    claims: BTreeMap<String, String>,
    cert_identities: Vec<String>,
    sources: Vec<Source>,
}

impl Authorizer {
    /// Compiles a route's `auth` table; fails on a rule that constrains nothing.
    pub fn new(config: &RouteAuthConfig) -> Result<Self, String> {
        config.validate()?;
        Ok(Self {
            require: config.require,
            allow: config.allow.iter().map(Rule::new).collect(),
            deny: config.deny.iter().map(Rule::new).collect(),
        })
    }

    /// Whether this authorizer lets everyone through (no rules, not
    /// required): the proxy can skip authentication for such a route.
    pub fn is_open(&self) -> bool {
        !self.require && self.allow.is_empty() && self.deny.is_empty()
    }

    /// Whether the route needs an identity for every request.
    pub fn requires_identity(&self) -> bool {
        self.require || !self.allow.is_empty()
    }

    /// The decision for a caller (`None`: anonymous).
    pub fn authorize(&self, identity: Option<&Identity>) -> Decision {
        let Some(id) = identity else {
            return if self.requires_identity() {
                Decision::Unauthenticated
            } else {
                Decision::Allow
            };
        };
        if self.deny.iter().any(|r| r.matches(id)) {
            return Decision::Forbidden;
        }
        if self.allow.is_empty() || self.allow.iter().any(|r| r.matches(id)) {
            Decision::Allow
        } else {
            Decision::Forbidden
        }
    }
}

impl Rule {
    fn new(c: &RuleConfig) -> Self {
        Self {
            identities: c.identities.clone(),
            scopes: c.scopes.clone(),
            claims: c.claims.clone(),
            cert_identities: c.cert_identities.clone(),
            sources: c
                .sources
                .iter()
                .map(|s| match s {
                    SourceName::ApiKey => Source::ApiKey,
                    SourceName::Jwt => Source::Jwt,
                    SourceName::Certificate => Source::Certificate,
                })
                .collect(),
        }
    }

    fn matches(&self, id: &Identity) -> bool {
        (self.identities.is_empty() || self.identities.contains(&id.subject))
            && self
                .scopes
                .iter()
                .all(|s| id.scopes.iter().any(|have| have == s))
            && self
                .claims
                .iter()
                .all(|(name, want)| id.claims.get(name).is_some_and(|v| claim_matches(v, want)))
            && (self.cert_identities.is_empty()
                || id
                    .cert_identity
                    .as_deref()
                    .is_some_and(|c| self.cert_identities.iter().any(|w| w == c)))
            && (self.sources.is_empty() || self.sources.contains(&id.source))
    }
}

fn claim_matches(value: &Value, want: &str) -> bool {
    match value {
        Value::String(s) => s == want,
        Value::Number(n) => n.to_string() == want,
        Value::Bool(b) => b.to_string() == want,
        Value::Array(items) => items.iter().any(|v| match v {
            Value::Array(_) => false,
            v => claim_matches(v, want),
        }),
        Value::Null | Value::Object(_) => false,
    }
}
