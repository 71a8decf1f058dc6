//! Chooses and starts the demo's storage from the configuration: the tenant registry, the
//! isolation handle serving the orders routes, and the provisioner the admin API registers
//! tenants with.
//!
//! | `TENANCY_DATABASE_URL` | `TENANCY_ISOLATION_STRATEGY` | tenants live in |
//! |---|---|---|
//! | unset | (database) | one SQLite file each under `TENANCY_DEMO_DATA_DIR/tenants` |
//! | `postgres://…` | `schema` (default) | a schema each |
//! | `postgres://…` | `rls` | the shared `orders` table, guarded by row-level security |
//! | `postgres://…` | `database` | a database each, on the same server |
//! | `postgres://…` | `hybrid` | by tier (`TENANCY_HYBRID_TIER_ISOLATION`) or override |

use std::sync::Arc;

use axum::{Extension, Router};
use sqlx::migrate::{Migration, MigrationType};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, SqlSafeStr};
use tenancy::axum::TenancyLayerBuilder;
use tenancy::cache::{CacheSettings, TenantCache};
use tenancy::manager::{LifecycleHook, Provisioner};
use tenancy::rate_limit::RateLimiter;
use tenancy::redis::{
    CachedStore, CachedStoreSettings, FailurePolicy, KeyPrefix, LimitPolicy, LocalRateLimiter,
    RedisRateLimiter,
};
use tenancy::sql::database_per_tenant::TenantPoolSettings;
use tenancy::sql::postgres::{
    PgDatabaseLocator, PgIsolation, PgIsolationOptions, PgStore, PgTenantPools, TenantSetting,
    apply_rls_policy, audit_rls, grant_tenant_tables,
};
use tenancy::sql::sqlite::{SqliteLocator, SqliteStore, SqliteTenantPools};
use tenancy::sql::{HybridIsolation, TenantIsolation, isolation_extension};
use tenancy::{Backend as Engine, IsolationMode, TenancyConfig, TenantStore};
use tenancy_fleet::TenantMigrations;
use tenancy_fleet::postgres::{PgSchemaTarget, PgSharedMigrations};
use tenancy_fleet::provision::{
    HybridProvisioner, PgDatabaseProvisioner, PgRlsProvisioner, PgSchemaProvisioner,
    SqliteDatabaseProvisioner,
};
use tenancy_fleet::sqlite::SqliteTarget;

use crate::orders;
use crate::settings::{DemoSettings, StartupError};

/// The tables tenants' rows live in (RLS mode).
const TENANT_TABLES: &[&str] = &["orders"];

/// The storage of a running demo.
pub struct Backend {
    /// The tenant registry.
    pub store: Arc<dyn TenantStore>,
    /// Creates and purges tenants' data.
    pub provisioner: Arc<dyn Provisioner>,
    /// The tenant API, with its isolation handle installed.
    pub tenant_routes: Router,
    /// What runs, for the start-up log.
    pub description: &'static str,
}

/// Starts the storage `config` asks for.
pub async fn start(
    config: &TenancyConfig,
    settings: &DemoSettings,
) -> Result<Backend, StartupError> {
    match config.database_backend() {
        None => sqlite(config, settings).await,
        Some(Engine::Postgres) => postgres(config).await,
        Some(Engine::Sqlite) => Err(StartupError::Refused(
            "the demo keeps SQLite files under TENANCY_DEMO_DATA_DIR; unset TENANCY_DATABASE_URL"
                .into(),
        )),
        Some(Engine::Mysql) => Err(StartupError::Refused(
            "MariaDB/MySQL database-per-tenant is not available in the demo yet; use SQLite \
             (no TENANCY_DATABASE_URL) or PostgreSQL"
                .into(),
        )),
    }
}

/// The demo's tenant migrations, one set per database and mode.
fn migrations(sql: &'static str) -> Result<TenantMigrations, StartupError> {
    let migration = Migration::new(
        1,
        "orders".into(),
        MigrationType::Simple,
        AssertSqlSafe(sql).into_sql_str(),
        false,
    );
    TenantMigrations::from_migrations(vec![migration])
        .map_err(|e| StartupError::backend("tenant migrations", e))
}

