//! SQLite backend: the tenant registry store ([`SqliteStore`]).

mod store;

pub use store::SqliteStore;
