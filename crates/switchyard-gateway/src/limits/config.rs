//! The `[limits]` section: trusted proxies, the optional Redis backend, and
//! the rules.

use std::{collections::HashSet, time::Duration};

use serde::{Deserialize, Serialize};

use super::client_ip::TrustedProxies;

/// Default for [`RedisConfig::key_prefix`].
pub const DEFAULT_KEY_PREFIX: &str = "switchyard:limits:";
/// Default for [`RedisConfig::timeout`].
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);
/// Default for [`RedisConfig::expected_instances`].
pub const DEFAULT_EXPECTED_INSTANCES: u32 = 1;
/// Default for [`LimitRule::max_keys`].
pub const DEFAULT_MAX_KEYS: usize = 100_000;
/// The longest rule name accepted (names go into headers, metric labels and
/// Redis keys).
pub const MAX_RULE_NAME: usize = 64;

/// The `[limits]` section. Default: no trusted proxies, no Redis, no rules
/// (nothing is limited).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Proxies (addresses or CIDR blocks, e.g. `"10.0.0.0/8"`, `"::1"`) whose
    /// `X-Forwarded-For` is believed. Default: none, and `X-Forwarded-For`
    /// is ignored entirely: the client IP is the connection's peer.
    pub trusted_proxies: Vec<String>,
    /// Shares `shared = true` rules between instances through Redis.
    /// Default: unset (every rule is enforced per instance).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisConfig>,
    /// The rules; a request is checked against every rule that matches it.
    /// Default: none.
    pub rules: Vec<LimitRule>,
}

/// What happens to calls under a shared rule while Redis is unreachable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisError {
    /// Admit the call (subject to the local fallback limiter, if enabled).
    #[default]
    FailOpen,
    /// Refuse the call with 503 `limits-unavailable`.
    FailClosed,
}

/// `[limits.redis]`: where shared limits live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// The Redis URL, e.g. `"redis://127.0.0.1:6379"` (or `rediss://`,
    /// `redis://:password@host:port/db`). Required.
    pub url: String,
    /// Prefix of every key written. Default `"switchyard:limits:"`; give
    /// each gateway fleet its own when they share a Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// The longest a check waits for Redis before it counts as an error.
    /// Default `"50ms"`.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// `"fail_open"` admits calls while Redis is unreachable; `"fail_closed"`
    /// refuses them with 503. Default `"fail_open"`.
    #[serde(default)]
    pub on_error: OnRedisError,
    /// While Redis is unreachable, enforce shared rules locally with their
    /// limits divided by `expected_instances`. Default `true`.
    #[serde(default = "default_true")]
    pub local_fallback: bool,
    /// How many gateway instances share the limits; the local fallback gives
    /// each instance this share of the limit. Default `1`.
    #[serde(default = "default_expected_instances")]
    pub expected_instances: u32,
}

fn default_key_prefix() -> String {
    DEFAULT_KEY_PREFIX.to_owned()
}

fn default_timeout() -> Duration {
    DEFAULT_REDIS_TIMEOUT
}

fn default_true() -> bool {
    true
}

fn default_expected_instances() -> u32 {
    DEFAULT_EXPECTED_INSTANCES
}

fn default_max_keys() -> usize {
    DEFAULT_MAX_KEYS
}

/// What one rule keeps a separate bucket for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKey {
    /// The authenticated caller; anonymous calls are counted per client IP.
    Identity,
    /// The client IP (see `trusted_proxies`).
    ClientIp,
    /// The matched route.
    Route,
    /// The target service.
    Service,
    /// One bucket for every call the rule matches.
    Global,
}

/// A request rate (GCRA): `requests` per `per`, bursts up to `burst`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    /// Requests allowed per `per`. Required, at least 1.
    pub requests: u32,
    /// The period. Default `"1s"`.
    #[serde(default = "default_per", with = "humantime_serde")]
    pub per: Duration,
    /// Requests allowed at once after a quiet period. Default: `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

fn default_per() -> Duration {
    Duration::from_secs(1)
}

impl RateSpec {
    /// The bucket size: `burst`, or `requests` when unset.
    pub fn effective_burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests)
    }
}

/// A calendar window, aligned to UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaWindow {
    /// From second 0 of each minute.
    Minute,
    /// From the start of each hour.
    Hour,
    /// From 00:00 UTC.
    Day,
}

impl QuotaWindow {
    /// The window's length in seconds.
    pub fn secs(self) -> u64 {
        match self {
            QuotaWindow::Minute => 60,
            QuotaWindow::Hour => 3600,
            QuotaWindow::Day => 86_400,
        }
    }

    /// The word used in config and policy names.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaWindow::Minute => "minute",
            QuotaWindow::Hour => "hour",
            QuotaWindow::Day => "day",
        }
    }
}

/// A quota: at most `requests` per calendar `window`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    /// Requests allowed per window. Required, at least 1.
    pub requests: u64,
    /// `"minute"`, `"hour"` or `"day"` (UTC). Required.
    pub window: QuotaWindow,
}

