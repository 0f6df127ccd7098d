//! The `RateLimit-Policy` and `RateLimit` response fields of
//! draft-ietf-httpapi-ratelimit-headers (revision 10), and `Retry-After`.
//!
//! Both fields are Structured Field Lists (RFC 9651); each member is a
//! String naming the policy, with Integer parameters:
//!
//! ```text
//! RateLimit-Policy: "api";q=100;w=60
//! RateLimit: "api";r=42;t=18
//! ```
//!
//! - a rule's rate is the policy named after the rule, with `q` = requests
//!   and `w` = the period in whole seconds (a sub-second period is scaled up
//!   to one second: 10 per 100ms is `q=100;w=1`);
//! - a rule's quota is the policy `"<rule>/<window>"` (e.g. `"partner/day"`),
//!   `q` = requests per window, `w` = 60, 3600 or 86400;
//! - `r` is the quota units left (for a rate, the burst that could be spent
//!   at once now); `t` is the whole seconds, rounded up, until the quota is
//!   whole again (rate) or the window ends (quota); on a rejection `t` is the
//!   same point in time as `Retry-After`.
//!
//! Only the most restrictive policy of a request is sent: the one with the
//! fewest units left, the later reset breaking ties. Concurrency limits have
//! no window and are not advertised.

use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::local::Standing;

/// The `RateLimit-Policy` field name.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The `RateLimit` field name.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Whole seconds, rounded up.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A policy's advertised shape, precomputed per rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Policy {
    /// The policy name, already a quoted sf-string.
    id: String,
    /// The whole `RateLimit-Policy` member.
    value: HeaderValue,
}

impl Policy {
    /// `name` is a validated rule name (token characters only), so the
    /// quoted string and the header value are always valid.
    pub(crate) fn new(name: &str, quota: u64, window_secs: u64) -> Self {
        let id = format!("\"{name}\"");
        let value = HeaderValue::from_str(&format!("{id};q={quota};w={window_secs}"))
            .unwrap_or_else(|_| HeaderValue::from_static("\"invalid\";q=0"));
        Self { id, value }
    }

    /// The policy of a GCRA rate of `requests` per `per`.
    pub(crate) fn rate(name: &str, requests: u32, per: Duration) -> Self {
        let w = ceil_secs(per).max(1);
        let q = if per >= Duration::from_secs(1) && per.subsec_nanos() == 0 {
            u64::from(requests)
        } else {
            // Scale to the advertised whole-second window.
            let scaled =
                u128::from(requests) * u128::from(w) * 1_000_000_000 / per.as_nanos().max(1);
            u64::try_from(scaled).unwrap_or(u64::MAX)
        };
        Self::new(name, q, w)
    }

    /// The `RateLimit` member for a standing under this policy.
    pub(crate) fn limit_value(&self, standing: Standing) -> HeaderValue {
        HeaderValue::from_str(&format!(
            "{};r={};t={}",
            self.id,
            standing.remaining,
            ceil_secs(standing.reset)
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("\"invalid\";r=0"))
    }

    /// The `RateLimit-Policy` member.
    pub(crate) fn policy_value(&self) -> HeaderValue {
        self.value.clone()
    }
}

/// The most restrictive standing seen so far.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tightest<'a> {
    best: Option<(Standing, &'a Policy)>,
}

impl<'a> Tightest<'a> {
    pub(crate) fn offer(&mut self, standing: Standing, policy: &'a Policy) {
        let tighter = match &self.best {
            None => true,
            Some((best, _)) => {
                (standing.remaining, std::cmp::Reverse(standing.reset))
                    < (best.remaining, std::cmp::Reverse(best.reset))
            }
        };
        if tighter {
            self.best = Some((standing, policy));
        }
    }

    /// The two header values, if any policy was seen.
    pub(crate) fn into_values(self) -> Option<(HeaderValue, HeaderValue)> {
        self.best
            .map(|(standing, policy)| (policy.policy_value(), policy.limit_value(standing)))
    }
}
