//! The shared-database isolation handle: which tenant scope a transaction gets (schema or RLS,
//! per tenant), the runtime pool's options, the provisioning primitives of schema and RLS
//! tenants, and the classification of the stale-plan error schema drift causes.

use std::fmt;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, Postgres};
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row, SqlSafeStr};
use tenancy_core::identifier::check_prefix;
use tenancy_core::{
    DerivedName, IsolationMode, NameTarget, Tenant, TenantIdentifier, quote_postgres_ident,
};

use super::PgTenantTx;
use crate::isolation::TenantIsolation;
use crate::isolation_error::{IsolationError, connection_error};
use crate::tx::{TenantConnection, TenantTx};

/// Whether `error` is PostgreSQL's `cached plan must not change result type` (SQLSTATE 0A000):
/// a statement this connection prepared earlier now resolves to tables of a different shape,
/// typically because tenant schemas drifted apart. The connection's statement cache must be
/// cleared before the statement can run again; [`TenantTx::restart_with_fresh_statements`] and
/// [`PgIsolation::transaction`] do that.
pub fn is_stale_plan_error(error: &sqlx::Error) -> bool {
    error.as_database_error().is_some_and(|db| {
        db.code().as_deref() == Some("0A000")
            && db
                .message()
                .contains("cached plan must not change result type")
    })
}

/// The default prefix of tenant schema names (`tenant_acme_corp`).
pub const DEFAULT_SCHEMA_PREFIX: &str = "tenant_";
/// The default custom setting holding the tenant identifier in RLS mode.
pub const DEFAULT_TENANT_SETTING: &str = "app.tenant_id";
/// The default name of the tenant column of shared (RLS) tables.
pub const DEFAULT_TENANT_COLUMN: &str = "tenant_id";

/// The name of the custom PostgreSQL setting that carries the tenant identifier
/// (`app.tenant_id` by default): `[a-z_]+\.[a-z_]+`, at most 63 bytes.
///
/// ```
/// use tenancy_sql::postgres::TenantSetting;
/// assert_eq!(TenantSetting::parse("app.tenant_id").unwrap().as_str(), "app.tenant_id");
/// assert!(TenantSetting::parse("tenant_id").is_err());
/// assert!(TenantSetting::parse("app.tenant'; --").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantSetting(Arc<str>);

impl TenantSetting {
    /// Validates a setting name.
    pub fn parse(name: &str) -> Result<Self, IsolationError> {
        let valid_part = |part: &str| {
            !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        };
        match name.split_once('.') {
            Some((prefix, rest)) if name.len() <= 63 && valid_part(prefix) && valid_part(rest) => {
                Ok(Self(Arc::from(name)))
            }
            _ => Err(IsolationError::invalid_name(
                "tenant setting",
                name,
                "must match [a-z_]+.[a-z_]+ (at most 63 bytes)",
            )),
        }
    }

    /// The setting name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TenantSetting {
    fn default() -> Self {
        Self(Arc::from(DEFAULT_TENANT_SETTING))
    }
}

impl fmt::Display for TenantSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Quotes a tenant identifier as an SQL string literal. Identifiers are `[a-z0-9-]` already; the
/// quote doubling is a second line of defence.
pub(crate) fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Checks and quotes a plain lowercase SQL name (`[a-z_][a-z0-9_]*`, at most 63 bytes).
pub(crate) fn quote_simple_name(what: &'static str, name: &str) -> Result<String, IsolationError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_lowercase() || b == b'_' || (i > 0 && b.is_ascii_digit()));
    if ok {
        Ok(quote_postgres_ident(name))
    } else {
        Err(IsolationError::invalid_name(
            what,
            name,
            "must match [a-z_][a-z0-9_]* (at most 63 bytes)",
        ))
    }
}

/// Checks and quotes a table name, `table` or `schema.table`, each part a plain lowercase name.
pub(crate) fn quote_table_name(table: &str) -> Result<String, IsolationError> {
    match table.split_once('.') {
        Some((schema, name)) => Ok(format!(
            "{}.{}",
            quote_simple_name("schema", schema)?,
            quote_simple_name("table", name)?
        )),
        None => quote_simple_name("table", table),
    }
}

