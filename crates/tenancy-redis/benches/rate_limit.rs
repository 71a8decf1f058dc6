//! Hot-path costs of the Redis parts: a cached tenant lookup through the two-level cache (an
//! in-process hit), a rate-limit check in the process, and one through Redis (a Lua script
//! round trip). The Redis benchmarks need the Redis at `TENANCY_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`) and use keys under a `tenancy_bench_<pid>:` prefix, deleted at
//! the end.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tenancy_core::rate_limit::RateLimiter;
use tenancy_core::{
    CacheSettings, MemoryStore, NewTenant, TenantIdentifier, TenantStatus, TenantStore,
};
use tenancy_redis::{
    CachedStore, CachedStoreSettings, FailurePolicy, KeyPrefix, LimitPolicy, LocalRateLimiter,
    RedisRateLimiter,
};

fn redis_url() -> String {
    std::env::var("TENANCY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A limit no benchmark run reaches, so every check does the full work of an admitted request.
const HUGE_LIMIT: u32 = u32::MAX;

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let prefix = KeyPrefix::new(format!("tenancy_bench_{}:", std::process::id())).expect("prefix");
    let client = redis::Client::open(redis_url()).expect("redis URL");
    let acme = TenantIdentifier::parse("acme").expect("identifier");
    let tenant = NewTenant::new(acme.clone(), "Acme")
        .with_status(TenantStatus::Active)
        .into_tenant();

    let cached = runtime.block_on(async {
        let registry = Arc::new(MemoryStore::new());
        registry
            .create(NewTenant::new(acme.clone(), "Acme").with_status(TenantStatus::Active))
            .await
            .expect("create");
        let settings = CachedStoreSettings {
            prefix: prefix.clone(),
            local: CacheSettings::default(),
            ..CachedStoreSettings::default()
        };
        let cached = CachedStore::connect(client.clone(), registry, settings)
            .await
            .expect("connect to redis");
        cached.cache().get(&acme).await.expect("warm up");
        cached
    });
    c.bench_function("cached lookup (L1 hit)", |b| {
        b.to_async(&runtime)
            .iter(|| async { cached.cache().get(&acme).await.expect("lookup") });
    });

    let local = LocalRateLimiter::new(LimitPolicy::new(HUGE_LIMIT, Duration::from_secs(60)));
    c.bench_function("rate limit check (in-process)", |b| {
        b.to_async(&runtime)
            .iter(|| async { local.check(&tenant).await.expect("decides") });
    });

    let redis_limiter = runtime.block_on(async {
        RedisRateLimiter::new(
            tenancy_redis::connect(&client)
                .await
                .expect("connect to redis"),
            prefix.clone(),
            // A short window keeps the benchmark's sorted set small.
            LimitPolicy::new(HUGE_LIMIT, Duration::from_millis(100)),
            FailurePolicy::Closed,
        )
    });
    c.bench_function("rate limit check (redis)", |b| {
        b.to_async(&runtime)
            .iter(|| async { redis_limiter.check(&tenant).await.expect("redis is up") });
    });

    runtime.block_on(async {
        let mut connection = tenancy_redis::connect(&client).await.expect("connect");
        redis::cmd("DEL")
            .arg(prefix.key("ratelimit:", "acme"))
            .arg(prefix.key("cache:tenant:", "acme"))
            .query_async::<()>(&mut connection)
            .await
            .expect("delete bench keys");
    });
}

criterion_group!(redis_parts, benches);
criterion_main!(redis_parts);
