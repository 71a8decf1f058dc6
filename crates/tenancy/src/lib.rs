//! # tenancy
//!
//! Multi-tenancy for Rust web services. Each request is tied to exactly one tenant and may only
//! see that tenant's data.
//!
//! This facade re-exports the parts behind features:
//!
//! | feature    | what it adds |
//! |------------|--------------|
//! | (none)     | tenant model, identifier policy, in-memory registry, configuration, context |
//! | `postgres` | PostgreSQL registry and isolation (schema, RLS, database, hybrid) |
//! | `mysql`    | MariaDB/MySQL registry and database-per-tenant |
//! | `sqlite`   | SQLite registry and a database file per tenant |
//! | `axum`     | resolvers, the tower layer, axum extractors (with a SQL backend, `sql::TenantTx` too) and JSON errors |
//! | `jwt`      | the JWT claim resolver |
//! | `redis`    | Redis tenant store, two-level cache with invalidation, rate limits |

pub use tenancy_core::*;

/// The request pipeline (feature `axum`).
#[cfg(feature = "axum")]
pub use tenancy_axum as axum;

/// SQL registries and isolation (features `postgres`, `mysql`, `sqlite`).
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub use tenancy_sql as sql;

/// Redis store, cache and rate limits (feature `redis`).
#[cfg(feature = "redis")]
pub use tenancy_redis as redis;
