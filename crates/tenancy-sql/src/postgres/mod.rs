//! PostgreSQL backend: registry store and isolation.

mod store;

pub use store::PgStore;
