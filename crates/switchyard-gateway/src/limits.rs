//! Call limits: request rate, concurrent requests and quotas per identity,
//! client IP, route, service or globally; enforced in process, or shared
//! between gateway instances through Redis.
//!
//! [`CallLimits`] is built from the `[limits]` section ([`LimitsConfig`]).
//! For each request the gateway asks [`CallLimits::check`] with a
//! [`LimitContext`] (route, service, identity, client IP). Every rule whose
//! `routes` and `services` match the request is applied, in config order:
//!
//! - `concurrency`: a slot per key, held by the [`LimitPermit`] until it is
//!   dropped (always per instance, also for shared rules);
//! - `rate`: GCRA with burst (locally the policy crate's keyed
//!   [`RateLimiter`](switchyard_policy::rate_limit::RateLimiter));
//! - `quota`: requests per calendar minute, hour or day (UTC).
//!
//! The first rule that refuses ends the check with a [`LimitRejection`]:
//! `429` (kinds `rate-limited`, `quota-exceeded`, `concurrency-limited`)
//! with `Retry-After` and the `RateLimit-Policy` / `RateLimit` fields, or
//! `503 limits-unavailable` when a shared rule can't reach Redis in
//! `fail_closed` mode. Local permits taken by earlier rules are not given
//! back (a refused call still counts against a local rate or quota it
//! passed); the shared rules are checked last, all at once, and spend
//! nothing unless all pass.
//!
//! Keys: `identity` buckets per caller identity (anonymous calls per client
//! IP), `client_ip` per address from [`client_ip()`] (`X-Forwarded-For` only
//! through trusted proxies), `route` and `service` per name, `global` one
//! bucket. Memory per rule is bounded by `max_keys` (see [`local`]).
//!
//! Shared rules (`shared = true` with `[limits.redis]`) are checked by one
//! Redis script per request (see [`shared`]). When Redis fails or is slow:
//! `fail_open` admits, and with `local_fallback` the rule is still enforced
//! locally with its limits divided by `expected_instances`; `fail_closed`
//! refuses with 503.
//!
//! Headers: see [`headers`]. Metrics: `switchyard_limits_checks_total{mode}`
//! (`local`, or `redis` when a shared rule was involved),
//! `switchyard_limits_rejected_total{rule}`,
//! `switchyard_limits_redis_errors_total`,
//! `switchyard_limits_redis_duration_seconds`.
//!
//! ```
//! use std::net::IpAddr;
//! use switchyard_gateway::limits::{CallLimits, LimitContext, LimitsConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let config: LimitsConfig = toml::from_str(r#"
//!     [[rules]]
//!     name = "per-caller"
//!     key = "identity"
//!     rate = { requests = 2, per = "1s" }
//! "#).unwrap();
//! let limits = CallLimits::new(&config).unwrap();
//! let ctx = LimitContext {
//!     route: "orders",
//!     service: "orders",
//!     identity: Some("alice"),
//!     client_ip: IpAddr::from([127, 0, 0, 1]),
//! };
//! let permit = limits.check(&ctx).await.unwrap();
//! assert_eq!(permit.headers()[1].1, r#""per-caller";r=1;t=1"#);
//! limits.check(&ctx).await.unwrap();
//! let refused = limits.check(&ctx).await.unwrap_err();
//! assert_eq!(refused.status(), 429);
//! # }
//! ```

// A rejection (about 130 bytes: two header values) is the rare path and is
// built once; boxing it would cost the caller an allocation for nothing.
#![allow(clippy::result_large_err)]

pub mod client_ip;
pub mod config;
pub mod headers;
pub mod local;
pub mod shared;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use tokio::time::Instant;

pub use self::{
    client_ip::{TrustedProxies, client_ip},
    config::{
        LimitKey, LimitRule, LimitsConfig, OnRedisError, QuotaSpec, QuotaWindow, RateSpec,
        RedisConfig,
    },
};
use self::{
    headers::{Policy, Tightest, ceil_secs},
    local::{
        Key, KeySpace, LocalConcurrency, LocalQuota, LocalRate, SWEEP_INTERVAL, Slot, WallClock,
    },
    shared::{RedisLimits, SharedCheck, SharedOutcome},
};
use crate::problem::Problem;

