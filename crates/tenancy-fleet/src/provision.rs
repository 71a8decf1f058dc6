//! Provisioners: what [`TenantManager`](tenancy_core::manager::TenantManager) runs to create and
//! remove a tenant's data in each isolation mode.
//!
//! | mode | provision | purge |
//! |---|---|---|
//! | PostgreSQL schema | create the schema, apply the tenant migrations in it, grant the runtime role | drop the schema |
//! | PostgreSQL RLS | nothing: the shared tables exist already | delete the tenant's rows from every tenant table |
//! | database (SQLite file, PostgreSQL database) | create the database (PostgreSQL: on the server of the tenant's placement), apply the tenant migrations | drop the database |
//! | hybrid | whichever of the above the tenant's mode is | the same |
//!
//! Every operation is idempotent, so [`TenantManager::resume`] can run it again after a crash.
//!
//! [`TenantManager::resume`]: tenancy_core::manager::TenantManager::resume

use std::sync::Arc;

use async_trait::async_trait;
use tenancy_core::manager::Provisioner;
use tenancy_core::{BoxError, IsolationMode, Tenant};

#[cfg(feature = "mysql")]
pub use self::mysql::MySqlDatabaseProvisioner;
#[cfg(feature = "postgres")]
pub use self::postgres::{PgDatabaseProvisioner, PgRlsProvisioner, PgSchemaProvisioner};
#[cfg(feature = "sqlite")]
pub use self::sqlite::SqliteDatabaseProvisioner;

/// Applies `target`'s migrations to `tenant`, turning a failure into the manager's error type.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
async fn migrate_tenant(
    target: &dyn crate::target::MigrationTarget,
    tenant: &Tenant,
) -> Result<(), BoxError> {
    target
        .apply(tenant)
        .await
        .map(drop)
        .map_err(|failure| Box::new(failure) as BoxError)
}

/// `GRANT`s giving `role` the DML it needs on everything in `schema` (both already validated or
/// derived names; both quoted here).
#[cfg(feature = "postgres")]
pub(crate) fn schema_grants(schema: &str, role: &str) -> String {
    use tenancy_core::quote_postgres_ident;
    let (schema, role) = (quote_postgres_ident(schema), quote_postgres_ident(role));
    format!(
        "GRANT USAGE ON SCHEMA {schema} TO {role}; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}; \
         GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}"
    )
}

#[cfg(feature = "postgres")]
mod postgres {
    use sqlx::{AssertSqlSafe, PgPool};
    use tenancy_sql::postgres::PgIsolation;

    use super::*;
    use crate::postgres::{PgDatabaseTarget, PgSchemaTarget};

    /// Schema per tenant: the tenant migrations create the schema and its tables.
    #[derive(Debug, Clone)]
    pub struct PgSchemaProvisioner {
        target: PgSchemaTarget,
        runtime_role: Option<String>,
    }

    impl PgSchemaProvisioner {
        /// Provisions through `target` (its admin pool and tenant migrations). When the
        /// application connects as another role than the admin pool, name it in
        /// `runtime_role` so it is granted DML on each new schema.
        pub fn new(target: PgSchemaTarget, runtime_role: Option<String>) -> Self {
            Self {
                target,
                runtime_role,
            }
        }
    }

    #[async_trait]
    impl Provisioner for PgSchemaProvisioner {
        async fn provision(&self, tenant: &Tenant) -> Result<(), BoxError> {
            migrate_tenant(&self.target, tenant).await?;
            if let Some(role) = &self.runtime_role {
                let schema = self.target.schema_name(&tenant.identifier)?;
                sqlx::raw_sql(AssertSqlSafe(schema_grants(schema.as_str(), role)))
                    .execute(self.target.pool())
                    .await?;
            }
            Ok(())
        }

        async fn purge(&self, tenant: &Tenant) -> Result<(), BoxError> {
            let schema = self.target.schema_name(&tenant.identifier)?;
            let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", schema.quoted_postgres());
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(self.target.pool())
                .await?;
            Ok(())
        }
    }

    /// Row-level security: tenants share tables, so there is nothing to create; purge deletes
    /// the tenant's rows from every tenant table.
    #[derive(Debug, Clone)]
    pub struct PgRlsProvisioner {
        admin: PgPool,
        isolation: PgIsolation,
        tables: Vec<String>,
    }

