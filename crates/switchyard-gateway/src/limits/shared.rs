//! Shared limits in Redis: one Lua script per request checks every shared
//! rule that matches it, atomically.
//!
//! - **Rate** is GCRA: the key holds the bucket's theoretical arrival time
//!   (microseconds), expiring when the bucket is whole again.
//! - **Quota** is a counter per calendar window (`<key>:<window index>`),
//!   expiring one second after the window ends.
//! - The script reads Redis's own clock (`TIME`), so gateways whose clocks
//!   disagree still share one timeline.
//! - All or nothing: the script evaluates every check first and writes only
//!   if all pass, so a call refused by one rule spends nothing from the
//!   others.
//! - The script is sent with `EVALSHA`; on `NOSCRIPT` (a restarted or
//!   flushed Redis) it is loaded and retried (the `redis` crate's
//!   `Script::invoke_async`).
//!
//! Keys are `<key_prefix><rule>:<r|q>:<bucket>` with the bucket `g`
//! (global), `ip:<addr>` or `n:<name>`. They are not hash-tagged: a script
//! touching several rules needs a single-node Redis (or one slot).
//!
//! Failures: a check that doesn't answer within `timeout` or fails counts in
//! `switchyard_limits_redis_errors_total` and is logged at most once a
//! minute; for the next [`RETRY_INTERVAL`] calls don't try Redis at all (an
//! outage then costs nothing per request), and Redis is tried again after.
//! The connection (a `ConnectionManager`) reconnects on its own.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::{sync::OnceCell, time::Instant};

use super::config::{OnRedisError, RedisConfig};
use super::local::Standing;

/// After a failure, how long checks skip Redis before trying it again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// How often a Redis failure is logged at most.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Time allowed to open a connection (in the background of the checks, each
/// bounded by `timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

const SCRIPT: &str = r#"
-- ARGV holds three values per check: kind, a, b.
--   kind "r" (GCRA): a = emission interval (us), b = tolerance (us)
--   kind "q" (quota): a = limit, b = window (s)
-- Returns {0, check, retry_us} when check (1-based) refuses, otherwise
-- {1, remaining_1, reset_us_1, remaining_2, reset_us_2, ...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local plan = {}
for i = 1, #KEYS do
  local kind = ARGV[3 * i - 2]
  local a = tonumber(ARGV[3 * i - 1])
  local b = tonumber(ARGV[3 * i])
  if kind == 'r' then
    local tat = tonumber(redis.call('GET', KEYS[i])) or now
    if tat < now then tat = now end
    if tat - now > b then
      return {0, i, tat - now - b}
    end
    local new_tat = tat + a
    plan[i] = {new_tat, math.floor((now + b - new_tat) / a) + 1, new_tat - now}
  else
    local index = math.floor(now / (b * 1000000))
    local key = KEYS[i] .. ':' .. string.format('%d', index)
    local count = tonumber(redis.call('GET', key)) or 0
    local reset = (index + 1) * b * 1000000 - now
    if count >= a then
      return {0, i, reset}
    end
    plan[i] = {key, a - count - 1, reset, count}
  end
end
local out = {1}
for i = 1, #KEYS do
  local p = plan[i]
  if ARGV[3 * i - 2] == 'r' then
    redis.call('SET', KEYS[i], string.format('%d', p[1]), 'PX', math.ceil(p[3] / 1000) + 1)
  else
    redis.call('INCR', p[1])
    if p[4] == 0 then
      redis.call('EXPIRE', p[1], tonumber(ARGV[3 * i]) + 1)
    end
  end
  out[#out + 1] = p[2]
  out[#out + 1] = p[3]
end
return out
"#;

/// One check sent to Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SharedCheck {
    /// GCRA: emission interval and tolerance, in microseconds.
    Rate {
        /// The full Redis key.
        key: String,
        /// `per / requests`.
        interval_us: u64,
        /// `(burst - 1) * interval`.
        tolerance_us: u64,
    },
    /// A quota per calendar window.
    Quota {
        /// The Redis key, without the window index.
        key: String,
        /// Requests per window.
        limit: u64,
        /// The window in seconds.
        window_secs: u64,
    },
}

/// What Redis answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SharedOutcome {
    /// Every check passed; one standing per check, in order.
    Admitted(Vec<Standing>),
    /// The check at this index (0-based) refused; retry after this long.
    Rejected(usize, Duration),
    /// Redis failed or was skipped after a recent failure.
    Unavailable,
}

/// The Redis side of [`CallLimits`](super::CallLimits).
pub(crate) struct RedisLimits {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    script: redis::Script,
    pub(crate) key_prefix: String,
    timeout: Duration,
    pub(crate) on_error: OnRedisError,
    pub(crate) local_fallback: bool,
    pub(crate) expected_instances: u32,
    start: Instant,
    /// Milliseconds since `start` before which Redis is not tried.
    skip_until_ms: AtomicU64,
    /// Milliseconds since `start` of the last failure log (`u64::MAX`: none yet).
    last_log_ms: AtomicU64,
    errors: metrics::Counter,
    duration: metrics::Histogram,
}

impl std::fmt::Debug for RedisLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimits")
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("on_error", &self.on_error)
            .field("local_fallback", &self.local_fallback)
            .finish_non_exhaustive()
    }
}