type ModeSelector = Arc<dyn Fn(&Tenant) -> IsolationMode + Send + Sync>;

/// How [`PgIsolation`] scopes transactions. Build with [`PgIsolationOptions::new`] and the
/// setters; names are checked when the handle is built.
///
/// ```
/// use tenancy_core::IsolationMode;
/// use tenancy_sql::postgres::PgIsolationOptions;
/// let options = PgIsolationOptions::new()
///     .schema_prefix("t_")
///     .shared_schema("shared")
///     .select_mode(|tenant| tenant.isolation.unwrap_or(IsolationMode::Rls));
/// # let _ = options;
/// ```
#[derive(Clone)]
pub struct PgIsolationOptions {
    schema_prefix: String,
    shared_schema: Option<String>,
    rls_search_path: Vec<String>,
    setting: String,
    tenant_column: String,
    select: ModeSelector,
}

impl fmt::Debug for PgIsolationOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgIsolationOptions")
            .field("schema_prefix", &self.schema_prefix)
            .field("shared_schema", &self.shared_schema)
            .field("rls_search_path", &self.rls_search_path)
            .field("setting", &self.setting)
            .field("tenant_column", &self.tenant_column)
            .finish_non_exhaustive()
    }
}

impl Default for PgIsolationOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl PgIsolationOptions {
    /// Schema isolation for every tenant, prefix `tenant_`, no shared schema; RLS setting
    /// `app.tenant_id`, tenant column `tenant_id`, RLS search path `public`.
    pub fn new() -> Self {
        Self {
            schema_prefix: DEFAULT_SCHEMA_PREFIX.to_owned(),
            shared_schema: None,
            rls_search_path: vec!["public".to_owned()],
            setting: DEFAULT_TENANT_SETTING.to_owned(),
            tenant_column: DEFAULT_TENANT_COLUMN.to_owned(),
            select: Arc::new(|_| IsolationMode::Schema),
        }
    }