/// `Retry-After` of a call refused for concurrency (no window says when a
/// slot frees up) or because Redis is unavailable.
pub const RETRY_AFTER_UNKNOWN: Duration = Duration::from_secs(1);

/// What one request is limited by.
#[derive(Debug, Clone, Copy)]
pub struct LimitContext<'a> {
    /// The matched route's name.
    pub route: &'a str,
    /// The target service's name.
    pub service: &'a str,
    /// The authenticated caller, if any.
    pub identity: Option<&'a str>,
    /// The client's address (from [`client_ip()`]).
    pub client_ip: IpAddr,
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LimitReason {
    /// A rate limit: 429 `rate-limited`.
    Rate,
    /// A quota: 429 `quota-exceeded`.
    Quota,
    /// Too many calls in flight: 429 `concurrency-limited`.
    Concurrency,
    /// A shared rule could not reach Redis in `fail_closed` mode: 503
    /// `limits-unavailable`.
    Unavailable,
}

impl LimitReason {
    /// The problem kind (`x-switchyard-error` and the problem `type`).
    pub fn kind(self) -> &'static str {
        match self {
            LimitReason::Rate => "rate-limited",
            LimitReason::Quota => "quota-exceeded",
            LimitReason::Concurrency => "concurrency-limited",
            LimitReason::Unavailable => "limits-unavailable",
        }
    }

    /// The answer's status.
    pub fn status(self) -> StatusCode {
        match self {
            LimitReason::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

/// A call refused by a limit; answer it with
/// [`into_response`](Self::into_response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitRejection {
    /// The refusing rule's name.
    pub rule: String,
    /// Why.
    pub reason: LimitReason,
    /// When to come back.
    pub retry_after: Duration,
    /// `RateLimit-Policy` of the refusing policy (none for concurrency and
    /// unavailability).
    pub policy_header: Option<HeaderValue>,
    /// `RateLimit` of the refusing policy (`r=0`, `t` = `Retry-After`).
    pub limit_header: Option<HeaderValue>,
}

impl LimitRejection {
    /// 429, or 503 for [`LimitReason::Unavailable`].
    pub fn status(&self) -> StatusCode {
        self.reason.status()
    }

    /// `Retry-After` (whole seconds, rounded up, at least 1), `RateLimit-Policy`
    /// and `RateLimit`; [`into_response`](Self::into_response) sets them all.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(3);
        out.push((
            header::RETRY_AFTER,
            HeaderValue::from(ceil_secs(self.retry_after).max(1)),
        ));
        if let Some(v) = &self.policy_header {
            out.push((headers::RATELIMIT_POLICY.clone(), v.clone()));
        }
        if let Some(v) = &self.limit_header {
            out.push((headers::RATELIMIT.clone(), v.clone()));
        }
        out
    }

    /// The problem+json answer with every header set.
    pub fn into_response(
        &self,
        request_id: Option<&str>,
    ) -> http::Response<switchyard_transport::Body> {
        let mut problem = Problem::call_limited(self);
        if let Some(id) = request_id {
            problem = problem.instance(id);
        }
        problem.into_response()
    }
}

impl std::fmt::Display for LimitRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.reason {
            LimitReason::Rate => write!(f, "call limit \"{}\": request rate exceeded", self.rule),
            LimitReason::Quota => write!(f, "call limit \"{}\": quota exhausted", self.rule),
            LimitReason::Concurrency => {
                write!(f, "call limit \"{}\": too many calls in flight", self.rule)
            }
            LimitReason::Unavailable => write!(
                f,
                "call limit \"{}\": the shared limit store is unavailable",
                self.rule
            ),
        }
    }
}

impl std::error::Error for LimitRejection {}

/// An admitted call: holds its concurrency slots until dropped, and the
/// `RateLimit` fields of its most restrictive policy.
#[derive(Debug, Default)]
pub struct LimitPermit {
    fields: Option<(HeaderValue, HeaderValue)>,
    _slots: Vec<Slot>,
}

impl LimitPermit {
    /// A permit for a call no rule limits.
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// `RateLimit-Policy` and `RateLimit` to add to the response; empty
    /// when no rate or quota applied.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        match &self.fields {
            Some((policy, limit)) => vec![
                (headers::RATELIMIT_POLICY.clone(), policy.clone()),
                (headers::RATELIMIT.clone(), limit.clone()),
            ],
            None => Vec::new(),
        }
    }
}

