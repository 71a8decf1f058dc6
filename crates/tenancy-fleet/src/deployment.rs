//! One place that turns a [`TenancyConfig`] into a running deployment: the tenant registry, the
//! isolation handle requests use, the provisioner the tenant manager registers tenants with, and
//! the fleet migration target. A server and an admin CLI built on [`Deployment::connect`] agree
//! on where every tenant lives.
//!
//! | `TENANCY_DATABASE_URL` | isolation | registry | tenants live in |
//! |---|---|---|---|
//! | unset | database | `<data dir>/registry.db` | a SQLite file each under `<data dir>/tenants` |
//! | `postgres://…` | `schema` (default) | admin URL | a schema each |
//! | `postgres://…` | `rls` | admin URL | shared tables guarded by row-level security |
//! | `postgres://…` | `database` | admin URL | a database each, on the server of the tenant's placement |
//! | `postgres://…` | `hybrid` | admin URL | by override or tier (`TENANCY_HYBRID_TIER_ISOLATION`) |
//!
//! The data directory is `TENANCY_SQLITE_DATA_DIR` unless the caller passes another one.
//!
//! Database tenants on PostgreSQL may be placed on several servers (`TENANCY_DATABASE_SERVERS`,
//! a tenant's [`placement`](Tenant::placement)): requests, provisioning, purging and migrations
//! of each tenant go to the server it is placed on, and a placement naming no configured server
//! is an error, never the default server (see [`PgDatabaseServers`]). Where no tenant has a
//! database on a PostgreSQL server (SQLite, MariaDB/MySQL, PostgreSQL without `database` among
//! the modes), [`Deployment::connect`] refuses `TENANCY_DATABASE_SERVERS`.
//!
//! With row-level security, the tenant tables are every table with the tenant column
//! (`TENANCY_RLS_TENANT_COLUMN`) outside the system schemas and the registry: exactly the tables
//! [`audit_rls`] checks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::Postgres;
use sqlx::postgres::{PgPool, PgPoolOptions};
use tenancy_core::manager::{LifecycleHook, Provisioner};
use tenancy_core::{
    Backend, BoxError, IsolationMode, NewTenant, SecretUrl, TenancyConfig, Tenant, TenantStore,
};
use tenancy_sql::database_per_tenant::TenantPoolSettings;
use tenancy_sql::placement::PlacedPools;
use tenancy_sql::postgres::{
    PgDatabaseLocator, PgIsolation, PgIsolationOptions, PgStore, RlsProblem, TenantSetting,
    apply_rls_policy, audit_rls, grant_tenant_tables,
};
use tenancy_sql::sqlite::{SqliteLocator, SqliteStore, SqliteTenantPools};
use tenancy_sql::{HybridIsolation, TenantIsolation};
use tokio::sync::OnceCell;

use crate::migrations::TenantMigrations;
use crate::postgres::{PgDatabaseServers, PgDatabaseTarget, PgSchemaTarget, PgSharedMigrations};
use crate::provision::{
    HybridProvisioner, PgDatabaseProvisioner, PgRlsProvisioner, PgSchemaProvisioner,
    SqliteDatabaseProvisioner,
};
use crate::sqlite::SqliteTarget;
use crate::target::{ApplyFailure, MigrationTarget, TargetError};
#[cfg(feature = "mysql")]
use crate::{mysql::MySqlDatabaseTarget, provision::MySqlDatabaseProvisioner};
#[cfg(feature = "mysql")]
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
#[cfg(feature = "mysql")]
use tenancy_sql::mysql::{MySqlDatabaseLocator, MySqlStore, MySqlTenantPools};

