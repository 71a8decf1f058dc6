//! MariaDB/MySQL database-per-tenant: one database per tenant on one server, named
//! `<prefix><identifier>` with `-` turned into `_` ([`DerivedName`], at most 64 bytes), reached
//! through the shared [`TenantPools`] machinery.
//!
//! Requests never create a database: connecting to a missing one is answered with
//! [`IsolationError::NotProvisioned`] (MariaDB error 1049, "Unknown database", raised by the
//! handshake itself, so no extra round trip); only [`MySqlTenantPools::create_tenant_database`]
//! creates, on an admin connection.
//!
//! MariaDB has no transactional DDL and `BEGIN` commits an open transaction implicitly, so the
//! leak-proofing of [`TenantTx`](crate::TenantTx) matters here too: a connection never returns to
//! its pool inside a transaction.

use sqlx::migrate::Migrator;
use sqlx::mysql::{MySql, MySqlConnectOptions, MySqlDatabaseError};
use sqlx::{AssertSqlSafe, Connection, MySqlConnection};
use tenancy_core::identifier::check_prefix;
use tenancy_core::{DerivedName, NameTarget, TenantIdentifier};

use crate::database_per_tenant::{DatabaseLocator, TenantPools};
use crate::isolation_error::{IsolationError, connection_error};

/// MariaDB's `ER_BAD_DB_ERROR`: the database named at connect (or in `USE`) does not exist.
const UNKNOWN_DATABASE: u16 = 1049;

/// Tenant pools over one MariaDB/MySQL database per tenant; a
/// [`TenantIsolation`](crate::TenantIsolation) handle (the tenant's identifier picks its
/// database).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use sqlx::Connection;
/// use tenancy_core::TenantIdentifier;
/// use tenancy_sql::database_per_tenant::TenantPoolSettings;
/// use tenancy_sql::mysql::{MySqlDatabaseLocator, MySqlTenantPools};
///
/// let locator = MySqlDatabaseLocator::from_url("mysql://root@127.0.0.1:3306", "tenant_")?;
/// let pools = MySqlTenantPools::new(locator, TenantPoolSettings::default());
/// let acme = TenantIdentifier::parse("acme")?;
/// let mut admin = sqlx::MySqlConnection::connect("mysql://root@127.0.0.1:3306").await?;
/// pools.create_tenant_database(&mut admin, &acme, None).await?;
/// let mut tx = pools.begin(&acme).await?;
/// sqlx::query("CREATE TABLE IF NOT EXISTS notes (body TEXT)").execute(&mut *tx).await?;
/// tx.commit().await?;
/// pools.drop_tenant_database(&mut admin, &acme).await?;
/// # Ok(()) }
/// ```
pub type MySqlTenantPools = TenantPools<MySqlDatabaseLocator>;

/// A transaction on one tenant's MariaDB/MySQL database.
pub type MySqlTenantTx = crate::TenantTx<MySql>;

/// Finds tenant databases on one MariaDB/MySQL server: the server's connect options (host,
/// user, password, TLS, ...) with the database set to `<prefix><identifier with - as _>`.
///
/// ```
/// use tenancy_core::TenantIdentifier;
/// use tenancy_sql::mysql::MySqlDatabaseLocator;
/// let locator = MySqlDatabaseLocator::from_url("mysql://app@db.internal", "tenant_").unwrap();
/// let name = locator.database_name(&TenantIdentifier::parse("acme-corp").unwrap()).unwrap();
/// assert_eq!(name.as_str(), "tenant_acme_corp");
/// assert_eq!(name.quoted_mysql(), "`tenant_acme_corp`");
/// assert!(MySqlDatabaseLocator::from_url("mysql://app@db.internal", "Bad").is_err());
/// ```
#[derive(Debug, Clone)]
pub struct MySqlDatabaseLocator {
    server: MySqlConnectOptions,
    prefix: String,
}

impl MySqlDatabaseLocator {
    /// Databases on the server of `server`, named `prefix` + identifier. The prefix must match
    /// `[a-z_][a-z0-9_]*` (at most 32 bytes).
    pub fn new(server: MySqlConnectOptions, prefix: &str) -> Result<Self, IsolationError> {
        check_prefix(prefix)?;
        Ok(Self {
            server,
            prefix: prefix.to_owned(),
        })
    }