    impl PgRlsProvisioner {
        /// Purges through `admin` (a pool of the DDL role), using `isolation`'s tenant column
        /// and setting, from `tables`.
        pub fn new(admin: PgPool, isolation: PgIsolation, tables: Vec<String>) -> Self {
            Self {
                admin,
                isolation,
                tables,
            }
        }
    }

    #[async_trait]
    impl Provisioner for PgRlsProvisioner {
        async fn provision(&self, _tenant: &Tenant) -> Result<(), BoxError> {
            Ok(())
        }

        async fn purge(&self, tenant: &Tenant) -> Result<(), BoxError> {
            let tables: Vec<&str> = self.tables.iter().map(String::as_str).collect();
            let mut conn = self.admin.acquire().await?;
            self.isolation
                .delete_tenant_rows(&mut conn, &tenant.identifier, &tables)
                .await?;
            Ok(())
        }
    }

    /// A PostgreSQL database per tenant: created and migrated as the admin role of the
    /// tenant's server by a [`PgDatabaseTarget`] (which grants a separate runtime role its
    /// DML), dropped there on purge. A tenant placed on a server that is not configured fails
    /// with [`IsolationError::UnknownServer`](tenancy_sql::IsolationError::UnknownServer).
    #[derive(Debug, Clone)]
    pub struct PgDatabaseProvisioner {
        target: PgDatabaseTarget,
    }

    impl PgDatabaseProvisioner {
        /// Provisions through `target`: creates each tenant's database on its server, then
        /// applies the target's migrations in it.
        pub fn new(target: PgDatabaseTarget) -> Self {
            Self { target }
        }
    }

    #[async_trait]
    impl Provisioner for PgDatabaseProvisioner {
        async fn provision(&self, tenant: &Tenant) -> Result<(), BoxError> {
            migrate_tenant(&self.target, tenant).await
        }

        async fn purge(&self, tenant: &Tenant) -> Result<(), BoxError> {
            self.target.servers().drop_tenant_database(tenant).await?;
            Ok(())
        }
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use tenancy_sql::sqlite::SqliteTenantPools;

    use super::*;
    use crate::sqlite::SqliteTarget;

    /// A SQLite file per tenant: the migrations create the file and its tables.
    #[derive(Debug, Clone)]
    pub struct SqliteDatabaseProvisioner {
        pools: SqliteTenantPools,
        target: SqliteTarget,
    }

    impl SqliteDatabaseProvisioner {
        /// Provisions into `pools`' directory with `target`'s migrations.
        pub fn new(pools: SqliteTenantPools, target: SqliteTarget) -> Self {
            Self { pools, target }
        }
    }

    #[async_trait]
    impl Provisioner for SqliteDatabaseProvisioner {
        async fn provision(&self, tenant: &Tenant) -> Result<(), BoxError> {
            migrate_tenant(&self.target, tenant).await
        }

        async fn purge(&self, tenant: &Tenant) -> Result<(), BoxError> {
            self.pools.drop_tenant_database(&tenant.identifier).await?;
            Ok(())
        }
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;
    use crate::mysql::MySqlDatabaseTarget;

    /// A MariaDB/MySQL database per tenant: the target creates the database and migrates it
    /// under the tenant's migration lock; purge drops it.
    #[derive(Debug, Clone)]
    pub struct MySqlDatabaseProvisioner {
        target: MySqlDatabaseTarget,
    }

    impl MySqlDatabaseProvisioner {
        /// Provisions through `target` (its pools' locator, its admin pool, its migrations).
        pub fn new(target: MySqlDatabaseTarget) -> Self {
            Self { target }
        }
    }

    #[async_trait]
    impl Provisioner for MySqlDatabaseProvisioner {
        async fn provision(&self, tenant: &Tenant) -> Result<(), BoxError> {
            migrate_tenant(&self.target, tenant).await
        }

