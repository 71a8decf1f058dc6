//! The shared-database isolation handle: which tenant scope a transaction gets (schema or RLS,
//! per tenant, with an optional statement timeout), the per-tenant concurrency limit on the
//! shared pool, the runtime pool's options, the provisioning primitives of schema and RLS
//! tenants, and the classification of the stale-plan error schema drift causes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, Postgres};
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row, SqlSafeStr};
use tenancy_core::identifier::check_prefix;
use tenancy_core::{
    DerivedName, IsolationMode, NameTarget, TenancyConfig, Tenant, TenantIdentifier,
    quote_postgres_ident,
};

use super::PgTenantTx;
use crate::isolation::{TenantConcurrencyLimit, TenantIsolation};
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
/// How long `begin` waits by default for a slot of a tenant at its concurrency limit
/// ([`PgIsolationOptions::tenant_concurrency_wait`]).
pub const DEFAULT_TENANT_CONCURRENCY_WAIT: Duration = Duration::from_millis(100);

/// The name of the custom PostgreSQL setting that carries the tenant identifier
/// (`app.tenant_id` by default): `[a-z_][a-z0-9_]*.[a-z_][a-z0-9_]*`, at most 63 bytes.
///
/// ```
/// use tenancy_sql::postgres::TenantSetting;
/// assert_eq!(TenantSetting::parse("app.tenant_id").unwrap().as_str(), "app.tenant_id");
/// assert!(TenantSetting::parse("tenant_id").is_err());
/// assert!(TenantSetting::parse("app.tenant'; --").is_err());
/// assert!(TenantSetting::parse("app2.tenant_1").is_ok());
/// assert!(TenantSetting::parse("app.1tenant").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantSetting(Arc<str>);