/// Why a deployment could not be set up. Each message names the variable to fix.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    /// `TENANCY_DATABASE_URL` names a database these deployments do not run on.
    #[error("TENANCY_DATABASE_URL: {0}")]
    UnsupportedDatabase(&'static str),
    /// The SQLite data directory could not be created.
    #[error("cannot create the data directory '{path}' (TENANCY_SQLITE_DATA_DIR): {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A step of the set-up failed.
    #[error("{what} ({variable}): {source}")]
    Setup {
        /// What was being set up.
        what: &'static str,
        /// The variable whose setting or server is concerned.
        variable: &'static str,
        /// Why it failed.
        #[source]
        source: BoxError,
    },
    /// Row-level security would not confine the runtime role; the deployment refuses to run.
    #[error(
        "row-level security would not confine the runtime role '{role}':\n  - {}\n\
         Connect TENANCY_DATABASE_URL as a role that is not superuser, has no BYPASSRLS and owns \
         no tenant table, and TENANCY_ADMIN_DATABASE_URL as the role that owns them.",
        .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  - ")
    )]
    RlsRefused {
        /// The runtime role (of `TENANCY_DATABASE_URL`).
        role: String,
        /// Every problem the audit found.
        problems: Vec<RlsProblem>,
    },
    /// The operation needs PostgreSQL.
    #[error("{0} needs PostgreSQL: set TENANCY_DATABASE_URL to a postgres:// URL")]
    NeedsPostgres(&'static str),
    /// `TENANCY_DATABASE_SERVERS` is set where no tenant has a database on a PostgreSQL
    /// server; the deployment refuses rather than serve every tenant from one server.
    #[error(
        "TENANCY_DATABASE_SERVERS is set, but {0}; unset TENANCY_DATABASE_SERVERS or place \
         tenants with PostgreSQL database isolation"
    )]
    DatabaseServersUnsupported(&'static str),
}

/// Wraps any error as the source of a [`DeploymentError::Setup`].
fn setup<E: Into<BoxError>>(
    what: &'static str,
    variable: &'static str,
) -> impl FnOnce(E) -> DeploymentError {
    move |error| DeploymentError::Setup {
        what,
        variable,
        source: error.into(),
    }
}

/// The placements a deployment can serve: the names of `TENANCY_DATABASE_SERVERS` (see
/// [`Deployment::placement_check`]).
struct KnownPlacements {
    servers: Vec<String>,
}

#[async_trait]
impl LifecycleHook for KnownPlacements {
    async fn before_register(&self, new: &NewTenant) -> Result<(), BoxError> {
        let Some(placement) = new.placement.as_deref() else {
            return Ok(());
        };
        if self.servers.iter().any(|server| server == placement) {
            return Ok(());
        }
        let known = if self.servers.is_empty() {
            "none".to_owned()
        } else {
            self.servers.join(", ")
        };
        Err(format!(
            "placement '{placement}' names no database server of this deployment \
             (TENANCY_DATABASE_SERVERS: {known})"
        )
        .into())
    }
}

/// The migrations a deployment works with.
///
/// - `tenant`: each tenant's own schema, database or file (schema, database and hybrid modes),
///   applied when a tenant is provisioned. Without them, provisioning such a tenant fails with
///   a message naming `TENANCY_MIGRATIONS_DIR`; purging still works.
/// - `shared`: the shared tables of RLS tenants. Given to [`Deployment::connect`], they are
///   applied at start-up, then every tenant table gets the policy and the runtime role its
///   grants, and the deployment refuses to run unless [`audit_rls`] passes.
#[derive(Debug, Clone, Default)]
pub struct DeploymentMigrations {
    /// Migrations of each tenant's own schema, database or file.
    pub tenant: Option<TenantMigrations>,
    /// Migrations of the tables RLS tenants share.
    pub shared: Option<TenantMigrations>,
}

/// The isolation handle requests use, by database.
#[derive(Clone)]
pub enum Isolation {
    /// A SQLite file per tenant.
    Sqlite(SqliteTenantPools),
    /// PostgreSQL: schema, RLS, database per tenant or hybrid.
    Postgres(Arc<dyn TenantIsolation<Database = Postgres>>),
    /// A MariaDB/MySQL database per tenant.
    #[cfg(feature = "mysql")]
    Mysql(MySqlTenantPools),
}

/// The PostgreSQL isolation handle, whichever the mode.
type PgHandle = Arc<dyn TenantIsolation<Database = Postgres>>;

impl std::fmt::Debug for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(pools) => f.debug_tuple("Sqlite").field(pools).finish(),
            Self::Postgres(_) => f.debug_tuple("Postgres").finish_non_exhaustive(),
            #[cfg(feature = "mysql")]
            Self::Mysql(pools) => f.debug_tuple("Mysql").field(pools).finish(),
        }
    }
}

/// What the PostgreSQL side keeps for migrations and audits.
#[derive(Clone)]
struct PgParts {
    admin: PgPool,
    databases: Option<PgDatabaseServers>,
    runtime_role: String,
    /// The runtime role when it differs from the admin role (it then needs grants).
    separate_role: Option<String>,
    setting: TenantSetting,
}

#[derive(Clone)]
enum Parts {
    Sqlite(SqliteTenantPools),
    Postgres(Box<PgParts>),
    #[cfg(feature = "mysql")]
    Mysql {
        admin: MySqlPool,
        pools: MySqlTenantPools,
    },
}

