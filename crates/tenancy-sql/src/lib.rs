//! SQL backends of tenancy, on sqlx: tenant registry stores and tenant isolation for
//! PostgreSQL (`postgres`), MariaDB/MySQL (`mysql`) and SQLite (`sqlite`), one module per
//! database behind its feature.
//!
//! Isolation is the same for every backend and mode: a [`TenantIsolation`] handle opens a
//! [`TenantTx`] scoped to a tenant, and failures are [`IsolationError`]s. Handles:
//! `postgres::PgIsolation` (schema and RLS on one shared database), the database-per-tenant
//! [`database_per_tenant::TenantPools`] (`sqlite::SqliteTenantPools`,
//! `postgres::PgTenantPools`), and [`HybridIsolation`] choosing between two of them per tenant.
//! With feature `axum`, [`TenantTx`] is an axum extractor (refusals: `TenantTxRejection`).

pub mod database_per_tenant;
#[cfg(feature = "mysql")]
pub mod mysql;
pub mod placement;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

mod isolation;
mod isolation_error;
mod transient;
mod tx;

/// The tables of the SQL tenant registries. They hold no tenant data (a domain row's
/// `tenant_id` points at its tenant), so the row-level security audit and RLS set-up leave
/// them alone.
pub const REGISTRY_TABLES: &[&str] = &[
    "tenancy_tenants",
    "tenancy_tenant_domains",
    "tenancy_registry_migrations",
];

pub use isolation::{HybridIsolation, TenantIsolation, isolation_extension};
pub use isolation_error::IsolationError;
pub use transient::is_transient;
pub use tx::{TenantConnection, TenantTx};

#[cfg(feature = "axum")]
mod extract;

#[cfg(feature = "axum")]
pub use extract::TenantTxRejection;

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod registry;