impl TenantSetting {
    /// Validates a setting name.
    pub fn parse(name: &str) -> Result<Self, IsolationError> {
        let valid_part = |part: &str| {
            part.bytes()
                .enumerate()
                .all(|(i, b)| b.is_ascii_lowercase() || b == b'_' || (i > 0 && b.is_ascii_digit()))
                && !part.is_empty()
        };
        match name.split_once('.') {
            Some((prefix, rest)) if name.len() <= 63 && valid_part(prefix) && valid_part(rest) => {
                Ok(Self(Arc::from(name)))
            }
            _ => Err(IsolationError::invalid_name(
                "tenant setting",
                name,
                "must match [a-z_][a-z0-9_]*.[a-z_][a-z0-9_]* (at most 63 bytes)",
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
/// use std::time::Duration;
/// use tenancy_core::IsolationMode;
/// use tenancy_sql::postgres::PgIsolationOptions;
/// let options = PgIsolationOptions::new()
///     .schema_prefix("t_")
///     .shared_schema("shared")
///     .select_mode(|tenant| tenant.isolation.unwrap_or(IsolationMode::Rls))
///     .statement_timeout(Duration::from_secs(5))
///     .tenant_concurrency_limit(4);
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
    statement_timeout: Option<Duration>,
    tenant_concurrency_limit: Option<u32>,
    tenant_concurrency_wait: Duration,
    reset_on_release: bool,
}

impl fmt::Debug for PgIsolationOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgIsolationOptions")
            .field("schema_prefix", &self.schema_prefix)
            .field("shared_schema", &self.shared_schema)
            .field("rls_search_path", &self.rls_search_path)
            .field("setting", &self.setting)
            .field("tenant_column", &self.tenant_column)
            .field("statement_timeout", &self.statement_timeout)
            .field("tenant_concurrency_limit", &self.tenant_concurrency_limit)
            .field("tenant_concurrency_wait", &self.tenant_concurrency_wait)
            .field("reset_on_release", &self.reset_on_release)
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
    /// `app.tenant_id`, tenant column `tenant_id`, RLS search path `public`; no statement
    /// timeout, no per-tenant concurrency limit; the runtime pool resets sessions on release.
    pub fn new() -> Self {
        Self {
            schema_prefix: DEFAULT_SCHEMA_PREFIX.to_owned(),
            shared_schema: None,
            rls_search_path: vec!["public".to_owned()],
            setting: DEFAULT_TENANT_SETTING.to_owned(),
            tenant_column: DEFAULT_TENANT_COLUMN.to_owned(),
            select: Arc::new(|_| IsolationMode::Schema),
            statement_timeout: None,
            tenant_concurrency_limit: None,
            tenant_concurrency_wait: DEFAULT_TENANT_CONCURRENCY_WAIT,
            reset_on_release: true,
        }
    }

    /// The options `config` asks for: `schema_prefix`, `shared_schema`, `rls_setting`,
    /// `rls_tenant_column`, `statement_timeout_ms`, `tenant_concurrency_limit`,
    /// `pool_reset_on_release`, and the mode
    /// per tenant by [`TenancyConfig::isolation_for`] (a tenant it sends to `database` is
    /// refused with [`IsolationError::UnsupportedMode`]; serve those with a
    /// [`HybridIsolation`](crate::HybridIsolation)). Size the runtime pool from the same config:
    ///
    /// ```
    /// use sqlx::postgres::PgPoolOptions;
    /// use tenancy_core::TenancyConfig;
    /// use tenancy_sql::postgres::PgIsolationOptions;
    ///
    /// let config = TenancyConfig::builder()
    ///     .statement_timeout_ms(2_000)
    ///     .tenant_concurrency_limit(4)
    ///     .build()
    ///     .unwrap();
    /// let options = PgIsolationOptions::from_config(&config);
    /// let pool_options = options
    ///     .pool_options(
    ///         PgPoolOptions::new()
    ///             .max_connections(config.pool_max_connections)
    ///             .acquire_timeout(config.acquire_timeout()),
    ///     )
    ///     .unwrap();
    /// # let _ = pool_options;
    /// ```
    pub fn from_config(config: &TenancyConfig) -> Self {
        let mut options = Self::new()
            .schema_prefix(config.schema_prefix.clone())
            .setting(config.rls_setting.clone())
            .tenant_column(config.rls_tenant_column.clone());
        if let Some(shared) = &config.shared_schema {
            options = options.shared_schema(shared.clone());
        }
        if let Some(timeout) = config.statement_timeout() {
            options = options.statement_timeout(timeout);
        }
        if let Some(limit) = config.tenant_concurrency_limit {
            options = options.tenant_concurrency_limit(limit);
        }
        let config = config.clone();
        options
            .reset_on_release(config.pool_reset_on_release)
            .select_mode(move |tenant| config.isolation_for(tenant))
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

    /// Statements of tenant transactions running longer than `timeout` are cancelled by the
    /// server (SQLSTATE `57014`, `query_canceled`). Set as `SET LOCAL statement_timeout` in
    /// the same message as `BEGIN` (no extra round trip), so it ends with the transaction.
    /// Rounded up to whole milliseconds, at least 1 ms.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = Some(timeout);
        self
    }

    /// At most `limit` concurrent transactions per tenant on the shared pool (noisy-neighbour
    /// protection; keep it below the pool size so other tenants always find a connection). A
    /// tenant's transaction holds a slot from `begin` until it ends; `begin` finding its tenant
    /// at the limit waits at most [`tenant_concurrency_wait`](Self::tenant_concurrency_wait),
    /// then fails with [`IsolationError::TenantBusy`] (transient: HTTP 503 with
    /// `Retry-After`). A limit of 0 counts as 1.
    pub fn tenant_concurrency_limit(mut self, limit: u32) -> Self {
        self.tenant_concurrency_limit = Some(limit);
        self
    }

    /// How long `begin` waits for a slot of a tenant at its concurrency limit;
    /// [`DEFAULT_TENANT_CONCURRENCY_WAIT`] by default.
    pub fn tenant_concurrency_wait(mut self, wait: Duration) -> Self {
        self.tenant_concurrency_wait = wait;
        self
    }

    /// Whether [`pool_options`](Self::pool_options) adds the release reset (true by default).
    ///
    /// Tenant transactions do not need it: every piece of their scope (search path, tenant
    /// setting, statement timeout) is set transaction-locally in the message that begins them,
    /// overriding whatever a previous borrower left on the session, and a [`TenantTx`] never
    /// goes back to the pool inside its transaction. The reset protects the other users of the
    /// runtime pool: plain queries on [`PgIsolation::pool`] see the session defaults even after
    /// user code ran a session-level `SET` inside a tenant transaction, and a connection
    /// left inside a transaction by code outside [`TenantTx`] is discarded. It costs one round
    /// trip per checkout, off the request path but while the connection is still held, so it
    /// lowers the throughput of a saturated pool: turn it off when the runtime pool serves only
    /// tenant transactions.
    pub fn reset_on_release(mut self, reset: bool) -> Self {
        self.reset_on_release = reset;
        self
    }

    /// Adds what the runtime pool needs to `pool` and returns it:
    ///
    /// - `test_before_acquire(false)`: no ping round trip before each checkout; a broken
    ///   connection surfaces as an error of the first statement instead.
    /// - unless [`reset_on_release`](Self::reset_on_release) is off, an `after_release` hook
    ///   that resets `search_path`, the tenant setting and `statement_timeout` (undoing
    ///   session-level `SET`s user code may have committed), drops temporary tables, and
    ///   discards the connection if it is still inside a transaction, in one round trip, off
    ///   the request path.
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
        let pool = pool.test_before_acquire(false);
        if !self.reset_on_release {
            return Ok(pool);
        }
        let release_check: Arc<str> = Arc::from(format!(
            "RESET search_path; RESET {setting}; RESET statement_timeout; DISCARD TEMP; \
             SELECT pg_catalog.now() = pg_catalog.statement_timestamp()"
        ));
        Ok(pool.after_release(move |conn, _meta| {
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
        let statement_timeout = self.statement_timeout.map(|timeout| {
            // PostgreSQL takes at most i32::MAX milliseconds; 0 would mean no timeout.
            let millis = timeout
                .as_micros()
                .div_ceil(1_000)
                .clamp(1, i32::MAX as u128);
            format!("; SET LOCAL statement_timeout TO {millis}")
        });
        // Without a configured timeout, the session default: a session-level timeout that user
        // code left behind does not reach the next tenant.
        Ok(Scoping {
            schema_prefix: self.schema_prefix,
            shared_schema,
            rls_search_path,
            setting,
            tenant_column: self.tenant_column,
            select: self.select,
            statement_timeout: statement_timeout
                .unwrap_or_else(|| "; SET LOCAL statement_timeout TO DEFAULT".to_owned()),
        })
    }

    fn concurrency_limit(&self) -> Option<Arc<TenantConcurrencyLimit>> {
        self.tenant_concurrency_limit.map(|limit| {
            Arc::new(TenantConcurrencyLimit::new(
                limit,
                self.tenant_concurrency_wait,
            ))
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
    /// `; SET LOCAL statement_timeout TO <ms>`, or `TO DEFAULT`.
    statement_timeout: String,
}

impl Scoping {
    /// The one simple-query message opening a tenant's transaction: `BEGIN`, then the
    /// transaction-local search path, tenant setting and statement timeout (the configured one
    /// or the session default). All three are set in both modes so that whatever a previous
    /// borrower left on the session is overridden.
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
        // pg_temp named last: a temporary table some earlier borrower left on the session can
        // never shadow the tenant's tables, which it would as the implicit first entry.
        Ok(format!(
            "BEGIN; SET LOCAL search_path TO {search_path}, pg_temp; SET LOCAL {} TO {}{}",
            self.setting,
            quote_literal(tenant.as_str()),
            self.statement_timeout
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
    concurrency: Option<Arc<TenantConcurrencyLimit>>,
}

impl fmt::Debug for PgIsolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgIsolation")
            .field("pool", &self.pool)
            .field("schema_prefix", &self.scoping.schema_prefix)
            .field("setting", &self.scoping.setting)
            .field("concurrency", &self.concurrency)
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
        let concurrency = options.concurrency_limit();
        Ok(Self {
            pool,
            scoping: Arc::new(options.build()?),
            concurrency,
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
    /// the checkout (`BEGIN` and the scope in one message); see [`TenantTx`]. With a
    /// [per-tenant concurrency limit](PgIsolationOptions::tenant_concurrency_limit), the
    /// tenant's slot is taken before the checkout, so a tenant at its limit waits without
    /// holding a connection (and fails with [`IsolationError::TenantBusy`] after the wait).
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
        let slot = match &self.concurrency {
            Some(limit) => Some(limit.acquire(tenant).await?),
            None => None,
        };
        let conn = self.pool.acquire().await.map_err(connection_error)?;
        let conn = TenantConnection::new(conn, tenant.clone(), None).holding(slot);
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn server_url() -> String {
        let base = std::env::var("TENANCY_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
        format!("{base}/postgres")
    }

    fn tenant(id: &str) -> Tenant {
        tenancy_core::NewTenant::new(TenantIdentifier::parse(id).unwrap(), id).into_tenant()
    }

    async fn isolation(max_connections: u32, options: PgIsolationOptions) -> PgIsolation {
        let pool = options
            .pool_options(
                PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_secs(10)),
            )
            .unwrap()
            .connect(&server_url())
            .await
            .unwrap();
        PgIsolation::from_pool(pool, options).unwrap()
    }

    #[test]
    fn the_statement_timeout_rides_in_the_begin_message() {
        let acme = TenantIdentifier::parse("acme").unwrap();
        let begin = |options: PgIsolationOptions| {
            options
                .build()
                .unwrap()
                .begin_sql(&acme, IsolationMode::Schema)
                .unwrap()
        };
        assert_eq!(
            begin(PgIsolationOptions::new()),
            concat!(
                r#"BEGIN; SET LOCAL search_path TO "tenant_acme", pg_temp; SET LOCAL app.tenant_id TO 'acme'; "#,
                "SET LOCAL statement_timeout TO DEFAULT"
            )
        );
        assert_eq!(
            begin(PgIsolationOptions::new().statement_timeout(Duration::from_millis(1500))),
            concat!(
                r#"BEGIN; SET LOCAL search_path TO "tenant_acme", pg_temp; SET LOCAL app.tenant_id TO 'acme'; "#,
                "SET LOCAL statement_timeout TO 1500"
            )
        );
        // Rounded up, never 0 (which would mean no timeout), at most i32::MAX.
        for (timeout, millis) in [
            (Duration::from_micros(1_200), "2"),
            (Duration::ZERO, "1"),
            (Duration::from_secs(u64::MAX), "2147483647"),
        ] {
            let sql = begin(PgIsolationOptions::new().statement_timeout(timeout));
            assert!(
                sql.ends_with(&format!("; SET LOCAL statement_timeout TO {millis}")),
                "{sql}"
            );
        }
    }

    #[test]
    fn from_config_takes_names_timeout_limit_and_modes() {
        let config = TenancyConfig::builder()
            .pool_reset_on_release(false)
            .schema_prefix("t_")
            .rls_setting("app.tenant")
            .statement_timeout_ms(250)
            .tenant_concurrency_limit(3)
            .isolation_strategy(IsolationMode::Hybrid)
            .build()
            .unwrap();
        let options = PgIsolationOptions::from_config(&config);
        assert_eq!(options.statement_timeout, Some(Duration::from_millis(250)));
        assert_eq!(options.tenant_concurrency_limit, Some(3));
        assert!(!options.reset_on_release);
        let mut premium = tenant("acme");
        premium.tier = "premium".to_owned();
        assert_eq!((options.select)(&premium), IsolationMode::Schema);
        assert_eq!((options.select)(&tenant("globex")), IsolationMode::Rls);
        let scoping = options.build().unwrap();
        assert_eq!(
            scoping
                .begin_sql(&premium.identifier, IsolationMode::Schema)
                .unwrap(),
            concat!(
                r#"BEGIN; SET LOCAL search_path TO "t_acme", pg_temp; SET LOCAL app.tenant TO 'acme'; "#,
                "SET LOCAL statement_timeout TO 250"
            )
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_statement_over_the_timeout_fails_with_57014_and_the_timeout_ends_with_it() {
        let isolation = isolation(
            1,
            PgIsolationOptions::new().statement_timeout(Duration::from_millis(100)),
        )
        .await;
        let acme = tenant("acme");

        let mut tx = isolation.begin(&acme).await.unwrap();
        let in_tx: String = sqlx::query_scalar("SHOW statement_timeout")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(in_tx, "100ms");
        sqlx::query("SELECT pg_sleep(0.01)")
            .execute(&mut *tx)
            .await
            .unwrap();
        let started = Instant::now();
        let error = sqlx::query("SELECT pg_sleep(2)")
            .execute(&mut *tx)
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(
            error.as_database_error().and_then(|e| e.code()).as_deref(),
            Some("57014"),
            "{error}"
        );
        tx.rollback().await.unwrap();

        // Transaction-local: the pooled session is back at the server's default.
        let outside: String = sqlx::query_scalar("SHOW statement_timeout")
            .fetch_one(isolation.pool())
            .await
            .unwrap();
        assert_eq!(outside, "0");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flooding_tenant_is_capped_and_other_tenants_keep_their_connections() {
        let isolation = isolation(
            4,
            PgIsolationOptions::new()
                .tenant_concurrency_limit(2)
                .tenant_concurrency_wait(Duration::from_millis(100)),
        )
        .await;

        // Tenant A starts 6 slow transactions at once.
        let flood: Vec<_> = (0..6)
            .map(|_| {
                let isolation = isolation.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let mut tx = isolation.begin(&tenant("noisy")).await?;
                    sqlx::query("SELECT pg_sleep(1)").execute(&mut *tx).await?;
                    tx.commit().await?;
                    Ok::<_, IsolationError>(started.elapsed())
                })
            })
            .collect();

        // Meanwhile tenant B's short transactions all find a connection at once.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let quiet = tenant("quiet");
        let mut slowest = Duration::ZERO;
        for _ in 0..10 {
            let started = Instant::now();
            let mut tx = isolation.begin(&quiet).await.unwrap();
            let one: i32 = sqlx::query_scalar("SELECT 1")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            assert_eq!(one, 1);
            tx.commit().await.unwrap();
            slowest = slowest.max(started.elapsed());
        }
        assert!(slowest < Duration::from_millis(300), "{slowest:?}");

        let (mut ran, mut busy) = (0, 0);
        for task in flood {
            match task.await.unwrap() {
                Ok(elapsed) => {
                    assert!(elapsed >= Duration::from_secs(1));
                    ran += 1;
                }
                Err(IsolationError::TenantBusy { waited, .. }) => {
                    assert!(waited < Duration::from_millis(500), "{waited:?}");
                    busy += 1;
                }
                Err(other) => panic!("unexpected error: {other}"),
            }
        }
        assert_eq!((ran, busy), (2, 4));
        assert!(
            IsolationError::TenantBusy {
                identifier: TenantIdentifier::parse("noisy").unwrap(),
                waited: Duration::ZERO,
            }
            .is_unavailable()
        );

        // Slots are given back with the transactions.
        let mut again = Vec::new();
        for _ in 0..2 {
            again.push(isolation.begin(&tenant("noisy")).await.unwrap());
        }
    }
}
