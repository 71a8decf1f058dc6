//! Tenants placed on several PostgreSQL servers (database-per-tenant): each request reaches the
//! server of the tenant's placement, an unknown server is an error and never a fallback, and
//! provisioning and fleet migrations reach the tenants of every server, with the library's
//! `PlacedPools` and through a `Deployment` (what the demo and the CLI run on), which refuses
//! `TENANCY_DATABASE_SERVERS` where it cannot place tenants.
//!
//! Needs a second PostgreSQL server: `TENANCY_TEST_POSTGRES_SECOND_URL`, default
//! `postgres://postgres@127.0.0.1:5433`, which `scripts/test` creates for the run.

use std::collections::BTreeMap;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Connection, PgConnection, SqlSafeStr};
use tenancy::manager::{ManagerError, TenantManager};
use tenancy::sql::placement::PlacedPools;
use tenancy::sql::postgres::{PgDatabaseLocator, PgTenantPools};
use tenancy::sql::{IsolationError, TenantIsolation, isolation_extension};
use tenancy::{
    IsolationMode, ListQuery, NewTenant, TenancyConfig, TenancyConfigBuilder, Tenant,
    TenantIdentifier, TenantStatus,
};
use tenancy_fleet::deployment::{Deployment, DeploymentError, DeploymentMigrations, Isolation};
use tenancy_fleet::{
    ApplyFailure, MigrateOptions, MigrationTarget, TargetError, TenantMigrations, TenantOutcome,
    async_trait, migrate_all,
};
use tenancy_tests::{
    Server, TenantDatabases, TestDatabase, mysql_server_url, postgres_second_server_url,
    postgres_server_admin, postgres_server_url, postgres_servers, unique_name,
};

/// Pools on both servers, configured as an application would: `main` is the default server
/// and a named one, `second` only named.
fn placed_pools(databases: &TenantDatabases) -> PlacedPools<PgDatabaseLocator> {
    let config = TenancyConfig::builder()
        .database_url(format!("{}/app", postgres_server_url()))
        .database_prefix(databases.prefix().to_owned())
        .connection_budget(4)
        .tenant_pool_max_connections(2)
        .database_servers(postgres_servers())
        .build()
        .unwrap();
    let default = PgDatabaseLocator::from_url(&postgres_server_url(), databases.prefix()).unwrap();
    PlacedPools::from_config(&config, default, |_, url| {
        PgDatabaseLocator::from_url(url.expose(), &config.database_prefix)
    })
    .unwrap()
}

fn tenant(identifier: &str, placement: Option<&str>) -> Tenant {
    let mut tenant = NewTenant::new(TenantIdentifier::parse(identifier).unwrap(), identifier)
        .with_status(TenantStatus::Active)
        .into_tenant();
    tenant.placement = placement.map(str::to_owned);
    tenant
}

/// The URL of the server `tenant` is placed on (`main` by default).
fn url_of(tenant: &Tenant) -> String {
    postgres_servers()[tenant.placement.as_deref().unwrap_or("main")].clone()
}

fn migration(version: i64) -> Migration {
    let sql = format!("CREATE TABLE table_{version} (id INT PRIMARY KEY)");
    Migration::new(
        version,
        format!("table {version}").into(),
        MigrationType::Simple,
        sqlx::AssertSqlSafe(sql).into_sql_str(),
        false,
    )
}

async fn provision(
    placed: &PlacedPools<PgDatabaseLocator>,
    tenant: &Tenant,
    migrator: &Migrator,
) -> Result<(), IsolationError> {
    let pools = placed.pools_for(tenant)?;
    let mut admin = postgres_server_admin(&url_of(tenant)).await;
    pools
        .create_tenant_database(&mut admin, &tenant.identifier, Some(migrator))
        .await?;
    Ok(())
}

/// Which server and database a request for `tenant` reaches.
async fn reached(
    handle: &dyn TenantIsolation<Database = sqlx::Postgres>,
    tenant: &Tenant,
) -> (i32, String) {
    let mut tx = handle.begin(tenant).await.unwrap();
    let reached = sqlx::query_as("SELECT inet_server_port(), current_database()::text")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    reached
}

