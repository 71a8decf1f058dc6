//! SQLite database-per-tenant: one file per tenant, `<dir>/<prefix><identifier>.db` with `-`
//! turned into `_`, opened in WAL mode with foreign keys on and a busy timeout.
//!
//! The path comes only from the validated identifier through [`DerivedName`] and is checked to
//! sit directly in the data directory. Requests never create a file: a tenant without one gets
//! [`IsolationError::NotProvisioned`]; only [`SqliteTenantPools::create_tenant_database`] creates.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::Connection;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous,
};
use tenancy_core::identifier::check_prefix;
use tenancy_core::{DerivedName, NameTarget, TenancyConfig, TenantIdentifier};

use crate::database_per_tenant::{DatabaseLocator, TenantPoolSettings, TenantPools};
use crate::isolation_error::IsolationError;
use crate::tx::{TenantConnection, TenantTx};

/// Tenant pools over SQLite files; a [`TenantIsolation`](crate::TenantIsolation) handle (the
/// tenant's identifier picks its file), installed for the axum extractor with
/// [`isolation_extension`](crate::isolation_extension).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tenancy_core::TenantIdentifier;
/// use tenancy_sql::IsolationError;
/// use tenancy_sql::database_per_tenant::TenantPoolSettings;
/// use tenancy_sql::sqlite::{SqliteLocator, SqliteTenantPools};
///
/// let dir = std::env::temp_dir().join(format!("tenancy_doc_{}", std::process::id()));
/// let pools = SqliteTenantPools::new(
///     SqliteLocator::new(&dir, "tenant_").unwrap(),
///     TenantPoolSettings::default(),
/// );
/// let acme = TenantIdentifier::parse("acme").unwrap();
/// assert!(matches!(pools.begin(&acme).await, Err(IsolationError::NotProvisioned { .. })));
///
/// pools.create_tenant_database(&acme, None).await.unwrap();
/// let mut tx = pools.begin(&acme).await.unwrap();
/// sqlx::query("CREATE TABLE notes (body TEXT)").execute(&mut *tx).await.unwrap();
/// tx.commit().await.unwrap();
///
/// pools.drop_tenant_database(&acme).await.unwrap();
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # });
/// ```
pub type SqliteTenantPools = TenantPools<SqliteLocator>;

/// A checked-out connection to one tenant's SQLite file.
pub type SqliteTenantConnection = TenantConnection<Sqlite>;

/// A transaction on one tenant's SQLite file.
pub type SqliteTenantTx = TenantTx<Sqlite>;

/// Finds tenant SQLite files: `<dir>/<prefix><identifier with - as _>.db`.
///
/// ```
/// use tenancy_core::TenantIdentifier;
/// use tenancy_sql::sqlite::SqliteLocator;
/// let locator = SqliteLocator::new("/srv/tenants", "tenant_").unwrap();
/// let path = locator.database_path(&TenantIdentifier::parse("acme-corp").unwrap()).unwrap();
/// assert_eq!(path, std::path::Path::new("/srv/tenants/tenant_acme_corp.db"));
/// ```
#[derive(Debug, Clone)]
pub struct SqliteLocator {
    dir: PathBuf,
    prefix: String,
    busy_timeout: Duration,
}

impl SqliteLocator {
    /// How long a connection waits for a lock held by another one before failing.
    pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

    /// Files in `dir`, named `prefix` + identifier. The prefix must match `[a-z_][a-z0-9_]*`.
    pub fn new(dir: impl Into<PathBuf>, prefix: &str) -> Result<Self, IsolationError> {
        check_prefix(prefix)?;
        Ok(Self {
            dir: dir.into(),
            prefix: prefix.to_owned(),
            busy_timeout: Self::DEFAULT_BUSY_TIMEOUT,
        })
    }

    /// Files in `sqlite_data_dir`, named with `database_prefix`.
    pub fn from_config(config: &TenancyConfig) -> Result<Self, IsolationError> {
        Self::new(&config.sqlite_data_dir, &config.database_prefix)
    }

    /// Sets the busy timeout of tenant connections.
    pub fn with_busy_timeout(mut self, busy_timeout: Duration) -> Self {
        self.busy_timeout = busy_timeout;
        self
    }

    /// The data directory.
    pub fn directory(&self) -> &Path {
        &self.dir
    }

