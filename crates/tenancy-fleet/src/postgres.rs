//! PostgreSQL targets: a schema per tenant ([`PgSchemaTarget`], ledger inside each schema, one
//! advisory lock per schema), a database per tenant ([`PgDatabaseTarget`], ledger inside each
//! database) and the shared tables of RLS tenants ([`PgSharedMigrations`], migrated once).
//!
//! The schema and shared targets work on an admin pool (a role allowed to run DDL), not the request pool. While a
//! tenant migrates, its connection has a session-level `search_path` of the tenant schema and
//! holds the tenant's advisory lock; both are undone (`RESET ALL`, unlock) before the
//! connection goes back to the pool, and a connection that cannot be reset (error, panic,
//! dropped future) is closed instead of returned.

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgDatabaseError};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, Postgres};
use tenancy_core::identifier::check_prefix;
use tenancy_core::{DerivedName, DerivedNameError, NameTarget, Tenant, TenantIdentifier};
use tenancy_sql::postgres::PgTenantPools;

use crate::migrations::{LEDGER_TABLE, LedgerEntry, TenantMigrations};
use crate::provision::schema_grants;
use crate::target::{ApplyFailure, MigrationTarget, TargetError};

/// The schema prefix used unless configured otherwise (as in `tenancy_sql::postgres`).
pub const DEFAULT_SCHEMA_PREFIX: &str = "tenant_";

/// Migrates a schema per tenant: `<prefix><identifier>` (with `-` as `_`), created if missing,
/// with sqlx's ledger table inside the schema.
///
/// Each tenant takes a session advisory lock keyed by its schema name (see
/// [`schema_lock_key`]) instead of sqlx's database-wide lock, so tenants migrate in parallel and
/// two runs over the same tenant apply each migration once. A tenant with nothing pending costs
/// one query and no lock.
///
/// ```no_run
/// # async fn run(tenants: Vec<tenancy_core::Tenant>) -> Result<(), Box<dyn std::error::Error>> {
/// use tenancy_fleet::{MigrateOptions, TenantMigrations, migrate_all, postgres::PgSchemaTarget};
/// let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/app").await?;
/// let migrations = TenantMigrations::from_dir("migrations/tenant").await?;
/// let target = PgSchemaTarget::new(admin, migrations);
/// let report = migrate_all(&target, tenants, &MigrateOptions::new()).await;
/// println!("{report}");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PgSchemaTarget {
    pool: PgPool,
    migrations: TenantMigrations,
    prefix: String,
    shared_schema: Option<String>,
}

impl PgSchemaTarget {
    /// Tenant schemas named with [`DEFAULT_SCHEMA_PREFIX`], migrated over `admin_pool`.
    pub fn new(admin_pool: PgPool, migrations: TenantMigrations) -> Self {
        Self {
            pool: admin_pool,
            migrations,
            prefix: DEFAULT_SCHEMA_PREFIX.to_owned(),
            shared_schema: None,
        }
    }

    /// Uses `prefix` (`[a-z_][a-z0-9_]*`, at most 32 bytes) for schema names.
    pub fn with_prefix(mut self, prefix: &str) -> Result<Self, DerivedNameError> {
        check_prefix(prefix)?;
        self.prefix = prefix.to_owned();
        Ok(self)
    }

    /// Puts `schema` after the tenant schema on the `search_path` while migrating, so
    /// migrations can use types and functions from it (extensions in `public`, say). Objects
    /// the migrations create still go to the tenant schema.
    pub fn with_shared_schema(mut self, schema: impl Into<String>) -> Self {
        self.shared_schema = Some(schema.into());
        self
    }

    /// The admin pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The migrations.
    pub fn migrations(&self) -> &TenantMigrations {
        &self.migrations
    }

    /// The schema of `tenant`.
    pub fn schema_name(&self, tenant: &TenantIdentifier) -> Result<DerivedName, DerivedNameError> {
        DerivedName::new(&self.prefix, tenant, NameTarget::PostgresSchema)
    }