/// A running deployment: registry, isolation, provisioner and migration target, all from one
/// [`TenancyConfig`].
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tenancy_core::TenancyConfig;
/// use tenancy_core::manager::TenantManager;
/// use tenancy_fleet::TenantMigrations;
/// use tenancy_fleet::deployment::{Deployment, DeploymentMigrations};
///
/// let config = TenancyConfig::from_env()?;
/// let migrations = DeploymentMigrations {
///     tenant: Some(TenantMigrations::from_dir("migrations/tenant").await?),
///     shared: None,
/// };
/// let deployment = Deployment::connect(&config, migrations, None).await?;
/// let manager = TenantManager::new(deployment.store(), deployment.provisioner());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Deployment {
    config: TenancyConfig,
    store: Arc<dyn TenantStore>,
    provisioner: Arc<dyn Provisioner>,
    isolation: Isolation,
    parts: Parts,
    description: &'static str,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("description", &self.description)
            .field("isolation", &self.isolation)
            .finish_non_exhaustive()
    }
}

impl Deployment {
    /// Connects what `config` describes and migrates the registry.
    ///
    /// Without `TENANCY_DATABASE_URL` the registry and tenant files live under `sqlite_dir`, or
    /// `config.sqlite_data_dir` when it is `None` (`registry.db` and `tenants/`). With a
    /// PostgreSQL URL the registry lives on the admin URL, requests use a runtime pool on
    /// `TENANCY_DATABASE_URL`, and RLS is prepared and audited when `migrations.shared` is
    /// given (see [`DeploymentMigrations`]). A MariaDB/MySQL URL (feature `mysql`) keeps the
    /// registry on the admin URL and a database per tenant on the runtime URL's server. A SQLite
    /// URL is refused.
    ///
    /// With PostgreSQL and `database` among the modes, each server of
    /// `TENANCY_DATABASE_SERVERS` gets tenant pools and an admin pool, both on that server's URL
    /// (see [`PgDatabaseServers`]); anywhere else that variable is refused with
    /// [`DeploymentError::DatabaseServersUnsupported`].
    pub async fn connect(
        config: &TenancyConfig,
        migrations: DeploymentMigrations,
        sqlite_dir: Option<&Path>,
    ) -> Result<Self, DeploymentError> {
        if !config.database_servers.is_empty() {
            check_database_servers(config)?;
        }
        match config.database_backend() {
            None => {
                let dir = sqlite_dir.unwrap_or(&config.sqlite_data_dir);
                sqlite(config, migrations, dir).await
            }
            Some(Backend::Postgres) => postgres(config, migrations).await,
            Some(Backend::Sqlite) => Err(DeploymentError::UnsupportedDatabase(
                "SQLite tenants are files under TENANCY_SQLITE_DATA_DIR with the registry beside \
                 them; unset TENANCY_DATABASE_URL",
            )),
            #[cfg(feature = "mysql")]
            Some(Backend::Mysql) => mysql(config, migrations).await,
            #[cfg(not(feature = "mysql"))]
            Some(Backend::Mysql) => Err(DeploymentError::UnsupportedDatabase(
                "this build has no MariaDB/MySQL support (feature `mysql` of tenancy-fleet)",
            )),
        }
    }

    /// The tenant registry.
    pub fn store(&self) -> Arc<dyn TenantStore> {
        Arc::clone(&self.store)
    }

    /// Creates and purges tenants' data in the configured isolation.
    pub fn provisioner(&self) -> Arc<dyn Provisioner> {
        Arc::clone(&self.provisioner)
    }

    /// The isolation handle requests use.
    pub fn isolation(&self) -> &Isolation {
        &self.isolation
    }

    /// The admin pool (DDL, provisioning, migrations), with PostgreSQL.
    pub fn admin_pool(&self) -> Option<&PgPool> {
        match &self.parts {
            Parts::Postgres(pg) => Some(&pg.admin),
            _ => None,
        }
    }

    /// The isolation mode of the deployment (`hybrid` when tenants differ).
    pub fn mode(&self) -> IsolationMode {
        self.config.effective_isolation()
    }

