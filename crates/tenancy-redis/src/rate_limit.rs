//! Per-tenant rate limits: a sliding window shared by every instance through Redis
//! ([`RedisRateLimiter`]), or a limiter kept in the process ([`LocalRateLimiter`]).
//!
//! A tenant's limit (requests per window) comes from, in order: its own metadata key
//! [`METADATA_LIMIT_KEY`] (a positive integer), the limit configured for its tier, the default.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter as Governor};
use redis::aio::ConnectionManager;
use tenancy_core::rate_limit::{RateLimitDecision, RateLimiter, RateLimiterUnavailable};
use tenancy_core::{TenancyConfig, Tenant, TenantIdentifier};

use crate::outage::Outage;
use crate::prefix::KeyPrefix;

/// The metadata key holding a tenant's own limit (requests per window), which overrides its
/// tier's limit: `{"rate_limit_per_minute": 1000}`.
pub const METADATA_LIMIT_KEY: &str = "rate_limit_per_minute";

/// How many requests a tenant may make per window.
///
/// ```
/// use std::time::Duration;
/// use serde_json::json;
/// use tenancy_core::{NewTenant, TenantIdentifier};
/// use tenancy_redis::LimitPolicy;
///
/// let policy = LimitPolicy::new(100, Duration::from_secs(60)).with_tier("premium", 1000);
/// let mut tenant = NewTenant::new(TenantIdentifier::parse("acme").unwrap(), "Acme").into_tenant();
/// assert_eq!(policy.limit_for(&tenant), 100);
/// tenant.tier = "premium".into();
/// assert_eq!(policy.limit_for(&tenant), 1000);
/// tenant.metadata.insert("rate_limit_per_minute".into(), json!(5));
/// assert_eq!(policy.limit_for(&tenant), 5);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitPolicy {
    default_limit: NonZeroU32,
    window: Duration,
    tiers: HashMap<String, NonZeroU32>,
}

impl LimitPolicy {
    /// `default_limit` requests per `window` for every tenant (a limit of 0 counts as 1, a
    /// window shorter than 1 ms as 1 ms).
    pub fn new(default_limit: u32, window: Duration) -> Self {
        Self {
            default_limit: NonZeroU32::new(default_limit).unwrap_or(NonZeroU32::MIN),
            window: window.max(Duration::from_millis(1)),
            tiers: HashMap::new(),
        }
    }

    /// The configured default limit and window (`TENANCY_RATE_LIMIT_PER_MINUTE`,
    /// `TENANCY_RATE_LIMIT_WINDOW_SECONDS`).
    pub fn from_config(config: &TenancyConfig) -> Self {
        Self::new(config.rate_limit_per_minute, config.rate_limit_window())
    }

    /// Sets the limit of tenants in `tier`.
    pub fn with_tier(mut self, tier: impl Into<String>, limit: u32) -> Self {
        self.tiers.insert(
            tier.into(),
            NonZeroU32::new(limit).unwrap_or(NonZeroU32::MIN),
        );
        self
    }

    /// The window the limits count in.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The limit of `tenant`: its metadata override, else its tier's, else the default.
    /// A metadata value that is not a positive integer fitting in `u32` is ignored.
    pub fn limit_for(&self, tenant: &Tenant) -> u32 {
        tenant
            .metadata
            .get(METADATA_LIMIT_KEY)
            .and_then(serde_json::Value::as_u64)
            .and_then(|limit| u32::try_from(limit).ok())
            .and_then(NonZeroU32::new)
            .or_else(|| self.tiers.get(&tenant.tier).copied())
            .unwrap_or(self.default_limit)
            .get()
    }
}

/// One keyed GCRA limiter per distinct limit value.
type Keyed = Governor<
    TenantIdentifier,
    DashMapStateStore<TenantIdentifier>,
    DefaultClock,
    StateInformationMiddleware,
>;

/// How many checks pass between two sweeps of idle tenants' state.
const SWEEP_EVERY: u64 = 4096;

/// A per-tenant limiter kept in this process (GCRA from `governor`): exact for one instance,
/// but each instance counts on its own. Used alone when no Redis is configured, and as the
/// fallback of a fail-open [`RedisRateLimiter`].
///
/// A tenant may burst its whole limit at once; then one request frees up every
/// `window / limit`. Memory stays bounded: every 4096 checks, the state of tenants that are
/// back to a full allowance is dropped (`retain_recent` + `shrink_to_fit`), so only tenants
/// seen within the last window are kept.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use tenancy_core::rate_limit::RateLimiter;
/// use tenancy_core::{NewTenant, TenantIdentifier};
/// use tenancy_redis::{LimitPolicy, LocalRateLimiter};
///
/// let limiter = LocalRateLimiter::new(LimitPolicy::new(2, Duration::from_secs(60)));
/// let tenant = NewTenant::new(TenantIdentifier::parse("acme").unwrap(), "Acme").into_tenant();
/// assert!(limiter.check(&tenant).await.unwrap().allowed);
/// assert!(limiter.check(&tenant).await.unwrap().allowed);
/// assert!(!limiter.check(&tenant).await.unwrap().allowed);
/// # });
/// ```
pub struct LocalRateLimiter {
    policy: LimitPolicy,
    limiters: RwLock<HashMap<NonZeroU32, Arc<Keyed>>>,
    clock: DefaultClock,
    checks: AtomicU64,
}