    /// The file of `tenant`'s database (which may not exist).
    pub fn database_path(&self, tenant: &TenantIdentifier) -> Result<PathBuf, IsolationError> {
        let name = DerivedName::new(&self.prefix, tenant, NameTarget::SqliteFile)?;
        let file_name = format!("{name}.db");
        let path = self.dir.join(&file_name);
        let inside = path.parent() == Some(self.dir.as_path())
            && path.file_name() == Some(file_name.as_ref());
        if !inside {
            return Err(IsolationError::PathOutsideDirectory { path });
        }
        Ok(path)
    }

    fn options(&self, path: &Path, create: bool) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(self.busy_timeout)
    }
}

impl DatabaseLocator for SqliteLocator {
    type Database = Sqlite;

    async fn connect_options(
        &self,
        tenant: &TenantIdentifier,
    ) -> Result<SqliteConnectOptions, IsolationError> {
        let path = self.database_path(tenant)?;
        if exists(&path).await? {
            Ok(self.options(&path, false))
        } else {
            Err(IsolationError::NotProvisioned {
                identifier: tenant.clone(),
            })
        }
    }
}

impl TenantPools<SqliteLocator> {
    /// Pools over the files in `sqlite_data_dir`, sized by the configured budget.
    pub fn from_config(config: &TenancyConfig) -> Result<Self, IsolationError> {
        Ok(Self::new(
            SqliteLocator::from_config(config)?,
            TenantPoolSettings::from_config(config),
        ))
    }

    /// Begins a write transaction (`BEGIN IMMEDIATE`): it takes the write lock up front, so it
    /// waits for the busy timeout instead of failing when another writer commits first.
    pub async fn begin_immediate(
        &self,
        tenant: &TenantIdentifier,
    ) -> Result<SqliteTenantTx, IsolationError> {
        self.begin_with(tenant, "BEGIN IMMEDIATE").await
    }

    /// Creates `tenant`'s file (and the data directory) in WAL mode and applies `migrations`
    /// if given. Idempotent: an existing file is kept and only migrated.
    pub async fn create_tenant_database(
        &self,
        tenant: &TenantIdentifier,
        migrations: Option<&Migrator>,
    ) -> Result<(), IsolationError> {
        let locator = self.locator();
        let path = locator.database_path(tenant)?;
        tokio::fs::create_dir_all(locator.directory())
            .await
            .map_err(|source| io_error(locator.directory(), source))?;
        if !exists(&path).await? {
            // A journal left by a crashed drop must not be replayed into the new database.
            remove_companions(&path).await?;
        }
        let mut conn = SqliteConnection::connect_with(&locator.options(&path, true)).await?;
        if let Some(migrator) = migrations {
            migrator
                .run_direct(None, &mut conn, false)
                .await
                .map_err(|source| IsolationError::Migrate {
                    identifier: tenant.clone(),
                    source,
                })?;
        }
        conn.close().await?;
        Ok(())
    }

    /// Removes `tenant`'s file and its `-wal`/`-shm`/`-journal` companions after evicting its pool and
    /// waiting for its connections to close. Idempotent: missing files are fine.
    ///
    /// Waits for transactions in flight on the tenant, so stop serving the tenant first (the
    /// tenant manager marks it `deleted` before purging).
    pub async fn drop_tenant_database(
        &self,
        tenant: &TenantIdentifier,
    ) -> Result<(), IsolationError> {
        let path = self.locator().database_path(tenant)?;
        self.evict(tenant).await;
        remove_companions(&path).await?;
        remove_if_present(&path).await?;
        // A request that reopened the pool meanwhile holds the unlinked file: close it too.
        self.evict(tenant).await;
        Ok(())
    }
}

async fn exists(path: &Path) -> Result<bool, IsolationError> {
    tokio::fs::try_exists(path)
        .await
        .map_err(|source| io_error(path, source))
}

fn companion(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

async fn remove_companions(path: &Path) -> Result<(), IsolationError> {
    for suffix in ["-wal", "-shm", "-journal"] {
        remove_if_present(&companion(path, suffix)).await?;
    }
    Ok(())
}

async fn remove_if_present(path: &Path) -> Result<(), IsolationError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io_error(path, source)),
    }
}

fn io_error(path: &Path, source: std::io::Error) -> IsolationError {
    IsolationError::Io {
        path: path.to_owned(),
        source,
    }
}
