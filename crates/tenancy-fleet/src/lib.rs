//! Fleet operations of tenancy: tenant migrations applied to every tenant with bounded
//! concurrency, progress events and a report.
//!
//! - [`TenantMigrations`]: a checked folder of `<version>_<name>.sql` files (or embedded sqlx
//!   migrations).
//! - [`MigrationTarget`]: where a tenant's migrations and ledger go; implemented for a schema
//!   per tenant ([`postgres::PgSchemaTarget`]) and a SQLite file per tenant
//!   ([`sqlite::SqliteTarget`]). The shared tables of RLS tenants are migrated once with
//!   [`postgres::PgSharedMigrations`].
//! - [`migrate_all`]: every tenant through a target, with a [`MigrationReport`].
//! - [`provision`]: the [`Provisioner`](tenancy_core::manager::Provisioner)s that create and
//!   purge a tenant's data in each isolation mode, for the tenant manager.
//! - [`deployment`] (features `postgres` and `sqlite`): a whole deployment (registry,
//!   isolation, provisioner, migration target) from a `TenancyConfig`.

mod migrations;
pub mod provision;
mod report;
mod runner;
mod target;

#[cfg(all(feature = "postgres", feature = "sqlite"))]
pub mod deployment;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// The attribute for implementing [`MigrationTarget`] (re-exported from `async-trait`).
pub use async_trait::async_trait;
pub use migrations::{LEDGER_TABLE, LedgerEntry, MigrationsError, TenantMigrations};
pub use report::{MigrationReport, TenantOutcome, TenantReport};
pub use runner::{MigrateOptions, ProgressEvent, migrate_all};
pub use target::{ApplyFailure, MigrationTarget, TargetError};
