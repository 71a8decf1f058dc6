//! MariaDB/MySQL backend: the tenant registry store ([`MySqlStore`]) and a database per tenant
//! ([`MySqlDatabaseLocator`], [`MySqlTenantPools`]).

mod store;

pub use store::MySqlStore;

mod database;

pub use database::{MySqlDatabaseLocator, MySqlTenantPools, MySqlTenantTx, is_unknown_database};
