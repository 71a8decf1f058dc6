//! The tenant registry interface every store implements, and its error type.

use std::sync::Arc;

use async_trait::async_trait;

use crate::identifier::TenantIdentifier;
use crate::tenant::{
    FieldError, Metadata, NewTenant, Tenant, TenantId, TenantStatus, TenantUpdate, TransitionError,
};

/// A boxed error from a store's backend (driver, pool, network).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong in a registry operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A tenant with this identifier exists already.
    #[error("tenant '{0}' already exists")]
    AlreadyExists(TenantIdentifier),
    /// Another tenant owns this custom domain.
    #[error("domain '{0}' belongs to another tenant")]
    DomainTaken(String),
    /// No tenant with this identifier.
    #[error("tenant '{0}' not found")]
    NotFound(TenantIdentifier),
    /// The lifecycle does not allow this status change.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// A field of the tenant is not acceptable.
    #[error(transparent)]
    InvalidField(#[from] FieldError),
    /// The registry could not be reached or failed; the request may be retried later.
    /// Never to be read as "not found".
    #[error("tenant registry unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// A stored row could not be read back (corrupt or written by an incompatible version).
    #[error("tenant registry holds an unreadable row: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Wraps a backend error as [`StoreError::Unavailable`].
    pub fn unavailable(error: impl Into<BoxError>) -> Self {
        Self::Unavailable(error.into())
    }
}

/// Which tenants to list, and where to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Only tenants in this status.
    pub status: Option<TenantStatus>,
    /// Keyset paging: only identifiers sorting after this one.
    pub after: Option<TenantIdentifier>,
    /// At most this many (capped at [`ListQuery::MAX_LIMIT`]).
    pub limit: u32,
}

impl ListQuery {
    /// The largest page a store returns.
    pub const MAX_LIMIT: u32 = 1000;

    /// The first page of `limit` tenants of any status.
    pub fn first(limit: u32) -> Self {
        Self {
            status: None,
            after: None,
            limit,
        }
    }

    /// Restricts to one status.
    pub fn with_status(mut self, status: TenantStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Continues after `identifier`.
    pub fn after(mut self, identifier: TenantIdentifier) -> Self {
        self.after = Some(identifier);
        self
    }

    /// The effective page size.
    pub fn effective_limit(&self) -> u32 {
        self.limit.clamp(1, Self::MAX_LIMIT)
    }
}

impl Default for ListQuery {
    fn default() -> Self {
        Self::first(100)
    }
}

/// A tenant registry. Implementations: [`crate::MemoryStore`] here; PostgreSQL, MariaDB/MySQL
/// and SQLite in `tenancy-sql`; Redis and the caching wrapper in their own crates.
///
/// Every implementation passes the same conformance suite (`tests/` in the workspace): creates
/// are race-safe, status changes are atomic compare-and-sets checked against the lifecycle, and
/// metadata merges lose no concurrent update.
#[async_trait]
pub trait TenantStore: Send + Sync + 'static {
    /// The tenant with this identifier, if any.
    async fn get(&self, identifier: &TenantIdentifier) -> Result<Option<Tenant>, StoreError>;

    /// The tenant with this id, if any.
    async fn get_by_id(&self, id: TenantId) -> Result<Option<Tenant>, StoreError>;

    /// The tenant owning this custom domain (lowercase, no trailing dot), if any.
    async fn get_by_domain(&self, domain: &str) -> Result<Option<Tenant>, StoreError>;

    /// Registers a tenant. A duplicate identifier is [`StoreError::AlreadyExists`], also when
    /// two callers race; a taken domain is [`StoreError::DomainTaken`].
    async fn create(&self, new: NewTenant) -> Result<Tenant, StoreError>;

    /// Changes descriptive fields.
    async fn update(
        &self,
        identifier: &TenantIdentifier,
        update: TenantUpdate,
    ) -> Result<Tenant, StoreError>;

    /// Moves the tenant to `status` if the lifecycle allows it from its current status,
    /// atomically.
    async fn set_status(
        &self,
        identifier: &TenantIdentifier,
        status: TenantStatus,
    ) -> Result<Tenant, StoreError>;

    /// Merges `patch` into the tenant's metadata atomically (see [`crate::merge_metadata`]).
    async fn update_metadata(
        &self,
        identifier: &TenantIdentifier,
        patch: Metadata,
    ) -> Result<Tenant, StoreError>;

    /// Removes the tenant's row for good. Returns whether it existed.
    async fn delete(&self, identifier: &TenantIdentifier) -> Result<bool, StoreError>;

    /// A page of tenants ordered by identifier.
    async fn list(&self, query: ListQuery) -> Result<Vec<Tenant>, StoreError>;

    /// How many tenants there are (in `status`, if given).
    async fn count(&self, status: Option<TenantStatus>) -> Result<u64, StoreError>;
}

#[async_trait]
impl<S: TenantStore + ?Sized> TenantStore for Arc<S> {
    async fn get(&self, identifier: &TenantIdentifier) -> Result<Option<Tenant>, StoreError> {
        (**self).get(identifier).await
    }
    async fn get_by_id(&self, id: TenantId) -> Result<Option<Tenant>, StoreError> {
        (**self).get_by_id(id).await
    }
    async fn get_by_domain(&self, domain: &str) -> Result<Option<Tenant>, StoreError> {
        (**self).get_by_domain(domain).await
    }
    async fn create(&self, new: NewTenant) -> Result<Tenant, StoreError> {
        (**self).create(new).await
    }
    async fn update(
        &self,
        identifier: &TenantIdentifier,
        update: TenantUpdate,
    ) -> Result<Tenant, StoreError> {
        (**self).update(identifier, update).await
    }
    async fn set_status(
        &self,
        identifier: &TenantIdentifier,
        status: TenantStatus,
    ) -> Result<Tenant, StoreError> {
        (**self).set_status(identifier, status).await
    }
    async fn update_metadata(
        &self,
        identifier: &TenantIdentifier,
        patch: Metadata,
    ) -> Result<Tenant, StoreError> {
        (**self).update_metadata(identifier, patch).await
    }
    async fn delete(&self, identifier: &TenantIdentifier) -> Result<bool, StoreError> {
        (**self).delete(identifier).await
    }
    async fn list(&self, query: ListQuery) -> Result<Vec<Tenant>, StoreError> {
        (**self).list(query).await
    }
    async fn count(&self, status: Option<TenantStatus>) -> Result<u64, StoreError> {
        (**self).count(status).await
    }
}
