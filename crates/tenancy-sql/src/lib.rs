//! SQL backends of tenancy, on sqlx: tenant registry stores and tenant isolation for
//! PostgreSQL (`postgres`), MariaDB/MySQL (`mysql`) and SQLite (`sqlite`), one module per
//! database behind its feature.

#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod registry;