        async fn purge(&self, tenant: &Tenant) -> Result<(), BoxError> {
            let mut admin = self.target.admin().acquire().await?;
            self.target
                .pools()
                .drop_tenant_database(&mut admin, &tenant.identifier)
                .await?;
            Ok(())
        }
    }
}

type ModeSelector = Arc<dyn Fn(&Tenant) -> IsolationMode + Send + Sync>;

/// Hybrid: each tenant is provisioned by the provisioner of the mode chosen for it (its
/// override, else its tier: `move |t| config.isolation_for(t)`).
#[derive(Clone)]
pub struct HybridProvisioner {
    select: ModeSelector,
    schema: Option<Arc<dyn Provisioner>>,
    rls: Option<Arc<dyn Provisioner>>,
    database: Option<Arc<dyn Provisioner>>,
}

impl std::fmt::Debug for HybridProvisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridProvisioner")
            .field("schema", &self.schema.is_some())
            .field("rls", &self.rls.is_some())
            .field("database", &self.database.is_some())
            .finish_non_exhaustive()
    }
}

impl HybridProvisioner {
    /// A hybrid provisioner choosing by `select`; add one provisioner per mode in use.
    pub fn new(select: impl Fn(&Tenant) -> IsolationMode + Send + Sync + 'static) -> Self {
        Self {
            select: Arc::new(select),
            schema: None,
            rls: None,
            database: None,
        }
    }

    /// Provisions tenants whose mode is `mode` with `provisioner`.
    pub fn with(mut self, mode: IsolationMode, provisioner: Arc<dyn Provisioner>) -> Self {
        match mode {
            IsolationMode::Schema => self.schema = Some(provisioner),
            IsolationMode::Rls => self.rls = Some(provisioner),
            IsolationMode::Database => self.database = Some(provisioner),
            IsolationMode::Hybrid => {}
        }
        self
    }

    fn for_tenant(&self, tenant: &Tenant) -> Result<&Arc<dyn Provisioner>, BoxError> {
        let mode = (self.select)(tenant);
        let provisioner = match mode {
            IsolationMode::Schema => &self.schema,
            IsolationMode::Rls => &self.rls,
            IsolationMode::Database => &self.database,
            IsolationMode::Hybrid => &None,
        };
        provisioner.as_ref().ok_or_else(|| {
            format!(
                "tenant '{}' is to be isolated by '{mode}', which this deployment does not provision",
                tenant.identifier
            )
            .into()
        })
    }
}

#[async_trait]
impl Provisioner for HybridProvisioner {
    async fn provision(&self, tenant: &Tenant) -> Result<(), BoxError> {
        self.for_tenant(tenant)?.provision(tenant).await
    }

    async fn purge(&self, tenant: &Tenant) -> Result<(), BoxError> {
        self.for_tenant(tenant)?.purge(tenant).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tenancy_core::{NewTenant, TenantIdentifier};

    use super::*;

    #[derive(Default)]
    struct Counting(AtomicUsize);

    #[async_trait]
    impl Provisioner for Counting {
        async fn provision(&self, _tenant: &Tenant) -> Result<(), BoxError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn purge(&self, _tenant: &Tenant) -> Result<(), BoxError> {
            Ok(())
        }
    }

    fn tenant(tier: &str) -> Tenant {
        NewTenant::new(TenantIdentifier::parse("acme").unwrap(), "Acme")
            .with_tier(tier)
            .into_tenant()
    }

    #[tokio::test]
    async fn hybrid_dispatches_by_mode_and_refuses_unprovisioned_modes() {
        let schema = Arc::new(Counting::default());
        let rls = Arc::new(Counting::default());
        let hybrid = HybridProvisioner::new(|tenant: &Tenant| match tenant.tier.as_str() {
            "premium" => IsolationMode::Schema,
            "standard" => IsolationMode::Rls,
            _ => IsolationMode::Database,
        })
        .with(IsolationMode::Schema, schema.clone())
        .with(IsolationMode::Rls, rls.clone());
        hybrid.provision(&tenant("premium")).await.unwrap();
        hybrid.provision(&tenant("standard")).await.unwrap();
        hybrid.provision(&tenant("standard")).await.unwrap();
        assert_eq!(schema.0.load(Ordering::SeqCst), 1);
        assert_eq!(rls.0.load(Ordering::SeqCst), 2);
        let err = hybrid.provision(&tenant("other")).await.unwrap_err();
        assert!(err.to_string().contains("'database'"), "{err}");
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn grants_quote_their_names() {
        let sql = schema_grants("tenant_acme", "app\"role");
        assert!(
            sql.contains("ON SCHEMA \"tenant_acme\" TO \"app\"\"role\""),
            "{sql}"
        );
    }
}
