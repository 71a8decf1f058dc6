//! The tenant manager with the real provisioners on PostgreSQL: racing registrations leave
//! exactly one tenant and no orphan schema, a failed provisioning is visible and resumable,
//! and purge removes the data so a re-registered tenant starts empty.

use std::sync::Arc;

use sqlx::migrate::{Migration, MigrationType};
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool, SqlSafeStr};
use tenancy::manager::{ManagerError, TenantManager};
use tenancy::sql::postgres::PgStore;
use tenancy::{NewTenant, StoreError, TenantIdentifier, TenantStatus, TenantStore};
use tenancy_fleet::TenantMigrations;
use tenancy_fleet::postgres::PgSchemaTarget;
use tenancy_fleet::provision::PgSchemaProvisioner;
use tenancy_tests::TestDatabase;

fn migrations() -> TenantMigrations {
    let orders = Migration::new(
        1,
        "orders".into(),
        MigrationType::Simple,
        AssertSqlSafe("CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, note TEXT NOT NULL)")
            .into_sql_str(),
        false,
    );
    TenantMigrations::from_migrations(vec![orders]).unwrap()
}

async fn manager(db: &TestDatabase) -> (TenantManager, PgPool) {
    let admin = PgPoolOptions::new()
        .max_connections(8)
        .connect(db.url())
        .await
        .unwrap();
    let store = PgStore::new(admin.clone());
    store.migrate().await.unwrap();
    let target = PgSchemaTarget::new(admin.clone(), migrations());
    let manager = TenantManager::new(
        Arc::new(store),
        Arc::new(PgSchemaProvisioner::new(target, None)),
    );
    (manager, admin)
}

async fn tenant_schemas(admin: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, 'tenant_') ORDER BY 1",
    )
    .fetch_all(admin)
    .await
    .unwrap()
}

fn id(s: &str) -> TenantIdentifier {
    TenantIdentifier::parse(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_registrations_make_one_tenant_and_no_orphans() {
    let db = TestDatabase::postgres("fleet_race").await;
    let (manager, admin) = manager(&db).await;
    let tasks: Vec<_> = (0..100)
        .map(|n| {
            let manager = manager.clone();
            tokio::spawn(async move {
                manager
                    .register(NewTenant::new(id("acme"), format!("Acme {n}")))
                    .await
            })
        })
        .collect();
    let (mut ok, mut exists) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(tenant) => {
                assert_eq!(tenant.status, TenantStatus::Active);
                ok += 1;
            }
            Err(ManagerError::Store(StoreError::AlreadyExists(_))) => exists += 1,
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!((ok, exists), (1, 99));
    assert_eq!(tenant_schemas(&admin).await, ["tenant_acme"]);
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'tenant_acme' AND tablename = 'orders'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(tables, 1, "an active tenant has its tables");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lifecycle_step_on_a_real_schema() {
    let db = TestDatabase::postgres("fleet_life").await;
    let (manager, admin) = manager(&db).await;
    let acme = id("acme");
    manager
        .register(NewTenant::new(acme.clone(), "Acme"))
        .await
        .unwrap();
    sqlx::query("INSERT INTO tenant_acme.orders (note) VALUES ('kept')")
        .execute(&admin)
        .await
        .unwrap();
    assert_eq!(
        manager.suspend(&acme).await.unwrap().status,
        TenantStatus::Suspended
    );
    assert_eq!(
        manager.activate(&acme).await.unwrap().status,
        TenantStatus::Active
    );
    assert_eq!(
        manager.delete(&acme).await.unwrap().status,
        TenantStatus::Deleted
    );
    assert_eq!(
        tenant_schemas(&admin).await,
        ["tenant_acme"],
        "soft delete keeps data"
    );
    manager.purge(&acme).await.unwrap();
    assert!(
        tenant_schemas(&admin).await.is_empty(),
        "purge drops the schema"
    );
    assert!(manager.store().get(&acme).await.unwrap().is_none());
    manager
        .register(NewTenant::new(acme.clone(), "Acme again"))
        .await
        .unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tenant_acme.orders")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(rows, 0, "a re-registered tenant starts empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_provisioning_is_visible_and_resumable() {
    let db = TestDatabase::postgres("fleet_fail").await;
    let (manager, admin) = manager(&db).await;
    // A table in the way makes the tenant migration fail.
    sqlx::raw_sql("CREATE SCHEMA tenant_acme; CREATE TABLE tenant_acme.orders (x INT)")
        .execute(&admin)
        .await
        .unwrap();
    let acme = id("acme");
    let error = manager
        .register(NewTenant::new(acme.clone(), "Acme"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ManagerError::Provisioning { .. }),
        "{error}"
    );
    let stored = manager.store().get(&acme).await.unwrap().unwrap();
    assert_eq!(stored.status, TenantStatus::ProvisioningFailed);

    sqlx::raw_sql("DROP TABLE tenant_acme.orders")
        .execute(&admin)
        .await
        .unwrap();
    let resumed = manager.resume(&acme).await.unwrap();
    assert_eq!(resumed.status, TenantStatus::Active);
    sqlx::query("INSERT INTO tenant_acme.orders (note) VALUES ('works')")
        .execute(&admin)
        .await
        .unwrap();
}
