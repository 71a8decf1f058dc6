//! MariaDB/MySQL database-per-tenant target: the ledger lives in each tenant's database, found
//! with `tenancy_sql`'s [`MySqlDatabaseLocator`] (`<prefix><identifier>`, `-` as `_`).
//!
//! Each tenant migrates on a connection of its own, opened for the run and closed after it, so
//! no pooled connection ever carries a tenant's session state or lock; a run that fails or is
//! dropped half-way closes the connection, and the server releases the lock with it.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::mysql::{MySqlConnection, MySqlDatabaseError, MySqlPool};
use sqlx::{AssertSqlSafe, Connection};
use tenancy_core::{BoxError, Tenant, TenantIdentifier};
use tenancy_sql::mysql::{MySqlDatabaseLocator, MySqlTenantPools, is_unknown_database};

use crate::migrations::{LEDGER_TABLE, LedgerEntry, TenantMigrations};
use crate::target::{ApplyFailure, MigrationTarget, TargetError};

/// MariaDB's `ER_NO_SUCH_TABLE`: no ledger yet.
const NO_SUCH_TABLE: u16 = 1146;

/// Migrates one MariaDB/MySQL database per tenant; a missing database is created
/// (`CREATE DATABASE IF NOT EXISTS` on the admin pool).
///
/// Each tenant takes a named lock (`GET_LOCK`, see [`migration_lock_name`]) while it migrates,
/// so tenants migrate in parallel and two runs on the same tenant apply each migration once.
/// A tenant with nothing pending costs a connect and one query, and no lock.
///
/// MariaDB has no transactional DDL: a migration that fails half-way leaves what it did and a
/// ledger row with `success = false`, which the next run reports instead of retrying.
///
/// ```no_run
/// # async fn run(tenants: Vec<tenancy_core::Tenant>) -> Result<(), Box<dyn std::error::Error>> {
/// use tenancy_fleet::mysql::MySqlDatabaseTarget;
/// use tenancy_fleet::{MigrateOptions, TenantMigrations, migrate_all};
/// use tenancy_sql::database_per_tenant::TenantPoolSettings;
/// use tenancy_sql::mysql::{MySqlDatabaseLocator, MySqlTenantPools};
///
/// let url = "mysql://root@127.0.0.1:3306";
/// let pools = MySqlTenantPools::new(
///     MySqlDatabaseLocator::from_url(url, "tenant_")?,
///     TenantPoolSettings::default(),
/// );
/// let admin = sqlx::MySqlPool::connect(url).await?;
/// let migrations = TenantMigrations::from_dir("migrations/tenant").await?;
/// let target = MySqlDatabaseTarget::new(pools, admin, migrations);
/// println!("{}", migrate_all(&target, tenants, &MigrateOptions::new()).await);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MySqlDatabaseTarget {
    pools: MySqlTenantPools,
    admin: MySqlPool,
    migrations: TenantMigrations,
    lock_timeout: Duration,
}

impl MySqlDatabaseTarget {
    /// Default of [`Self::with_lock_timeout`]: ten minutes.
    pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(600);

    /// Migrates the databases of `pools`' locator (the pools the application serves from),
    /// creating missing ones through `admin` (a pool of a user allowed to `CREATE DATABASE`).
    pub fn new(pools: MySqlTenantPools, admin: MySqlPool, migrations: TenantMigrations) -> Self {
        Self {
            pools,
            admin,
            migrations,
            lock_timeout: Self::DEFAULT_LOCK_TIMEOUT,
        }
    }

    /// How long a run waits for another run migrating the same tenant (whole seconds).
    pub fn with_lock_timeout(mut self, lock_timeout: Duration) -> Self {
        self.lock_timeout = lock_timeout;
        self
    }

    /// The tenant pools.
    pub fn pools(&self) -> &MySqlTenantPools {
        &self.pools
    }

    /// The admin pool.
    pub fn admin(&self) -> &MySqlPool {
        &self.admin
    }

    /// The migrations.
    pub fn migrations(&self) -> &TenantMigrations {
        &self.migrations
    }

    fn locator(&self) -> &MySqlDatabaseLocator {
        self.pools.locator()
    }