    /// What runs, in a few words (for a start-up log).
    pub fn description(&self) -> &'static str {
        self.description
    }

    /// A hook for the [`TenantManager`](tenancy_core::manager::TenantManager) that refuses,
    /// before anything is written, a new tenant whose [`placement`](NewTenant::placement) names
    /// no server of `TENANCY_DATABASE_SERVERS`. Without it such a tenant is registered, then its
    /// provisioning fails and leaves it `provisioning_failed`.
    ///
    /// ```no_run
    /// # async fn run(deployment: tenancy_fleet::deployment::Deployment) {
    /// use tenancy_core::manager::TenantManager;
    ///
    /// let manager = TenantManager::new(deployment.store(), deployment.provisioner())
    ///     .with_hook(deployment.placement_check());
    /// # }
    /// ```
    pub fn placement_check(&self) -> Arc<dyn LifecycleHook> {
        Arc::new(KnownPlacements {
            servers: self
                .config
                .database_servers
                .iter()
                .map(|(name, _)| name.clone())
                .collect(),
        })
    }

    /// The target that brings every tenant up to `migrations`, for [`crate::migrate_all`]:
    /// schema tenants through a [`PgSchemaTarget`], database tenants through a
    /// [`SqliteTarget`] or [`PgDatabaseTarget`], RLS tenants by applying `migrations.shared`
    /// once (then the policy and grants of every tenant table), dispatched per tenant in hybrid
    /// mode. A tenant whose kind of migrations was not given fails with a message saying so.
    pub fn migration_target(&self, migrations: DeploymentMigrations) -> DeploymentTarget {
        let mut target = DeploymentTarget {
            select: Arc::new({
                let config = self.config.clone();
                move |tenant: &Tenant| config.isolation_for(tenant)
            }),
            schema: None,
            rls: None,
            database: None,
        };
        match &self.parts {
            Parts::Sqlite(pools) => {
                target.database = migrations.tenant.map(|tenant| {
                    Arc::new(SqliteTarget::with_pools(pools.clone(), tenant))
                        as Arc<dyn MigrationTarget>
                });
            }
            #[cfg(feature = "mysql")]
            Parts::Mysql { admin, pools } => {
                target.database = migrations.tenant.map(|tenant| {
                    Arc::new(MySqlDatabaseTarget::new(
                        pools.clone(),
                        admin.clone(),
                        tenant,
                    )) as Arc<dyn MigrationTarget>
                });
            }
            Parts::Postgres(pg) => {
                if let Some(tenant) = migrations.tenant {
                    target.schema = schema_target(&self.config, pg, tenant.clone())
                        .ok()
                        .map(|t| Arc::new(t) as Arc<dyn MigrationTarget>);
                    target.database = pg.databases.as_ref().map(|servers| {
                        Arc::new(PgDatabaseTarget::placed(servers.clone(), tenant))
                            as Arc<dyn MigrationTarget>
                    });
                }
                target.rls = migrations.shared.map(|shared| {
                    Arc::new(SharedTablesTarget {
                        shared: PgSharedMigrations::new(pg.admin.clone(), shared),
                        pg: PgParts::clone(pg),
                        column: self.config.rls_tenant_column.clone(),
                        once: OnceCell::new(),
                    }) as Arc<dyn MigrationTarget>
                });
            }
        }
        target
    }

    /// Runs [`audit_rls`] for the runtime role (the role of `TENANCY_DATABASE_URL`'s session)
    /// over the admin pool.
    pub async fn rls_audit(&self) -> Result<(), DeploymentError> {
        let Parts::Postgres(pg) = &self.parts else {
            return Err(DeploymentError::NeedsPostgres(
                "the row-level security audit",
            ));
        };
        audit(pg, &self.config.rls_tenant_column).await
    }
}

async fn audit(pg: &PgParts, column: &str) -> Result<(), DeploymentError> {
    audit_rls(&pg.admin, &pg.runtime_role, &pg.setting, column)
        .await
        .map_err(|problems| DeploymentError::RlsRefused {
            role: pg.runtime_role.clone(),
            problems,
        })
}

async fn sqlite(
    config: &TenancyConfig,
    migrations: DeploymentMigrations,
    dir: &Path,
) -> Result<Deployment, DeploymentError> {
    let tenants_dir = dir.join("tenants");
    std::fs::create_dir_all(&tenants_dir).map_err(|source| DeploymentError::DataDir {
        path: tenants_dir.clone(),
        source,
    })?;
    let registry_url = format!("sqlite://{}?mode=rwc", dir.join("registry.db").display());
    let store = SqliteStore::connect(&registry_url).await.map_err(setup(
        "opening the SQLite registry",
        "TENANCY_SQLITE_DATA_DIR",
    ))?;
    store.migrate().await.map_err(setup(
        "migrating the SQLite registry",
        "TENANCY_SQLITE_DATA_DIR",
    ))?;
    let locator = SqliteLocator::new(tenants_dir, &config.database_prefix)
        .map_err(setup("tenant file names", "TENANCY_DATABASE_PREFIX"))?;
    let pools = SqliteTenantPools::new(locator, TenantPoolSettings::from_config(config));
    let provisioner: Arc<dyn Provisioner> = match migrations.tenant {
        Some(tenant) => Arc::new(SqliteDatabaseProvisioner::new(
            pools.clone(),
            SqliteTarget::with_pools(pools.clone(), tenant),
        )),
        None => Arc::new(WithoutMigrations(Purge::Sqlite(pools.clone()))),
    };
    Ok(Deployment {
        config: config.clone(),
        store: Arc::new(store),
        provisioner,
        isolation: Isolation::Sqlite(pools.clone()),
        parts: Parts::Sqlite(pools),
        description: "SQLite, a database file per tenant",
    })
}

