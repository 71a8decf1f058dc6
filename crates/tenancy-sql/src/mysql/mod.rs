//! MariaDB/MySQL backend: the tenant registry store ([`MySqlStore`]).

mod store;

pub use store::MySqlStore;