impl RedisLimits {
    pub(crate) fn new(config: &RedisConfig) -> Result<Self, String> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| format!("limits.redis.url: {e}"))?;
        Ok(Self {
            client,
            conn: OnceCell::new(),
            script: redis::Script::new(SCRIPT),
            key_prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            on_error: config.on_error,
            local_fallback: config.local_fallback,
            expected_instances: config.expected_instances,
            start: Instant::now(),
            skip_until_ms: AtomicU64::new(0),
            last_log_ms: AtomicU64::new(u64::MAX),
            errors: metrics::counter!("switchyard_limits_redis_errors_total"),
            duration: metrics::histogram!("switchyard_limits_redis_duration_seconds"),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn connection(&self) -> Result<ConnectionManager, redis::RedisError> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                // Lazy: connects on first use, in the background of the
                // checks; each check stays bounded by `timeout`.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(None);
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .await?;
        Ok(conn.clone())
    }

    /// Runs every check in one script call.
    pub(crate) async fn check(&self, checks: &[SharedCheck]) -> SharedOutcome {
        if self.now_ms() < self.skip_until_ms.load(Ordering::Relaxed) {
            return SharedOutcome::Unavailable;
        }
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.invoke(checks)).await;
        self.duration.record(started.elapsed().as_secs_f64());
        let error = match result {
            Ok(Ok(values)) => match parse_reply(&values, checks.len()) {
                Some(outcome) => return outcome,
                None => format!("unexpected script reply {values:?}"),
            },
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.timeout),
        };
        self.failed(&error);
        SharedOutcome::Unavailable
    }

    async fn invoke(&self, checks: &[SharedCheck]) -> Result<Vec<i64>, redis::RedisError> {
        let mut conn = self.connection().await?;
        let mut invocation = self.script.prepare_invoke();
        for check in checks {
            match check {
                SharedCheck::Rate {
                    key,
                    interval_us,
                    tolerance_us,
                } => {
                    invocation
                        .key(key.as_str())
                        .arg("r")
                        .arg(*interval_us)
                        .arg(*tolerance_us);
                }
                SharedCheck::Quota {
                    key,
                    limit,
                    window_secs,
                } => {
                    invocation
                        .key(key.as_str())
                        .arg("q")
                        .arg(*limit)
                        .arg(*window_secs);
                }
            }
        }
        invocation.invoke_async(&mut conn).await
    }

    fn failed(&self, error: &str) {
        self.errors.increment(1);
        let now = self.now_ms();
        let retry_ms = u64::try_from(RETRY_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        self.skip_until_ms
            .store(now.saturating_add(retry_ms), Ordering::Relaxed);
        let last = self.last_log_ms.load(Ordering::Relaxed);
        let log_ms = u64::try_from(LOG_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        let due = last == u64::MAX || now.saturating_sub(last) >= log_ms;
        if due
            && self
                .last_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let mode = match self.on_error {
                OnRedisError::FailOpen => "admitting calls (fail_open)",
                OnRedisError::FailClosed => "refusing calls (fail_closed)",
            };
            tracing::warn!(
                %error,
                local_fallback = self.local_fallback,
                "shared call limits: redis unavailable, {mode}; logged at most once a minute, \
                 see switchyard_limits_redis_errors_total"
            );
        }
    }
}

fn parse_reply(values: &[i64], checks: usize) -> Option<SharedOutcome> {
    let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    match values {
        [0, index, retry] => {
            let index = usize::try_from(*index).ok()?.checked_sub(1)?;
            (index < checks).then(|| SharedOutcome::Rejected(index, us(*retry)))
        }
        [1, rest @ ..] if rest.len() == checks * 2 => Some(SharedOutcome::Admitted(
            rest.chunks_exact(2)
                .map(|pair| Standing {
                    remaining: u64::try_from(pair[0]).unwrap_or(0),
                    reset: us(pair[1]),
                })
                .collect(),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
