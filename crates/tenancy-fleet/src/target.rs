//! Where tenant migrations go: the [`MigrationTarget`] trait a backend implements (a schema per
//! tenant, a SQLite file per tenant, later a PostgreSQL or MariaDB database per tenant), and its
//! errors.

use async_trait::async_trait;
use tenancy_core::{BoxError, DerivedNameError, Tenant};

/// Why migrating one tenant failed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The tenant's schema, database or file name could not be derived.
    #[error("cannot derive the tenant's name: {0}")]
    Name(#[from] DerivedNameError),
    /// The ledger is inconsistent with the migrations, or a migration failed.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database driver failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The tenant's database could not be found, created or reached (database-per-tenant).
    #[error(transparent)]
    TenantDatabase(#[from] tenancy_sql::IsolationError),
    /// Any other failure of a target.
    #[error("{0}")]
    Other(BoxError),
}

/// A failed [`MigrationTarget::apply`]: the error, and the migrations applied before it (a run
/// stops at the first failing migration; those before it stay applied).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct ApplyFailure {
    /// Versions applied before the failure, ascending.
    pub applied: Vec<i64>,
    /// What failed.
    #[source]
    pub error: TargetError,
}

impl<E: Into<TargetError>> From<E> for ApplyFailure {
    fn from(error: E) -> Self {
        Self {
            applied: Vec::new(),
            error: error.into(),
        }
    }
}

/// Something that holds a ledger per tenant and can migrate one tenant at a time.
///
/// Implementations keep the ledger with the tenant's data (its schema, file or database), take
/// a lock per tenant so that tenants migrate in parallel while two runs on the same tenant
/// apply each migration once, and leave no tenant state on pooled connections (also when the
/// future is dropped half-way).
#[async_trait]
pub trait MigrationTarget: Send + Sync {
    /// The versions `tenant` still needs, ascending. Changes nothing (a missing schema or file
    /// means every migration is pending).
    async fn pending(&self, tenant: &Tenant) -> Result<Vec<i64>, TargetError>;

    /// Applies what `tenant` still needs (creating its schema or file if missing) and returns
    /// the versions applied, ascending; empty when it was already current.
    async fn apply(&self, tenant: &Tenant) -> Result<Vec<i64>, ApplyFailure>;
}
