//! Per-key request rates and token budgets. Without `[redis]` each process keeps its own
//! buckets and windows (`Local`); with it, every replica shares them in Redis, decided by
//! one server-side script per request (no read-then-write between replicas), and `on_error`
//! says what happens while Redis cannot answer: each replica's own limits (`local`, the
//! default) or 503 (`closed`).
//!
//! Request rates are token buckets (`requests_per_minute`, refilled continuously; Redis's
//! clock when shared). Token budgets are calendar windows in UTC (`tokens_per_minute`,
//! `tokens_per_day`): a request is refused once its window's spending has reached the
//! budget, and a request's tokens (prompt + completion) are spent when it ends, so
//! requests already running when the budget is reached still finish (the overshoot is at
//! most what those requests use).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use super::metrics::LimiterMetrics;
use super::ApiError;
use crate::config::{KeyConfig, RedisConfig, RedisOnError};

/// One key's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub tokens_per_day: Option<u64>,
}

impl Limits {
    pub fn of(key: &KeyConfig) -> Self {
        Self {
            requests_per_minute: key.requests_per_minute,
            tokens_per_minute: key.tokens_per_minute,
            tokens_per_day: key.tokens_per_day,
        }
    }

    fn any(&self) -> bool {
        self.requests_per_minute.is_some()
            || self.tokens_per_minute.is_some()
            || self.tokens_per_day.is_some()
    }

    fn budgets(&self) -> bool {
        self.tokens_per_minute.is_some() || self.tokens_per_day.is_some()
    }
}

/// Why a request was refused, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub retry_after: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Requests,
    TokensPerMinute,
    TokensPerDay,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Requests => "requests",
            Reason::TokensPerMinute => "tokens_per_minute",
            Reason::TokensPerDay => "tokens_per_day",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "tokens_per_minute" => Reason::TokensPerMinute,
            "tokens_per_day" => Reason::TokensPerDay,
            _ => Reason::Requests,
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

// ------------------------------------------------------------------ local (pure)

/// Token bucket: `capacity` requests, refilled at `capacity` per minute.
#[derive(Debug, Clone)]
pub struct Bucket {
    capacity: f64,
    tokens: f64,
    at: f64,
}

impl Bucket {
    pub fn full(capacity: u32, now: f64) -> Self {
        Self {
            capacity: f64::from(capacity),
            tokens: f64::from(capacity),
            at: now,
        }
    }

    /// Takes one request at `now` (seconds); `Err(seconds)` until the next is allowed.
    pub fn take(&mut self, now: f64) -> Result<(), u64> {
        let per_second = self.capacity / 60.0;
        let elapsed = (now - self.at).max(0.0);
        self.tokens = (self.tokens + elapsed * per_second).min(self.capacity);
        self.at = now.max(self.at);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - self.tokens) / per_second).ceil().max(1.0) as u64)
        }
    }
}

/// Tokens spent in the current minute and day (UTC calendar windows).
#[derive(Debug, Clone, Default)]
pub struct Windows {
    minute: (u64, u64),
    day: (u64, u64),
}

impl Windows {
    fn current(&mut self, now: f64) -> (u64, u64) {
        let (minute, day) = ((now / 60.0) as u64, (now / 86_400.0) as u64);
        if self.minute.0 != minute {
            self.minute = (minute, 0);
        }
        if self.day.0 != day {
            self.day = (day, 0);
        }
        (self.minute.1, self.day.1)
    }

    /// Whether a request may start at `now` under these budgets.
    pub fn check(&mut self, limits: &Limits, now: f64) -> Result<(), Refusal> {
        let (minute, day) = self.current(now);
        if limits.tokens_per_day.is_some_and(|b| day >= b) {
            return Err(Refusal {
                reason: Reason::TokensPerDay,
                retry_after: (86_400.0 - now.rem_euclid(86_400.0)).ceil().max(1.0) as u64,
            });
        }
        if limits.tokens_per_minute.is_some_and(|b| minute >= b) {
            return Err(Refusal {
                reason: Reason::TokensPerMinute,
                retry_after: (60.0 - now.rem_euclid(60.0)).ceil().max(1.0) as u64,
            });
        }
        Ok(())
    }

    pub fn spend(&mut self, tokens: u64, now: f64) {
        self.current(now);
        self.minute.1 += tokens;
        self.day.1 += tokens;
    }
}

#[derive(Default)]
struct LocalState {
    bucket: Option<Bucket>,
    windows: Windows,
}