async fn sqlite(config: &TenancyConfig, settings: &DemoSettings) -> Result<Backend, StartupError> {
    let data_dir = &settings.data_dir;
    std::fs::create_dir_all(data_dir.join("tenants"))
        .map_err(|e| StartupError::backend("creating TENANCY_DEMO_DATA_DIR", e))?;
    let registry_url = format!(
        "sqlite://{}?mode=rwc",
        data_dir.join("registry.db").display()
    );
    let store = SqliteStore::connect(&registry_url)
        .await
        .map_err(|e| StartupError::backend("opening the SQLite registry", e))?;
    store
        .migrate()
        .await
        .map_err(|e| StartupError::backend("migrating the SQLite registry", e))?;

    let locator = SqliteLocator::new(data_dir.join("tenants"), &config.database_prefix)
        .map_err(|e| StartupError::backend("TENANCY_DATABASE_PREFIX", e))?;
    let pools = SqliteTenantPools::new(locator.clone(), TenantPoolSettings::from_config(config));
    let target = SqliteTarget::new(
        locator,
        migrations(include_str!("../migrations/sqlite/0001_orders.sql"))?,
    );
    Ok(Backend {
        store: Arc::new(store),
        provisioner: Arc::new(SqliteDatabaseProvisioner::new(pools.clone(), target)),
        tenant_routes: routes::<sqlx::Sqlite>(pools),
        description: "SQLite, a database file per tenant",
    })
}

fn routes<DB: orders::OrderQueries>(isolation: impl TenantIsolation<Database = DB>) -> Router {
    orders::router::<DB>().layer(Extension(isolation_extension(isolation)))
}

