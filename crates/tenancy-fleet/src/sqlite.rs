//! SQLite database-per-tenant target: the ledger lives in each tenant's file, found with
//! `tenancy_sql`'s [`SqliteLocator`] (`<dir>/<prefix><identifier>.db`, `-` as `_`).

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{AssertSqlSafe, Connection};
use tenancy_core::{Tenant, TenantIdentifier};
use tenancy_sql::IsolationError;
use tenancy_sql::database_per_tenant::{DatabaseLocator, TenantPoolSettings};
use tenancy_sql::sqlite::{SqliteLocator, SqliteTenantPools};

use crate::migrations::{LEDGER_TABLE, LedgerEntry, TenantMigrations};
use crate::target::{ApplyFailure, MigrationTarget, TargetError};

/// Migrates one SQLite file per tenant on its own short-lived connection; a missing file is
/// created (in WAL mode, as `tenancy_sql` creates tenant files).
///
/// SQLite has no advisory locks: two runs on the same file at the same time can both try a
/// migration, and the second fails on the ledger's primary key. Run one migrator per data
/// directory at a time.
#[derive(Debug, Clone)]
pub struct SqliteTarget {
    pools: SqliteTenantPools,
    migrations: TenantMigrations,
}

impl SqliteTarget {
    /// Migrates the files `locator` finds.
    pub fn new(locator: SqliteLocator, migrations: TenantMigrations) -> Self {
        Self::with_pools(
            SqliteTenantPools::new(locator, TenantPoolSettings::default()),
            migrations,
        )
    }

    /// Migrates the files of `pools` (the same pools the application serves from).
    pub fn with_pools(pools: SqliteTenantPools, migrations: TenantMigrations) -> Self {
        Self { pools, migrations }
    }

    async fn options(
        &self,
        tenant: &TenantIdentifier,
    ) -> Result<Option<SqliteConnectOptions>, IsolationError> {
        match self.pools.locator().connect_options(tenant).await {
            Ok(options) => Ok(Some(options)),
            Err(IsolationError::NotProvisioned { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }
}

async fn read_ledger(conn: &mut SqliteConnection) -> Result<Vec<LedgerEntry>, sqlx::Error> {
    let exists: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")
            .bind(LEDGER_TABLE)
            .fetch_optional(&mut *conn)
            .await?;
    if exists.is_none() {
        return Ok(Vec::new());
    }
    let sql = format!("SELECT version, checksum, success FROM {LEDGER_TABLE} ORDER BY version");
    let rows = sqlx::query_as::<_, (i64, Vec<u8>, bool)>(AssertSqlSafe(sql))
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(version, checksum, success)| LedgerEntry {
            version,
            checksum,
            success,
        })
        .collect())
}

#[async_trait]
impl MigrationTarget for SqliteTarget {
    async fn pending(&self, tenant: &Tenant) -> Result<Vec<i64>, TargetError> {
        let Some(options) = self.options(&tenant.identifier).await? else {
            return Ok(self.migrations.versions());
        };
        let mut conn = SqliteConnection::connect_with(&options).await?;
        let ledger = read_ledger(&mut conn).await;
        conn.close().await?;
        Ok(self.migrations.pending_after(&ledger?)?)
    }

    async fn apply(&self, tenant: &Tenant) -> Result<Vec<i64>, ApplyFailure> {
        let options = match self.options(&tenant.identifier).await? {
            Some(options) => options,
            None => {
                create_file(self.pools.locator(), &tenant.identifier).await?;
                self.pools
                    .locator()
                    .connect_options(&tenant.identifier)
                    .await?
            }
        };
        let mut conn = SqliteConnection::connect_with(&options).await?;
        let before = read_ledger(&mut conn).await?;
        let pending = self.migrations.pending_after(&before)?;
        if pending.is_empty() {
            conn.close().await?;
            return Ok(pending);
        }
        let result = run_migrator(self.migrations.migrator(), &mut conn).await;
        let outcome = match result {
            Ok(()) => Ok(pending),
            Err(error) => {
                let after = read_ledger(&mut conn).await.unwrap_or_default();
                Err(ApplyFailure {
                    applied: after
                        .iter()
                        .filter(|entry| entry.success && !before.contains(entry))
                        .map(|entry| entry.version)
                        .collect(),
                    error: error.into(),
                })
            }
        };
        conn.close().await?;
        outcome
    }
}

/// sqlx's `Migrator::run` on a connection. `run` is generic over `Acquire<'a>`, and its future
/// fails the `Send` check of `async_trait` methods ("implementation of `Acquire` is not general
/// enough"); `run_direct` is the same run without the `Acquire` step, which sqlx keeps public
/// for exactly this.
fn run_migrator<'c>(
    migrator: &'c Migrator,
    conn: &'c mut SqliteConnection,
) -> BoxFuture<'c, Result<(), MigrateError>> {
    Box::pin(migrator.run_direct(None, conn, false))
}

/// Creates `tenant`'s file empty (an empty file is an empty SQLite database; the locator's
/// options switch it to WAL on first connect), and the data directory if missing.
async fn create_file(
    locator: &SqliteLocator,
    tenant: &TenantIdentifier,
) -> Result<(), IsolationError> {
    let path = locator.database_path(tenant)?;
    let io_error = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| IsolationError::Io { path, source }
    };
    tokio::fs::create_dir_all(locator.directory())
        .await
        .map_err(io_error(locator.directory()))?;
    match tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .await
    {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(io_error(&path)(error)),
    }
}