/// MariaDB/MySQL: the registry on the admin URL's database, a database per tenant on the
/// runtime URL's server.
#[cfg(feature = "mysql")]
async fn mysql(
    config: &TenancyConfig,
    migrations: DeploymentMigrations,
) -> Result<Deployment, DeploymentError> {
    let runtime_url = url(config.database_url.as_ref());
    let admin_url = url(config.admin_url());
    let admin = MySqlPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(config.acquire_timeout())
        .connect(&admin_url)
        .await
        .map_err(setup(
            "connecting the admin role",
            "TENANCY_ADMIN_DATABASE_URL",
        ))?;
    let store = MySqlStore::new(admin.clone());
    store.migrate().await.map_err(setup(
        "migrating the MariaDB/MySQL registry",
        "TENANCY_ADMIN_DATABASE_URL",
    ))?;
    let locator = MySqlDatabaseLocator::from_url(&runtime_url, &config.database_prefix)
        .map_err(setup("tenant database names", "TENANCY_DATABASE_PREFIX"))?;
    let pools = MySqlTenantPools::new(locator, TenantPoolSettings::from_config(config));
    let provisioner: Arc<dyn Provisioner> = match migrations.tenant {
        Some(tenant) => Arc::new(MySqlDatabaseProvisioner::new(MySqlDatabaseTarget::new(
            pools.clone(),
            admin.clone(),
            tenant,
        ))),
        None => Arc::new(WithoutMigrations(Purge::MySqlDatabase {
            admin: admin.clone(),
            pools: pools.clone(),
        })),
    };
    Ok(Deployment {
        config: config.clone(),
        store: Arc::new(store),
        provisioner,
        isolation: Isolation::Mysql(pools.clone()),
        parts: Parts::Mysql { admin, pools },
        description: "MariaDB/MySQL, a database per tenant",
    })
}

/// Refuses `TENANCY_DATABASE_SERVERS` (set) where no tenant has a database on a PostgreSQL
/// server.
fn check_database_servers(config: &TenancyConfig) -> Result<(), DeploymentError> {
    let reason = match config.database_backend() {
        Some(Backend::Postgres) if uses(config, IsolationMode::Database) => return Ok(()),
        Some(Backend::Postgres) => {
            "no tenant has a database of its own in this isolation (TENANCY_ISOLATION_STRATEGY, \
             TENANCY_HYBRID_TIER_ISOLATION, TENANCY_HYBRID_DEFAULT_ISOLATION)"
        }
        Some(Backend::Mysql) => "MariaDB/MySQL deployments keep every tenant on one server",
        None | Some(Backend::Sqlite) => "SQLite tenants are files, not databases on a server",
    };
    Err(DeploymentError::DatabaseServersUnsupported(reason))
}

/// Whether some tenant of `config` may be isolated by `wanted`.
fn uses(config: &TenancyConfig, wanted: IsolationMode) -> bool {
    let mode = config.effective_isolation();
    mode == wanted
        || (mode == IsolationMode::Hybrid
            && (config.hybrid_default_isolation == wanted
                || config
                    .hybrid_tier_isolation
                    .iter()
                    .any(|(_, m)| *m == wanted)))
}

fn url(url: Option<&SecretUrl>) -> String {
    url.map(|url| url.expose().to_owned()).unwrap_or_default()
}

