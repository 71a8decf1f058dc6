//! PostgreSQL targets: a schema per tenant ([`PgSchemaTarget`], ledger inside each schema, one
//! advisory lock per schema), a database per tenant ([`PgDatabaseTarget`], ledger inside each
//! database, on the server of the tenant's placement: [`PgDatabaseServers`]) and the shared
//! tables of RLS tenants ([`PgSharedMigrations`], migrated once).
//!
//! The schema and shared targets work on an admin pool (a role allowed to run DDL), not the request pool. While a
//! tenant migrates, its connection has a session-level `search_path` of the tenant schema and
//! holds the tenant's advisory lock; both are undone (`RESET ALL`, unlock) before the
//! connection goes back to the pool, and a connection that cannot be reset (error, panic,
//! dropped future) is closed instead of returned.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgDatabaseError, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, Postgres};
use tenancy_core::identifier::check_prefix;
use tenancy_core::{DerivedName, DerivedNameError, NameTarget, Tenant, TenantIdentifier};
use tenancy_sql::IsolationError;
use tenancy_sql::placement::PlacedPools;
use tenancy_sql::postgres::{PgDatabaseLocator, PgTenantPools};

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

/// The PostgreSQL servers holding a database per tenant: the [`PlacedPools`] requests use, and
/// for each server the admin pool its tenant databases are created, migrated and dropped
/// through. Each tenant goes to the server of its [`placement`](Tenant::placement) (the default
/// server when it names none); a placement naming no server is
/// [`IsolationError::UnknownServer`], never another server. Cheap to clone.
///
/// The default server has an admin pool of its own (`TENANCY_ADMIN_DATABASE_URL`, which may be
/// another role than requests use). A named server has one URL (`TENANCY_DATABASE_SERVERS`),
/// which serves both roles: its admin pool connects as that URL's user to that URL's database,
/// and opens its connections when first needed, so a server that is down fails only the
/// tenants placed on it.
#[derive(Debug, Clone)]
pub struct PgDatabaseServers {
    placed: PlacedPools<PgDatabaseLocator>,
    default_admin: PgPool,
    admins: Arc<HashMap<String, PgPool>>,
}

impl PgDatabaseServers {
    /// One server: tenant databases found by `pools`, created through `admin_pool` (a role
    /// allowed to `CREATE DATABASE`).
    pub fn new(admin_pool: PgPool, pools: PgTenantPools) -> Self {
        Self::placed(admin_pool, PlacedPools::new(pools), PgPoolOptions::new())
    }

    /// The servers of `placed`: the default one administered through `admin_pool`, each named
    /// one through a pool of `admin_options` connecting with its locator's
    /// [server options](PgDatabaseLocator::server_options).
    pub fn placed(
        admin_pool: PgPool,
        placed: PlacedPools<PgDatabaseLocator>,
        admin_options: PgPoolOptions,
    ) -> Self {
        let admins = placed
            .servers()
            .map(|(name, pools)| {
                let options = pools.locator().server_options().clone();
                let admin = admin_options.clone().connect_lazy_with(options);
                (name.to_owned(), admin)
            })
            .collect();
        Self {
            placed,
            default_admin: admin_pool,
            admins: Arc::new(admins),
        }
    }

    /// The pools requests use (a [`TenantIsolation`](tenancy_sql::TenantIsolation) handle).
    pub fn pools(&self) -> &PlacedPools<PgDatabaseLocator> {
        &self.placed
    }

    /// The admin pool and the tenant pools of the server `tenant` is placed on.
    pub fn server_for(&self, tenant: &Tenant) -> Result<(&PgPool, &PgTenantPools), IsolationError> {
        let admin = match tenant.placement.as_deref() {
            None => &self.default_admin,
            Some(name) => self
                .admins
                .get(name)
                .ok_or_else(|| IsolationError::UnknownServer {
                    name: name.to_owned(),
                })?,
        };
        Ok((admin, self.placed.pools_for(tenant)?))
    }

    /// Drops `tenant`'s database on the server it is placed on; see
    /// [`PgTenantPools::drop_tenant_database`]. Idempotent.
    pub async fn drop_tenant_database(&self, tenant: &Tenant) -> Result<(), IsolationError> {
        let (admin, pools) = self.server_for(tenant)?;
        let mut admin = admin.acquire().await?;
        pools
            .drop_tenant_database(&mut admin, &tenant.identifier)
            .await
    }
}

/// Migrates a PostgreSQL database per tenant on the server of its placement (see
/// [`PgDatabaseServers`]), with sqlx's ledger inside each database. A missing database is
/// created through that server's admin pool; each tenant migrates as the admin role on a
/// connection of its own, closed afterwards, holding an advisory lock keyed by the database
/// name, so two runs over the same tenant apply each migration once. When requests connect as
/// another role (the server user of the tenant pools), that role is granted DML on the `public`
/// schema's tables and sequences of each tenant database.
#[derive(Debug, Clone)]
pub struct PgDatabaseTarget {
    servers: PgDatabaseServers,
    migrations: TenantMigrations,
}

impl PgDatabaseTarget {
    /// Tenant databases found by `pools`, created through `admin_pool` (a role allowed to
    /// `CREATE DATABASE`) and migrated with `migrations`: one server.
    pub fn new(admin_pool: PgPool, pools: PgTenantPools, migrations: TenantMigrations) -> Self {
        Self::placed(PgDatabaseServers::new(admin_pool, pools), migrations)
    }

    /// Tenant databases on the servers of `servers`, each migrated on its tenant's server.
    pub fn placed(servers: PgDatabaseServers, migrations: TenantMigrations) -> Self {
        Self {
            servers,
            migrations,
        }
    }

    /// The servers the tenant databases live on.
    pub fn servers(&self) -> &PgDatabaseServers {
        &self.servers
    }
}

/// Connect options reaching `tenant`'s database as the admin role of its server.
fn admin_options(
    admin: &PgPool,
    pools: &PgTenantPools,
    tenant: &Tenant,
) -> Result<PgConnectOptions, IsolationError> {
    let name = pools.locator().database_name(&tenant.identifier)?;
    Ok((*admin.connect_options()).clone().database(name.as_str()))
}

/// The role requests use on the server of `pools`, when it is not the admin role.
fn separate_runtime_role<'a>(admin: &PgPool, pools: &'a PgTenantPools) -> Option<&'a str> {
    let runtime = pools.locator().runtime_role();
    (runtime != admin.connect_options().get_username()).then_some(runtime)
}

/// SQLSTATE of "database does not exist".
const INVALID_CATALOG_NAME: &str = "3D000";

#[async_trait]
impl MigrationTarget for PgDatabaseTarget {
    async fn pending(&self, tenant: &Tenant) -> Result<Vec<i64>, TargetError> {
        let (admin, pools) = self.servers.server_for(tenant)?;
        let options = admin_options(admin, pools, tenant)?;
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
        let (admin, pools) = self.servers.server_for(tenant)?;
        let name = pools.locator().database_name(&tenant.identifier)?;
        {
            let mut admin = admin.acquire().await?;
            pools
                .create_tenant_database(&mut admin, &tenant.identifier, None)
                .await?;
        }
        let options = admin_options(admin, pools, tenant)?;
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
            && let Some(role) = separate_runtime_role(admin, pools)
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