impl std::fmt::Debug for LocalRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRateLimiter")
            .field("policy", &self.policy)
            .field("tracked_tenants", &self.tracked_tenants())
            .finish_non_exhaustive()
    }
}

impl LocalRateLimiter {
    /// A limiter enforcing `policy`.
    pub fn new(policy: LimitPolicy) -> Self {
        Self {
            policy,
            limiters: RwLock::new(HashMap::new()),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        }
    }

    /// The limits enforced.
    pub fn policy(&self) -> &LimitPolicy {
        &self.policy
    }

    /// How many tenants have state in the limiter now.
    pub fn tracked_tenants(&self) -> usize {
        self.read_limiters().values().map(|l| l.len()).sum()
    }

    /// Drops the state of tenants back to a full allowance (done automatically every 4096
    /// checks).
    pub fn sweep(&self) {
        for limiter in self.read_limiters().values() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    fn read_limiters(&self) -> std::sync::RwLockReadGuard<'_, HashMap<NonZeroU32, Arc<Keyed>>> {
        self.limiters
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn limiter(&self, limit: NonZeroU32) -> Arc<Keyed> {
        if let Some(limiter) = self.read_limiters().get(&limit) {
            return limiter.clone();
        }
        let mut limiters = self
            .limiters
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        limiters
            .entry(limit)
            .or_insert_with(|| {
                let period = (self.policy.window / limit.get()).max(Duration::from_nanos(1));
                let quota = Quota::with_period(period)
                    .expect("a period of at least 1 ns")
                    .allow_burst(limit);
                Arc::new(Governor::dashmap(quota).with_middleware())
            })
            .clone()
    }

    /// Counts one request of `tenant` and decides (never fails).
    pub fn decide(&self, tenant: &Tenant) -> RateLimitDecision {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep();
        }
        let limit = NonZeroU32::new(self.policy.limit_for(tenant)).unwrap_or(NonZeroU32::MIN);
        let period = self.policy.window / limit.get();
        match self.limiter(limit).check_key(&tenant.identifier) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                RateLimitDecision {
                    allowed: true,
                    limit: u64::from(limit.get()),
                    remaining: u64::from(remaining),
                    reset_after: period * (limit.get() - remaining.min(limit.get())),
                }
            }
            Err(not_until) => RateLimitDecision {
                allowed: false,
                limit: u64::from(limit.get()),
                remaining: 0,
                reset_after: not_until.wait_time_from(self.clock.now()),
            },
        }
    }
}

#[async_trait]
impl RateLimiter for LocalRateLimiter {
    async fn check(&self, tenant: &Tenant) -> Result<RateLimitDecision, RateLimiterUnavailable> {
        Ok(self.decide(tenant))
    }
}

/// What a [`RedisRateLimiter`] does while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Decide with an in-process limiter (each instance then counts on its own).
    Open,
    /// Refuse: the check returns [`RateLimiterUnavailable`] and the request gets 503.
    Closed,
}

impl FailurePolicy {
    /// `TENANCY_RATE_LIMIT_FAIL_OPEN`.
    pub fn from_config(config: &TenancyConfig) -> Self {
        if config.rate_limit_fail_open {
            Self::Open
        } else {
            Self::Closed
        }
    }
}

/// The sliding window, atomically: drop entries older than the window, count, add this request
/// if under the limit, refresh the key's expiry. Time is Redis's own (`TIME`), so the clocks of
/// the application instances do not matter. Scores are microseconds.
///
/// KEYS[1] the tenant's window; ARGV: limit, window in µs, unique member suffix.
/// Returns {allowed (0/1), remaining, µs until the oldest entry leaves the window}.
const SLIDING_WINDOW: &str = r"
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.0f', now - window))
local count = redis.call('ZCARD', key)
local allowed = 0
if count < limit then
  redis.call('ZADD', key, string.format('%.0f', now), time[1] .. '.' .. time[2] .. '-' .. ARGV[3])
  count = count + 1
  allowed = 1
end
redis.call('PEXPIRE', key, math.ceil(window / 1000))
local reset = window
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
if oldest[2] then
  reset = tonumber(oldest[2]) + window - now
end
local remaining = limit - count
if remaining < 0 then remaining = 0 end
return {allowed, remaining, reset}
";