/// One `[[limits.rules]]` entry. At least one of `rate`, `concurrency`,
/// `quota` must be set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitRule {
    /// The rule's name: unique; letters, digits, `_`, `.`, `-`. It names the
    /// policy in `RateLimit-Policy`, the metric label and the Redis key.
    /// Required.
    pub name: String,
    /// What each bucket is for: `"identity"`, `"client_ip"`, `"route"`,
    /// `"service"` or `"global"`. Required.
    pub key: LimitKey,
    /// Route names the rule applies to. Default: empty, meaning every route.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Service names the rule applies to. Default: empty, meaning every service.
    #[serde(default)]
    pub services: Vec<String>,
    /// Request rate per key (GCRA). Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateSpec>,
    /// Most calls in flight at once per key (always per instance). Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Requests per calendar window per key. Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaSpec>,
    /// Enforce `rate` and `quota` through Redis across instances (needs
    /// `[limits.redis]`). Default `false`.
    #[serde(default)]
    pub shared: bool,
    /// Most keys tracked by this rule in memory before new keys are folded
    /// into shared overflow buckets. Default `100000`.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

impl LimitsConfig {
    /// Checks that the section can work. The message starts with the key
    /// (e.g. `limits.rules[1].rate.requests: ...`) and says how to fix it.
    pub fn validate(&self) -> Result<(), String> {
        TrustedProxies::parse(&self.trusted_proxies)?;
        if let Some(redis) = &self.redis {
            redis.validate()?;
        }
        let mut names = HashSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("limits.rules[{i}]");
            rule.validate(&at)?;
            if !names.insert(rule.name.as_str()) {
                return Err(format!(
                    "{at}.name: \"{}\" is used by an earlier rule; give each rule its own name",
                    rule.name
                ));
            }
            if rule.shared && self.redis.is_none() {
                return Err(format!(
                    "{at}.shared: rule \"{}\" is shared but there is no [limits.redis]; \
                     add [limits.redis] with a url, or set shared = false",
                    rule.name
                ));
            }
        }
        Ok(())
    }
}

impl RedisConfig {
    fn validate(&self) -> Result<(), String> {
        if let Err(e) = redis::Client::open(self.url.as_str()) {
            return Err(format!(
                "limits.redis.url: \"{}\" is not a Redis URL ({e}); use e.g. \"redis://127.0.0.1:6379\"",
                self.url
            ));
        }
        if self.timeout.is_zero() {
            return Err(
                "limits.redis.timeout: must be greater than 0; set e.g. \"50ms\"".to_owned(),
            );
        }
        if self.expected_instances == 0 {
            return Err("limits.redis.expected_instances: must be at least 1; \
                 set how many gateways share the limits"
                .to_owned());
        }
        Ok(())
    }
}

impl LimitRule {
    fn validate(&self, at: &str) -> Result<(), String> {
        let name = &self.name;
        let name_ok = !name.is_empty()
            && name.len() <= MAX_RULE_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !name_ok {
            return Err(format!(
                "{at}.name: \"{name}\" is not a valid rule name; use 1 to {MAX_RULE_NAME} \
                 letters, digits, '_', '.' or '-'"
            ));
        }
        if self.rate.is_none() && self.concurrency.is_none() && self.quota.is_none() {
            return Err(format!(
                "{at}: rule \"{name}\" limits nothing; set rate, concurrency or quota"
            ));
        }
        if let Some(rate) = &self.rate {
            if rate.requests == 0 {
                return Err(format!(
                    "{at}.rate.requests: must be at least 1; set the requests allowed per period"
                ));
            }
            if rate.per.is_zero() {
                return Err(format!(
                    "{at}.rate.per: must be greater than 0; set a period such as \"1s\""
                ));
            }
            if rate.burst == Some(0) {
                return Err(format!(
                    "{at}.rate.burst: must be at least 1; remove it to use requests"
                ));
            }
            // The same checks the local limiter makes (nanosecond interval,
            // bucket under 100 years), named with this rule's keys.
            super::local::rate_config(rate, 1).validate().map_err(|e| {
                let e = e.replacen("rate_limit.rate", "rate.requests", 1).replacen(
                    "rate_limit.",
                    "rate.",
                    1,
                );
                format!("{at}.{e}")
            })?;
        }
        if self.concurrency == Some(0) {
            return Err(format!(
                "{at}.concurrency: must be at least 1; remove it for no concurrency limit"
            ));
        }
        if let Some(quota) = &self.quota
            && quota.requests == 0
        {
            return Err(format!(
                "{at}.quota.requests: must be at least 1; set the requests allowed per window"
            ));
        }
        if self.shared && self.rate.is_none() && self.quota.is_none() {
            return Err(format!(
                "{at}.shared: concurrency is always per instance, and rule \"{name}\" has no \
                 rate or quota to share; set shared = false"
            ));
        }
        if self.max_keys == 0 {
            return Err(format!(
                "{at}.max_keys: must be at least 1; the default is {DEFAULT_MAX_KEYS}"
            ));
        }
        Ok(())
    }
}
