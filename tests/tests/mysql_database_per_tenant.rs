//! MariaDB database-per-tenant against the real server: isolation through the generic handle,
//! nothing created for unknown tenants, the connection budget with 200 tenants at once
//! (counted on the server), provisioning and purge through the tenant manager and the fleet
//! target, and cancelled transactions.
//!
//! Every test names its databases with a unique prefix and drops every database under it when
//! it ends, also when it fails (`tenancy_tests::TenantDatabases`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Connection, MySqlConnection, SqlSafeStr};
use tenancy::manager::Provisioner;
use tenancy::manager::TenantManager;
use tenancy::sql::database_per_tenant::TenantPoolSettings;
use tenancy::sql::mysql::{MySqlDatabaseLocator, MySqlStore, MySqlTenantPools};
use tenancy::sql::{IsolationError, TenantIsolation};
use tenancy::{IsolationMode, NewTenant, StoreError, Tenant, TenantIdentifier, TenantStatus};
use tenancy_fleet::mysql::MySqlDatabaseTarget;
use tenancy_fleet::provision::MySqlDatabaseProvisioner;
use tenancy_fleet::{
    MigrateOptions, MigrationTarget, TenantMigrations, TenantOutcome, migrate_all,
};
use tenancy_tests::{Server, TenantDatabases, TestDatabase, mysql_server_url};

/// The locator of the tenant databases under the test's prefix.
fn locator(databases: &TenantDatabases) -> MySqlDatabaseLocator {
    MySqlDatabaseLocator::from_url(&mysql_server_url(), databases.prefix()).unwrap()
}

async fn connect_admin() -> MySqlConnection {
    MySqlConnection::connect(&format!("{}/mysql", mysql_server_url()))
        .await
        .expect("connect to MariaDB")
}

fn id(s: &str) -> TenantIdentifier {
    TenantIdentifier::parse(s).unwrap()
}

fn tenant(identifier: &str) -> Tenant {
    NewTenant::new(id(identifier), identifier)
        .with_status(TenantStatus::Active)
        .into_tenant()
}

fn settings() -> TenantPoolSettings {
    TenantPoolSettings {
        connection_budget: 10,
        max_connections_per_tenant: 2,
        acquire_timeout: Duration::from_secs(30),
        ..TenantPoolSettings::default()
    }
}

fn notes_migration() -> Migration {
    Migration::new(
        1,
        "notes".into(),
        MigrationType::Simple,
        "CREATE TABLE notes (id BIGINT AUTO_INCREMENT PRIMARY KEY, body TEXT NOT NULL)"
            .into_sql_str(),
        false,
    )
}

fn tags_migration() -> Migration {
    Migration::new(
        2,
        "tags".into(),
        MigrationType::Simple,
        "CREATE TABLE tags (name VARCHAR(64) PRIMARY KEY)".into_sql_str(),
        false,
    )
}