/// A per-tenant sliding-window limiter shared by every instance through Redis: one Lua script
/// per check (one round trip), exact across instances.
///
/// Keys: `<prefix>ratelimit:<identifier>`, a sorted set of the requests in the current window,
/// expiring one window after the last request.
///
/// While Redis is down, [`FailurePolicy::Open`] decides with a [`LocalRateLimiter`] and
/// [`FailurePolicy::Closed`] returns [`RateLimiterUnavailable`]; both are counted
/// ([`Self::redis_failures`]) and logged once per outage. The connection manager reconnects by
/// itself, so checks use Redis again as soon as it is back.
///
/// ```no_run
/// # async fn run() -> redis::RedisResult<()> {
/// use std::time::Duration;
/// use tenancy_redis::{FailurePolicy, KeyPrefix, LimitPolicy, RedisRateLimiter};
///
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let limiter = RedisRateLimiter::new(
///     tenancy_redis::connect(&client).await?,
///     KeyPrefix::default(),
///     LimitPolicy::new(100, Duration::from_secs(60)).with_tier("premium", 1000),
///     FailurePolicy::Open,
/// );
/// # let _ = limiter; Ok(()) }
/// ```
pub struct RedisRateLimiter {
    redis: ConnectionManager,
    prefix: KeyPrefix,
    script: redis::Script,
    failure: FailurePolicy,
    fallback: LocalRateLimiter,
    member_seed: u64,
    sequence: AtomicU64,
    outage: Outage,
}

impl std::fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("prefix", &self.prefix)
            .field("policy", self.fallback.policy())
            .field("failure", &self.failure)
            .field("redis_failures", &self.outage.failures())
            .finish_non_exhaustive()
    }
}

impl RedisRateLimiter {
    /// A limiter enforcing `policy` through `redis`, under keys starting with `prefix`.
    pub fn new(
        redis: ConnectionManager,
        prefix: KeyPrefix,
        policy: LimitPolicy,
        failure: FailurePolicy,
    ) -> Self {
        Self {
            redis,
            prefix,
            script: redis::Script::new(SLIDING_WINDOW),
            failure,
            fallback: LocalRateLimiter::new(policy),
            member_seed: RandomState::new().hash_one(std::process::id()),
            sequence: AtomicU64::new(0),
            outage: Outage::new("rate limiter"),
        }
    }

    /// The limits enforced.
    pub fn policy(&self) -> &LimitPolicy {
        self.fallback.policy()
    }

    /// How many checks could not reach Redis (and were decided by the fallback, or refused).
    pub fn redis_failures(&self) -> u64 {
        self.outage.failures()
    }

    async fn check_in_redis(
        &self,
        tenant: &Tenant,
        limit: u32,
    ) -> redis::RedisResult<RateLimitDecision> {
        let window = self.policy().window();
        let member = format!(
            "{:x}-{:x}",
            self.member_seed,
            self.sequence.fetch_add(1, Ordering::Relaxed)
        );
        let (allowed, remaining, reset_micros): (i64, i64, i64) = self
            .script
            .key(self.prefix.key("ratelimit:", tenant.identifier.as_str()))
            .arg(limit)
            .arg(u64::try_from(window.as_micros()).unwrap_or(u64::MAX))
            .arg(member)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(RateLimitDecision {
            allowed: allowed == 1,
            limit: u64::from(limit),
            remaining: u64::try_from(remaining).unwrap_or(0),
            reset_after: Duration::from_micros(u64::try_from(reset_micros).unwrap_or(0)),
        })
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(&self, tenant: &Tenant) -> Result<RateLimitDecision, RateLimiterUnavailable> {
        let limit = self.policy().limit_for(tenant);
        match self.check_in_redis(tenant, limit).await {
            Ok(decision) => {
                self.outage.succeeded();
                Ok(decision)
            }
            Err(error) => {
                self.outage.failed(&error);
                match self.failure {
                    FailurePolicy::Open => Ok(self.fallback.decide(tenant)),
                    FailurePolicy::Closed => Err(RateLimiterUnavailable(Box::new(error))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenancy_core::NewTenant;

    fn tenant(identifier: &str) -> Tenant {
        NewTenant::new(TenantIdentifier::parse(identifier).unwrap(), "T").into_tenant()
    }

    #[test]
    fn idle_tenants_are_swept_automatically() {
        let limiter = LocalRateLimiter::new(LimitPolicy::new(10, Duration::from_millis(1)));
        for i in 0..(SWEEP_EVERY - 1) {
            limiter.decide(&tenant(&format!("t-{i}")));
        }
        assert_eq!(limiter.tracked_tenants(), (SWEEP_EVERY - 1) as usize);
        std::thread::sleep(Duration::from_millis(5));
        limiter.decide(&tenant("last"));
        assert!(
            limiter.tracked_tenants() <= 1,
            "{}",
            limiter.tracked_tenants()
        );
    }

    #[test]
    fn policies_follow_the_configuration() {
        let config = TenancyConfig::builder()
            .rate_limit_per_minute(7)
            .rate_limit_window_seconds(30)
            .rate_limit_fail_open(false)
            .build()
            .unwrap();
        let policy = LimitPolicy::from_config(&config);
        assert_eq!(policy.limit_for(&tenant("acme")), 7);
        assert_eq!(policy.window(), Duration::from_secs(30));
        assert_eq!(FailurePolicy::from_config(&config), FailurePolicy::Closed);
        assert_eq!(
            LimitPolicy::new(0, Duration::ZERO).limit_for(&tenant("acme")),
            1
        );
    }
}