/// Each process's own limits.
#[derive(Default)]
struct Local(Mutex<HashMap<String, LocalState>>);

impl Local {
    fn admit(&self, key: &str, limits: &Limits, now: f64) -> Result<(), Refusal> {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let state = all.entry(key.to_string()).or_default();
        state.windows.check(limits, now)?;
        if let Some(rpm) = limits.requests_per_minute {
            let bucket = state.bucket.get_or_insert_with(|| Bucket::full(rpm, now));
            bucket.take(now).map_err(|retry_after| Refusal {
                reason: Reason::Requests,
                retry_after,
            })?;
        }
        Ok(())
    }

    fn spend(&self, key: &str, tokens: u64, now: f64) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.entry(key.to_string())
            .or_default()
            .windows
            .spend(tokens, now);
    }
}

// ------------------------------------------------------------------ shared (Redis)

/// Budgets first (they do not consume), then the bucket (Redis's clock). Returns
/// `{1}` or `{0, retry_after_seconds, reason}`.
const ADMIT: &str = r"
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local tpd = tonumber(ARGV[3])
local now_s = tonumber(ARGV[4])
if tpd > 0 then
  local used = tonumber(redis.call('GET', KEYS[3]) or '0')
  if used >= tpd then return {0, math.max(1, math.ceil(86400 - now_s % 86400)), 'tokens_per_day'} end
end
if tpm > 0 then
  local used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used >= tpm then return {0, math.max(1, math.ceil(60 - now_s % 60)), 'tokens_per_minute'} end
end
if rpm > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local rate = rpm / 60
  local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
  local tokens = tonumber(state[1])
  local at = tonumber(state[2])
  if tokens == nil or at == nil then tokens = rpm; at = now end
  tokens = math.min(rpm, tokens + math.max(0, now - at) * rate)
  if tokens < 1 then
    return {0, math.max(1, math.ceil((1 - tokens) / rate)), 'requests'}
  end
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - 1), 'at', tostring(now))
  redis.call('EXPIRE', KEYS[1], 120)
end
return {1}
";

/// Adds a finished request's tokens to its minute and day windows.
const SPEND: &str = r"
local n = tonumber(ARGV[1])
redis.call('INCRBY', KEYS[1], n)
redis.call('EXPIRE', KEYS[1], 120)
redis.call('INCRBY', KEYS[2], n)
redis.call('EXPIRE', KEYS[2], 172800)
return 1
";

struct Shared {
    id: usize,
    client: redis::Client,
    prefix: String,
    timeout: Duration,
    on_error: RedisOnError,
    admit: redis::Script,
    spend: redis::Script,
    /// After a failure Redis is left alone for a second (unix ms until then): during an
    /// outage a request pays the time budget once a second at most, not every time.
    resting_until_ms: std::sync::atomic::AtomicU64,
}

const REST_AFTER_FAILURE_MS: u64 = 1_000;

thread_local! {
    /// One multiplexed connection per worker thread (reconnecting on its own).
    static CONNECTIONS: RefCell<HashMap<usize, redis::aio::ConnectionManager>> =
        RefCell::new(HashMap::new());
}

