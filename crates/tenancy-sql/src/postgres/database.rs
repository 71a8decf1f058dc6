//! PostgreSQL database-per-tenant: one database per tenant on one server, named
//! `<prefix><identifier>` with `-` turned into `_` ([`DerivedName`], at most 63 bytes), reached
//! through the shared [`TenantPools`] machinery.
//!
//! Requests never create a database: connecting to a missing one is answered with
//! [`IsolationError::NotProvisioned`] (PostgreSQL's `3D000`, no extra round trip); only
//! [`PgTenantPools::create_tenant_database`] creates, on an admin connection.

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, Postgres};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tenancy_core::identifier::check_prefix;
use tenancy_core::{DerivedName, NameTarget, TenantIdentifier};

use crate::database_per_tenant::{DatabaseLocator, TenantPools};
use crate::isolation_error::{IsolationError, connection_error};

/// Tenant pools over one PostgreSQL database per tenant.
pub type PgTenantPools = TenantPools<PgDatabaseLocator>;

/// Finds tenant databases on one PostgreSQL server: the server's connect options (host, user,
/// password, TLS, ...) with the database set to `<prefix><identifier with - as _>`.
///
/// ```
/// use tenancy_core::TenantIdentifier;
/// use tenancy_sql::postgres::PgDatabaseLocator;
/// let locator = PgDatabaseLocator::from_url("postgres://app@db.internal", "tenant_").unwrap();
/// let name = locator.database_name(&TenantIdentifier::parse("acme-corp").unwrap()).unwrap();
/// assert_eq!(name.as_str(), "tenant_acme_corp");
/// assert!(PgDatabaseLocator::from_url("postgres://app@db.internal", "Bad").is_err());
/// ```
#[derive(Debug, Clone)]
pub struct PgDatabaseLocator {
    server: PgConnectOptions,
    prefix: String,
}

impl PgDatabaseLocator {
    /// Databases on the server of `server`, named `prefix` + identifier. The prefix must match
    /// `[a-z_][a-z0-9_]*` (at most 32 bytes).
    pub fn new(server: PgConnectOptions, prefix: &str) -> Result<Self, IsolationError> {
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

    /// The role requests connect as (the server URL's user).
    pub fn runtime_role(&self) -> &str {
        self.server.get_username()
    }

    /// The server's connect options as given: its URL's user and database, not a tenant's.
    pub fn server_options(&self) -> &PgConnectOptions {
        &self.server
    }

    /// The name of `tenant`'s database (which may not exist).
    pub fn database_name(&self, tenant: &TenantIdentifier) -> Result<DerivedName, IsolationError> {
        Ok(DerivedName::new(
            &self.prefix,
            tenant,
            NameTarget::PostgresDatabase,
        )?)
    }

    fn options(&self, name: &DerivedName) -> PgConnectOptions {
        self.server.clone().database(name.as_str())
    }
}

impl DatabaseLocator for PgDatabaseLocator {
    type Database = Postgres;

    async fn connect_options(
        &self,
        tenant: &TenantIdentifier,
    ) -> Result<PgConnectOptions, IsolationError> {
        Ok(self.options(&self.database_name(tenant)?))
    }

    fn acquire_error(&self, tenant: &TenantIdentifier, error: sqlx::Error) -> IsolationError {
        let missing_database = error
            .as_database_error()
            .is_some_and(|db| db.code().as_deref() == Some("3D000"));
        if missing_database {
            IsolationError::NotProvisioned {
                identifier: tenant.clone(),
            }
        } else {
            connection_error(error)
        }
    }
}

impl TenantPools<PgDatabaseLocator> {
    /// Creates `tenant`'s database on `admin` (a connection allowed to `CREATE DATABASE`, not
    /// inside a transaction) and applies `migrations` to it if given; returns its name.
    /// Idempotent: an existing database is kept and only migrated.
    pub async fn create_tenant_database(
        &self,
        admin: &mut PgConnection,
        tenant: &TenantIdentifier,
        migrations: Option<&Migrator>,
    ) -> Result<DerivedName, IsolationError> {
        let name = self.locator().database_name(tenant)?;
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1)",
        )
        .bind(name.as_str())
        .fetch_one(&mut *admin)
        .await?;
        if !exists {
            let create = format!("CREATE DATABASE {}", name.quoted_postgres());
            match sqlx::raw_sql(AssertSqlSafe(create))
                .execute(&mut *admin)
                .await
            {
                Ok(_) => {}
                // Created by a concurrent call meanwhile.
                Err(error) if is_duplicate_database(&error) => {}
                Err(error) => return Err(error.into()),
            }
        }
        if let Some(migrator) = migrations {
            let mut conn = PgConnection::connect_with(&self.locator().options(&name)).await?;
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

    /// Drops `tenant`'s database on `admin` (`DROP DATABASE IF EXISTS .. WITH (FORCE)`) after
    /// evicting its pool and waiting for its connections to come back. Idempotent.
    ///
    /// Waits for transactions in flight on the tenant, so stop serving the tenant first (the
    /// tenant manager marks it `deleted` before purging).
    pub async fn drop_tenant_database(
        &self,
        admin: &mut PgConnection,
        tenant: &TenantIdentifier,
    ) -> Result<(), IsolationError> {
        let name = self.locator().database_name(tenant)?;
        self.evict(tenant).await;
        let drop = format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            name.quoted_postgres()
        );
        sqlx::raw_sql(AssertSqlSafe(drop))
            .execute(&mut *admin)
            .await?;
        // A request that reopened the pool meanwhile holds closed connections: drop the pool.
        self.evict(tenant).await;
        Ok(())
    }
}

/// `duplicate_database`, or the unique index of `pg_database` when two creations race.
fn is_duplicate_database(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == "42P04" || code == "23505")
}
