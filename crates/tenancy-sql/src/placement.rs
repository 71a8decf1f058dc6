//! Database-per-tenant across several servers: [`PlacedPools`] sends each tenant to the server
//! its registry entry names in [`Tenant::placement`], or to a default server when it names none.
//!
//! Servers are named (`TENANCY_DATABASE_SERVERS=eu=postgres://..,us=postgres://..`, see
//! [`TenancyConfig::database_servers`]). A tenant placed on a name that is not configured gets
//! [`IsolationError::UnknownServer`]: never the default server, where its database is not, and
//! where a tenant of the same identifier could live.
//!
//! # Design
//! [`DatabaseLocator::connect_options`] sees only the identifier, so the placement is resolved
//! one level up: [`PlacedPools`] is a [`TenantIsolation`] handle holding one [`TenantPools`]
//! per server, and [`begin`](TenantIsolation::begin) picks the pools by the [`Tenant`] it is
//! given (one hash lookup by borrowed name, no allocation, no lock). Each server's pools keep
//! their own cache and their own connection budget: the budget protects one server's
//! connection limit, so it applies per server, and the process may hold the sum of them.
//!
//! A tenant moved to another server must be served by a fresh `Tenant` value (the registry
//! entry read after the move); its pool on the old server expires with the pool idle expiry,
//! or sooner with [`TenantPools::evict`] on the old server's pools.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tenancy_core::config::SecretUrl;
use tenancy_core::{IsolationMode, TenancyConfig, Tenant};

use crate::database_per_tenant::{DatabaseLocator, TenantPoolSettings, TenantPools};
use crate::isolation::TenantIsolation;
use crate::isolation_error::IsolationError;
use crate::tx::TenantTx;

/// Tenant pools on several servers, chosen per tenant by its placement; see the
/// [module documentation](self). Cheap to clone (shared).
///
/// ```
/// use tenancy_core::{NewTenant, TenantIdentifier};
/// use tenancy_sql::IsolationError;
/// use tenancy_sql::database_per_tenant::{DatabaseLocator, TenantPoolSettings, TenantPools};
/// use tenancy_sql::placement::PlacedPools;
///
/// fn placed<L: DatabaseLocator>(default: L, eu: L) -> PlacedPools<L> {
///     PlacedPools::new(TenantPools::new(default, TenantPoolSettings::default()))
///         .with_server("eu", TenantPools::new(eu, TenantPoolSettings::default()))
/// }
///
/// fn check<L: DatabaseLocator>(pools: &PlacedPools<L>) {
///     let mut tenant = NewTenant::new(TenantIdentifier::parse("acme").unwrap(), "Acme")
///         .into_tenant();
///     tenant.placement = Some("mars".to_owned());
///     assert!(matches!(
///         pools.pools_for(&tenant),
///         Err(IsolationError::UnknownServer { name }) if name == "mars"
///     ));
/// }
/// ```
pub struct PlacedPools<L: DatabaseLocator> {
    default: TenantPools<L>,
    servers: Arc<HashMap<String, TenantPools<L>>>,
}

impl<L: DatabaseLocator> PlacedPools<L> {
    /// Serves every tenant without a placement from `default`; no named server yet.
    pub fn new(default: TenantPools<L>) -> Self {
        Self {
            default,
            servers: Arc::new(HashMap::new()),
        }
    }

    /// Serves tenants placed on `name` from `pools` (replacing an earlier server of that name).
    pub fn with_server(mut self, name: impl Into<String>, pools: TenantPools<L>) -> Self {
        Arc::make_mut(&mut self.servers).insert(name.into(), pools);
        self
    }

    /// Pools for `default` and for every server of [`TenancyConfig::database_servers`], whose
    /// locators `locate` builds from the server's name and URL (for PostgreSQL:
    /// `|_, url| PgDatabaseLocator::from_url(url.expose(), &config.database_prefix)`); every
    /// server's pools are sized by [`TenantPoolSettings::from_config`].
    pub fn from_config(
        config: &TenancyConfig,
        default: L,
        mut locate: impl FnMut(&str, &SecretUrl) -> Result<L, IsolationError>,
    ) -> Result<Self, IsolationError> {
        let settings = TenantPoolSettings::from_config(config);
        let mut placed = Self::new(TenantPools::new(default, settings.clone()));
        for (name, url) in &config.database_servers {
            let pools = TenantPools::new(locate(name, url)?, settings.clone());
            placed = placed.with_server(name.clone(), pools);
        }
        Ok(placed)
    }

    /// The pools of the server named `placement`, or the default server's for `None`.
    pub fn server(&self, placement: Option<&str>) -> Result<&TenantPools<L>, IsolationError> {
        match placement {
            None => Ok(&self.default),
            Some(name) => self
                .servers
                .get(name)
                .ok_or_else(|| IsolationError::UnknownServer {
                    name: name.to_owned(),
                }),
        }
    }

    /// The pools of the server holding `tenant`'s database, by its placement.
    pub fn pools_for(&self, tenant: &Tenant) -> Result<&TenantPools<L>, IsolationError> {
        self.server(tenant.placement.as_deref())
    }

    /// The default server's pools.
    pub fn default_pools(&self) -> &TenantPools<L> {
        &self.default
    }

    /// The named servers and their pools, in no particular order.
    pub fn servers(&self) -> impl Iterator<Item = (&str, &TenantPools<L>)> {
        self.servers
            .iter()
            .map(|(name, pools)| (name.as_str(), pools))
    }

    /// Begins a transaction on `tenant`'s database, on the server of its placement.
    pub async fn begin(&self, tenant: &Tenant) -> Result<TenantTx<L::Database>, IsolationError> {
        self.pools_for(tenant)?.begin(&tenant.identifier).await
    }
}

impl<L: DatabaseLocator> Clone for PlacedPools<L> {
    fn clone(&self) -> Self {
        Self {
            default: self.default.clone(),
            servers: Arc::clone(&self.servers),
        }
    }
}

impl<L: DatabaseLocator> fmt::Debug for PlacedPools<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.servers.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("PlacedPools")
            .field("servers", &names)
            .finish_non_exhaustive()
    }
}

impl<L: DatabaseLocator> TenantIsolation for PlacedPools<L> {
    type Database = L::Database;

    fn mode_for(&self, _tenant: &Tenant) -> IsolationMode {
        IsolationMode::Database
    }

    fn begin_in_mode<'a>(
        &'a self,
        tenant: &'a Tenant,
        mode: IsolationMode,
    ) -> BoxFuture<'a, Result<TenantTx<L::Database>, IsolationError>> {
        Box::pin(async move {
            match mode {
                IsolationMode::Database => PlacedPools::begin(self, tenant).await,
                other => Err(IsolationError::UnsupportedMode(other)),
            }
        })
    }
}
