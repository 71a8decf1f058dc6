//! The per-tenant rate-limit hook. The request layer asks the limiter after the status gate;
//! the Redis and in-process implementations live in `tenancy-redis`.

use std::time::Duration;

use crate::{BoxError, Tenant};
use async_trait::async_trait;

/// The limiter's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitDecision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Requests allowed per window.
    pub limit: u64,
    /// Requests left in the current window.
    pub remaining: u64,
    /// Time until the window resets; sent as `Retry-After` when refused.
    pub reset_after: Duration,
}

/// The limiter could not decide (its backend is down). The request is refused with 503.
#[derive(Debug, thiserror::Error)]
#[error("rate limiter unavailable: {0}")]
pub struct RateLimiterUnavailable(#[source] pub BoxError);

/// Decides whether a tenant's request may proceed.
///
/// ```
/// use std::time::Duration;
/// use tenancy_core::rate_limit::{RateLimitDecision, RateLimiter, RateLimiterUnavailable};
/// use tenancy_core::Tenant;
///
/// /// Lets every request through.
/// struct Unlimited;
///
/// #[async_trait::async_trait]
/// impl RateLimiter for Unlimited {
///     async fn check(&self, _tenant: &Tenant) -> Result<RateLimitDecision, RateLimiterUnavailable> {
///         Ok(RateLimitDecision { allowed: true, limit: u64::MAX, remaining: u64::MAX, reset_after: Duration::ZERO })
///     }
/// }
/// ```
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Counts one request of `tenant` and decides.
    async fn check(&self, tenant: &Tenant) -> Result<RateLimitDecision, RateLimiterUnavailable>;
}
