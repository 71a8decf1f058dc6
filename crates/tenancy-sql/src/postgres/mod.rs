//! PostgreSQL backend: the registry store ([`PgStore`]) and tenant isolation: schema and RLS
//! tenants on one shared database ([`PgIsolation`], with the RLS set-up and audit), and a
//! database per tenant ([`PgDatabaseLocator`], [`PgTenantPools`]).

mod store;

pub use store::PgStore;

mod database;
mod isolation;
mod rls;

pub use database::{PgDatabaseLocator, PgTenantPools};
pub use isolation::{
    DEFAULT_SCHEMA_PREFIX, DEFAULT_TENANT_COLUMN, DEFAULT_TENANT_CONCURRENCY_WAIT,
    DEFAULT_TENANT_SETTING, PgIsolation, PgIsolationOptions, TenantSetting, is_stale_plan_error,
};
pub use rls::{
    POLICY_NAME, RlsProblem, apply_rls_policy, audit_rls, grant_tenant_tables, rls_policy_sql,
};

/// A transaction scoped to a PostgreSQL tenant (schema, RLS or its own database).
pub type PgTenantTx = crate::TenantTx<sqlx::Postgres>;