    /// A connection to `tenant`'s database, or `None` if it does not exist.
    async fn connect(
        &self,
        tenant: &TenantIdentifier,
    ) -> Result<Option<MySqlConnection>, TargetError> {
        let options = self
            .locator()
            .database_options(&self.locator().database_name(tenant)?);
        match MySqlConnection::connect_with(&options).await {
            Ok(conn) => Ok(Some(conn)),
            Err(error) if is_unknown_database(&error) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    async fn migrate_locked(
        &self,
        conn: &mut MySqlConnection,
        tenant: &TenantIdentifier,
    ) -> Result<Vec<i64>, ApplyFailure> {
        let database = self.locator().database_name(tenant)?;
        let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
            .bind(migration_lock_name(database.as_str()))
            .bind(self.lock_timeout.as_secs())
            .fetch_one(&mut *conn)
            .await?;
        if locked != Some(1) {
            let message = format!(
                "another run held the migration lock of tenant '{tenant}' for {:?}",
                self.lock_timeout
            );
            return Err(TargetError::Other(BoxError::from(message)).into());
        }
        // Another run may have migrated the tenant while this one waited for the lock.
        let before = read_ledger(conn).await?;
        let pending = self.migrations.pending_after(&before)?;
        if pending.is_empty() {
            return Ok(pending);
        }
        match run_migrator(self.migrations.migrator(), conn).await {
            Ok(()) => Ok(pending),
            Err(error) => {
                let after = read_ledger(conn).await.unwrap_or_default();
                Err(ApplyFailure {
                    applied: after
                        .iter()
                        .filter(|entry| entry.success && !before.contains(entry))
                        .map(|entry| entry.version)
                        .collect(),
                    error: error.into(),
                })
            }
        }
    }
}

/// The name of the MariaDB named lock (`GET_LOCK`) serializing migrations of the tenant
/// database `database`: `tenancy_fleet_` and the FNV-1a hash of the name in hex, short enough
/// for MySQL's 64-character limit on lock names. Named locks are server-wide, hence the
/// database name in it. Stable across versions, since processes of different versions must
/// agree on it.
///
/// ```
/// use tenancy_fleet::mysql::migration_lock_name;
/// let name = migration_lock_name("tenant_acme");
/// assert_eq!(name, migration_lock_name("tenant_acme"));
/// assert_ne!(name, migration_lock_name("tenant_acme2"));
/// assert_eq!(name.len(), 30);
/// ```
pub fn migration_lock_name(database: &str) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = database.bytes().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    format!("tenancy_fleet_{hash:016x}")
}

async fn read_ledger(conn: &mut MySqlConnection) -> Result<Vec<LedgerEntry>, sqlx::Error> {
    let sql = format!("SELECT version, checksum, success FROM {LEDGER_TABLE} ORDER BY version");
    let rows = sqlx::query_as::<_, (i64, Vec<u8>, bool)>(AssertSqlSafe(sql))
        .fetch_all(conn)
        .await;
    match rows {
        Ok(rows) => Ok(rows
            .into_iter()
            .map(|(version, checksum, success)| LedgerEntry {
                version,
                checksum,
                success,
            })
            .collect()),
        Err(sqlx::Error::Database(error))
            if error
                .try_downcast_ref::<MySqlDatabaseError>()
                .is_some_and(|db| db.number() == NO_SUCH_TABLE) =>
        {
            Ok(Vec::new())
        }
        Err(error) => Err(error),
    }
}

#[async_trait]
impl MigrationTarget for MySqlDatabaseTarget {
    async fn pending(&self, tenant: &Tenant) -> Result<Vec<i64>, TargetError> {
        let Some(mut conn) = self.connect(&tenant.identifier).await? else {
            return Ok(self.migrations.versions());
        };
        let ledger = read_ledger(&mut conn).await;
        conn.close().await?;
        Ok(self.migrations.pending_after(&ledger?)?)
    }

    async fn apply(&self, tenant: &Tenant) -> Result<Vec<i64>, ApplyFailure> {
        let identifier = &tenant.identifier;
        let mut conn = match self.connect(identifier).await? {
            Some(conn) => conn,
            None => {
                let mut admin = self.admin.acquire().await?;
                self.pools
                    .create_tenant_database(&mut admin, identifier, None)
                    .await?;
                drop(admin);
                self.connect(identifier).await?.ok_or_else(|| {
                    TargetError::from(tenancy_sql::IsolationError::NotProvisioned {
                        identifier: identifier.clone(),
                    })
                })?
            }
        };
        // Read without the lock, a ledger entry not yet marked successful may be another run's
        // migration in progress (MariaDB cannot apply DDL atomically with its ledger row), so
        // anything but "nothing pending" is decided under the lock.
        let outcome = match read_ledger(&mut conn).await {
            Ok(ledger)
                if self
                    .migrations
                    .pending_after(&ledger)
                    .is_ok_and(|pending| pending.is_empty()) =>
            {
                Ok(Vec::new())
            }
            Ok(_) => self.migrate_locked(&mut conn, identifier).await,
            Err(error) => Err(error.into()),
        };
        // Closing releases the lock; a connection that cannot close cleanly is dropped, which
        // the server treats the same.
        if let Err(error) = conn.close().await {
            tracing::warn!(%error, tenant = %identifier, "could not close a migration connection");
        }
        outcome
    }
}

/// sqlx's `Migrator::run` on a connection. `run` is generic over `Acquire<'a>`, and its future
/// fails the `Send` check of `async_trait` methods ("implementation of `Acquire` is not general
/// enough"); `run_direct` is the same run without the `Acquire` step, which sqlx keeps public
/// for exactly this.
fn run_migrator<'c>(
    migrator: &'c Migrator,
    conn: &'c mut MySqlConnection,
) -> BoxFuture<'c, Result<(), MigrateError>> {
    Box::pin(migrator.run_direct(None, conn, false))
}
