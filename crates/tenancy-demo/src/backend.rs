//! Chooses and starts the demo's storage from the configuration: the tenant registry, the
//! isolation handle serving the orders routes, and the provisioner the admin API registers
//! tenants with.
//!
//! | `TENANCY_DATABASE_URL` | `TENANCY_ISOLATION_STRATEGY` | tenants live in |
//! |---|---|---|
//! | unset | (database) | one SQLite file each under `TENANCY_DEMO_DATA_DIR/tenants` |
//! | `postgres://…` | `schema` (default) | a schema each |
//! | `postgres://…` | `rls` | the shared `orders` table, guarded by row-level security |
//! | `postgres://…` | `database` | a database each, on the server of its placement (`TENANCY_DATABASE_SERVERS`) |
//! | `postgres://…` | `hybrid` | by tier (`TENANCY_HYBRID_TIER_ISOLATION`) or override |
//!
//! The wiring itself is `tenancy_fleet::deployment::Deployment`, shared with the `tenancy` CLI;
//! this module adds the demo's embedded migrations, its routes and the request layer.

use std::sync::Arc;

use axum::{Extension, Router};
use sqlx::migrate::{Migration, MigrationType};
use sqlx::{AssertSqlSafe, SqlSafeStr};
use tenancy::axum::TenancyLayerBuilder;
use tenancy::cache::{CacheSettings, TenantCache};
use tenancy::manager::{LifecycleHook, Provisioner};
use tenancy::rate_limit::RateLimiter;
use tenancy::redis::{
    CachedStore, CachedStoreSettings, FailurePolicy, KeyPrefix, LimitPolicy, LocalRateLimiter,
    RedisRateLimiter,
};
use tenancy::sql::{TenantIsolation, isolation_extension};
use tenancy::{Backend as Engine, TenancyConfig, TenantStore};
use tenancy_fleet::TenantMigrations;
use tenancy_fleet::deployment::{Deployment, DeploymentError, DeploymentMigrations, Isolation};

use crate::orders;
use crate::settings::{DemoSettings, StartupError};

/// The storage of a running demo.
pub struct Backend {
    /// The tenant registry.
    pub store: Arc<dyn TenantStore>,
    /// Creates and purges tenants' data.
    pub provisioner: Arc<dyn Provisioner>,
    /// Refuses a new tenant placed on a server the deployment does not have.
    pub placement_check: Arc<dyn LifecycleHook>,
    /// The tenant API, with its isolation handle installed.
    pub tenant_routes: Router,
    /// What runs, for the start-up log.
    pub description: &'static str,
}

/// Starts the storage `config` asks for. The SQLite files live under `TENANCY_DEMO_DATA_DIR`
/// when it is set, else under `TENANCY_SQLITE_DATA_DIR`, where the `tenancy` CLI finds them.
pub async fn start(
    config: &TenancyConfig,
    settings: &DemoSettings,
) -> Result<Backend, StartupError> {
    let migrations = match config.database_backend() {
        Some(Engine::Postgres) => DeploymentMigrations {
            tenant: Some(migrations(include_str!(
                "../migrations/postgres/0001_orders.sql"
            ))?),
            shared: Some(migrations(include_str!(
                "../migrations/postgres-shared/0001_orders.sql"
            ))?),
        },
        Some(Engine::Mysql) => DeploymentMigrations {
            tenant: Some(migrations(include_str!(
                "../migrations/mysql/0001_orders.sql"
            ))?),
            shared: None,
        },
        _ => DeploymentMigrations {
            tenant: Some(migrations(include_str!(
                "../migrations/sqlite/0001_orders.sql"
            ))?),
            shared: None,
        },
    };
    let deployment = Deployment::connect(config, migrations, settings.data_dir.as_deref())
        .await
        .map_err(|error| match error {
            DeploymentError::RlsRefused { .. }
            | DeploymentError::UnsupportedDatabase(_)
            | DeploymentError::DatabaseServersUnsupported(_) => {
                StartupError::Refused(error.to_string())
            }
            error => StartupError::backend("storage", error),
        })?;
    let tenant_routes = match deployment.isolation() {
        Isolation::Sqlite(pools) => routes(isolation_extension(pools.clone())),
        Isolation::Postgres(handle) => routes(Arc::clone(handle)),
        Isolation::Mysql(pools) => routes(isolation_extension(pools.clone())),
    };
    Ok(Backend {
        store: deployment.store(),
        provisioner: deployment.provisioner(),
        placement_check: deployment.placement_check(),
        tenant_routes,
        description: deployment.description(),
    })
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

fn routes<DB: orders::OrderQueries>(isolation: Arc<dyn TenantIsolation<Database = DB>>) -> Router {
    orders::router::<DB>().layer(Extension(isolation))
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
