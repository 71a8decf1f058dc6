//! The backend-generic isolation handle: [`TenantIsolation`] opens a [`TenantTx`] scoped to a
//! tenant, whichever way the tenant is isolated. Implemented by PostgreSQL schema/RLS isolation
//! (`postgres::PgIsolation`), by database-per-tenant pools ([`TenantPools`]) and by
//! [`HybridIsolation`], which sends each tenant to one of two handles by its isolation mode.
//!
//! [`TenantPools`]: crate::database_per_tenant::TenantPools

use std::fmt;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use sqlx::Database;
use tenancy_core::{IsolationMode, Tenant};

use crate::isolation_error::IsolationError;
use crate::tx::TenantTx;

/// Opens transactions scoped to a tenant. Object safe: an application keeps one
/// `Arc<dyn TenantIsolation<Database = DB>>` (see [`isolation_extension`]) and need not know
/// how tenants are isolated.
///
/// ```
/// use std::sync::Arc;
/// use tenancy_core::Tenant;
/// use tenancy_sql::{IsolationError, TenantIsolation};
///
/// async fn handle<DB: sqlx::Database>(
///     isolation: Arc<dyn TenantIsolation<Database = DB>>,
///     tenant: &Tenant,
/// ) -> Result<(), IsolationError> {
///     let tx = isolation.begin(tenant).await?;
///     // sqlx::query("..").execute(&mut *tx).await?;
///     tx.commit().await
/// }
/// ```
pub trait TenantIsolation: Send + Sync + 'static {
    /// The sqlx database the transactions run on.
    type Database: Database;

    /// The mode this handle uses for `tenant` (`schema`, `rls` or `database`).
    fn mode_for(&self, tenant: &Tenant) -> IsolationMode;

    /// Opens a transaction scoped to `tenant` in `mode`; a mode the handle does not serve is
    /// [`IsolationError::UnsupportedMode`].
    fn begin_in_mode<'a>(
        &'a self,
        tenant: &'a Tenant,
        mode: IsolationMode,
    ) -> BoxFuture<'a, Result<TenantTx<Self::Database>, IsolationError>>;

    /// Opens a transaction scoped to `tenant` in [the mode chosen for it](Self::mode_for).
    fn begin<'a>(
        &'a self,
        tenant: &'a Tenant,
    ) -> BoxFuture<'a, Result<TenantTx<Self::Database>, IsolationError>> {
        self.begin_in_mode(tenant, self.mode_for(tenant))
    }
}

impl<T: TenantIsolation + ?Sized> TenantIsolation for Arc<T> {
    type Database = T::Database;

    fn mode_for(&self, tenant: &Tenant) -> IsolationMode {
        (**self).mode_for(tenant)
    }

    fn begin_in_mode<'a>(
        &'a self,
        tenant: &'a Tenant,
        mode: IsolationMode,
    ) -> BoxFuture<'a, Result<TenantTx<Self::Database>, IsolationError>> {
        (**self).begin_in_mode(tenant, mode)
    }
}

/// Wraps `handle` as the shared trait object the axum extractor of [`TenantTx`] looks for in
/// the request extensions (feature `axum`): `router.layer(Extension(isolation_extension(h)))`.
///
/// ```
/// use std::sync::Arc;
/// use tenancy_sql::{HybridIsolation, TenantIsolation};
///
/// fn extension_of<DB: sqlx::Database>(
///     hybrid: HybridIsolation<DB>,
/// ) -> Arc<dyn TenantIsolation<Database = DB>> {
///     tenancy_sql::isolation_extension(hybrid)
/// }
/// ```
pub fn isolation_extension<I: TenantIsolation>(
    handle: I,
) -> Arc<dyn TenantIsolation<Database = I::Database>> {
    Arc::new(handle)
}

type ModeSelector = Arc<dyn Fn(&Tenant) -> IsolationMode + Send + Sync>;

/// Hybrid isolation: each tenant goes to a shared-database handle (`schema` and `rls`, such as
/// `postgres::PgIsolation`) or a database-per-tenant handle (`database`, such as
/// [`TenantPools`](crate::database_per_tenant::TenantPools)) by the mode a selector picks for
/// it, typically the tenant's override, else its tier's mode:
/// `move |tenant| config.isolation_for(tenant)` with a [`tenancy_core::TenancyConfig`].
/// The shared handle is asked for exactly the mode selected. Cheap to clone.
///
/// ```
/// use tenancy_core::TenancyConfig;
/// use tenancy_sql::{HybridIsolation, TenantIsolation};
///
/// // With PostgreSQL: `shared` a `PgIsolation`, `dedicated` a `PgTenantPools`.
/// fn hybrid<DB: sqlx::Database>(
///     shared: impl TenantIsolation<Database = DB>,
///     dedicated: impl TenantIsolation<Database = DB>,
///     config: TenancyConfig,
/// ) -> HybridIsolation<DB> {
///     HybridIsolation::new(shared, dedicated, move |tenant| config.isolation_for(tenant))
/// }
/// ```
pub struct HybridIsolation<DB: Database> {
    shared: Arc<dyn TenantIsolation<Database = DB>>,
    dedicated: Arc<dyn TenantIsolation<Database = DB>>,
    select: ModeSelector,
}

impl<DB: Database> HybridIsolation<DB> {
    /// Sends `schema` and `rls` tenants to `shared`, `database` tenants to `dedicated`, by the
    /// mode `select` picks (a selector answering `hybrid` makes `begin` fail with
    /// [`IsolationError::UnsupportedMode`]).
    pub fn new(
        shared: impl TenantIsolation<Database = DB>,
        dedicated: impl TenantIsolation<Database = DB>,
        select: impl Fn(&Tenant) -> IsolationMode + Send + Sync + 'static,
    ) -> Self {
        Self {
            shared: Arc::new(shared),
            dedicated: Arc::new(dedicated),
            select: Arc::new(select),
        }
    }
}

impl<DB: Database> Clone for HybridIsolation<DB> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            dedicated: Arc::clone(&self.dedicated),
            select: Arc::clone(&self.select),
        }
    }
}

impl<DB: Database> fmt::Debug for HybridIsolation<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HybridIsolation").finish_non_exhaustive()
    }
}

impl<DB: Database> TenantIsolation for HybridIsolation<DB> {
    type Database = DB;

    fn mode_for(&self, tenant: &Tenant) -> IsolationMode {
        (self.select)(tenant)
    }

    fn begin_in_mode<'a>(
        &'a self,
        tenant: &'a Tenant,
        mode: IsolationMode,
    ) -> BoxFuture<'a, Result<TenantTx<DB>, IsolationError>> {
        match mode {
            IsolationMode::Schema | IsolationMode::Rls => self.shared.begin_in_mode(tenant, mode),
            IsolationMode::Database => self.dedicated.begin_in_mode(tenant, mode),
            IsolationMode::Hybrid => {
                Box::pin(async move { Err(IsolationError::UnsupportedMode(mode)) })
            }
        }
    }
}