async fn postgres(
    config: &TenancyConfig,
    migrations: DeploymentMigrations,
) -> Result<Deployment, DeploymentError> {
    let runtime_url = url(config.database_url.as_ref());
    let admin_variable = if config.admin_database_url.is_some() {
        "TENANCY_ADMIN_DATABASE_URL"
    } else {
        "TENANCY_DATABASE_URL"
    };
    let admin = admin_pool_options(config)
        .connect(&url(config.admin_url()))
        .await
        .map_err(setup("connecting the admin role", admin_variable))?;
    let store = PgStore::new(admin.clone());
    store
        .migrate()
        .await
        .map_err(setup("migrating the PostgreSQL registry", admin_variable))?;

    let mode = config.effective_isolation();
    let options = PgIsolationOptions::from_config(config);
    let runtime_pool = options
        .pool_options(
            PgPoolOptions::new()
                .max_connections(config.pool_max_connections)
                .acquire_timeout(config.acquire_timeout()),
        )
        .map_err(setup("isolation settings", "TENANCY_SHARED_SCHEMA"))?
        .connect(&runtime_url)
        .await
        .map_err(setup("connecting the runtime role", "TENANCY_DATABASE_URL"))?;
    let runtime_role = current_role(&runtime_pool, "TENANCY_DATABASE_URL").await?;
    let admin_role = current_role(&admin, admin_variable).await?;
    let separate_role = (runtime_role != admin_role).then(|| runtime_role.clone());
    let isolation = PgIsolation::from_pool(runtime_pool, options)
        .map_err(setup("isolation settings", "TENANCY_ISOLATION_STRATEGY"))?;
    let setting = TenantSetting::parse(&config.rls_setting)
        .map_err(setup("the tenant setting", "TENANCY_RLS_SETTING"))?;

    let databases = if uses(config, IsolationMode::Database) {
        Some(database_servers(config, &runtime_url, &admin)?)
    } else {
        None
    };
    let pg = PgParts {
        admin: admin.clone(),
        databases,
        runtime_role,
        separate_role,
        setting,
    };

    let schema = if uses(config, IsolationMode::Schema) {
        Some(match &migrations.tenant {
            Some(tenant) => Arc::new(PgSchemaProvisioner::new(
                schema_target(config, &pg, tenant.clone())?,
                pg.separate_role.clone(),
            )) as Arc<dyn Provisioner>,
            None => Arc::new(WithoutMigrations(Purge::Schema {
                admin: admin.clone(),
                isolation: isolation.clone(),
            })),
        })
    } else {
        None
    };
    let rls = if uses(config, IsolationMode::Rls) {
        let tables = match &migrations.shared {
            Some(shared) => {
                PgSharedMigrations::new(admin.clone(), shared.clone())
                    .apply()
                    .await
                    .map_err(setup("migrating the shared tables", admin_variable))?;
                let tables = protect_tenant_tables(&pg, &config.rls_tenant_column).await?;
                audit(&pg, &config.rls_tenant_column).await?;
                tables
            }
            None => tenant_tables(&admin, &config.rls_tenant_column)
                .await
                .map_err(setup("listing the tenant tables", admin_variable))?,
        };
        Some(Arc::new(PgRlsProvisioner::new(
            admin.clone(),
            isolation.clone(),
            tables,
        )) as Arc<dyn Provisioner>)
    } else {
        None
    };
    let database = pg
        .databases
        .as_ref()
        .map(|servers| match &migrations.tenant {
            Some(tenant) => Arc::new(PgDatabaseProvisioner::new(PgDatabaseTarget::placed(
                servers.clone(),
                tenant.clone(),
            ))) as Arc<dyn Provisioner>,
            None => Arc::new(WithoutMigrations(Purge::PgDatabase(servers.clone()))),
        });

    let missing = || {
        setup("provisioning", "TENANCY_ISOLATION_STRATEGY")(format!(
            "the '{mode}' mode has no provisioner"
        ))
    };
    let (handle, provisioner, description): (PgHandle, Arc<dyn Provisioner>, _) = match mode {
        IsolationMode::Schema => (
            Arc::new(isolation),
            schema.ok_or_else(missing)?,
            "PostgreSQL, a schema per tenant",
        ),
        IsolationMode::Rls => (
            Arc::new(isolation),
            rls.ok_or_else(missing)?,
            "PostgreSQL, row-level security",
        ),
        IsolationMode::Database => (
            Arc::new(
                pg.databases
                    .as_ref()
                    .map(|servers| servers.pools().clone())
                    .ok_or_else(missing)?,
            ),
            database.ok_or_else(missing)?,
            "PostgreSQL, a database per tenant",
        ),
        IsolationMode::Hybrid => {
            let select = {
                let config = config.clone();
                move |tenant: &Tenant| config.isolation_for(tenant)
            };
            let mut provisioner = HybridProvisioner::new(select.clone());
            for (mode, part) in [
                (IsolationMode::Schema, schema),
                (IsolationMode::Rls, rls),
                (IsolationMode::Database, database),
            ] {
                if let Some(part) = part {
                    provisioner = provisioner.with(mode, part);
                }
            }
            let handle: PgHandle = match &pg.databases {
                Some(servers) => Arc::new(HybridIsolation::new(
                    isolation,
                    servers.pools().clone(),
                    select,
                )),
                None => Arc::new(isolation),
            };
            (handle, Arc::new(provisioner), "PostgreSQL, hybrid by tier")
        }
    };
    Ok(Deployment {
        config: config.clone(),
        store: Arc::new(store),
        provisioner,
        isolation: Isolation::Postgres(handle),
        parts: Parts::Postgres(Box::new(pg)),
        description,
    })
}

