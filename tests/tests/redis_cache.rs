//! The two-level tenant cache on the real Redis: coalesced misses, the shared Redis level, and
//! cross-instance invalidation (with the measured delay).

mod redis_support;

#[path = "redis_support/server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tenancy::manager::{NoProvisioning, TenantManager};
use tenancy::redis::redis;
use tenancy::redis::{CachedStore, CachedStoreSettings, RedisStore};
use tenancy::{CacheSettings, MemoryStore, NewTenant, TenantIdentifier, TenantStatus, TenantStore};

use redis_server::RedisServer;
use redis_support::KeySpace;

/// How many `GET`s the server at `url` has run since its statistics were reset.
async fn get_calls(url: &str) -> u64 {
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut connection)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_get:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap())
}

async fn reset_stats(url: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
}

fn ident(text: &str) -> TenantIdentifier {
    TenantIdentifier::parse(text).unwrap()
}

fn settings(keys: &KeySpace) -> CachedStoreSettings {
    CachedStoreSettings {
        prefix: keys.prefix(),
        local: CacheSettings {
            max_entries: 1000,
            ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(300),
        },
        redis_ttl: Duration::from_secs(300),
        ..CachedStoreSettings::default()
    }
}

async fn stack(keys: &KeySpace, backing: Arc<dyn TenantStore>) -> CachedStore {
    CachedStore::connect(redis_support::client(), backing, settings(keys))
        .await
        .expect("connect to redis")
}

/// 100 concurrent misses through the wrapper reach the registry once; a second instance is
/// then served from Redis without asking the registry. The registry is a [`RedisStore`] on a
/// private server, whose `GET` count is the number of registry lookups.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_query_the_registry_once() {
    let keys = KeySpace::new();
    let server = RedisServer::start();
    let registry = Arc::new(
        RedisStore::connect(&server.url(), keys.prefix())
            .await
            .unwrap(),
    );
    registry
        .create(NewTenant::new(ident("acme"), "Acme").with_status(TenantStatus::Active))
        .await
        .unwrap();
    reset_stats(&server.url()).await;
    let first = stack(&keys, registry.clone()).await;
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let cache = first.cache().clone();
            tokio::spawn(async move { cache.get(&ident("acme")).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().unwrap().name, "Acme");
    }
    assert_eq!(get_calls(&server.url()).await, 1);
    assert!(first.cache().get(&ident("acme")).await.unwrap().is_some());
    assert_eq!(get_calls(&server.url()).await, 1, "an L1 hit");

    let second = stack(&keys, registry.clone()).await;
    let tenant = second.get(&ident("acme")).await.unwrap().unwrap();
    assert_eq!(tenant.name, "Acme");
    assert_eq!(
        get_calls(&server.url()).await,
        1,
        "served by the Redis level"
    );
    assert_eq!(first.redis_failures() + second.redis_failures(), 0);
}

/// Polls `cache` until the tenant has `status`; returns how long that took.
async fn until_status(
    cache: &CachedStore,
    acme: &TenantIdentifier,
    status: TenantStatus,
) -> Duration {
    let started = Instant::now();
    loop {
        let seen = cache.cache().get(acme).await.unwrap().unwrap();
        if seen.status == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "instance B still sees {} after 1 s",
            seen.status
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// Two independent stacks (two connections, two in-process caches) over one registry: a
/// suspension through A's manager is seen by B within 1 s. Prints the p99 delay over 50
/// suspend/activate rounds, measured from the start of the manager call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalidation_reaches_other_instances() {
    let keys = KeySpace::new();
    let registry: Arc<dyn TenantStore> = Arc::new(MemoryStore::new());
    let a = stack(&keys, registry.clone()).await;
    let b = stack(&keys, registry.clone()).await;
    let manager = TenantManager::new(registry.clone(), Arc::new(NoProvisioning))
        .with_hook(Arc::new(a.clone()));
    let acme = ident("acme");
    manager
        .register(NewTenant::new(acme.clone(), "Acme").with_domain("shop.acme.example"))
        .await
        .unwrap();
    assert!(b.cache().get(&acme).await.unwrap().unwrap().is_active());
    assert!(
        b.cache()
            .get_by_domain("shop.acme.example")
            .await
            .unwrap()
            .is_some()
    );

    let mut delays = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        manager.suspend(&acme).await.unwrap();
        until_status(&b, &acme, TenantStatus::Suspended).await;
        delays.push(started.elapsed());
        let started = Instant::now();
        manager.activate(&acme).await.unwrap();
        until_status(&b, &acme, TenantStatus::Active).await;
        delays.push(started.elapsed());
    }
    delays.sort();
    let p99 = delays[(delays.len() * 99).div_ceil(100) - 1];
    let p50 = delays[delays.len() / 2];
    println!(
        "cross-instance invalidation over {} changes: p50 {p50:?}, p99 {p99:?}, max {:?}",
        delays.len(),
        delays[delays.len() - 1]
    );
    assert!(p99 < Duration::from_secs(1));

    // A write through A as a store is seen by B too, also by domain.
    a.update_metadata(&acme, json!({"plan": "gold"}).as_object().unwrap().clone())
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let by_domain = b
            .cache()
            .get_by_domain("shop.acme.example")
            .await
            .unwrap()
            .unwrap();
        let by_identifier = b.cache().get(&acme).await.unwrap().unwrap();
        if by_domain.metadata.get("plan") == Some(&json!("gold"))
            && by_identifier.metadata.get("plan") == Some(&json!("gold"))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "B missed the metadata change"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(a.is_subscribed() && b.is_subscribed());
    assert_eq!(a.redis_failures() + b.redis_failures(), 0);
}
