//! Redis parts of tenancy: a tenant store, a two-level cache with cross-instance invalidation,
//! and per-tenant rate limits.
//!
//! - [`RedisStore`]: a [`tenancy_core::TenantStore`] kept in Redis, with atomic (Lua) creates,
//!   status compare-and-sets and metadata merges.
//! - [`CachedStore`]: an in-process cache (L1, [`tenancy_core::TenantCache`]) over a Redis
//!   write-through cache (L2, [`RedisCache`]) over any registry. Writes and lifecycle events are
//!   published on a Redis channel so every instance forgets the tenant at once.
//! - [`RedisRateLimiter`] and [`LocalRateLimiter`]: per-tenant limits, shared through Redis or
//!   kept in the process, with a configurable policy for a Redis outage.
//!
//! Every Redis key starts with a [`KeyPrefix`] (default `tenancy:`). Use [`connect`] to get a
//! [`redis::aio::ConnectionManager`] that fails fast while Redis is down and reconnects by
//! itself when it is back.

mod cache;
mod connection;
mod outage;
mod prefix;
mod rate_limit;
mod store;

pub use cache::{CachedStore, CachedStoreSettings, RedisCache};
pub use connection::{connect, connection_config};
pub use prefix::{InvalidPrefix, KeyPrefix};
pub use rate_limit::{
    FailurePolicy, LimitPolicy, LocalRateLimiter, METADATA_LIMIT_KEY, RedisRateLimiter,
};
pub use store::RedisStore;

/// The Redis client crate this one is built on, for building clients and connections.
pub use redis;