// === impl Rule ===

/// The Redis side of a shared rule.
#[derive(Debug)]
struct SharedSpec {
    rate_key: String,
    quota_key: String,
    rate: Option<(u64, u64)>,
    quota: Option<(u64, u64)>,
}

#[derive(Debug)]
struct Rule {
    name: Arc<str>,
    key: LimitKey,
    routes: Box<[Box<str>]>,
    services: Box<[Box<str>]>,
    /// Local limiters: the rule's own, or for a shared rule its concurrency
    /// and (with `local_fallback`) the fallback's slice of rate and quota.
    local: KeySpace,
    shared: Option<SharedSpec>,
    rate_policy: Option<Policy>,
    quota_policy: Option<Policy>,
    rejected: metrics::Counter,
}

impl Rule {
    fn new(rule: &LimitRule, redis: Option<&RedisLimits>) -> Result<Self, String> {
        let shared = rule.shared && redis.is_some();
        // A shared rule's local rate and quota only serve as the fallback.
        let share = match redis {
            Some(r) if shared && r.local_fallback => Some(r.expected_instances),
            Some(_) if shared => None,
            _ => Some(1),
        };
        let local_rate = match (&rule.rate, share) {
            (Some(rate), Some(share)) => Some(LocalRate::new(rate, share)?),
            _ => None,
        };
        let local_quota = match (&rule.quota, share) {
            (Some(quota), Some(share)) => Some(LocalQuota::new(quota, share)),
            _ => None,
        };
        let concurrency = rule.concurrency.map(LocalConcurrency::new);
        let shared = match redis {
            Some(redis) if shared => {
                let base = format!("{}{}", redis.key_prefix, rule.name);
                Some(SharedSpec {
                    rate_key: format!("{base}:r:"),
                    quota_key: format!("{base}:q:"),
                    rate: rule.rate.as_ref().map(|r| {
                        let interval = u64::try_from((r.per / r.requests).as_micros())
                            .unwrap_or(u64::MAX)
                            .max(1);
                        let tolerance = interval.saturating_mul(u64::from(r.effective_burst() - 1));
                        (interval, tolerance)
                    }),
                    quota: rule.quota.as_ref().map(|q| (q.requests, q.window.secs())),
                })
            }
            _ => None,
        };
        Ok(Self {
            name: rule.name.as_str().into(),
            key: rule.key,
            routes: rule.routes.iter().map(|r| r.as_str().into()).collect(),
            services: rule.services.iter().map(|s| s.as_str().into()).collect(),
            local: KeySpace::new(local_rate, local_quota, concurrency, rule.max_keys),
            shared,
            rate_policy: rule
                .rate
                .as_ref()
                .map(|r| Policy::rate(&rule.name, r.requests, r.per)),
            quota_policy: rule.quota.as_ref().map(|q| {
                Policy::new(
                    &format!("{}/{}", rule.name, q.window.as_str()),
                    q.requests,
                    q.window.secs(),
                )
            }),
            rejected: metrics::counter!(
                "switchyard_limits_rejected_total",
                "rule" => rule.name.clone()
            ),
        })
    }

    fn matches(&self, ctx: &LimitContext<'_>) -> bool {
        (self.routes.is_empty() || self.routes.iter().any(|r| **r == *ctx.route))
            && (self.services.is_empty() || self.services.iter().any(|s| **s == *ctx.service))
    }

    fn key_of(&self, ctx: &LimitContext<'_>) -> Key {
        match self.key {
            LimitKey::Global => Key::Global,
            LimitKey::ClientIp => Key::Ip(ctx.client_ip),
            LimitKey::Identity => match ctx.identity {
                Some(id) => Key::Name(id.into()),
                None => Key::Ip(ctx.client_ip),
            },
            LimitKey::Route => Key::Name(ctx.route.into()),
            LimitKey::Service => Key::Name(ctx.service.into()),
        }
    }

