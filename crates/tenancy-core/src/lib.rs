//! Core of tenancy: the tenant model and lifecycle, the one identifier policy, the registry
//! trait with an in-memory store, configuration, the task-local tenant context and the
//! in-process tenant cache.
//!
//! Nothing here talks to a database or knows about HTTP; `tenancy-sql` and `tenancy-axum`
//! build on these types, and users reach them through the `tenancy` facade.

pub mod cache;
pub mod config;
pub mod context;
pub mod identifier;
pub mod manager;
pub mod memory;
pub mod rate_limit;
pub mod store;
pub mod tenant;

pub use cache::{CacheSettings, TenantCache};
pub use config::{
    Backend, ConfigError, FieldProblem, JwtAlgorithm, ResolutionStrategy, Secret, SecretUrl,
    TenancyConfig, TenancyConfigBuilder,
};
pub use context::NoTenant;
pub use identifier::{
    DerivedName, DerivedNameError, IdentifierError, IdentifierPolicy, NameTarget, TenantIdentifier,
    quote_postgres_ident,
};
pub use memory::MemoryStore;
pub use store::{BoxError, ListQuery, StoreError, TenantStore};
pub use tenant::{
    DEFAULT_TIER, FieldError, IsolationMode, Metadata, NewTenant, Tenant, TenantId, TenantStatus,
    TenantUpdate, TransitionError, UnknownValue, merge_metadata,
};