async fn notes(pools: &MySqlTenantPools, tenant: &Tenant) -> Vec<String> {
    let mut tx = TenantIsolation::begin(pools, tenant).await.unwrap();
    let rows = sqlx::query_scalar("SELECT body FROM notes ORDER BY id")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_see_only_their_own_database() {
    let databases = TenantDatabases::new(Server::Mysql, "tmy");
    let pools = MySqlTenantPools::new(locator(&databases), settings());
    let migrator = Migrator::with_migrations(vec![notes_migration()]);
    let mut admin = connect_admin().await;
    let (acme, beta) = (tenant("acme-corp"), tenant("beta"));
    for tenant in [&acme, &beta] {
        pools
            .create_tenant_database(&mut admin, &tenant.identifier, Some(&migrator))
            .await
            .unwrap();
    }
    assert_eq!(
        databases.list().await,
        [
            format!("{}acme_corp", databases.prefix()),
            format!("{}beta", databases.prefix())
        ]
    );

    let handle = tenancy::sql::isolation_extension(pools.clone());
    assert_eq!(handle.mode_for(&acme), IsolationMode::Database);
    let mut tx = handle.begin(&acme).await.unwrap();
    assert_eq!(tx.tenant(), &acme.identifier);
    assert_eq!(tx.mode(), IsolationMode::Database);
    let current: String = sqlx::query_scalar("SELECT DATABASE()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(current, format!("{}acme_corp", databases.prefix()));
    sqlx::query("INSERT INTO notes (body) VALUES (?)")
        .bind("secret of acme")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // Rolled back by drop: not visible to anyone.
    let mut tx = handle.begin(&beta).await.unwrap();
    sqlx::query("INSERT INTO notes (body) VALUES ('dropped')")
        .execute(&mut *tx)
        .await
        .unwrap();
    drop(tx);

    assert_eq!(notes(&pools, &acme).await, ["secret of acme"]);
    assert_eq!(notes(&pools, &beta).await, Vec::<String>::new());

    // Creating again keeps the data and migrates nothing twice.
    pools
        .create_tenant_database(&mut admin, &acme.identifier, Some(&migrator))
        .await
        .unwrap();
    assert_eq!(notes(&pools, &acme).await, ["secret of acme"]);

    for mode in [IsolationMode::Schema, IsolationMode::Rls] {
        let err = handle.begin_in_mode(&acme, mode).await.unwrap_err();
        assert!(matches!(err, IsolationError::UnsupportedMode(m) if m == mode));
    }
    assert_eq!(pools.metrics().checked_out, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_for_unprovisioned_tenants_create_nothing() {
    let databases = TenantDatabases::new(Server::Mysql, "tmy");
    let pools = MySqlTenantPools::new(locator(&databases), settings());
    let mut admin = connect_admin().await;
    let ghost = tenant("ghost");

    for _ in 0..3 {
        let err = TenantIsolation::begin(&pools, &ghost).await.unwrap_err();
        assert!(
            matches!(&err, IsolationError::NotProvisioned { identifier } if identifier == &ghost.identifier),
            "{err}"
        );
        assert!(!err.is_unavailable());
        let err = pools.acquire(&ghost.identifier).await.unwrap_err();
        assert!(
            matches!(err, IsolationError::NotProvisioned { .. }),
            "{err}"
        );
    }
    assert_eq!(databases.list().await, Vec::<String>::new());

    // Purged: no request brings it back.
    pools
        .create_tenant_database(&mut admin, &ghost.identifier, None)
        .await
        .unwrap();
    TenantIsolation::begin(&pools, &ghost)
        .await
        .unwrap()
        .commit()
        .await
        .unwrap();
    pools
        .drop_tenant_database(&mut admin, &ghost.identifier)
        .await
        .unwrap();
    let err = TenantIsolation::begin(&pools, &ghost).await.unwrap_err();
    assert!(
        matches!(err, IsolationError::NotProvisioned { .. }),
        "{err}"
    );
    assert_eq!(databases.list().await, Vec::<String>::new());

    // A name over MariaDB's 64-byte limit is refused before any SQL.
    let long = id(&"a".repeat(60));
    let err = pools.acquire(&long).await.unwrap_err();
    assert!(matches!(err, IsolationError::Name(_)), "{err}");
}

/// Connections to the test's databases open on the server now (any state), from another
/// session.
async fn server_connections(monitor: &mut MySqlConnection, prefix: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
         WHERE LEFT(DB, CHAR_LENGTH(?)) = ?",
    )
    .bind(prefix)
    .bind(prefix)
    .fetch_one(monitor)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_budget_holds_with_200_tenants_at_once() {
    const TENANTS: usize = 200;
    const BUDGET: u32 = 10;
    let databases = TenantDatabases::new(Server::Mysql, "tmy");
    let pools = MySqlTenantPools::new(
        locator(&databases),
        TenantPoolSettings {
            connection_budget: BUDGET,
            max_connections_per_tenant: 2,
            acquire_timeout: Duration::from_secs(60),
            ..TenantPoolSettings::default()
        },
    );
    let tenants: Vec<Tenant> = (0..TENANTS)
        .map(|i| tenant(&format!("tenant-{i}")))
        .collect();
    {
        let mut admin = connect_admin().await;
        for tenant in &tenants {
            let name = pools
                .create_tenant_database(&mut admin, &tenant.identifier, None)
                .await
                .unwrap();
            let create = format!(
                "CREATE TABLE {}.notes (id BIGINT AUTO_INCREMENT PRIMARY KEY, body TEXT)",
                name.quoted_mysql()
            );
            sqlx::raw_sql(sqlx::AssertSqlSafe(create))
                .execute(&mut admin)
                .await
                .unwrap();
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let prefix = databases.prefix().to_owned();
        tokio::spawn(async move {
            let mut monitor = connect_admin().await;
            let (mut peak, mut samples) = (0, 0);
            while !stop.load(Ordering::Acquire) {
                peak = peak.max(server_connections(&mut monitor, &prefix).await);
                samples += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (peak, samples)
        })
    };

    // Every tenant twice, all at once: a short write transaction each.
    let workers: Vec<_> = tenants
        .iter()
        .chain(&tenants)
        .cloned()
        .map(|tenant| {
            let pools = pools.clone();
            tokio::spawn(async move {
                let mut tx = TenantIsolation::begin(&pools, &tenant).await?;
                sqlx::query("INSERT INTO notes (body) VALUES ('x')")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("SELECT SLEEP(0.005)").execute(&mut *tx).await?;
                tx.commit().await
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap().unwrap();
    }
    let idle_after_run = {
        let mut monitor = connect_admin().await;
        server_connections(&mut monitor, databases.prefix()).await
    };
    stop.store(true, Ordering::Release);
    let (peak_on_server, samples) = sampler.await.unwrap();

    let metrics = pools.metrics();
    println!(
        "budget {BUDGET}: peak checked out {}, peak on the server {peak_on_server} \
         ({samples} samples), open after the run {idle_after_run}, pools opened {}",
        metrics.peak_checked_out, metrics.pools_opened
    );
    assert!(samples > 10, "the sampler barely ran ({samples} samples)");
    assert_eq!(metrics.checked_out, 0);
    assert!(metrics.peak_checked_out <= BUDGET as usize, "{metrics:?}");
    assert_eq!(metrics.pools_opened, TENANTS as u64);
    // Idle connections hold the budget too; a connection being closed may still be listed
    // for a moment while the one replacing it is open.
    assert!(metrics.open_connections <= BUDGET as usize, "{metrics:?}");
    assert!(
        peak_on_server <= i64::from(BUDGET) + 2,
        "{peak_on_server} connections on the server with a budget of {BUDGET}"
    );
    assert!(idle_after_run <= i64::from(BUDGET), "{idle_after_run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provisioning_migrates_once_and_purge_removes_the_database() {
    let databases = TenantDatabases::new(Server::Mysql, "tmy");
    let registry = TestDatabase::mysql("tmy_registry").await;
    let store = MySqlStore::connect(registry.url()).await.unwrap();
    store.migrate().await.unwrap();
    let pools = MySqlTenantPools::new(locator(&databases), settings());
    let admin_pool = sqlx::MySqlPool::connect(&format!("{}/mysql", mysql_server_url()))
        .await
        .unwrap();
    let migrations = TenantMigrations::from_migrations(vec![notes_migration()]).unwrap();
    let target = MySqlDatabaseTarget::new(pools.clone(), admin_pool.clone(), migrations);
    let manager = Arc::new(TenantManager::new(
        Arc::new(store),
        Arc::new(MySqlDatabaseProvisioner::new(target.clone())),
    ));

    // Concurrent registrations of one identifier: one wins, one database, nothing orphaned.
    let registrations: Vec<_> = (0..5)
        .map(|_| {
            let manager = manager.clone();
            tokio::spawn(async move { manager.register(NewTenant::new(id("acme"), "Acme")).await })
        })
        .collect();
    let (mut won, mut refused) = (0, 0);
    for registration in registrations {
        match registration.await.unwrap() {
            Ok(tenant) => {
                assert_eq!(tenant.status, TenantStatus::Active);
                won += 1;
            }
            Err(tenancy::manager::ManagerError::Store(StoreError::AlreadyExists(_))) => {
                refused += 1
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!((won, refused), (1, 4));
    let mut admin = connect_admin().await;
    assert_eq!(
        databases.list().await,
        [format!("{}acme", databases.prefix())]
    );
    let acme = tenant("acme");
    let mut tx = TenantIsolation::begin(&pools, &acme).await.unwrap();
    sqlx::query("INSERT INTO notes (body) VALUES ('kept')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // The same creation racing itself is idempotent.
    let creations: Vec<_> = (0..8)
        .map(|_| {
            let pools = pools.clone();
            tokio::spawn(async move {
                let mut admin = connect_admin().await;
                pools
                    .create_tenant_database(&mut admin, &id("racer"), None)
                    .await
            })
        })
        .collect();
    for creation in creations {
        creation.await.unwrap().unwrap();
    }

    // A new migration reaches every tenant once, also with two runs at the same time; the
    // racer's database gets the whole history.
    let target = MySqlDatabaseTarget::new(
        pools.clone(),
        admin_pool.clone(),
        TenantMigrations::from_migrations(vec![notes_migration(), tags_migration()]).unwrap(),
    );
    let racer = tenant("racer");
    assert_eq!(target.pending(&acme).await.unwrap(), [2]);
    assert_eq!(target.pending(&racer).await.unwrap(), [1, 2]);
    assert_eq!(target.pending(&tenant("nobody")).await.unwrap(), [1, 2]);
    let everyone = vec![acme.clone(), racer.clone()];
    let options = MigrateOptions::new();
    let (first, second) = tokio::join!(
        migrate_all(&target, everyone.clone(), &options),
        migrate_all(&target, everyone.clone(), &options),
    );
    assert!(
        first.is_success() && second.is_success(),
        "{first}\n{second}\n{:?}\n{:?}",
        first.tenants,
        second.tenants
    );
    let applied: usize = [&first, &second]
        .iter()
        .flat_map(|report| &report.tenants)
        .map(|tenant| match &tenant.outcome {
            TenantOutcome::Applied(versions) => versions.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(applied, 3, "{first}\n{second}");
    for tenant in &everyone {
        assert!(target.pending(tenant).await.unwrap().is_empty());
    }
    assert_eq!(notes(&pools, &acme).await, ["kept"]);

    // Purge: the database goes, requests find nothing, and purging again is fine.
    manager.purge(&acme.identifier).await.unwrap();
    assert_eq!(
        databases.list().await,
        [format!("{}racer", databases.prefix())]
    );
    let err = TenantIsolation::begin(&pools, &acme).await.unwrap_err();
    assert!(
        matches!(err, IsolationError::NotProvisioned { .. }),
        "{err}"
    );
    MySqlDatabaseProvisioner::new(target)
        .purge(&racer)
        .await
        .unwrap();
    pools
        .drop_tenant_database(&mut admin, &racer.identifier)
        .await
        .unwrap();
    assert_eq!(databases.list().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_or_abandoned_transactions_leave_nothing_open() {
    let databases = TenantDatabases::new(Server::Mysql, "tmy");
    // One connection per tenant: a connection leaked inside a transaction would be the next
    // borrower's, whose BEGIN would commit the leaked work (MariaDB commits implicitly).
    let pools = MySqlTenantPools::new(
        locator(&databases),
        TenantPoolSettings {
            max_connections_per_tenant: 1,
            acquire_timeout: Duration::from_secs(10),
            ..settings()
        },
    );
    let acme = tenant("acme");
    let migrator = Migrator::with_migrations(vec![notes_migration()]);
    pools
        .create_tenant_database(
            &mut connect_admin().await,
            &acme.identifier,
            Some(&migrator),
        )
        .await
        .unwrap();

    let mut cancelled = 0;
    for i in 0..200u64 {
        {
            let mut begin = std::pin::pin!(TenantIsolation::begin(&pools, &acme));
            let mut poll_once = async || {
                std::future::poll_fn(|cx| Poll::Ready(begin.as_mut().poll(cx).is_ready())).await
            };
            let mut ready = poll_once().await;
            if !ready {
                std::thread::sleep(Duration::from_micros(i % 50 * 10));
                ready = poll_once().await;
            }
            cancelled += usize::from(!ready);
        }
        let budget = Duration::from_micros(i % 100 * 20);
        let cancelled_write = tokio::time::timeout(budget, async {
            let mut tx = TenantIsolation::begin(&pools, &acme).await?;
            sqlx::query("INSERT INTO notes (body) VALUES ('never committed')")
                .execute(&mut *tx)
                .await?;
            Ok::<_, IsolationError>(tx)
        })
        .await;
        drop(cancelled_write);

        let mut tx = TenantIsolation::begin(&pools, &acme)
            .await
            .unwrap_or_else(|error| {
                panic!("iteration {i}: next borrower could not begin: {error}")
            });
        sqlx::query("INSERT INTO notes (body) VALUES ('committed')")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    assert!(cancelled > 0, "no begin was cancelled half-way");

    // A panic while the transaction is open rolls it back as well.
    let panicking = {
        let (pools, acme) = (pools.clone(), acme.clone());
        tokio::spawn(async move {
            let mut tx = TenantIsolation::begin(&pools, &acme).await.unwrap();
            sqlx::query("INSERT INTO notes (body) VALUES ('never committed')")
                .execute(&mut *tx)
                .await
                .unwrap();
            panic!("handler bug");
        })
    };
    assert!(panicking.await.unwrap_err().is_panic());

    let mut conn = pools.acquire(&acme.identifier).await.unwrap();
    let (committed, uncommitted): (i64, i64) = sqlx::query_as(
        "SELECT CAST(SUM(body = 'committed') AS SIGNED), \
         CAST(SUM(body = 'never committed') AS SIGNED) FROM notes",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!((committed, uncommitted), (200, 0));
    let in_transaction: i64 = sqlx::query_scalar("SELECT CAST(@@in_transaction AS SIGNED)")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(in_transaction, 0);
    drop(conn);
    assert_eq!(pools.metrics().checked_out, 0);
}
