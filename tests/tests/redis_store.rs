//! Redis-specific checks of the Redis tenant store (the shared checks are in
//! `store_conformance.rs`): an unreadable value is `Corrupt`, never "not found" or a panic.

mod redis_support;

use tenancy::redis::RedisStore;
use tenancy::redis::redis;
use tenancy::{ListQuery, NewTenant, StoreError, TenantIdentifier, TenantStatus, TenantStore};

use redis_support::KeySpace;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreadable_value_is_corrupt() {
    let keys = KeySpace::new();
    let client = redis_support::client();
    let store = RedisStore::new(
        tenancy::redis::connect(&client).await.unwrap(),
        keys.prefix(),
    );
    let acme = TenantIdentifier::parse("acme").unwrap();
    store
        .create(NewTenant::new(acme.clone(), "Acme"))
        .await
        .unwrap();

    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("SET")
        .arg(keys.prefix().key("tenant:", "acme"))
        .arg(r#"{"status": "bogus"}"#)
        .query_async::<()>(&mut connection)
        .await
        .unwrap();

    let got = store.get(&acme).await;
    assert!(matches!(got, Err(StoreError::Corrupt(_))), "{got:?}");
    let listed = store.list(ListQuery::default()).await;
    assert!(matches!(listed, Err(StoreError::Corrupt(_))), "{listed:?}");
    let changed = store.set_status(&acme, TenantStatus::Active).await;
    assert!(
        matches!(changed, Err(StoreError::Corrupt(_))),
        "{changed:?}"
    );
    let deleted = store.delete(&acme).await;
    assert!(
        matches!(deleted, Err(StoreError::Corrupt(_))),
        "{deleted:?}"
    );
    assert_eq!(store.count(None).await.unwrap(), 1);
}