    fn scope(&self, tenant: &TenantIdentifier) -> Result<Scope, DerivedNameError> {
        let schema = self.schema_name(tenant)?;
        let quoted = schema.quoted_postgres();
        let search_path = match &self.shared_schema {
            Some(shared) => format!("{quoted}, {}", tenancy_core::quote_postgres_ident(shared)),
            None => quoted.clone(),
        };
        Ok(Scope {
            lock_key: schema_lock_key(schema.as_str()),
            ledger: format!("{quoted}.{LEDGER_TABLE}"),
            search_path: Some(search_path),
            create_schema: Some(quoted),
        })
    }
}

#[async_trait]
impl MigrationTarget for PgSchemaTarget {
    async fn pending(&self, tenant: &Tenant) -> Result<Vec<i64>, TargetError> {
        let scope = self.scope(&tenant.identifier)?;
        pending(&self.pool, &self.migrations, &scope).await
    }

    async fn apply(&self, tenant: &Tenant) -> Result<Vec<i64>, ApplyFailure> {
        let scope = self.scope(&tenant.identifier)?;
        apply(&self.pool, &self.migrations, &scope).await
    }
}

/// Migrates the shared tables (those of RLS tenants) once, in the admin connection's default
/// `search_path` (usually `public`), with the ledger there too. Runs take an advisory lock of
/// their own, so concurrent runs apply each migration once.
#[derive(Debug, Clone)]
pub struct PgSharedMigrations {
    pool: PgPool,
    migrations: TenantMigrations,
}

impl PgSharedMigrations {
    /// Shared migrations over `admin_pool`.
    pub fn new(admin_pool: PgPool, migrations: TenantMigrations) -> Self {
        Self {
            pool: admin_pool,
            migrations,
        }
    }

    fn scope() -> Scope {
        Scope {
            lock_key: schema_lock_key(""),
            ledger: LEDGER_TABLE.to_owned(),
            search_path: None,
            create_schema: None,
        }
    }

    /// The versions not applied yet, ascending. Changes nothing.
    pub async fn pending(&self) -> Result<Vec<i64>, TargetError> {
        pending(&self.pool, &self.migrations, &Self::scope()).await
    }

    /// Applies what is pending; returns the versions applied, ascending.
    pub async fn apply(&self) -> Result<Vec<i64>, ApplyFailure> {
        apply(&self.pool, &self.migrations, &Self::scope()).await
    }
}

/// Migrates a PostgreSQL database per tenant (named by `pools`' locator), with sqlx's ledger
/// inside each database. A missing database is created through the admin pool; each tenant
/// migrates as the admin role on a connection of its own, closed afterwards, holding an
/// advisory lock keyed by the database name, so two runs over the same tenant apply each
/// migration once. When requests connect as another role (`pools`' server user), that role is
/// granted DML on the `public` schema's tables and sequences of each tenant database.
#[derive(Debug, Clone)]
pub struct PgDatabaseTarget {
    admin: PgPool,
    pools: PgTenantPools,
    migrations: TenantMigrations,
}

impl PgDatabaseTarget {
    /// Tenant databases found by `pools`, created through `admin_pool` (a role allowed to
    /// `CREATE DATABASE`) and migrated with `migrations`.
    pub fn new(admin_pool: PgPool, pools: PgTenantPools, migrations: TenantMigrations) -> Self {
        Self {
            admin: admin_pool,
            pools,
            migrations,
        }
    }

    /// The admin pool databases are created through.
    pub fn admin(&self) -> &PgPool {
        &self.admin
    }

    /// The pools whose locator names the tenant databases.
    pub fn pools(&self) -> &PgTenantPools {
        &self.pools
    }

    /// Connect options reaching `tenant`'s database as the admin role.
    fn admin_options(&self, tenant: &Tenant) -> Result<PgConnectOptions, TargetError> {
        let name = self.pools.locator().database_name(&tenant.identifier)?;
        Ok((*self.admin.connect_options())
            .clone()
            .database(name.as_str()))
    }

    /// The role requests use, when it is not the admin role.
    fn separate_runtime_role(&self) -> Option<&str> {
        let runtime = self.pools.locator().runtime_role();
        (runtime != self.admin.connect_options().get_username()).then_some(runtime)
    }
}

/// SQLSTATE of "database does not exist".
const INVALID_CATALOG_NAME: &str = "3D000";