impl Shared {
    fn connection(&self) -> redis::RedisResult<redis::aio::ConnectionManager> {
        CONNECTIONS.with(|c| {
            if let Some(conn) = c.borrow().get(&self.id) {
                return Ok(conn.clone());
            }
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(self.timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            let conn =
                redis::aio::ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
            c.borrow_mut().insert(self.id, conn.clone());
            Ok(conn)
        })
    }

    /// Keys of one API key (a hash tag keeps them on one node of a cluster).
    fn keys(&self, key: &str, now: f64) -> [String; 3] {
        let tag = format!("{{{}:{key}}}", self.prefix);
        [
            format!("{tag}:rpm"),
            format!("{tag}:tpm:{}", (now / 60.0) as u64),
            format!("{tag}:tpd:{}", (now / 86_400.0) as u64),
        ]
    }

    async fn admit(
        &self,
        key: &str,
        limits: &Limits,
        now: f64,
    ) -> Result<Result<(), Refusal>, String> {
        let mut conn = self.connection().map_err(|e| e.to_string())?;
        let [bucket, minute, day] = self.keys(key, now);
        let mut call = self.admit.prepare_invoke();
        call.key(bucket)
            .key(minute)
            .key(day)
            .arg(limits.requests_per_minute.unwrap_or(0))
            .arg(limits.tokens_per_minute.unwrap_or(0))
            .arg(limits.tokens_per_day.unwrap_or(0))
            .arg(now);
        let answer: Vec<redis::Value> =
            match tokio::time::timeout(self.timeout, call.invoke_async(&mut conn)).await {
                Err(_) => return Err("timeout".into()),
                Ok(Err(e)) => return Err(e.to_string()),
                Ok(Ok(v)) => v,
            };
        let int = |v: Option<&redis::Value>| match v {
            Some(redis::Value::Int(i)) => Some(*i),
            _ => None,
        };
        match int(answer.first()) {
            Some(1) => Ok(Ok(())),
            Some(0) => {
                let reason = match answer.get(2) {
                    Some(redis::Value::BulkString(b)) => Reason::parse(&String::from_utf8_lossy(b)),
                    Some(redis::Value::SimpleString(s)) => Reason::parse(s),
                    _ => Reason::Requests,
                };
                Ok(Err(Refusal {
                    reason,
                    retry_after: int(answer.get(1)).unwrap_or(1).max(1) as u64,
                }))
            }
            _ => Err(format!(
                "unexpected answer from the limiter script: {answer:?}"
            )),
        }
    }

    async fn spend(&self, key: &str, tokens: u64, now: f64) -> Result<(), String> {
        let mut conn = self.connection().map_err(|e| e.to_string())?;
        let [_, minute, day] = self.keys(key, now);
        let mut call = self.spend.prepare_invoke();
        call.key(minute).key(day).arg(tokens);
        match tokio::time::timeout(self.timeout, call.invoke_async::<i64>(&mut conn)).await {
            Err(_) => Err("timeout".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(_)) => Ok(()),
        }
    }
}

// ------------------------------------------------------------------ the limiter

pub struct Limiter {
    local: Local,
    shared: Option<Shared>,
    metrics: LimiterMetrics,
}

impl Limiter {
    pub fn new(redis: Option<&RedisConfig>, metrics: LimiterMetrics) -> anyhow::Result<Self> {
        static IDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let shared = match redis {
            Some(r) => {
                let mut info: redis::ConnectionInfo = r
                    .url
                    .as_str()
                    .parse()
                    .map_err(|e| anyhow::anyhow!("[redis] url: {e}"))?;
                if let Some(var) = &r.password_env {
                    let password = std::env::var(var)
                        .map_err(|_| anyhow::anyhow!("[redis] password_env: {var} is not set"))?;
                    let settings = info.redis_settings().clone().set_password(password);
                    info = info.set_redis_settings(settings);
                }
                let tls = r.url.starts_with("rediss://");
                let client = match (&r.ca_file, tls) {
                    (Some(ca), _) => {
                        let pem = std::fs::read(ca).map_err(|e| {
                            anyhow::anyhow!("[redis] ca_file: cannot read {}: {e}", ca.display())
                        })?;
                        safegate_upstream::tls::install_crypto_provider();
                        redis::Client::build_with_tls(
                            info,
                            redis::TlsCertificates {
                                client_tls: None,
                                root_cert: Some(pem),
                            },
                        )
                    }
                    (None, tls) => {
                        if tls {
                            safegate_upstream::tls::install_crypto_provider();
                        }
                        redis::Client::open(info)
                    }
                }
                .map_err(|e| anyhow::anyhow!("[redis] url: {e}"))?;
                Some(Shared {
                    id: IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    client,
                    prefix: r.key_prefix.clone(),
                    timeout: Duration::from_millis(r.timeout_ms),
                    on_error: r.on_error,
                    admit: redis::Script::new(ADMIT),
                    spend: redis::Script::new(SPEND),
                    resting_until_ms: std::sync::atomic::AtomicU64::new(0),
                })
            }
            None => None,
        };
        Ok(Self {
            local: Local::default(),
            shared,
            metrics,
        })
    }