    /// Prefix of tenant schema names (`[a-z_][a-z0-9_]*`, at most 32 bytes).
    pub fn schema_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.schema_prefix = prefix.into();
        self
    }

    /// A schema searched after the tenant's own in schema mode (shared reference tables).
    /// Without it the search path holds the tenant schema only, so a table missing there is an
    /// error rather than another schema's rows.
    pub fn shared_schema(mut self, schema: impl Into<String>) -> Self {
        self.shared_schema = Some(schema.into());
        self
    }

    /// The search path pinned (transaction-locally) for RLS tenants; `public` by default. It is
    /// pinned so that a tenant schema left on the session by user code cannot be seen.
    pub fn rls_search_path<I, S>(mut self, schemas: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rls_search_path = schemas.into_iter().map(Into::into).collect();
        self
    }

    /// The custom setting carrying the tenant identifier (`app.tenant_id` by default).
    pub fn setting(mut self, setting: impl Into<String>) -> Self {
        self.setting = setting.into();
        self
    }

    /// The tenant column of shared tables (`tenant_id` by default), used by
    /// [`PgIsolation::delete_tenant_rows`].
    pub fn tenant_column(mut self, column: impl Into<String>) -> Self {
        self.tenant_column = column.into();
        self
    }

    /// The same mode for every tenant (`schema` or `rls`).
    pub fn mode(mut self, mode: IsolationMode) -> Self {
        self.select = Arc::new(move |_| mode);
        self
    }

    /// Chooses the mode per tenant (hybrid deployments), e.g. from the tenant's override and
    /// tier. It must answer `schema` or `rls`.
    pub fn select_mode(
        mut self,
        select: impl Fn(&Tenant) -> IsolationMode + Send + Sync + 'static,
    ) -> Self {
        self.select = Arc::new(select);
        self
    }

    /// Adds what the runtime pool needs to `pool` and returns it:
    ///
    /// - `test_before_acquire(false)`: no ping round trip before each checkout; a broken
    ///   connection surfaces as an error of the first statement instead.
    /// - an `after_release` hook that resets `search_path` and the tenant setting (undoing
    ///   session-level `SET`s user code may have committed) and discards the connection if it is
    ///   still inside a transaction, in one round trip, off the request path.
    ///
    /// ```
    /// use sqlx::postgres::PgPoolOptions;
    /// use tenancy_sql::postgres::PgIsolationOptions;
    /// let pool_options = PgIsolationOptions::new()
    ///     .pool_options(PgPoolOptions::new().max_connections(20))
    ///     .unwrap();
    /// assert!(!pool_options.get_test_before_acquire());
    /// ```
    pub fn pool_options(&self, pool: PgPoolOptions) -> Result<PgPoolOptions, IsolationError> {
        let setting = TenantSetting::parse(&self.setting)?;
        let release_check: Arc<str> = Arc::from(format!(
            "RESET search_path; RESET {setting}; \
             SELECT pg_catalog.now() = pg_catalog.statement_timestamp()"
        ));
        Ok(pool
            .test_before_acquire(false)
            .after_release(move |conn, _meta| {
                let sql = AssertSqlSafe(Arc::clone(&release_check));
                Box::pin(async move {
                    // now() is the start of the transaction, statement_timestamp() the arrival
                    // of this message: they differ only inside a transaction opened earlier.
                    let rows = sqlx::raw_sql(sql).fetch_all(conn).await?;
                    match rows.first() {
                        Some(row) => row.try_get::<bool, _>(0),
                        None => Ok(false),
                    }
                }) as BoxFuture<'_, Result<bool, sqlx::Error>>
            }))
    }

    fn build(self) -> Result<Scoping, IsolationError> {
        check_prefix(&self.schema_prefix)?;
        let setting = TenantSetting::parse(&self.setting)?;
        let shared_schema = self
            .shared_schema
            .as_deref()
            .map(|schema| quote_simple_name("shared schema", schema))
            .transpose()?;
        let rls_search_path = self
            .rls_search_path
            .iter()
            .map(|schema| quote_simple_name("RLS search path schema", schema))
            .collect::<Result<Vec<_>, _>>()?
            .join(", ");
        let rls_search_path = if rls_search_path.is_empty() {
            "''".to_owned()
        } else {
            rls_search_path
        };
        quote_simple_name("tenant column", &self.tenant_column)?;
        Ok(Scoping {
            schema_prefix: self.schema_prefix,
            shared_schema,
            rls_search_path,
            setting,
            tenant_column: self.tenant_column,
            select: self.select,
        })
    }
}

/// The checked configuration a handle scopes with.
pub(crate) struct Scoping {
    schema_prefix: String,
    shared_schema: Option<String>,
    rls_search_path: String,
    setting: TenantSetting,
    tenant_column: String,
    select: ModeSelector,
}

impl Scoping {
    /// The one simple-query message opening a tenant's transaction: `BEGIN`, then the
    /// transaction-local search path and tenant setting. Both are set in both modes so that
    /// whatever a previous borrower left on the session is overridden.
    pub(crate) fn begin_sql(
        &self,
        tenant: &TenantIdentifier,
        mode: IsolationMode,
    ) -> Result<String, IsolationError> {
        let search_path = match mode {
            IsolationMode::Schema => {
                let schema =
                    DerivedName::new(&self.schema_prefix, tenant, NameTarget::PostgresSchema)?
                        .quoted_postgres();
                match &self.shared_schema {
                    Some(shared) => format!("{schema}, {shared}"),
                    None => schema,
                }
            }
            IsolationMode::Rls => self.rls_search_path.clone(),
            other => return Err(IsolationError::UnsupportedMode(other)),
        };
        Ok(format!(
            "BEGIN; SET LOCAL search_path TO {search_path}; SET LOCAL {} TO {}",
            self.setting,
            quote_literal(tenant.as_str())
        ))
    }
}