    /// Databases on the server of `url` (its database part, if any, is replaced per tenant).
    pub fn from_url(url: &str, prefix: &str) -> Result<Self, IsolationError> {
        Self::new(url.parse()?, prefix)
    }

    /// The name of `tenant`'s database (which may not exist).
    pub fn database_name(&self, tenant: &TenantIdentifier) -> Result<DerivedName, IsolationError> {
        Ok(DerivedName::new(
            &self.prefix,
            tenant,
            NameTarget::MysqlDatabase,
        )?)
    }

    /// The connect options of the database `name` on this locator's server.
    pub fn database_options(&self, name: &DerivedName) -> MySqlConnectOptions {
        self.server.clone().database(name.as_str())
    }
}

/// Whether `error` is MariaDB's "Unknown database" (1049), as a connection to a database that
/// does not exist fails.
///
/// ```
/// assert!(!tenancy_sql::mysql::is_unknown_database(&sqlx::Error::PoolTimedOut));
/// ```
pub fn is_unknown_database(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|db| db.try_downcast_ref::<MySqlDatabaseError>())
        .is_some_and(|db| db.number() == UNKNOWN_DATABASE)
}

impl DatabaseLocator for MySqlDatabaseLocator {
    type Database = MySql;

    async fn connect_options(
        &self,
        tenant: &TenantIdentifier,
    ) -> Result<MySqlConnectOptions, IsolationError> {
        Ok(self.database_options(&self.database_name(tenant)?))
    }

    fn acquire_error(&self, tenant: &TenantIdentifier, error: sqlx::Error) -> IsolationError {
        if is_unknown_database(&error) {
            IsolationError::NotProvisioned {
                identifier: tenant.clone(),
            }
        } else {
            connection_error(error)
        }
    }
}

impl TenantPools<MySqlDatabaseLocator> {
    /// Creates `tenant`'s database on `admin` (a connection allowed to `CREATE DATABASE`) and
    /// applies `migrations` to it if given; returns its name. Idempotent, also against itself:
    /// `CREATE DATABASE IF NOT EXISTS` keeps an existing database, which is then only migrated.
    ///
    /// The migrations run without a lock: two concurrent calls for one tenant with migrations
    /// may both try one. Provision through the tenant manager (one registration per
    /// identifier) or a fleet target, which locks per tenant.
    pub async fn create_tenant_database(
        &self,
        admin: &mut MySqlConnection,
        tenant: &TenantIdentifier,
        migrations: Option<&Migrator>,
    ) -> Result<DerivedName, IsolationError> {
        let name = self.locator().database_name(tenant)?;
        let create = format!("CREATE DATABASE IF NOT EXISTS {}", name.quoted_mysql());
        sqlx::raw_sql(AssertSqlSafe(create))
            .execute(&mut *admin)
            .await?;
        if let Some(migrator) = migrations {
            let options = self.locator().database_options(&name);
            let mut conn = MySqlConnection::connect_with(&options).await?;
            migrator
                .run_direct(None, &mut conn, false)
                .await
                .map_err(|source| IsolationError::Migrate {
                    identifier: tenant.clone(),
                    source,
                })?;
            conn.close().await?;
        }
        Ok(name)
    }

    /// Drops `tenant`'s database on `admin` (`DROP DATABASE IF EXISTS`) after evicting its pool
    /// and waiting for its connections to come back. Idempotent.
    ///
    /// MariaDB's `DROP DATABASE` waits for transactions holding locks on its tables, so stop
    /// serving the tenant first (the tenant manager marks it `deleted` before purging).
    pub async fn drop_tenant_database(
        &self,
        admin: &mut MySqlConnection,
        tenant: &TenantIdentifier,
    ) -> Result<(), IsolationError> {
        let name = self.locator().database_name(tenant)?;
        self.evict(tenant).await;
        let drop = format!("DROP DATABASE IF EXISTS {}", name.quoted_mysql());
        sqlx::raw_sql(AssertSqlSafe(drop))
            .execute(&mut *admin)
            .await?;
        // A request that reopened the pool meanwhile holds connections to a dropped database.
        self.evict(tenant).await;
        Ok(())
    }
}
