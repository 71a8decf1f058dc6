//! Per-tenant rate limits on the real Redis: exact admission across instances, the sliding
//! window, where a tenant's limit comes from, and the in-process limiter.

mod redis_support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tenancy::rate_limit::RateLimiter;
use tenancy::redis::{FailurePolicy, LimitPolicy, LocalRateLimiter, RedisRateLimiter};
use tenancy::{NewTenant, Tenant, TenantIdentifier};

use redis_support::KeySpace;

fn tenant(identifier: &str) -> Tenant {
    NewTenant::new(TenantIdentifier::parse(identifier).unwrap(), "T").into_tenant()
}

async fn redis_limiter(keys: &KeySpace, policy: LimitPolicy) -> RedisRateLimiter {
    let connection = tenancy::redis::connect(&redis_support::client())
        .await
        .expect("connect to redis");
    RedisRateLimiter::new(connection, keys.prefix(), policy, FailurePolicy::Closed)
}

/// Runs `checks` checks of `tenant` at once, spread over `limiters`; returns how many passed.
async fn admitted(limiters: &[Arc<dyn RateLimiter>], tenant: &Tenant, checks: usize) -> usize {
    let tasks: Vec<_> = (0..checks)
        .map(|i| {
            let limiter = limiters[i % limiters.len()].clone();
            let tenant = tenant.clone();
            tokio::spawn(async move { limiter.check(&tenant).await })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        if task.await.unwrap().expect("redis is up").allowed {
            allowed += 1;
        }
    }
    allowed
}

/// 20 concurrent checks through two independent limiters (two connections) with limit 5:
/// exactly 5 pass, and the refusals say when to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exact_admission_across_instances() {
    let keys = KeySpace::new();
    let policy = LimitPolicy::new(5, Duration::from_secs(60));
    let limiters: Vec<Arc<dyn RateLimiter>> = vec![
        Arc::new(redis_limiter(&keys, policy.clone()).await),
        Arc::new(redis_limiter(&keys, policy).await),
    ];
    let acme = tenant("acme");
    assert_eq!(admitted(&limiters, &acme, 20).await, 5);

    let refused = limiters[0].check(&acme).await.unwrap();
    assert!(!refused.allowed);
    assert_eq!((refused.limit, refused.remaining), (5, 0));
    assert!(
        refused.reset_after > Duration::from_secs(55)
            && refused.reset_after <= Duration::from_secs(60),
        "{:?}",
        refused.reset_after
    );
    // Another tenant has its own window.
    let fresh = limiters[1].check(&tenant("beta")).await.unwrap();
    assert!(fresh.allowed);
    assert_eq!((fresh.limit, fresh.remaining), (5, 4));
}

/// After the window has passed, requests are allowed again; within it, they are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn window_slides() {
    let keys = KeySpace::new();
    let window = Duration::from_millis(1500);
    let limiter = redis_limiter(&keys, LimitPolicy::new(3, window)).await;
    let acme = tenant("acme");
    for remaining in [2, 1, 0] {
        let decision = limiter.check(&acme).await.unwrap();
        assert!(decision.allowed);
        assert_eq!(decision.remaining, remaining);
    }
    let refused = limiter.check(&acme).await.unwrap();
    assert!(!refused.allowed);
    assert!(refused.reset_after <= window, "{:?}", refused.reset_after);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !limiter.check(&acme).await.unwrap().allowed,
        "still inside the window"
    );
    tokio::time::sleep(refused.reset_after).await;
    let again = limiter.check(&acme).await.unwrap();
    assert!(again.allowed, "the window has slid: {again:?}");
}

/// The tenant's own metadata limit beats its tier's, which beats the default; the Redis
/// limiter enforces whichever applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limit_precedence() {
    let keys = KeySpace::new();
    let policy = LimitPolicy::new(4, Duration::from_secs(60)).with_tier("premium", 6);
    let limiter: Arc<dyn RateLimiter> = Arc::new(redis_limiter(&keys, policy.clone()).await);
    let limiters = [limiter];

    let standard = tenant("standard-co");
    let mut premium = tenant("premium-co");
    premium.tier = "premium".to_owned();
    let mut custom = tenant("custom-co");
    custom.tier = "premium".to_owned();
    custom
        .metadata
        .insert("rate_limit_per_minute".to_owned(), json!(2));
    let mut ignored = tenant("ignored-co");
    ignored
        .metadata
        .insert("rate_limit_per_minute".to_owned(), json!("lots"));

    assert_eq!(policy.limit_for(&standard), 4);
    assert_eq!(policy.limit_for(&premium), 6);
    assert_eq!(policy.limit_for(&custom), 2);
    assert_eq!(
        policy.limit_for(&ignored),
        4,
        "an unusable override is ignored"
    );

    assert_eq!(admitted(&limiters, &standard, 10).await, 4);
    assert_eq!(admitted(&limiters, &premium, 10).await, 6);
    assert_eq!(admitted(&limiters, &custom, 10).await, 2);
    let decision = limiters[0].check(&premium).await.unwrap();
    assert_eq!(decision.limit, 6);
}

/// The in-process limiter is exact for one instance, keeps tenants apart, and refills.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_process_limiter_is_exact() {
    let limiter = Arc::new(LocalRateLimiter::new(
        LimitPolicy::new(5, Duration::from_secs(1)).with_tier("premium", 8),
    ));
    let limiters: [Arc<dyn RateLimiter>; 1] = [limiter.clone()];
    let acme = tenant("acme");
    assert_eq!(admitted(&limiters, &acme, 20).await, 5);
    let refused = limiter.check(&acme).await.unwrap();
    assert!(!refused.allowed);
    assert!(
        refused.reset_after > Duration::ZERO && refused.reset_after <= Duration::from_millis(200),
        "one request frees up every window / limit: {:?}",
        refused.reset_after
    );

    let mut premium = tenant("premium-co");
    premium.tier = "premium".to_owned();
    assert_eq!(admitted(&limiters, &premium, 20).await, 8);
    assert_eq!(limiter.tracked_tenants(), 2);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        admitted(&limiters, &acme, 20).await,
        5,
        "refilled after the window"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    limiter.sweep();
    assert_eq!(limiter.tracked_tenants(), 0, "idle tenants are forgotten");
}