    fn reject(
        &self,
        reason: LimitReason,
        retry_after: Duration,
        policy: Option<&Policy>,
    ) -> LimitRejection {
        self.rejected.increment(1);
        let standing = local::Standing {
            remaining: 0,
            reset: retry_after,
        };
        LimitRejection {
            rule: self.name.to_string(),
            reason,
            retry_after,
            policy_header: policy.map(Policy::policy_value),
            limit_header: policy.map(|p| p.limit_value(standing)),
        }
    }

    /// The local rate and quota of this rule (its own, or its fallback).
    fn check_local<'a>(
        &'a self,
        key: &Key,
        now_unix: &mut Option<Duration>,
        clock: &WallClock,
        tight: &mut Tightest<'a>,
    ) -> Result<(), LimitRejection> {
        if let (Some(rate), Some(policy)) = (&self.local.rate, &self.rate_policy) {
            match rate.check(key) {
                Ok(standing) => tight.offer(standing, policy),
                Err(wait) => return Err(self.reject(LimitReason::Rate, wait, Some(policy))),
            }
        }
        if let (Some(quota), Some(policy)) = (&self.local.quota, &self.quota_policy) {
            let now = *now_unix.get_or_insert_with(|| clock.unix_now());
            match quota.check(key, now) {
                Ok(standing) => tight.offer(standing, policy),
                Err(wait) => return Err(self.reject(LimitReason::Quota, wait, Some(policy))),
            }
        }
        Ok(())
    }
}

// === impl CallLimits ===

#[derive(Debug)]
struct Inner {
    rules: Box<[Rule]>,
    redis: Option<RedisLimits>,
    trusted: TrustedProxies,
    clock: WallClock,
    start: Instant,
    next_sweep_ms: AtomicU64,
    checks_local: metrics::Counter,
    checks_redis: metrics::Counter,
}

/// The call limits of one configuration; cheap to clone (clones share all
/// state). See the [module docs](self).
#[derive(Debug, Clone)]
pub struct CallLimits {
    inner: Arc<Inner>,
}

impl CallLimits {
    /// Builds the limits; fails with the validation message (naming the key)
    /// when the section can't work. Doesn't connect to Redis: the first
    /// check of a shared rule does.
    pub fn new(config: &LimitsConfig) -> Result<Self, String> {
        Self::with_clock(config, WallClock::system())
    }