async fn postgres(config: &TenancyConfig) -> Result<Backend, StartupError> {
    let runtime_url = config
        .database_url
        .as_ref()
        .map(|url| url.expose().to_owned())
        .unwrap_or_default();
    let admin_url = config
        .admin_url()
        .map(|url| url.expose().to_owned())
        .unwrap_or_else(|| runtime_url.clone());
    let admin = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(config.acquire_timeout())
        .connect(&admin_url)
        .await
        .map_err(|e| StartupError::backend("connecting TENANCY_ADMIN_DATABASE_URL", e))?;
    let store = PgStore::new(admin.clone());
    store
        .migrate()
        .await
        .map_err(|e| StartupError::backend("migrating the PostgreSQL registry", e))?;

    let mode = config.effective_isolation();
    let options = isolation_options(config, mode);
    let runtime_pool = options
        .pool_options(
            PgPoolOptions::new()
                .max_connections(config.pool_max_connections)
                .acquire_timeout(config.acquire_timeout()),
        )
        .map_err(|e| StartupError::backend("isolation settings", e))?
        .connect(&runtime_url)
        .await
        .map_err(|e| StartupError::backend("connecting TENANCY_DATABASE_URL", e))?;
    let runtime_role = current_role(&runtime_pool).await?;
    let admin_role = current_role(&admin).await?;
    let separate_role = (runtime_role != admin_role).then(|| runtime_role.clone());
    let isolation = PgIsolation::from_pool(runtime_pool, options)
        .map_err(|e| StartupError::backend("isolation settings", e))?;

    let uses = |wanted: IsolationMode| {
        mode == wanted
            || (mode == IsolationMode::Hybrid
                && (config.hybrid_default_isolation == wanted
                    || config
                        .hybrid_tier_isolation
                        .iter()
                        .any(|(_, m)| *m == wanted)))
    };
    let schema = uses(IsolationMode::Schema).then(|| {
        let target = PgSchemaTarget::new(
            admin.clone(),
            migrations(include_str!("../migrations/postgres/0001_orders.sql"))?,
        )
        .with_prefix(&config.schema_prefix)
        .map_err(|e| StartupError::backend("TENANCY_SCHEMA_PREFIX", e))?;
        Ok::<_, StartupError>(
            Arc::new(PgSchemaProvisioner::new(target, separate_role.clone()))
                as Arc<dyn Provisioner>,
        )
    });
    let schema = schema.transpose()?;
    let rls = if uses(IsolationMode::Rls) {
        prepare_rls(config, &admin, &runtime_role, separate_role.as_deref()).await?;
        Some(Arc::new(PgRlsProvisioner::new(
            admin.clone(),
            isolation.clone(),
            TENANT_TABLES.iter().map(|t| (*t).to_owned()).collect(),
        )) as Arc<dyn Provisioner>)
    } else {
        None
    };
    let database = if uses(IsolationMode::Database) {
        let locator = PgDatabaseLocator::from_url(&runtime_url, &config.database_prefix)
            .map_err(|e| StartupError::backend("TENANCY_DATABASE_PREFIX", e))?;
        let pools = PgTenantPools::new(locator, TenantPoolSettings::from_config(config));
        let provisioner = PgDatabaseProvisioner::new(
            pools.clone(),
            admin.clone(),
            migrations(include_str!("../migrations/postgres/0001_orders.sql"))?,
        );
        Some((pools, Arc::new(provisioner) as Arc<dyn Provisioner>))
    } else {
        None
    };

    let (tenant_routes, provisioner, description): (Router, Arc<dyn Provisioner>, _) = match mode {
        IsolationMode::Schema => (
            routes(isolation),
            schema.expect("schema mode provisions schemas"),
            "PostgreSQL, a schema per tenant",
        ),
        IsolationMode::Rls => (
            routes(isolation),
            rls.expect("rls mode provisions rows"),
            "PostgreSQL, row-level security",
        ),
        IsolationMode::Database => {
            let (pools, provisioner) = database.expect("database mode provisions databases");
            (
                routes(pools),
                provisioner,
                "PostgreSQL, a database per tenant",
            )
        }
        IsolationMode::Hybrid => {
            let select = {
                let config = config.clone();
                move |tenant: &tenancy::Tenant| config.isolation_for(tenant)
            };
            let mut provisioner = HybridProvisioner::new(select.clone());
            for (mode, part) in [(IsolationMode::Schema, schema), (IsolationMode::Rls, rls)] {
                if let Some(part) = part {
                    provisioner = provisioner.with(mode, part);
                }
            }
            let routes = match database {
                Some((pools, part)) => {
                    provisioner = provisioner.with(IsolationMode::Database, part);
                    routes(HybridIsolation::new(isolation, pools, select))
                }
                None => routes(isolation),
            };
            (routes, Arc::new(provisioner), "PostgreSQL, hybrid by tier")
        }
    };
    Ok(Backend {
        store: Arc::new(store),
        provisioner,
        tenant_routes,
        description,
    })
}

fn isolation_options(config: &TenancyConfig, mode: IsolationMode) -> PgIsolationOptions {
    let mut options = PgIsolationOptions::new()
        .schema_prefix(config.schema_prefix.clone())
        .setting(config.rls_setting.clone())
        .tenant_column(config.rls_tenant_column.clone());
    if let Some(shared) = &config.shared_schema {
        options = options.shared_schema(shared.clone());
    }
    if mode == IsolationMode::Hybrid {
        let config = config.clone();
        options.select_mode(move |tenant| config.isolation_for(tenant))
    } else {
        options.mode(mode)
    }
}

async fn current_role(pool: &PgPool) -> Result<String, StartupError> {
    sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(pool)
        .await
        .map_err(|e| StartupError::backend("reading the database role", e))
}