#[async_trait]
impl MigrationTarget for PgDatabaseTarget {
    async fn pending(&self, tenant: &Tenant) -> Result<Vec<i64>, TargetError> {
        let options = self.admin_options(tenant)?;
        let mut conn = match PgConnection::connect_with(&options).await {
            Ok(conn) => conn,
            Err(error)
                if error
                    .as_database_error()
                    .is_some_and(|db| db.code().as_deref() == Some(INVALID_CATALOG_NAME)) =>
            {
                return Ok(self.migrations.versions());
            }
            Err(error) => return Err(error.into()),
        };
        let ledger = read_ledger(&mut conn, LEDGER_TABLE).await;
        conn.close().await?;
        Ok(self.migrations.pending_after(&ledger?)?)
    }

    async fn apply(&self, tenant: &Tenant) -> Result<Vec<i64>, ApplyFailure> {
        let name = self.pools.locator().database_name(&tenant.identifier)?;
        {
            let mut admin = self.admin.acquire().await?;
            self.pools
                .create_tenant_database(&mut admin, &tenant.identifier, None)
                .await?;
        }
        let options = self.admin_options(tenant)?;
        // A connection of its own: closing it (or dropping it half-way) releases the lock.
        let mut conn = PgConnection::connect_with(&options).await?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(schema_lock_key(name.as_str()))
            .execute(&mut conn)
            .await?;
        let before = read_ledger(&mut conn, LEDGER_TABLE).await?;
        let pending = self.migrations.pending_after(&before)?;
        let outcome = if pending.is_empty() {
            Ok(pending)
        } else {
            match run_migrator(self.migrations.migrator(), &mut conn).await {
                Ok(()) => Ok(pending),
                Err(error) => {
                    let applied = match read_ledger(&mut conn, LEDGER_TABLE).await {
                        Ok(after) => after
                            .iter()
                            .filter(|entry| entry.success && !before.contains(entry))
                            .map(|entry| entry.version)
                            .collect(),
                        Err(_) => applied_before_failure(&pending, &error),
                    };
                    Err(ApplyFailure {
                        applied,
                        error: error.into(),
                    })
                }
            }
        };
        if outcome.is_ok()
            && let Some(role) = self.separate_runtime_role()
        {
            sqlx::raw_sql(AssertSqlSafe(schema_grants("public", role)))
                .execute(&mut conn)
                .await?;
        }
        conn.close().await?;
        outcome
    }
}

/// The key of the session advisory lock (`pg_advisory_lock(bigint)`) serializing migrations of
/// `schema` (the empty name for the shared tables): FNV-1a over `tenancy-fleet:<schema>`.
/// Stable across versions, since processes of different versions must agree on it. Advisory
/// locks are per database, so equal schema names in different databases do not contend.
///
/// ```
/// let key = tenancy_fleet::postgres::schema_lock_key("tenant_acme");
/// assert_eq!(key, tenancy_fleet::postgres::schema_lock_key("tenant_acme"));
/// assert_ne!(key, tenancy_fleet::postgres::schema_lock_key("tenant_acme2"));
/// ```
pub fn schema_lock_key(schema: &str) -> i64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = b"tenancy-fleet:"
        .iter()
        .chain(schema.as_bytes())
        .fold(OFFSET, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
        });
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// Where one run's ledger and objects live.
struct Scope {
    lock_key: i64,
    /// The ledger table, schema-qualified for tenants.
    ledger: String,
    /// The session `search_path` while migrating (quoted), if it must change.
    search_path: Option<String>,
    /// The schema to create under the lock (quoted), if any.
    create_schema: Option<String>,
}

/// A pooled connection whose session may carry a tenant's state. Unless [`Self::release`]
/// vouches that the state was reset, dropping it closes the connection instead of returning
/// it to the pool.
struct Session {
    conn: PoolConnection<Postgres>,
    tainted: bool,
}

impl Session {
    async fn acquire(pool: &PgPool) -> Result<Self, sqlx::Error> {
        Ok(Self {
            conn: pool.acquire().await?,
            tainted: false,
        })
    }

    /// Unlocks and resets the session; on success the connection may go back to the pool.
    async fn release(&mut self, lock_key: i64) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(lock_key)
            .execute(&mut *self.conn)
            .await?;
        sqlx::raw_sql("RESET ALL").execute(&mut *self.conn).await?;
        self.tainted = false;
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.tainted {
            self.conn.close_on_drop();
        }
    }
}