fn port_of(url: &str) -> i32 {
    url.rsplit(':')
        .next()
        .and_then(|port| port.split('/').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or(5432)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_reaches_the_server_of_its_tenant() {
    postgres_server_admin(&postgres_second_server_url()).await;
    let databases = TenantDatabases::new(Server::Postgres, "tpl");
    let placed = placed_pools(&databases);
    let migrator = Migrator::with_migrations(vec![migration(1)]);
    let acme = tenant("acme", None);
    let beta = tenant("beta", Some("second"));
    let gamma = tenant("gamma", Some("main"));
    for tenant in [&acme, &beta, &gamma] {
        provision(&placed, tenant, &migrator).await.unwrap();
    }
    let (main_url, second_url) = (postgres_server_url(), postgres_second_server_url());
    let name = |identifier: &str| format!("{}{identifier}", databases.prefix());
    assert_eq!(databases.on(&main_url).await, [name("acme"), name("gamma")]);
    assert_eq!(databases.on(&second_url).await, [name("beta")]);

    let handle = isolation_extension(placed.clone());
    assert_eq!(
        reached(&*handle, &acme).await,
        (port_of(&main_url), name("acme"))
    );
    assert_eq!(
        reached(&*handle, &beta).await,
        (port_of(&second_url), name("beta"))
    );
    assert_eq!(
        reached(&*handle, &gamma).await,
        (port_of(&main_url), name("gamma"))
    );
    assert_ne!(port_of(&main_url), port_of(&second_url));

    // Writes land on the tenant's server only.
    let mut tx = handle.begin(&beta).await.unwrap();
    sqlx::query("INSERT INTO table_1 (id) VALUES (7)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    for (tenant, expected) in [(&beta, 1), (&acme, 0), (&gamma, 0)] {
        let mut tx = handle.begin(tenant).await.unwrap();
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM table_1")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(rows, expected, "{}", tenant.identifier);
        tx.commit().await.unwrap();
    }

    // Each server's pools have their own cache and budget.
    assert_eq!(placed.default_pools().metrics().pools_opened, 1);
    let opened: BTreeMap<&str, u64> = placed
        .servers()
        .map(|(name, pools)| (name, pools.metrics().pools_opened))
        .collect();
    assert_eq!(opened, BTreeMap::from([("main", 1), ("second", 1)]));
    assert_eq!(
        placed
            .server(Some("second"))
            .unwrap()
            .settings()
            .connection_budget,
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placement_is_never_served_from_another_server() {
    postgres_server_admin(&postgres_second_server_url()).await;
    let databases = TenantDatabases::new(Server::Postgres, "tpl");
    let placed = placed_pools(&databases);
    let handle = isolation_extension(placed.clone());
    let migrator = Migrator::with_migrations(vec![migration(1)]);

    // `twin` has a database on the default server only, but is placed on `second`.
    let on_default = tenant("twin", None);
    provision(&placed, &on_default, &migrator).await.unwrap();
    let twin = tenant("twin", Some("second"));
    let err = handle.begin(&twin).await.unwrap_err();
    assert!(
        matches!(&err, IsolationError::NotProvisioned { identifier } if identifier == &twin.identifier),
        "{err}"
    );

    // An unknown server name: a clear error, nothing opened or created anywhere.
    let opened = || -> u64 {
        placed
            .servers()
            .map(|(_, pools)| pools.metrics().pools_opened)
            .sum::<u64>()
            + placed.default_pools().metrics().pools_opened
    };
    let opened_before = opened();
    let lost = tenant("lost", Some("mars"));
    let err = handle.begin(&lost).await.unwrap_err();
    assert!(
        matches!(&err, IsolationError::UnknownServer { name } if name == "mars"),
        "{err}"
    );
    assert!(err.to_string().contains("'mars'"), "{err}");
    assert!(!err.is_unavailable());
    let err = provision(&placed, &lost, &migrator).await.unwrap_err();
    assert!(matches!(err, IsolationError::UnknownServer { .. }), "{err}");
    assert_eq!(
        databases.on(&postgres_second_server_url()).await,
        Vec::<String>::new()
    );
    assert_eq!(
        databases.on(&postgres_server_url()).await,
        [format!("{}twin", databases.prefix())]
    );
    assert_eq!(opened(), opened_before);
}

/// Migrates database-per-tenant tenants wherever they are placed: the tenant's server from its
/// placement, its database created if missing, then sqlx's migrator in it.
struct PlacedTarget {
    placed: PlacedPools<PgDatabaseLocator>,
    migrator: Migrator,
}

impl PlacedTarget {
    async fn applied(pools: &PgTenantPools, tenant: &Tenant) -> Result<Vec<i64>, TargetError> {
        let mut conn = match pools.acquire(&tenant.identifier).await {
            Ok(conn) => conn,
            Err(IsolationError::NotProvisioned { .. }) => return Ok(Vec::new()),
            Err(error) => return Err(error.into()),
        };
        let ledger = sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&mut *conn)
        .await;
        match ledger {
            Ok(versions) => Ok(versions),
            Err(error)
                if error
                    .as_database_error()
                    .and_then(|db| db.code())
                    .is_some_and(|code| code == "42P01") =>
            {
                Ok(Vec::new())
            }
            Err(error) => Err(error.into()),
        }
    }
}

#[async_trait]
impl MigrationTarget for PlacedTarget {
    async fn pending(&self, tenant: &Tenant) -> Result<Vec<i64>, TargetError> {
        let applied = Self::applied(self.placed.pools_for(tenant)?, tenant).await?;
        Ok(self
            .migrator
            .iter()
            .map(|migration| migration.version)
            .filter(|version| !applied.contains(version))
            .collect())
    }

    async fn apply(&self, tenant: &Tenant) -> Result<Vec<i64>, ApplyFailure> {
        let before = self.pending(tenant).await?;
        provision(&self.placed, tenant, &self.migrator).await?;
        Ok(before)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_and_migrations_reach_every_server() {
    postgres_server_admin(&postgres_second_server_url()).await;
    let databases = TenantDatabases::new(Server::Postgres, "tpl");
    let placed = placed_pools(&databases);
    let tenants: Vec<Tenant> = (0..6)
        .map(|i| {
            let placement = ["second", "main"].get(i % 3).copied();
            tenant(&format!("tenant-{i}"), placement)
        })
        .collect();

    let first = PlacedTarget {
        placed: placed.clone(),
        migrator: Migrator::with_migrations(vec![migration(1)]),
    };
    let report = migrate_all(&first, tenants.clone(), &MigrateOptions::new()).await;
    assert!(report.is_success(), "{report}");
    assert_eq!(report.applied(), 6, "{report}");
    let (on_main, on_second) = (
        databases.on(&postgres_server_url()).await,
        databases.on(&postgres_second_server_url()).await,
    );
    assert_eq!(
        (on_main.len(), on_second.len()),
        (4, 2),
        "{on_main:?} {on_second:?}"
    );

    let second = PlacedTarget {
        placed: placed.clone(),
        migrator: Migrator::with_migrations(vec![migration(1), migration(2)]),
    };
    let report = migrate_all(&second, tenants.clone(), &MigrateOptions::new()).await;
    assert!(report.is_success(), "{report}");
    for line in &report.tenants {
        assert_eq!(line.outcome, TenantOutcome::Applied(vec![2]), "{report}");
    }
    let handle = isolation_extension(placed.clone());
    for tenant in &tenants {
        assert!(second.pending(tenant).await.unwrap().is_empty());
        let (port, _) = reached(&*handle, tenant).await;
        assert_eq!(port, port_of(&url_of(tenant)), "{}", tenant.identifier);
        let mut tx = handle.begin(tenant).await.unwrap();
        sqlx::query("SELECT count(*) FROM table_2")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    // Purge goes to the tenant's server too.
    for tenant in &tenants {
        let mut admin = postgres_server_admin(&url_of(tenant)).await;
        placed
            .pools_for(tenant)
            .unwrap()
            .drop_tenant_database(&mut admin, &tenant.identifier)
            .await
            .unwrap();
    }
    assert_eq!(
        databases.on(&postgres_server_url()).await,
        Vec::<String>::new()
    );
    assert_eq!(
        databases.on(&postgres_second_server_url()).await,
        Vec::<String>::new()
    );
}

/// Tenant migrations creating `table_1` up to `table_<last>`.
fn tenant_migrations(last: i64) -> TenantMigrations {
    TenantMigrations::from_migrations((1..=last).map(migration).collect()).unwrap()
}

/// A deployment over both servers, as the demo and the CLI build it, with what it leaves behind.
struct Placed {
    deployment: Deployment,
    manager: TenantManager,
    /// Tenant databases, on the default server or on `second`, migrated with `table_1`.
    databases: TenantDatabases,
    /// The registry, on the default server.
    registry: TestDatabase,
}

/// A [`Placed`] deployment of database tenants, its configuration changed by `configure`.
async fn placed_deployment(
    configure: impl FnOnce(TenancyConfigBuilder) -> TenancyConfigBuilder,
) -> Placed {
    postgres_server_admin(&postgres_second_server_url()).await;
    let databases = TenantDatabases::new(Server::Postgres, "tpl");
    let registry = TestDatabase::postgres("tpl_registry").await;
    let config = configure(
        TenancyConfig::builder()
            .database_url(registry.url())
            .isolation_strategy(IsolationMode::Database)
            .database_prefix(databases.prefix().to_owned())
            .connection_budget(4)
            .tenant_pool_max_connections(2)
            .database_servers([("second", postgres_second_server_url())]),
    )
    .build()
    .unwrap();
    let migrations = DeploymentMigrations {
        tenant: Some(tenant_migrations(1)),
        shared: None,
    };
    let deployment = Deployment::connect(&config, migrations, None)
        .await
        .unwrap();
    let manager = TenantManager::new(deployment.store(), deployment.provisioner());
    Placed {
        deployment,
        manager,
        databases,
        registry,
    }
}

fn postgres_handle(deployment: &Deployment) -> &dyn TenantIsolation<Database = sqlx::Postgres> {
    match deployment.isolation() {
        Isolation::Postgres(handle) => &**handle,
        other => panic!("not a PostgreSQL deployment: {other:?}"),
    }
}

fn new_tenant(identifier: &str, placement: Option<&str>) -> NewTenant {
    let mut new = NewTenant::new(TenantIdentifier::parse(identifier).unwrap(), identifier);
    new.placement = placement.map(str::to_owned);
    new
}

/// Whether `table` exists in the tenant database `database` on the server of `url`.
async fn has_table(url: &str, database: &str, table: &str) -> bool {
    let mut conn = PgConnection::connect(&format!("{url}/{database}"))
        .await
        .unwrap();
    let exists = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    exists
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_provisions_serves_migrates_and_purges_on_the_placed_server() {
    let placed = placed_deployment(|config| config).await;
    let (deployment, manager, databases) = (&placed.deployment, &placed.manager, &placed.databases);
    let acme = manager.register(new_tenant("acme", None)).await.unwrap();
    let beta = manager
        .register(new_tenant("beta", Some("second")))
        .await
        .unwrap();
    assert_eq!(beta.status, TenantStatus::Active);

    let (main_url, second_url) = (postgres_server_url(), postgres_second_server_url());
    let name = |identifier: &str| format!("{}{identifier}", databases.prefix());
    assert_eq!(databases.on(&main_url).await, [name("acme")]);
    assert_eq!(databases.on(&second_url).await, [name("beta")]);

    let handle = postgres_handle(deployment);
    assert_eq!(
        reached(handle, &beta).await,
        (port_of(&second_url), name("beta"))
    );
    assert_eq!(
        reached(handle, &acme).await,
        (port_of(&main_url), name("acme"))
    );

    let target = deployment.migration_target(DeploymentMigrations {
        tenant: Some(tenant_migrations(2)),
        shared: None,
    });
    let tenants = deployment
        .store()
        .list(ListQuery::first(ListQuery::MAX_LIMIT))
        .await
        .unwrap();
    let report = migrate_all(&target, tenants, &MigrateOptions::new()).await;
    assert!(report.is_success(), "{report}");
    assert_eq!(report.applied(), 2, "{report}");
    for line in &report.tenants {
        assert_eq!(line.outcome, TenantOutcome::Applied(vec![2]), "{report}");
    }
    assert!(has_table(&second_url, &name("beta"), "table_2").await);
    assert!(has_table(&main_url, &name("acme"), "table_2").await);
    let mut tx = handle.begin(&beta).await.unwrap();
    sqlx::query("INSERT INTO table_2 (id) VALUES (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    manager.purge(&beta.identifier).await.unwrap();
    assert_eq!(databases.on(&second_url).await, Vec::<String>::new());
    assert_eq!(databases.on(&main_url).await, [name("acme")]);
    manager.purge(&acme.identifier).await.unwrap();
    assert_eq!(databases.on(&main_url).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_refuses_a_placement_on_no_configured_server() {
    let placed = placed_deployment(|config| config).await;
    let (deployment, manager, databases) = (&placed.deployment, &placed.manager, &placed.databases);

    let err = manager
        .register(new_tenant("lost", Some("mars")))
        .await
        .unwrap_err();
    assert!(matches!(err, ManagerError::Provisioning { .. }), "{err}");
    let message = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(message.contains("'mars'"), "{message}");
    assert!(message.contains("TENANCY_DATABASE_SERVERS"), "{message}");
    let lost = deployment
        .store()
        .get(&TenantIdentifier::parse("lost").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lost.status, TenantStatus::ProvisioningFailed);

    let err = postgres_handle(deployment).begin(&lost).await.unwrap_err();
    assert!(
        matches!(&err, IsolationError::UnknownServer { name } if name == "mars"),
        "{err}"
    );
    let target = deployment.migration_target(DeploymentMigrations {
        tenant: Some(tenant_migrations(1)),
        shared: None,
    });
    let report = migrate_all(&target, vec![lost.clone()], &MigrateOptions::new()).await;
    assert_eq!(report.failed(), 1, "{report}");
    assert!(manager.purge(&lost.identifier).await.is_err());
    for url in [postgres_server_url(), postgres_second_server_url()] {
        assert_eq!(databases.on(&url).await, Vec::<String>::new(), "{url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hybrid_deployment_serves_database_tenants_on_their_server() {
    let Placed {
        deployment,
        manager,
        databases,
        registry,
    } = placed_deployment(|config| {
        config
            .isolation_strategy(IsolationMode::Hybrid)
            .hybrid_tier_isolation([("premium", IsolationMode::Database)])
            .hybrid_default_isolation(IsolationMode::Schema)
    })
    .await;
    let dedicated = manager
        .register(new_tenant("dedicated", Some("second")).with_tier("premium"))
        .await
        .unwrap();
    let shared = manager.register(new_tenant("shared", None)).await.unwrap();

    let handle = postgres_handle(&deployment);
    let second_url = postgres_second_server_url();
    assert_eq!(
        reached(handle, &dedicated).await,
        (
            port_of(&second_url),
            format!("{}dedicated", databases.prefix())
        )
    );
    assert_eq!(
        reached(handle, &shared).await,
        (port_of(&postgres_server_url()), registry.name().to_owned())
    );
    manager.purge(&dedicated.identifier).await.unwrap();
    assert_eq!(databases.on(&second_url).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_refuses_database_servers_it_cannot_place_tenants_on() {
    let servers = [("second", postgres_second_server_url())];
    let registry = TestDatabase::postgres("tpl_registry").await;
    let schema = TenancyConfig::builder()
        .database_url(registry.url())
        .isolation_strategy(IsolationMode::Schema)
        .database_servers(servers.clone());
    let mysql_registry = TestDatabase::mysql("tpl_registry").await;
    let mysql = TenancyConfig::builder()
        .database_url(mysql_registry.url())
        .isolation_strategy(IsolationMode::Database)
        .database_servers([("second", format!("{}/other", mysql_server_url()))]);
    let sqlite_dir = std::env::temp_dir().join(unique_name("tpl_sqlite"));
    let sqlite = TenancyConfig::builder().database_servers(servers);
    for (what, config) in [("schema", schema), ("mysql", mysql), ("sqlite", sqlite)] {
        let config = config.build().unwrap();
        let outcome =
            Deployment::connect(&config, DeploymentMigrations::default(), Some(&sqlite_dir)).await;
        let err = outcome.expect_err(what);
        assert!(
            matches!(err, DeploymentError::DatabaseServersUnsupported(_)),
            "{what}: {err}"
        );
        assert!(
            err.to_string()
                .starts_with("TENANCY_DATABASE_SERVERS is set, but"),
            "{what}: {err}"
        );
    }
    assert!(!sqlite_dir.exists(), "nothing is set up before the refusal");
}