/// The servers of database tenants: the runtime URL's server (administered through `admin`) and
/// each of `TENANCY_DATABASE_SERVERS`.
fn database_servers(
    config: &TenancyConfig,
    runtime_url: &str,
    admin: &PgPool,
) -> Result<PgDatabaseServers, DeploymentError> {
    let prefix = &config.database_prefix;
    let default = PgDatabaseLocator::from_url(runtime_url, prefix)
        .map_err(setup("tenant database names", "TENANCY_DATABASE_PREFIX"))?;
    let placed = PlacedPools::from_config(config, default, |_, url| {
        PgDatabaseLocator::from_url(url.expose(), prefix)
    })
    .map_err(setup(
        "the tenant database servers",
        "TENANCY_DATABASE_SERVERS",
    ))?;
    Ok(PgDatabaseServers::placed(
        admin.clone(),
        placed,
        admin_pool_options(config),
    ))
}

/// The options of every admin pool.
fn admin_pool_options(config: &TenancyConfig) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(config.acquire_timeout())
}

fn schema_target(
    config: &TenancyConfig,
    pg: &PgParts,
    migrations: TenantMigrations,
) -> Result<PgSchemaTarget, DeploymentError> {
    let target = PgSchemaTarget::new(pg.admin.clone(), migrations)
        .with_prefix(&config.schema_prefix)
        .map_err(setup("tenant schema names", "TENANCY_SCHEMA_PREFIX"))?;
    Ok(match &config.shared_schema {
        Some(shared) => target.with_shared_schema(shared.clone()),
        None => target,
    })
}

async fn current_role(pool: &PgPool, variable: &'static str) -> Result<String, DeploymentError> {
    sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(pool)
        .await
        .map_err(setup("reading the database role", variable))
}

/// Every table with the tenant `column` outside the system schemas and the registry,
/// schema-qualified (quoted where needed).
async fn tenant_tables(admin: &PgPool, column: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) \
         FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
         WHERE a.attname = $1 AND a.attnum > 0 AND NOT a.attisdropped \
           AND c.relkind IN ('r', 'p') \
           AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
           AND NOT (c.relname = ANY ($2)) \
         ORDER BY 1",
    )
    .bind(column)
    .bind(tenancy_sql::REGISTRY_TABLES)
    .fetch_all(admin)
    .await
}

/// Puts every tenant table under the tenant policy and grants the runtime role (when it is not
/// the admin role) DML on them; returns the tables.
async fn protect_tenant_tables(pg: &PgParts, column: &str) -> Result<Vec<String>, DeploymentError> {
    const VARIABLE: &str = "TENANCY_ADMIN_DATABASE_URL";
    let tables = tenant_tables(&pg.admin, column)
        .await
        .map_err(setup("listing the tenant tables", VARIABLE))?;
    let mut conn = pg
        .admin
        .acquire()
        .await
        .map_err(setup("connecting the admin role", VARIABLE))?;
    for table in &tables {
        apply_rls_policy(&mut conn, table, column, &pg.setting)
            .await
            .map_err(setup("applying row-level security policies", VARIABLE))?;
    }
    if let Some(role) = &pg.separate_role
        && !tables.is_empty()
    {
        let names: Vec<&str> = tables.iter().map(String::as_str).collect();
        grant_tenant_tables(&mut conn, role, &names)
            .await
            .map_err(setup("granting the runtime role", "TENANCY_DATABASE_URL"))?;
    }
    Ok(tables)
}

/// How a tenant's data is removed when no tenant migrations were given.
enum Purge {
    Sqlite(SqliteTenantPools),
    Schema {
        admin: PgPool,
        isolation: PgIsolation,
    },
    PgDatabase(PgDatabaseServers),
    #[cfg(feature = "mysql")]
    MySqlDatabase {
        admin: MySqlPool,
        pools: MySqlTenantPools,
    },
}

