//! PostgreSQL database-per-tenant under load: many tenant databases touched at once through a
//! connection budget of 10. The budget is counted on the server (`pg_stat_activity`), not only
//! in the pool cache's own bookkeeping.
//!
//! `TENANCY_BUDGET_TENANTS` sets how many tenant databases (default 40, four times the budget,
//! 200 concurrent transactions; creating a database takes a fraction of a second, so the normal
//! suite keeps it small). `scripts/soak` runs it with 200.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tenancy::sql::TenantIsolation;
use tenancy::sql::database_per_tenant::TenantPoolSettings;
use tenancy::sql::postgres::{PgDatabaseLocator, PgTenantPools};
use tenancy::{NewTenant, Tenant, TenantIdentifier, TenantStatus};
use tenancy_tests::{postgres_databases_with_prefix, postgres_server_url, unique_name};

const BUDGET: u32 = 10;

/// How many tenant databases to create (`TENANCY_BUDGET_TENANTS`, default 40).
fn tenant_count() -> usize {
    std::env::var("TENANCY_BUDGET_TENANTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40)
}

/// The tenant databases of one test (named from a unique prefix), dropped at the end even when
/// the test fails.
struct TenantDatabases {
    prefix: String,
}

impl Drop for TenantDatabases {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        let cleanup = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for clean-up")
                .block_on(async move {
                    let mut admin = admin_connection().await;
                    for name in postgres_databases_with_prefix(&prefix).await {
                        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                            .execute(&mut admin)
                            .await;
                    }
                });
        });
        let _ = cleanup.join();
    }
}

async fn admin_connection() -> PgConnection {
    PgConnection::connect(&format!("{}/postgres", postgres_server_url()))
        .await
        .expect("connect to PostgreSQL")
}

/// Backends connected to this test's tenant databases, as the server counts them.
async fn server_connections(monitor: &PgPool, prefix: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE starts_with(datname, $1) \
         AND backend_type = 'client backend'",
    )
    .bind(prefix)
    .fetch_one(monitor)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_budget_holds_on_the_server_with_many_tenants_at_once() {
    let tenant_count = tenant_count();
    let databases = TenantDatabases {
        prefix: format!("{}_", unique_name("pgbudget")),
    };
    let pools = PgTenantPools::new(
        PgDatabaseLocator::from_url(&postgres_server_url(), &databases.prefix).unwrap(),
        TenantPoolSettings {
            connection_budget: BUDGET,
            max_connections_per_tenant: 2,
            acquire_timeout: Duration::from_secs(60),
            ..TenantPoolSettings::default()
        },
    );
    let tenants: Vec<Tenant> = (0..tenant_count)
        .map(|i| {
            NewTenant::new(
                TenantIdentifier::parse(&format!("tenant-{i}")).unwrap(),
                "t",
            )
            .with_status(TenantStatus::Active)
            .into_tenant()
        })
        .collect();
    // Create the databases a few at a time (each CREATE DATABASE takes a while).
    futures_util::stream::iter(&tenants)
        .for_each_concurrent(4, |tenant| {
            let pools = pools.clone();
            async move {
                let mut admin = admin_connection().await;
                let name = pools
                    .create_tenant_database(&mut admin, &tenant.identifier, None)
                    .await
                    .unwrap();
                let mut conn =
                    PgConnection::connect(&format!("{}/{}", postgres_server_url(), name.as_str()))
                        .await
                        .unwrap();
                sqlx::raw_sql("CREATE TABLE notes (id BIGSERIAL PRIMARY KEY, body TEXT)")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                conn.close().await.unwrap();
            }
        })
        .await;

    let monitor = PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{}/postgres", postgres_server_url()))
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, monitor, prefix) = (stop.clone(), monitor.clone(), databases.prefix.clone());
        tokio::spawn(async move {
            let (mut peak, mut samples) = (0, 0);
            while !stop.load(Ordering::Acquire) {
                peak = peak.max(server_connections(&monitor, &prefix).await);
                samples += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (peak, samples)
        })
    };

    // 200 short write transactions at once, spread over the tenants.
    let workers: Vec<_> = tenants
        .iter()
        .cycle()
        .take(200.max(2 * tenant_count))
        .cloned()
        .map(|tenant| {
            let pools = pools.clone();
            tokio::spawn(async move {
                let mut tx = TenantIsolation::begin(&pools, &tenant).await?;
                sqlx::query("INSERT INTO notes (body) VALUES ('x')")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("SELECT pg_sleep(0.005)")
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap().unwrap();
    }
    stop.store(true, Ordering::Release);
    let (peak_on_server, samples) = sampler.await.unwrap();
    let metrics = pools.metrics();
    println!(
        "{tenant_count} tenants, budget {BUDGET}: peak checked out {}, peak on the server \
         {peak_on_server} ({samples} samples), pools opened {}",
        metrics.peak_checked_out, metrics.pools_opened
    );
    assert!(samples > 10, "the sampler barely ran ({samples} samples)");
    assert!(metrics.peak_checked_out <= BUDGET as usize, "{metrics:?}");
    // Idle connections are bounded too: released ones are closed while others wait for the
    // budget, so at most one idle connection per permit is left as the load ends.
    assert!(
        peak_on_server <= i64::from(2 * BUDGET),
        "the server saw {peak_on_server} connections with a budget of {BUDGET}"
    );
}