/// Tenant isolation on one PostgreSQL runtime pool: every tenant's work runs in a [`TenantTx`]
/// scoped to its schema (schema mode) or its rows (RLS mode), chosen per tenant. Cheap to clone.
/// A [`TenantIsolation`] handle serving `schema` and `rls`; combine it with
/// [`PgTenantPools`](super::PgTenantPools) in a [`HybridIsolation`](crate::HybridIsolation) for
/// `database` tenants.
///
/// ```no_run
/// # async fn demo(tenant: tenancy_core::Tenant) -> Result<(), tenancy_sql::IsolationError> {
/// use tenancy_core::IsolationMode;
/// use tenancy_sql::postgres::{PgIsolation, PgIsolationOptions};
///
/// let isolation = PgIsolation::connect(
///     "postgres://app@localhost/shop",
///     PgIsolationOptions::new().mode(IsolationMode::Rls),
/// )
/// .await?;
/// let mut tx = isolation.begin(&tenant).await?;
/// let orders: Vec<(i64,)> = sqlx::query_as("SELECT id FROM orders").fetch_all(&mut *tx).await?;
/// tx.commit().await?;
/// # let _ = orders; Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgIsolation {
    pool: PgPool,
    scoping: Arc<Scoping>,
}

impl fmt::Debug for PgIsolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgIsolation")
            .field("pool", &self.pool)
            .field("schema_prefix", &self.scoping.schema_prefix)
            .field("setting", &self.scoping.setting)
            .finish_non_exhaustive()
    }
}

impl PgIsolation {
    /// Connects a runtime pool with sqlx's default pool options plus
    /// [`PgIsolationOptions::pool_options`].
    pub async fn connect(url: &str, options: PgIsolationOptions) -> Result<Self, IsolationError> {
        let connect: PgConnectOptions = url.parse()?;
        let pool = options
            .pool_options(PgPoolOptions::new())?
            .connect_with(connect)
            .await
            .map_err(connection_error)?;
        Self::from_pool(pool, options)
    }

    /// Uses an existing pool. Build it with [`PgIsolationOptions::pool_options`]: without the
    /// `after_release` hook, connections still never go back inside a tenant's transaction
    /// (the [`TenantTx`] guarantees that), but session-level `SET`s committed by user code stay
    /// on the session for plain (non-tenant) use of the pool; without
    /// `test_before_acquire(false)` every checkout costs a ping round trip.
    pub fn from_pool(pool: PgPool, options: PgIsolationOptions) -> Result<Self, IsolationError> {
        Ok(Self {
            pool,
            scoping: Arc::new(options.build()?),
        })
    }

    /// The runtime pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The custom setting carrying the tenant identifier.
    pub fn setting(&self) -> &TenantSetting {
        &self.scoping.setting
    }

    /// The mode the handle uses for `tenant`.
    pub fn mode_for(&self, tenant: &Tenant) -> IsolationMode {
        (self.scoping.select)(tenant)
    }

    /// The schema of `tenant` in schema mode.
    pub fn schema_name(&self, tenant: &TenantIdentifier) -> Result<DerivedName, IsolationError> {
        Ok(DerivedName::new(
            &self.scoping.schema_prefix,
            tenant,
            NameTarget::PostgresSchema,
        )?)
    }

    /// Opens a transaction scoped to `tenant` in the mode chosen for it. One round trip after
    /// the checkout (`BEGIN` and the scope in one message); see [`TenantTx`].
    pub async fn begin(&self, tenant: &Tenant) -> Result<PgTenantTx, IsolationError> {
        self.begin_in(&tenant.identifier, self.mode_for(tenant))
            .await
    }

    /// Opens a transaction scoped to `tenant` in `mode` (`schema` or `rls`).
    pub async fn begin_in(
        &self,
        tenant: &TenantIdentifier,
        mode: IsolationMode,
    ) -> Result<PgTenantTx, IsolationError> {
        let begin_sql = AssertSqlSafe(self.scoping.begin_sql(tenant, mode)?).into_sql_str();
        let conn = self.pool.acquire().await.map_err(connection_error)?;
        let conn = TenantConnection::new(conn, tenant.clone(), None);
        TenantTx::begin(conn, mode, Some(begin_sql)).await
    }

