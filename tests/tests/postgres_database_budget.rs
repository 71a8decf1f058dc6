//! PostgreSQL database-per-tenant under load: many tenant databases touched through a
//! connection budget of 10, all at once and one after another (idle connections count against
//! the budget too). The budget is counted on the server (`pg_stat_activity`), not only in the
//! pool cache's own bookkeeping.
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
use tenancy::sql::database_per_tenant::TenantPoolSettings;
use tenancy::sql::postgres::{PgDatabaseLocator, PgTenantPools};
use tenancy::sql::{IsolationError, TenantIsolation};
use tenancy::{NewTenant, Tenant, TenantIdentifier, TenantStatus};
use tenancy_tests::{Server, TenantDatabases, postgres_server_url};

const BUDGET: u32 = 10;

/// How many tenant databases to create (`TENANCY_BUDGET_TENANTS`, default 40).
fn tenant_count() -> usize {
    std::env::var("TENANCY_BUDGET_TENANTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40)
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

/// A connection a server may still list for a moment after the client closed it, while the
/// connection replacing it is already open.
const CLOSING_SLACK: i64 = 2;

fn tenant_named(i: usize) -> Tenant {
    NewTenant::new(
        TenantIdentifier::parse(&format!("tenant-{i}")).unwrap(),
        "t",
    )
    .with_status(TenantStatus::Active)
    .into_tenant()
}

/// Creates `count` tenant databases with a `notes` table, a few at a time (each `CREATE
/// DATABASE` takes a while), and the tenants they belong to.
async fn create_tenants(pools: &PgTenantPools, count: usize) -> Vec<Tenant> {
    let tenants: Vec<Tenant> = (0..count).map(tenant_named).collect();
    futures_util::stream::iter(&tenants)
        .for_each_concurrent(4, |tenant| async move {
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
        })
        .await;
    tenants
}

/// Samples the connections the server lists for the test's databases until finished.
struct ServerSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(i64, usize)>,
}

impl ServerSampler {
    async fn start(prefix: &str) -> Self {
        let monitor = PgPoolOptions::new()
            .max_connections(1)
            .connect(&format!("{}/postgres", postgres_server_url()))
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (stop, prefix) = (stop.clone(), prefix.to_owned());
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
        Self { stop, task }
    }

    /// The most connections the server listed, and the number of samples.
    async fn finish(self) -> (i64, usize) {
        self.stop.store(true, Ordering::Release);
        let (peak, samples) = self.task.await.unwrap();
        assert!(samples > 10, "the sampler barely ran ({samples} samples)");
        (peak, samples)
    }
}

fn budget_pools(prefix: &str, max_connections_per_tenant: u32) -> PgTenantPools {
    PgTenantPools::new(
        PgDatabaseLocator::from_url(&postgres_server_url(), prefix).unwrap(),
        TenantPoolSettings {
            connection_budget: BUDGET,
            max_connections_per_tenant,
            acquire_timeout: Duration::from_secs(60),
            ..TenantPoolSettings::default()
        },
    )
}

/// One short write transaction of `tenant`.
async fn write_note(pools: &PgTenantPools, tenant: &Tenant) -> Result<(), IsolationError> {
    let mut tx = TenantIsolation::begin(pools, tenant).await?;
    sqlx::query("INSERT INTO notes (body) VALUES ('x')")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_sleep(0.005)")
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_budget_holds_on_the_server_with_many_tenants_at_once() {
    let tenant_count = tenant_count();
    let databases = TenantDatabases::new(Server::Postgres, "pgbudget");
    let pools = budget_pools(databases.prefix(), 2);
    let tenants = create_tenants(&pools, tenant_count).await;
    let sampler = ServerSampler::start(databases.prefix()).await;

    // 200 short write transactions at once, spread over the tenants.
    let workers: Vec<_> = tenants
        .iter()
        .cycle()
        .take(200.max(2 * tenant_count))
        .cloned()
        .map(|tenant| {
            let pools = pools.clone();
            tokio::spawn(async move { write_note(&pools, &tenant).await })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap().unwrap();
    }
    let (peak_on_server, samples) = sampler.finish().await;
    let metrics = pools.metrics();
    println!(
        "{tenant_count} tenants, budget {BUDGET}: peak checked out {}, peak on the server \
         {peak_on_server} ({samples} samples), pools opened {}",
        metrics.peak_checked_out, metrics.pools_opened
    );
    assert!(metrics.peak_checked_out <= BUDGET as usize, "{metrics:?}");
    assert!(metrics.open_connections <= BUDGET as usize, "{metrics:?}");
    assert!(
        peak_on_server <= i64::from(BUDGET) + CLOSING_SLACK,
        "the server saw {peak_on_server} connections with a budget of {BUDGET}"
    );
}

/// Tenants touched one after another, each by three transactions at once: nobody waits for the
/// budget while a tenant is busy, but every pool is left with idle connections. Those hold the
/// budget too: a tenant needing a connection at the budget closes another tenant's idle one,
/// so the server never lists more than the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_connections_of_earlier_tenants_count_against_the_budget() {
    const PER_TENANT: u32 = 3;
    let databases = TenantDatabases::new(Server::Postgres, "pgidle");
    let pools = budget_pools(databases.prefix(), PER_TENANT);
    // Four times the budget in idle connections if they were not counted.
    let tenants = create_tenants(&pools, (4 * BUDGET / PER_TENANT + 1) as usize).await;
    let sampler = ServerSampler::start(databases.prefix()).await;

    for tenant in &tenants {
        futures_util::future::try_join_all((0..PER_TENANT).map(|_| write_note(&pools, tenant)))
            .await
            .unwrap();
        let metrics = pools.metrics();
        assert!(metrics.open_connections <= BUDGET as usize, "{metrics:?}");
    }
    let (peak_on_server, samples) = sampler.finish().await;
    let metrics = pools.metrics();
    println!(
        "{} tenants one after another, budget {BUDGET}: peak on the server {peak_on_server} \
         ({samples} samples), {metrics:?}",
        tenants.len()
    );
    assert!(
        peak_on_server <= i64::from(BUDGET) + CLOSING_SLACK,
        "the server saw {peak_on_server} connections with a budget of {BUDGET}"
    );
    // The last tenant's pool is still cached and serves again within the budget.
    let last = tenants.last().unwrap();
    let opened = pools.metrics().pools_opened;
    write_note(&pools, last).await.unwrap();
    assert_eq!(pools.metrics().pools_opened, opened);
    assert!(pools.metrics().open_connections <= BUDGET as usize);
}