/// Stands in for a mode's provisioner when no tenant migrations were given: creating a tenant
/// is refused (it would get no tables), purging works.
struct WithoutMigrations(Purge);

#[async_trait]
impl Provisioner for WithoutMigrations {
    async fn provision(&self, _tenant: &Tenant) -> Result<(), BoxError> {
        Err(
            "no tenant migrations are configured: set TENANCY_MIGRATIONS_DIR to the folder of \
             the migrations every new tenant gets"
                .into(),
        )
    }

    async fn purge(&self, tenant: &Tenant) -> Result<(), BoxError> {
        match &self.0 {
            Purge::Sqlite(pools) => pools.drop_tenant_database(&tenant.identifier).await?,
            Purge::Schema { admin, isolation } => {
                let mut conn = admin.acquire().await?;
                isolation
                    .drop_tenant_schema(&mut conn, &tenant.identifier)
                    .await?;
            }
            Purge::PgDatabase(servers) => servers.drop_tenant_database(tenant).await?,
            #[cfg(feature = "mysql")]
            Purge::MySqlDatabase { admin, pools } => {
                let mut conn = admin.acquire().await?;
                pools
                    .drop_tenant_database(&mut conn, &tenant.identifier)
                    .await?;
            }
        }
        Ok(())
    }
}

type ModeSelector = Arc<dyn Fn(&Tenant) -> IsolationMode + Send + Sync>;

/// The fleet migration target of a [`Deployment`] (see [`Deployment::migration_target`]):
/// sends each tenant to the target of its isolation mode.
#[derive(Clone)]
pub struct DeploymentTarget {
    select: ModeSelector,
    schema: Option<Arc<dyn MigrationTarget>>,
    rls: Option<Arc<dyn MigrationTarget>>,
    database: Option<Arc<dyn MigrationTarget>>,
}

impl std::fmt::Debug for DeploymentTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentTarget")
            .field("schema", &self.schema.is_some())
            .field("rls", &self.rls.is_some())
            .field("database", &self.database.is_some())
            .finish_non_exhaustive()
    }
}

impl DeploymentTarget {
    fn for_tenant(&self, tenant: &Tenant) -> Result<&Arc<dyn MigrationTarget>, TargetError> {
        let mode = (self.select)(tenant);
        let target = match mode {
            IsolationMode::Schema => &self.schema,
            IsolationMode::Rls => &self.rls,
            IsolationMode::Database => &self.database,
            IsolationMode::Hybrid => &None,
        };
        target.as_ref().ok_or_else(|| {
            let which = if mode == IsolationMode::Rls {
                "shared-table"
            } else {
                "tenant"
            };
            TargetError::Other(
                format!(
                    "tenant '{}' is isolated by '{mode}', and no {which} migrations were given \
                     for it",
                    tenant.identifier
                )
                .into(),
            )
        })
    }
}

#[async_trait]
impl MigrationTarget for DeploymentTarget {
    async fn pending(&self, tenant: &Tenant) -> Result<Vec<i64>, TargetError> {
        self.for_tenant(tenant)?.pending(tenant).await
    }

    async fn apply(&self, tenant: &Tenant) -> Result<Vec<i64>, ApplyFailure> {
        self.for_tenant(tenant)?.apply(tenant).await
    }
}

/// RLS tenants share their tables: the first of them applies the shared migrations (then the
/// policy and grants of every tenant table), the others find them current.
struct SharedTablesTarget {
    shared: PgSharedMigrations,
    pg: PgParts,
    column: String,
    once: OnceCell<Result<Vec<i64>, String>>,
}

impl SharedTablesTarget {
    async fn apply_and_protect(&self) -> Result<Vec<i64>, String> {
        let applied = self.shared.apply().await.map_err(|e| e.to_string())?;
        protect_tenant_tables(&self.pg, &self.column)
            .await
            .map_err(|e| e.to_string())?;
        Ok(applied)
    }
}

#[async_trait]
impl MigrationTarget for SharedTablesTarget {
    async fn pending(&self, _tenant: &Tenant) -> Result<Vec<i64>, TargetError> {
        self.shared.pending().await
    }

    async fn apply(&self, _tenant: &Tenant) -> Result<Vec<i64>, ApplyFailure> {
        let mut first = false;
        let outcome = self
            .once
            .get_or_init(|| {
                first = true;
                self.apply_and_protect()
            })
            .await;
        match outcome {
            Ok(applied) if first => Ok(applied.clone()),
            Ok(_) => Ok(Vec::new()),
            Err(error) => Err(TargetError::Other(format!("shared tables: {error}").into()).into()),
        }
    }
}