    fn with_clock(config: &LimitsConfig, clock: WallClock) -> Result<Self, String> {
        config.validate()?;
        let redis = config.redis.as_ref().map(RedisLimits::new).transpose()?;
        let rules = config
            .rules
            .iter()
            .map(|rule| Rule::new(rule, redis.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                rules,
                redis,
                trusted: TrustedProxies::parse(&config.trusted_proxies)?,
                clock,
                start: Instant::now(),
                next_sweep_ms: AtomicU64::new(millis(SWEEP_INTERVAL)),
                checks_local: metrics::counter!("switchyard_limits_checks_total", "mode" => "local"),
                checks_redis: metrics::counter!("switchyard_limits_checks_total", "mode" => "redis"),
            }),
        })
    }

    /// True when there are no rules (checks always admit).
    pub fn is_empty(&self) -> bool {
        self.inner.rules.is_empty()
    }

    /// The configured trusted proxies.
    pub fn trusted_proxies(&self) -> &TrustedProxies {
        &self.inner.trusted
    }

    /// The client IP of a request from `peer`, by the trusted-proxy rule of
    /// [`client_ip()`].
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        client_ip(peer, headers, &self.inner.trusted)
    }

    /// Applies every rule matching `ctx`; see the [module docs](self).
    pub async fn check(&self, ctx: &LimitContext<'_>) -> Result<LimitPermit, LimitRejection> {
        let inner = &*self.inner;
        if inner.rules.is_empty() {
            return Ok(LimitPermit::unlimited());
        }
        self.maybe_sweep();
        let mut slots = Vec::new();
        let mut tight = Tightest::default();
        let mut now_unix = None;
        let mut shared: Vec<(&Rule, Key)> = Vec::new();
        for rule in inner.rules.iter().filter(|r| r.matches(ctx)) {
            let key = rule.local.admit_key(rule.key_of(ctx));
            if let Some(concurrency) = &rule.local.concurrency {
                match concurrency.acquire(&key) {
                    Some(slot) => slots.push(slot),
                    None => {
                        return Err(rule.reject(
                            LimitReason::Concurrency,
                            RETRY_AFTER_UNKNOWN,
                            None,
                        ));
                    }
                }
            }
            if rule.shared.is_some() {
                shared.push((rule, key));
            } else {
                rule.check_local(&key, &mut now_unix, &inner.clock, &mut tight)?;
            }
        }
        match (&inner.redis, shared.is_empty()) {
            (Some(redis), false) => {
                inner.checks_redis.increment(1);
                self.check_shared(redis, &shared, &mut now_unix, &mut tight)
                    .await?;
            }
            _ => inner.checks_local.increment(1),
        }
        Ok(LimitPermit {
            fields: tight.into_values(),
            _slots: slots,
        })
    }

    async fn check_shared<'a>(
        &'a self,
        redis: &RedisLimits,
        shared: &[(&'a Rule, Key)],
        now_unix: &mut Option<Duration>,
        tight: &mut Tightest<'a>,
    ) -> Result<(), LimitRejection> {
        // One Redis check per rate and per quota, remembering whose it is.
        let mut checks = Vec::with_capacity(shared.len() * 2);
        let mut owners: Vec<(&Rule, bool)> = Vec::with_capacity(shared.len() * 2);
        for (rule, key) in shared {
            let Some(spec) = &rule.shared else { continue };
            let suffix = key.redis_suffix();
            if let Some((interval_us, tolerance_us)) = spec.rate {
                checks.push(SharedCheck::Rate {
                    key: format!("{}{suffix}", spec.rate_key),
                    interval_us,
                    tolerance_us,
                });
                owners.push((rule, false));
            }
            if let Some((limit, window_secs)) = spec.quota {
                checks.push(SharedCheck::Quota {
                    key: format!("{}{suffix}", spec.quota_key),
                    limit,
                    window_secs,
                });
                owners.push((rule, true));
            }
        }
        let policy_of = |rule: &'a Rule, quota: bool| {
            if quota {
                rule.quota_policy.as_ref()
            } else {
                rule.rate_policy.as_ref()
            }
        };
        match redis.check(&checks).await {
            SharedOutcome::Admitted(standings) => {
                for ((rule, quota), standing) in owners.iter().zip(standings) {
                    if let Some(policy) = policy_of(rule, *quota) {
                        tight.offer(standing, policy);
                    }
                }
                Ok(())
            }
            SharedOutcome::Rejected(index, retry_after) => {
                let Some(&(rule, quota)) = owners.get(index) else {
                    return Ok(());
                };
                let reason = if quota {
                    LimitReason::Quota
                } else {
                    LimitReason::Rate
                };
                Err(rule.reject(reason, retry_after, policy_of(rule, quota)))
            }
            SharedOutcome::Unavailable => {
                if redis.on_error == OnRedisError::FailClosed {
                    let rule = shared.first().map(|(rule, _)| *rule);
                    return match rule {
                        Some(rule) => {
                            Err(rule.reject(LimitReason::Unavailable, RETRY_AFTER_UNKNOWN, None))
                        }
                        None => Ok(()),
                    };
                }
                for (rule, key) in shared {
                    rule.check_local(key, now_unix, &self.inner.clock, tight)?;
                }
                Ok(())
            }
        }
    }

    /// Forgets idle keys of every rule now (checks also do this every
    /// [`SWEEP_INTERVAL`], off the request path).
    /// Returns the most keys any rule still tracks.
    pub fn sweep(&self) -> usize {
        let now = self.inner.clock.unix_now();
        self.inner
            .rules
            .iter()
            .map(|rule| rule.local.sweep(now))
            .max()
            .unwrap_or(0)
    }

    fn maybe_sweep(&self) {
        let inner = &*self.inner;
        let now = millis(inner.start.elapsed());
        let due = inner.next_sweep_ms.load(Ordering::Relaxed);
        if now < due
            || inner
                .next_sweep_ms
                .compare_exchange(
                    due,
                    now.saturating_add(millis(SWEEP_INTERVAL)),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let this = self.clone();
        // Sweeping a big map takes milliseconds: keep it off this request.
        tokio::task::spawn_blocking(move || this.sweep());
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