/// Creates the shared tables, their policies and grants, then refuses to go on unless the
/// runtime role is really confined by row-level security.
async fn prepare_rls(
    config: &TenancyConfig,
    admin: &PgPool,
    runtime_role: &str,
    separate_role: Option<&str>,
) -> Result<(), StartupError> {
    let shared = PgSharedMigrations::new(
        admin.clone(),
        migrations(include_str!(
            "../migrations/postgres-shared/0001_orders.sql"
        ))?,
    );
    shared
        .apply()
        .await
        .map_err(|e| StartupError::backend("migrating the shared tables", e))?;
    let setting = TenantSetting::parse(&config.rls_setting)
        .map_err(|e| StartupError::backend("TENANCY_RLS_SETTING", e))?;
    let mut conn = admin
        .acquire()
        .await
        .map_err(|e| StartupError::backend("connecting TENANCY_ADMIN_DATABASE_URL", e))?;
    for table in TENANT_TABLES {
        apply_rls_policy(&mut conn, table, &config.rls_tenant_column, &setting)
            .await
            .map_err(|e| StartupError::backend("applying row-level security policies", e))?;
    }
    if let Some(role) = separate_role {
        grant_tenant_tables(&mut conn, role, TENANT_TABLES)
            .await
            .map_err(|e| StartupError::backend("granting the runtime role", e))?;
    }
    if let Err(problems) = audit_rls(
        &mut *conn,
        runtime_role,
        &setting,
        &config.rls_tenant_column,
    )
    .await
    {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(StartupError::Refused(format!(
            "row-level security would not confine the runtime role '{runtime_role}':\n  - {}\n\
             Connect TENANCY_DATABASE_URL as a role that is not superuser, has no BYPASSRLS and \
             owns no tenant table, and TENANCY_ADMIN_DATABASE_URL as the role that owns them.",
            list.join("\n  - ")
        )));
    }
    Ok(())
}

/// What the request layer needs: the tenant cache (with Redis behind it when configured), the
/// layer itself, and the lifecycle hooks that keep caches in step with the registry.
pub struct TenancyServices {
    /// The tower layer resolving and gating tenants.
    pub layer: tenancy::axum::TenancyLayer,
    /// Hooks for the tenant manager.
    pub hooks: Vec<Arc<dyn LifecycleHook>>,
}

/// Builds the request layer from `config`, with the Redis cache and limiter when
/// `TENANCY_REDIS_URL` is set.
pub async fn tenancy_services(
    config: &TenancyConfig,
    store: Arc<dyn TenantStore>,
) -> Result<TenancyServices, StartupError> {
    let redis = match &config.redis_url {
        Some(url) => Some(
            tenancy::redis::redis::Client::open(url.expose())
                .map_err(|e| StartupError::backend("TENANCY_REDIS_URL", e))?,
        ),
        None => None,
    };
    let (cache, hook): (TenantCache, Arc<dyn LifecycleHook>) = match &redis {
        Some(client) => {
            let cached = CachedStore::connect(
                client.clone(),
                store,
                CachedStoreSettings::from_config(config),
            )
            .await
            .map_err(|e| StartupError::backend("connecting TENANCY_REDIS_URL", e))?;
            (cached.cache().clone(), Arc::new(cached))
        }
        None => {
            let cache = TenantCache::new(store, CacheSettings::from_config(config));
            (cache.clone(), Arc::new(cache))
        }
    };
    let mut builder = TenancyLayerBuilder::from_config(config, cache)
        .map_err(|e| StartupError::backend("request layer", e))?
        .exclude("/admin");
    if config.enable_rate_limiting {
        let policy = LimitPolicy::from_config(config);
        let limiter: Arc<dyn RateLimiter> = match &redis {
            Some(client) => {
                let connection = tenancy::redis::connect(client)
                    .await
                    .map_err(|e| StartupError::backend("connecting TENANCY_REDIS_URL", e))?;
                let prefix = KeyPrefix::new(config.redis_key_prefix.clone())
                    .map_err(|e| StartupError::backend("TENANCY_REDIS_KEY_PREFIX", e))?;
                Arc::new(RedisRateLimiter::new(
                    connection,
                    prefix,
                    policy,
                    FailurePolicy::from_config(config),
                ))
            }
            None => Arc::new(LocalRateLimiter::new(policy)),
        };
        builder = builder.rate_limiter(limiter);
    }
    Ok(TenancyServices {
        layer: builder.build(),
        hooks: vec![hook],
    })
}