    /// Runs `work` in a transaction scoped to `tenant` and commits it. If a statement fails
    /// with `cached plan must not change result type` (tenant schemas of different shapes, see
    /// [`is_stale_plan_error`]), the transaction is restarted once on a cleared statement cache
    /// and `work` runs again.
    ///
    /// ```no_run
    /// # async fn demo(isolation: tenancy_sql::postgres::PgIsolation, tenant: tenancy_core::Tenant)
    /// # -> Result<(), tenancy_sql::IsolationError> {
    /// let count: i64 = isolation
    ///     .transaction(&tenant, |tx| {
    ///         Box::pin(async move {
    ///             sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&mut **tx).await
    ///         })
    ///     })
    ///     .await?;
    /// # let _ = count; Ok(()) }
    /// ```
    pub async fn transaction<T, F>(&self, tenant: &Tenant, mut work: F) -> Result<T, IsolationError>
    where
        F: for<'t> FnMut(&'t mut PgTenantTx) -> BoxFuture<'t, Result<T, sqlx::Error>> + Send,
        T: Send,
    {
        let mut tx = self.begin(tenant).await?;
        let value = match work(&mut tx).await {
            Ok(value) => value,
            Err(error) if is_stale_plan_error(&error) => {
                tx.restart_with_fresh_statements().await?;
                work(&mut tx).await?
            }
            Err(error) => return Err(error.into()),
        };
        tx.commit().await?;
        Ok(value)
    }

    /// Creates the schema of `tenant` if it does not exist (`CREATE SCHEMA IF NOT EXISTS`,
    /// quoted) and returns its name.
    pub async fn create_tenant_schema(
        &self,
        conn: &mut PgConnection,
        tenant: &TenantIdentifier,
    ) -> Result<DerivedName, IsolationError> {
        let schema = self.schema_name(tenant)?;
        let sql = format!("CREATE SCHEMA IF NOT EXISTS {}", schema.quoted_postgres());
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn).await?;
        Ok(schema)
    }

    /// Drops the schema of `tenant` and everything in it (`DROP SCHEMA IF EXISTS .. CASCADE`).
    pub async fn drop_tenant_schema(
        &self,
        conn: &mut PgConnection,
        tenant: &TenantIdentifier,
    ) -> Result<(), IsolationError> {
        let schema = self.schema_name(tenant)?;
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", schema.quoted_postgres());
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn).await?;
        Ok(())
    }

    /// Deletes the rows of `tenant` from the shared `tables` (`table` or `schema.table`) in one
    /// transaction, with the tenant bound as a parameter and the tenant setting set, so it works
    /// for roles subject to forced RLS as well as for superusers. Returns the rows deleted.
    ///
    /// Cancelling the returned future can leave `conn` inside the transaction: drop or close
    /// such a connection rather than reusing it.
    pub async fn delete_tenant_rows(
        &self,
        conn: &mut PgConnection,
        tenant: &TenantIdentifier,
        tables: &[&str],
    ) -> Result<u64, IsolationError> {
        let column = quote_postgres_ident(&self.scoping.tenant_column);
        let statements = tables
            .iter()
            .map(|table| {
                Ok(format!(
                    "DELETE FROM {} WHERE {column} = $1",
                    quote_table_name(table)?
                ))
            })
            .collect::<Result<Vec<_>, IsolationError>>()?;
        let begin = format!(
            "BEGIN; SET LOCAL {} TO {}",
            self.scoping.setting,
            quote_literal(tenant.as_str())
        );
        let mut tx = conn.begin_with(AssertSqlSafe(begin)).await?;
        let mut deleted = 0;
        for statement in statements {
            deleted += sqlx::query(AssertSqlSafe(statement))
                .bind(tenant.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(deleted)
    }
}

impl TenantIsolation for PgIsolation {
    type Database = Postgres;

    fn mode_for(&self, tenant: &Tenant) -> IsolationMode {
        PgIsolation::mode_for(self, tenant)
    }

    fn begin_in_mode<'a>(
        &'a self,
        tenant: &'a Tenant,
        mode: IsolationMode,
    ) -> BoxFuture<'a, Result<PgTenantTx, IsolationError>> {
        Box::pin(self.begin_in(&tenant.identifier, mode))
    }
}