    /// Whether a request of `key` may start now; 429 with Retry-After if not.
    pub async fn admit(&self, key: &str, limits: &Limits) -> Result<(), ApiError> {
        if !limits.any() {
            return Ok(());
        }
        let now = unix_now();
        let decided = match &self.shared {
            None => self.local.admit(key, limits, now),
            Some(shared) => {
                use std::sync::atomic::Ordering;
                let now_ms = (now * 1e3) as u64;
                let answer = if now_ms < shared.resting_until_ms.load(Ordering::Relaxed) {
                    Err("resting after a failure".to_string())
                } else {
                    let t = Instant::now();
                    let answer = shared.admit(key, limits, now).await;
                    self.metrics.redis_seconds(t.elapsed());
                    if let Err(why) = &answer {
                        self.metrics.redis_error(why);
                        shared
                            .resting_until_ms
                            .store(now_ms + REST_AFTER_FAILURE_MS, Ordering::Relaxed);
                    }
                    answer
                };
                match answer {
                    Ok(decided) => decided,
                    Err(why) => match shared.on_error {
                        RedisOnError::Closed => {
                            tracing::warn!(error = %why, "the shared rate limiter cannot be reached; refusing (on_error = closed)");
                            return Err(ApiError {
                                code: Some("rate_limiter_unavailable".into()),
                                ..ApiError::unavailable(
                                    "the shared rate limiter cannot be reached; retry shortly",
                                )
                            });
                        }
                        RedisOnError::Local => {
                            tracing::warn!(error = %why, "the shared rate limiter cannot be reached; this replica's own limits apply");
                            self.metrics.local_fallback();
                            self.local.admit(key, limits, now)
                        }
                    },
                }
            }
        };
        decided.map_err(|r| {
            self.metrics.rejected(r.reason.as_str());
            let what = match r.reason {
                Reason::Requests => "rate limit",
                Reason::TokensPerMinute => "token budget per minute",
                Reason::TokensPerDay => "token budget per day",
            };
            ApiError {
                retry_after: Some(r.retry_after),
                ..ApiError::rate_limited(format!(
                    "{what} of API key `{key}` reached; retry in {} s",
                    r.retry_after
                ))
            }
        })
    }

    /// A finished request's tokens, spent in its key's windows (without delaying anyone).
    pub fn spend(self: &std::sync::Arc<Self>, key: &str, limits: &Limits, tokens: u64) {
        if !limits.budgets() || tokens == 0 {
            return;
        }
        let now = unix_now();
        // Kept locally too: the budgets a replica falls back on while Redis is away.
        self.local.spend(key, tokens, now);
        if self.shared.is_none() {
            return;
        }
        let this = self.clone();
        let key = key.to_string();
        actix_web::rt::spawn(async move {
            if let Some(shared) = &this.shared {
                if let Err(why) = shared.spend(&key, tokens, now).await {
                    this.metrics.redis_error(&why);
                    tracing::warn!(error = %why, key = %key, tokens, "tokens could not be added to the shared budget");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_its_rate_and_says_when_to_retry() {
        let mut b = Bucket::full(2, 1000.0);
        assert!(b.take(1000.0).is_ok());
        assert!(b.take(1000.0).is_ok());
        assert_eq!(b.take(1000.0), Err(30), "2 per minute: one more in 30 s");
        assert!(b.take(1031.0).is_ok());
        assert!(b.take(1031.0).is_err());
        // A clock that steps back refills nothing.
        assert!(b.take(900.0).is_err());
    }

    #[test]
    fn budgets_refuse_once_spent_until_the_window_turns() {
        let limits = Limits {
            tokens_per_minute: Some(100),
            tokens_per_day: Some(250),
            ..Default::default()
        };
        let mut w = Windows::default();
        let t = 86_400.0 * 20_000.0 + 30.0; // 30 s into a minute and a day
        assert!(w.check(&limits, t).is_ok());
        w.spend(99, t);
        assert!(w.check(&limits, t + 1.0).is_ok(), "under the budget");
        w.spend(5, t + 1.0); // a request running past the budget still counts
        assert_eq!(
            w.check(&limits, t + 2.0),
            Err(Refusal {
                reason: Reason::TokensPerMinute,
                retry_after: 28
            })
        );
        // The next minute is open again; the day is not endless.
        assert!(w.check(&limits, t + 31.0).is_ok());
        w.spend(150, t + 31.0);
        let refused = w.check(&limits, t + 121.0).unwrap_err();
        assert_eq!(refused.reason, Reason::TokensPerDay);
        assert_eq!(refused.retry_after, 86_400 - 151);
        assert!(w.check(&limits, t + 86_400.0).is_ok(), "a new day");
    }

    #[test]
    fn local_limits_are_per_key() {
        let local = Local::default();
        let limits = Limits {
            requests_per_minute: Some(1),
            ..Default::default()
        };
        assert!(local.admit("a", &limits, 0.0).is_ok());
        assert_eq!(
            local.admit("a", &limits, 0.0).unwrap_err().reason,
            Reason::Requests
        );
        assert!(local.admit("b", &limits, 0.0).is_ok());
    }
}
