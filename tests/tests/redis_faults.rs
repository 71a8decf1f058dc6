//! Redis going away and coming back, on a private `redis-server` this test starts and kills
//! (never the machine's shared Redis): the rate limiter fails open or closed as configured,
//! the cache keeps answering from the in-process level and the registry, and everything
//! recovers without rebuilding any object.

#[path = "redis_support/server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tenancy::rate_limit::RateLimiter;
use tenancy::redis::redis;
use tenancy::redis::{
    CachedStore, CachedStoreSettings, FailurePolicy, KeyPrefix, LimitPolicy, RedisRateLimiter,
    RedisStore,
};
use tenancy::{
    MemoryStore, NewTenant, StoreError, Tenant, TenantIdentifier, TenantStatus, TenantStore,
};

use redis_server::RedisServer;

fn ident(text: &str) -> TenantIdentifier {
    TenantIdentifier::parse(text).unwrap()
}

fn tenant(identifier: &str) -> Tenant {
    NewTenant::new(ident(identifier), "T").into_tenant()
}

async fn limiter(server: &RedisServer, failure: FailurePolicy) -> RedisRateLimiter {
    let client = redis::Client::open(server.url()).unwrap();
    RedisRateLimiter::new(
        tenancy::redis::connect(&client).await.unwrap(),
        KeyPrefix::default(),
        LimitPolicy::new(3, Duration::from_secs(60)),
        failure,
    )
}

/// Retries `probe` for up to 10 s until it is true.
async fn eventually(what: &str, mut probe: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !probe().await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what} never happened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fail-open: while Redis is down the in-process limiter decides (and is exact); when Redis is
/// back, the same limiter counts in Redis again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limiter_fails_open_and_recovers() {
    let mut server = RedisServer::start();
    let limiter = limiter(&server, FailurePolicy::Open).await;
    let acme = tenant("acme");
    let first = limiter.check(&acme).await.unwrap();
    assert!(first.allowed && first.remaining == 2);
    assert_eq!(limiter.redis_failures(), 0);

    server.kill();
    let started = Instant::now();
    let mut allowed = 0;
    for _ in 0..6 {
        if limiter
            .check(&acme)
            .await
            .expect("fail-open decides")
            .allowed
        {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 3, "the fallback enforces the limit on its own");
    assert!(limiter.redis_failures() >= 6);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );

    server.restart();
    eventually("the limiter using redis again", async || {
        let failures = limiter.redis_failures();
        let decision = limiter.check(&tenant("beta")).await.unwrap();
        limiter.redis_failures() == failures && decision.allowed
    })
    .await;
    // A fresh Redis: acme's window there is empty again, unlike the fallback's.
    let decision = limiter.check(&acme).await.unwrap();
    assert!(decision.allowed && decision.remaining == 2, "{decision:?}");
}

/// Fail-closed: while Redis is down every check is `RateLimiterUnavailable` (the layer answers
/// 503); when Redis is back, checks succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limiter_fails_closed_and_recovers() {
    let mut server = RedisServer::start();
    let limiter = limiter(&server, FailurePolicy::Closed).await;
    let acme = tenant("acme");
    assert!(limiter.check(&acme).await.unwrap().allowed);

    server.kill();
    for _ in 0..3 {
        assert!(limiter.check(&acme).await.is_err());
    }
    assert!(limiter.redis_failures() >= 3);

    server.restart();
    eventually("the limiter answering again", async || {
        limiter.check(&acme).await.is_ok()
    })
    .await;
}

/// The cache keeps answering while Redis is down: cached tenants from the in-process level,
/// others from the registry; writes still evict locally. After the restart both instances
/// resubscribe by themselves and invalidations flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_survives_redis_outage() {
    let mut server = RedisServer::start();
    let registry: Arc<dyn TenantStore> = Arc::new(MemoryStore::new());
    for name in ["acme", "beta"] {
        registry
            .create(NewTenant::new(ident(name), name).with_status(TenantStatus::Active))
            .await
            .unwrap();
    }
    let client = redis::Client::open(server.url()).unwrap();
    let a = CachedStore::connect(
        client.clone(),
        registry.clone(),
        CachedStoreSettings::default(),
    )
    .await
    .unwrap();
    let b = CachedStore::connect(client, registry.clone(), CachedStoreSettings::default())
        .await
        .unwrap();
    assert!(a.cache().get(&ident("acme")).await.unwrap().is_some());
    assert!(b.cache().get(&ident("acme")).await.unwrap().is_some());

    server.kill();
    let started = Instant::now();
    assert!(
        a.cache().get(&ident("acme")).await.unwrap().is_some(),
        "from L1"
    );
    let beta = a
        .cache()
        .get(&ident("beta"))
        .await
        .expect("from the registry");
    assert_eq!(beta.unwrap().name, "beta");
    assert!(a.redis_failures() > 0);
    let suspended = a
        .set_status(&ident("acme"), TenantStatus::Suspended)
        .await
        .unwrap();
    assert_eq!(suspended.status, TenantStatus::Suspended);
    let seen = a.cache().get(&ident("acme")).await.unwrap().unwrap();
    assert_eq!(
        seen.status,
        TenantStatus::Suspended,
        "a local write evicts locally"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    eventually("the lost subscription noticed", async || !a.is_subscribed()).await;

    server.restart();
    assert!(a.wait_until_subscribed(Duration::from_secs(10)).await);
    assert!(b.wait_until_subscribed(Duration::from_secs(10)).await);
    // Resubscribing emptied B's in-process level, so it reads the change it missed.
    let seen = b.cache().get(&ident("acme")).await.unwrap().unwrap();
    assert_eq!(seen.status, TenantStatus::Suspended);

    a.set_status(&ident("acme"), TenantStatus::Active)
        .await
        .unwrap();
    eventually("B seeing the activation", async || {
        b.cache()
            .get(&ident("acme"))
            .await
            .unwrap()
            .unwrap()
            .is_active()
    })
    .await;
}

/// The Redis store reports a server that is gone as `Unavailable`, quickly, and works again
/// after the restart with the same object.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_unavailable_then_recovers() {
    let mut server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), KeyPrefix::default())
        .await
        .unwrap();
    store
        .create(NewTenant::new(ident("acme"), "Acme"))
        .await
        .unwrap();

    server.kill();
    let started = Instant::now();
    let got = store.get(&ident("acme")).await;
    assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
    let created = store.create(NewTenant::new(ident("beta"), "Beta")).await;
    assert!(
        matches!(created, Err(StoreError::Unavailable(_))),
        "{created:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );

    server.restart();
    eventually("the store answering again", async || {
        store.get(&ident("acme")).await.is_ok()
    })
    .await;
    assert!(
        store
            .create(NewTenant::new(ident("beta"), "Beta"))
            .await
            .is_ok()
    );

    let unreachable = RedisStore::connect("redis://127.0.0.1:1", KeyPrefix::default()).await;
    assert!(matches!(unreachable, Err(StoreError::Unavailable(_))));
}
