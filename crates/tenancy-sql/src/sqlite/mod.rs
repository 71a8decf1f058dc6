//! SQLite backend: the tenant registry store ([`SqliteStore`]).
//! Database-per-tenant: one file per tenant ([`SqliteLocator`], [`SqliteTenantPools`]).

mod store;

pub use store::SqliteStore;

mod database;

pub use database::{SqliteLocator, SqliteTenantConnection, SqliteTenantPools, SqliteTenantTx};