async fn read_ledger(
    conn: &mut PgConnection,
    ledger: &str,
) -> Result<Vec<LedgerEntry>, sqlx::Error> {
    let sql = format!("SELECT version, checksum, success FROM {ledger} ORDER BY version");
    let rows = sqlx::query_as::<_, (i64, Vec<u8>, bool)>(AssertSqlSafe(sql))
        .persistent(false)
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
                .try_downcast_ref::<PgDatabaseError>()
                .is_some_and(|pg| pg.code() == UNDEFINED_TABLE) =>
        {
            Ok(Vec::new())
        }
        Err(error) => Err(error),
    }
}

/// SQLSTATE of "relation does not exist" (no schema or no ledger yet).
const UNDEFINED_TABLE: &str = "42P01";

async fn pending(
    pool: &PgPool,
    migrations: &TenantMigrations,
    scope: &Scope,
) -> Result<Vec<i64>, TargetError> {
    let mut session = Session::acquire(pool).await?;
    let ledger = read_ledger(&mut session.conn, &scope.ledger).await?;
    Ok(migrations.pending_after(&ledger)?)
}

async fn apply(
    pool: &PgPool,
    migrations: &TenantMigrations,
    scope: &Scope,
) -> Result<Vec<i64>, ApplyFailure> {
    let mut session = Session::acquire(pool).await?;
    let ledger = read_ledger(&mut session.conn, &scope.ledger).await?;
    if migrations.pending_after(&ledger)?.is_empty() {
        return Ok(Vec::new());
    }

    session.tainted = true;
    let outcome = migrate_locked(&mut session.conn, migrations, scope).await;
    if let Err(error) = session.release(scope.lock_key).await {
        tracing::warn!(%error, "could not reset a migration connection; closing it");
    }
    outcome
}

/// Takes the lock, sets the search path, creates the schema and runs what is pending. The
/// caller releases the session whatever happens.
async fn migrate_locked(
    conn: &mut PgConnection,
    migrations: &TenantMigrations,
    scope: &Scope,
) -> Result<Vec<i64>, ApplyFailure> {
    let lock = match &scope.search_path {
        Some(search_path) => {
            sqlx::query("SELECT pg_advisory_lock($1), set_config('search_path', $2, false)")
                .bind(scope.lock_key)
                .bind(search_path)
        }
        None => sqlx::query("SELECT pg_advisory_lock($1)").bind(scope.lock_key),
    };
    lock.execute(&mut *conn).await?;
    if let Some(schema) = &scope.create_schema {
        let sql = format!("CREATE SCHEMA IF NOT EXISTS {schema}");
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await?;
    }
    // Another run may have migrated the tenant while this one waited for the lock.
    let before = read_ledger(conn, &scope.ledger).await?;
    let pending = migrations.pending_after(&before)?;
    if pending.is_empty() {
        return Ok(pending);
    }
    match run_migrator(migrations.migrator(), conn).await {
        Ok(()) => Ok(pending),
        Err(error) => {
            let applied = match read_ledger(conn, &scope.ledger).await {
                Ok(after) => after
                    .iter()
                    .filter(|entry| entry.success && !before.contains(entry))
                    .map(|entry| entry.version)
                    .collect(),
                Err(_) => applied_before_failure(&pending, &error),
            };
            Err(ApplyFailure {
                applied,
                error: error.into(),
            })
        }
    }
}

/// The pending versions before the one sqlx reports as failing.
fn applied_before_failure(pending: &[i64], error: &MigrateError) -> Vec<i64> {
    match error {
        MigrateError::ExecuteMigration(_, failed) => pending
            .iter()
            .copied()
            .take_while(|version| version < failed)
            .collect(),
        _ => Vec::new(),
    }
}

/// sqlx's `Migrator::run` on a connection. `run` is generic over `Acquire<'a>`, and its future
/// fails the `Send` check of `async_trait` methods ("implementation of `Acquire` is not general
/// enough"); `run_direct` is the same run without the `Acquire` step, which sqlx keeps public
/// for exactly this.
fn run_migrator<'c>(
    migrator: &'c Migrator,
    conn: &'c mut PgConnection,
) -> BoxFuture<'c, Result<(), MigrateError>> {
    Box::pin(migrator.run_direct(None, conn, false))
}
